"""RTP header extensions (RFC 8285) as the engines read them: the reference of what the C
engine's ``sfu_rtp_sdes_ext`` (csrc/packet.h) finds in a packet.

Only SDES items matter here (MID, RID and repaired RID): a value counts when it is 1 to
``SDES_MAX`` bytes of printable ASCII (0x21..0x7E); a malformed extension block yields nothing.
"""

from __future__ import annotations

from typing import Final

SDES_MAX: Final = 32
_ONE_BYTE: Final = 0xBEDE


def _sdes_ok(value: bytes) -> bool:
    return 0 < len(value) <= SDES_MAX and all(0x21 <= b <= 0x7E for b in value)


def sdes_extensions(packet: bytes, ids: tuple[int, int, int]) -> tuple[str, str, str] | None:
    """The values of the extensions with ``ids`` (0 = not wanted; "" = absent), or None when the
    packet has no extension block or a malformed one. The first valid element of an id wins."""
    n = len(packet)
    if n < 12 or packet[0] >> 6 != 2 or not packet[0] & 0x10:
        return None
    o = 12 + 4 * (packet[0] & 0x0F)
    if n < o + 4:
        return None
    profile = int.from_bytes(packet[o : o + 2], "big")
    end = o + 4 + 4 * int.from_bytes(packet[o + 2 : o + 4], "big")
    if end > n:
        return None
    if profile == _ONE_BYTE:
        two_byte = False
    elif profile & 0xFFF0 == 0x1000:
        two_byte = True
    else:
        return None
    found = ["", "", ""]
    o += 4
    while o < end:
        first = packet[o]
        if (first if two_byte else first >> 4) == 0:  # padding
            o += 1
            continue
        if two_byte:
            if o + 2 > end:
                return None
            ext_id, length = first, packet[o + 1]
            o += 2
        else:
            ext_id, length = first >> 4, (first & 0x0F) + 1
            if ext_id == 15:
                break
            o += 1
        if o + length > end:
            return None
        value = packet[o : o + length]
        for k in range(3):
            if ids[k] > 0 and ids[k] == ext_id and not found[k] and _sdes_ok(value):
                found[k] = value.decode("ascii")
        o += length
    return found[0], found[1], found[2]
