"""The media bridge: which engine producer feeds each mountpoint media now, and who wants to know.

Every running mountpoint source ends as one engine producer per media entry, a :class:`Feed`
(transport id, SSRC, payload type): an ingest socket for RTP, file and test sources (the Python
sources send plain RTP to their own ingest sockets on 127.0.0.1, the way ffmpeg would), or the
WHIP publisher's transport. Watchers (the WebSocket application, WHEP) never look at sources:
they ask the :class:`MediaHub` for the feeds of a mountpoint and are called back when those
change (a source started or stopped, a WHIP publisher came or went), and route consumers
accordingly (:mod:`sfu.streaming.viewer`).

The hub is also the registry's source factory: ``MountpointRegistry(source_factory=hub.
make_source)``.
"""

from __future__ import annotations

import abc
import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from sfu.apps.base import AppContext
from sfu.dtls.certificate import Certificate
from sfu.engine.base import IngestEngine
from sfu.streaming.model import Mountpoint, SourceType
from sfu.streaming.source import MediaSource
from sfu.webrtc.server import WebRtcServer
from sfu.webrtc.transport import TransportConfig

__all__ = ["Feed", "MediaHub", "StreamSource"]

log = logging.getLogger(__name__)

NACK_CACHE: Final = 512  # video packets a watcher's consumer keeps for retransmission

Listener = Callable[[], None]


@dataclass(frozen=True)
class Feed:
    """The engine producer one media entry comes from now."""

    transport_id: int
    ssrc: int
    payload_type: int  # what its packets carry
    clock_rate: int


class StreamSource(abc.ABC):
    """A mountpoint's running media (the registry's :class:`MediaSource`): feeds, keyframes."""

    type_name = "?"

    def __init__(self, hub: MediaHub, mountpoint: Mountpoint) -> None:
        self.hub = hub
        self.mountpoint = mountpoint
        self._feeds: list[Feed | None] = [None] * len(mountpoint.media)
        self.running = False
        self.error: str | None = None

    async def start(self, mountpoint: Mountpoint) -> None:
        self.mountpoint = mountpoint
        await self._start()
        self.running = True
        self.hub._started(self)

    async def stop(self) -> None:
        if self.running:
            self.running = False
            self.hub._stopped(self)
        await self._stop()

    @abc.abstractmethod
    async def _start(self) -> None:
        """Open sockets, start threads; raise SourceError or OSError when it cannot run."""

    @abc.abstractmethod
    async def _stop(self) -> None:
        """Release everything (idempotent; also called after a failed start)."""

    def feeds(self) -> tuple[Feed | None, ...]:
        """The producer of each media entry (None: nothing to watch for that media now)."""
        return tuple(self._feeds)

    def _set_feeds(self, feeds: list[Feed | None]) -> None:
        if feeds != self._feeds:
            self._feeds = list(feeds)
            if self.running:
                self.hub._changed(self.mountpoint.id)

    def request_keyframe(self, index: int) -> None:  # noqa: B027 (most sources cannot)
        """A watcher needs a keyframe of media ``index`` (sources that can, make one)."""

    def stats(self) -> dict[str, Any]:
        return {"source": self.type_name, "running": self.running, "error": self.error}


SourceMaker = Callable[["MediaHub", Mountpoint], StreamSource]


class MediaHub:
    """Running sources by mountpoint id, their feeds, and the watchers listening to them."""

    def __init__(
        self,
        engine: IngestEngine,
        webrtc: WebRtcServer,
        certificate: Certificate,
        transport_config: TransportConfig,
    ) -> None:
        self.engine = engine
        self.webrtc = webrtc
        self.certificate = certificate
        self.transport_config = transport_config
        self._sources: dict[int, StreamSource] = {}
        self._listeners: dict[int, list[Listener]] = {}
        self._makers: dict[SourceType, SourceMaker] = {}

    # -- sources ---------------------------------------------------------------------------

    def make_source(self, mountpoint: Mountpoint) -> MediaSource:
        """The registry's source factory: a new (not started) source for ``mountpoint``."""
        if not self._makers:
            self._makers = _default_makers()
        return self._makers[mountpoint.source_type](self, mountpoint)

    def source(self, mp_id: int) -> StreamSource | None:
        """The running source of a mountpoint (None when it is stopped or failed)."""
        return self._sources.get(mp_id)

    def feeds(self, mp_id: int) -> tuple[Feed | None, ...]:
        """The feeds of a mountpoint's media entries; empty when its source is not running."""
        source = self._sources.get(mp_id)
        return source.feeds() if source is not None else ()

    def request_keyframe(self, mp_id: int, index: int) -> None:
        source = self._sources.get(mp_id)
        if source is not None:
            source.request_keyframe(index)

    def _started(self, source: StreamSource) -> None:
        self._sources[source.mountpoint.id] = source
        self._changed(source.mountpoint.id)

    def _stopped(self, source: StreamSource) -> None:
        if self._sources.get(source.mountpoint.id) is source:
            del self._sources[source.mountpoint.id]
            self._changed(source.mountpoint.id)

    # -- listeners -------------------------------------------------------------------------

    def listen(self, mp_id: int, listener: Listener) -> Callable[[], None]:
        """Call ``listener`` whenever the feeds of ``mp_id`` change; returns the unsubscriber."""
        self._listeners.setdefault(mp_id, []).append(listener)

        def unlisten() -> None:
            listeners = self._listeners.get(mp_id, [])
            if listener in listeners:
                listeners.remove(listener)
            if not listeners:
                self._listeners.pop(mp_id, None)

        return unlisten

    def _changed(self, mp_id: int) -> None:
        for listener in list(self._listeners.get(mp_id, ())):
            try:
                listener()
            except Exception:
                log.exception("mountpoint %d: a watcher failed to follow its feeds", mp_id)

    # -- what watchers and publishers need --------------------------------------------------

    def next_consumer_id(self) -> int:
        return self.webrtc.next_consumer_id()  # unique across the server's applications

    def context(self, name: str, emit: Callable[[str, dict[str, Any]], None]) -> AppContext:
        """An application context for a PeerConnection that no WebSocket owns (WHIP, WHEP)."""
        return AppContext(
            handle_id=name,
            server=self.webrtc,
            certificate=self.certificate,
            transport_config=self.transport_config,
            loop=asyncio.get_running_loop(),
            emit=emit,
        )


def _default_makers() -> dict[SourceType, SourceMaker]:
    from sfu.streaming.generators import FileStreamSource, TestStreamSource
    from sfu.streaming.ingest import RtpStreamSource
    from sfu.streaming.whipsource import WhipStreamSource

    return {
        SourceType.RTP: RtpStreamSource,
        SourceType.FILE: FileStreamSource,
        SourceType.TEST: TestStreamSource,
        SourceType.WHIP: WhipStreamSource,
    }
