"""Engines with TURN channels: a real engine socket and a test socket playing the TURN server on
127.0.0.1, for the reference engine and (when built) the C engine. ChannelData on a bound channel is handled as if it came from the peer
(control packets carry ``relay``; SRTP goes through the media path) and media toward a relayed
destination leaves as ChannelData."""

from __future__ import annotations

import asyncio
import os
import socket
import struct
from collections.abc import AsyncIterator

import pylibsrtp
import pytest
from aioice.stun import Class, Message, Method

from sfu.engine.base import (
    ConsumerSpec,
    ControlKind,
    ControlPacket,
    Engine,
    ProducerSpec,
    RelayPath,
    SrtpParameters,
    SrtpProfile,
)
from sfu.engine.pyengine import PyEngine
from sfu.webrtc.turn import decode_channel_data, encode_channel_data

PEER = ("203.0.113.10", 5000)  # the peer as the TURN server reports it (never contacted)
CHANNEL = 0x4000
TID = 7


class Rig:
    def __init__(self, engine: Engine, turn: socket.socket, socket_id: int, port: int) -> None:
        self.engine = engine
        self.turn = turn
        self.socket_id = socket_id
        self.engine_addr = ("127.0.0.1", port)
        self.server = turn.getsockname()
        self.packets: asyncio.Queue[ControlPacket] = asyncio.Queue()

    def to_engine(self, data: bytes) -> None:
        self.turn.sendto(data, self.engine_addr)

    async def from_engine(self) -> bytes:
        loop = asyncio.get_running_loop()
        data = await asyncio.wait_for(loop.sock_recv(self.turn, 4096), 2.0)
        return data

    async def control(self) -> ControlPacket:
        return await asyncio.wait_for(self.packets.get(), 2.0)


def make_engine(name: str) -> Engine:
    if name == "python":
        return PyEngine()
    try:
        from sfu.engine.cengine import CEngine
    except ImportError as exc:
        pytest.skip(f"the C engine is not built: {exc}")
    return CEngine()


@pytest.fixture(params=["python", "cython"])
async def rig(request: pytest.FixtureRequest) -> AsyncIterator[Rig]:
    engine = make_engine(request.param)
    info = engine.open_socket("127.0.0.1", 0)
    turn = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    turn.bind(("127.0.0.1", 0))
    turn.setblocking(False)
    r = Rig(engine, turn, info.socket_id, info.local_addr[1])
    engine.start(lambda batch: [r.packets.put_nowait(p) for p in batch])
    try:
        yield r
    finally:
        engine.stop()
        turn.close()


def binding_request() -> bytes:
    msg = Message(Method.BINDING, Class.REQUEST)
    msg.attributes["USERNAME"] = "abcd:efgh"
    msg.add_fingerprint()
    return bytes(msg)


async def test_stun_in_a_bound_channel_comes_out_as_from_the_peer(rig: Rig) -> None:
    rig.engine.bind_channel(rig.socket_id, rig.server, CHANNEL, PEER)
    stun = binding_request()
    rig.to_engine(encode_channel_data(CHANNEL, stun, pad=True))
    p = await rig.control()
    assert (p.kind, p.addr, p.relay, p.data) == (ControlKind.STUN, PEER, rig.server, stun)
    assert p.socket_id == rig.socket_id and p.transport_id == 0


async def test_unbound_channel_data_goes_to_python_as_turn(rig: Rig) -> None:
    frame = encode_channel_data(CHANNEL, binding_request())
    rig.to_engine(frame)
    p = await rig.control()
    assert (p.kind, p.addr, p.relay, p.data) == (ControlKind.TURN, rig.server, None, frame)
    rig.engine.bind_channel(rig.socket_id, rig.server, CHANNEL, PEER)
    rig.engine.unbind_channel(rig.socket_id, rig.server, CHANNEL)
    rig.to_engine(frame)
    assert (await rig.control()).kind is ControlKind.TURN


async def test_relayed_dtls_keeps_the_transport_binding(rig: Rig) -> None:
    rig.engine.bind_channel(rig.socket_id, rig.server, CHANNEL, PEER)
    rig.engine.bind(TID, rig.socket_id, PEER)
    dtls = bytes([22, 0xFE, 0xFD]) + os.urandom(30)
    rig.to_engine(encode_channel_data(CHANNEL, dtls))
    p = await rig.control()
    assert (p.kind, p.transport_id, p.addr, p.relay) == (ControlKind.DTLS, TID, PEER, rig.server)


def _policy(key: bytes, inbound: bool) -> pylibsrtp.Policy:
    return pylibsrtp.Policy(
        key=key,
        ssrc_type=pylibsrtp.Policy.SSRC_ANY_INBOUND
        if inbound
        else pylibsrtp.Policy.SSRC_ANY_OUTBOUND,
        srtp_profile=pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_80,
    )


async def test_srtp_through_a_channel_is_echoed_back_as_channel_data(rig: Rig) -> None:
    # the engine's keys: it receives with "remote", sends with "local"
    remote_key, remote_salt = os.urandom(16), os.urandom(14)
    local_key, local_salt = os.urandom(16), os.urandom(14)
    engine = rig.engine
    engine.set_srtp(
        TID,
        SrtpParameters(
            SrtpProfile.AES_CM_128_HMAC_SHA1_80, local_key, local_salt, remote_key, remote_salt
        ),
    )
    engine.bind_channel(rig.socket_id, rig.server, CHANNEL, PEER)
    engine.set_destination(TID, rig.socket_id, PEER, RelayPath(rig.server, CHANNEL))
    engine.add_producer(ProducerSpec(TID, 1111, "audio", 48000))
    engine.add_consumer(ConsumerSpec(1, TID, 1111, TID, 2222, 48000))
    peer_tx = pylibsrtp.Session(_policy(remote_key + remote_salt, inbound=False))
    peer_rx = pylibsrtp.Session(_policy(local_key + local_salt, inbound=True))

    rtp = struct.pack("!BBHII", 0x80, 111, 5, 960, 1111) + b"opus-frame"
    rig.to_engine(encode_channel_data(CHANNEL, peer_tx.protect(rtp), pad=True))
    decoded = decode_channel_data(await rig.from_engine())
    assert decoded is not None
    channel, payload = decoded
    assert channel == CHANNEL
    echoed = peer_rx.unprotect(payload)
    assert struct.unpack_from("!I", echoed, 8)[0] == 2222  # SSRC rewritten by the consumer
    assert echoed.endswith(b"opus-frame")
    stats = engine.transport_stats(TID)
    assert stats is not None and stats.packets_in == 1 and stats.packets_out == 1

    # RTCP from Python also leaves wrapped toward the TURN server
    rr = struct.pack("!BBHI", 0x80, 201, 1, 2222)
    engine.send_rtcp(TID, rr)
    decoded = decode_channel_data(await rig.from_engine())
    assert decoded is not None and decoded[0] == CHANNEL
    assert peer_rx.unprotect_rtcp(decoded[1]) == rr
