"""RFC 7983 demultiplexing of the packets sharing one UDP 5-tuple."""

from __future__ import annotations

from enum import IntEnum
from typing import Final

_MIN_STUN: Final = 20  # STUN header
_MIN_RTP: Final = 12  # fixed RTP header
_MIN_RTCP: Final = 8  # RTCP header + sender SSRC


class PacketKind(IntEnum):
    STUN = 0
    ZRTP = 1
    DTLS = 2
    TURN_CHANNEL = 3
    RTP = 4
    RTCP = 5
    UNKNOWN = 6


def classify(data: bytes | bytearray | memoryview) -> PacketKind:
    """Tell what a datagram is from its first byte (RFC 7983 section 7).

    ======== ===============  ==========================================
    byte 0   kind             extra check
    ======== ===============  ==========================================
    0..3     STUN             length >= 20
    16..19   ZRTP
    20..63   DTLS
    64..79   TURN channel
    128..191 RTP or RTCP      RTCP if byte 1 (PT with marker bit) is in
                              192..223 (RFC 5761 section 4: SR 200, RR 201,
                              SDES 202, BYE 203, APP 204, RTPFB 205,
                              PSFB 206, XR 207), length >= 8; else RTP,
                              length >= 12
    other    UNKNOWN          (4..15, 80..127, 192..255 are unassigned)
    ======== ===============  ==========================================

    Empty or too short packets are UNKNOWN.
    """
    if not data:
        return PacketKind.UNKNOWN
    first = data[0]
    if first <= 3:
        return PacketKind.STUN if len(data) >= _MIN_STUN else PacketKind.UNKNOWN
    if 16 <= first <= 19:
        return PacketKind.ZRTP
    if 20 <= first <= 63:
        return PacketKind.DTLS
    if 64 <= first <= 79:
        return PacketKind.TURN_CHANNEL
    if 128 <= first <= 191:
        if len(data) >= 2 and 192 <= data[1] <= 223:
            return PacketKind.RTCP if len(data) >= _MIN_RTCP else PacketKind.UNKNOWN
        return PacketKind.RTP if len(data) >= _MIN_RTP else PacketKind.UNKNOWN
    return PacketKind.UNKNOWN
