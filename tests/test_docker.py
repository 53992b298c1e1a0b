"""docker/: what can be checked without Docker (it cannot run here).

The Dockerfile copies files that exist and ends as a non-root user with a health check on
/healthz; every compose file parses and builds from that Dockerfile; each deployment mode has
the settings docs/containers.md describes; the entrypoint turns SFU_PUBLIC_IP/SFU_PUBLIC_PORT
into the announce rule `sfu config` accepts.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCKER = ROOT / "docker"
DOCKERFILE = DOCKER / "Dockerfile"
ENTRYPOINT = DOCKER / "entrypoint.sh"
COMPOSE = {
    "host": DOCKER / "compose.host.yaml",
    "bridge": DOCKER / "compose.bridge.yaml",
    "coturn": DOCKER / "compose.coturn.yaml",
    "macvlan": DOCKER / "compose.macvlan.yaml",
}


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_dockerfile_copies_files_that_exist() -> None:
    copies = [args for word, args in instructions() if word == "COPY"]
    assert copies
    for args in copies:
        parts = shlex.split(args)
        if any(p.startswith("--from") for p in parts):
            continue
        sources = [p for p in parts[:-1] if not p.startswith("--")]
        for src in sources:
            assert (ROOT / src).exists(), f"COPY {src}: no such file in the build context"
    assert (ROOT / "sfu" / "engine" / "csrc" / "srtp.c").is_file()  # the engine gets compiled


def test_dockerfile_runtime_is_slim_non_root_with_healthcheck() -> None:
    ins = instructions()
    froms = [args for word, args in ins if word == "FROM"]
    assert len(froms) == 2 and all("slim" in f for f in froms)
    users = [args for word, args in ins if word == "USER"]
    assert users and users[-1] not in ("root", "0")
    exposed = " ".join(args for word, args in ins if word == "EXPOSE").split()
    assert {"8080/tcp", "40000/udp"} <= set(exposed)
    health = next(args for word, args in ins if word == "HEALTHCHECK")
    env = " ".join(args for word, args in ins if word == "ENV")
    assert "SFU_HEALTH_URL" in health and "/healthz" in env
    assert "/healthz" in (ROOT / "sfu" / "server.py").read_text()
    entry = next(args for word, args in ins if word == "ENTRYPOINT")
    assert "sfu-entrypoint" in entry
    assert any("docker/entrypoint.sh /usr/local/bin/sfu-entrypoint" in a for w, a in ins)
    # the image serves the demo page from where the Dockerfile puts it
    assert "SFU_HTTP_STATIC_DIR=/opt/sfu/web" in env
    assert any(a == "web /opt/sfu/web" for w, a in ins if w == "COPY")


def _load(path: Path) -> dict[str, Any]:
    yaml = pytest.importorskip("yaml")
    data: dict[str, Any] = yaml.safe_load(path.read_text())
    return data


@pytest.mark.parametrize("mode", sorted(COMPOSE))
def test_compose_file_parses_and_builds_our_image(mode: str) -> None:
    data = _load(COMPOSE[mode])
    sfu = data["services"]["sfu"]
    build = sfu["build"]
    context = (COMPOSE[mode].parent / build["context"]).resolve()
    assert context == ROOT
    assert (context / build["dockerfile"]).resolve() == DOCKERFILE
    assert sfu["environment"]["SFU_MEDIA_PORT"] == "40000"


def test_compose_modes() -> None:
    host = _load(COMPOSE["host"])["services"]["sfu"]
    assert host["network_mode"] == "host" and "ports" not in host

    bridge = _load(COMPOSE["bridge"])["services"]["sfu"]
    udp = [p for p in bridge["ports"] if p.endswith("/udp")]
    assert udp == ["${SFU_HOST_MEDIA_PORT:-40000}:40000/udp"]  # ONE port, host side may differ
    assert bridge["environment"]["SFU_PUBLIC_PORT"] == "${SFU_HOST_MEDIA_PORT:-40000}"
    assert "SFU_PUBLIC_IP:?" in bridge["environment"]["SFU_PUBLIC_IP"]

    coturn = _load(COMPOSE["coturn"])["services"]
    assert coturn["coturn"]["network_mode"] == "host"
    assert not any(p.endswith("/udp") for p in coturn["sfu"]["ports"])  # no published media
    env = coturn["sfu"]["environment"]
    assert env["SFU_ICE_TURN"].startswith("turn:") and env["SFU_ICE_STUN_SERVERS"]
    assert "--use-auth-secret" in coturn["coturn"]["command"]
    assert env["SFU_ICE_TURN_SHARED_SECRET"] == "${TURN_SECRET}"

    macvlan = _load(COMPOSE["macvlan"])
    assert macvlan["networks"]["lan"]["driver"] == "macvlan"
    assert "ipv4_address" in macvlan["services"]["sfu"]["networks"]["lan"]


def _entrypoint(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["sh", str(ENTRYPOINT), *args],
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **env},
        capture_output=True,
        text=True,
        timeout=10,
    )


@pytest.mark.parametrize(
    ("env", "rule"),
    [
        ({"SFU_PUBLIC_IP": "203.0.113.5"}, "*=203.0.113.5"),
        ({"SFU_PUBLIC_IP": "203.0.113.5", "SFU_PUBLIC_PORT": "50000"}, "*=203.0.113.5:50000"),
        ({"SFU_PUBLIC_IP": "auto", "SFU_PUBLIC_PORT": "50000"}, "*=auto:50000"),
        (
            {"SFU_PUBLIC_IP": "2001:db8::5", "SFU_PUBLIC_PORT": "50000", "SFU_ANNOUNCE_MODE": "append"},
            "*=[2001:db8::5]:50000/append",
        ),
        ({"SFU_PUBLIC_IP": "2001:db8::5"}, "*=2001:db8::5"),
        ({"SFU_ANNOUNCE": "10.0.0.2=198.51.100.7", "SFU_PUBLIC_IP": "203.0.113.5"}, "10.0.0.2=198.51.100.7"),
    ],
)  # fmt: skip
def test_entrypoint_fills_the_announce_rule(env: dict[str, str], rule: str) -> None:
    out = _entrypoint(env, "printenv", "SFU_ANNOUNCE")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == rule


def test_entrypoint_rules_are_valid_configuration() -> None:
    """What the entrypoint writes is what `sfu config` accepts (with a STUN server for auto)."""
    for env in (
        {"SFU_PUBLIC_IP": "203.0.113.5", "SFU_PUBLIC_PORT": "50000"},
        {"SFU_PUBLIC_IP": "auto", "SFU_ICE_STUN_SERVERS": "192.0.2.1"},
    ):
        rule = _entrypoint(env, "printenv", "SFU_ANNOUNCE").stdout.strip()
        out = subprocess.run(
            [sys.executable, "-m", "sfu", "config", "--check", "--format", "json"],
            env={**os.environ, **env, "SFU_ANNOUNCE": rule, "PYTHONPATH": str(ROOT)},
            capture_output=True,
            text=True,
            timeout=30,
            cwd=ROOT,
        )
        assert out.returncode == 0, out.stderr


def test_entrypoint_runs_sfu_commands_and_anything_else() -> None:
    assert "exec sfu serve" in ENTRYPOINT.read_text()
    out = _entrypoint({}, "sh", "-c", "echo hello")
    assert out.stdout.strip() == "hello" and "SFU_ANNOUNCE" not in out.stderr
    syntax = subprocess.run(["sh", "-n", str(ENTRYPOINT)], capture_output=True, text=True)
    assert syntax.returncode == 0, syntax.stderr
