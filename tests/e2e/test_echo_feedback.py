"""Echo controls and RTCP feedback with a real client: audio off/on, NACK served from the cache."""

from __future__ import annotations

import sys

import pytest

from tests.support import ROOT, link, need_netns, netns, run_json, sfu_process

pytestmark = [pytest.mark.netns, pytest.mark.slow]

CLIENT = [sys.executable, str(ROOT / "tests" / "clients" / "echo_client.py")]
WS = "ws://198.51.100.1:8080/ws"


def test_audio_echo_switches_off_and_on() -> None:
    need_netns()
    with netns("srv") as srv, netns("cli") as cli:
        link(srv, "198.51.100.1/24", cli, "198.51.100.2/24")
        with sfu_process(srv, "--http-listen", "0.0.0.0:8080", "--media-port", "40000"):
            result = run_json(cli, [*CLIENT, WS, "--toggle"])
    assert result["ok"], result
    assert result["toggle"]["while_off"] == 0, result["toggle"]
    assert result["toggle"]["while_on"] >= 30, result["toggle"]  # 50 packets/s of Opus
    assert result["server_stats"]["bitrate"] == 300000


def test_nacks_under_loss_are_served_from_the_cache() -> None:
    need_netns()
    with netns("srv") as srv, netns("cli") as cli:
        link(srv, "198.51.100.1/24", cli, "198.51.100.2/24")
        with sfu_process(srv, "--http-listen", "0.0.0.0:8080", "--media-port", "40000"):
            result = run_json(
                cli, [*CLIENT, WS, "--loss", "0.05", "--frames", "90", "--seconds", "40"]
            )
    assert result["ok"], result
    rtcp = result["server_stats"]["rtcp"]
    assert rtcp["nacks_in"] > 0, rtcp
    assert rtcp["retransmitted"] > 0, rtcp
    outbound = result["server_stats"]["peer"]["media"]["outbound"]
    assert sum(o["retransmitted"] for o in outbound.values()) == rtcp["retransmitted"]
