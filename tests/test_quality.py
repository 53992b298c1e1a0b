"""The codebase stays typed and linted: mypy (disallow_untyped_defs) and ruff, as CI runs them."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from tests.support import ROOT


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *argv], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_ruff_is_clean() -> None:
    if shutil.which("ruff") is None and _run("ruff", "--version").returncode != 0:
        pytest.skip("ruff is not installed")
    out = _run("ruff", "check", "sfu", "tests")
    assert out.returncode == 0, out.stdout + out.stderr


def test_mypy_is_clean() -> None:
    out = _run("mypy", "sfu")
    assert out.returncode == 0, out.stdout + out.stderr
