"""The ``sfu`` command line: help texts, ``config --check`` exit codes, placeholders, logging."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from sfu import __version__
from sfu.cli import JsonFormatter, build_parser, main, setup_logging
from sfu.config import LogConfig, LogFormat, LogLevel, env_names, flag_names

ROOT = Path(__file__).resolve().parent.parent


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without any SFU_* variable of the developer's shell."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SFU_")}
    env.update(extra)
    return env


def sfu(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sfu", *args],
        cwd=ROOT,
        env=clean_env(**env),
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture(autouse=True)
def no_sfu_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("SFU_"):
            monkeypatch.delenv(name)


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


# ---------------------------------------------------------------------------- help


def test_serve_help_explains_every_flag_and_variable() -> None:
    result = sfu("serve", "--help")
    assert result.returncode == 0, result.stderr
    text = " ".join(result.stdout.split())  # undo argparse's line wrapping
    for flag in flag_names():
        assert flag in text, flag
    for name in env_names():
        assert name in text, name
    for name in (
        "--help",
        "--http-listen",
        "--media-port-range",
        "--announce",
        "--no-early-checks",
    ):
        assert name in text


def test_every_option_has_help() -> None:
    parser = build_parser()
    subparsers = next(a for a in parser._actions if a.choices and "serve" in a.choices)
    assert isinstance(subparsers.choices, dict)
    for name, sub in subparsers.choices.items():
        for action in sub._actions:
            assert action.help, f"sfu {name} {action.option_strings or action.dest}"


def test_top_level_help_lists_commands() -> None:
    result = sfu("--help")
    assert result.returncode == 0
    for command in ("serve", "config", "version", "doctor", "natlab", "bench", "token"):
        assert command in result.stdout


def test_no_command_prints_usage_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "usage: sfu" in capsys.readouterr().err


# ---------------------------------------------------------------------------- config --check


def test_config_check_ok_prints_the_effective_configuration() -> None:
    result = sfu("config", "--check", "--media-port", "40001", SFU_LOG_LEVEL="debug")
    assert result.returncode == 0, result.stderr
    assert "configuration OK" in result.stderr
    data = tomllib.loads(result.stdout)
    assert data["media"]["port"] == 40001
    assert data["log"]["level"] == "debug"


def test_config_check_bad_config_exits_2_with_one_line_per_problem(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[media]\nport = 70000\n")
    result = sfu("config", "--check", "--config", str(path), SFU_LOG_LEVEL="loud")
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        f"sfu: config error: {path} [media] port: 70000 is not a port (1-65535)",
        "sfu: config error: SFU_LOG_LEVEL: 'loud' is not one of 'debug', 'info', 'warning', "
        "'error'",
    ]


def test_serve_with_bad_config_exits_2_without_traceback() -> None:
    result = sfu("serve", "--announce", "nonsense", SFU_MEDIA_PORT="abc")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "sfu: config error: SFU_MEDIA_PORT: 'abc' is not an integer" in result.stderr
    assert "--announce 'nonsense'" in result.stderr


def test_config_uses_sfu_config_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "sfu.toml"
    path.write_text('[ice]\nstun_servers = ["192.0.2.1"]\n')
    monkeypatch.setenv("SFU_CONFIG", str(path))
    assert main(["config"]) == 0
    out = capsys.readouterr().out
    assert f"# effective configuration (file: {path})" in out
    assert tomllib.loads(out)["ice"]["stun_servers"] == ["192.0.2.1:3478"]


def test_config_json_redacts_unless_asked(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["config", "--format", "json", "--turn", "turn:192.0.2.1", "--turn-secret", "S3"]
    assert main(args) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["ice"]["turn"][0]["shared_secret"] == "<redacted>"
    assert main([*args, "--show-secrets"]) == 0
    assert json.loads(capsys.readouterr().out)["ice"]["turn"][0]["shared_secret"] == "S3"


def test_argparse_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["serve", "--no-such-flag"])
    assert info.value.code == 2
    assert "unrecognized arguments: --no-such-flag" in capsys.readouterr().err


# ---------------------------------------------------------------------------- other commands


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["version"]) == 0
    assert capsys.readouterr().out.startswith(f"sfu {__version__} (Python ")
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"sfu {__version__}"


# ---------------------------------------------------------------------------- logging


def test_json_logging(restore_logging: None) -> None:
    stream = io.StringIO()
    setup_logging(LogConfig(LogLevel.INFO, LogFormat.JSON), stream)
    log = logging.getLogger("sfu.test")
    log.debug("hidden")
    log.info("session %s up", "s1", extra={"session": "s1", "port": 40000})
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("failed")
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert len(lines) == 2
    first, second = lines
    assert first["level"] == "info"
    assert first["logger"] == "sfu.test"
    assert first["msg"] == "session s1 up"
    assert first["session"] == "s1" and first["port"] == 40000
    assert first["ts"].endswith("Z")
    assert second["level"] == "error"
    assert "ValueError: boom" in second["exc"]


def test_text_logging(restore_logging: None) -> None:
    stream = io.StringIO()
    setup_logging(LogConfig(LogLevel.WARNING, LogFormat.TEXT), stream)
    logging.getLogger("sfu.test").info("hidden")
    logging.getLogger("sfu.test").warning("shown")
    assert stream.getvalue().rstrip().endswith("WARNING sfu.test: shown")
    assert "hidden" not in stream.getvalue()


def test_json_formatter_survives_odd_extras() -> None:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "m", None, None)
    record.addr = ("192.0.2.1", 3478)
    record.obj = object()
    data = json.loads(JsonFormatter().format(record))
    assert data["addr"] == ["192.0.2.1", 3478]
    assert data["obj"].startswith("<object object")
