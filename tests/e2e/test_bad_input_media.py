"""Bad input at the media port and in the handshake, with a real client whose media must survive."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest

from tests.support import ROOT, http_get_json, in_ns, link, need_netns, netns, run_json, sfu_process

pytestmark = [pytest.mark.netns, pytest.mark.slow]

ECHO = [sys.executable, str(ROOT / "tests" / "clients" / "echo_client.py")]
CHAOS = [sys.executable, str(ROOT / "tests" / "clients" / "chaos.py")]
SERVER_ARGS = ("--http-listen", "0.0.0.0:8080", "--media-port", "40000")
WS = "ws://198.51.100.1:8080/ws"


def test_garbage_and_forged_packets_do_not_disturb_a_live_echo() -> None:
    need_netns()
    with netns("srv") as srv, netns("cli") as cli, netns("bad") as bad:
        link(srv, "198.51.100.1/24", cli, "198.51.100.2/24")
        link(srv, "203.0.113.1/24", bad, "203.0.113.66/24")
        with sfu_process(srv, *SERVER_ARGS):
            chaos = subprocess.Popen(
                in_ns(
                    bad,
                    [*CHAOS, "ws://203.0.113.1:8080/ws", "203.0.113.1", "40000", "--seconds", "6"],
                ),
                stdout=subprocess.PIPE,
                text=True,
                env={"PYTHONPATH": str(ROOT)},
                cwd=ROOT,
            )
            try:
                echo = run_json(cli, [*ECHO, WS, "--frames", "60"])
                chaos_out, _ = chaos.communicate(timeout=60)
            finally:
                if chaos.poll() is None:
                    chaos.kill()
                    chaos.wait()
            stats: dict[str, Any] = http_get_json(cli, "http://198.51.100.1:8080/api/stats")
    assert echo["ok"], echo
    assert echo["video_frames"] >= 60 and echo["audio_frames"] >= 60
    assert echo["server_stats"]["peer"]["media"]["srtp_errors"] == 0
    assert '"ok": true' in chaos_out, chaos_out
    # every kind of junk was dropped and counted, not crashed on
    assert stats["mux"]["stun_unknown_ufrag"] > 0, stats
    assert stats["mux"]["dropped_unroutable"] > 0, stats
    assert stats["ice_rejected"] > 0, stats


def test_wrong_dtls_fingerprint_is_refused_with_a_reason() -> None:
    need_netns()
    with netns("srv") as srv, netns("cli") as cli:
        link(srv, "198.51.100.1/24", cli, "198.51.100.2/24")
        with sfu_process(srv, *SERVER_ARGS):
            result = run_json(cli, [*ECHO, WS, "--bad-fingerprint"])
    assert result["ok"], result
    assert result["video_frames"] == 0
    assert "DTLS failed" in result["hangup"] and "fingerprint" in result["hangup"], result


def test_a_vanished_peer_is_freed_by_consent_expiry_within_30_seconds() -> None:
    need_netns()
    with netns("srv") as srv, netns("cli") as cli:
        link(srv, "198.51.100.1/24", cli, "198.51.100.2/24")
        with sfu_process(srv, *SERVER_ARGS):
            result = run_json(cli, [*ECHO, WS, "--vanish"], timeout=120)
            stats: dict[str, Any] = http_get_json(srv, "http://127.0.0.1:8080/api/stats")
    assert result["ok"], result
    assert "consent" in result["hangup"], result
    assert result["vanish_to_hangup"] <= 30.5, result
    assert stats["transports"] == 0, stats
