"""The reference engine: plain Python in one thread, SRTP by libsrtp (pylibsrtp).

It implements :class:`sfu.engine.base.Engine` with the same observable behaviour as the Cython
engine, and exists for two reasons: it is the simple model the compiled engine is tested against,
and it runs where the extension is not built. It is not fast (tens of microseconds per packet).

The loop thread owns receiving; sending happens from both threads under one lock, which also
guards the SRTP sessions and the routing tables.

Ingest sockets (:meth:`PyEngine.add_ingest`): every datagram on such a socket belongs to one
transport, whatever its source address; RTP on it is plain or SDES-keyed SRTP and gets the
transport's fixed SSRC.

Source switches (:meth:`PyEngine.switch_consumer`): a consumer with a pending target is listed
on both routes; packets of its current source are forwarded as usual, packets of the target are
only looked at until one starts a keyframe, which moves the consumer over.

Unannounced streams (:meth:`PyEngine.expect_rids`): the first packet of a new SSRC without a
producer is read for its MID/RID extensions (:mod:`sfu.engine.rtpext`) and reported once as a
STREAM control packet, which the event loop side hands to the transport's listener.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import itertools
import logging
import select
import socket
import struct
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import pylibsrtp

from sfu.engine.base import (
    STREAM_REPORTS,
    Addr,
    ConsumerSpec,
    ControlKind,
    ControlPacket,
    Deliver,
    EngineStats,
    IngestSpec,
    ProducerSpec,
    RelayPath,
    SdesExtensionIds,
    SocketInfo,
    SrtpParameters,
    SrtpProfile,
    StreamAnnouncement,
    StreamListener,
    StreamStats,
    TransportStats,
    dispatch_streams,
)
from sfu.engine.keyframe import starts_keyframe
from sfu.engine.rtpext import sdes_extensions
from sfu.rtp.demux import PacketKind, classify

log = logging.getLogger(__name__)

_PROFILES = {
    SrtpProfile.AES_CM_128_HMAC_SHA1_80: pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_80,
    SrtpProfile.AEAD_AES_128_GCM: pylibsrtp.Policy.SRTP_PROFILE_AEAD_AES_128_GCM,
}
_BATCH = 64
_RECV_SIZE = 2048
_CHANNEL_HEADER = struct.Struct("!HH")


def _norm(addr: tuple[object, ...]) -> Addr:
    return (str(addr[0]), int(addr[1]))  # type: ignore[call-overload]


@dataclass
class _OutStream:
    """What continuity needs of an outbound stream (destination transport + SSRC). It outlives
    consumers, so a new source on the same SSRC continues the sequence and timestamps."""

    last_seq: int = -1
    last_ts: int = 0
    last_time: float = 0.0


@dataclass
class _Consumer:
    spec: ConsumerSpec
    paused: bool = False
    seq_offset: int = 0
    ts_offset: int = 0
    synced: bool = False  # offsets computed for the current run of packets
    # out seq -> (source generation, protected packet); NACKs are served for the current
    # source and the one before the last switch (as the C engine's per-producer rings allow)
    cache: OrderedDict[int, tuple[int, bytes]] = field(default_factory=OrderedDict)
    pt_map: dict[int, int] = field(default_factory=dict)
    waiting: bool = False  # keyframe gate closed: nothing forwarded until a keyframe starts
    target: tuple[int, int] | None = None  # pending switch: the source taken at its keyframe
    target_clock: int = 0
    gen: int = 1  # generation of the current source (1..255, as in C)
    prev_gen: int = 0  # generation of the source before the last switch (0: none)
    prev_source: tuple[int, int] = (0, 0)

    @property
    def source(self) -> tuple[int, int]:
        return (self.spec.src_transport, self.spec.src_ssrc)


@dataclass(frozen=True)
class _Dest:
    """Where a transport's media goes: straight to ``addr``, or as ChannelData via a relay."""

    socket_id: int
    addr: Addr
    relay: RelayPath | None = None

    def wrap(self, data: bytes) -> tuple[Addr, bytes]:
        """(next hop, datagram): ChannelData is not padded (optional over UDP, RFC 8656 12.5)."""
        if self.relay is None:
            return self.addr, data
        return self.relay.server, _CHANNEL_HEADER.pack(self.relay.channel, len(data)) + data


@dataclass
class _Transport:
    transport_id: int
    dest: _Dest | None = None
    rx: pylibsrtp.Session | None = None
    tx: pylibsrtp.Session | None = None
    stats: TransportStats = field(default_factory=lambda: TransportStats(0))
    bindings: set[tuple[int, Addr]] = field(default_factory=set)
    producers: dict[int, ProducerSpec] = field(default_factory=dict)
    jitter_prev: dict[int, tuple[int, int]] = field(default_factory=dict)
    ingest_ssrc: int | None = None  # an ingest transport: RTP gets this SSRC
    sender_ssrc: int | None = None  # the last SSRC its sender used
    sdes_ids: tuple[int, int, int] | None = None  # expect_rids: MID, RID, repaired RID ids
    stream_reports: int = 0  # STREAM reports left
    announced: set[int] = field(default_factory=set)  # SSRCs reported


class PyEngine:
    """Reference implementation of :class:`sfu.engine.base.Engine`."""

    name = "python"

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._loop = loop
        self._lock = threading.RLock()
        self._sockets: dict[int, socket.socket] = {}
        self._ids = itertools.count(1)
        self._bindings: dict[tuple[int, Addr], int] = {}
        self._transports: dict[int, _Transport] = {}
        self._consumers: dict[int, _Consumer] = {}
        self._routes: dict[tuple[int, int], list[_Consumer]] = {}
        self._out_streams: dict[tuple[int, int], _OutStream] = {}
        self._channels: dict[tuple[int, Addr, int], Addr] = {}  # (socket, server, channel) -> peer
        self._ingest: dict[int, int] = {}  # socket id -> transport id (whole-socket binding)
        self._stats = EngineStats()
        self._deliver: Deliver | None = None
        self._pending: list[ControlPacket] = []
        self._stream_listeners: dict[int, StreamListener] = {}  # event loop thread only
        self._thread: threading.Thread | None = None
        self._running = False
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        # sockets the loop thread closes once it is out of poll(): a socket closed while poll()
        # still holds it keeps its port for a moment, and re-binding the port would fail
        self._closing: list[tuple[socket.socket, threading.Event]] = []

    # -- sockets -------------------------------------------------------------------------------

    def open_socket(self, host: str, port: int) -> SocketInfo:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
            sock.bind((host, port))
        except OSError:
            sock.close()
            raise
        sock.setblocking(False)
        socket_id = next(self._ids)
        with self._lock:
            self._sockets[socket_id] = sock
        self._wake()
        return SocketInfo(socket_id, family, _norm(sock.getsockname()))

    def adopt_socket(self, sock: socket.socket) -> SocketInfo:
        sock.setblocking(False)
        socket_id = next(self._ids)
        with self._lock:
            self._sockets[socket_id] = sock
        self._wake()
        return SocketInfo(socket_id, int(sock.family), _norm(sock.getsockname()))

    def add_ingest(self, spec: IngestSpec) -> None:
        with self._lock:
            if spec.socket_id not in self._sockets:
                raise KeyError(f"unknown socket {spec.socket_id}")
            t = self._transport(spec.transport_id)
            t.ingest_ssrc = spec.ssrc
            self._ingest[spec.socket_id] = spec.transport_id
        if spec.srtp is not None:
            self.set_srtp(spec.transport_id, spec.srtp)

    def close_socket(self, socket_id: int) -> None:
        with self._lock:
            sock = self._sockets.pop(socket_id, None)
            self._ingest.pop(socket_id, None)
            for key in [k for k in self._bindings if k[0] == socket_id]:
                del self._bindings[key]
            for ckey in [k for k in self._channels if k[0] == socket_id]:
                del self._channels[ckey]
            thread = self._thread
            deferred = (
                sock is not None
                and self._running
                and thread is not None
                and thread is not threading.current_thread()
            )
            closed = threading.Event()
            if deferred:
                assert sock is not None
                self._closing.append((sock, closed))
        self._wake()
        if sock is not None and (not deferred or not closed.wait(1.0)):
            sock.close()  # the port is free when this returns

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self, deliver: Deliver) -> None:
        if self._running:
            raise RuntimeError("engine already started")
        self._loop = self._loop or asyncio.get_running_loop()
        self._deliver = deliver
        self._running = True
        self._thread = threading.Thread(target=self._run, name="sfu-engine", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._running = False
        self._wake()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        with self._lock:
            for sock in self._sockets.values():
                sock.close()
            self._sockets.clear()
        self._wake_r.close()
        self._wake_w.close()

    def _wake(self) -> None:
        with contextlib.suppress(OSError):
            self._wake_w.send(b"\0")

    # -- control surface ------------------------------------------------------------------------

    def send(self, socket_id: int, addr: Addr, data: bytes) -> None:
        with self._lock:
            sock = self._sockets.get(socket_id)
            if sock is None:
                return
            self._sendto(sock, data, addr)

    def bind(self, transport_id: int, socket_id: int, addr: Addr) -> None:
        with self._lock:
            t = self._transport(transport_id)
            self._bindings[(socket_id, addr)] = transport_id
            t.bindings.add((socket_id, addr))

    def set_destination(
        self, transport_id: int, socket_id: int, addr: Addr, relay: RelayPath | None = None
    ) -> None:
        with self._lock:
            t = self._transport(transport_id)
            t.dest = _Dest(socket_id, addr, relay)
            self._bindings[(socket_id, addr)] = transport_id
            t.bindings.add((socket_id, addr))

    def bind_channel(self, socket_id: int, server: Addr, channel: int, peer: Addr) -> None:
        with self._lock:
            self._channels[(socket_id, server, channel)] = peer

    def unbind_channel(self, socket_id: int, server: Addr, channel: int) -> None:
        with self._lock:
            self._channels.pop((socket_id, server, channel), None)

    def set_srtp(self, transport_id: int, params: SrtpParameters) -> None:
        profile = _PROFILES[params.profile]
        rx = pylibsrtp.Session(
            pylibsrtp.Policy(
                key=params.remote_key + params.remote_salt,
                ssrc_type=pylibsrtp.Policy.SSRC_ANY_INBOUND,
                srtp_profile=profile,
            )
        )
        tx = pylibsrtp.Session(
            pylibsrtp.Policy(
                key=params.local_key + params.local_salt,
                ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND,
                srtp_profile=profile,
            )
        )
        with self._lock:
            t = self._transport(transport_id)
            t.rx, t.tx = rx, tx

    def expect_rids(
        self, transport_id: int, ids: SdesExtensionIds, listener: StreamListener
    ) -> None:
        values = (ids.mid, ids.rid, ids.repaired_rid)
        if any(not 0 <= v <= 255 for v in values):
            raise ValueError("invalid argument")
        with self._lock:
            t = self._transport(transport_id)
            t.sdes_ids = values if any(values) else None
            t.stream_reports = STREAM_REPORTS
        self._stream_listeners[transport_id] = listener

    def remove_transport(self, transport_id: int) -> None:
        self._stream_listeners.pop(transport_id, None)
        with self._lock:
            t = self._transports.pop(transport_id, None)
            if t is None:
                return
            for stream in [k for k in self._out_streams if k[0] == transport_id]:
                del self._out_streams[stream]
            for sid in [s for s, tid in self._ingest.items() if tid == transport_id]:
                del self._ingest[sid]
            for key in t.bindings:
                if self._bindings.get(key) == transport_id:
                    del self._bindings[key]
            for cid, c in list(self._consumers.items()):
                if transport_id in (c.spec.src_transport, c.spec.dst_transport):
                    self._remove_consumer_locked(cid)
                else:
                    if c.target is not None and c.target[0] == transport_id:
                        self._cancel_switch(c)
                    if c.prev_gen and c.prev_source[0] == transport_id:
                        c.prev_gen = 0  # what it sent from there is gone with the transport

    def add_producer(self, spec: ProducerSpec) -> None:
        with self._lock:
            t = self._transport(spec.transport_id)
            t.producers[spec.ssrc] = spec
            t.stats.inbound.setdefault(spec.ssrc, StreamStats(spec.ssrc))

    def remove_producer(self, transport_id: int, ssrc: int) -> None:
        with self._lock:
            t = self._transports.get(transport_id)
            if t is not None:
                t.producers.pop(ssrc, None)
            for cid, c in list(self._consumers.items()):
                if c.source == (transport_id, ssrc):
                    self._remove_consumer_locked(cid)
                elif c.target == (transport_id, ssrc):
                    self._cancel_switch(c)

    def add_consumer(self, spec: ConsumerSpec) -> None:
        with self._lock:
            if spec.consumer_id in self._consumers:
                raise ValueError(f"consumer {spec.consumer_id} exists")
            if spec.keyframe_gate:
                starts_keyframe(spec.keyframe_gate, b"")  # ValueError on an unknown codec
            c = _Consumer(spec, pt_map=dict(spec.payload_type_map))
            c.waiting = bool(spec.keyframe_gate)
            self._transport(spec.dst_transport).stats.outbound.setdefault(
                spec.dst_ssrc, StreamStats(spec.dst_ssrc)
            )
            self._consumers[spec.consumer_id] = c
            self._routes.setdefault((spec.src_transport, spec.src_ssrc), []).append(c)

    def remove_consumer(self, consumer_id: int) -> None:
        with self._lock:
            self._remove_consumer_locked(consumer_id)

    def _remove_consumer_locked(self, consumer_id: int) -> None:
        c = self._consumers.pop(consumer_id, None)
        if c is None:
            return
        self._cancel_switch(c)
        self._unroute(c, c.source)

    def _unroute(self, c: _Consumer, key: tuple[int, int]) -> None:
        lst = self._routes.get(key, [])
        if c in lst:
            lst.remove(c)
        if not lst:
            self._routes.pop(key, None)

    def _cancel_switch(self, c: _Consumer) -> None:
        if c.target is not None:
            self._unroute(c, c.target)
            c.target = None

    def _complete_switch(self, c: _Consumer) -> None:
        """Move ``c`` to its target (listed on the target's route already)."""
        assert c.target is not None
        self._unroute(c, c.source)
        c.prev_gen, c.prev_source = c.gen, c.source
        tid, ssrc = c.target
        c.spec = replace(c.spec, src_transport=tid, src_ssrc=ssrc, clock_rate=c.target_clock)
        c.target = None
        c.synced = False
        c.waiting = False
        c.gen = 1 if c.gen == 255 else c.gen + 1
        if c.gen == 1:
            c.cache.clear()  # the generations wrapped

    def pause_consumer(self, consumer_id: int, paused: bool) -> None:
        with self._lock:
            c = self._consumers.get(consumer_id)
            if c is not None and c.paused != paused:
                c.paused = paused
                c.synced = False
                c.waiting = bool(c.spec.keyframe_gate)

    def switch_consumer(
        self, consumer_id: int, src_transport: int, src_ssrc: int, clock_rate: int
    ) -> bool:
        with self._lock:
            c = self._consumers.get(consumer_id)
            if c is None:
                return False
            key = (src_transport, src_ssrc)
            if key == c.source:
                self._cancel_switch(c)
                return True
            if key != c.target:
                self._cancel_switch(c)
                c.target = key
                self._routes.setdefault(key, []).append(c)
            c.target_clock = clock_rate
            if not c.spec.keyframe_gate:
                self._complete_switch(c)  # no keyframe rule to wait for
            return True

    def consumer_source(self, consumer_id: int) -> tuple[int, int] | None:
        with self._lock:
            c = self._consumers.get(consumer_id)
            return None if c is None else c.source

    def send_rtcp(self, transport_id: int, packet: bytes) -> None:
        with self._lock:
            t = self._transports.get(transport_id)
            if t is None or t.tx is None or t.dest is None:
                return
            try:
                data = t.tx.protect_rtcp(packet)
            except pylibsrtp.Error:
                t.stats.srtp_errors += 1
                return
            if self._send_dest(t.dest, data):
                t.stats.rtcp_out += 1

    def retransmit(self, consumer_id: int, seqs: Sequence[int]) -> int:
        found = 0
        with self._lock:
            c = self._consumers.get(consumer_id)
            if c is None:
                return 0
            t = self._transports.get(c.spec.dst_transport)
            if t is None or t.dest is None or t.dest.socket_id not in self._sockets:
                return 0
            out = t.stats.outbound.get(c.spec.dst_ssrc)
            for seq in seqs:
                entry = c.cache.get(seq & 0xFFFF)
                if entry is None or entry[0] not in (c.gen, c.prev_gen):
                    continue
                data = entry[1]
                self._send_dest(t.dest, data)
                found += 1
                if out is not None:
                    out.retransmitted += 1
        return found

    def transport_stats(self, transport_id: int) -> TransportStats | None:
        with self._lock:
            t = self._transports.get(transport_id)
            if t is None:
                return None
            s = t.stats
            return TransportStats(
                transport_id,
                s.packets_in,
                s.bytes_in,
                s.packets_out,
                s.bytes_out,
                s.rtcp_in,
                s.rtcp_out,
                s.srtp_errors,
                s.unrouted,
                {k: replace(v) for k, v in s.inbound.items()},
                {k: replace(v) for k, v in s.outbound.items()},
            )

    def stats(self) -> EngineStats:
        s = self._stats
        return EngineStats(s.datagrams_in, s.datagrams_out, s.dropped_unknown, s.control_delivered)

    # -- internals ------------------------------------------------------------------------------

    def _transport(self, transport_id: int) -> _Transport:
        t = self._transports.get(transport_id)
        if t is None:
            t = _Transport(transport_id, stats=TransportStats(transport_id))
            self._transports[transport_id] = t
        return t

    def _send_dest(self, dest: _Dest, data: bytes) -> bool:
        sock = self._sockets.get(dest.socket_id)
        if sock is None:
            return False
        hop, datagram = dest.wrap(data)
        self._sendto(sock, datagram, hop)
        return True

    def _sendto(self, sock: socket.socket, data: bytes, addr: Addr) -> None:
        try:
            sock.sendto(data, addr)
            self._stats.datagrams_out += 1
        except OSError as exc:
            if exc.errno not in (
                errno.EAGAIN,
                errno.ENOBUFS,
                errno.ECONNREFUSED,
                errno.ENETUNREACH,
            ):
                log.debug("sendto %s failed: %s", addr, exc)

    def _run(self) -> None:
        poller = select.poll()
        registered: dict[int, int] = {}
        poller.register(self._wake_r.fileno(), select.POLLIN)
        while self._running:
            with self._lock:
                current = {sock.fileno(): sid for sid, sock in self._sockets.items()}
            for fd in set(registered) - set(current):
                with contextlib.suppress(KeyError, ValueError):
                    poller.unregister(fd)
            for fd in set(current) - set(registered):
                poller.register(fd, select.POLLIN)
            registered = current
            try:
                events = poller.poll(200)
            except InterruptedError:
                continue
            finally:
                self._close_deferred()
            for fd, _ in events:
                if fd == self._wake_r.fileno():
                    with contextlib.suppress(OSError):
                        self._wake_r.recv(4096)
                    continue
                sid = registered.get(fd)
                if sid is not None:
                    self._drain_socket(sid)
            self._flush()

    def _close_deferred(self) -> None:
        with self._lock:
            closing, self._closing = self._closing, []
        for sock, closed in closing:
            sock.close()
            closed.set()

    def _drain_socket(self, socket_id: int) -> None:
        sock = self._sockets.get(socket_id)
        if sock is None:
            return
        for _ in range(_BATCH):
            try:
                data, raw_addr = sock.recvfrom(_RECV_SIZE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            self._stats.datagrams_in += 1
            try:
                self._handle(socket_id, _norm(raw_addr), data)
            except Exception:  # never let one datagram stop the loop
                log.exception("engine: datagram from %s dropped", raw_addr)
                self._stats.dropped_unknown += 1

    def _handle(self, socket_id: int, addr: Addr, data: bytes, relay: Addr | None = None) -> None:
        ingest = self._ingest.get(socket_id)
        if ingest is not None:
            self._on_ingest(ingest, data)
            return
        if relay is None and len(data) >= 4 and 0x40 <= data[0] <= 0x7F:  # TURN ChannelData
            channel, length = _CHANNEL_HEADER.unpack_from(data)
            with self._lock:
                peer = self._channels.get((socket_id, addr, channel))
            if peer is not None:
                if len(data) < 4 + length:  # truncated (trailing padding is allowed)
                    self._stats.dropped_unknown += 1
                    return
                self._handle(socket_id, peer, data[4 : 4 + length], relay=addr)
                return
        kind = classify(data)
        tid = self._bindings.get((socket_id, addr), 0)
        if kind == PacketKind.STUN:
            self._queue(ControlPacket(ControlKind.STUN, socket_id, addr, data, tid, relay))
        elif kind == PacketKind.DTLS:
            self._queue(ControlPacket(ControlKind.DTLS, socket_id, addr, data, tid, relay))
        elif kind == PacketKind.TURN_CHANNEL and relay is None:
            self._queue(ControlPacket(ControlKind.TURN, socket_id, addr, data, tid))
        elif kind in (PacketKind.RTP, PacketKind.RTCP) and tid:
            with self._lock:
                t = self._transports.get(tid)
                if t is None or t.rx is None:
                    self._stats.dropped_unknown += 1
                    return
                if kind == PacketKind.RTP:
                    self._on_rtp(t, data, socket_id, addr)
                    return
                try:
                    plain = t.rx.unprotect_rtcp(data)
                except pylibsrtp.Error:
                    t.stats.srtp_errors += 1
                    return
                t.stats.rtcp_in += 1
            self._queue(ControlPacket(ControlKind.RTCP, socket_id, addr, plain, tid, relay))
        else:
            self._stats.dropped_unknown += 1

    def _on_ingest(self, tid: int, data: bytes) -> None:
        kind = classify(data)
        with self._lock:
            t = self._transports.get(tid)
            if t is None or kind not in (PacketKind.RTP, PacketKind.RTCP):
                self._stats.dropped_unknown += 1
            elif kind == PacketKind.RTP:
                self._on_rtp(t, data)
            else:
                t.stats.rtcp_in += 1  # the sender's reports: counted, not used

    def _on_rtp(
        self, t: _Transport, data: bytes, socket_id: int = 0, addr: Addr | None = None
    ) -> None:
        if t.rx is not None:
            try:
                plain = t.rx.unprotect(data)
            except pylibsrtp.Error:
                t.stats.srtp_errors += 1
                return
        elif t.ingest_ssrc is not None:
            plain = data
        else:
            self._stats.dropped_unknown += 1
            return
        t.stats.packets_in += 1
        t.stats.bytes_in += len(data)
        pt = plain[1] & 0x7F
        seq, ts, ssrc = struct.unpack_from("!HII", plain, 2)
        if t.ingest_ssrc is not None:
            if t.sender_ssrc is not None and ssrc != t.sender_ssrc:
                self._resync(t, t.ingest_ssrc)
            t.sender_ssrc = ssrc
            ssrc = t.ingest_ssrc
            plain = plain[:8] + struct.pack("!I", ssrc) + plain[12:]
        if (
            t.sdes_ids is not None
            and addr is not None
            and ssrc not in t.producers
            and ssrc not in t.announced
        ):
            self._announce(t, ssrc, plain, socket_id, addr)
        now = time.monotonic()
        self._update_inbound(t, ssrc, seq, ts, len(plain), now)
        consumers = self._routes.get((t.transport_id, ssrc))
        if not consumers:
            t.stats.unrouted += 1
            return
        key = (t.transport_id, ssrc)
        for c in consumers:  # a switch edits the old source's list, never this one
            if c.target == key:
                # a pending switch: taken at a keyframe of the target that actually leaves
                if (
                    c.paused
                    or not self._can_send(c)
                    or not starts_keyframe(c.spec.keyframe_gate, plain)
                ):
                    continue
                self._complete_switch(c)
            elif c.paused:
                continue
            elif c.waiting:
                # the gate opens on a keyframe that actually leaves (the destination is ready)
                if not self._can_send(c) or not starts_keyframe(c.spec.keyframe_gate, plain):
                    continue
                c.waiting = False
            self._forward(c, plain, pt, seq, ts, now)

    def _can_send(self, c: _Consumer) -> bool:
        dst = self._transports.get(c.spec.dst_transport)
        return dst is not None and dst.tx is not None and dst.dest is not None

    def _announce(self, t: _Transport, ssrc: int, plain: bytes, socket_id: int, addr: Addr) -> None:
        assert t.sdes_ids is not None
        if t.stream_reports <= 0:
            return
        found = sdes_extensions(plain, t.sdes_ids)
        if found is None or not any(found):
            return
        t.announced.add(ssrc)
        t.stream_reports -= 1
        data = StreamAnnouncement(t.transport_id, ssrc, *found).encode()
        self._queue(ControlPacket(ControlKind.STREAM, socket_id, addr, data, t.transport_id))

    def _resync(self, t: _Transport, ssrc: int) -> None:
        """A new sender on an ingest transport: its stream statistics start over and every
        consumer continues its output where it stopped (after a keyframe when gated)."""
        t.stats.inbound[ssrc] = StreamStats(ssrc)
        t.jitter_prev.pop(ssrc, None)
        for c in self._routes.get((t.transport_id, ssrc), []):
            if c.source == (t.transport_id, ssrc):  # not a consumer only waiting to switch
                c.synced = False
                c.waiting = bool(c.spec.keyframe_gate)

    def _update_inbound(
        self, t: _Transport, ssrc: int, seq: int, ts: int, size: int, now: float
    ) -> None:
        s = t.stats.inbound.get(ssrc)
        if s is None:
            s = t.stats.inbound[ssrc] = StreamStats(ssrc)
        s.packets += 1
        s.bytes += size
        if s.highest_seq < 0:
            s.base_seq = s.highest_seq = seq
        else:
            cycles = s.highest_seq & ~0xFFFF
            ext = cycles | seq
            delta = ext - s.highest_seq
            if delta < -0x8000:
                ext += 0x10000
            elif delta > 0x8000:
                ext -= 0x10000
            s.highest_seq = max(s.highest_seq, ext)
        producer = t.producers.get(ssrc)
        rate = producer.clock_rate if producer else 90000
        arrival = int(now * rate)
        prev = t.jitter_prev.get(ssrc)
        if prev is not None:
            # RFC 3550 A.8: D = (Rj - Ri) - (Sj - Si), timestamps compared modulo 2^32
            transit_delta = (arrival - prev[0]) - _ts_delta(ts, prev[1])
            s.jitter += (abs(transit_delta) - s.jitter) / 16.0
        t.jitter_prev[ssrc] = (arrival, ts)
        expected = s.highest_seq - s.base_seq + 1
        s.lost = max(0, expected - s.packets)

    def _forward(self, c: _Consumer, plain: bytes, pt: int, seq: int, ts: int, now: float) -> None:
        dst = self._transports.get(c.spec.dst_transport)
        if dst is None or dst.tx is None or dst.dest is None:
            return
        key = (c.spec.dst_transport, c.spec.dst_ssrc)
        st = self._out_streams.get(key)
        if st is None:
            st = self._out_streams[key] = _OutStream()
        if not c.synced:
            if st.last_seq >= 0:
                c.seq_offset = (st.last_seq + 1 - seq) & 0xFFFF
                elapsed = int(max(0.0, now - st.last_time) * c.spec.clock_rate)
                c.ts_offset = (st.last_ts + max(1, elapsed) - ts) & 0xFFFFFFFF
            c.synced = True
        out_seq = (seq + c.seq_offset) & 0xFFFF
        out_ts = (ts + c.ts_offset) & 0xFFFFFFFF
        out_pt = c.pt_map.get(pt, pt)
        packet = bytearray(plain)
        packet[1] = (packet[1] & 0x80) | out_pt
        struct.pack_into("!HII", packet, 2, out_seq, out_ts, c.spec.dst_ssrc)
        try:
            data = dst.tx.protect(bytes(packet))
        except pylibsrtp.Error:
            dst.stats.srtp_errors += 1
            return
        if not self._send_dest(dst.dest, data):
            return
        if c.spec.cache_size:
            c.cache[out_seq] = (c.gen, data)
            if len(c.cache) > c.spec.cache_size:
                c.cache.popitem(last=False)
        st.last_seq, st.last_ts, st.last_time = out_seq, out_ts, now
        dst.stats.packets_out += 1
        dst.stats.bytes_out += len(data)
        out = dst.stats.outbound.get(c.spec.dst_ssrc)
        if out is None:
            out = dst.stats.outbound[c.spec.dst_ssrc] = StreamStats(c.spec.dst_ssrc)
        out.packets += 1
        out.bytes += len(packet) - 12
        out.last_rtp_ts = out_ts
        out.last_send_time = now

    def _queue(self, packet: ControlPacket) -> None:
        self._pending.append(packet)
        if len(self._pending) >= _BATCH:
            self._flush()

    def _dispatch(self, batch: list[ControlPacket]) -> None:
        """On the event loop: STREAM packets to their listeners, the rest to ``deliver``."""
        if any(p.kind is ControlKind.STREAM for p in batch):
            batch = dispatch_streams(batch, self._stream_listeners)
        if batch and self._deliver is not None:
            self._deliver(batch)

    def _flush(self) -> None:
        if not self._pending or self._deliver is None or self._loop is None:
            return
        batch, self._pending = self._pending, []
        self._stats.control_delivered += len(batch)
        try:
            self._loop.call_soon_threadsafe(self._dispatch, batch)
        except RuntimeError:  # loop closed during shutdown
            pass


def _ts_delta(a: int, b: int) -> int:
    """a - b for 32-bit RTP timestamps, as a signed difference."""
    d = (a - b) & 0xFFFFFFFF
    return d - 0x100000000 if d >= 0x80000000 else d
