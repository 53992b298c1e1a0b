"""Build the compiled parts of sfu (Cython + C over OpenSSL libcrypto)."""

from Cython.Build import cythonize
from setuptools import Extension, setup

extensions = [
    Extension(
        "sfu.engine._srtp",
        sources=["sfu/engine/_srtp.pyx", "sfu/engine/csrc/srtp.c"],
        include_dirs=["sfu/engine/csrc"],
        libraries=["crypto"],
    ),
]

setup(ext_modules=cythonize(extensions, compiler_directives={"language_level": "3"}))
