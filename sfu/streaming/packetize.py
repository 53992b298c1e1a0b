"""Encoded frames to RTP packets, sans-IO: VP8, VP9, H.264 and Opus, without transcoding.

The file and test sources hand each encoded frame (a VP8 or VP9 frame, an H.264 access unit
in Annex B, an Opus packet) with its RTP timestamp to a :class:`Packetizer`, which returns the
RTP packets to send: payload descriptors written here (RFC 7741, RFC 9628, RFC 6184, RFC 7587),
sequence numbers counted, the marker bit on the last packet of a video frame. Nothing here
reads a clock or touches a socket.

H.264 from MP4 files is in AVCC form (length-prefixed NAL units, parameter sets in the
``avcC`` extradata): :func:`avcc_to_annexb` converts an access unit and puts SPS and PPS in
front of each keyframe, since a WebRTC receiver needs them in-band.
"""

from __future__ import annotations

import secrets
import struct
from dataclasses import dataclass, field
from typing import Final

from sfu.streaming.model import Codec

__all__ = [
    "MAX_PAYLOAD",
    "EncodedFrame",
    "Packetizer",
    "avcc_to_annexb",
    "parse_avcc",
    "split_annexb",
]

MAX_PAYLOAD: Final = 1200  # bytes of RTP payload per packet (stays under common MTUs with SRTP)
_RTP_HEADER: Final = struct.Struct("!BBHII")
_FU_A: Final = 28


@dataclass(frozen=True)
class EncodedFrame:
    """One encoded frame and its RTP timestamp."""

    data: bytes  # VP8/VP9 frame, H.264 access unit (Annex B), or one Opus packet
    timestamp: int  # in the codec's RTP clock, wrapped to 32 bits by the packetizer
    keyframe: bool = False
    width: int = 0  # VP9 keyframes carry the resolution (scalability structure)
    height: int = 0


@dataclass
class Packetizer:
    """RTP packets of one stream (SSRC, payload type, sequence numbers) from encoded frames."""

    codec: Codec
    payload_type: int
    ssrc: int
    seq: int = field(default_factory=lambda: secrets.randbits(16))
    picture_id: int = field(default_factory=lambda: secrets.randbits(15))
    max_payload: int = MAX_PAYLOAD
    packets: int = 0
    frames: int = 0

    def packetize(self, frame: EncodedFrame) -> list[bytes]:
        """The RTP packets carrying ``frame`` (none for an empty frame)."""
        if not frame.data:
            return []
        if self.codec is Codec.OPUS:
            payloads = [frame.data]
        elif self.codec is Codec.VP8:
            payloads = self._vp8(frame)
        elif self.codec is Codec.VP9:
            payloads = self._vp9(frame)
        else:
            payloads = self._h264(frame)
        if not payloads:
            return []
        self.frames += 1
        video = self.codec is not Codec.OPUS
        out = []
        ts = frame.timestamp & 0xFFFFFFFF
        for i, payload in enumerate(payloads):
            marker = video and i == len(payloads) - 1
            header = _RTP_HEADER.pack(
                0x80, (0x80 if marker else 0) | self.payload_type, self.seq, ts, self.ssrc
            )
            out.append(header + payload)
            self.seq = (self.seq + 1) & 0xFFFF
        self.packets += len(out)
        return out

    def _chunks(self, data: bytes, room: int) -> list[bytes]:
        return [data[i : i + room] for i in range(0, len(data), room)]

    def _next_picture_id(self) -> int:
        pid = self.picture_id
        self.picture_id = (pid + 1) & 0x7FFF
        return pid

    def _vp8(self, frame: EncodedFrame) -> list[bytes]:
        """RFC 7741: X=1, I=1 with a 15-bit picture id; S=1 on the first packet, PID 0."""
        pid = self._next_picture_id()
        tail = bytes([0x80, 0x80 | (pid >> 8), pid & 0xFF])  # I, M + picture id
        chunks = self._chunks(frame.data, self.max_payload - 4)
        return [bytes([0x90 if i == 0 else 0x80]) + tail + c for i, c in enumerate(chunks)]

    def _vp9(self, frame: EncodedFrame) -> list[bytes]:
        """RFC 9628, non-flexible, one layer: I (15-bit picture id), P on inter frames, B and E
        on the first and last packet, and on keyframes V with the resolution (SS)."""
        pid = self._next_picture_id()
        ss = b""
        if frame.keyframe and frame.width and frame.height:
            ss = struct.pack("!BHH", 0x10, frame.width, frame.height)  # N_S=0, Y=1, G=0
        chunks = self._chunks(frame.data, self.max_payload - 3 - len(ss))
        out = []
        for i, chunk in enumerate(chunks):
            b0 = 0x80 | (0 if frame.keyframe else 0x40)
            if i == 0:
                b0 |= 0x08 | (0x02 if ss else 0)
            if i == len(chunks) - 1:
                b0 |= 0x04
            head = bytes([b0, 0x80 | (pid >> 8), pid & 0xFF])
            out.append(head + (ss if i == 0 else b"") + chunk)
        return out

    def _h264(self, frame: EncodedFrame) -> list[bytes]:
        """RFC 6184 packetization-mode 1: single NAL unit packets, FU-A for larger ones."""
        out: list[bytes] = []
        for nal in split_annexb(frame.data):
            if len(nal) <= self.max_payload:
                out.append(nal)
                continue
            header, body = nal[0], nal[1:]
            indicator = (header & 0xE0) | _FU_A
            chunks = self._chunks(body, self.max_payload - 2)
            for i, chunk in enumerate(chunks):
                fu = header & 0x1F
                if i == 0:
                    fu |= 0x80
                if i == len(chunks) - 1:
                    fu |= 0x40
                out.append(bytes([indicator, fu]) + chunk)
        return out


def split_annexb(data: bytes) -> list[bytes]:
    """The NAL units of an Annex B byte stream (start codes 00 00 01 or 00 00 00 01; zero bytes
    before a start code belong to no NAL unit)."""
    starts = []
    i = data.find(b"\x00\x00\x01")
    while i >= 0:
        starts.append(i + 3)
        i = data.find(b"\x00\x00\x01", i + 3)
    if not starts:
        return []
    ends = [s - 3 for s in starts[1:]] + [len(data)]
    return [nal for s, e in zip(starts, ends, strict=True) if (nal := data[s:e].rstrip(b"\x00"))]


@dataclass(frozen=True)
class AvcConfig:
    """What an ``avcC`` box says: the NAL length size and the parameter sets."""

    length_size: int
    parameter_sets: tuple[bytes, ...]  # SPS then PPS


def parse_avcc(extradata: bytes) -> AvcConfig:
    """Parse an AVCDecoderConfigurationRecord (ISO/IEC 14496-15); ValueError when malformed."""
    if len(extradata) < 7 or extradata[0] != 1:
        raise ValueError("not an avcC record")
    length_size = (extradata[4] & 0x03) + 1
    sets: list[bytes] = []
    i = 5
    for count_mask in (0x1F, 0xFF):
        if i >= len(extradata):
            raise ValueError("truncated avcC record")
        count = extradata[i] & count_mask
        i += 1
        for _ in range(count):
            if i + 2 > len(extradata):
                raise ValueError("truncated avcC record")
            size = int.from_bytes(extradata[i : i + 2], "big")
            i += 2
            if i + size > len(extradata):
                raise ValueError("truncated avcC record")
            sets.append(extradata[i : i + size])
            i += size
    return AvcConfig(length_size, tuple(sets))


def avcc_to_annexb(data: bytes, config: AvcConfig, keyframe: bool) -> bytes:
    """An AVCC access unit in Annex B form, with SPS and PPS in front of a keyframe."""
    out = bytearray()
    if keyframe:
        for ps in config.parameter_sets:
            out += b"\x00\x00\x00\x01" + ps
    n = config.length_size
    i = 0
    while i + n <= len(data):
        size = int.from_bytes(data[i : i + n], "big")
        i += n
        if size == 0 or i + size > len(data):
            break
        out += b"\x00\x00\x00\x01" + data[i : i + size]
        i += size
    return bytes(out)
