"""STUN and TURN end to end: the real server in the lab's Docker bridge container, coturn on the
lab's "internet", a real aiortc client behind the client NATs of sfu.natlab.

- the server learns its public address (the Docker host's) from STUN through its media socket,
  offers it as srflx, and ``--announce '*=auto'`` announces it instead;
- a client behind a symmetric NAT cannot reach a bridged server directly (the negative
  control), but with TURN configured on the server the echo works over the server's relay
  candidate, with static credentials and with the TURN REST shared secret.
"""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from sfu.natlab import ClientKind, CoturnSpec, Lab, LabSpec, LabUnavailable, ServerMode, netns
from tests.support import ROOT, need_netns, run_json, sfu_process

pytestmark = [pytest.mark.netns, pytest.mark.slow]

CLIENT = [sys.executable, str(ROOT / "tests" / "clients" / "echo_client.py")]
STUN = "stun:192.0.2.1:3478"
TURN = "turn:192.0.2.1:3478?transport=udp"
HOST = "198.51.100.1"  # the Docker host's public address
MEDIA = ["--http-listen", "0.0.0.0:8080", "--media-port", "40000", "--no-include-loopback"]


@contextmanager
def bridge_lab(client: ClientKind, coturn: CoturnSpec) -> Iterator[Lab]:
    """The server's container behind the Docker host; its HTTP port published like
    ``docker run -p 8080:8080`` (media is NOT published: only STUN/TURN help)."""
    need_netns()
    lab = Lab(LabSpec(server_mode=ServerMode.BRIDGE, clients=[client], coturn=coturn))
    try:
        lab.start()
    except LabUnavailable as exc:
        pytest.skip(str(exc))
    try:
        ctr = f"{lab.server_ip}"
        netns.iptables(
            lab.host_ns, "-t", "nat", "-A", "DOCKER", "!", "-i", "docker0", "-p", "tcp",
            "--dport", "8080", "-j", "DNAT", "--to-destination", f"{ctr}:8080",
        )  # fmt: skip
        netns.iptables(
            lab.host_ns, "-A", "DOCKER", "-d", f"{ctr}/32", "!", "-i", "docker0", "-o",
            "docker0", "-p", "tcp", "--dport", "8080", "-j", "ACCEPT",
        )  # fmt: skip
        yield lab
    finally:
        lab.close()


def echo(lab: Lab, server_args: list[str], *client_args: str) -> tuple[dict[str, Any], str]:
    """Run the server in the container and the echo client; (client result, server log)."""
    client = lab.clients[0]
    with sfu_process(lab.server_ns, *MEDIA, *server_args) as proc:
        result = run_json(client.ns, [*CLIENT, f"ws://{HOST}:8080/ws", *client_args])
        log = proc.log_path.read_text()  # type: ignore[attr-defined]
    return result, log


def check_echo(result: dict[str, Any]) -> dict[str, Any]:
    assert result["ok"], result
    assert result["video_frames"] >= 30 and result["audio_frames"] >= 30
    peer: dict[str, Any] = result["server_stats"]["peer"]
    assert peer["state"] == "connected"
    media = peer["media"]
    assert media["packets_in"] > 0 and media["packets_out"] > 0 and media["srtp_errors"] == 0
    return peer


def candidates(result: dict[str, Any], typ: str) -> list[str]:
    return [c for c in result["server_candidates"] if f" typ {typ}" in c]


def test_srflx_candidate_is_the_docker_hosts_address() -> None:
    with bridge_lab(ClientKind.FILTERED, CoturnSpec()) as lab:
        result, log = echo(lab, ["--stun", STUN])
    check_echo(result)
    assert "srflx 198.51.100.1:40000 via STUN 192.0.2.1:3478" in log
    [srflx] = candidates(result, "srflx")
    assert " 198.51.100.1 40000 typ srflx raddr 172.17.0.2 rport 40000" in srflx
    assert candidates(result, "host") == [
        c for c in result["server_candidates"] if " 172.17.0.2 40000 typ host" in c
    ]


def test_announce_auto_replaces_the_container_address() -> None:
    with bridge_lab(ClientKind.FILTERED, CoturnSpec()) as lab:
        result, _ = echo(lab, ["--stun", STUN, "--announce", "*=auto"])
    check_echo(result)
    [host] = candidates(result, "host")
    assert " 198.51.100.1 40000 typ host" in host
    assert candidates(result, "srflx") == []  # the same address: offered once


def test_symmetric_client_fails_without_turn() -> None:
    """The negative control: no path exists between a symmetric NAT and a bridged server."""
    with bridge_lab(ClientKind.SYMMETRIC, CoturnSpec()) as lab:
        result, _ = echo(lab, ["--stun", STUN], "--stun", STUN, "--seconds", "8")
    assert not result["ok"]
    assert result["video_frames"] == 0


def check_relayed(result: dict[str, Any], log: str) -> None:
    peer = check_echo(result)
    pair = peer["selected_pair"]
    assert pair["local"]["type"] == "relay", pair
    assert (pair["local"]["address"], pair["remote"]["address"]) == ("192.0.2.1", "203.0.113.10")
    [relay] = candidates(result, "relay")
    assert f" 192.0.2.1 {pair['local']['port']} typ relay raddr {HOST} rport 40000" in relay
    assert f"relay 192.0.2.1:{pair['local']['port']} via TURN 192.0.2.1:3478" in log


def test_echo_through_turn_with_static_credentials() -> None:
    coturn = CoturnSpec(users=(("sfu", "sfu-pass"),))
    with bridge_lab(ClientKind.SYMMETRIC, coturn) as lab:
        turn = ["--stun", STUN, "--turn", TURN, "--turn-user", "sfu", "--turn-pass", "sfu-pass"]
        result, log = echo(lab, turn, "--stun", STUN)
    check_relayed(result, log)


def test_echo_through_turn_with_rest_credentials() -> None:
    coturn = CoturnSpec(shared_secret="S3CRET", verbose=True)  # verbose: it logs user names
    with bridge_lab(ClientKind.SYMMETRIC, coturn) as lab:
        turn = ["--turn", TURN, "--turn-secret", "S3CRET", "--turn-ttl", "3600"]
        started = time.time()
        result, log = echo(lab, turn, "--stun", STUN)
        assert lab.turn is not None
        turn_log = lab.turn.log_text()
    check_relayed(result, log)
    # coturn saw the REST user name: expiry (about now + ttl) as the whole name
    users = {int(u) for u in re.findall(r"new, realm=<[^>]*>, username=<(\d+)>", turn_log)}
    assert users and all(started + 3500 < u < time.time() + 3700 for u in users)
