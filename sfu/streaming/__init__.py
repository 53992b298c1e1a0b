"""Streaming mountpoints (Janus's Streaming plugin, over REST): model, registry, store, API.

- :mod:`~sfu.streaming.model`: the mountpoint configuration, its validation and JSON forms;
- :mod:`~sfu.streaming.registry`: the in-memory owner of mountpoints (ids, ports, credentials,
  sources, watchers, events);
- :mod:`~sfu.streaming.store`: permanent mountpoints in SQLite;
- :mod:`~sfu.streaming.source`: the ``MediaSource`` protocol the registry drives, and file probing;
- :mod:`~sfu.streaming.api` and :mod:`~sfu.streaming.openapi`: the REST API and its document;
- media: :mod:`~sfu.streaming.hub` (the bridge between sources and watchers), the sources
  (:mod:`~sfu.streaming.ingest`, :mod:`~sfu.streaming.generators`,
  :mod:`~sfu.streaming.whipsource`), :mod:`~sfu.streaming.packetize`,
  :mod:`~sfu.streaming.viewer` (a watcher's consumers), :mod:`~sfu.streaming.whip` and
  :mod:`~sfu.streaming.whep` (HTTP ingest and playback). The WebSocket watchers are
  :mod:`sfu.apps.streaming`.
"""

from sfu.streaming.model import (
    Codec,
    ErrorCode,
    MediaEntry,
    MediaKind,
    Mountpoint,
    SourceType,
    StreamingError,
    parse_mountpoint,
    parse_patch,
)
from sfu.streaming.registry import Credentials, MountpointRegistry
from sfu.streaming.source import MediaSource, NullSource, SourceError
from sfu.streaming.store import MountpointStore, StoreError

__all__ = [
    "Codec",
    "Credentials",
    "ErrorCode",
    "MediaEntry",
    "MediaKind",
    "MediaSource",
    "Mountpoint",
    "MountpointRegistry",
    "MountpointStore",
    "NullSource",
    "SourceError",
    "SourceType",
    "StoreError",
    "StreamingError",
    "parse_mountpoint",
    "parse_patch",
]
