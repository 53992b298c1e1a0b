"""``sfu doctor``: probe the NAT in front of the media port and print the facts and the verdict."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import TextIO

from sfu.config import Config, add_config_arguments

DESCRIPTION = """\
Probe the NAT in front of the media port with the configured STUN servers and say what it means:
the public address, the mapping behaviour (RFC 4787), whether unsolicited UDP reaches the port,
whether the container NAT race exists or a host firewall removes it, and whether the announced
addresses answer. Best with a STUN server that supports RFC 5780 (coturn with two listening IPs).

It binds the media port itself; when the server is running (the port is taken) it probes from
another port and says so: GET /api/doctor on the server probes through the server's own socket.
Exit status 0 with a verdict, 2 for a bad configuration."""

EPILOG = """\
examples:
  sfu doctor --stun 192.0.2.1:3478
  sfu doctor --config sfu.toml --json
  sfu doctor --stun stun.example.org --announce 172.17.0.2=203.0.113.5:50000"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument(
        "--timeout",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="upper bound of the probe per socket (default: 5)",
    )
    add_config_arguments(parser)


def run(
    config: Config, *, as_json: bool = False, timeout: float = 5.0, out: TextIO | None = None
) -> int:
    """Probe, print, return the exit status."""
    from sfu.doctor.run import DoctorSettings, diagnose_standalone  # loads the networking parts

    stream = out or sys.stdout
    report = asyncio.run(diagnose_standalone(DoctorSettings.from_config(config), timeout))
    if as_json:
        stream.write(json.dumps(report.to_dict(), indent=2) + "\n")
    else:
        stream.write(report.render())
    return 0
