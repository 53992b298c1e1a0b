"""A sans-IO full ICE agent (RFC 8445) with trickle (RFC 8838) and consent freshness (RFC 7675).

The agent never touches a socket or a clock: the caller feeds datagrams with ``receive`` and
time with ``handle_timer``, sends what ``datagrams_to_send`` returns and reads ``next_event``.
Each local candidate is tied to an opaque ``socket_key`` naming the socket (or TURN relay)
that sends for it, so many agents can share one UDP socket.

Deliberate choices beyond the RFC text:
- triggered checks leave at once (not queued behind Ta), also on In-Progress pairs;
- with ``early_checks`` a new pair is checked as soon as it forms, before any pacing;
- one data component (rtcp-mux, bundle): candidates of other components are ignored.
"""

from __future__ import annotations

import ipaddress
import random
import re
import secrets
import string
from collections import Counter, deque
from collections.abc import Hashable
from dataclasses import dataclass, replace
from enum import Enum

from .candidate import (
    Candidate,
    CandidateType,
    candidate_foundation,
    candidate_priority,
    canonical_host,
    format_addr,
    is_ip_address,
    is_mdns_name,
)
from .checklist import CandidatePair, PairState, explain_pairs, pair_priority
from .events import (
    ConsentExpired,
    FirstCheckSent,
    IceEvent,
    IceStateChanged,
    RemoteCandidateDiscovered,
    SelectedPairChanged,
)
from .stun import (
    Class,
    Message,
    Method,
    binding_error,
    binding_request,
    binding_success,
    has_fingerprint,
    is_stun,
    parse_stun,
)

__all__ = ["CandidatePair", "IceAgent", "IceConfig", "IceRole", "IceState", "PairState"]

Addr = tuple[str, int]
Datagram = tuple[Hashable, Addr, bytes]

_ICE_CHAR = re.compile(r"^[A-Za-z0-9+/]+$")
_ALPHABET = string.ascii_letters + string.digits


class IceRole(Enum):
    """Who nominates (RFC 8445 section 6.1.1)."""

    CONTROLLING = "controlling"
    CONTROLLED = "controlled"


class IceState(Enum):
    """Agent states, named like the W3C RTCIceTransportState."""

    NEW = "new"
    CHECKING = "checking"
    CONNECTED = "connected"
    COMPLETED = "completed"
    FAILED = "failed"
    DISCONNECTED = "disconnected"
    CLOSED = "closed"


@dataclass
class IceConfig:
    """Timers and policies; all times in seconds."""

    ta: float = 0.020
    rto_initial: float = 0.1
    rto_max: float = 1.6
    max_retransmissions: int = 6
    failure_timeout: float = 10.0
    consent_interval: float = 5.0
    consent_timeout: float = 30.0
    disconnected_timeout: float = 5.0
    early_checks: bool = True
    aggressive_nomination: bool = True
    max_remote_candidates: int = 100


class _TxKind(Enum):
    CHECK = "check"
    CONSENT = "consent"


@dataclass(eq=False)
class _Transaction:
    """One outstanding Binding request of ours."""

    txid: bytes
    pair: CandidatePair
    data: bytes
    kind: _TxKind
    use_candidate: bool
    controlling: bool
    first_sent: float
    last_sent: float
    rto: float
    deadline: float
    retransmissions: int = 0
    cancelled: bool = False


@dataclass(eq=False)
class _Local:
    candidate: Candidate
    socket_key: Hashable
    base: Addr
    version: int


@dataclass(frozen=True)
class _Outgoing:
    socket_key: Hashable
    addr: Addr
    data: bytes
    check_to: Candidate | None = None


@dataclass(frozen=True)
class _OrphanCheck:
    socket_key: Hashable
    addr: Addr
    priority: int
    use_candidate: bool
    txid: bytes
    ufrag: str


def _random_ice_string(length: int) -> str:
    return "".join(secrets.choice(_ALPHABET) for _ in range(length))


def _ip_version(host: str) -> int:
    return ipaddress.ip_address(host).version


class IceAgent:
    """One ICE session (one data stream, component 1). See the module docstring."""

    def __init__(
        self,
        role: IceRole,
        local_ufrag: str | None = None,
        local_pwd: str | None = None,
        tie_breaker: int | None = None,
        config: IceConfig | None = None,
        rng: random.Random | None = None,
    ) -> None:
        if local_ufrag is not None and not (
            4 <= len(local_ufrag) <= 256 and _ICE_CHAR.match(local_ufrag)
        ):
            raise ValueError("local ufrag must be 4-256 ice-chars")
        if local_pwd is not None and not (
            22 <= len(local_pwd) <= 256 and _ICE_CHAR.match(local_pwd)
        ):
            raise ValueError("local pwd must be 22-256 ice-chars")
        if tie_breaker is not None and not 0 <= tie_breaker < 2**64:
            raise ValueError("tie-breaker must fit in 64 bits")
        self.role = role
        self.local_ufrag = local_ufrag or _random_ice_string(8)
        self.local_pwd = local_pwd or _random_ice_string(24)
        self.tie_breaker = secrets.randbits(64) if tie_breaker is None else tie_breaker
        self.config = config or IceConfig()
        self._rng = rng or random.Random()
        self._key = self.local_pwd.encode()

        self.remote_ufrag: str | None = None
        self.remote_pwd: str | None = None
        self.state = IceState.NEW
        self.selected_pair: CandidatePair | None = None
        self.failure_reason: str | None = None

        self._locals: list[_Local] = []
        self._remotes: dict[Addr, Candidate] = {}
        self._pairs: list[CandidatePair] = []
        self._pair_index: dict[tuple[Hashable, Addr, Addr], CandidatePair] = {}
        self._transactions: dict[bytes, _Transaction] = {}
        self._outbox: list[_Outgoing] = []
        self._events: deque[IceEvent] = deque()
        self._orphans: deque[_OrphanCheck] = deque(maxlen=16)
        self._first_check_sent: set[Addr] = set()
        self._counters: Counter[str] = Counter()
        self._ignored: Counter[str] = Counter()

        self._now = 0.0
        self._started = False
        self._active = False  # started and remote credentials known: checks may leave
        self._end_of_candidates = False
        self._next_paced = 0.0
        self._failure_deadline: float | None = None
        self._nominating = False
        self._consent_next: float | None = None
        self._consent_last: float = 0.0
        self._consent_unanswered_since: float | None = None
        self._state_before_disconnect = IceState.CONNECTED

    # ------------------------------------------------------------------ public API

    def add_local_candidate(
        self, candidate: Candidate, socket_key: Hashable, now: float | None = None
    ) -> None:
        """Add a UDP component-1 candidate that ``socket_key`` sends for (trickle allowed)."""
        now = self._clock(now)
        if candidate.transport != "udp" or candidate.component != 1:
            raise ValueError("only UDP candidates of component 1 can be local candidates")
        if not is_ip_address(candidate.host):
            raise ValueError(f"local candidate address {candidate.host!r} is not an IP literal")
        if self.state in (IceState.CLOSED, IceState.FAILED):
            return
        candidate = replace(candidate, host=canonical_host(candidate.host))
        base = candidate.addr
        if candidate.type == CandidateType.SRFLX:
            if candidate.related_address and candidate.related_port:
                base = (canonical_host(candidate.related_address), candidate.related_port)
            else:
                hosts = [
                    x
                    for x in self._locals
                    if x.socket_key == socket_key and x.candidate.type == CandidateType.HOST
                ]
                if hosts:
                    base = hosts[0].base
        for other in self._locals:
            if other.socket_key == socket_key and other.candidate.addr == candidate.addr:
                return
        local = _Local(candidate, socket_key, base, _ip_version(candidate.host))
        self._locals.append(local)
        new_pairs = [p for r in self._remotes.values() if (p := self._form_pair(local, r))]
        self._after_new_pairs(new_pairs, now)
        orphans = [o for o in self._orphans if o.socket_key == socket_key]
        for orphan in orphans:
            self._orphans.remove(orphan)
            self._on_check(orphan, now)

    def set_remote_credentials(self, ufrag: str, pwd: str, now: float | None = None) -> None:
        """Set the peer's ice-ufrag/ice-pwd; may come after its candidates or checks."""
        now = self._clock(now)
        if not ufrag or not pwd:
            raise ValueError("remote ufrag and pwd must not be empty")
        if self.remote_ufrag is not None and (ufrag, pwd) != (self.remote_ufrag, self.remote_pwd):
            raise ValueError("remote credentials changed: an ICE restart needs a new agent")
        self.remote_ufrag, self.remote_pwd = ufrag, pwd
        self._maybe_activate(now)

    def add_remote_candidate(self, candidate: Candidate | None, now: float) -> None:
        """Add a trickled remote candidate; None means end-of-candidates."""
        now = self._clock(now)
        if self.state in (IceState.CLOSED, IceState.FAILED):
            return
        if candidate is None:
            self._end_of_candidates = True
            self._check_failed(now)
            self._check_completed()
            return
        reason = self._unusable(candidate)
        if reason is not None:
            self._ignored[reason] += 1
            return
        candidate = replace(candidate, host=canonical_host(candidate.host))
        known = self._remotes.get(candidate.addr)
        if known is not None:
            if known.type == CandidateType.PRFLX and candidate.type != CandidateType.PRFLX:
                self._upgrade_prflx(known, candidate)
            else:
                self._ignored["duplicate"] += 1
            return
        if len(self._remotes) >= self.config.max_remote_candidates:
            self._ignored["over limit"] += 1
            return
        self._remotes[candidate.addr] = candidate
        new_pairs = [p for x in self._locals if (p := self._form_pair(x, candidate))]
        self._after_new_pairs(new_pairs, now)

    def start(self, now: float) -> None:
        """Begin ICE processing; checks leave once remote credentials are known."""
        now = self._clock(now)
        if self._started or self.state != IceState.NEW:
            return
        self._started = True
        self._set_state(IceState.CHECKING)
        self._maybe_activate(now)

    def receive(self, data: bytes, socket_key: Hashable, addr: tuple[str, int], now: float) -> bool:
        """Handle one datagram from ``addr`` on ``socket_key``; True if it was our STUN."""
        now = self._clock(now)
        if self.state in (IceState.CLOSED, IceState.FAILED):
            self._counters["dropped after close/failure"] += 1
            return False
        if not is_stun(data):
            self._counters["not stun"] += 1
            return False
        msg = parse_stun(data)
        if msg is None:
            self._counters["malformed stun"] += 1
            return False
        if msg.message_method != Method.BINDING:
            self._counters["not binding"] += 1
            return False
        try:
            src = (str(ipaddress.ip_address(addr[0])), int(addr[1]))
        except (TypeError, ValueError, IndexError):
            self._counters["bad source address"] += 1
            return False
        if msg.message_class == Class.REQUEST:
            return self._on_request(msg, data, socket_key, src, now)
        if msg.message_class == Class.INDICATION:
            self._counters["indications"] += 1
            return True
        return self._on_response(msg, socket_key, src, now)

    def datagrams_to_send(self, now: float) -> list[tuple[Hashable, tuple[str, int], bytes]]:
        """Everything to send now, as ``(socket_key, addr, data)``; emits FirstCheckSent."""
        self._clock(now)
        out: list[Datagram] = []
        for item in self._outbox:
            out.append((item.socket_key, item.addr, item.data))
            if item.check_to is not None and item.check_to.addr not in self._first_check_sent:
                self._first_check_sent.add(item.check_to.addr)
                self._events.append(FirstCheckSent(item.check_to))
        self._outbox.clear()
        return out

    def get_timer(self) -> float | None:
        """The earliest time ``handle_timer`` must run, or None."""
        if self.state in (IceState.CLOSED, IceState.FAILED, IceState.NEW):
            return None
        times = [tx.deadline for tx in self._transactions.values()]
        if self._active and self._next_pace_candidate() is not None:
            times.append(self._next_paced)
        if self._failure_deadline is not None and self.selected_pair is None:
            times.append(self._failure_deadline)
        if self.selected_pair is not None:
            if self._consent_next is not None:
                times.append(self._consent_next)
            times.append(self._consent_last + self.config.consent_timeout)
            if self._consent_unanswered_since is not None and self.state != IceState.DISCONNECTED:
                times.append(self._consent_unanswered_since + self.config.disconnected_timeout)
        return min(times) if times else None

    def handle_timer(self, now: float) -> None:
        """Retransmit, time out, pace checks, run consent and failure timers due by ``now``."""
        now = self._clock(now)
        if self.state in (IceState.CLOSED, IceState.FAILED, IceState.NEW):
            return
        self._run_transactions(now)
        if self._active and now >= self._next_paced:
            pair = self._next_pace_candidate()
            if pair is not None:
                if pair.state == PairState.FROZEN:
                    pair.state = PairState.WAITING
                self._send_check(pair, now)
                self._next_paced = now + self.config.ta
        if self.selected_pair is not None:
            self._run_consent(now)
        elif self._failure_deadline is not None and now >= self._failure_deadline:
            self._fail(
                f"no valid pair after {self.config.failure_timeout:g} s: {self._explain()}", now
            )
        self._check_failed(now)
        self._check_completed()

    def next_event(self) -> IceEvent | None:
        """Pop the oldest pending event."""
        return self._events.popleft() if self._events else None

    def close(self) -> None:
        """Stop everything; the agent answers nothing from now on."""
        if self.state == IceState.CLOSED:
            return
        self._transactions.clear()
        self._outbox.clear()
        self._set_state(IceState.CLOSED, self.failure_reason)

    @property
    def remote_candidates(self) -> list[Candidate]:
        """Remote candidates, signalled and peer-reflexive."""
        return list(self._remotes.values())

    @property
    def local_candidates(self) -> list[Candidate]:
        """Local candidates as added."""
        return [x.candidate for x in self._locals]

    @property
    def pairs(self) -> list[CandidatePair]:
        """The check list, highest priority first."""
        return list(self._pairs)

    def stats(self) -> dict[str, object]:
        """Forensics: per-pair counters and agent counters (for logs and an admin API)."""
        return {
            "role": self.role.value,
            "state": self.state.value,
            "local_ufrag": self.local_ufrag,
            "remote_ufrag": self.remote_ufrag,
            "selected_pair": None if self.selected_pair is None else str(self.selected_pair),
            "end_of_candidates": self._end_of_candidates,
            "failure_reason": self.failure_reason,
            "local_candidates": [str(x.candidate) for x in self._locals],
            "remote_candidates": [str(c) for c in self._remotes.values()],
            "ignored_remote_candidates": dict(self._ignored),
            "counters": dict(self._counters),
            "pairs": [p.to_dict() for p in self._pairs],
        }

    def diagnose(self) -> str:
        """One line saying where ICE stands and, when stuck, the likeliest reason."""
        if self.state == IceState.FAILED:
            return f"failed: {self.failure_reason}"
        if self.state == IceState.CLOSED:
            return "closed" + (
                f" after failure: {self.failure_reason}" if self.failure_reason else ""
            )
        pair = self.selected_pair
        if pair is not None:
            text = f"{self.state.value} via {pair}"
            if pair.rtt is not None:
                text += f", rtt {pair.rtt * 1000:.0f} ms"
            mapped = pair.mapped_address
            if mapped is not None and mapped not in {x.candidate.addr for x in self._locals}:
                text += f"; the peer sees us at {format_addr(mapped)} (a NAT in front of us)"
            if self.state == IceState.DISCONNECTED:
                text += "; consent responses stopped"
            return text
        return self._explain()

    # ------------------------------------------------------------------ pairing

    def _clock(self, now: float | None) -> float:
        if now is not None and now > self._now:
            self._now = now
        return self._now if now is None else now

    def _unusable(self, candidate: Candidate) -> str | None:
        if candidate.transport != "udp":
            return candidate.transport
        if candidate.component != 1:
            return "other component"
        if is_mdns_name(candidate.host):
            return "mdns"
        if not is_ip_address(candidate.host):
            return "unresolved name"
        if candidate.port == 0:
            return "port 0"
        if (
            candidate.ufrag is not None
            and self.remote_ufrag is not None
            and candidate.ufrag != self.remote_ufrag
        ):
            return "other ufrag"
        return None

    def _priority_of(self, local: Candidate, remote: Candidate) -> int:
        if self.role == IceRole.CONTROLLING:
            return pair_priority(local.priority, remote.priority)
        return pair_priority(remote.priority, local.priority)

    def _form_pair(self, local: _Local, remote: Candidate) -> CandidatePair | None:
        """Pair two candidates, pruning redundant pairs (same base and remote, RFC 6.1.2.4)."""
        if local.version != _ip_version(remote.host):
            return None
        key = (local.socket_key, local.base, remote.addr)
        existing = self._pair_index.get(key)
        prio = self._priority_of(local.candidate, remote)
        if existing is not None:
            if prio > existing.priority:
                existing.local = local.candidate
                existing.priority = prio
                self._sort()
            return None
        busy = any(
            p.state in (PairState.WAITING, PairState.IN_PROGRESS, PairState.FROZEN)
            for p in self._pairs
            if p.foundation == f"{local.candidate.foundation}:{remote.foundation}"
        )
        pair = CandidatePair(
            local=local.candidate,
            remote=remote,
            socket_key=local.socket_key,
            base=local.base,
            priority=prio,
            state=PairState.FROZEN if busy else PairState.WAITING,
        )
        self._pair_index[key] = pair
        self._pairs.append(pair)
        self._sort()
        return pair

    def _sort(self) -> None:
        self._pairs.sort(key=lambda p: p.priority, reverse=True)

    def _after_new_pairs(self, pairs: list[CandidatePair], now: float) -> None:
        if not pairs or not self._active:
            return
        if self.config.early_checks:
            for pair in pairs:
                self._send_check(pair, now)
        else:
            self._next_paced = max(self._next_paced, now)

    def _checks_in_flight(self) -> bool:
        return any(tx.kind == _TxKind.CHECK for tx in self._transactions.values())

    def _upgrade_prflx(self, known: Candidate, signalled: Candidate) -> None:
        """A learned peer-reflexive candidate was signalled: keep its pairs (RFC 8838 sec. 11)."""
        self._remotes[known.addr] = signalled
        for pair in self._pairs:
            if pair.remote is known:
                pair.remote = signalled
                pair.priority = self._priority_of(pair.local, signalled)
        self._sort()

    def _switch_role(self, role: IceRole) -> None:
        if role == self.role:
            return
        self._counters["role switches"] += 1
        self.role = role
        for pair in self._pairs:
            pair.priority = self._priority_of(pair.local, pair.remote)
            if self.selected_pair is None and not pair.remote_nominated:
                pair.nominated = False
        self._nominating = False
        self._sort()

    def _maybe_activate(self, now: float) -> None:
        if self._active or not self._started or self.remote_pwd is None:
            return
        if self.state != IceState.CHECKING:
            return
        self._active = True
        self._failure_deadline = now + self.config.failure_timeout
        self._next_paced = now
        # Checks that arrived before we could send: trigger their checks first (RFC 8838).
        for pair in list(self._pairs):
            if pair.pending_trigger:
                pair.pending_trigger = False
                if pair.pending_ufrag == self.remote_ufrag and pair.state != PairState.SUCCEEDED:
                    self._send_check(pair, now)
        if self.config.early_checks:
            for pair in list(self._pairs):
                if pair.state in (PairState.WAITING, PairState.FROZEN):
                    self._send_check(pair, now)
        self._check_failed(now)

    def _next_pace_candidate(self) -> CandidatePair | None:
        floor = -1 if self.selected_pair is None else self.selected_pair.priority
        frozen: CandidatePair | None = None
        for pair in self._pairs:
            if pair.priority <= floor:
                break
            if pair.state == PairState.WAITING:
                return pair
            if pair.state == PairState.FROZEN and frozen is None:
                frozen = pair
        return frozen

    # ------------------------------------------------------------------ sending checks

    def _send_check(
        self,
        pair: CandidatePair,
        now: float,
        kind: _TxKind = _TxKind.CHECK,
        nominate: bool = False,
    ) -> None:
        assert self.remote_ufrag is not None and self.remote_pwd is not None
        controlling = self.role == IceRole.CONTROLLING
        use_candidate = (
            controlling
            and kind == _TxKind.CHECK
            and (self.config.aggressive_nomination or nominate)
        )
        if kind == _TxKind.CHECK:
            self._cancel_checks(pair)
            pair.state = PairState.IN_PROGRESS
            pair.checks_sent += 1
            if pair.first_check_at is None:
                pair.first_check_at = now
        local_pref = (pair.local.priority >> 8) & 0xFFFF
        request = binding_request(
            username=f"{self.remote_ufrag}:{self.local_ufrag}",
            key=self.remote_pwd.encode(),
            priority=candidate_priority(CandidateType.PRFLX, local_pref, 1),
            controlling=controlling,
            tie_breaker=self.tie_breaker,
            use_candidate=use_candidate,
        )
        rto = self.config.rto_initial
        self._transactions[request.transaction_id] = _Transaction(
            txid=request.transaction_id,
            pair=pair,
            data=request.data,
            kind=kind,
            use_candidate=use_candidate,
            controlling=controlling,
            first_sent=now,
            last_sent=now,
            rto=rto,
            deadline=now + rto,
        )
        self._counters[f"{kind.value}s sent"] += 1
        self._outbox.append(_Outgoing(pair.socket_key, pair.remote_addr, request.data, pair.remote))

    def _cancel_checks(self, pair: CandidatePair) -> None:
        """Stop retransmitting a pair's checks but still accept late answers (RFC 7.3.1.4)."""
        for tx in self._transactions.values():
            if tx.pair is pair and tx.kind == _TxKind.CHECK and not tx.cancelled:
                tx.cancelled = True
                tx.deadline = tx.first_sent + self._transaction_lifetime()

    def _transaction_lifetime(self) -> float:
        cfg = self.config
        return sum(
            min(cfg.rto_initial * 2**k, cfg.rto_max) for k in range(cfg.max_retransmissions + 1)
        )

    def _run_transactions(self, now: float) -> None:
        for tx in [t for t in self._transactions.values() if t.deadline <= now]:
            if not tx.cancelled and tx.retransmissions < self.config.max_retransmissions:
                tx.retransmissions += 1
                tx.pair.retransmissions += 1
                tx.last_sent = now
                tx.rto = min(tx.rto * 2, self.config.rto_max)
                tx.deadline = now + tx.rto
                self._outbox.append(_Outgoing(tx.pair.socket_key, tx.pair.remote_addr, tx.data))
                continue
            del self._transactions[tx.txid]
            if tx.kind != _TxKind.CHECK:
                continue
            if tx.use_candidate and not self.config.aggressive_nomination:
                self._nominating = False  # the nominating check died: allow another
            if not tx.cancelled:
                tx.pair.timeouts += 1
            if tx.pair.state == PairState.IN_PROGRESS and not self._live_checks(tx.pair):
                tx.pair.state = PairState.FAILED
                self._counters["pairs failed (timeout)"] += 1

    def _live_checks(self, pair: CandidatePair) -> bool:
        return any(
            tx.pair is pair and tx.kind == _TxKind.CHECK for tx in self._transactions.values()
        )

    # ------------------------------------------------------------------ incoming requests

    def _reply(self, socket_key: Hashable, addr: Addr, data: bytes) -> None:
        self._outbox.append(_Outgoing(socket_key, addr, data))

    def _on_request(
        self, msg: Message, data: bytes, socket_key: Hashable, src: Addr, now: float
    ) -> bool:
        txid = msg.transaction_id
        attrs = msg.attributes
        if not has_fingerprint(data):
            self._counters["requests without fingerprint"] += 1
            return False
        username = attrs.get("USERNAME")
        if "MESSAGE-INTEGRITY" not in attrs or not isinstance(username, str):
            self._counters["bad requests (400)"] += 1
            self._reply(socket_key, src, binding_error(txid, 400, "Bad Request", None))
            return False
        local_part, colon, remote_part = username.partition(":")
        if (
            not colon
            or local_part != self.local_ufrag
            or (self.remote_ufrag is not None and remote_part != self.remote_ufrag)
        ):
            self._counters["unauthorized requests (401 username)"] += 1
            self._reply(socket_key, src, binding_error(txid, 401, "Unauthenticated", None))
            return False
        if not msg.check_message_integrity(self._key):
            self._counters["unauthorized requests (401 integrity)"] += 1
            self._reply(socket_key, src, binding_error(txid, 401, "Unauthenticated", None))
            return False
        priority = attrs.get("PRIORITY")
        if not isinstance(priority, int):
            self._counters["bad requests (400)"] += 1
            self._reply(socket_key, src, binding_error(txid, 400, "Missing PRIORITY", None))
            return False

        # Role conflicts (RFC 8445 section 7.3.1.1).
        theirs_controlling = attrs.get("ICE-CONTROLLING")
        theirs_controlled = attrs.get("ICE-CONTROLLED")
        if self.role == IceRole.CONTROLLING and theirs_controlling is not None:
            self._counters["role conflicts"] += 1
            if self.tie_breaker >= theirs_controlling:
                self._reply(socket_key, src, binding_error(txid, 487, "Role Conflict", self._key))
                return True
            self._switch_role(IceRole.CONTROLLED)
        elif self.role == IceRole.CONTROLLED and theirs_controlled is not None:
            self._counters["role conflicts"] += 1
            if self.tie_breaker >= theirs_controlled:
                self._switch_role(IceRole.CONTROLLING)
            else:
                self._reply(socket_key, src, binding_error(txid, 487, "Role Conflict", self._key))
                return True

        self._counters["requests answered"] += 1
        self._reply(socket_key, src, binding_success(txid, src, self._key))
        check = _OrphanCheck(
            socket_key=socket_key,
            addr=src,
            priority=priority,
            use_candidate="USE-CANDIDATE" in attrs,
            txid=txid,
            ufrag=remote_part,
        )
        self._on_check(check, now)
        return True

    def _on_check(self, check: _OrphanCheck, now: float) -> None:
        """An authenticated check arrived: learn prflx, trigger a check, note nomination."""
        locals_here = [x for x in self._locals if x.socket_key == check.socket_key]
        if not locals_here:
            self._counters["checks on a socket without local candidate"] += 1
            self._orphans.append(check)
            return
        remote = self._remotes.get(check.addr)
        if remote is None:
            if len(self._remotes) >= self.config.max_remote_candidates:
                self._ignored["over limit"] += 1
                return
            remote = Candidate(
                foundation=candidate_foundation(CandidateType.PRFLX, check.addr[0]),
                component=1,
                transport="udp",
                priority=check.priority,
                host=check.addr[0],
                port=check.addr[1],
                type=CandidateType.PRFLX,
            )
            self._remotes[remote.addr] = remote
            self._counters["peer-reflexive candidates learned"] += 1
            self._events.append(RemoteCandidateDiscovered(remote))
        for local in locals_here:
            self._form_pair(local, remote)
        matching = [
            p for p in self._pairs if p.socket_key == check.socket_key and p.remote is remote
        ]
        if not matching:
            self._counters["checks with no pair (address family)"] += 1
            return
        pair = matching[0]  # sorted: highest priority first
        pair.requests_received += 1
        if pair.first_request_at is None:
            pair.first_request_at = now
        retransmitted = check.txid in pair.recent_txids
        if retransmitted:
            pair.requests_retransmitted += 1
        else:
            pair.recent_txids.append(check.txid)
        if check.use_candidate and self.role == IceRole.CONTROLLED:
            pair.remote_nominated = True
        if not self._active:
            if pair.state != PairState.SUCCEEDED:
                pair.pending_trigger = True
                pair.pending_ufrag = check.ufrag
            return
        if pair.state == PairState.SUCCEEDED:
            if pair.remote_nominated and self.role == IceRole.CONTROLLED:
                pair.nominated = True
                self._select(now)
            return
        if pair.state == PairState.IN_PROGRESS and pair.trigger_txid == check.txid:
            return  # the peer retransmitted: our triggered check is already on its way
        # Triggered check (RFC 8445 section 7.3.1.4), sent at once.
        pair.trigger_txid = check.txid
        self._counters["triggered checks"] += 1
        self._send_check(pair, now)

    # ------------------------------------------------------------------ incoming responses

    def _on_response(self, msg: Message, socket_key: Hashable, src: Addr, now: float) -> bool:
        tx = self._transactions.get(msg.transaction_id)
        if tx is None:
            self._counters["unmatched responses"] += 1
            return False
        pair = tx.pair
        assert self.remote_pwd is not None
        if not msg.check_message_integrity(self.remote_pwd.encode()):
            if msg.message_class == Class.ERROR and msg.error_code is not None:
                pair.errors[msg.error_code] += 1  # unsigned 400/401: keep for forensics
            self._counters["responses failing integrity"] += 1
            return False
        del self._transactions[tx.txid]
        if src != pair.remote_addr or socket_key != pair.socket_key:
            # Not symmetric (RFC 8445 section 7.2.5.2.1): the pair fails, the source is noted.
            pair.unexpected_sources[src] += 1
            self._counters["answers from unexpected address"] += 1
            if tx.kind == _TxKind.CHECK and not self._live_checks(pair):
                if pair.state != PairState.SUCCEEDED:
                    pair.state = PairState.FAILED
                self._check_failed(now)
            return True
        if msg.message_class == Class.ERROR:
            return self._on_error_response(msg, tx, now)
        pair.responses_received += 1
        pair.last_response_from = src
        if tx.retransmissions == 0:
            pair.rtt = now - tx.first_sent
        mapped = msg.attributes.get("XOR-MAPPED-ADDRESS")
        if isinstance(mapped, tuple):
            pair.mapped_address = (canonical_host(mapped[0]), mapped[1])
        if pair is self.selected_pair:
            self._consent_refreshed(now)
        if tx.kind == _TxKind.CONSENT:
            return True
        self._cancel_checks(pair)
        if pair.state != PairState.SUCCEEDED:
            pair.state = PairState.SUCCEEDED
            self._counters["pairs succeeded"] += 1
            for other in self._pairs:  # RFC 8445 section 7.2.5.3.3
                if other.state == PairState.FROZEN and other.foundation == pair.foundation:
                    other.state = PairState.WAITING
        if self.role == IceRole.CONTROLLING and tx.use_candidate and tx.controlling:
            pair.nominated = True
        if self.role == IceRole.CONTROLLED and pair.remote_nominated:
            pair.nominated = True
        if (
            self.role == IceRole.CONTROLLING
            and not self.config.aggressive_nomination
            and not self._nominating
            and not pair.nominated
        ):
            self._nominating = True  # regular nomination: repeat the check with USE-CANDIDATE
            self._send_check(pair, now, nominate=True)
            pair.state = PairState.SUCCEEDED
        self._select(now)
        self._check_completed()
        return True

    def _on_error_response(self, msg: Message, tx: _Transaction, now: float) -> bool:
        pair = tx.pair
        code = msg.error_code or 0
        pair.errors[code] += 1
        if tx.kind == _TxKind.CONSENT:
            return True
        if code == 487:
            # Role conflict (RFC 8445 section 7.2.5.1): take the other role, check again.
            self._counters["role conflicts"] += 1
            if tx.controlling == (self.role == IceRole.CONTROLLING):
                self._switch_role(IceRole.CONTROLLED if tx.controlling else IceRole.CONTROLLING)
            self._send_check(pair, now)
            return True
        if not self._live_checks(pair) and pair.state != PairState.SUCCEEDED:
            pair.state = PairState.FAILED
            self._counters[f"pairs failed ({code})"] += 1
            self._check_failed(now)
        return True

    # ------------------------------------------------------------------ selection, consent

    def _select(self, now: float) -> None:
        best: CandidatePair | None = None
        for pair in self._pairs:
            if pair.state == PairState.SUCCEEDED and pair.nominated:
                best = pair
                break
        if best is None or best is self.selected_pair:
            return
        current = self.selected_pair
        if current is not None and best.priority <= current.priority:
            return
        self.selected_pair = best
        self._events.append(SelectedPairChanged(best))
        if current is None:
            self._consent_last = now
            self._consent_unanswered_since = None
            self._schedule_consent(now)
        if self.state in (IceState.CHECKING, IceState.DISCONNECTED):
            self._set_state(IceState.CONNECTED)

    def _schedule_consent(self, now: float) -> None:
        jitter = 0.8 + 0.4 * self._rng.random()
        self._consent_next = now + self.config.consent_interval * jitter

    def _run_consent(self, now: float) -> None:
        pair = self.selected_pair
        assert pair is not None
        cfg = self.config
        if now >= self._consent_last + cfg.consent_timeout:
            reason = f"consent expired: no response on {pair} for {now - self._consent_last:.1f} s"
            self._events.append(ConsentExpired(reason))
            self._fail(reason, now)
            return
        if (
            self._consent_unanswered_since is not None
            and now >= self._consent_unanswered_since + cfg.disconnected_timeout
            and self.state in (IceState.CONNECTED, IceState.COMPLETED)
        ):
            self._state_before_disconnect = self.state
            self._set_state(
                IceState.DISCONNECTED,
                f"no consent response for {now - self._consent_unanswered_since:.1f} s",
            )
        if self._consent_next is not None and now >= self._consent_next:
            self._send_check(pair, now, kind=_TxKind.CONSENT)
            if self._consent_unanswered_since is None:
                self._consent_unanswered_since = now
            self._schedule_consent(now)

    def _consent_refreshed(self, now: float) -> None:
        self._consent_last = now
        self._consent_unanswered_since = None
        if self.state == IceState.DISCONNECTED:
            self._set_state(self._state_before_disconnect, "consent responses resumed")

    # ------------------------------------------------------------------ state

    def _set_state(self, state: IceState, reason: str | None = None) -> None:
        if state == self.state:
            return
        self.state = state
        self._events.append(IceStateChanged(state, reason))

    def _fail(self, reason: str, now: float) -> None:
        if self.state in (IceState.FAILED, IceState.CLOSED):
            return
        self.failure_reason = reason
        self._transactions.clear()
        self._set_state(IceState.FAILED, reason)

    def _check_failed(self, now: float) -> None:
        if not self._active or self.selected_pair is not None or not self._end_of_candidates:
            return
        if self.state != IceState.CHECKING or not self._pairs:
            return
        if any(p.state != PairState.FAILED for p in self._pairs) or self._transactions:
            return
        self._fail(
            f"all {len(self._pairs)} candidate pairs failed after end-of-candidates: "
            f"{self._explain()}",
            now,
        )

    def _check_completed(self) -> None:
        if self.state != IceState.CONNECTED or not self._end_of_candidates:
            return
        if self._next_pace_candidate() is not None or self._checks_in_flight():
            return
        self._set_state(IceState.COMPLETED)

    def _explain(self) -> str:
        """Why no pair is selected yet, from what was seen on the wire."""
        ignored = ""
        if self._ignored:
            ignored = " (ignored: " + ", ".join(f"{n} {k}" for k, n in self._ignored.items()) + ")"
        if not self._started:
            return "not started"
        if self.remote_pwd is None:
            n = sum(p.requests_received for p in self._pairs)
            return "waiting for remote credentials" + (f" ({n} checks answered)" if n else "")
        if not self._locals:
            return "no local candidates"
        if not self._remotes:
            return "no remote candidates" + ignored
        if not self._pairs:
            return "no candidate pairs (no common address family)" + ignored
        return explain_pairs(self._pairs, self.role == IceRole.CONTROLLED) + ignored
