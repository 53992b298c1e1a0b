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
    Extension(
        "sfu.engine._cengine",
        sources=[
            "sfu/engine/_cengine.pyx",
            "sfu/engine/csrc/engine.c",
            "sfu/engine/csrc/loop.c",
            "sfu/engine/csrc/hmap.c",
            "sfu/engine/csrc/srtp.c",
        ],
        depends=[
            f"sfu/engine/csrc/{name}.h"
            for name in ("engine", "engine_int", "hmap", "packet", "srtp")
        ],
        include_dirs=["sfu/engine/csrc"],
        define_macros=[("_GNU_SOURCE", "1")],
        extra_compile_args=["-std=gnu11"],
        libraries=["crypto"],
    ),
]

setup(ext_modules=cythonize(extensions, compiler_directives={"language_level": "3"}))
