"""Tests of the streaming mountpoints' control plane; media fixtures made here with PyAV."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np


def make_media_file(path: Path, video: str = "libvpx", audio: str | None = "libopus") -> Path:
    """Write a tiny file (5 frames of 64x48 video, 0.2 s of silence) with the given encoders."""
    with av.open(str(path), "w") as out:
        v = out.add_stream(video, rate=10)
        assert isinstance(v, av.VideoStream)
        v.width, v.height, v.pix_fmt = 64, 48, "yuv420p"
        a = out.add_stream(audio, rate=48000) if audio else None
        assert a is None or isinstance(a, av.AudioStream)
        for _ in range(5):
            frame = av.VideoFrame.from_ndarray(np.zeros((48, 64, 3), np.uint8), format="rgb24")
            for packet in v.encode(frame):
                out.mux(packet)
        if a is not None:
            for _ in range(10):
                samples = np.zeros((1, 960), np.int16)
                aframe = av.AudioFrame.from_ndarray(samples, format="s16", layout="mono")
                aframe.sample_rate = 48000
                for packet in a.encode(aframe):
                    out.mux(packet)
            for packet in a.encode():
                out.mux(packet)
        for packet in v.encode():
            out.mux(packet)
    return path
