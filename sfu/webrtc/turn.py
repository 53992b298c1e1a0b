"""TURN (RFC 8656) over the engine's shared media socket: one allocation per (socket, server).

The single-port design shares one relayed address among every transport: each transport gets a
relay candidate with the same address, permissions are installed per peer IP as transports pair
with it, and relayed datagrams are told apart by the peer address the TURN server reports.

Two layers:

* :class:`TurnClient`: a sans-IO client for ONE allocation (bytes and a clock in, datagrams for
  the server and typed events out). Allocate with the 401 challenge (long-term credentials,
  key = MD5(username:realm:password)), Refresh before expiry, CreatePermission and ChannelBind
  (and their refreshes), Send indications while no channel is bound, Data indications unwrapped.
* :class:`TurnRelays`: the asyncio adapter that runs the clients of one server on the engine:
  it sends what they return from the engine's sockets, keeps one timer, tells the engine about
  channels (``bind_channel``) and relayed destinations (``set_destination(..., relay=...)``), and
  hands unwrapped STUN/DTLS back to the WebRtcServer as ``ControlPacket(..., relay=server)``.

UDP to the TURN server only (``transport=tcp`` and ``turns:`` are skipped with a warning).
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import logging
import struct
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum

from aioice.stun import Class, Message, Method

from sfu.config import TurnServer, TurnTransport, is_private_address
from sfu.engine.base import Addr, ControlKind, ControlPacket, Engine, RelayPath, SocketInfo
from sfu.ice.candidate import (
    Candidate,
    CandidateType,
    candidate_foundation,
    candidate_priority,
    format_addr,
)
from sfu.ice.stun import parse_stun
from sfu.rtp.demux import PacketKind, classify
from sfu.webrtc.gather import resolve

log = logging.getLogger(__name__)

CHANNEL_MIN = 0x4000
CHANNEL_MAX = 0x4FFF  # RFC 8656 section 12: 0x5000-0x7FFF are reserved
REQUESTED_TRANSPORT_UDP = 17 << 24  # protocol number in the first byte, RFFU after
DEFAULT_LIFETIME = 600
PERMISSION_LIFETIME = 300.0
PERMISSION_REFRESH = 240.0  # refresh a wanted permission this long after it was installed
CHANNEL_LIFETIME = 600.0
CHANNEL_REFRESH = 480.0
CHANNEL_COOLDOWN = 300.0  # an expired channel number is not reused for 5 min (RFC 8656 12)
RETRY_LATER = 5.0  # a timed-out refresh/permission is tried again after this
STALE_WAIT = 1.5  # after deleting a stale allocation, the server needs a moment (coturn: ~1 s)
STALE_TRIES = 3
MAX_HELD = 16  # datagrams held per peer IP while its permission is being installed
_CHANNEL_HEADER = struct.Struct("!HH")


# -- framing and credentials ------------------------------------------------------------------


def is_channel_data(data: bytes) -> bool:
    """True if the first byte says ChannelData (0x40-0x7F; RFC 7983 demux)."""
    return len(data) >= 4 and 0x40 <= data[0] <= 0x7F


def encode_channel_data(channel: int, payload: bytes, pad: bool = False) -> bytes:
    """A ChannelData message: channel number, payload length, payload (padded to 4 if ``pad``).

    Over UDP the padding is optional (RFC 8656 section 12.5); over TCP it is required.
    """
    if not CHANNEL_MIN <= channel <= 0x7FFF:
        raise ValueError(f"channel {channel:#x} is not a channel number")
    if len(payload) > 0xFFFF:
        raise ValueError("ChannelData payload longer than 65535 bytes")
    frame = _CHANNEL_HEADER.pack(channel, len(payload)) + payload
    if pad and len(payload) % 4:
        frame += bytes(4 - len(payload) % 4)
    return frame


def decode_channel_data(data: bytes) -> tuple[int, bytes] | None:
    """(channel, payload) of a ChannelData message, padding ignored; None if malformed."""
    if not is_channel_data(data):
        return None
    channel, length = _CHANNEL_HEADER.unpack_from(data)
    if len(data) < 4 + length:
        return None
    return channel, data[4 : 4 + length]


def long_term_key(username: str, realm: str, password: str) -> bytes:
    """The long-term credential key: MD5(username ":" realm ":" password) (RFC 8489 9.2.2)."""
    return hashlib.md5(f"{username}:{realm}:{password}".encode()).digest()


# -- events ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class AllocationReady:
    """The allocation exists: peers reach us at ``relayed``; the server saw us at ``mapped``."""

    relayed: Addr
    mapped: Addr | None
    lifetime: int


@dataclass(frozen=True)
class AllocationFailed:
    """Allocate failed, or an existing allocation was lost (refresh refused or timed out)."""

    reason: str


@dataclass(frozen=True)
class PermissionFailed:
    peer_ip: str
    reason: str


@dataclass(frozen=True)
class ChannelBound:
    """ChannelData on ``channel`` now carries datagrams to and from ``peer``."""

    peer: Addr
    channel: int


@dataclass(frozen=True)
class ChannelExpired:
    """The binding of ``channel`` ended (not refreshed, refresh failed, or bind refused)."""

    peer: Addr
    channel: int
    reason: str


@dataclass(frozen=True)
class RelayedData:
    """A datagram from ``peer`` that arrived in a Data indication."""

    peer: Addr
    data: bytes


TurnEvent = (
    AllocationReady
    | AllocationFailed
    | PermissionFailed
    | ChannelBound
    | ChannelExpired
    | RelayedData
)


class TurnState(Enum):
    NEW = "new"
    ALLOCATING = "allocating"
    READY = "ready"
    FAILED = "failed"
    CLOSED = "closed"


class _Kind(Enum):
    ALLOCATE = "Allocate"
    REFRESH = "Refresh"
    PERMISSION = "CreatePermission"
    CHANNEL_BIND = "ChannelBind"


_METHODS = {
    _Kind.ALLOCATE: Method.ALLOCATE,
    _Kind.REFRESH: Method.REFRESH,
    _Kind.PERMISSION: Method.CREATE_PERMISSION,
    _Kind.CHANNEL_BIND: Method.CHANNEL_BIND,
}


@dataclass(eq=False)
class _Request:
    kind: _Kind
    txid: bytes
    data: bytes
    deadline: float
    rto: float
    sent: int = 1
    peer: Addr | None = None  # CreatePermission: (ip, 0); ChannelBind: the peer
    channel: int | None = None
    lifetime: int | None = None  # Refresh
    authenticated: bool = False
    stale_retries: int = 0


@dataclass(eq=False)
class _Permission:
    ip: str
    wanted: bool = True
    installed_until: float | None = None
    refresh_at: float = 0.0
    in_flight: bool = False
    held: deque[tuple[Addr, bytes]] = field(default_factory=lambda: deque(maxlen=MAX_HELD))


@dataclass(eq=False)
class _Channel:
    number: int
    peer: Addr
    wanted: bool = True
    bound: bool = False
    expires_at: float = 0.0
    refresh_at: float = 0.0
    in_flight: bool = False


def _peer_key(addr: Addr) -> Addr:
    return (str(ipaddress.ip_address(addr[0])), int(addr[1]))


class TurnClient:
    """One TURN allocation over UDP (sans-IO). Everything it sends goes to its one server.

    Call :meth:`allocate`, then feed every STUN message from the server to :meth:`receive`
    and ChannelData to :meth:`unwrap`; send :meth:`datagrams_to_send`, run :meth:`handle_timer`
    at :meth:`get_timer`, and read :meth:`next_event`.
    """

    def __init__(
        self,
        username: str,
        password: str,
        *,
        lifetime: int = DEFAULT_LIFETIME,
        rto: float = 0.25,
        tries: int = 4,
        software: str | None = "sfu",
    ) -> None:
        self.username = username
        self.password = password
        self.requested_lifetime = lifetime
        self.state = TurnState.NEW
        self.relayed: Addr | None = None
        self.mapped: Addr | None = None
        self.lifetime = 0
        self.expires_at = 0.0
        self.failure_reason: str | None = None
        self.counters: Counter[str] = Counter()
        self._rto = rto
        self._tries = tries
        self._software = software
        self._realm: str | None = None
        self._nonce: bytes | None = None
        self._key: bytes | None = None
        self._requests: dict[bytes, _Request] = {}
        self._outbox: list[bytes] = []
        self._events: deque[TurnEvent] = deque()
        self._refresh_at: float | None = None
        self._permissions: dict[str, _Permission] = {}
        self._channels: dict[Addr, _Channel] = {}
        self._by_number: dict[int, _Channel] = {}
        self._cooldown: dict[int, float] = {}
        self._stale_tries = 0
        self._allocate_at: float | None = None

    # -- public API ------------------------------------------------------------------------

    def allocate(self, now: float) -> None:
        """Start the Allocate transaction (the first one unauthenticated, to learn the realm)."""
        if self.state is not TurnState.NEW:
            raise RuntimeError(f"allocate() in state {self.state.value}")
        self.state = TurnState.ALLOCATING
        self._request(_Kind.ALLOCATE, now)

    def receive(self, data: bytes, now: float) -> bool:
        """Handle a STUN message from the server; True if it was a response or indication of ours."""
        msg = parse_stun(data)
        if msg is None:
            self.counters["malformed"] += 1
            return False
        if msg.message_class == Class.INDICATION:
            if msg.message_method == Method.DATA and self.state is TurnState.READY:
                return self._on_data_indication(msg)
            self.counters["other indications"] += 1
            return False
        if msg.message_class == Class.REQUEST:
            self.counters["requests from the server"] += 1
            return False
        req = self._requests.get(msg.transaction_id)
        if req is None:
            self.counters["unmatched responses"] += 1
            return False
        code = msg.error_code if msg.message_class == Class.ERROR else None
        challenge = code in (401, 438)
        if not challenge and self._key is not None and req.authenticated:
            if not msg.check_message_integrity(self._key):
                self.counters["responses failing integrity"] += 1
                return True  # keep retransmitting (RFC 8489 section 9.2.5)
        del self._requests[req.txid]
        if code is None:
            self._on_success(req, msg, now)
        elif challenge and self._retry_challenge(req, msg, code, now):
            pass
        else:
            reason = msg.attributes.get("ERROR-CODE", (code, ""))
            self._on_failure(req, f"{reason[0]} {reason[1]}".strip(), now)
        return True

    def unwrap(self, data: bytes) -> tuple[Addr, bytes] | None:
        """(peer, payload) of ChannelData on a channel we know (bound or being bound)."""
        decoded = decode_channel_data(data)
        if decoded is None:
            self.counters["malformed channel data"] += 1
            return None
        ch = self._by_number.get(decoded[0])
        if ch is None:
            self.counters["channel data on unknown channel"] += 1
            return None
        return ch.peer, decoded[1]

    def permit(self, ip: str, now: float) -> None:
        """Keep a permission for ``ip`` installed (installed now, refreshed until :meth:`forget`)."""
        if self.state is not TurnState.READY:
            return
        ip = str(ipaddress.ip_address(ip))
        perm = self._permissions.get(ip)
        if perm is None:
            perm = self._permissions[ip] = _Permission(ip)
        perm.wanted = True
        if not perm.in_flight and (perm.installed_until is None or perm.installed_until <= now):
            self._send_permission(perm, now)

    def forget(self, ip: str) -> None:
        """Stop refreshing the permission for ``ip`` (it lapses at the server)."""
        perm = self._permissions.get(str(ipaddress.ip_address(ip)))
        if perm is not None:
            perm.wanted = False
            perm.held.clear()

    def want_channel(self, peer: Addr, now: float) -> None:
        """Bind (or keep bound) a channel to ``peer``; :class:`ChannelBound` says when."""
        if self.state is not TurnState.READY:
            return
        peer = _peer_key(peer)
        ch = self._channels.get(peer)
        if ch is None:
            number = self._free_channel(now)
            if number is None:
                self.counters["channels exhausted"] += 1
                self._events.append(ChannelExpired(peer, 0, "no free channel number"))
                return
            ch = _Channel(number, peer)
            self._channels[peer] = ch
            self._by_number[number] = ch
        ch.wanted = True
        if not ch.in_flight and not ch.bound:
            self._send_channel_bind(ch, now)

    def drop_channel(self, peer: Addr) -> None:
        """Stop refreshing the channel to ``peer`` (it lapses at the server)."""
        ch = self._channels.get(_peer_key(peer))
        if ch is not None:
            ch.wanted = False

    def channel(self, peer: Addr) -> int | None:
        """The channel bound to ``peer``, if any."""
        ch = self._channels.get(_peer_key(peer))
        return ch.number if ch is not None and ch.bound else None

    def send(self, peer: Addr, data: bytes, now: float) -> None:
        """Relay ``data`` to ``peer``: ChannelData when bound, else a Send indication.

        Without a permission for the peer's IP, one is requested and the datagram held until
        it is installed (a Send indication to an unpermitted peer is dropped by the server).
        """
        if self.state is not TurnState.READY:
            self.counters["sent before ready (dropped)"] += 1
            return
        peer = _peer_key(peer)
        ch = self._channels.get(peer)
        if ch is not None and ch.bound:
            self._outbox.append(encode_channel_data(ch.number, data))
            self.counters["channel data sent"] += 1
            return
        perm = self._permissions.get(peer[0])
        if perm is None or not perm.wanted:
            self.permit(peer[0], now)
            perm = self._permissions[peer[0]]
        if perm.installed_until is not None and perm.installed_until > now:
            self._outbox.append(send_indication(peer, data))
            self.counters["send indications"] += 1
        else:
            perm.held.append((peer, data))

    def datagrams_to_send(self, now: float) -> list[bytes]:
        """Everything to send to the server now."""
        out, self._outbox = self._outbox, []
        return out

    def get_timer(self) -> float | None:
        """The earliest time :meth:`handle_timer` must run."""
        if self.state in (TurnState.NEW, TurnState.FAILED, TurnState.CLOSED):
            return None
        times = [r.deadline for r in self._requests.values()]
        if self._allocate_at is not None:
            times.append(self._allocate_at)
        if self.state is TurnState.READY:
            if self._refresh_at is not None:
                times.append(self._refresh_at)
            times.append(self.expires_at)
            for perm in self._permissions.values():
                if perm.in_flight:
                    continue
                if perm.wanted:
                    times.append(perm.refresh_at)
                elif perm.installed_until is not None:
                    times.append(perm.installed_until)
            for ch in self._channels.values():
                if ch.in_flight:
                    continue
                if ch.wanted:
                    times.append(ch.refresh_at)
                else:
                    times.append(ch.expires_at if ch.bound else 0.0)
        return min(times) if times else None

    def handle_timer(self, now: float) -> None:
        """Retransmit, time out, refresh the allocation, permissions and channels."""
        if self.state in (TurnState.NEW, TurnState.FAILED, TurnState.CLOSED):
            return
        for req in [r for r in self._requests.values() if r.deadline <= now]:
            if req.sent < self._tries:
                req.sent += 1
                req.rto *= 2
                req.deadline = now + req.rto
                self._outbox.append(req.data)
                self.counters["retransmissions"] += 1
                continue
            del self._requests[req.txid]
            self._on_failure(req, f"no answer after {req.sent} tries", now, timeout=True)
        if self._allocate_at is not None and now >= self._allocate_at:
            self._allocate_at = None
            self._request(_Kind.ALLOCATE, now)
        if self.state is not TurnState.READY:
            return
        if now >= self.expires_at:
            self._lose(f"allocation expired (lifetime {self.lifetime} s)")
            return
        if self._refresh_at is not None and now >= self._refresh_at:
            self._refresh_at = None
            self._request(_Kind.REFRESH, now, lifetime=self.requested_lifetime)
        for perm in list(self._permissions.values()):
            if perm.in_flight:
                continue
            if perm.wanted and now >= perm.refresh_at:
                self._send_permission(perm, now)
            elif not perm.wanted and (perm.installed_until is None or now >= perm.installed_until):
                del self._permissions[perm.ip]
        for ch in list(self._channels.values()):
            if ch.in_flight:
                continue
            if ch.wanted and now >= ch.refresh_at:
                self._send_channel_bind(ch, now)
            elif not ch.wanted and (not ch.bound or now >= ch.expires_at):
                self._remove_channel(ch, now, "not refreshed")

    def next_event(self) -> TurnEvent | None:
        return self._events.popleft() if self._events else None

    def close(self, now: float) -> None:
        """Release the allocation (Refresh with LIFETIME 0, sent once) and stop."""
        if self.state is TurnState.READY:
            msg = self._message(_Kind.REFRESH, lifetime=0)
            self._outbox.append(bytes(msg))
        self._requests.clear()
        self.state = TurnState.CLOSED

    # -- building requests -----------------------------------------------------------------

    def _message(
        self,
        kind: _Kind,
        *,
        peer: Addr | None = None,
        channel: int | None = None,
        lifetime: int | None = None,
    ) -> Message:
        msg = Message(_METHODS[kind], Class.REQUEST)
        if kind is _Kind.ALLOCATE:
            msg.attributes["REQUESTED-TRANSPORT"] = REQUESTED_TRANSPORT_UDP
        if lifetime is not None:
            msg.attributes["LIFETIME"] = lifetime
        if channel is not None:
            msg.attributes["CHANNEL-NUMBER"] = channel
        if peer is not None:
            msg.attributes["XOR-PEER-ADDRESS"] = peer
        if self._software:
            msg.attributes["SOFTWARE"] = self._software
        if self._key is not None:
            assert self._realm is not None and self._nonce is not None
            msg.attributes["USERNAME"] = self.username
            msg.attributes["REALM"] = self._realm
            msg.attributes["NONCE"] = self._nonce
            msg.add_message_integrity(self._key)
        else:
            msg.add_fingerprint()
        return msg

    def _request(
        self,
        kind: _Kind,
        now: float,
        *,
        peer: Addr | None = None,
        channel: int | None = None,
        lifetime: int | None = None,
        stale_retries: int = 0,
    ) -> None:
        if kind is _Kind.ALLOCATE and lifetime is None:
            lifetime = self.requested_lifetime
        msg = self._message(kind, peer=peer, channel=channel, lifetime=lifetime)
        data = bytes(msg)
        self._requests[msg.transaction_id] = _Request(
            kind,
            msg.transaction_id,
            data,
            deadline=now + self._rto,
            rto=self._rto,
            peer=peer,
            channel=channel,
            lifetime=lifetime,
            authenticated=self._key is not None,
            stale_retries=stale_retries,
        )
        self._outbox.append(data)
        self.counters[f"{kind.value} sent"] += 1

    def _send_permission(self, perm: _Permission, now: float) -> None:
        perm.in_flight = True
        self._request(_Kind.PERMISSION, now, peer=(perm.ip, 0))

    def _send_channel_bind(self, ch: _Channel, now: float) -> None:
        ch.in_flight = True
        self._request(_Kind.CHANNEL_BIND, now, peer=ch.peer, channel=ch.number)

    def _free_channel(self, now: float) -> int | None:
        for number in range(CHANNEL_MIN, CHANNEL_MAX + 1):
            if number in self._by_number:
                continue
            until = self._cooldown.get(number)
            if until is not None:
                if until > now:
                    continue
                del self._cooldown[number]
            return number
        return None

    # -- responses ---------------------------------------------------------------------------

    def _retry_challenge(self, req: _Request, msg: Message, code: int, now: float) -> bool:
        """401 (first Allocate) or 438 (stale nonce): learn realm/nonce and send again."""
        realm, nonce = msg.attributes.get("REALM"), msg.attributes.get("NONCE")
        if not isinstance(realm, str) or not isinstance(nonce, bytes):
            return False
        if code == 401 and req.authenticated:
            return False  # our credentials were refused
        if code == 438 and req.stale_retries >= 3:
            return False
        if realm != self._realm or self._key is None:
            self._realm = realm
            self._key = long_term_key(self.username, realm, self.password)
        self._nonce = nonce
        self.counters[f"{code} challenges"] += 1
        self._request(
            req.kind,
            now,
            peer=req.peer,
            channel=req.channel,
            lifetime=req.lifetime,
            stale_retries=req.stale_retries + (code == 438),
        )
        return True

    def _on_success(self, req: _Request, msg: Message, now: float) -> None:
        attrs = msg.attributes
        if req.kind is _Kind.ALLOCATE:
            relayed = attrs.get("XOR-RELAYED-ADDRESS")
            if not isinstance(relayed, tuple):
                self._fail("Allocate success without XOR-RELAYED-ADDRESS")
                return
            mapped = attrs.get("XOR-MAPPED-ADDRESS")
            self.relayed = _peer_key(relayed)
            self.mapped = _peer_key(mapped) if isinstance(mapped, tuple) else None
            self._set_lifetime(int(attrs.get("LIFETIME", self.requested_lifetime)), now)
            self.state = TurnState.READY
            self._events.append(AllocationReady(self.relayed, self.mapped, self.lifetime))
        elif req.kind is _Kind.REFRESH:
            if self.state is TurnState.ALLOCATING:  # a stale allocation was deleted: again
                self._allocate_at = now + STALE_WAIT
                return
            self._set_lifetime(int(attrs.get("LIFETIME", self.requested_lifetime)), now)
        elif req.kind is _Kind.PERMISSION and req.peer is not None:
            perm = self._permissions.get(req.peer[0])
            if perm is not None:
                self._installed(perm, now)
        elif req.kind is _Kind.CHANNEL_BIND and req.peer is not None:
            ch = self._channels.get(req.peer)
            if ch is None or ch.number != req.channel:
                return
            ch.in_flight = False
            ch.expires_at = now + CHANNEL_LIFETIME
            ch.refresh_at = now + CHANNEL_REFRESH
            perm = self._permissions.get(ch.peer[0])  # a ChannelBind installs a permission too
            if perm is not None and not perm.in_flight:
                self._installed(perm, now)
            if not ch.bound:
                ch.bound = True
                self._events.append(ChannelBound(ch.peer, ch.number))

    def _installed(self, perm: _Permission, now: float) -> None:
        perm.in_flight = False
        perm.installed_until = now + PERMISSION_LIFETIME
        perm.refresh_at = now + PERMISSION_REFRESH
        while perm.held:
            peer, data = perm.held.popleft()
            self.send(peer, data, now)

    def _on_failure(self, req: _Request, reason: str, now: float, timeout: bool = False) -> None:
        what = f"{req.kind.value}: {reason}"
        if req.kind is _Kind.ALLOCATE:
            if reason.startswith("437") and self._stale_tries < STALE_TRIES:
                # Allocation Mismatch: an allocation of a previous run still holds our 5-tuple
                # (single port: we cannot move to another). Delete it, then allocate again.
                self._stale_tries += 1
                self.counters["stale allocation deleted"] += 1
                self._request(_Kind.REFRESH, now, lifetime=0)
                return
            if reason.startswith("401"):
                what += " (wrong TURN username/password, or expired REST credentials)"
            self._fail(what)
        elif req.kind is _Kind.REFRESH:
            if self.state is TurnState.ALLOCATING:  # nothing to delete (437): allocate again
                self._allocate_at = now + STALE_WAIT
                return
            if req.lifetime == 0:
                return
            if timeout and now + RETRY_LATER < self.expires_at:
                self._refresh_at = now + RETRY_LATER
                return
            self._lose(f"Refresh failed: {what}")
        elif req.kind is _Kind.PERMISSION and req.peer is not None:
            perm = self._permissions.get(req.peer[0])
            if perm is None:
                return
            perm.in_flight = False
            perm.held.clear()
            if timeout and perm.wanted:
                perm.refresh_at = now + RETRY_LATER
                return
            perm.wanted = False
            self._events.append(PermissionFailed(req.peer[0], what))
        elif req.kind is _Kind.CHANNEL_BIND and req.peer is not None:
            ch = self._channels.get(req.peer)
            if ch is None or ch.number != req.channel:
                return
            ch.in_flight = False
            if timeout and ch.wanted and (not ch.bound or now + RETRY_LATER < ch.expires_at):
                ch.refresh_at = now + RETRY_LATER
                return
            self._remove_channel(ch, now, what)

    def _remove_channel(self, ch: _Channel, now: float, reason: str) -> None:
        self._channels.pop(ch.peer, None)
        self._by_number.pop(ch.number, None)
        self._cooldown[ch.number] = max(now, ch.expires_at) + CHANNEL_COOLDOWN
        self._events.append(ChannelExpired(ch.peer, ch.number, reason))

    def _on_data_indication(self, msg: Message) -> bool:
        peer = msg.attributes.get("XOR-PEER-ADDRESS")
        data = msg.attributes.get("DATA")
        if not isinstance(peer, tuple) or not isinstance(data, bytes):
            self.counters["bad data indications"] += 1
            return True
        self.counters["data indications"] += 1
        self._events.append(RelayedData(_peer_key(peer), data))
        return True

    def _set_lifetime(self, lifetime: int, now: float) -> None:
        self.lifetime = lifetime
        self.expires_at = now + lifetime
        self._refresh_at = now + max(lifetime - 60, lifetime / 2)

    def _fail(self, reason: str) -> None:
        self.state = TurnState.FAILED
        self.failure_reason = reason
        self._requests.clear()
        self._events.append(AllocationFailed(reason))

    def _lose(self, reason: str) -> None:
        for ch in list(self._channels.values()):
            self._events.append(ChannelExpired(ch.peer, ch.number, "allocation lost"))
        self._channels.clear()
        self._by_number.clear()
        self._permissions.clear()
        self._fail(reason)


def send_indication(peer: Addr, data: bytes) -> bytes:
    """A Send indication carrying ``data`` to ``peer`` (no integrity, RFC 8656 section 11)."""
    msg = Message(Method.SEND, Class.INDICATION)
    msg.attributes["XOR-PEER-ADDRESS"] = peer
    msg.attributes["DATA"] = data
    msg.add_fingerprint()
    return bytes(msg)


# -- the asyncio adapter ----------------------------------------------------------------------


@dataclass(frozen=True)
class RelayKey:
    """The ``socket_key`` of relay candidates: the media socket and the TURN server it uses."""

    socket_id: int
    server: Addr

    def __str__(self) -> str:
        return f"relay via {self.server[0]}:{self.server[1]} on socket {self.socket_id}"


SocketKey = int | RelayKey


@dataclass(eq=False)
class _Relay:
    key: RelayKey
    config: TurnServer
    client: TurnClient
    family: int
    attempts: int = 0
    retry_at: float | None = None
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    ip_users: dict[str, set[int]] = field(default_factory=dict)
    channel_users: dict[Addr, set[int]] = field(default_factory=dict)
    skipped_private: int = 0  # datagrams not relayed: private peer, public relay

    def reaches(self, peer_ip: str) -> bool:
        """A relay on a public address does not relay to private peer addresses.

        Such a server cannot reach them, and coturn tears the WHOLE allocation down when its
        sendto fails ("network unreachable" on a server without a default route): one peer's
        private host candidate must not cost every session its relay.
        """
        relayed = self.client.relayed
        if relayed is None or not is_private_address(ipaddress.ip_address(peer_ip)):
            return True
        return is_private_address(ipaddress.ip_address(relayed[0]))

    @property
    def label(self) -> str:
        return f"TURN {self.key.server[0]}:{self.key.server[1]}"


RelayedHandler = Callable[[ControlPacket], None]


class TurnRelays:
    """The server's TURN allocations on the engine's sockets (see the module docstring)."""

    def __init__(
        self,
        engine: Engine,
        on_relayed: RelayedHandler,
        *,
        loop: asyncio.AbstractEventLoop | None = None,
        clock: Callable[[], float] = time.monotonic,
        wallclock: Callable[[], float] = time.time,
        retry_min: float = 30.0,
        retry_max: float = 300.0,
    ) -> None:
        self._engine = engine
        self._on_relayed = on_relayed
        self._loop = loop
        self._clock = clock
        self._wallclock = wallclock
        self._retry_min = retry_min
        self._retry_max = retry_max
        self._relays: dict[RelayKey, _Relay] = {}
        self._dests: dict[int, tuple[RelayKey, Addr]] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._closed = False
        self.dropped_media = 0  # RTP/RTCP in Data indications (media must use a channel)

    # -- start-up ------------------------------------------------------------------------------

    async def allocate(
        self, listeners: Sequence[SocketInfo], servers: Sequence[TurnServer], timeout: float = 8.0
    ) -> None:
        """One allocation per (listener, UDP TURN server of its family); wait for each to end.

        Failures are logged and the server goes on without that relay (retried later).
        """
        self._loop = self._loop or asyncio.get_running_loop()
        for server in servers:
            if server.secure or server.transport is not TurnTransport.UDP:
                log.warning(
                    "TURN %s skipped: only UDP to the TURN server is supported (no TCP/TLS)",
                    server.url,
                )
                continue
            addrs = await resolve(self._loop, server.host, server.port)
            if not addrs:
                log.warning("TURN %s skipped: cannot resolve %s", server.url, server.host)
                continue
            for info in listeners:
                addr = next((a for fam, a in addrs if fam == info.family), None)
                if addr is None:
                    continue
                key = RelayKey(info.socket_id, addr)
                if key in self._relays:
                    continue
                relay = _Relay(key, server, self._new_client(server), info.family)
                self._relays[key] = relay
                self._start(relay)
        if not self._relays:
            return
        self._pump()
        waits = [r.ready.wait() for r in self._relays.values()]
        try:
            await asyncio.wait_for(asyncio.gather(*waits), timeout)
        except TimeoutError:
            pass

    def _new_client(self, server: TurnServer) -> TurnClient:
        username, password = server.credentials(self._wallclock())
        return TurnClient(username, password)

    def _start(self, relay: _Relay) -> None:
        relay.attempts += 1
        relay.retry_at = None
        relay.client.allocate(self._clock())

    # -- what the WebRtcServer asks ---------------------------------------------------------------

    def candidates(self) -> list[tuple[Candidate, RelayKey]]:
        """One relay candidate per ready allocation (related address = the mapped address)."""
        out: list[tuple[Candidate, RelayKey]] = []
        pref = 65535
        for relay in self._relays.values():
            c = relay.client
            if c.state is not TurnState.READY or c.relayed is None:
                continue
            related = c.mapped or c.relayed
            out.append(
                (
                    Candidate(
                        foundation=candidate_foundation(
                            CandidateType.RELAY, c.relayed[0], "udp", relay.key.server[0]
                        ),
                        component=1,
                        transport="udp",
                        priority=candidate_priority(CandidateType.RELAY, pref, 1),
                        host=c.relayed[0],
                        port=c.relayed[1],
                        type=CandidateType.RELAY,
                        related_address=related[0],
                        related_port=related[1],
                    ),
                    relay.key,
                )
            )
            pref -= 1
        return out

    def owns(self, socket_id: int, addr: Addr) -> bool:
        """True if ``addr`` is a TURN server we hold an allocation with on ``socket_id``."""
        return RelayKey(socket_id, addr) in self._relays

    def handle(self, packet: ControlPacket) -> None:
        """A datagram from a TURN server: a response, a Data indication or unbound ChannelData."""
        relay = self._relays.get(RelayKey(packet.socket_id, packet.addr))
        if relay is None:
            return
        now = self._clock()
        if packet.kind is ControlKind.TURN or is_channel_data(packet.data):
            unwrapped = relay.client.unwrap(packet.data)
            if unwrapped is not None:
                self._inject(relay, *unwrapped)
        else:
            relay.client.receive(packet.data, now)
        self._pump()

    def send(self, transport_id: int, key: RelayKey, peer: Addr, data: bytes) -> None:
        """Send ``data`` to ``peer`` through the relay ``key`` (for ICE and DTLS)."""
        relay = self._relays.get(key)
        if relay is None or relay.client.state is not TurnState.READY:
            return
        peer = _peer_key(peer)
        if not relay.reaches(peer[0]):
            relay.skipped_private += 1
            return
        relay.ip_users.setdefault(peer[0], set()).add(transport_id)
        now = self._clock()
        # A peer we check through the relay may pick that path for its media even when we pick
        # another (each side selects its own pair): bind a channel so the engine takes its media.
        users = relay.channel_users.setdefault(peer, set())
        if transport_id not in users:
            users.add(transport_id)
            relay.client.want_channel(peer, now)
        relay.client.send(peer, data, now)
        self._pump()

    def set_destination(self, transport_id: int, key: RelayKey | None, peer: Addr) -> None:
        """Media of ``transport_id`` goes to ``peer`` through ``key`` (None: not relayed)."""
        previous = self._dests.pop(transport_id, None)
        if previous is not None:
            self._drop_channel_user(transport_id, *previous)
        if key is None:
            return
        relay = self._relays.get(key)
        if relay is None or relay.client.state is not TurnState.READY:
            log.warning("transport %d: relay %s is gone, no media path", transport_id, key)
            return
        peer = _peer_key(peer)
        self._dests[transport_id] = (key, peer)
        relay.channel_users.setdefault(peer, set()).add(transport_id)
        relay.ip_users.setdefault(peer[0], set()).add(transport_id)
        channel = relay.client.channel(peer)
        if channel is not None:
            self._engine.bind_channel(key.socket_id, key.server, channel, peer)
            self._engine.set_destination(
                transport_id, key.socket_id, peer, RelayPath(key.server, channel)
            )
        else:
            relay.client.want_channel(peer, self._clock())
        self._pump()

    def release(self, transport_id: int) -> None:
        """The transport is gone: stop keeping permissions and channels only it used."""
        previous = self._dests.pop(transport_id, None)
        if previous is not None:
            self._drop_channel_user(transport_id, *previous)
        for relay in self._relays.values():
            for peer in [p for p, users in relay.channel_users.items() if transport_id in users]:
                self._drop_channel_user(transport_id, relay.key, peer)
            for ip, users in list(relay.ip_users.items()):
                users.discard(transport_id)
                if not users:
                    del relay.ip_users[ip]
                    relay.client.forget(ip)

    def close(self) -> None:
        """Release every allocation (Refresh 0) and stop the timer."""
        if self._closed:
            return
        self._closed = True
        now = self._clock()
        for relay in self._relays.values():
            relay.client.close(now)
        self._pump()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def stats(self) -> list[dict[str, object]]:
        return [
            {
                "server": f"{r.key.server[0]}:{r.key.server[1]}",
                "socket_id": r.key.socket_id,
                "state": r.client.state.value,
                "relayed": r.client.relayed,
                "mapped": r.client.mapped,
                "failure": r.client.failure_reason,
                "peers": len(r.ip_users),
                "channels": len(r.channel_users),
                "skipped_private": r.skipped_private,
                "counters": dict(r.client.counters),
            }
            for r in self._relays.values()
        ]

    # -- internals -------------------------------------------------------------------------------

    def _drop_channel_user(self, transport_id: int, key: RelayKey, peer: Addr) -> None:
        relay = self._relays.get(key)
        if relay is None:
            return
        users = relay.channel_users.get(peer)
        if users is None:
            return
        users.discard(transport_id)
        if not users:
            del relay.channel_users[peer]
            relay.client.drop_channel(peer)

    def _inject(self, relay: _Relay, peer: Addr, data: bytes) -> None:
        kind = classify(data)
        if kind is PacketKind.STUN:
            ckind = ControlKind.STUN
        elif kind is PacketKind.DTLS:
            ckind = ControlKind.DTLS
        else:
            self.dropped_media += 1
            return
        self._on_relayed(ControlPacket(ckind, relay.key.socket_id, peer, data, 0, relay.key.server))

    def _pump(self) -> None:
        if self._loop is None:
            return
        now = self._clock()
        for relay in list(self._relays.values()):
            for data in relay.client.datagrams_to_send(now):
                self._engine.send(relay.key.socket_id, relay.key.server, data)
            while (ev := relay.client.next_event()) is not None:
                self._on_event(relay, ev, now)
        # events may have queued more (flushed held datagrams)
        for relay in self._relays.values():
            for data in relay.client.datagrams_to_send(now):
                self._engine.send(relay.key.socket_id, relay.key.server, data)
        if not self._closed:
            self._arm_timer()

    def _on_event(self, relay: _Relay, ev: TurnEvent, now: float) -> None:
        key = relay.key
        if isinstance(ev, AllocationReady):
            relay.attempts = 0
            mapped = f" (the server sees us at {_fmt(ev.mapped)})" if ev.mapped else ""
            log.info(
                "relay %s via %s, lifetime %d s%s",
                _fmt(ev.relayed),
                relay.label,
                ev.lifetime,
                mapped,
            )
            relay.ready.set()
        elif isinstance(ev, AllocationFailed):
            delay = min(self._retry_max, self._retry_min * 2 ** max(0, relay.attempts - 1))
            log.warning(
                "%s from socket %d: %s; going on without this relay (retry in %.0f s)",
                relay.label,
                key.socket_id,
                ev.reason,
                delay,
            )
            relay.retry_at = now + delay
            for tid, (k, _) in list(self._dests.items()):
                if k == key:
                    del self._dests[tid]
            relay.ip_users.clear()
            relay.channel_users.clear()
            relay.ready.set()
        elif isinstance(ev, ChannelBound):
            self._engine.bind_channel(key.socket_id, key.server, ev.channel, ev.peer)
            for tid, (k, peer) in self._dests.items():
                if k == key and peer == ev.peer:
                    self._engine.set_destination(
                        tid, key.socket_id, peer, RelayPath(key.server, ev.channel)
                    )
        elif isinstance(ev, ChannelExpired):
            if ev.channel:
                self._engine.unbind_channel(key.socket_id, key.server, ev.channel)
            if ev.reason != "not refreshed":
                log.warning("%s: channel to %s ended: %s", relay.label, _fmt(ev.peer), ev.reason)
        elif isinstance(ev, PermissionFailed):
            log.info("%s: permission for %s refused: %s", relay.label, ev.peer_ip, ev.reason)
        elif isinstance(ev, RelayedData):
            self._inject(relay, ev.peer, ev.data)

    def _arm_timer(self) -> None:
        assert self._loop is not None
        times = [t for r in self._relays.values() if (t := r.client.get_timer()) is not None]
        times += [r.retry_at for r in self._relays.values() if r.retry_at is not None]
        at = min(times) if times else None
        if at == self._timer_at and self._timer is not None:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = at
        if at is not None:
            self._timer = self._loop.call_later(max(0.0, at - self._clock()), self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        if self._closed:
            return
        now = self._clock()
        for relay in self._relays.values():
            if relay.retry_at is not None and now >= relay.retry_at:
                log.info("%s: allocating again (attempt %d)", relay.label, relay.attempts + 1)
                relay.client = self._new_client(relay.config)
                self._start(relay)
            at = relay.client.get_timer()
            if at is not None and at <= now:
                relay.client.handle_timer(now)
        self._pump()


def _fmt(addr: Addr | None) -> str:
    return "?" if addr is None else format_addr(addr)
