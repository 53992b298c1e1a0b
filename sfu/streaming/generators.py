"""The Python-side sources: a media file played at its own pace, and a generated test signal.

Both run one thread each (PyAV demuxing and encoding would stall the event loop) that turns
frames into RTP (:mod:`sfu.streaming.packetize`) and sends it to the mountpoint's ingest sockets
on 127.0.0.1 (:class:`~sfu.streaming.ingest.LocalFeeder`), where the engine takes over exactly as
for RTP from ffmpeg.

- :class:`FileStreamSource` demuxes a WebM or MP4 file and sends each packet, unchanged, when
  its decoding time comes (wall clock from the start); at the end it starts again if ``loop``,
  timestamps continuing. It cannot make keyframes: a watcher waits for the file's next one.
- :class:`TestStreamSource` draws a pattern with a moving square and encodes it (VP8, VP9 or
  H.264), and a sine tone (Opus). It makes a keyframe when a watcher asks (at most one every
  0.5 s) and otherwise every two seconds.
"""

from __future__ import annotations

import asyncio
import fractions
import logging
import math
import secrets
import threading
import time
from collections.abc import Callable
from typing import Any, Final

import av
import numpy as np

from sfu.streaming.hub import MediaHub, StreamSource
from sfu.streaming.ingest import LocalFeeder
from sfu.streaming.model import (
    Codec,
    FileSource,
    MediaEntry,
    Mountpoint,
    StreamingError,
    TestPattern,
    TestSource,
)
from sfu.streaming.packetize import EncodedFrame, Packetizer, avcc_to_annexb, parse_avcc
from sfu.streaming.source import SourceError, check_file_media

__all__ = ["FileStreamSource", "TestStreamSource", "draw_pattern"]

log = logging.getLogger(__name__)

KEYFRAME_MIN_INTERVAL: Final = 0.5
KEYFRAME_INTERVAL_S: Final = 2
AUDIO_FRAME: Final = 960  # 20 ms at 48 kHz
_ENCODERS: Final = {Codec.VP8: "libvpx", Codec.VP9: "libvpx-vp9", Codec.H264: "libx264"}


class _ThreadSource(StreamSource):
    """A source whose media a thread produces into a LocalFeeder."""

    def __init__(self, hub: MediaHub, mountpoint: Mountpoint) -> None:
        super().__init__(hub, mountpoint)
        self._feeder = LocalFeeder(hub)
        self._halt = threading.Event()
        self._thread: threading.Thread | None = None
        self.frames = [0] * len(mountpoint.media)
        self.keyframes = [0] * len(mountpoint.media)

    def _launch(self, target: Callable[[], None]) -> None:
        self._set_feeds(list(self._feeder.open(self.mountpoint.media)))
        self._halt.clear()

        def run() -> None:
            try:
                target()
            except Exception as e:  # the source stops; its stats say why
                self.error = f"{type(e).__name__}: {e}"
                log.exception("mountpoint %d: its %s source stopped", self.mountpoint.id, self)

        name = f"sfu-{self.type_name}-{self.mountpoint.id}"
        self._thread = threading.Thread(target=run, name=name, daemon=True)
        self._thread.start()

    async def _stop(self) -> None:
        self._halt.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            await asyncio.to_thread(thread.join, 5.0)
        self._feeder.close()
        self._set_feeds([None] * len(self.mountpoint.media))

    def _wait_until(self, deadline: float) -> bool:
        """Sleep until ``deadline`` (monotonic); False when the source is stopping."""
        delay = deadline - time.monotonic()
        if delay > 0:
            return not self._halt.wait(delay)
        return not self._halt.is_set()

    def _send(self, index: int, packetizer: Packetizer, frame: EncodedFrame) -> None:
        self.frames[index] += 1
        self.keyframes[index] += frame.keyframe
        self._feeder.send(index, packetizer.packetize(frame))

    def stats(self) -> dict[str, Any]:
        media = self._feeder.stats()
        for i, m in enumerate(media):
            m.update(frames=self.frames[i], keyframes=self.keyframes[i])
        return {**super().stats(), "media": media}

    def __str__(self) -> str:
        return self.type_name


def _packetizer(entry: MediaEntry) -> Packetizer:
    return Packetizer(entry.codec, entry.payload_type, 0)  # the engine sets the SSRC


# --------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------


class FileStreamSource(_ThreadSource):
    """A WebM or MP4 file, packetized as it is, at its own pace, looping if asked."""

    type_name = "file"

    def __init__(self, hub: MediaHub, mountpoint: Mountpoint) -> None:
        super().__init__(hub, mountpoint)
        self.loops = 0
        self.finished = False

    async def _start(self) -> None:
        try:
            streams = await asyncio.to_thread(check_file_media, self.mountpoint)
        except StreamingError as e:
            raise SourceError(e.reason) from None
        source = self.mountpoint.media[0].source
        assert isinstance(source, FileSource)
        self._launch(lambda: self._play(source.path, streams, source.loop))

    def _play(self, path: str, streams: tuple[int, ...], loop: bool) -> None:
        media = self.mountpoint.media
        packetizers = [_packetizer(m) for m in media]
        bases = [secrets.randbits(32) for _ in media]
        start = time.monotonic()
        zero: float | None = None  # the file's first timestamp, in seconds
        offset = 0.0  # seconds added by the loops already played
        while not self._halt.is_set():
            end = offset
            with av.open(path, "r") as container:
                chosen = [container.streams[i] for i in streams]
                index_of = {s.index: k for k, s in enumerate(chosen)}
                avcc = [
                    _avcc(s) if media[k].codec is Codec.H264 else None for k, s in enumerate(chosen)
                ]
                for packet in container.demux(chosen):
                    if packet.size == 0 or packet.pts is None or packet.time_base is None:
                        continue
                    k = index_of[packet.stream.index]
                    base = packet.time_base
                    pts = float(packet.pts * base)
                    dts = float(packet.dts * base) if packet.dts is not None else pts
                    if zero is None:
                        zero = min(pts, dts)
                    at = dts - zero + offset
                    end = max(end, pts - zero + offset + float((packet.duration or 0) * base))
                    if not self._wait_until(start + at):
                        return
                    data = bytes(packet)
                    config = avcc[k]
                    if config is not None:
                        data = avcc_to_annexb(data, config, packet.is_keyframe)
                    ctx = packet.stream.codec_context
                    frame = EncodedFrame(
                        data,
                        bases[k] + round((pts - zero + offset) * media[k].clock_rate),
                        packet.is_keyframe,
                        getattr(ctx, "width", 0) or 0,
                        getattr(ctx, "height", 0) or 0,
                    )
                    self._send(k, packetizers[k], frame)
            if not loop:
                self.finished = True
                return
            self.loops += 1
            offset = max(end, offset + 0.02)

    def stats(self) -> dict[str, Any]:
        return {**super().stats(), "loops": self.loops, "finished": self.finished}


def _avcc(stream: Any) -> Any:
    extradata = stream.codec_context.extradata
    if extradata and extradata[0] == 1:
        try:
            return parse_avcc(bytes(extradata))
        except ValueError:
            return None
    return None  # Annex B already (an elementary stream, Matroska from some muxers)


# --------------------------------------------------------------------------------------------
# The test signal
# --------------------------------------------------------------------------------------------

_SMPTE_BARS: Final = (
    (191, 191, 191),
    (191, 191, 0),
    (0, 191, 191),
    (0, 191, 0),
    (191, 0, 191),
    (191, 0, 0),
    (0, 0, 191),
)


def draw_pattern(pattern: TestPattern, width: int, height: int) -> np.ndarray[Any, Any]:
    """The still part of a test picture (RGB, height x width x 3)."""
    img = np.zeros((height, width, 3), np.uint8)
    if pattern is TestPattern.SMPTE:
        for i, colour in enumerate(_SMPTE_BARS):
            img[:, i * width // 7 : (i + 1) * width // 7] = colour
    elif pattern is TestPattern.TESTSRC:
        x = np.linspace(0, 255, width, dtype=np.float32)
        y = np.linspace(0, 255, height, dtype=np.float32)
        img[..., 0] = x[None, :].astype(np.uint8)
        img[..., 1] = y[:, None].astype(np.uint8)
        img[..., 2] = (255 - x[None, :] / 2 - y[:, None] / 2).astype(np.uint8)
    return img


class _Video:
    """Frames of a pattern with a moving square, encoded."""

    def __init__(self, entry: MediaEntry, spec: TestSource) -> None:
        self.entry = entry
        self.spec = spec
        self.still = draw_pattern(spec.pattern, spec.width, spec.height)
        self.count = 0
        ctx: Any = av.CodecContext.create(_ENCODERS[entry.codec], "w")
        ctx.width, ctx.height = spec.width, spec.height
        ctx.pix_fmt = "yuv420p"
        ctx.time_base = fractions.Fraction(1, spec.fps)
        ctx.framerate = fractions.Fraction(spec.fps, 1)
        ctx.bit_rate = max(150_000, spec.width * spec.height * spec.fps // 10)
        ctx.gop_size = spec.fps * KEYFRAME_INTERVAL_S
        if entry.codec is Codec.H264:
            ctx.profile = "Baseline"
            ctx.options = {"preset": "ultrafast", "tune": "zerolatency", "level": "31"}
        else:
            ctx.options = {"deadline": "realtime", "cpu-used": "8", "lag-in-frames": "0"}
        self.ctx = ctx

    def encode(self, keyframe: bool) -> list[EncodedFrame]:
        spec = self.spec
        img = self.still.copy()
        if spec.pattern is not TestPattern.BLACK:
            side = max(8, spec.height // 6) & ~1
            x = (self.count * 4) % max(1, spec.width - side)
            y = (spec.height - side) // 2
            img[y : y + side, x : x + side] = 255
        frame = av.VideoFrame.from_ndarray(img, format="rgb24").reformat(format="yuv420p")
        frame.pts = self.count
        frame.time_base = fractions.Fraction(1, spec.fps)
        if keyframe:
            frame.pict_type = av.video.frame.PictureType.I
        self.count += 1
        out = []
        for packet in self.ctx.encode(frame):
            ts = (packet.pts if packet.pts is not None else self.count - 1) * 90000 // spec.fps
            out.append(EncodedFrame(bytes(packet), ts, packet.is_keyframe, spec.width, spec.height))
        return out


class _Tone:
    """A sine tone, 20 ms Opus packets."""

    def __init__(self, spec: TestSource) -> None:
        self.hz = spec.tone_hz
        self.count = 0
        ctx: Any = av.CodecContext.create("libopus", "w")
        ctx.sample_rate = 48000
        ctx.layout = "mono"
        ctx.format = "s16"
        ctx.bit_rate = 48000
        ctx.time_base = fractions.Fraction(1, 48000)
        self.ctx = ctx

    def encode(self) -> list[EncodedFrame]:
        n = np.arange(self.count * AUDIO_FRAME, (self.count + 1) * AUDIO_FRAME)
        wave = (0.3 * 32767 * np.sin(2 * math.pi * self.hz * n / 48000)).astype(np.int16)
        frame = av.AudioFrame.from_ndarray(wave.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = 48000
        frame.pts = self.count * AUDIO_FRAME
        frame.time_base = fractions.Fraction(1, 48000)
        self.count += 1
        out = []
        for packet in self.ctx.encode(frame):
            ts = packet.pts if packet.pts is not None else frame.pts
            out.append(EncodedFrame(bytes(packet), ts))
        return out


class TestStreamSource(_ThreadSource):
    """A generated pattern (video) and tone (audio), encoded in real time."""

    __test__ = False  # not a pytest class
    type_name = "test"

    def __init__(self, hub: MediaHub, mountpoint: Mountpoint) -> None:
        super().__init__(hub, mountpoint)
        self._want_key = [False] * len(mountpoint.media)
        self._last_key = [0.0] * len(mountpoint.media)

    async def _start(self) -> None:
        gens: list[_Video | _Tone] = []
        for entry in self.mountpoint.media:
            spec = entry.source
            assert isinstance(spec, TestSource)
            gens.append(_Tone(spec) if entry.codec is Codec.OPUS else _Video(entry, spec))
        self._launch(lambda: self._generate(gens))

    def request_keyframe(self, index: int) -> None:
        if 0 <= index < len(self._want_key):
            self._want_key[index] = True  # read by the thread before its next frame

    def _generate(self, gens: list[_Video | _Tone]) -> None:
        media = self.mountpoint.media
        packetizers = [_packetizer(m) for m in media]
        bases = [secrets.randbits(32) for _ in media]
        start = time.monotonic()
        due = [start] * len(gens)
        while True:
            k = min(range(len(gens)), key=due.__getitem__)
            if not self._wait_until(due[k]):
                return
            gen = gens[k]
            if isinstance(gen, _Tone):
                frames = gen.encode()
                due[k] = start + gen.count * AUDIO_FRAME / 48000
            else:
                now = time.monotonic()
                key = self._want_key[k] and now - self._last_key[k] >= KEYFRAME_MIN_INTERVAL
                if key:
                    self._want_key[k] = False
                    self._last_key[k] = now
                frames = gen.encode(key)
                due[k] = start + gen.count / gen.spec.fps
            for frame in frames:
                stamped = EncodedFrame(
                    frame.data,
                    bases[k] + frame.timestamp,
                    frame.keyframe,
                    frame.width,
                    frame.height,
                )
                self._send(k, packetizers[k], stamped)
