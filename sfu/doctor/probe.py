"""The NAT probe: a sans-IO sequence of STUN transactions from two sockets (bytes and a clock in,
datagrams out, :class:`Observations` at the end).

Two sockets take part: the MEDIA socket (the server's media port; its NAT mapping is what clients
see) and a FRESH socket that has sent nothing yet (the race probe). With a STUN server at A that
supports RFC 5780 (its answers carry OTHER-ADDRESS B), the probe runs in three phases:

1. DISCOVER: a Binding from MEDIA to every STUN server: the mapped address M, round-trip time,
   OTHER-ADDRESS.
2. UNSOLICITED (in parallel, each waits its full retransmission schedule when nothing comes):

   - CHANGE-REQUEST to A: A answers from an address MEDIA never sent to. It arrives only if
     unsolicited UDP to M reaches the socket (a published port, no NAT, no firewall).
   - RESPONSE-PORT to A, asking for the answer at M's IP and the FRESH socket's port: an
     unsolicited packet toward a port whose first outbound packet has not left yet (exactly what
     a browser's early check does to the container's port).
   - CHANGE-REQUEST + RESPONSE-PORT per announced address on M's IP: an outside packet to the
     announced port; it arrives only if the port is published to this socket.
   - a Binding from MEDIA to each announced address the STUN server cannot reach for us
     (hairpin): it comes back only if the NAT loops it to this socket.

3. MAPPING (after phase 2, so that no outbound packet opens the filter early):

   - Bindings from MEDIA to the other IP and the other port: the same mapping every time is
     endpoint-independent mapping (RFC 4787), otherwise address(-and-port)-dependent;
   - a Binding from FRESH to A: if its public port is no longer its local port, the unsolicited
     packet of phase 2 left a conntrack entry that took the port (the race); if it kept the
     port, the packet was dropped before conntrack kept it (a host firewall).

MEDIA never sends to the address the CHANGE-REQUEST answers come from, and FRESH is a new port each
run, so running the probe again does not see the traces of the previous run. Without RFC 5780 only
phase 1 runs (and hairpins): a second STUN server still tells whether the mapping depends on the
destination.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field

from aioice.stun import Class

from sfu.doctor.stun import CHANGE_IP, CHANGE_PORT, Answer, binding_request, decode_answer
from sfu.doctor.stun import transaction_id as stun_transaction_id
from sfu.engine.base import Addr
from sfu.ice.candidate import format_addr


class Role(enum.Enum):
    """Which socket sends or receives."""

    MEDIA = "media"  # the media port: the mapping clients see
    FRESH = "fresh"  # a port that has sent nothing before the race probe


class Step(enum.Enum):
    """What one transaction is for."""

    BINDING = "binding"  # MEDIA -> each STUN server
    UNSOLICITED = "unsolicited"  # MEDIA -> A, CHANGE-REQUEST: answer from an unknown address
    RACE_SEED = "race-seed"  # MEDIA -> A, RESPONSE-PORT: unsolicited toward FRESH's public port
    ANNOUNCED = "announced"  # MEDIA -> A, CHANGE-REQUEST + RESPONSE-PORT: to the announced port
    HAIRPIN = "hairpin"  # MEDIA -> announced address: does it loop back
    MAPPING = "mapping"  # MEDIA -> the other IP or port of the STUN server
    RACE_CHECK = "race-check"  # FRESH -> A: did FRESH keep its port


class Phase(enum.Enum):
    DISCOVER = 1
    UNSOLICITED = 2
    MAPPING = 3
    DONE = 4


@dataclass(frozen=True)
class AnnouncedSpec:
    """An address the server announces: ``ip``/``port`` None mean "the STUN-mapped one"."""

    rule: str
    ip: str | None = None
    port: int | None = None

    def resolve(self, mapped: Addr | None) -> Addr | None:
        """The address itself, None when it needs a mapped address that STUN did not give."""
        if self.ip is not None and self.port is not None:
            return (self.ip, self.port)
        if mapped is None:
            return None
        return (self.ip or mapped[0], self.port or mapped[1])


@dataclass(frozen=True)
class ProbePlan:
    """What to probe. ``servers`` are resolved STUN servers of the MEDIA socket's family, in
    configuration order; ``avoid`` lists endpoints MEDIA talks to anyway (STUN/TURN servers):
    an answer from one of them proves nothing about unsolicited traffic."""

    media_port: int
    servers: tuple[Addr, ...]
    fresh_port: int | None = None
    announced: tuple[AnnouncedSpec, ...] = ()
    avoid: frozenset[Addr] = frozenset()


@dataclass(frozen=True)
class StepResult:
    """One finished transaction and its evidence."""

    step: Step
    sent_from: Role
    to: Addr
    change: int = 0  # CHANGE-REQUEST flags sent
    target: Addr | None = None  # where the answer (or the hairpin) was asked to arrive
    rule: str | None = None  # the announce rule this step checks
    answered: bool = False
    received_on: Role | None = None
    source: Addr | None = None  # where the answer came from
    mapped: Addr | None = None
    other_address: Addr | None = None
    rtt: float | None = None
    tries: int = 0
    error: str | None = None


@dataclass(frozen=True)
class Observations:
    """Everything the probe saw: the input of :func:`sfu.doctor.facts.derive_facts`."""

    plan: ProbePlan
    primary: Addr | None  # the STUN server the later phases used
    mapped: Addr | None  # MEDIA's mapped address as the primary server saw it
    results: tuple[StepResult, ...]
    stopped: bool = False  # the time bound ended the probe early

    def of(self, step: Step) -> list[StepResult]:
        return [r for r in self.results if r.step is step]

    def first(self, step: Step) -> StepResult | None:
        found = self.of(step)
        return found[0] if found else None


@dataclass(eq=False)
class _Txn:
    step: Step
    role: Role
    to: Addr
    txid: bytes
    data: bytes
    change: int
    target: Addr | None
    rule: str | None
    rto: float
    deadline: float
    first_sent: float
    sent: int = 1


@dataclass
class _State:
    phase: Phase = Phase.DISCOVER
    primary: Addr | None = None
    mapped: Addr | None = None
    other: Addr | None = None
    pending: dict[bytes, _Txn] = field(default_factory=dict)
    outbox: list[tuple[Role, Addr, bytes]] = field(default_factory=list)
    results: list[StepResult] = field(default_factory=list)
    stopped: bool = False


class NatProbe:
    """Runs the plan; feed it datagrams and timer ticks until :attr:`done`."""

    def __init__(
        self,
        plan: ProbePlan,
        now: float,
        *,
        rto: float = 0.1,
        tries: int = 3,
        max_rto: float = 0.5,
    ) -> None:
        if tries < 1 or rto <= 0:
            raise ValueError("tries >= 1 and rto > 0")
        self.plan = plan
        self._rto = rto
        self._max_rto = max_rto
        self._tries = tries
        self._s = _State()
        for server in dict.fromkeys(plan.servers):
            self._start(Step.BINDING, Role.MEDIA, server, now)
        if not self._s.pending:
            self._s.phase = Phase.DONE

    # -- the sans-IO surface ------------------------------------------------------------------

    @property
    def done(self) -> bool:
        return self._s.phase is Phase.DONE

    @property
    def phase(self) -> Phase:
        return self._s.phase

    def datagrams_to_send(self, now: float) -> list[tuple[Role, Addr, bytes]]:
        """(socket role, destination, data) to send now."""
        out, self._s.outbox = self._s.outbox, []
        return out

    def receive(self, role: Role, data: bytes, addr: Addr, now: float) -> bool:
        """Handle a datagram that arrived on ``role``'s socket; True if it was ours."""
        txid = stun_transaction_id(data)
        txn = self._s.pending.get(txid) if txid is not None else None
        if txn is None:
            return False
        answer = decode_answer(data)
        if answer is None:
            return False
        if (answer.kind is Class.REQUEST) != (txn.step is Step.HAIRPIN):
            return False  # only a hairpin expects its own request back
        self._finish(txn, now, answer, role, addr)
        return True

    def get_timer(self) -> float | None:
        return min((t.deadline for t in self._s.pending.values()), default=None)

    def handle_timer(self, now: float) -> None:
        """Retransmit (the RTO doubles) or give up after the last try."""
        for txn in [t for t in self._s.pending.values() if t.deadline <= now]:
            if txn.sent < self._tries:
                txn.sent += 1
                txn.rto *= 2
                txn.deadline = now + txn.rto
                self._s.outbox.append((txn.role, txn.to, txn.data))
            else:
                self._finish(txn, now, None, None, None, f"no answer after {txn.sent} tries")

    def stop(self, now: float) -> None:
        """The time bound is over: every open transaction ends unanswered."""
        if self.done:
            return
        self._s.stopped = True
        self._s.phase = Phase.DONE
        for txn in list(self._s.pending.values()):
            self._record(txn, now, None, None, None, "stopped by the time bound")
        self._s.pending.clear()
        self._s.outbox.clear()

    def observations(self) -> Observations:
        return Observations(
            self.plan,
            self._s.primary,
            self._s.mapped,
            tuple(self._s.results),
            self._s.stopped,
        )

    # -- transactions ---------------------------------------------------------------------------

    def _start(
        self,
        step: Step,
        role: Role,
        to: Addr,
        now: float,
        *,
        change: int = 0,
        response_port: int | None = None,
        target: Addr | None = None,
        rule: str | None = None,
    ) -> None:
        txid, data = binding_request(change=change, response_port=response_port)
        rto = self._phase_rto()
        txn = _Txn(step, role, to, txid, data, change, target, rule, rto, now + rto, now)
        self._s.pending[txid] = txn
        self._s.outbox.append((role, to, data))

    def _phase_rto(self) -> float:
        """Phase 1 uses the configured RTO; later phases twice the measured round trip, within
        [rto, max_rto] (answers that never come are waited for 7 RTOs with 3 tries)."""
        rtt = next(
            (r.rtt for r in self._s.results if r.to == self._s.primary and r.rtt is not None),
            None,
        )
        if rtt is None:
            return self._rto
        return min(self._max_rto, max(self._rto, 2 * rtt))

    def _finish(
        self,
        txn: _Txn,
        now: float,
        answer: Answer | None,
        role: Role | None,
        source: Addr | None,
        error: str | None = None,
    ) -> None:
        del self._s.pending[txn.txid]
        self._record(txn, now, answer, role, source, error)
        if not self._s.pending:
            self._advance(now)

    def _record(
        self,
        txn: _Txn,
        now: float,
        answer: Answer | None,
        role: Role | None,
        source: Addr | None,
        error: str | None,
    ) -> None:
        self._s.results.append(
            StepResult(
                step=txn.step,
                sent_from=txn.role,
                to=txn.to,
                change=txn.change,
                target=txn.target,
                rule=txn.rule,
                answered=answer is not None,
                received_on=role,
                source=source,
                mapped=answer.mapped if answer else None,
                other_address=answer.other_address if answer else None,
                rtt=(now - txn.first_sent) if answer is not None and txn.sent == 1 else None,
                tries=txn.sent,
                error=answer.error if answer else error,
            )
        )

    # -- phases ---------------------------------------------------------------------------------

    def _advance(self, now: float) -> None:
        s = self._s
        if s.phase is Phase.DISCOVER:
            self._choose_primary()
            s.phase = Phase.UNSOLICITED
            if s.mapped is not None:
                self._start_unsolicited(now)
        elif s.phase is Phase.UNSOLICITED:
            s.phase = Phase.MAPPING
            self._start_mapping(now)
        else:
            s.phase = Phase.DONE
        if not s.pending and s.phase is not Phase.DONE:
            self._advance(now)

    def _choose_primary(self) -> None:
        """The first server (configuration order) that answered, preferring RFC 5780 ones."""
        answered = [
            r
            for r in self._s.results
            if r.step is Step.BINDING and r.mapped is not None and r.received_on is Role.MEDIA
        ]
        order = {server: i for i, server in enumerate(self.plan.servers)}
        answered.sort(key=lambda r: (_usable_other(r) is None, order.get(r.to, len(order))))
        if answered:
            best = answered[0]
            self._s.primary, self._s.mapped = best.to, best.mapped
            self._s.other = _usable_other(best)

    def _endpoints(self) -> tuple[Addr | None, list[Addr]]:
        """(origin of the unsolicited answers, endpoints for the mapping test)."""
        primary, other = self._s.primary, self._s.other
        if primary is None or other is None:
            return None, []
        (a_ip, a_port), (b_ip, b_port) = primary, other
        choices = [(b_ip, b_port), (b_ip, a_port), (a_ip, b_port)]
        choices = [c for c in dict.fromkeys(choices) if c != primary]
        origin = next((c for c in choices if c not in self.plan.avoid), None)
        return origin, [c for c in choices if c != origin]

    def _change_flags(self, origin: Addr) -> int:
        assert self._s.primary is not None
        flags = CHANGE_IP if origin[0] != self._s.primary[0] else 0
        return flags | (CHANGE_PORT if origin[1] != self._s.primary[1] else 0)

    def _start_unsolicited(self, now: float) -> None:
        s, plan = self._s, self.plan
        assert s.primary is not None and s.mapped is not None
        origin, _ = self._endpoints()
        if origin is not None:
            flags = self._change_flags(origin)
            self._start(Step.UNSOLICITED, Role.MEDIA, s.primary, now, change=flags, target=s.mapped)
            if plan.fresh_port is not None and s.mapped[1] == plan.media_port:
                self._start(
                    Step.RACE_SEED,
                    Role.MEDIA,
                    s.primary,
                    now,
                    response_port=plan.fresh_port,
                    target=(s.mapped[0], plan.fresh_port),  # answered on FRESH, if at all
                )
        for spec in plan.announced:
            address = spec.resolve(s.mapped)
            if address is None or address == s.mapped:
                continue  # the unsolicited step checks the mapped address itself
            if origin is not None and address[0] == s.mapped[0]:
                self._start(
                    Step.ANNOUNCED,
                    Role.MEDIA,
                    s.primary,
                    now,
                    change=self._change_flags(origin),
                    response_port=address[1],
                    target=address,
                    rule=spec.rule,
                )
            else:
                self._start(Step.HAIRPIN, Role.MEDIA, address, now, target=address, rule=spec.rule)

    def _start_mapping(self, now: float) -> None:
        s = self._s
        if s.primary is None:
            return
        _, targets = self._endpoints()
        for target in targets:
            self._start(Step.MAPPING, Role.MEDIA, target, now)
        if any(r.step is Step.RACE_SEED for r in s.results):
            self._start(Step.RACE_CHECK, Role.FRESH, s.primary, now)


def _usable_other(result: StepResult) -> Addr | None:
    """OTHER-ADDRESS if it names another endpoint of the same family."""
    other = result.other_address
    if other is None or other == result.to or (":" in other[0]) != (":" in result.to[0]):
        return None
    return other


def steps_table(results: Sequence[StepResult]) -> list[dict[str, object]]:
    """The results as plain dicts (for JSON)."""
    out: list[dict[str, object]] = []
    for r in results:
        out.append(
            {
                "step": r.step.value,
                "from": r.sent_from.value,
                "to": fmt(r.to),
                "change": r.change or None,
                "target": fmt(r.target),
                "rule": r.rule,
                "answered": r.answered,
                "received_on": r.received_on.value if r.received_on else None,
                "source": fmt(r.source),
                "mapped": fmt(r.mapped),
                "other_address": fmt(r.other_address),
                "rtt_ms": round(r.rtt * 1000, 1) if r.rtt is not None else None,
                "tries": r.tries,
                "error": r.error,
            }
        )
    return out


def fmt(addr: Addr | None) -> str | None:
    """``host:port`` (IPv6 in brackets), None for None."""
    return None if addr is None else format_addr(addr)
