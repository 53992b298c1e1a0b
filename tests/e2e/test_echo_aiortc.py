"""The echo test end to end with a real aiortc client: its own audio and video come back decoded."""

from __future__ import annotations

import sys
from typing import Any

import pytest

from tests.support import ROOT, add_address, link, need_netns, netns, run_json, sfu_process

pytestmark = [pytest.mark.netns, pytest.mark.slow]

CLIENT = [sys.executable, str(ROOT / "tests" / "clients" / "echo_client.py")]


def _check_echo(result: dict[str, Any]) -> None:
    assert result["ok"], result
    assert result["video_frames"] >= 30
    assert result["audio_frames"] >= 30
    stats = result["server_stats"]["peer"]
    assert stats["state"] == "connected"
    media = stats["media"]
    assert media["packets_in"] > 0 and media["packets_out"] > 0
    assert media["srtp_errors"] == 0
    # every SSRC the client sent was echoed under the SSRC the server announced
    sent = {n["send_ssrc"] for n in stats["negotiated"] if n["send_ssrc"]}
    assert {int(k) for k in media["outbound"]} == sent
    assert all(o["packets"] > 0 for o in media["outbound"].values())
    assert stats["selected_pair"]["local"]["type"] == "host"


def test_echo_in_one_namespace() -> None:
    need_netns()
    with netns("one") as ns:
        add_address(ns, "192.0.2.10/24")
        with sfu_process(ns, "--http-listen", "127.0.0.1:8080", "--media-port", "40000"):
            result = run_json(ns, [*CLIENT, "ws://127.0.0.1:8080/ws"])
    _check_echo(result)
    assert result["server_stats"]["peer"]["selected_pair"]["local"]["address"] == "192.0.2.10"


def test_echo_across_two_namespaces() -> None:
    need_netns()
    with netns("srv") as srv, netns("cli") as cli:
        link(srv, "198.51.100.1/24", cli, "198.51.100.2/24")
        with sfu_process(srv, "--http-listen", "0.0.0.0:8080", "--media-port", "40000"):
            result = run_json(cli, [*CLIENT, "ws://198.51.100.1:8080/ws"])
    _check_echo(result)
    pair = result["server_stats"]["peer"]["selected_pair"]
    assert pair["local"]["address"] == "198.51.100.1"
    assert pair["remote"]["address"] == "198.51.100.2"


def test_echo_when_the_server_offers() -> None:
    """The other JSEP direction: server offers (ICE controlling, DTLS server), the client answers.
    The offer carries no candidate: they are trickled once the server's first check has left."""
    need_netns()
    with netns("srv") as srv, netns("cli") as cli:
        link(srv, "172.18.0.1/24", cli, "172.18.0.2/24")  # private: withholding applies
        with sfu_process(srv, "--http-listen", "0.0.0.0:8080", "--media-port", "40000"):
            result = run_json(cli, [*CLIENT, "ws://172.18.0.1:8080/ws", "--server-offers"])
    _check_echo(result)
    assert result["candidates_in_offer"] == 0
    assert result["trickled"] >= 2  # at least one candidate and the end-of-candidates
    peer = result["server_stats"]["peer"]
    assert peer["ice_role"] == "controlling"
    assert peer["dtls_role"] == "server"


def test_echo_over_ipv6() -> None:
    need_netns()
    with netns("srv") as srv, netns("cli") as cli:
        link(srv, "2001:db8::1/64", cli, "2001:db8::2/64")
        with sfu_process(srv, "--http-listen", "[::]:8080", "--media-port", "40000"):
            result = run_json(cli, [*CLIENT, "ws://[2001:db8::1]:8080/ws"])
    _check_echo(result)
    pair = result["server_stats"]["peer"]["selected_pair"]
    assert pair["local"]["address"] == "2001:db8::1"
    assert pair["remote"]["address"] == "2001:db8::2"


def test_a_published_port_reveals_the_candidates_at_once() -> None:
    """Every candidate comes from an explicit announce rule (a published port: DNAT, no race):
    nothing to withhold, the candidates are in the offer and the peer saves a round trip."""
    need_netns()
    with netns("srv") as srv, netns("cli") as cli:
        link(srv, "198.51.100.1/24", cli, "198.51.100.2/24")
        args = (
            "--http-listen",
            "0.0.0.0:8080",
            "--media-port",
            "40000",
            "--announce",
            "198.51.100.1",
        )
        with sfu_process(srv, *args):
            result = run_json(cli, [*CLIENT, "ws://198.51.100.1:8080/ws", "--server-offers"])
    _check_echo(result)
    assert result["candidates_in_offer"] >= 1
