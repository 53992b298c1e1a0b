"""RFC 7983 demux: every first byte, the RTP/RTCP boundary, short packets."""

from __future__ import annotations

import pytest

from sfu.rtp.demux import PacketKind, classify


def _expected_by_first_byte(first: int) -> PacketKind:
    """The RFC 7983 table written out independently of classify()."""
    table = [
        (range(0, 4), PacketKind.STUN),
        (range(16, 20), PacketKind.ZRTP),
        (range(20, 64), PacketKind.DTLS),
        (range(64, 80), PacketKind.TURN_CHANNEL),
        (range(128, 192), PacketKind.RTP),
    ]
    for byte_range, kind in table:
        if first in byte_range:
            return kind
    return PacketKind.UNKNOWN


def test_every_first_byte() -> None:
    for first in range(256):
        # Second byte 96 (a dynamic RTP payload type) keeps 128..191 on the RTP side.
        packet = bytes([first, 96]) + bytes(98)
        assert classify(packet) is _expected_by_first_byte(first), first


def test_every_second_byte_of_rtp_and_rtcp() -> None:
    for first in (0x80, 0x81, 0x90, 0xBF):  # version 2 with padding/extension/count bits
        for second in range(256):
            packet = bytes([first, second]) + bytes(30)
            expected = PacketKind.RTCP if 192 <= second <= 223 else PacketKind.RTP
            assert classify(packet) is expected, (first, second)


@pytest.mark.parametrize(
    ("second", "kind"),
    [
        (191, PacketKind.RTP),  # PT 63 with marker bit
        (192, PacketKind.RTCP),  # first of the RFC 5761 RTCP range (FIR, RFC 2032)
        (200, PacketKind.RTCP),  # SR
        (201, PacketKind.RTCP),  # RR
        (202, PacketKind.RTCP),  # SDES
        (203, PacketKind.RTCP),  # BYE
        (204, PacketKind.RTCP),  # APP
        (205, PacketKind.RTCP),  # RTPFB (NACK, TWCC)
        (206, PacketKind.RTCP),  # PSFB (PLI, FIR, REMB)
        (207, PacketKind.RTCP),  # XR
        (223, PacketKind.RTCP),  # last of the range
        (224, PacketKind.RTP),  # PT 96 with marker bit
        (96, PacketKind.RTP),
        (0, PacketKind.RTP),  # PCMU
        (127, PacketKind.RTP),
        (128, PacketKind.RTP),  # PT 0 with marker bit
    ],
)
def test_named_payload_types(second: int, kind: PacketKind) -> None:
    assert classify(bytes([0x80, second]) + bytes(30)) is kind


@pytest.mark.parametrize(
    ("first", "second", "minimum", "kind"),
    [
        (0x00, 0x01, 20, PacketKind.STUN),  # binding request header
        (0x01, 0x01, 20, PacketKind.STUN),  # binding success
        (0x80, 96, 12, PacketKind.RTP),
        (0x81, 201, 8, PacketKind.RTCP),
    ],
)
def test_short_packets_are_unknown(first: int, second: int, minimum: int, kind: PacketKind) -> None:
    for length in range(1, minimum + 3):
        packet = bytes([first, second]) + bytes(max(0, length - 2))
        packet = packet[:length]
        expected = kind if length >= minimum else PacketKind.UNKNOWN
        assert classify(packet) is expected, length


def test_empty_is_unknown() -> None:
    assert classify(b"") is PacketKind.UNKNOWN


def test_real_packets() -> None:
    stun = bytes.fromhex("000100002112a442") + bytes(12)
    dtls_client_hello = bytes.fromhex("16feff0000000000000000") + bytes(2)
    rtp = bytes.fromhex("80e00001000000100000abcd")  # marker + PT 96
    rtcp_sr = bytes.fromhex("80c8000600000001") + bytes(20)
    channel_data = bytes.fromhex("40000004deadbeef")
    assert classify(stun) is PacketKind.STUN
    assert classify(dtls_client_hello) is PacketKind.DTLS
    assert classify(rtp) is PacketKind.RTP
    assert classify(rtcp_sr) is PacketKind.RTCP
    assert classify(channel_data) is PacketKind.TURN_CHANNEL


def test_accepts_memoryview_and_bytearray() -> None:
    packet = bytearray(b"\x80\xc9" + bytes(6))
    assert classify(bytes(packet)) is PacketKind.RTCP
    assert classify(packet) is PacketKind.RTCP
    assert classify(memoryview(packet)) is PacketKind.RTCP
