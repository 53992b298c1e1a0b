"""Compile the bench's C programs with ``cc`` into a directory: the load generator and the
floor (engine figures), the RTP publisher and the watchers' receiver (mountpoint figures).

They are built at bench time rather than by setup.py: they are tools, not part of the package's
runtime, and build in about a second. All but the publisher link our SRTP
(sfu/engine/csrc/srtp.c) and libcrypto.
"""

from __future__ import annotations

import subprocess
import sysconfig
from dataclasses import dataclass
from pathlib import Path

from sfu.bench.topology import BenchError

CSRC = Path(__file__).resolve().parent / "csrc"
ENGINE_CSRC = Path(__file__).resolve().parent.parent / "engine" / "csrc"
# The optimisation flags Python builds extensions with (so the engine's), then our own.
_OPT = [f for f in (sysconfig.get_config_var("OPT") or "-O2").split() if f.startswith(("-O", "-D"))]
CFLAGS = (*_OPT, "-pthread", "-Wall")


@dataclass(frozen=True, slots=True)
class Tools:
    loadgen: Path
    floor: Path
    rtppub: Path
    watchrx: Path


def build_tools(out_dir: Path, cc: str = "cc") -> Tools:
    """Build every tool into out_dir; BenchError with the compiler's output."""
    out_dir.mkdir(parents=True, exist_ok=True)
    common = [str(CSRC / "plan.c"), str(ENGINE_CSRC / "srtp.c")]
    built: dict[str, Path] = {}
    for name in ("loadgen", "floor", "rtppub", "watchrx"):
        target = out_dir / name
        argv = [
            cc,
            *CFLAGS,
            f"-I{ENGINE_CSRC}",
            f"-I{CSRC}",
            "-o",
            str(target),
            str(CSRC / f"{name}.c"),
            *([] if name == "rtppub" else common),
            "-lcrypto",
        ]
        proc = subprocess.run(argv, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise BenchError(f"building {name} failed:\n{proc.stderr.strip()}")
        built[name] = target
    return Tools(**built)
