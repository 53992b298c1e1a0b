"""From what the probe saw to named facts, each with its evidence (pure functions).

Terms are RFC 4787 / RFC 5780: *mapping* is how the NAT in front of the media socket picks the
public address for each destination; *filtering* is whether a packet from an address the socket
never sent to reaches it. The *race* is the Docker bridge trap of docs/doctor.md: an unsolicited
packet toward a port that has not sent yet leaves a conntrack entry, and the server's own first
packet is then given another public port.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from sfu.doctor.probe import Observations, Role, Step, StepResult, fmt
from sfu.engine.base import Addr


class Nat(enum.Enum):
    """Is there a NAT between the media socket and the STUN server?"""

    NONE = "none"  # the mapped address is an address of this host
    PRESENT = "present"
    UNKNOWN = "unknown"


class Mapping(enum.Enum):
    """RFC 4787 mapping behaviour of the NAT in front of the media socket."""

    NO_NAT = "no-nat"
    ENDPOINT_INDEPENDENT = "endpoint-independent"
    ADDRESS_DEPENDENT = "address-dependent"
    ADDRESS_AND_PORT_DEPENDENT = "address-and-port-dependent"
    ENDPOINT_DEPENDENT = "endpoint-dependent"  # one of the two above (only an IP change tested)
    UNKNOWN = "unknown"

    @property
    def symmetric(self) -> bool:
        """True for the mappings clients cannot use (each destination gets another port)."""
        return self in (
            Mapping.ADDRESS_DEPENDENT,
            Mapping.ADDRESS_AND_PORT_DEPENDENT,
            Mapping.ENDPOINT_DEPENDENT,
        )


class Filtering(enum.Enum):
    """Does unsolicited UDP to the media socket's public address reach it?"""

    OPEN = "open"
    FILTERED = "filtered"
    UNKNOWN = "unknown"


class Race(enum.Enum):
    """Does an unsolicited packet to a port that has not sent yet take that port's mapping?"""

    EXISTS = "exists"
    ABSENT = "absent"  # dropped before conntrack kept it (a firewall): the port is kept
    NOT_APPLICABLE = "not-applicable"  # no NAT, or inbound reaches the socket anyway
    UNKNOWN = "unknown"


class Reach(enum.Enum):
    """Does an announced address lead to the media socket?"""

    ANSWERS = "answers"
    SILENT = "silent"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class ServerFact:
    server: Addr
    answered: bool
    mapped: Addr | None = None
    rfc5780: bool = False
    other_address: Addr | None = None
    rtt: float | None = None
    error: str | None = None


@dataclass(frozen=True)
class AnnouncedFact:
    rule: str
    address: Addr | None  # None: "auto" and STUN gave nothing
    equals_mapped: bool | None
    reach: Reach
    evidence: str


@dataclass(frozen=True)
class Context:
    """What the runner knows besides the probe's observations."""

    local_ips: frozenset[str] = frozenset()  # addresses of this host's interfaces
    media_local: Addr = ("0.0.0.0", 0)  # the media socket's address (port as bound)
    media_port: int = 0  # the configured media port
    stun_configured: int = 0
    turn_configured: bool = False
    early_checks: bool = True
    notes: tuple[str, ...] = ()

    @property
    def ephemeral(self) -> bool:
        """True when the probe did not run from the configured media port (0: any port)."""
        return self.media_port != 0 and self.media_local[1] != self.media_port


@dataclass(frozen=True)
class Facts:
    """Everything the verdict is decided from; every field comes with evidence text."""

    servers: tuple[ServerFact, ...] = ()
    primary: Addr | None = None
    rfc5780: bool = False
    mapped: Addr | None = None
    local: Addr = ("0.0.0.0", 0)
    nat: Nat = Nat.UNKNOWN
    port_preserved: bool | None = None
    mapping: Mapping = Mapping.UNKNOWN
    filtering: Filtering = Filtering.UNKNOWN
    race: Race = Race.UNKNOWN
    announced: tuple[AnnouncedFact, ...] = ()
    stun_configured: int = 0
    turn_configured: bool = False
    early_checks: bool = True
    ephemeral: bool = False
    stopped: bool = False
    evidence: dict[str, str] = field(default_factory=dict)
    unknown: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()


def derive_facts(obs: Observations, ctx: Context) -> Facts:
    """Name what the observations show (and say why for each fact, and what stayed unknown)."""
    evidence: dict[str, str] = {}
    unknown: list[str] = []
    servers = tuple(_server_fact(r) for r in obs.of(Step.BINDING))
    primary_fact = next((s for s in servers if s.server == obs.primary), None)
    rfc5780 = primary_fact is not None and primary_fact.rfc5780
    mapped = obs.mapped

    nat = _nat(mapped, ctx, evidence)
    port_preserved = None if mapped is None else mapped[1] == ctx.media_local[1]
    if mapped is not None:
        evidence["port_preserved"] = (
            f"local port {ctx.media_local[1]} -> public port {mapped[1]}"
            if not port_preserved
            else f"public port {mapped[1]} = local port"
        )
    if mapped is not None and not rfc5780:
        unknown.append(
            "the STUN server does not support RFC 5780 (no OTHER-ADDRESS): filtering and the "
            "race cannot be measured (coturn needs two listening IPs for it)"
        )
    mapping = _mapping(obs, nat, evidence, unknown)
    filtering = _filtering(obs, evidence, unknown)
    race = _race(obs, nat, filtering, evidence, unknown)
    announced = tuple(_announced(obs, filtering))
    notes = list(ctx.notes)
    if ctx.ephemeral:
        notes.append(
            f"probed from port {ctx.media_local[1]}, not the media port {ctx.media_port}: "
            "published ports and the announced addresses lead to the media port, so their "
            "checks do not apply; GET /api/doctor on the running server probes its own socket"
        )
    if obs.stopped:
        notes.append("the time bound ended the probe before every answer came")
    return Facts(
        servers=servers,
        primary=obs.primary,
        rfc5780=rfc5780,
        mapped=mapped,
        local=ctx.media_local,
        nat=nat,
        port_preserved=port_preserved,
        mapping=mapping,
        filtering=filtering,
        race=race,
        announced=announced,
        stun_configured=ctx.stun_configured,
        turn_configured=ctx.turn_configured,
        early_checks=ctx.early_checks,
        ephemeral=ctx.ephemeral,
        stopped=obs.stopped,
        evidence=evidence,
        unknown=tuple(unknown),
        notes=tuple(notes),
    )


def _server_fact(r: StepResult) -> ServerFact:
    other = r.other_address if r.other_address not in (None, r.to) else None
    return ServerFact(
        server=r.to,
        answered=r.mapped is not None,
        mapped=r.mapped,
        rfc5780=other is not None,
        other_address=other,
        rtt=r.rtt,
        error=r.error if r.mapped is None else None,
    )


def _nat(mapped: Addr | None, ctx: Context, evidence: dict[str, str]) -> Nat:
    if mapped is None:
        return Nat.UNKNOWN
    if mapped[0] in ctx.local_ips:
        evidence["nat"] = f"the STUN-mapped address {mapped[0]} is an address of this host"
        return Nat.NONE
    evidence["nat"] = f"the STUN-mapped address {mapped[0]} is not an address of this host"
    return Nat.PRESENT


def _mapping(obs: Observations, nat: Nat, evidence: dict[str, str], unknown: list[str]) -> Mapping:
    primary, mapped = obs.primary, obs.mapped
    if primary is None or mapped is None:
        return Mapping.UNKNOWN
    if nat is Nat.NONE:
        return Mapping.NO_NAT
    seen = [
        r
        for r in obs.results
        if r.step in (Step.BINDING, Step.MAPPING)
        and r.to != primary
        and r.mapped is not None
        and r.received_on is Role.MEDIA
    ]
    if not seen:
        unknown.append(
            "mapping: only one STUN endpoint answered (give a second STUN server, or one with "
            "RFC 5780)"
        )
        return Mapping.UNKNOWN
    ip_changed = [r for r in seen if r.to[0] != primary[0]]
    port_changed = [r for r in seen if r.to[0] == primary[0]]
    parts = [f"{fmt(primary)} -> {fmt(mapped)}"]
    parts += [f"{fmt(r.to)} -> {fmt(r.mapped)}" for r in seen]
    evidence["mapping"] = ", ".join(parts)
    ip_same = all(r.mapped == mapped for r in ip_changed)
    port_same = all(r.mapped == mapped for r in port_changed)
    if ip_same and port_same and not ip_changed:
        unknown.append(
            "mapping: only another port of the same IP was tried (same mapping: not "
            "port-dependent; address dependence unknown)"
        )
        return Mapping.UNKNOWN
    if ip_same and port_same:
        return Mapping.ENDPOINT_INDEPENDENT
    if not port_same:
        return Mapping.ADDRESS_AND_PORT_DEPENDENT
    if port_changed:
        return Mapping.ADDRESS_DEPENDENT
    return Mapping.ENDPOINT_DEPENDENT


def _filtering(obs: Observations, evidence: dict[str, str], unknown: list[str]) -> Filtering:
    r = obs.first(Step.UNSOLICITED)
    if r is None:
        return Filtering.UNKNOWN
    target = fmt(r.target)
    if r.answered and r.error:
        unknown.append(f"filtering: the STUN server refused CHANGE-REQUEST ({r.error})")
        return Filtering.UNKNOWN
    if r.answered and r.source == r.to:
        unknown.append("filtering: the STUN server answered from its own address")
        return Filtering.UNKNOWN
    if r.answered:
        evidence["filtering"] = f"an answer from {fmt(r.source)} (never sent to) reached {target}"
        return Filtering.OPEN
    if r.error == "stopped by the time bound":
        unknown.append("filtering: the time bound ended the probe")
        return Filtering.UNKNOWN
    evidence["filtering"] = (
        f"{r.tries} answers sent from the STUN server's other address to {target} never arrived"
    )
    return Filtering.FILTERED


def _race(
    obs: Observations,
    nat: Nat,
    filtering: Filtering,
    evidence: dict[str, str],
    unknown: list[str],
) -> Race:
    if nat is Nat.NONE:
        evidence["race"] = "no NAT on this host: nothing can remap its ports"
        return Race.NOT_APPLICABLE
    if filtering is Filtering.OPEN:
        evidence["race"] = "unsolicited UDP reaches the media socket: replies use its mapping"
        return Race.NOT_APPLICABLE
    seed = obs.first(Step.RACE_SEED)
    if seed is None:
        if obs.mapped is not None and obs.mapped[1] != obs.plan.media_port and obs.primary:
            unknown.append(
                "race: the NAT does not keep local ports, so a fresh port's public port "
                "cannot be predicted"
            )
        elif obs.plan.fresh_port is None and obs.mapped is not None:
            unknown.append("race: no fresh socket to probe with")
        return Race.UNKNOWN
    target = fmt(seed.target)
    if seed.answered and seed.received_on is Role.FRESH:
        evidence["race"] = f"an unsolicited packet to {target} reached the fresh socket"
        return Race.NOT_APPLICABLE
    if seed.answered:
        unknown.append("race: the STUN server ignored RESPONSE-PORT (answered to the sender)")
        return Race.UNKNOWN
    check = obs.first(Step.RACE_CHECK)
    if check is None or check.mapped is None or seed.target is None:
        unknown.append("race: the fresh socket got no STUN answer")
        return Race.UNKNOWN
    fresh = obs.plan.fresh_port
    if check.mapped[1] == seed.target[1]:
        evidence["race"] = (
            f"an unsolicited packet to {target} left no trace: port {fresh} then kept its "
            f"public port (dropped before conntrack kept it)"
        )
        return Race.ABSENT
    evidence["race"] = (
        f"after an unsolicited packet to {target}, port {fresh}'s first packet left as "
        f"{fmt(check.mapped)}: the NAT kept the unsolicited flow and remapped ours"
    )
    return Race.EXISTS


def _announced(obs: Observations, filtering: Filtering) -> list[AnnouncedFact]:
    out: list[AnnouncedFact] = []
    seed = obs.first(Step.RACE_SEED)
    response_port_ignored = seed is not None and seed.answered and seed.received_on is Role.MEDIA
    checked = {r.rule: r for r in obs.results if r.step in (Step.ANNOUNCED, Step.HAIRPIN)}
    for spec in obs.plan.announced:
        address = spec.resolve(obs.mapped)
        if address is None:
            out.append(AnnouncedFact(spec.rule, None, None, Reach.UNKNOWN, "no STUN address"))
            continue
        same = obs.mapped is not None and address == obs.mapped
        if same:
            reach = {
                Filtering.OPEN: Reach.ANSWERS,
                Filtering.FILTERED: Reach.SILENT,
                Filtering.UNKNOWN: Reach.UNKNOWN,
            }[filtering]
            text = "the STUN-mapped address itself: see filtering"
            out.append(AnnouncedFact(spec.rule, address, True, reach, text))
            continue
        r = checked.get(spec.rule)
        reach, text = _reach(r, response_port_ignored, obs.mapped)
        equals = None if obs.mapped is None else False
        out.append(AnnouncedFact(spec.rule, address, equals, reach, text))
    return out


def _reach(
    r: StepResult | None, response_port_ignored: bool, mapped: Addr | None
) -> tuple[Reach, str]:
    if r is None:
        return Reach.UNKNOWN, "not checked"
    if r.step is Step.HAIRPIN:
        why = (
            f"{fmt(r.target)} is not the STUN-mapped address {fmt(mapped)}"
            if mapped and r.target and r.target[0] != mapped[0]
            else "the STUN server cannot send to it (no RFC 5780)"
        )
        if r.answered:
            return Reach.ANSWERS, f"a packet to it looped back to the media socket ({why})"
        return Reach.UNKNOWN, f"{why}; it does not loop back (hairpin), which many NATs never do"
    if response_port_ignored:
        return Reach.UNKNOWN, "the STUN server ignores RESPONSE-PORT"
    if r.answered and r.error:
        return Reach.UNKNOWN, f"the STUN server refused: {r.error}"
    if r.answered and r.received_on is Role.MEDIA and r.source != r.to:
        return Reach.ANSWERS, f"a STUN answer from {fmt(r.source)} to it reached the media socket"
    if r.answered:
        return Reach.UNKNOWN, "the STUN server answered the sender instead"
    if r.error == "stopped by the time bound":
        return Reach.UNKNOWN, "the time bound ended the probe"
    return Reach.SILENT, (
        f"{r.tries} STUN answers sent to it from outside never reached the media socket"
    )
