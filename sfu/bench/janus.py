"""Janus (the Debian package) as a second target of the watchers bench: its configuration.

:func:`write_config` fills a fresh configuration folder for ``janus -F FOLDER``: the core
(``janus.jcfg``: no STUN or TURN, ICE gathering only on the server namespace's veth, one event
loop, every plugin but the streaming one and every transport but HTTP disabled, no event
handlers or loggers), the HTTP transport on the server's address, and the streaming plugin with
one ``rtp`` mountpoint (VP8 + Opus) on the ports the bench's publisher sends to, with the payload
types it uses. Nothing here starts a process: :func:`janus_argv` is the command line.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "JANUS",
    "JanusSetup",
    "janus_argv",
    "janus_available",
    "janus_version",
    "write_config",
]

JANUS = "/usr/bin/janus"
_LIB_DIRS = (
    "/usr/lib/x86_64-linux-gnu/janus",
    "/usr/lib/aarch64-linux-gnu/janus",
    "/usr/lib/janus",
)
_KEEP_PLUGIN = "libjanus_streaming.so"
_KEEP_TRANSPORT = "libjanus_http.so"


@dataclass(frozen=True, slots=True)
class JanusSetup:
    """What the generated configuration says."""

    ip: str  # the server namespace's address: HTTP binds here
    device: str  # the server namespace's veth: the only interface ICE gathers on
    http_port: int
    video_port: int
    audio_port: int
    video_pt: int
    audio_pt: int
    mountpoint: int = 1
    rtp_port_range: str = "20000-39999"  # ICE media ports (the publisher's are above)
    event_loops: int = 1  # loop threads shared by the handles (0: Janus's default, one each)
    min_nack_queue_ms: int = 0  # 0: Janus's default (RTT-based, at least 200 ms)
    debug_level: int = 3  # warnings and errors

    @property
    def url(self) -> str:
        """The Janus API root."""
        return f"http://{self.ip}:{self.http_port}/janus"


def lib_dir() -> Path | None:
    """Where the Debian package keeps plugins and transports."""
    for d in _LIB_DIRS:
        if Path(d, "plugins", _KEEP_PLUGIN).exists():
            return Path(d)
    return None


def janus_available() -> str | None:
    """None when Janus can run here, else why not."""
    if not Path(JANUS).exists() and shutil.which("janus") is None:
        return f"{JANUS} is not installed (Debian package janus)"
    if lib_dir() is None:
        return "the Janus streaming plugin (libjanus_streaming.so) is not installed"
    return None


def janus_binary() -> str:
    return JANUS if Path(JANUS).exists() else (shutil.which("janus") or JANUS)


def janus_version() -> str:
    """Like "1.1.2" (from ``janus --help``), or "unknown"."""
    try:
        out = subprocess.run(
            [janus_binary(), "--help"], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    match = re.search(r"Janus version: \d+ \(([^)]+)\)", out.stdout + out.stderr)
    return match.group(1) if match else "unknown"


def _others(folder: Path, keep: str) -> str:
    return ",".join(sorted(p.name for p in folder.glob("libjanus_*.so") if p.name != keep))


def write_config(folder: Path, setup: JanusSetup, libs: Path | None = None) -> None:
    """Write janus.jcfg, the HTTP transport's and the streaming plugin's files into ``folder``;
    ``libs`` is the folder of Janus's plugins/, transports/, events/ and loggers/ (found when
    None)."""
    libs = libs or lib_dir()
    if libs is None:
        raise FileNotFoundError("the Janus plugins folder was not found")
    folder.mkdir(parents=True, exist_ok=True)
    loops = f"\tevent_loops = {setup.event_loops}\n" if setup.event_loops > 0 else ""
    nack = f"\tmin_nack_queue = {setup.min_nack_queue_ms}\n" if setup.min_nack_queue_ms else ""
    (folder / "janus.jcfg").write_text(
        "general: {\n"
        f'\tconfigs_folder = "{folder}"\n'
        f'\tplugins_folder = "{libs / "plugins"}"\n'
        f'\ttransports_folder = "{libs / "transports"}"\n'
        f'\tevents_folder = "{libs / "events"}"\n'
        f'\tloggers_folder = "{libs / "loggers"}"\n'
        f"\tdebug_level = {setup.debug_level}\n"
        f"{loops}"
        "\tsession_timeout = 120\n"
        "\thide_dependencies = true\n"
        "}\n"
        "certificates: {\n}\n"
        "media: {\n"
        f'\trtp_port_range = "{setup.rtp_port_range}"\n'
        f"{nack}"
        "}\n"
        "nat: {\n"
        "\tnice_debug = false\n"
        "\tignore_mdns = true\n"
        f'\tice_enforce_list = "{setup.device}"\n'
        "}\n"
        "plugins: {\n"
        f'\tdisable = "{_others(libs / "plugins", _KEEP_PLUGIN)}"\n'
        "}\n"
        "transports: {\n"
        f'\tdisable = "{_others(libs / "transports", _KEEP_TRANSPORT)}"\n'
        "}\n"
        "loggers: {\n"
        f'\tdisable = "{_others(libs / "loggers", "")}"\n'
        "}\n"
        "events: {\n"
        "\tbroadcast = false\n"
        f'\tdisable = "{_others(libs / "events", "")}"\n'
        "}\n"
    )
    (folder / "janus.transport.http.jcfg").write_text(
        "general: {\n"
        '\tjson = "plain"\n'
        '\tbase_path = "/janus"\n'
        "\thttp = true\n"
        f"\tport = {setup.http_port}\n"
        f'\tip = "{setup.ip}"\n'
        "\thttps = false\n"
        "}\n"
        "admin: {\n\tadmin_http = false\n\tadmin_https = false\n}\n"
    )
    (folder / "janus.plugin.streaming.jcfg").write_text(
        "general: {\n\tevents = false\n}\n"
        "bench: {\n"
        '\ttype = "rtp"\n'
        f"\tid = {setup.mountpoint}\n"
        '\tdescription = "sfu bench watchers"\n'
        "\tmedia = (\n"
        "\t\t{\n"
        '\t\t\ttype = "video"\n\t\t\tmid = "v"\n'
        f"\t\t\tport = {setup.video_port}\n\t\t\tpt = {setup.video_pt}\n"
        '\t\t\tcodec = "vp8"\n'
        "\t\t},\n"
        "\t\t{\n"
        '\t\t\ttype = "audio"\n\t\t\tmid = "a"\n'
        f"\t\t\tport = {setup.audio_port}\n\t\t\tpt = {setup.audio_pt}\n"
        '\t\t\tcodec = "opus"\n'
        "\t\t}\n"
        "\t)\n"
        "}\n"
    )


def janus_argv(folder: Path) -> list[str]:
    """Run Janus in the foreground on ``folder``'s configuration, logging to stderr only."""
    return [janus_binary(), "-F", str(folder), "-C", str(folder / "janus.jcfg"), "-o"]
