"""Does this RTP packet start a keyframe? The reference of the engines' keyframe gate.

Pure functions over one RTP packet (header included). ``csrc/packet.h`` implements the same
rules in C (``sfu_keyframe_start``); tests compare the two on crafted and random packets.

- VP8 (RFC 7741): the first packet of partition 0 (S=1, PID=0) whose VP8 payload header has
  P=0 (a key frame).
- VP9 (RFC 9628): the first packet of a picture (B=1) that is not inter-picture predicted (P=0),
  of spatial layer 0 when layer indices are present.
- H.264 (RFC 6184): a single NAL unit, a STAP-A holding one, or the first fragment of an FU-A,
  of type 5 (IDR slice) or 7 (SPS: what an encoder sends right before an IDR).
"""

from __future__ import annotations

from sfu.engine.base import KEYFRAME_CODECS

__all__ = ["rtp_payload", "starts_keyframe"]

_NAL_IDR = 5
_NAL_SPS = 7
_STAP_A = 24
_FU_A = 28


def rtp_payload(packet: bytes) -> bytes | None:
    """The payload of an RTP packet (after CSRCs and header extension, before padding), or None
    when the header is malformed."""
    n = len(packet)
    if n < 12 or packet[0] >> 6 != 2:
        return None
    off = 12 + 4 * (packet[0] & 0x0F)
    if packet[0] & 0x10:
        if n < off + 4:
            return None
        off += 4 + 4 * int.from_bytes(packet[off + 2 : off + 4], "big")
    end = n
    if packet[0] & 0x20:
        if n == 0 or packet[-1] == 0:
            return None
        end = n - packet[-1]
    if off > end:
        return None
    return packet[off:end]


def _vp8(d: bytes) -> bool:
    if not d:
        return False
    b0 = d[0]
    if not b0 & 0x10 or b0 & 0x07:  # S=1 and PID=0
        return False
    i = 1
    if b0 & 0x80:  # X: extension byte
        if len(d) < 2:
            return False
        b1 = d[1]
        i = 2
        if b1 & 0x80:  # I: picture id, 7 or 15 bits
            if len(d) <= i:
                return False
            i += 2 if d[i] & 0x80 else 1
        if b1 & 0x40:  # L: TL0PICIDX
            i += 1
        if b1 & 0x30:  # T or K: TID/Y/KEYIDX
            i += 1
    return len(d) > i and not d[i] & 0x01


def _vp9(d: bytes) -> bool:
    if not d:
        return False
    b0 = d[0]
    if not b0 & 0x08 or b0 & 0x40:  # B=1 and P=0
        return False
    if not b0 & 0x20:  # no layer indices: a single layer
        return True
    i = 1
    if b0 & 0x80:  # I: picture id
        if len(d) <= i:
            return False
        i += 2 if d[i] & 0x80 else 1
    return len(d) > i and (d[i] >> 1) & 0x07 == 0  # SID


def _h264(d: bytes) -> bool:
    if not d:
        return False
    nal = d[0] & 0x1F
    if 1 <= nal <= 23:
        return nal in (_NAL_IDR, _NAL_SPS)
    if nal == _STAP_A:
        i = 1
        while i + 2 <= len(d):
            size = int.from_bytes(d[i : i + 2], "big")
            i += 2
            if size and i < len(d) and d[i] & 0x1F in (_NAL_IDR, _NAL_SPS):
                return True
            i += size
        return False
    if nal == _FU_A:
        return len(d) >= 2 and bool(d[1] & 0x80) and d[1] & 0x1F in (_NAL_IDR, _NAL_SPS)
    return False


_BY_CODEC = {"vp8": _vp8, "vp9": _vp9, "h264": _h264}
assert tuple(_BY_CODEC) == KEYFRAME_CODECS


def starts_keyframe(codec: str, packet: bytes) -> bool:
    """Whether ``packet`` (a whole RTP packet) starts a keyframe of ``codec`` (see the module)."""
    check = _BY_CODEC.get(codec)
    if check is None:
        raise ValueError(f"no keyframe rule for {codec!r} (known: {', '.join(KEYFRAME_CODECS)})")
    payload = rtp_payload(packet)
    return payload is not None and check(payload)
