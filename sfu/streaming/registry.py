"""The in-memory registry of mountpoints: the one owner of their configuration and lifecycle.

It allocates ids and RTP ports, checks the admin key, secrets and pins, starts and stops each
mountpoint's :class:`~sfu.streaming.source.MediaSource`, keeps permanent mountpoints in the
:class:`~sfu.streaming.store.MountpointStore`, tracks watchers (so it can kick them), and tells
observers what changed with typed events. The REST API (:mod:`sfu.streaming.api`) and the
watchers' WebSocket application both go through it.

Who may do what (Janus's rules, with the admin key as the superuser):

- create: anyone when no admin key is configured, else the admin key;
- edit, enable, disable, destroy, kick: the admin key; or the mountpoint's secret when it has
  one; or anyone when it has no secret and no admin key is configured;
- list: public mountpoints; private ones too with the admin key;
- info: anyone who knows the id gets the public view; whoever may change it gets everything;
- watch: the pin when the mountpoint has one, and only while it is enabled.

A wrong credential is refused (403) even when another one would have sufficed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import ipaddress
import logging
import secrets
import socket
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Protocol

from sfu.streaming.model import (
    ErrorCode,
    MediaEntry,
    Mountpoint,
    MountpointPatch,
    Problem,
    RtpSource,
    SourceType,
    StreamingError,
    parse_mountpoint,
)
from sfu.streaming.source import (
    FileProbe,
    MediaSource,
    NullSource,
    SourceError,
    SourceFactory,
    check_file_media,
    probe_file,
)
from sfu.streaming.store import MountpointStore, StoreError

__all__ = [
    "Credentials",
    "MountpointCreated",
    "MountpointDestroyed",
    "MountpointDisabled",
    "MountpointEdited",
    "MountpointEnabled",
    "MountpointEvent",
    "MountpointRegistry",
    "PortAllocator",
    "SourceFailed",
    "SourceState",
    "Watcher",
    "WatchersKicked",
    "udp_port_free",
]

log = logging.getLogger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
PortProbe = Callable[[int, IPAddress | None], bool]
MAX_ALLOCATED_ID = 2**31 - 1


@dataclass(frozen=True)
class Credentials:
    """What a request presented: the admin key and/or a mountpoint's secret."""

    admin_key: str | None = None
    secret: str | None = None


class Watcher(Protocol):
    """A watcher of a mountpoint, as far as the registry is concerned."""

    def kick(self, reason: str) -> None:
        """Stop watching now (the registry already forgot this watcher)."""


class SourceState(Enum):
    STOPPED = "stopped"  # disabled
    RUNNING = "running"
    FAILED = "failed"  # enabled, but its source could not start (see ``error``)


# -- events ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class MountpointCreated:
    mountpoint: Mountpoint


@dataclass(frozen=True)
class MountpointEdited:
    mountpoint: Mountpoint
    changed: tuple[str, ...]  # names of the fields whose value changed


@dataclass(frozen=True)
class MountpointEnabled:
    mountpoint: Mountpoint


@dataclass(frozen=True)
class MountpointDisabled:
    """Its source stopped; watchers stay attached and get media again after an enable."""

    mountpoint: Mountpoint


@dataclass(frozen=True)
class MountpointDestroyed:
    mountpoint: Mountpoint


@dataclass(frozen=True)
class WatchersKicked:
    mountpoint_id: int
    count: int
    reason: str


@dataclass(frozen=True)
class SourceFailed:
    """An enabled mountpoint's source could not start (at start-up or on enable)."""

    mountpoint_id: int
    reason: str


MountpointEvent = (
    MountpointCreated
    | MountpointEdited
    | MountpointEnabled
    | MountpointDisabled
    | MountpointDestroyed
    | WatchersKicked
    | SourceFailed
)
Observer = Callable[[MountpointEvent], None]


# -- ports ------------------------------------------------------------------------------------


def udp_port_free(port: int, host: IPAddress | None) -> bool:
    """Whether a UDP socket can bind ``port`` on ``host`` (all addresses when None) right now."""
    v6 = host is not None and host.version == 6
    address = str(host) if host is not None else ("::" if v6 else "0.0.0.0")
    with socket.socket(socket.AF_INET6 if v6 else socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.bind((address, port))
        except OSError:
            return False
    return True


class PortAllocator:
    """RTP ingest ports: explicit ones claimed, 0s allocated from ``[lo, hi]`` round-robin."""

    def __init__(
        self,
        lo: int,
        hi: int,
        reserved: Collection[int] = (),
        probe: PortProbe | None = udp_port_free,
    ) -> None:
        if not 1 <= lo <= hi <= 65535:
            raise ValueError(f"bad RTP port range {lo}-{hi}")
        self.lo, self.hi = lo, hi
        self.reserved = frozenset(reserved)
        self._probe = probe
        self._owner: dict[int, tuple[int, str]] = {}  # port -> (mountpoint id, field)
        self._cursor = lo

    @property
    def probing(self) -> bool:
        """Whether ports are tried with a real bind before they are handed out."""
        return self._probe is not None

    def in_use(self) -> dict[int, tuple[int, str]]:
        return dict(self._owner)

    def claim(self, port: int, mp_id: int, where: str) -> None:
        if port in self.reserved:
            raise StreamingError(
                ErrorCode.CONFLICT, f"{where}: port {port} is reserved by the server"
            )
        owner = self._owner.get(port)
        if owner is not None:
            raise StreamingError(
                ErrorCode.CONFLICT,
                f"{where}: port {port} is already used by mountpoint {owner[0]} ({owner[1]})",
            )
        self._owner[port] = (mp_id, where)

    def allocate(self, mp_id: int, where: str, host: IPAddress | None) -> int:
        size = self.hi - self.lo + 1
        for i in range(size):
            port = self.lo + (self._cursor - self.lo + i) % size
            if port in self._owner or port in self.reserved:
                continue
            if self._probe is not None and not self._probe(port, host):
                continue
            self._owner[port] = (mp_id, where)
            self._cursor = self.lo + (port - self.lo + 1) % size
            return port
        raise StreamingError(
            ErrorCode.NO_PORTS,
            f"{where}: no free UDP port left in the RTP range {self.lo}-{self.hi}",
        )

    def release(self, ports: Collection[int]) -> None:
        for port in ports:
            self._owner.pop(port, None)


# -- the registry -----------------------------------------------------------------------------


@dataclass(eq=False)
class _Entry:
    mountpoint: Mountpoint
    source: MediaSource | None = None
    state: SourceState = SourceState.STOPPED
    error: str | None = None
    watchers: set[Watcher] = field(default_factory=set)
    file_streams: tuple[int, ...] = ()  # the file's stream index of each media entry


def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode("utf-8", "replace"), expected.encode("utf-8"))


class MountpointRegistry:
    """All mountpoints of the server. Build, ``await start()`` (loads the store), use, ``close()``."""

    def __init__(
        self,
        *,
        admin_key: str | None = None,
        store: MountpointStore | None = None,
        rtp_port_min: int = 20000,
        rtp_port_max: int = 20999,
        reserved_ports: Collection[int] = (),
        source_factory: SourceFactory = NullSource,
        port_probe: PortProbe | None = udp_port_free,
        file_probe: FileProbe = probe_file,
    ) -> None:
        self.admin_key = admin_key or None
        self.store = store
        self.ports = PortAllocator(rtp_port_min, rtp_port_max, reserved_ports, port_probe)
        self._factory = source_factory
        self._file_probe = file_probe
        self._entries: dict[int, _Entry] = {}
        self._unloaded: set[int] = set()  # stored ids that failed to load: not reusable
        self._observers: list[Observer] = []
        self._lock = asyncio.Lock()

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> list[Problem]:
        """Restore the stored mountpoints and start the enabled ones; return what failed to load.

        A stored mountpoint that no longer validates (its file is gone, its port is now
        reserved...) is logged, left in the database and not loaded; its id stays taken.
        """
        problems: list[Problem] = []
        if self.store is None:
            return problems
        try:
            rows = self.store.load_all()
        except StoreError as e:
            raise StreamingError(ErrorCode.STORAGE, str(e)) from None
        async with self._lock:
            for row in rows:
                try:
                    spec = parse_mountpoint(row.config)
                    if spec.id != row.id:
                        raise StreamingError(ErrorCode.INVALID, f"stored under id {row.id}")
                    entry = await self._prepare(dataclasses.replace(spec, permanent=True))
                except StreamingError as e:
                    self._unloaded.add(row.id)
                    problems.append(Problem(f"mountpoint {row.id}", e.reason))
                    log.warning("stored mountpoint %d not loaded: %s", row.id, e.reason)
                    continue
                self._entries[row.id] = entry
                if entry.mountpoint.enabled:
                    try:
                        await self._start_source(entry)
                    except StreamingError as e:
                        log.warning("mountpoint %d: %s", row.id, e.reason)
        return problems

    async def close(self) -> None:
        """Stop every source (the stored mountpoints stay stored). Does not close the store."""
        async with self._lock:
            for entry in self._entries.values():
                await self._stop_source(entry)

    def add_observer(self, observer: Observer) -> Callable[[], None]:
        """Call ``observer`` with every event; returns the function that unsubscribes it."""
        self._observers.append(observer)
        return lambda: self._observers.remove(observer) if observer in self._observers else None

    # -- authorization -----------------------------------------------------------------------

    def is_admin(self, creds: Credentials) -> bool:
        """True with the right admin key; False without one; 403 with a wrong one."""
        if creds.admin_key is None or self.admin_key is None:
            return False
        if not _same(creds.admin_key, self.admin_key):
            raise StreamingError(ErrorCode.FORBIDDEN, "wrong admin key")
        return True

    def authorize_create(self, creds: Credentials) -> None:
        if not self.is_admin(creds) and self.admin_key is not None:
            raise StreamingError(
                ErrorCode.UNAUTHORIZED,
                "creating a mountpoint needs the admin key "
                "(header 'Authorization: Bearer <key>' or 'X-Admin-Key')",
            )

    def authorize_change(self, mp_id: int, creds: Credentials) -> Mountpoint:
        """Check that ``creds`` may change mountpoint ``mp_id``; return it."""
        entry = self._get(mp_id)
        self._authorize(entry.mountpoint, creds)
        return entry.mountpoint

    def _authorize(self, mp: Mountpoint, creds: Credentials) -> None:
        if self.is_admin(creds):
            return
        if mp.secret is not None:
            if creds.secret is None:
                raise StreamingError(
                    ErrorCode.UNAUTHORIZED,
                    f"mountpoint {mp.id} needs its secret (header 'X-Mountpoint-Secret') "
                    "or the admin key",
                )
            if not _same(creds.secret, mp.secret):
                raise StreamingError(ErrorCode.FORBIDDEN, f"wrong secret for mountpoint {mp.id}")
            return
        if self.admin_key is not None:
            raise StreamingError(
                ErrorCode.UNAUTHORIZED,
                f"changing mountpoint {mp.id} needs the admin key "
                "(header 'Authorization: Bearer <key>' or 'X-Admin-Key')",
            )

    def _may_change(self, mp: Mountpoint, creds: Credentials) -> bool:
        try:
            self._authorize(mp, creds)
        except StreamingError as e:
            if e.code is ErrorCode.UNAUTHORIZED:
                return False
            raise
        return True

    # -- reading -----------------------------------------------------------------------------

    def get(self, mp_id: int) -> Mountpoint:
        """The mountpoint's configuration (404 when there is none)."""
        return self._get(mp_id).mountpoint

    def source(self, mp_id: int) -> MediaSource | None:
        """The running source of a mountpoint (None when disabled or failed)."""
        return self._get(mp_id).source

    def file_streams(self, mp_id: int) -> tuple[int, ...]:
        """A file mountpoint's stream index for each media entry (empty for other types)."""
        return self._get(mp_id).file_streams

    def mountpoints(self) -> list[Mountpoint]:
        return [e.mountpoint for _, e in sorted(self._entries.items())]

    def list(self, creds: Credentials) -> list[dict[str, Any]]:
        """The JSON views a client with ``creds`` may see, by id."""
        admin = self.is_admin(creds)
        out = []
        for _, entry in sorted(self._entries.items()):
            if entry.mountpoint.is_private and not admin:
                continue
            out.append(self._view(entry, admin or self._may_change(entry.mountpoint, creds)))
        return out

    def info(self, mp_id: int, creds: Credentials) -> dict[str, Any]:
        entry = self._get(mp_id)
        return self._view(entry, self._may_change(entry.mountpoint, creds))

    def describe(self, mp_id: int, *, admin: bool) -> dict[str, Any]:
        """The JSON view of a mountpoint, public or admin, with no authorization check."""
        return self._view(self._get(mp_id), admin)

    def _view(self, entry: _Entry, admin: bool) -> dict[str, Any]:
        mp = entry.mountpoint
        if not admin:
            return {**mp.to_public_json(), "viewers": len(entry.watchers)}
        return {
            **mp.to_admin_json(),
            "viewers": len(entry.watchers),
            "state": entry.state.value,
            "error": entry.error,
            "stats": entry.source.stats() if entry.source is not None else {},
        }

    def _get(self, mp_id: int) -> _Entry:
        entry = self._entries.get(mp_id)
        if entry is None:
            raise StreamingError(ErrorCode.NOT_FOUND, f"no mountpoint {mp_id}")
        return entry

    # -- changes -----------------------------------------------------------------------------

    async def create(self, spec: Mountpoint, creds: Credentials) -> Mountpoint:
        """Add a mountpoint (``parse_mountpoint``'s result); start it when enabled, store it when
        permanent. Returns it with its id, name and ports filled in."""
        self.authorize_create(creds)
        if spec.permanent:
            self._need_store()
        async with self._lock:
            entry = await self._prepare(spec)
            mp = entry.mountpoint
            try:
                if mp.enabled:
                    await self._start_source(entry)
                if mp.permanent:
                    self._save(mp)
            except BaseException:
                await self._stop_source(entry)
                self.ports.release(mp.rtp_ports())
                raise
            self._entries[mp.id] = entry
        log.info("mountpoint %d created (%s)", mp.id, mp.source_type.value)
        self._emit(MountpointCreated(mp))
        return mp

    async def _prepare(self, spec: Mountpoint) -> _Entry:
        """Give ``spec`` its id, name and ports, and check its file; nothing is registered."""
        mp_id = spec.id or self._allocate_id()
        if mp_id in self._entries or mp_id in self._unloaded:
            raise StreamingError(ErrorCode.CONFLICT, f"mountpoint {mp_id} already exists")
        file_streams: tuple[int, ...] = ()
        if spec.source_type is SourceType.FILE:
            mp_for_check = spec
            file_streams = await asyncio.to_thread(check_file_media, mp_for_check, self._file_probe)
        media = self._assign_ports(mp_id, spec.media)
        mp = dataclasses.replace(
            spec, id=mp_id, name=spec.name or f"mountpoint-{mp_id}", media=media
        )
        return _Entry(mp, file_streams=file_streams)

    def _allocate_id(self) -> int:
        while True:
            mp_id = secrets.randbelow(MAX_ALLOCATED_ID) + 1
            if mp_id not in self._entries and mp_id not in self._unloaded:
                return mp_id

    def _assign_ports(self, mp_id: int, media: Sequence[MediaEntry]) -> tuple[MediaEntry, ...]:
        """Claim the explicit RTP ports, then allocate the zeros; all or nothing."""
        if self.ports.probing:
            for i, m in enumerate(media):
                host = m.source.host if isinstance(m.source, RtpSource) else None
                if host is not None and not udp_port_free(0, host):
                    problem = Problem(
                        f"media[{i}].source.host", f"{host} is not an address of this server"
                    )
                    raise StreamingError.invalid([problem])
        claimed: list[int] = []
        try:
            for i, m in enumerate(media):
                if isinstance(m.source, RtpSource) and m.source.port:
                    self.ports.claim(m.source.port, mp_id, f"media[{i}].source.port")
                    claimed.append(m.source.port)
            out = []
            for i, m in enumerate(media):
                if isinstance(m.source, RtpSource) and not m.source.port:
                    port = self.ports.allocate(mp_id, f"media[{i}].source.port", m.source.host)
                    claimed.append(port)
                    m = dataclasses.replace(m, source=dataclasses.replace(m.source, port=port))
                out.append(m)
        except StreamingError:
            self.ports.release(claimed)
            raise
        return tuple(out)

    async def edit(self, mp_id: int, patch: MountpointPatch, creds: Credentials) -> Mountpoint:
        """Change name, description, metadata, secret, pin, is_private or permanence."""
        async with self._lock:
            entry = self._get(mp_id)
            self._authorize(entry.mountpoint, creds)
            old = entry.mountpoint
            new = patch.apply(old)
            if new.permanent:
                self._need_store()
                self._save(new)
            elif old.permanent:
                self._delete(old.id)
            entry.mountpoint = new
        changed = tuple(k for k in patch.changes if getattr(old, k) != getattr(new, k))
        self._emit(MountpointEdited(new, changed))
        return new

    async def enable(self, mp_id: int, creds: Credentials) -> Mountpoint:
        """Start its source (again); idempotent while it runs."""
        async with self._lock:
            entry = self._get(mp_id)
            self._authorize(entry.mountpoint, creds)
            if entry.mountpoint.enabled and entry.state is SourceState.RUNNING:
                return entry.mountpoint
            new = dataclasses.replace(entry.mountpoint, enabled=True)
            await self._start_source(entry)
            if new.permanent:
                try:
                    self._save(new)
                except StreamingError:
                    await self._stop_source(entry)
                    raise
            entry.mountpoint = new
        self._emit(MountpointEnabled(new))
        return new

    async def disable(self, mp_id: int, creds: Credentials) -> Mountpoint:
        """Stop its source; watchers stay attached. Idempotent."""
        async with self._lock:
            entry = self._get(mp_id)
            self._authorize(entry.mountpoint, creds)
            if not entry.mountpoint.enabled and entry.state is SourceState.STOPPED:
                return entry.mountpoint
            new = dataclasses.replace(entry.mountpoint, enabled=False)
            if new.permanent:
                self._save(new)
            await self._stop_source(entry)
            entry.mountpoint = new
        self._emit(MountpointDisabled(new))
        return new

    async def destroy(self, mp_id: int, creds: Credentials) -> Mountpoint:
        """Stop it, kick its watchers, free its ports, remove it from the store."""
        async with self._lock:
            entry = self._get(mp_id)
            mp = entry.mountpoint
            self._authorize(mp, creds)
            if mp.permanent:
                self._delete(mp.id)
            del self._entries[mp_id]
            await self._stop_source(entry)
            self.ports.release(mp.rtp_ports())
        kicked = self._kick(entry, "mountpoint destroyed")
        if kicked:
            self._emit(WatchersKicked(mp_id, kicked, "mountpoint destroyed"))
        log.info("mountpoint %d destroyed", mp_id)
        self._emit(MountpointDestroyed(mp))
        return mp

    def kick_all(self, mp_id: int, creds: Credentials, reason: str = "kicked") -> int:
        """Detach every watcher (each is told through ``kick``); return how many."""
        entry = self._get(mp_id)
        self._authorize(entry.mountpoint, creds)
        count = self._kick(entry, reason)
        self._emit(WatchersKicked(mp_id, count, reason))
        return count

    # -- watchers ----------------------------------------------------------------------------

    def attach(self, mp_id: int, watcher: Watcher, pin: str | None = None) -> Mountpoint:
        """Let ``watcher`` watch: checks the pin and that the mountpoint is enabled."""
        entry = self._get(mp_id)
        mp = entry.mountpoint
        if mp.pin is not None:
            if pin is None:
                raise StreamingError(ErrorCode.UNAUTHORIZED, f"mountpoint {mp_id} needs a pin")
            if not _same(pin, mp.pin):
                raise StreamingError(ErrorCode.FORBIDDEN, f"wrong pin for mountpoint {mp_id}")
        if not mp.enabled:
            raise StreamingError(ErrorCode.DISABLED, f"mountpoint {mp_id} is disabled")
        entry.watchers.add(watcher)
        return mp

    def detach(self, mp_id: int, watcher: Watcher) -> None:
        """Forget a watcher (nothing happens if it is not attached or the mountpoint is gone)."""
        entry = self._entries.get(mp_id)
        if entry is not None:
            entry.watchers.discard(watcher)

    def watchers(self, mp_id: int) -> frozenset[Watcher]:
        return frozenset(self._get(mp_id).watchers)

    # -- helpers -----------------------------------------------------------------------------

    def _kick(self, entry: _Entry, reason: str) -> int:
        watchers = list(entry.watchers)
        entry.watchers.clear()
        for watcher in watchers:
            try:
                watcher.kick(reason)
            except Exception:
                log.exception("mountpoint %d: kicking a watcher failed", entry.mountpoint.id)
        return len(watchers)

    async def _start_source(self, entry: _Entry) -> None:
        mp = entry.mountpoint
        source = self._factory(mp)
        try:
            await source.start(mp)
        except (SourceError, OSError) as e:
            entry.state, entry.error = SourceState.FAILED, str(e)
            try:
                await source.stop()
            except Exception:
                log.exception("mountpoint %d: stopping a failed source", mp.id)
            self._emit(SourceFailed(mp.id, str(e)))
            raise StreamingError(
                ErrorCode.SOURCE_FAILED, f"mountpoint {mp.id}: its source could not start: {e}"
            ) from None
        entry.source, entry.state, entry.error = source, SourceState.RUNNING, None

    async def _stop_source(self, entry: _Entry) -> None:
        source, entry.source = entry.source, None
        entry.state, entry.error = SourceState.STOPPED, None
        if source is not None:
            try:
                await source.stop()
            except Exception:
                log.exception("mountpoint %d: stopping its source", entry.mountpoint.id)

    def _need_store(self) -> None:
        if self.store is None:
            raise StreamingError(
                ErrorCode.CONFLICT,
                "this server keeps no database: permanent mountpoints are unavailable",
            )

    def _save(self, mp: Mountpoint) -> None:
        assert self.store is not None
        try:
            self.store.save(mp.id, mp.to_admin_json())
        except StoreError as e:
            raise StreamingError(ErrorCode.STORAGE, str(e)) from None

    def _delete(self, mp_id: int) -> None:
        if self.store is None:
            return
        try:
            self.store.delete(mp_id)
        except StoreError as e:
            raise StreamingError(ErrorCode.STORAGE, str(e)) from None

    def _emit(self, event: MountpointEvent) -> None:
        for observer in list(self._observers):
            try:
                observer(event)
            except Exception:
                log.exception("mountpoint observer failed on %s", type(event).__name__)
