"""WebRtcTransport: one ICE + DTLS + SRTP association with a peer, on the WebRtcServer's sockets.

This is the thin asyncio adapter around two sans-IO cores (:class:`sfu.ice.agent.IceAgent` and
:class:`sfu.dtls.session.DtlsSession`): it feeds them the datagrams the engine hands over, sends
what they return, drains their events, and keeps ONE timer armed at the earliest deadline of
either core. Media never passes through here: once DTLS completes, the keys go to the engine.

Candidate withholding (the container-NAT race): with ``early_checks`` on, the transport does not
reveal its candidates (not in the SDP, not trickled) until its first connectivity check toward a
usable remote candidate has left, or until ``withhold_timeout`` passes without a usable remote
candidate. See docs/containers.md.

Relay candidates (TURN) need nothing special here: their ``socket_key`` is a
:class:`~sfu.webrtc.turn.RelayKey`, and the host sends for them through its TURN client.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Protocol

from sfu.dtls.certificate import Certificate, Fingerprint
from sfu.dtls.events import DtlsClosed, DtlsFailed, HandshakeCompleted
from sfu.dtls.session import DtlsRole, DtlsSession
from sfu.engine.base import Addr, ControlKind, ControlPacket, Engine, SrtpParameters, SrtpProfile
from sfu.ice.agent import IceAgent, IceConfig, IceRole, IceState
from sfu.ice.candidate import Candidate, is_mdns_name
from sfu.ice.events import (
    ConsentExpired,
    FirstCheckSent,
    IceStateChanged,
    RemoteCandidateDiscovered,
    SelectedPairChanged,
)
from sfu.webrtc.turn import RelayKey, SocketKey

log = logging.getLogger(__name__)


_REJECTED_PREFIXES = (
    "unauthorized",
    "bad requests",
    "requests without fingerprint",
    "malformed stun",
    "not stun",
    "responses failing integrity",
)


class TransportState(enum.Enum):
    NEW = "new"
    CONNECTING = "connecting"
    CONNECTED = "connected"  # ICE and DTLS up, keys in the engine
    FAILED = "failed"
    CLOSED = "closed"


@dataclass(frozen=True)
class TransportConfig:
    early_checks: bool = True
    withhold_timeout: float = 0.5
    ice: IceConfig = field(default_factory=IceConfig)
    dtls_timeout: float = 10.0


# Events the transport reports to its owner (the application handle).
@dataclass(frozen=True)
class LocalCandidate:
    candidate: Candidate | None  # None = end-of-candidates


@dataclass(frozen=True)
class IceStateEvent:
    state: IceState
    reason: str | None


@dataclass(frozen=True)
class TransportConnected:
    pass


@dataclass(frozen=True)
class TransportClosed:
    reason: str


@dataclass(frozen=True)
class RtcpReceived:
    data: bytes


TransportEvent = (
    LocalCandidate | IceStateEvent | TransportConnected | TransportClosed | RtcpReceived
)


class TransportHost(Protocol):
    """What a transport needs from the WebRtcServer (kept small on purpose)."""

    engine: Engine

    @property
    def withhold_candidates(self) -> bool:
        """Whether candidates must wait for the first check (False when no NAT race can happen)."""
        ...

    def bind_address(
        self, transport: WebRtcTransport, socket_key: SocketKey, addr: Addr
    ) -> None: ...

    def send_datagram(
        self, transport: WebRtcTransport, socket_key: SocketKey, addr: Addr, data: bytes
    ) -> None: ...

    def set_media_destination(
        self, transport: WebRtcTransport, socket_key: SocketKey, addr: Addr
    ) -> None: ...

    def unregister(self, transport: WebRtcTransport) -> None: ...

    def local_candidates(self, transport_id: int = 0) -> list[tuple[Candidate, SocketKey]]: ...


class WebRtcTransport:
    def __init__(
        self,
        transport_id: int,
        host: TransportHost,
        certificate: Certificate,
        config: TransportConfig,
        on_event: Callable[[TransportEvent], None],
        *,
        ice_role: IceRole,
        loop: asyncio.AbstractEventLoop | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.id = transport_id
        self._host = host
        self._engine = host.engine
        self._certificate = certificate
        self._config = config
        self._on_event = on_event
        self._loop = loop or asyncio.get_running_loop()
        self._clock = clock
        self.ice = IceAgent(ice_role, config=config.ice)
        self.dtls: DtlsSession | None = None
        self.state = TransportState.NEW
        self.closed_reason: str | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._local: list[Candidate] = []
        # withhold only where the race can happen: early checks on and a NAT in front of us
        # with no announced (published) mapping; early checks themselves are sent either way
        self._released = not (config.early_checks and host.withhold_candidates)
        self._revealed: list[Candidate] = []
        self._withhold_deadline: float | None = None
        self._remote_fingerprints: list[Fingerprint] = []
        self._dtls_role: DtlsRole | None = None
        self._dtls_peer: tuple[SocketKey, Addr] | None = None
        self._started = False
        self.created_at = clock()
        self.connected_at: float | None = None
        self.srtp_profile: SrtpProfile | None = None
        for cand, socket_key in host.local_candidates(transport_id):
            self.ice.add_local_candidate(cand, socket_key)
            self._local.append(cand)

    # -- what the owner calls ---------------------------------------------------------------------

    @property
    def ice_ufrag(self) -> str:
        return self.ice.local_ufrag

    @property
    def ice_pwd(self) -> str:
        return self.ice.local_pwd

    @property
    def fingerprints(self) -> list[Fingerprint]:
        return self._certificate.fingerprints()

    def revealed_candidates(self) -> list[Candidate]:
        """Local candidates the peer may know now (empty while withheld)."""
        return list(self._revealed)

    @property
    def candidates_complete(self) -> bool:
        return self._released

    def set_remote(self, ufrag: str, pwd: str, fingerprints: list[Fingerprint], setup: str) -> None:
        """Apply the peer's ICE credentials and DTLS parameters, then start checks."""
        self._remote_fingerprints = list(fingerprints)
        if setup == "active":
            self._dtls_role = DtlsRole.SERVER
        elif setup == "passive":
            self._dtls_role = DtlsRole.CLIENT
        else:  # actpass: we are answering and choose active
            self._dtls_role = DtlsRole.CLIENT
        now = self._clock()
        self.ice.set_remote_credentials(ufrag, pwd, now)
        if not self._started:
            self._started = True
            self.state = TransportState.CONNECTING
            self.ice.start(now)
            self._withhold_deadline = now + self._config.withhold_timeout
        self._pump()

    @property
    def local_setup(self) -> str:
        """a=setup for our side of the SDP."""
        if self._dtls_role is None:
            return "actpass"
        return "active" if self._dtls_role is DtlsRole.CLIENT else "passive"

    def reveal_if_not_withholding(self) -> None:
        """With early checks off, announce every local candidate now (e.g. into an offer)."""
        if self._released and not self._revealed:
            self._release("early checks off")

    def add_remote_candidate(self, candidate: Candidate | None) -> None:
        self.ice.add_remote_candidate(candidate, self._clock())
        if candidate is not None and self._is_usable(candidate):
            # a usable candidate: the first early check toward it releases ours (FirstCheckSent)
            pass
        self._pump()

    def close(self, reason: str = "closed") -> None:
        if self.state is TransportState.CLOSED:
            return
        if self.dtls is not None:
            self.dtls.close()
        self._flush_dtls()
        self.ice.close()
        self.state = TransportState.CLOSED
        self.closed_reason = reason
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._engine.remove_transport(self.id)
        self._host.unregister(self)
        self._on_event(TransportClosed(reason))

    def stats(self) -> dict[str, object]:
        s = self._engine.transport_stats(self.id)
        pair = self.ice.selected_pair
        return {
            "id": self.id,
            "state": self.state.value,
            "ice_state": self.ice.state.value
            if hasattr(self.ice.state, "value")
            else str(self.ice.state),
            "ice_role": self.ice.role.name.lower(),
            "dtls_state": self.dtls.state.value if self.dtls is not None else "new",
            "dtls_role": self._dtls_role.value if self._dtls_role is not None else None,
            "srtp_profile": self.srtp_profile.name if self.srtp_profile else None,
            "selected_pair": _pair_json(pair),
            "ice": self.ice.stats(),
            "diagnosis": self.ice.diagnose() if self.ice.state is IceState.FAILED else None,
            "connected_after": (self.connected_at - self.created_at) if self.connected_at else None,
            "media": _transport_stats_json(s),
        }

    def ice_rejected(self) -> int:
        """STUN this transport's agent refused (bad integrity, username, fingerprint, malformed)."""
        counters = self.ice.stats().get("counters", {})
        assert isinstance(counters, dict)
        return sum(n for k, n in counters.items() if k.startswith(_REJECTED_PREFIXES))

    # -- engine input -----------------------------------------------------------------------------

    def handle_control(self, packet: ControlPacket) -> None:
        if self.state is TransportState.CLOSED:
            return
        now = self._clock()
        if packet.kind is ControlKind.STUN:
            key = _socket_key(packet)
            if self.ice.receive(packet.data, key, packet.addr, now):
                self._host.bind_address(self, key, packet.addr)
        elif packet.kind is ControlKind.DTLS:
            self._dtls_peer = self._dtls_peer or (_socket_key(packet), packet.addr)
            dtls = self._ensure_dtls(now)
            if dtls is not None:
                dtls.receive(packet.data, now)
        elif packet.kind is ControlKind.RTCP:
            self._on_event(RtcpReceived(packet.data))
            return
        self._pump()

    def send_rtcp(self, data: bytes) -> None:
        self._engine.send_rtcp(self.id, data)

    # -- internals -------------------------------------------------------------------------------

    def _is_usable(self, c: Candidate) -> bool:
        return c.transport.lower() == "udp" and not is_mdns_name(c.host)

    def _ensure_dtls(self, now: float) -> DtlsSession | None:
        if self.dtls is None and self._dtls_role is not None:
            self.dtls = DtlsSession(self._certificate, self._dtls_role, self._remote_fingerprints)
            self.dtls.start(now)
        return self.dtls

    def _release(self, why: str) -> None:
        if self._released and self._revealed:
            return
        self._released = True
        log.debug("transport %d: releasing %d candidates (%s)", self.id, len(self._local), why)
        for cand in self._local:
            self._revealed.append(cand)
            self._on_event(LocalCandidate(cand))
        self._on_event(LocalCandidate(None))

    def _pump(self) -> None:
        """Drain both cores: send datagrams, handle events, re-arm the timer."""
        if self.state is TransportState.CLOSED:
            return
        now = self._clock()
        for socket_key, addr, data in self.ice.datagrams_to_send(now):
            self._host.send_datagram(self, socket_key, addr, data)  # type: ignore[arg-type]
        while (ev := self.ice.next_event()) is not None:
            self._on_ice_event(ev, now)
        if self.state is TransportState.CLOSED:
            return
        if not self._released:
            if self._withhold_deadline is not None and now >= self._withhold_deadline:
                self._release("no usable remote candidate in time")
        elif not self._revealed:
            self._release("early checks off")
        self._flush_dtls()
        if self.dtls is not None:
            while (dev := self.dtls.next_event()) is not None:
                self._on_dtls_event(dev)
        if self.state is not TransportState.CLOSED:
            self._arm_timer()

    def _flush_dtls(self) -> None:
        if self.dtls is None:
            return
        dest = self._media_destination()
        for data in self.dtls.datagrams_to_send():
            if dest is not None:
                self._host.send_datagram(self, dest[0], dest[1], data)

    def _media_destination(self) -> tuple[SocketKey, Addr] | None:
        pair = self.ice.selected_pair
        if pair is not None:
            return (pair.socket_key, pair.remote.addr)  # type: ignore[return-value]
        return self._dtls_peer

    def _on_ice_event(self, ev: object, now: float) -> None:
        if isinstance(ev, FirstCheckSent):
            if not self._released and self._is_usable(ev.remote):
                self._release(f"first check to {ev.remote.host}:{ev.remote.port} sent")
        elif isinstance(ev, SelectedPairChanged):
            dest = self._media_destination()
            if dest is not None:
                self._host.set_media_destination(self, dest[0], dest[1])
                self._host.bind_address(self, dest[0], dest[1])
            if self._dtls_role is DtlsRole.CLIENT:
                self._ensure_dtls(now)
        elif isinstance(ev, IceStateChanged):
            self._on_event(IceStateEvent(ev.state, ev.reason))
            if ev.state is IceState.FAILED:
                reason = ev.reason or self.ice.diagnose()
                self.state = TransportState.FAILED
                log.info("transport %d: ICE failed: %s", self.id, reason)
                self.close(f"ICE failed: {reason}")
        elif isinstance(ev, ConsentExpired):
            self.close(f"consent expired: {ev.reason}")
        elif isinstance(ev, RemoteCandidateDiscovered):
            pass

    def _on_dtls_event(self, ev: object) -> None:
        if isinstance(ev, HandshakeCompleted):
            keys = ev.keys
            profile = keys.profile
            self.srtp_profile = profile
            self._engine.set_srtp(
                self.id,
                SrtpParameters(
                    profile, keys.local_key, keys.local_salt, keys.remote_key, keys.remote_salt
                ),
            )
            self.state = TransportState.CONNECTED
            self.connected_at = self._clock()
            self._on_event(TransportConnected())
        elif isinstance(ev, DtlsFailed):
            self.state = TransportState.FAILED
            self.close(f"DTLS failed: {ev.reason}")
        elif isinstance(ev, DtlsClosed):
            self.close("DTLS closed by the peer")

    def _arm_timer(self) -> None:
        deadlines = [
            t
            for t in (self.ice.get_timer(), self.dtls.get_timer() if self.dtls else None)
            if t is not None
        ]
        if not self._released and self._withhold_deadline is not None:
            deadlines.append(self._withhold_deadline)
        at = min(deadlines) if deadlines else None
        if at == self._timer_at and self._timer is not None:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = at
        if at is not None:
            delay = max(0.0, at - self._clock())
            self._timer = self._loop.call_later(delay, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        if self.state is TransportState.CLOSED:
            return
        now = self._clock()
        ice_at = self.ice.get_timer()
        if ice_at is not None and ice_at <= now:
            self.ice.handle_timer(now)
        if self.dtls is not None:
            dtls_at = self.dtls.get_timer()
            if dtls_at is not None and dtls_at <= now:
                self.dtls.handle_timer(now)
        self._pump()


def _pair_json(pair: object) -> dict[str, object] | None:
    if pair is None:
        return None
    local = getattr(pair, "local", None)
    remote = getattr(pair, "remote", None)
    return {
        "local": _cand_json(local),
        "remote": _cand_json(remote),
        "nominated": getattr(pair, "nominated", None),
        "rtt": getattr(pair, "rtt", None),
    }


def _cand_json(c: Candidate | None) -> dict[str, object] | None:
    if c is None:
        return None
    return {"type": c.type.value, "address": c.host, "port": c.port, "protocol": c.transport}


def _transport_stats_json(s: object) -> dict[str, object] | None:
    if s is None:
        return None
    return asdict(s)  # type: ignore[call-overload]


def _socket_key(packet: ControlPacket) -> SocketKey:
    """The ICE socket key a datagram arrived on: the socket, or the relay it came through."""
    if packet.relay is not None:
        return RelayKey(packet.socket_id, packet.relay)
    return packet.socket_id
