"""The engine interface: the narrow surface between the control plane (Python, asyncio) and the packet path.

The engine owns the media sockets. Its loop runs in its own thread, never in the event loop. It receives
datagrams, classifies them (RFC 7983, :func:`sfu.rtp.demux.classify`), and

* hands STUN, DTLS, TURN and decrypted RTCP to Python as :class:`ControlPacket` batches, through
  ``deliver`` called on the event loop thread (one call per batch, never per packet);
* unprotects SRTP from a bound transport, updates the producer's statistics and retransmission cache,
  and fans the packet out to every consumer of that producer, rewriting SSRC, sequence number and
  timestamp, protecting with the consumer transport's keys, and sending.

Python sets state through the methods of :class:`Engine`: socket opening, the binding of remote
addresses to transports (from ICE), SRTP keys (from DTLS), producers and consumers (from the
applications), and it sends its own datagrams (STUN, DTLS) and RTCP (protected by the engine).

Two implementations exist: :mod:`sfu.engine.pyengine` (a plain-Python reference, used for
differential tests) and the Cython engine (the production hot loop).

Streaming mountpoints add three small things (:class:`IngestEngine`, implemented by both):

* ``adopt_socket``: the engine takes over a UDP socket the caller prepared (bound to a multicast
  group and joined, for instance);
* ``add_ingest``: every datagram on that socket belongs to one transport, whatever address it
  came from (ffmpeg sends from an ephemeral port), as plain RTP -- or SRTP with SDES keys -- whose
  SSRC is rewritten to a fixed one. When the sender's own SSRC changes (a restarted sender), the
  consumers of the stream re-synchronise: their output sequence and timestamps just continue.
  RTCP on such a socket is counted (``rtcp_in``) and dropped; anything else is ``dropped_unknown``;
* ``ConsumerSpec.keyframe_gate``: a video consumer that forwards nothing until a packet that
  starts a keyframe of its codec arrives while its destination can send (keys set, a selected
  pair), after it is added and again after each resume or re-synchronisation, so a watcher
  never decodes delta frames whose reference it never had.
  :mod:`sfu.engine.keyframe` is the reference of what "starts a keyframe" means.

Simulcast with RID (RFC 8852): the sender signals no SSRCs, so ``expect_rids`` tells the engine
that a transport carries unannounced streams and which header-extension ids carry MID, RID and
repaired RID. The first packet of each new SSRC without a producer that carries one of them is
reported once, after SRTP unprotect, as a ``ControlKind.STREAM`` entry of the same control
queue (:class:`StreamAnnouncement` decodes it; at most ``STREAM_REPORTS`` per ``expect_rids``
call). The engine hands those entries to the listener given to ``expect_rids`` on the event
loop thread, ahead of the rest of their batch, rather than to ``deliver``: the transport's
owner (the application), not the server's datagram router, needs them.
:mod:`sfu.engine.rtpext` is the reference of the header-extension parsing.

Seamless source switches (simulcast layers): ``switch_consumer`` gives a consumer a pending
target source. The consumer keeps forwarding its current source; the first packet of the target
that starts a keyframe of the consumer's ``keyframe_gate`` codec, and that leaves (the consumer
is not paused, its destination can send), switches it atomically: that packet is the first one
forwarded from the target, and the output continues its sequence numbers and timestamps as for
any change of source. Delta frames of the target before it are not forwarded. A second switch
before the first completes replaces the target; a switch to the current source cancels; removing
the target's producer or transport cancels. A consumer without a keyframe codec switches at
once. The consumer's NACK cache keeps working across the switch (packets from before it too).
"""

from __future__ import annotations

import enum
import logging
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Final, Protocol, runtime_checkable

from sfu.rtp.srtp import SrtpProfile as SrtpProfile  # re-exported for the engine's callers

log = logging.getLogger(__name__)

Addr = tuple[str, int]

# Values of ConsumerSpec.keyframe_gate ("" = no gate).
KEYFRAME_CODECS: Final = ("vp8", "vp9", "h264")


class ControlKind(enum.IntEnum):
    """What a :class:`ControlPacket` carries."""

    STUN = 1
    DTLS = 2
    RTCP = 3  # already unprotected (SRTCP removed)
    TURN = 4  # TURN ChannelData from a TURN server
    STREAM = 5  # a new SSRC named by its MID/RID header extensions (see StreamAnnouncement)


# STREAM reports a transport may make per expect_rids call.
STREAM_REPORTS: Final = 32


@dataclass(frozen=True, slots=True)
class ControlPacket:
    """A datagram the engine hands to Python."""

    kind: ControlKind
    socket_id: int
    addr: Addr  # the peer (for relayed data: the peer's address as the TURN server saw it)
    data: bytes
    transport_id: int = 0  # 0 when the 5-tuple is not bound to a transport
    relay: Addr | None = (
        None  # set when the datagram came unwrapped from a TURN channel via this server
    )


@dataclass(frozen=True, slots=True)
class SdesExtensionIds:
    """Header-extension ids negotiated for MID, RID and repaired RID (0 = not negotiated)."""

    mid: int = 0
    rid: int = 0
    repaired_rid: int = 0


@dataclass(frozen=True, slots=True)
class StreamAnnouncement:
    """A new SSRC on a transport, named by the header extensions of its first packet.

    ``repaired_rid`` is set on a retransmission (RTX) stream: it repairs the stream of that RID.
    """

    transport_id: int
    ssrc: int
    mid: str = ""
    rid: str = ""
    repaired_rid: str = ""

    def encode(self) -> bytes:
        """The data of a ``ControlKind.STREAM`` packet (what both engines produce)."""
        out = bytearray(self.ssrc.to_bytes(4, "big"))
        for value in (self.mid, self.rid, self.repaired_rid):
            raw = value.encode("ascii")
            out.append(len(raw))
            out += raw
        return bytes(out)

    @classmethod
    def decode(cls, packet: ControlPacket) -> StreamAnnouncement:
        """Parse a ``ControlKind.STREAM`` packet (ValueError if it is not one)."""
        data = packet.data
        if packet.kind is not ControlKind.STREAM or len(data) < 7:
            raise ValueError("not a STREAM control packet")
        values: list[str] = []
        o = 4
        for _ in range(3):
            n = data[o]
            values.append(data[o + 1 : o + 1 + n].decode("ascii"))
            o += 1 + n
        return cls(packet.transport_id, int.from_bytes(data[:4], "big"), *values)


StreamListener = Callable[[StreamAnnouncement], None]


@dataclass(frozen=True, slots=True)
class RelayPath:
    """Media toward a peer that goes through a TURN server as ChannelData on ``channel``."""

    server: Addr
    channel: int


@dataclass(frozen=True, slots=True)
class SocketInfo:
    socket_id: int
    family: int
    local_addr: Addr


@dataclass(frozen=True, slots=True)
class SrtpParameters:
    """Keys from the DTLS handshake: ``local_*`` protect what we send, ``remote_*`` what we receive."""

    profile: SrtpProfile
    local_key: bytes
    local_salt: bytes
    remote_key: bytes
    remote_salt: bytes


@dataclass(frozen=True, slots=True)
class ProducerSpec:
    """An inbound RTP stream on a transport."""

    transport_id: int
    ssrc: int
    kind: str  # "audio" | "video"
    clock_rate: int
    cache_size: int = 0  # packets kept for NACK (0 = none)


@dataclass(frozen=True, slots=True)
class ConsumerSpec:
    """An outbound copy of a producer's stream on a transport (SSRC and continuity rewritten)."""

    consumer_id: int
    src_transport: int
    src_ssrc: int
    dst_transport: int
    dst_ssrc: int
    clock_rate: int
    cache_size: int = 0  # protected packets kept for NACK from this consumer's receiver
    payload_type_map: Sequence[tuple[int, int]] = ()  # (in PT, out PT); empty = unchanged
    # "vp8" | "vp9" | "h264": forward nothing until a keyframe starts (again after a resume)
    keyframe_gate: str = ""


@dataclass(frozen=True, slots=True)
class IngestSpec:
    """RTP arriving on one socket from any address (not WebRTC): a mountpoint's feed.

    Every RTP packet on ``socket_id`` belongs to ``transport_id``; its SSRC is rewritten to
    ``ssrc`` (one stream per socket), so producers and consumers use that SSRC. ``srtp``: SDES
    keys, of which ``remote_key``/``remote_salt`` unprotect; None = plain RTP.
    """

    transport_id: int
    socket_id: int
    ssrc: int
    srtp: SrtpParameters | None = None


@dataclass(slots=True)
class StreamStats:
    """Counters of one RTP stream (inbound for producers, outbound for consumers)."""

    ssrc: int
    packets: int = 0
    bytes: int = 0
    # inbound only
    highest_seq: int = -1  # extended (with cycles)
    base_seq: int = -1
    jitter: float = 0.0  # in timestamp units
    lost: int = 0
    # outbound only
    last_rtp_ts: int = 0
    last_send_time: float = 0.0
    retransmitted: int = 0


@dataclass(slots=True)
class TransportStats:
    transport_id: int
    packets_in: int = 0
    bytes_in: int = 0
    packets_out: int = 0
    bytes_out: int = 0
    rtcp_in: int = 0
    rtcp_out: int = 0
    srtp_errors: int = 0
    unrouted: int = 0
    inbound: dict[int, StreamStats] = field(default_factory=dict)
    outbound: dict[int, StreamStats] = field(default_factory=dict)


@dataclass(slots=True)
class EngineStats:
    datagrams_in: int = 0
    datagrams_out: int = 0
    dropped_unknown: int = 0  # not STUN/DTLS/RTP/RTCP, or RTP from an unbound address
    control_delivered: int = 0


Deliver = Callable[[list[ControlPacket]], None]


class Engine(Protocol):
    """What every engine implements. All methods are called from the event loop thread."""

    def open_socket(self, host: str, port: int) -> SocketInfo: ...

    def close_socket(self, socket_id: int) -> None: ...

    def start(self, deliver: Deliver) -> None:
        """Start the loop thread; ``deliver`` is scheduled on the caller's event loop with batches."""
        ...

    def stop(self) -> None: ...

    def send(self, socket_id: int, addr: Addr, data: bytes) -> None:
        """Send a raw datagram (STUN, DTLS, TURN) from one of the engine's sockets."""
        ...

    def bind(self, transport_id: int, socket_id: int, addr: Addr) -> None:
        """Datagrams arriving on ``socket_id`` from ``addr`` belong to ``transport_id``."""
        ...

    def set_destination(
        self, transport_id: int, socket_id: int, addr: Addr, relay: RelayPath | None = None
    ) -> None:
        """Media for ``transport_id`` leaves from ``socket_id`` toward ``addr`` (the selected pair).

        With ``relay``, each packet is wrapped as TURN ChannelData and sent to ``relay.server``.
        """
        ...

    def bind_channel(self, socket_id: int, server: Addr, channel: int, peer: Addr) -> None:
        """ChannelData arriving on ``socket_id`` from ``server`` on ``channel`` is unwrapped and
        handled as if it came from ``peer`` (bindings and routing use ``(socket_id, peer)``,
        control packets carry ``relay=server``)."""
        ...

    def unbind_channel(self, socket_id: int, server: Addr, channel: int) -> None: ...

    def set_srtp(self, transport_id: int, params: SrtpParameters) -> None: ...

    def remove_transport(self, transport_id: int) -> None:
        """Forget the transport, its bindings, keys, producers and consumers."""
        ...

    def expect_rids(
        self, transport_id: int, ids: SdesExtensionIds, listener: StreamListener
    ) -> None:
        """Report new SSRCs of ``transport_id`` by their MID/RID extensions to ``listener``
        (once per SSRC without a producer, at most ``STREAM_REPORTS`` per call; calling
        again re-arms). ``remove_transport`` forgets it."""
        ...

    def add_producer(self, spec: ProducerSpec) -> None: ...

    def remove_producer(self, transport_id: int, ssrc: int) -> None: ...

    def add_consumer(self, spec: ConsumerSpec) -> None: ...

    def remove_consumer(self, consumer_id: int) -> None: ...

    def pause_consumer(self, consumer_id: int, paused: bool) -> None: ...

    def switch_consumer(
        self, consumer_id: int, src_transport: int, src_ssrc: int, clock_rate: int
    ) -> bool:
        """Move the consumer to another source at that source's next keyframe (see the module):
        it keeps forwarding its current source until then. False if there is no such consumer."""
        ...

    def consumer_source(self, consumer_id: int) -> tuple[int, int] | None:
        """The (transport, SSRC) the consumer forwards now (None: no such consumer)."""
        ...

    def send_rtcp(self, transport_id: int, packet: bytes) -> None:
        """Protect a compound RTCP packet with the transport's keys and send it to its destination."""
        ...

    def retransmit(self, consumer_id: int, seqs: Sequence[int]) -> int:
        """Resend cached packets of a consumer by (output) sequence number; returns how many were found."""
        ...

    def transport_stats(self, transport_id: int) -> TransportStats | None: ...

    def stats(self) -> EngineStats: ...


@runtime_checkable
class IngestEngine(Engine, Protocol):
    """An engine that also takes RTP from outside WebRTC (streaming mountpoints)."""

    def adopt_socket(self, sock: socket.socket) -> SocketInfo:
        """Take ownership of a bound UDP socket (the caller must not use or close it again)."""
        ...

    def add_ingest(self, spec: IngestSpec) -> None:
        """Route everything arriving on ``spec.socket_id`` to ``spec.transport_id`` (see
        :class:`IngestSpec`). ``remove_transport`` undoes it; the socket stays open until
        ``close_socket``."""
        ...


def dispatch_streams(
    batch: list[ControlPacket], listeners: dict[int, StreamListener]
) -> list[ControlPacket]:
    """Hand the STREAM entries of a batch to their transport's listener; returns the rest
    (a STREAM entry of a transport without a listener is dropped)."""
    rest: list[ControlPacket] = []
    for packet in batch:
        if packet.kind is not ControlKind.STREAM:
            rest.append(packet)
            continue
        listener = listeners.get(packet.transport_id)
        if listener is None:
            continue
        try:
            listener(StreamAnnouncement.decode(packet))
        except Exception:  # one listener's failure never takes the batch down
            log.exception("stream listener of transport %d failed", packet.transport_id)
    return rest
