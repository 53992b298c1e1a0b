"""The media side of a mountpoint, as the registry sees it: a small protocol and a null stand-in.

The registry calls ``await start(mountpoint)`` when a mountpoint is enabled (at creation, on
``enable``, at start-up for stored ones), ``await stop()`` when it is disabled or destroyed, and
``stats()`` for its info. A source raises :class:`SourceError` (or ``OSError``, a port already
bound...) from ``start`` when it cannot run; the registry then reports ``source_failed``.

This module also probes media files (PyAV) and maps a file mountpoint's media entries onto the
file's streams, which the registry checks at creation and a file source uses to demux.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol

from sfu.streaming.model import (
    Codec,
    FileSource,
    MediaEntry,
    MediaKind,
    Mountpoint,
    Problem,
    StreamingError,
)

__all__ = [
    "FileInfo",
    "FileStream",
    "MediaSource",
    "NullSource",
    "SourceError",
    "SourceFactory",
    "check_file_media",
    "map_file_streams",
    "probe_file",
]

# PyAV's demuxer names of the containers a file source reads.
CONTAINERS: Final = {"matroska,webm": "WebM/Matroska", "mov,mp4,m4a,3gp,3g2,mj2": "MP4"}
_CODEC_NAMES: Final = {"opus": Codec.OPUS, "vp8": Codec.VP8, "vp9": Codec.VP9, "h264": Codec.H264}


class SourceError(Exception):
    """A source cannot start (file unreadable, port taken, ...): a clear reason for the client."""


class MediaSource(Protocol):
    """What the registry needs from a mountpoint's media source."""

    async def start(self, mountpoint: Mountpoint) -> None:
        """Begin producing media for ``mountpoint`` (ports already allocated)."""

    async def stop(self) -> None:
        """Stop producing media and release sockets and files. Idempotent."""

    def stats(self) -> dict[str, Any]:
        """JSON-able counters, shown in the mountpoint's admin info."""


SourceFactory = Callable[[Mountpoint], MediaSource]


class NullSource:
    """A source that produces nothing: the control plane runs fully before media is wired."""

    def __init__(self, mountpoint: Mountpoint | None = None) -> None:
        self.running = False
        self.starts = 0
        self.stops = 0

    async def start(self, mountpoint: Mountpoint) -> None:
        self.running = True
        self.starts += 1

    async def stop(self) -> None:
        if self.running:
            self.stops += 1
        self.running = False

    def stats(self) -> dict[str, Any]:
        return {"source": "null", "running": self.running, "starts": self.starts}


# --------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FileStream:
    """One stream of a media file."""

    index: int
    kind: MediaKind | None  # None: neither audio nor video (subtitles, data)
    codec: Codec | None  # None: a codec a mountpoint cannot forward
    codec_name: str


@dataclass(frozen=True)
class FileInfo:
    container: str  # PyAV's format name, e.g. "matroska,webm"
    streams: tuple[FileStream, ...]


def probe_file(path: str) -> FileInfo:
    """Open a media file with PyAV and list its streams; SourceError when it cannot be read."""
    import av  # heavy: imported when a file mountpoint is created

    try:
        with av.open(path, "r") as container:
            streams = []
            for s in container.streams:
                name = s.codec_context.codec.canonical_name if s.codec_context else "?"
                kind = {"audio": MediaKind.AUDIO, "video": MediaKind.VIDEO}.get(s.type)
                streams.append(FileStream(s.index, kind, _CODEC_NAMES.get(name), name))
            return FileInfo(container.format.name, tuple(streams))
    except (av.FFmpegError, OSError, UnicodeError, ValueError) as e:
        raise SourceError(f"cannot read {path!r} as a media file ({e})") from None


def map_file_streams(media: Sequence[MediaEntry], info: FileInfo) -> tuple[int, ...]:
    """The file stream index each media entry plays, or StreamingError naming the mismatch.

    An entry with ``source.stream`` plays that stream; an entry without takes the first stream
    of its kind that no other entry claims, in order. The stream's codec must be the entry's:
    files are packetized without transcoding.
    """
    problems: list[Problem] = []
    if info.container not in CONTAINERS:
        where = "media[0].source.path"
        problems.append(Problem(where, f"is a {info.container!r} file; use WebM or MP4"))
        raise StreamingError.invalid(problems)
    by_index = {s.index: s for s in info.streams}
    sources = [m.source for m in media]
    claimed = {s.stream for s in sources if isinstance(s, FileSource) and s.stream is not None}
    out: list[int] = []
    for i, m in enumerate(media):
        src = m.source
        assert isinstance(src, FileSource)
        where = f"media[{i}].source.stream"
        if src.stream is not None:
            stream = by_index.get(src.stream)
            if stream is None:
                problems.append(Problem(where, f"the file has no stream {src.stream}"))
                continue
        else:
            free = [s for s in info.streams if s.kind is m.kind and s.index not in claimed]
            if not free:
                problems.append(Problem(where, f"the file has no unclaimed {m.kind.value} stream"))
                continue
            stream = free[0]
            claimed.add(stream.index)
        if stream.codec is not m.codec:
            problems.append(
                Problem(
                    where,
                    f"stream {stream.index} is {stream.codec_name}, not {m.codec.value} "
                    "(files are not transcoded)",
                )
            )
            continue
        out.append(stream.index)
    if problems:
        raise StreamingError.invalid(problems)
    return tuple(out)


FileProbe = Callable[[str], FileInfo]


def check_file_media(mountpoint: Mountpoint, probe: FileProbe = probe_file) -> tuple[int, ...]:
    """Check a file mountpoint against the disk: the path is a readable regular file whose
    streams carry the media's codecs. Returns the stream index of each media entry.

    Blocking (file system, demuxer): run it in a thread.
    """
    first = mountpoint.media[0].source
    assert isinstance(first, FileSource)
    where = "media[0].source.path"
    try:
        st = os.stat(first.path)
    except FileNotFoundError:
        raise StreamingError.invalid([Problem(where, f"{first.path!r} does not exist")]) from None
    except OSError as e:
        reason = f"{first.path!r} cannot be read ({e.strerror})"
        raise StreamingError.invalid([Problem(where, reason)]) from None
    if not stat.S_ISREG(st.st_mode):
        reason = f"{first.path!r} is not a regular file"
        raise StreamingError.invalid([Problem(where, reason)])
    if not os.access(first.path, os.R_OK):
        reason = f"{first.path!r} is not readable by the server"
        raise StreamingError.invalid([Problem(where, reason)])
    try:
        info = probe(first.path)
    except SourceError as e:
        raise StreamingError.invalid([Problem(where, str(e))]) from None
    return map_file_streams(mountpoint.media, info)
