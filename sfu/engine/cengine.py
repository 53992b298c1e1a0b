"""The production engine: the C forwarding loop of :mod:`sfu.engine._cengine` behind the
:class:`sfu.engine.base.Engine` interface, with the behaviour of :class:`~sfu.engine.pyengine.PyEngine`.

Threads. The loop runs in a ``threading.Thread`` whose target enters C without the GIL and
never takes it again until it stops: it receives with ``recvmmsg`` (batches of 64), demuxes,
unprotects, fans out and protects in C, and sends with ``sendmmsg``. Control datagrams (STUN,
DTLS, TURN, decrypted RTCP) go into a bounded C queue (full: dropped and counted); its eventfd
is watched by the event loop (``add_reader``), which turns the queued entries into one batch of
:class:`ControlPacket` and calls ``deliver`` -- so the media thread never waits for the GIL,
whatever the event loop is doing. Calls from Python take the engine's mutex (with the GIL
released) for a few microseconds; the loop holds it while it processes one batch, and releases
it while it sends.

NACK. The retransmission cache is per producer (plaintext, sized by the largest consumer
``cache_size``) plus a 12-byte reference per cached packet in each consumer; ``retransmit``
rebuilds and re-protects the packet (same index, so the same bytes). A subscriber then costs a
few kilobytes instead of a protected copy of every cached packet (512 x 1.2 kB for video), which
keeps it under the 64 KiB-per-subscriber budget. Limit: packets more than 128 indices behind
the newest one sent on that SSRC cannot be re-protected (the SRTP sender's replay window, as in
libsrtp) and count as not found.

Unannounced streams. ``expect_rids`` arms a transport: the C loop parses the MID/RID header
extensions of the first packet of each new SSRC without a producer (after unprotect) and queues
one STREAM entry for it; ``_drain`` hands those to the transport's listener before delivering
the rest of the batch.

Continuity. Sequence-number and timestamp continuity is kept per outbound stream (destination
transport, SSRC), so it holds across a pause and also across a source switch (remove the
consumer of A, add a consumer of B writing the same SSRC; or ``switch_consumer``).

Source switches. ``switch_consumer`` lists the consumer on its target stream too; the C loop
looks at the target's packets only for a keyframe start, and at the first one moves the
consumer over. Its NACK log tags each entry with a source generation, so that what it sent
from the source before the last switch is still served from that source's ring.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
from collections.abc import Sequence
from dataclasses import dataclass

from sfu.engine import _cengine
from sfu.engine.base import (
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
    StreamListener,
    TransportStats,
    dispatch_streams,
)

log = logging.getLogger(__name__)

_SOCKET_BUFFER = 4 << 20


@dataclass(frozen=True, slots=True)
class CEngineCounters:
    """Counters beyond :class:`EngineStats`."""

    control_dropped: int  # control datagrams dropped because the queue to Python was full
    send_errors: int  # datagrams the kernel refused (other than "peer unreachable")


def _norm(addr: tuple[object, ...]) -> Addr:
    return (str(addr[0]), int(addr[1]))  # type: ignore[call-overload]


class CEngine:
    """The C forwarding engine (:class:`sfu.engine.base.Engine`)."""

    name = "cython"

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._loop = loop
        self._core = _cengine.Core()
        self._deliver: Deliver | None = None
        self._thread: threading.Thread | None = None
        self._watching = False
        self._stopped = False
        self._stream_listeners: dict[int, StreamListener] = {}

    # -- sockets -------------------------------------------------------------------------------

    def open_socket(self, host: str, port: int) -> SocketInfo:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _SOCKET_BUFFER)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _SOCKET_BUFFER)
            sock.bind((host, port))
            sock.setblocking(False)
            local = _norm(sock.getsockname())
            socket_id = self._core.add_socket(sock.fileno(), int(family))
        except OSError:
            sock.close()
            raise
        sock.detach()  # the engine owns the descriptor now
        return SocketInfo(socket_id, int(family), local)

    def adopt_socket(self, sock: socket.socket) -> SocketInfo:
        sock.setblocking(False)
        family = sock.family
        local = _norm(sock.getsockname())
        socket_id = self._core.add_socket(sock.fileno(), int(family))
        sock.detach()  # the engine owns the descriptor now
        return SocketInfo(socket_id, int(family), local)

    def add_ingest(self, spec: IngestSpec) -> None:
        self._core.add_ingest(spec.transport_id, spec.socket_id, spec.ssrc)
        if spec.srtp is not None:
            self.set_srtp(spec.transport_id, spec.srtp)

    def close_socket(self, socket_id: int) -> None:
        self._core.close_socket(socket_id)

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self, deliver: Deliver) -> None:
        if self._thread is not None or self._stopped:
            raise RuntimeError("engine already started" if self._thread else "engine stopped")
        self._loop = self._loop or asyncio.get_running_loop()
        self._deliver = deliver
        self._loop.add_reader(self._core.ctl_fd, self._drain)
        self._watching = True
        self._thread = threading.Thread(target=self._core.run, name="sfu-engine", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopped = True
        self._core.request_stop()
        if self._thread is not None:
            self._thread.join(timeout=5)
            if self._thread.is_alive():
                log.error("engine thread did not stop; leaving its sockets open")
                return
            self._thread = None
        self._unwatch()
        self._core.shutdown()

    def _unwatch(self) -> None:
        if not self._watching or self._loop is None:
            return
        self._watching = False
        loop, fd = self._loop, self._core.ctl_fd
        with contextlib.suppress(RuntimeError, ValueError, OSError):
            try:
                running = asyncio.get_running_loop()
            except RuntimeError:
                running = None
            if running is loop or loop.is_closed():
                loop.remove_reader(fd)
            else:
                loop.call_soon_threadsafe(loop.remove_reader, fd)

    def _drain(self) -> None:
        batch: list[ControlPacket] = self._core.drain()
        if any(p.kind is ControlKind.STREAM for p in batch):
            batch = dispatch_streams(batch, self._stream_listeners)
        if batch and self._deliver is not None:
            self._deliver(batch)

    # -- control surface ------------------------------------------------------------------------

    def send(self, socket_id: int, addr: Addr, data: bytes) -> None:
        try:
            self._core.send(socket_id, addr, bytes(data))
        except ValueError:  # not a numeric address: dropped, as a failed sendto would be
            log.debug("send to %r dropped: not a numeric address", addr)

    def bind(self, transport_id: int, socket_id: int, addr: Addr) -> None:
        self._core.bind(transport_id, socket_id, addr)

    def set_destination(
        self, transport_id: int, socket_id: int, addr: Addr, relay: RelayPath | None = None
    ) -> None:
        if relay is None:
            self._core.set_destination(transport_id, socket_id, addr, None, 0)
        else:
            self._core.set_destination(transport_id, socket_id, addr, relay.server, relay.channel)

    def bind_channel(self, socket_id: int, server: Addr, channel: int, peer: Addr) -> None:
        self._core.bind_channel(socket_id, server, channel, peer)

    def unbind_channel(self, socket_id: int, server: Addr, channel: int) -> None:
        self._core.unbind_channel(socket_id, server, channel)

    def set_srtp(self, transport_id: int, params: SrtpParameters) -> None:
        self._core.set_srtp(
            transport_id,
            int(params.profile),
            params.local_key,
            params.local_salt,
            params.remote_key,
            params.remote_salt,
        )

    def remove_transport(self, transport_id: int) -> None:
        self._stream_listeners.pop(transport_id, None)
        self._core.remove_transport(transport_id)

    def expect_rids(
        self, transport_id: int, ids: SdesExtensionIds, listener: StreamListener
    ) -> None:
        self._core.expect_rids(transport_id, ids.mid, ids.rid, ids.repaired_rid)
        self._stream_listeners[transport_id] = listener

    def add_producer(self, spec: ProducerSpec) -> None:
        self._core.add_producer(spec.transport_id, spec.ssrc, spec.clock_rate, spec.cache_size)

    def remove_producer(self, transport_id: int, ssrc: int) -> None:
        self._core.remove_producer(transport_id, ssrc)

    def add_consumer(self, spec: ConsumerSpec) -> None:
        self._core.add_consumer(
            spec.consumer_id,
            spec.src_transport,
            spec.src_ssrc,
            spec.dst_transport,
            spec.dst_ssrc,
            spec.clock_rate,
            spec.cache_size,
            spec.payload_type_map,
            spec.keyframe_gate,
        )

    def remove_consumer(self, consumer_id: int) -> None:
        self._core.remove_consumer(consumer_id)

    def pause_consumer(self, consumer_id: int, paused: bool) -> None:
        self._core.pause_consumer(consumer_id, paused)

    def switch_consumer(
        self, consumer_id: int, src_transport: int, src_ssrc: int, clock_rate: int
    ) -> bool:
        return self._core.switch_consumer(consumer_id, src_transport, src_ssrc, clock_rate)

    def consumer_source(self, consumer_id: int) -> tuple[int, int] | None:
        return self._core.consumer_source(consumer_id)

    def send_rtcp(self, transport_id: int, packet: bytes) -> None:
        self._core.send_rtcp(transport_id, bytes(packet))

    def retransmit(self, consumer_id: int, seqs: Sequence[int]) -> int:
        return self._core.retransmit(consumer_id, seqs)

    def transport_stats(self, transport_id: int) -> TransportStats | None:
        return self._core.transport_stats(transport_id)

    def stats(self) -> EngineStats:
        c = self._core.counters()
        return EngineStats(c[0], c[1], c[2], c[3])

    def counters(self) -> CEngineCounters:
        c = self._core.counters()
        return CEngineCounters(c[4], c[5])
