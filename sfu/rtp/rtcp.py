"""RTCP reading and the server's own reports, on top of aiortc's RTCP classes.

The server is a translator in RFC 3550 terms for forwarded streams, but it sends its own reports:
receiver reports for what it receives (so the sender's loss and RTT statistics are right) and
sender reports for what it sends (so the receiver can compute RTT and lip-sync). Everything here
is pure: statistics and a clock in, bytes out.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from aiortc import rtp as artp

NTP_EPOCH_OFFSET = 2208988800  # seconds from 1900 to 1970

RtcpItem = (
    artp.RtcpSrPacket
    | artp.RtcpRrPacket
    | artp.RtcpSdesPacket
    | artp.RtcpByePacket
    | artp.RtcpRtpfbPacket
    | artp.RtcpPsfbPacket
)


class RtcpError(ValueError):
    pass


def parse_rtcp(data: bytes) -> list[RtcpItem]:
    """Parse a compound RTCP packet; raises RtcpError on malformed input."""
    try:
        return list(artp.RtcpPacket.parse(data))
    except Exception as exc:
        raise RtcpError(f"malformed RTCP: {exc}") from None


def ntp_time(wall: float) -> int:
    """64-bit NTP timestamp for a wall-clock time (seconds since the Unix epoch)."""
    seconds = wall + NTP_EPOCH_OFFSET
    return (int(seconds) << 32) | int((seconds % 1) * (1 << 32))


def ntp_middle32(ntp: int) -> int:
    return (ntp >> 16) & 0xFFFFFFFF


@dataclass
class ReceiverState:
    """Per inbound SSRC: what an RR needs beyond the engine's counters."""

    last_sr_ntp_mid: int = 0  # middle 32 bits of the last SR's NTP time
    last_sr_arrival: float = 0.0  # monotonic
    prior_expected: int = 0
    prior_received: int = 0


@dataclass
class OutboundStream:
    ssrc: int
    packets: int
    octets: int
    last_rtp_ts: int
    last_send_time: float  # monotonic
    clock_rate: int


@dataclass
class InboundStream:
    ssrc: int
    packets: int
    highest_seq: int  # extended
    base_seq: int
    jitter: float


@dataclass
class RtcpReporter:
    """Builds the periodic compound RTCP of one transport."""

    sender_ssrc: int
    cname: str = "sfu"
    receivers: dict[int, ReceiverState] = field(default_factory=dict)

    def on_sender_report(self, sr: artp.RtcpSrPacket, now: float) -> None:
        state = self.receivers.setdefault(sr.ssrc, ReceiverState())
        state.last_sr_ntp_mid = ntp_middle32(sr.sender_info.ntp_timestamp)
        state.last_sr_arrival = now

    def report_blocks(
        self, inbound: Iterable[InboundStream], now: float
    ) -> list[artp.RtcpReceiverInfo]:
        blocks = []
        for s in inbound:
            if s.packets == 0 or s.highest_seq < 0:
                continue
            st = self.receivers.setdefault(s.ssrc, ReceiverState())
            expected = s.highest_seq - s.base_seq + 1
            lost = max(0, expected - s.packets)
            exp_int = expected - st.prior_expected
            rec_int = s.packets - st.prior_received
            lost_int = exp_int - rec_int
            fraction = 0 if exp_int <= 0 or lost_int <= 0 else min(255, (lost_int << 8) // exp_int)
            st.prior_expected, st.prior_received = expected, s.packets
            dlsr = 0
            if st.last_sr_arrival:
                dlsr = int((now - st.last_sr_arrival) * 65536) & 0xFFFFFFFF
            blocks.append(
                artp.RtcpReceiverInfo(
                    ssrc=s.ssrc,
                    fraction_lost=fraction,
                    packets_lost=artp.clamp_packets_lost(lost),
                    highest_sequence=s.highest_seq & 0xFFFFFFFF,
                    jitter=int(s.jitter) & 0xFFFFFFFF,
                    lsr=st.last_sr_ntp_mid,
                    dlsr=dlsr,
                )
            )
        return blocks

    def build(
        self,
        outbound: Sequence[OutboundStream],
        inbound: Iterable[InboundStream],
        now: float,
        wall: float,
    ) -> bytes:
        """One compound packet: an SR per sending SSRC (first carrying the report blocks) or an RR, then SDES."""
        blocks = self.report_blocks(inbound, now)
        parts: list[bytes] = []
        sending = [o for o in outbound if o.packets]
        if sending:
            for i, o in enumerate(sending):
                rtp_ts = (o.last_rtp_ts + int((now - o.last_send_time) * o.clock_rate)) & 0xFFFFFFFF
                info = artp.RtcpSenderInfo(
                    ntp_timestamp=ntp_time(wall),
                    rtp_timestamp=rtp_ts,
                    packet_count=o.packets & 0xFFFFFFFF,
                    octet_count=o.octets & 0xFFFFFFFF,
                )
                parts.append(
                    bytes(
                        artp.RtcpSrPacket(
                            ssrc=o.ssrc, sender_info=info, reports=blocks[:31] if i == 0 else []
                        )
                    )
                )
            ssrc = sending[0].ssrc
        else:
            parts.append(bytes(artp.RtcpRrPacket(ssrc=self.sender_ssrc, reports=blocks[:31])))
            ssrc = self.sender_ssrc
        sdes = artp.RtcpSdesPacket(
            chunks=[artp.RtcpSourceInfo(ssrc=ssrc, items=[(1, self.cname.encode())])]
        )
        parts.append(bytes(sdes))
        return b"".join(parts)


def rtt_from_report(block: artp.RtcpReceiverInfo, wall: float) -> float | None:
    """RTT in seconds from a report block about our stream (RFC 3550 6.4.1), or None."""
    if not block.lsr:
        return None
    now_mid = ntp_middle32(ntp_time(wall))
    rtt = (now_mid - block.lsr - block.dlsr) & 0xFFFFFFFF
    if rtt > 0x7FFFFFFF:
        return None
    return rtt / 65536.0


def pli(sender_ssrc: int, media_ssrc: int) -> bytes:
    return bytes(
        artp.RtcpPsfbPacket(fmt=artp.RTCP_PSFB_PLI, ssrc=sender_ssrc, media_ssrc=media_ssrc)
    )


def remb(sender_ssrc: int, bitrate: int, ssrcs: list[int]) -> bytes:
    fci = artp.pack_remb_fci(bitrate, ssrcs)
    return bytes(
        artp.RtcpPsfbPacket(fmt=artp.RTCP_PSFB_APP, ssrc=sender_ssrc, media_ssrc=0, fci=fci)
    )


def is_remb(p: RtcpItem) -> bool:
    return (
        isinstance(p, artp.RtcpPsfbPacket) and p.fmt == artp.RTCP_PSFB_APP and p.fci[:4] == b"REMB"
    )
