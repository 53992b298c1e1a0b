"""Port-range mode: one UDP port per session, from the configured range, announced as configured."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.support import ROOT, in_ns, link, need_netns, netns, sfu_process

pytestmark = [pytest.mark.netns, pytest.mark.slow]

CLIENT = [sys.executable, str(ROOT / "tests" / "clients" / "echo_client.py")]


def test_each_session_gets_its_own_port_from_the_range() -> None:
    need_netns()
    with netns("srv") as srv, netns("cli") as cli:
        link(srv, "198.51.100.1/24", cli, "198.51.100.2/24")
        args = ("--http-listen", "0.0.0.0:8080", "--media-port-range", "41000-41001")
        with sfu_process(srv, *args):
            procs = [
                subprocess.Popen(
                    in_ns(cli, [*CLIENT, "ws://198.51.100.1:8080/ws"]),
                    stdout=subprocess.PIPE,
                    text=True,
                    cwd=ROOT,
                    env={"PYTHONPATH": str(ROOT)},
                )
                for _ in range(2)
            ]
            outs = [p.communicate(timeout=60)[0] for p in procs]
    results = [json.loads(o.strip().splitlines()[-1]) for o in outs]
    for r in results:
        assert r["ok"], r
    ports = sorted(r["server_stats"]["peer"]["selected_pair"]["local"]["port"] for r in results)
    assert ports == [41000, 41001]


def test_port_range_with_port_aware_announce() -> None:
    """Published 51000-51001 on a host maps to container 41000-41001: candidates carry the public ports."""
    need_netns()
    with netns("srv") as srv, netns("cli") as cli:
        link(srv, "198.51.100.1/24", cli, "198.51.100.2/24")
        # the "public" address is the server's own here; only the announced ports differ, and a
        # DNAT in the server namespace maps them back, as Docker's published range would
        for public, private in ((51000, 41000), (51001, 41001)):
            subprocess.run(
                in_ns(
                    srv,
                    [
                        "iptables",
                        "-t",
                        "nat",
                        "-A",
                        "PREROUTING",
                        "-p",
                        "udp",
                        "--dport",
                        str(public),
                        "-j",
                        "DNAT",
                        "--to-destination",
                        f"198.51.100.1:{private}",
                    ],
                ),
                check=True,
            )
        args = (
            "--http-listen",
            "0.0.0.0:8080",
            "--media-port-range",
            "41000-41001",
            "--announce",
            "198.51.100.1=198.51.100.1:51000-51001",
        )
        with sfu_process(srv, *args):
            out = subprocess.run(
                in_ns(cli, [*CLIENT, "ws://198.51.100.1:8080/ws"]),
                capture_output=True,
                text=True,
                cwd=ROOT,
                env={"PYTHONPATH": str(ROOT)},
                timeout=60,
            ).stdout
    r = json.loads(out.strip().splitlines()[-1])
    assert r["ok"], r
    assert any(" 51000 typ host" in c for c in r["server_candidates"]), r["server_candidates"]
    assert not any(" 41000 typ host" in c for c in r["server_candidates"]), r["server_candidates"]
