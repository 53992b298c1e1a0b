"""Types of the C forwarding engine binding (sfu/engine/_cengine.pyx)."""

from collections.abc import Iterable, Sequence
from typing import Final

from sfu.engine.base import Addr, ControlPacket, TransportStats

RECV_SIZE: Final[int]
BATCH: Final[int]
CTL_CAPACITY: Final[int]
STREAM_REPORTS: Final[int]

def classify(data: bytes) -> int:
    """RFC 7983 kind of a datagram (the values of sfu.rtp.demux.PacketKind), computed in C."""

def starts_keyframe(codec: str, packet: bytes) -> bool:
    """Whether an RTP packet starts a keyframe of ``codec``, computed in C (sfu_keyframe_start)."""

class Core:
    """One C engine: call the methods from one thread (the event loop), ``run`` from another."""

    def __init__(self) -> None: ...
    def run(self) -> int:
        """The forwarding loop (blocks, without the GIL, until request_stop)."""
    def request_stop(self) -> None: ...
    def shutdown(self) -> None:
        """Close the sockets (after run returned)."""
    @property
    def ctl_fd(self) -> int: ...
    def drain(self) -> list[ControlPacket]:
        """Control datagrams queued by the loop, as ControlPackets (clears ctl_fd)."""
    def add_socket(self, fd: int, family: int) -> int: ...
    def close_socket(self, socket_id: int) -> None: ...
    def send(self, socket_id: int, addr: Addr, data: bytes) -> bool: ...
    def bind(self, transport_id: int, socket_id: int, addr: Addr) -> None: ...
    def set_destination(
        self, transport_id: int, socket_id: int, addr: Addr, server: Addr | None, channel: int
    ) -> None: ...
    def bind_channel(self, socket_id: int, server: Addr, channel: int, peer: Addr) -> None: ...
    def unbind_channel(self, socket_id: int, server: Addr, channel: int) -> None: ...
    def set_srtp(
        self,
        transport_id: int,
        profile: int,
        local_key: bytes,
        local_salt: bytes,
        remote_key: bytes,
        remote_salt: bytes,
    ) -> None: ...
    def remove_transport(self, transport_id: int) -> None: ...
    def add_ingest(self, transport_id: int, socket_id: int, ssrc: int) -> None: ...
    def expect_rids(self, transport_id: int, mid_id: int, rid_id: int, rrid_id: int) -> None: ...
    def add_producer(
        self, transport_id: int, ssrc: int, clock_rate: int, cache_size: int
    ) -> None: ...
    def remove_producer(self, transport_id: int, ssrc: int) -> None: ...
    def add_consumer(
        self,
        consumer_id: int,
        src_transport: int,
        src_ssrc: int,
        dst_transport: int,
        dst_ssrc: int,
        clock_rate: int,
        cache_size: int,
        payload_type_map: Iterable[tuple[int, int]],
        keyframe_gate: str = "",
    ) -> None: ...
    def remove_consumer(self, consumer_id: int) -> None: ...
    def pause_consumer(self, consumer_id: int, paused: bool) -> None: ...
    def switch_consumer(
        self, consumer_id: int, src_transport: int, src_ssrc: int, clock_rate: int
    ) -> bool: ...
    def consumer_source(self, consumer_id: int) -> tuple[int, int] | None: ...
    def send_rtcp(self, transport_id: int, packet: bytes) -> None: ...
    def retransmit(self, consumer_id: int, seqs: Sequence[int]) -> int: ...
    def counters(self) -> tuple[int, int, int, int, int, int]:
        """(datagrams_in, datagrams_out, dropped_unknown, control_delivered, control_dropped,
        send_errors)."""
    def transport_stats(self, transport_id: int) -> TransportStats | None: ...
