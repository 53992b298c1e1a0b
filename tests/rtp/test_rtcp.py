"""The server's own RTCP: receiver reports, sender reports, RTT, feedback builders."""

from __future__ import annotations

from aiortc import rtp as artp

from sfu.rtp.rtcp import (
    InboundStream,
    OutboundStream,
    RtcpReporter,
    is_remb,
    ntp_middle32,
    ntp_time,
    parse_rtcp,
    pli,
    remb,
    rtt_from_report,
)


def test_receiver_report_loss_fraction_and_lsr_dlsr() -> None:
    rep = RtcpReporter(sender_ssrc=99)
    sr = artp.RtcpSrPacket(ssrc=5, sender_info=artp.RtcpSenderInfo(ntp_time(1000.0), 0, 10, 1000))
    rep.on_sender_report(sr, now=50.0)
    # 100 expected, 90 received: 10 lost
    data = rep.build(
        [],
        [InboundStream(5, packets=90, highest_seq=199, base_seq=100, jitter=12.7)],
        now=50.5,
        wall=1000.5,
    )
    packets = parse_rtcp(data)
    rr = packets[0]
    assert isinstance(rr, artp.RtcpRrPacket) and rr.ssrc == 99
    block = rr.reports[0]
    assert block.ssrc == 5 and block.packets_lost == 10 and block.highest_sequence == 199
    assert block.fraction_lost == (10 << 8) // 100
    assert block.jitter == 12
    assert block.lsr == ntp_middle32(ntp_time(1000.0))
    assert block.dlsr == 32768  # 0.5 s in 1/65536 s
    assert isinstance(packets[1], artp.RtcpSdesPacket)
    # the next interval: no new loss
    data = rep.build(
        [],
        [InboundStream(5, packets=190, highest_seq=299, base_seq=100, jitter=1)],
        now=51.5,
        wall=1001.5,
    )
    assert parse_rtcp(data)[0].reports[0].fraction_lost == 0  # type: ignore[union-attr]


def test_sender_report_extrapolates_the_rtp_clock() -> None:
    rep = RtcpReporter(sender_ssrc=99)
    out = [
        OutboundStream(
            7, packets=10, octets=1000, last_rtp_ts=90000, last_send_time=10.0, clock_rate=90000
        )
    ]
    sr = parse_rtcp(rep.build(out, [], now=10.5, wall=2000.0))[0]
    assert isinstance(sr, artp.RtcpSrPacket) and sr.ssrc == 7
    assert sr.sender_info.rtp_timestamp == 90000 + 45000
    assert (sr.sender_info.packet_count, sr.sender_info.octet_count) == (10, 1000)


def test_rtt_from_a_report_block() -> None:
    wall = 5000.0
    lsr = ntp_middle32(ntp_time(wall - 0.25))
    block = artp.RtcpReceiverInfo(
        ssrc=1,
        fraction_lost=0,
        packets_lost=0,
        highest_sequence=0,
        jitter=0,
        lsr=lsr,
        dlsr=int(0.2 * 65536),
    )
    rtt = rtt_from_report(block, wall)
    assert rtt is not None and abs(rtt - 0.05) < 0.001
    assert rtt_from_report(artp.RtcpReceiverInfo(1, 0, 0, 0, 0, 0, 0), wall) is None


def test_feedback_builders_parse_back() -> None:
    (p,) = parse_rtcp(pli(1, 2))
    assert isinstance(p, artp.RtcpPsfbPacket) and p.fmt == artp.RTCP_PSFB_PLI and p.media_ssrc == 2
    (r,) = parse_rtcp(remb(1, 256000, [5, 6]))
    assert is_remb(r)
    assert artp.unpack_remb_fci(r.fci) == (256000, [5, 6])  # type: ignore[union-attr]
