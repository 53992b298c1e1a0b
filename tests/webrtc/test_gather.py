"""Start-up gathering: the sans-IO STUN probes (fake clock), srflx candidates, and the
WebRtcServer gathering for real through the reference engine against STUN and TURN responders
on 127.0.0.1 (the responders answer with documentation addresses, as a NAT would)."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from collections.abc import AsyncIterator, Callable

import pytest
from aioice.stun import Class, Message, Method, parse_message

from sfu.config import AnnounceMode, AnnounceRule, HostPort, MediaConfig, TurnServer
from sfu.engine.pyengine import PyEngine
from sfu.ice.candidate import Candidate, CandidateType
from sfu.webrtc.gather import BindingProbes, MappedAddress, srflx_candidates
from sfu.webrtc.server import MediaSettings, WebRtcServer
from sfu.webrtc.turn import RelayKey
from tests.webrtc.test_turn import MAPPED, PASSWORD, RELAYED, USER, TurnServerModel

STUN = ("192.0.2.1", 3478)
NAT = ("203.0.113.7", 50000)  # what our responder claims to see


def response(request: bytes, mapped: tuple[str, int]) -> bytes:
    req = parse_message(request)
    resp = Message(Method.BINDING, Class.RESPONSE, req.transaction_id)
    resp.attributes["XOR-MAPPED-ADDRESS"] = mapped
    resp.add_fingerprint()
    return bytes(resp)


# -- BindingProbes (sans-IO) ------------------------------------------------------------------


def test_probe_tries_three_times_and_gives_up_after_1_4_seconds() -> None:
    probes = BindingProbes()
    probes.add(1, STUN, 0.0)
    sent = [(0.0, probes.datagrams_to_send(0.0))]
    while not probes.finished:
        at = probes.get_timer()
        assert at is not None
        probes.handle_timer(at)
        sent.append((at, probes.datagrams_to_send(at)))
    assert [round(t, 3) for t, d in sent if d] == [0.0, 0.2, 0.6]  # the RTO doubles
    assert sent[-1][0] == pytest.approx(1.4)
    assert probes.results == [MappedAddress(1, STUN, None, "no answer after 3 tries")]
    data = {d[0][2] for _, d in sent if d}
    assert len(data) == 1  # a retransmission is the same request


def test_probe_takes_the_answer_from_its_server_on_its_socket_only() -> None:
    probes = BindingProbes()
    probes.add(1, STUN, 0.0)
    probes.add(2, STUN, 0.0)
    (s1, _, req1), (s2, _, req2) = probes.datagrams_to_send(0.0)
    assert (s1, s2) == (1, 2)
    assert not probes.receive(response(req1, NAT), 2, STUN, 0.1)  # wrong socket
    assert not probes.receive(response(req1, NAT), 1, ("192.0.2.9", 3478), 0.1)  # wrong server
    assert not probes.receive(b"\x00\x01" + bytes(30), 1, STUN, 0.1)  # not ours
    assert probes.receive(response(req1, NAT), 1, STUN, 0.1)
    assert not probes.finished
    err = Message(Method.BINDING, Class.ERROR, parse_message(req2).transaction_id)
    err.attributes["ERROR-CODE"] = (420, "Unknown Attribute")
    assert probes.receive(bytes(err), 2, STUN, 0.1)
    assert probes.finished and probes.get_timer() is None
    assert probes.results == [
        MappedAddress(1, STUN, NAT),
        MappedAddress(2, STUN, None, "error 420 Unknown Attribute"),
    ]


def test_srflx_candidates_skip_offered_addresses_and_duplicates() -> None:
    a = MappedAddress(1, STUN, NAT)
    b = MappedAddress(1, ("192.0.2.2", 3478), NAT)  # a second server, same mapping
    c = MappedAddress(2, STUN, ("203.0.113.8", 40000))
    failed = MappedAddress(3, STUN, None, "no answer")
    learned = [
        (a, "172.17.0.2", 40000),
        (b, "172.17.0.2", 40000),
        (c, "10.0.0.5", 40000),
        (failed, "10.0.0.6", 40000),
    ]
    out = srflx_candidates(
        learned,
        offered=[("203.0.113.8", 40000)],  # c equals an announced host candidate
    )
    assert len(out) == 1
    cand, sid = out[0]
    assert sid == 1
    assert (cand.type, cand.addr) == (CandidateType.SRFLX, NAT)
    assert (cand.related_address, cand.related_port) == ("172.17.0.2", 40000)
    assert cand.priority >> 24 == 100  # RFC 8445 srflx type preference
    # same type, base and STUN server -> same foundation; another server -> another
    again = srflx_candidates([(b, "172.17.0.2", 40000)], offered=[])[0][0]
    assert again.foundation != cand.foundation
    same = srflx_candidates([(a, "172.17.0.2", 40001)], offered=[])[0][0]
    assert same.foundation == cand.foundation


# -- WebRtcServer.gather through the engine -----------------------------------------------------


class Responder(asyncio.DatagramProtocol):
    """A UDP server on 127.0.0.1 answering with ``answer(data)`` (None: stay silent)."""

    def __init__(self, answer: Callable[[bytes], bytes | None]) -> None:
        self.answer = answer
        self.transport: asyncio.DatagramTransport | None = None
        self.received = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.received += 1
        reply = self.answer(data)
        if reply is not None and self.transport is not None:
            self.transport.sendto(reply, addr)

    @property
    def port(self) -> int:
        assert self.transport is not None
        return int(self.transport.get_extra_info("sockname")[1])


async def responder(answer: Callable[[bytes], bytes | None]) -> Responder:
    loop = asyncio.get_running_loop()
    _, proto = await loop.create_datagram_endpoint(
        lambda: Responder(answer), local_addr=("127.0.0.1", 0), family=socket.AF_INET
    )
    return proto


def stun_answer(data: bytes) -> bytes | None:
    msg = parse_message(data)
    if msg.message_method != Method.BINDING:
        return None
    return response(data, NAT)


async def run_server(
    stun_port: int | None,
    announce: tuple[AnnounceRule, ...] = (),
    turn: tuple[TurnServer, ...] = (),
    announce_private: bool = True,
) -> AsyncIterator[WebRtcServer]:
    media = MediaConfig(listen=(ipaddress.ip_address("127.0.0.1"),), port=0, include_loopback=True)
    stun = (HostPort("127.0.0.1", stun_port),) if stun_port else ()
    settings = MediaSettings(media, announce, announce_private, stun, turn)
    server = WebRtcServer(PyEngine(), settings)
    server.open()
    server.start()
    try:
        await server.gather()
        yield server
    finally:
        server.close()


def kinds(server: WebRtcServer) -> dict[str, list[Candidate]]:
    out: dict[str, list[Candidate]] = {}
    for cand, _ in server.local_candidates():
        out.setdefault(cand.type.value, []).append(cand)
    return out


async def test_gather_adds_a_srflx_candidate_learned_from_the_media_socket(
    caplog: pytest.LogCaptureFixture,
) -> None:
    stun = await responder(stun_answer)
    caplog.set_level(logging.INFO, "sfu.webrtc.server")
    async for server in run_server(stun.port):
        got = kinds(server)
        [host] = got["host"]
        [srflx] = got["srflx"]
        assert host.addr[0] == "127.0.0.1"
        assert srflx.addr == NAT
        assert (srflx.related_address, srflx.related_port) == host.addr  # base = the listener
    assert stun.received == 1
    assert f"srflx 203.0.113.7:50000 via STUN 127.0.0.1:{stun.port}" in caplog.text


async def test_announce_private_false_hides_the_private_base() -> None:
    stun = await responder(stun_answer)
    async for server in run_server(stun.port, announce_private=False):
        got = kinds(server)
        assert set(got) == {"srflx"}  # the loopback host candidate is private: dropped
        [srflx] = got["srflx"]
        assert srflx.addr == NAT
        assert srflx.to_sdp().endswith("typ srflx raddr 0.0.0.0 rport 0")


async def test_announce_auto_uses_the_stun_address() -> None:
    stun = await responder(stun_answer)
    rules = (
        AnnounceRule(public=None, public_port=40000),  # auto, published port given
        AnnounceRule(public=None, mode=AnnounceMode.APPEND),  # auto, STUN's port
    )
    async for server in run_server(stun.port, rules):
        got = kinds(server)
        hosts = {c.addr for c in got["host"]}
        assert hosts == {("203.0.113.7", 40000), NAT}  # the private one replaced by rule 1
        assert "srflx" not in got  # equal to an announced candidate: not offered twice


async def test_without_any_answer_gathering_gives_up_and_keeps_going(
    caplog: pytest.LogCaptureFixture,
) -> None:
    silent = await responder(lambda data: None)
    caplog.set_level(logging.INFO)
    turn = TurnServer(
        f"turn:127.0.0.1:{silent.port}?transport=udp", "127.0.0.1", silent.port, username="u",
        password="p",
    )  # fmt: skip
    loop = asyncio.get_running_loop()
    start = loop.time()
    async for server in run_server(silent.port, (AnnounceRule(public=None),), (turn,)):
        got = kinds(server)
        assert [c.addr[0] for c in got["host"]] == ["127.0.0.1"]  # auto rule skipped
        assert set(got) == {"host"}
    assert loop.time() - start < 5.0
    assert "no answer after 3 tries" in caplog.text
    assert "rule skipped" in caplog.text
    assert "going on without this relay" in caplog.text


async def test_gather_allocates_one_relay_shared_by_every_transport() -> None:
    model = TurnServerModel()
    turn_server = await responder(model.answer)
    turn = TurnServer(
        f"turn:127.0.0.1:{turn_server.port}?transport=udp",
        "127.0.0.1",
        turn_server.port,
        username=USER,
        password=PASSWORD,
    )
    async for server in run_server(None, turn=(turn,)):
        got = kinds(server)
        [relay] = got["relay"]
        assert relay.addr == RELAYED
        assert (relay.related_address, relay.related_port) == MAPPED
        keys = [k for c, k in server.local_candidates() if c.type is CandidateType.RELAY]
        assert keys == [RelayKey(keys[0].socket_id, ("127.0.0.1", turn_server.port))]
        assert kinds(server)["relay"] == [relay]  # the same allocation for the next transport
        [stats] = server.relay_stats()
        assert stats["state"] == "ready"
    assert model.allocated
    for _ in range(100):
        refresh = [m for m in model.requests if m.message_method == Method.REFRESH]
        if refresh:
            break
        await asyncio.sleep(0.01)
    assert [m.attributes["LIFETIME"] for m in refresh] == [0]  # released on close
