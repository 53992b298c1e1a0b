"""`sfu token` mints tokens the server accepts."""

from __future__ import annotations

import subprocess
import sys

from sfu.auth.tokens import verify_token
from tests.support import ROOT

SECRET = "a-room-token-secret-of-32-bytes-or-more"


def _token(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sfu", "token", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT), **(env or {})},
        timeout=60,
    )


def test_token_from_the_command_line_verifies() -> None:
    out = _token("--room", "r1", "--identity", "bob", "--no-publish", "--secret", SECRET)
    assert out.returncode == 0, out.stderr
    t = verify_token(SECRET, out.stdout.strip())
    assert (t.grant.room, t.identity, t.grant.publish, t.grant.subscribe) == (
        "r1",
        "bob",
        False,
        True,
    )


def test_token_secret_from_the_environment() -> None:
    out = _token("--room", "r1", "--identity", "ann", env={"SFU_ROOMS_TOKEN_SECRET": SECRET})
    assert out.returncode == 0, out.stderr
    assert verify_token(SECRET, out.stdout.strip()).identity == "ann"


def test_token_without_a_secret_or_with_a_short_one_is_a_clear_error() -> None:
    out = _token("--room", "r1", "--identity", "ann")
    assert out.returncode == 2 and "no secret" in out.stderr
    out = _token("--room", "r1", "--identity", "ann", "--secret", "short")
    assert out.returncode == 2 and "at least 32 bytes" in out.stderr
