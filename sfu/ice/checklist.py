"""Candidate pairs and their priority (RFC 8445 sections 6.1.2 and 6.1.2.3)."""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Hashable
from dataclasses import dataclass, field
from enum import Enum

from .candidate import Candidate, format_addr

__all__ = ["CandidatePair", "PairState", "explain_pairs", "pair_priority"]


class PairState(Enum):
    """Candidate pair states of RFC 8445 section 6.1.2.6."""

    FROZEN = "frozen"
    WAITING = "waiting"
    IN_PROGRESS = "in-progress"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


def pair_priority(controlling_prio: int, controlled_prio: int) -> int:
    """RFC 8445 section 6.1.2.3: 2^32*MIN(G,D) + 2*MAX(G,D) + (G>D?1:0)."""
    g, d = controlling_prio, controlled_prio
    return (min(g, d) << 32) + 2 * max(g, d) + (1 if g > d else 0)


@dataclass(eq=False)
class CandidatePair:
    """A local candidate (sent from ``socket_key``) paired with a remote candidate.

    Mutable: the agent updates state and the forensic counters as checks come and go.
    """

    local: Candidate
    remote: Candidate
    socket_key: Hashable
    base: tuple[str, int]
    priority: int
    state: PairState = PairState.FROZEN
    nominated: bool = False
    remote_nominated: bool = False
    checks_sent: int = 0
    retransmissions: int = 0
    responses_received: int = 0
    requests_received: int = 0
    requests_retransmitted: int = 0
    timeouts: int = 0
    rtt: float | None = None
    last_response_from: tuple[str, int] | None = None
    mapped_address: tuple[str, int] | None = None
    first_check_at: float | None = None
    first_request_at: float | None = None
    unexpected_sources: Counter[tuple[str, int]] = field(default_factory=Counter)
    errors: Counter[int] = field(default_factory=Counter)
    # Bookkeeping for triggered checks (not part of the public surface).
    pending_trigger: bool = False
    pending_ufrag: str | None = None
    trigger_txid: bytes | None = None
    recent_txids: deque[bytes] = field(default_factory=lambda: deque(maxlen=8))

    @property
    def foundation(self) -> str:
        """Pair foundation: local and remote foundations joined."""
        return f"{self.local.foundation}:{self.remote.foundation}"

    @property
    def remote_addr(self) -> tuple[str, int]:
        """Where checks and media for this pair are sent."""
        return (self.remote.host, self.remote.port)

    def __str__(self) -> str:
        return f"{self.local} -> {self.remote}"

    def __repr__(self) -> str:
        return f"CandidatePair({self}, {self.state.value}, nominated={self.nominated})"

    def to_dict(self) -> dict[str, object]:
        """Forensic view for ``IceAgent.stats()``."""

        def addr(a: tuple[str, int] | None) -> str | None:
            return None if a is None else format_addr(a)

        return {
            "local": str(self.local),
            "remote": str(self.remote),
            "socket_key": repr(self.socket_key),
            "priority": self.priority,
            "state": self.state.value,
            "nominated": self.nominated,
            "remote_nominated": self.remote_nominated,
            "checks_sent": self.checks_sent,
            "retransmissions": self.retransmissions,
            "responses_received": self.responses_received,
            "requests_received": self.requests_received,
            "requests_retransmitted": self.requests_retransmitted,
            "timeouts": self.timeouts,
            "rtt": self.rtt,
            "last_response_from": addr(self.last_response_from),
            "mapped_address": addr(self.mapped_address),
            "unexpected_sources": {format_addr(a): n for a, n in self.unexpected_sources.items()},
            "errors": dict(self.errors),
        }


def explain_pairs(pairs: list[CandidatePair], controlled: bool) -> str:
    """Why none of ``pairs`` is selected, from what was seen on the wire (for diagnose())."""
    answered = [p for p in pairs if p.responses_received]
    asked = [p for p in pairs if p.requests_received]
    odd = [p for p in pairs if p.unexpected_sources]
    sent = any(p.checks_sent for p in pairs)
    errors: Counter[int] = Counter()
    for p in pairs:
        errors.update(p.errors)
    parts: list[str] = []
    if odd:
        srcs = ", ".join(format_addr(a) for a in odd[0].unexpected_sources)
        parts.append(
            f"answer from unexpected address {srcs} to check sent to "
            f"{format_addr(odd[0].remote_addr)} (the peer's NAT remapped its port?)"
        )
    if asked and not answered:
        srcs = ", ".join(format_addr(p.remote_addr) for p in asked)
        text = f"checks from {srcs} arrived, our answers never acknowledged"
        retransmitted = sum(p.requests_retransmitted for p in asked)
        if retransmitted:
            text += f" (the peer retransmitted {retransmitted} times)"
        if sent and not odd and not errors:
            text += ", and our checks were never answered"
        parts.append(text)
    elif sent and not answered and not odd and not errors:
        targets = {p.remote_addr for p in pairs if p.checks_sent}
        parts.append(f"checks sent to {len(targets)} remote address(es), never answered")
    if errors:
        codes = ", ".join(f"{code} x{n}" for code, n in sorted(errors.items()))
        parts.append(f"the peer answered our checks with errors {codes} (wrong credentials?)")
    if answered and not parts:
        if controlled:
            parts.append(f"{len(answered)} valid pair(s), none nominated by the peer yet")
        else:
            parts.append(f"{len(answered)} valid pair(s), nomination in progress")
    return "; ".join(parts) or "checks not sent yet"
