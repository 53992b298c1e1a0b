"""The doctor's pure core: the verdict table over every combination of facts, the facts derived
from observations, and the sans-IO probe driven (fake clock, no sockets) through a model of a
conntrack NAT and an RFC 5780 STUN server. The model behaves like the kernel in the lab
(tests/doctor/test_lab.py checks the same verdicts with the real thing)."""

from __future__ import annotations

import itertools
import random
import struct
from dataclasses import dataclass, field, replace

import pytest
from aioice.stun import Class, Message, Method, parse_message

from sfu.config import AnnounceRule, MediaConfig, MediaMode, parse_announce_rule
from sfu.doctor.facts import (
    AnnouncedFact,
    Context,
    Facts,
    Filtering,
    Mapping,
    Nat,
    Race,
    Reach,
    ServerFact,
    derive_facts,
)
from sfu.doctor.probe import AnnouncedSpec, NatProbe, Observations, Phase, ProbePlan, Role, Step
from sfu.doctor.run import DoctorSettings, announced_specs
from sfu.doctor.stun import CHANGE_IP, CHANGE_PORT, binding_request, decode_answer, transaction_id
from sfu.doctor.verdict import Code, Level, Verdict, classify
from sfu.engine.base import Addr

A = ("192.0.2.1", 3478)
B = ("192.0.2.2", 3479)
PUBLIC = "198.51.100.1"
PRIVATE = "172.17.0.2"
MEDIA_PORT = 40000
FRESH_PORT = 45678
MAPPED = (PUBLIC, MEDIA_PORT)


# -- the STUN wire helpers ------------------------------------------------------------------


def test_binding_request_carries_rfc5780_attributes_and_a_valid_fingerprint() -> None:
    txid, data = binding_request(change=CHANGE_IP | CHANGE_PORT, response_port=50000)
    msg = parse_message(data)  # raises if the fingerprint is wrong
    assert msg.transaction_id == txid == transaction_id(data)
    assert msg.attributes["CHANGE-REQUEST"] == 6
    assert _response_port(data) == 50000
    assert transaction_id(b"\x17\x03\x03" + bytes(40)) is None  # DTLS is not STUN
    with pytest.raises(ValueError):
        binding_request(response_port=0)


def test_decode_answer_reads_errors_addresses_and_our_own_request() -> None:
    txid, request = binding_request()
    own = decode_answer(request)
    assert own is not None and own.kind is Class.REQUEST
    err = Message(Method.BINDING, Class.ERROR, txid)
    err.attributes["ERROR-CODE"] = (420, "Unknown attribute\x00\x00")
    answer = decode_answer(bytes(err))
    assert answer is not None and answer.error == "error 420 Unknown attribute"
    ok = Message(Method.BINDING, Class.RESPONSE, txid)
    ok.attributes["XOR-MAPPED-ADDRESS"] = MAPPED
    ok.attributes["OTHER-ADDRESS"] = B
    answer = decode_answer(bytes(ok))
    assert answer is not None and (answer.mapped, answer.other_address) == (MAPPED, B)
    assert decode_answer(b"junk" * 10) is None


# -- the verdict table, every combination -----------------------------------------------------


def make_facts(**changes: object) -> Facts:
    base = Facts(
        servers=(ServerFact(A, True, MAPPED, True, B),),
        primary=A,
        rfc5780=True,
        mapped=MAPPED,
        local=(PRIVATE, MEDIA_PORT),
        nat=Nat.PRESENT,
        port_preserved=True,
        mapping=Mapping.ENDPOINT_INDEPENDENT,
        filtering=Filtering.FILTERED,
        race=Race.EXISTS,
        stun_configured=1,
    )
    return replace(base, **changes)  # type: ignore[arg-type]


OTHER = (PUBLIC, 50000)
ANNOUNCED_CHOICES: dict[str, tuple[AnnouncedFact, ...]] = {
    "none": (),
    "silent": (AnnouncedFact("r", OTHER, False, Reach.SILENT, "e"),),
    "silent-mapped": (AnnouncedFact("r", MAPPED, True, Reach.SILENT, "e"),),
    "answers": (AnnouncedFact("r", OTHER, False, Reach.ANSWERS, "e"),),
    "unknown": (AnnouncedFact("r", OTHER, False, Reach.UNKNOWN, "e"),),
}


def all_facts() -> list[tuple[Facts, str]]:
    out = []
    for nat, mapping, filtering, race, announced, turn, early, mapped, stun in itertools.product(
        Nat,
        Mapping,
        Filtering,
        Race,
        ANNOUNCED_CHOICES,
        (False, True),
        (False, True),
        (MAPPED, None),
        (0, 1),
    ):
        f = make_facts(
            nat=nat,
            mapping=mapping,
            filtering=filtering,
            race=race,
            announced=ANNOUNCED_CHOICES[announced],
            turn_configured=turn,
            early_checks=early,
            mapped=mapped,
            stun_configured=stun,
        )
        out.append((f, announced))
    return out


ALL = all_facts()


def test_every_combination_gets_one_line() -> None:
    codes = set()
    for facts, _ in ALL:
        v = classify(facts)
        assert isinstance(v, Verdict) and v.line and "\n" not in v.line
        codes.add(v.code)
    assert codes == set(Code)  # no dead row in the table


def test_table_rows_hold_over_every_combination() -> None:
    for facts, announced in ALL:
        v = classify(facts)
        reached = facts.stun_configured and facts.mapped is not None
        if not facts.stun_configured:
            assert v.code is Code.NO_STUN_SERVER
            continue
        if facts.mapped is None:
            assert (v.code, v.level) == (Code.STUN_UNREACHABLE, Level.ACTION)
            continue
        assert reached
        # an announced address that is not the mapped one and stays silent is always named
        assert (v.code is Code.ANNOUNCED_SILENT) == (announced == "silent"), (facts, v)
        if announced == "silent":
            assert "198.51.100.1:50000" in v.line and "-p 50000:40000/udp" in v.line
            continue
        if v.code in (Code.PUBLIC, Code.PUBLIC_FIREWALLED):
            assert facts.nat is Nat.NONE
        if facts.nat is Nat.NONE:
            expected = (
                Code.PUBLIC_FIREWALLED if facts.filtering is Filtering.FILTERED else Code.PUBLIC
            )
            assert v.code is expected
            continue
        if announced == "answers":
            assert (v.code, v.level) == (Code.ANNOUNCED_OK, Level.OK)
            continue
        if facts.filtering is Filtering.OPEN:
            assert (v.code, v.level) == (Code.FORWARDED, Level.OK)
            continue
        if facts.mapping.symmetric:
            assert v.code is Code.SYMMETRIC
            assert v.level is (Level.INFO if facts.turn_configured else Level.ACTION)
            continue
        if facts.race is Race.ABSENT:
            assert (v.code, v.level) == (Code.NO_RACE, Level.INFO)
        elif facts.race is Race.EXISTS:
            assert v.code is Code.RACE
            assert v.level is (Level.INFO if facts.early_checks else Level.ACTION)
        else:
            assert (v.code, v.level) == (Code.NAT_UNKNOWN, Level.UNKNOWN)
        if facts.turn_configured and v.level is not Level.ACTION:
            assert "TURN is configured" in v.line


@pytest.mark.parametrize(
    ("changes", "code", "words"),
    [
        ({"nat": Nat.NONE, "filtering": Filtering.OPEN}, Code.PUBLIC, "nothing to do"),
        (
            {"nat": Nat.NONE, "filtering": Filtering.FILTERED},
            Code.PUBLIC_FIREWALLED,
            "open UDP port 40000",
        ),
        ({}, Code.RACE, "bridge network, ports not published"),
        ({"race": Race.ABSENT}, Code.NO_RACE, "the race cannot happen here"),
        (
            {"mapping": Mapping.ADDRESS_AND_PORT_DEPENDENT},
            Code.SYMMETRIC,
            "configure TURN or publish the port",
        ),
        ({"filtering": Filtering.OPEN}, Code.FORWARDED, "published"),
        (
            {"announced": ANNOUNCED_CHOICES["silent"]},
            Code.ANNOUNCED_SILENT,
            "announced address 198.51.100.1:50000 does not answer",
        ),
        (
            {"announced": ANNOUNCED_CHOICES["answers"]},
            Code.ANNOUNCED_OK,
            "198.51.100.1:50000 answers",
        ),
        (
            {"race": Race.UNKNOWN, "rfc5780": False},
            Code.NAT_UNKNOWN,
            "does not support RFC 5780",
        ),
        ({"early_checks": False}, Code.RACE, "early checks are OFF"),
    ],
)
def test_the_lines_an_operator_reads(changes: dict[str, object], code: Code, words: str) -> None:
    v = classify(make_facts(**changes))
    assert v.code is code
    assert words in v.line


# -- the probe through a model NAT -----------------------------------------------------------


@dataclass
class StunModel:
    """An RFC 5780 STUN server: primary IP and other IP, each on two ports.

    ``rfc5780=False`` behaves like coturn with one listening IP: no OTHER-ADDRESS, 420 for
    CHANGE-REQUEST, RESPONSE-PORT silently ignored."""

    primary: Addr = A
    other: Addr = B
    rfc5780: bool = True
    ignore_change: bool = False
    ignore_response_port: bool = False

    @property
    def endpoints(self) -> set[Addr]:
        (a, ap), (b, bp) = self.primary, self.other
        if not self.rfc5780:
            return {self.primary}
        return {(a, ap), (a, bp), (b, ap), (b, bp)}

    def answer(self, local: Addr, data: bytes, src: Addr) -> tuple[Addr, Addr, bytes] | None:
        """(from, to, datagram) for a request that reached ``local`` from ``src``."""
        req = parse_message(data)
        if req.message_method != Method.BINDING or req.message_class != Class.REQUEST:
            return None
        change = int(req.attributes.get("CHANGE-REQUEST", 0))
        rport = _response_port(data)
        if change and not self.rfc5780:
            err = Message(Method.BINDING, Class.ERROR, req.transaction_id)
            err.attributes["ERROR-CODE"] = (420, "Unknown attribute")
            return local, src, bytes(err)
        origin = local
        if change and not self.ignore_change:
            ip = self._flip_ip(local[0]) if change & CHANGE_IP else local[0]
            port = self._flip_port(local[1]) if change & CHANGE_PORT else local[1]
            origin = (ip, port)
        dest = src
        if rport is not None and self.rfc5780 and not self.ignore_response_port:
            dest = (src[0], rport)
        resp = Message(Method.BINDING, Class.RESPONSE, req.transaction_id)
        resp.attributes["XOR-MAPPED-ADDRESS"] = src
        resp.attributes["RESPONSE-ORIGIN"] = origin
        if self.rfc5780:
            resp.attributes["OTHER-ADDRESS"] = (self._flip_ip(local[0]), self._flip_port(local[1]))
        resp.add_fingerprint()
        return origin, dest, bytes(resp)

    def _flip_ip(self, ip: str) -> str:
        return self.other[0] if ip == self.primary[0] else self.primary[0]

    def _flip_port(self, port: int) -> int:
        return self.other[1] if port == self.primary[1] else self.primary[1]


@dataclass
class ModelNat:
    """A Linux conntrack NAT (MASQUERADE) in front of PRIVATE, or no NAT at all.

    - the first packet of a flow decides its public port: the local port if no tracked flow with
      that remote uses it, else a random one (``symmetric``: always a random one);
    - an inbound packet matching no flow: DNAT to a published port, else dropped, leaving an
      UNREPLIED entry unless ``firewall`` drops it before conntrack keeps it.
    """

    nat: bool = True
    firewall: bool = False
    symmetric: bool = False
    published: dict[int, int] = field(default_factory=dict)  # public port -> local port
    flows: dict[tuple[int, Addr], int] = field(default_factory=dict)  # (local port, remote) -> pub
    taken: set[tuple[Addr, int]] = field(default_factory=set)  # (remote, public port) in use
    rng: random.Random = field(default_factory=lambda: random.Random(7))

    @property
    def public_ip(self) -> str:
        return PUBLIC if self.nat else PRIVATE

    def outbound(self, local_port: int, remote: Addr) -> Addr:
        key = (local_port, remote)
        if key not in self.flows:
            port = local_port
            if self.nat and (self.symmetric or (remote, port) in self.taken):
                port = self.rng.randrange(1024, 65535)
            self.flows[key] = port
            self.taken.add((remote, port))
        return (self.public_ip, self.flows[key])

    def inbound(self, remote: Addr, public_port: int) -> int | None:
        """The local port it reaches, or None."""
        for (local, peer), port in self.flows.items():
            if peer == remote and port == public_port:
                return local
        if public_port in self.published:
            local = self.published[public_port]
            self.flows[(local, remote)] = public_port
            self.taken.add((remote, public_port))
            return local
        if not self.nat:
            return None if self.firewall else public_port
        if not self.firewall:
            self.taken.add((remote, public_port))  # UNREPLIED: the port is taken for remote
        return None


@dataclass
class World:
    nat: ModelNat = field(default_factory=ModelNat)
    stun: StunModel = field(default_factory=StunModel)
    drop_all: bool = False
    hairpin: bool = False  # the NAT loops packets to its own public address back in

    def send(self, ports: dict[Role, int], role: Role, to: Addr, data: bytes) -> list[Delivery]:
        if self.drop_all:
            return []
        src = self.nat.outbound(ports[role], to)
        if to[0] == self.nat.public_ip:
            if not self.hairpin and self.nat.nat:
                return []
            local = self.nat.inbound(src, to[1])
            return self._deliver(ports, local, src, data)
        if to not in self.stun.endpoints:
            return []
        answer = self.stun.answer(to, data, src)
        if answer is None:
            return []
        origin, dest, reply = answer
        if dest[0] != self.nat.public_ip:
            return []
        return self._deliver(ports, self.nat.inbound(origin, dest[1]), origin, reply)

    @staticmethod
    def _deliver(
        ports: dict[Role, int], local: int | None, src: Addr, data: bytes
    ) -> list[Delivery]:
        for role, port in ports.items():
            if port == local:
                return [(role, src, data)]
        return []


Delivery = tuple[Role, Addr, bytes]


def run_probe(world: World, plan: ProbePlan, *, stop_at: float | None = None) -> Observations:
    """Drive the probe with a fake clock; every datagram arrives 1 ms after it left."""
    probe = NatProbe(plan, 0.0)
    ports = {Role.MEDIA: plan.media_port}
    if plan.fresh_port is not None:
        ports[Role.FRESH] = plan.fresh_port
    now = 0.0
    for _ in range(1000):
        for role, to, data in probe.datagrams_to_send(now):
            for on, src, reply in world.send(ports, role, to, data):
                probe.receive(on, reply, src, now + 0.001)
        if probe.done:
            break
        at = probe.get_timer()
        assert at is not None and at >= now
        now = at
        if stop_at is not None and now >= stop_at:
            probe.stop(now)
            break
        probe.handle_timer(now)
    assert probe.done
    return probe.observations()


def plan(
    *announced: AnnouncedSpec,
    servers: tuple[Addr, ...] = (A,),
    fresh: int | None = FRESH_PORT,
    avoid: frozenset[Addr] | None = None,
) -> ProbePlan:
    return ProbePlan(
        MEDIA_PORT,
        servers,
        fresh,
        tuple(announced),
        frozenset(servers) if avoid is None else avoid,
    )


def judge(world: World, probe_plan: ProbePlan, **ctx: object) -> tuple[Facts, Verdict]:
    obs = run_probe(world, probe_plan)
    local_ips = frozenset({PRIVATE} if world.nat.nat else {PRIVATE, PUBLIC})
    context = Context(
        local_ips=local_ips,
        media_local=(PRIVATE, probe_plan.media_port),
        media_port=MEDIA_PORT,
        stun_configured=len(probe_plan.servers),
        **ctx,  # type: ignore[arg-type]
    )
    facts = derive_facts(obs, context)
    return facts, classify(facts)


def test_docker_bridge_without_firewall_has_the_race() -> None:
    world = World()
    facts, v = judge(world, plan())
    assert (facts.nat, facts.mapping, facts.filtering) == (
        Nat.PRESENT,
        Mapping.ENDPOINT_INDEPENDENT,
        Filtering.FILTERED,
    )
    assert facts.port_preserved and facts.race is Race.EXISTS
    assert v.code is Code.RACE
    assert "remapped" in facts.evidence["race"]


def test_host_firewall_removes_the_race() -> None:
    facts, v = judge(World(ModelNat(firewall=True)), plan())
    assert facts.race is Race.ABSENT and v.code is Code.NO_RACE


def test_host_networking_is_public() -> None:
    facts, v = judge(World(ModelNat(nat=False)), plan())
    assert (facts.nat, facts.mapping, facts.race) == (Nat.NONE, Mapping.NO_NAT, Race.NOT_APPLICABLE)
    assert facts.filtering is Filtering.OPEN
    assert (v.code, v.level) == (Code.PUBLIC, Level.OK)


def test_public_host_behind_a_stateful_firewall() -> None:
    facts, v = judge(World(ModelNat(nat=False, firewall=True)), plan())
    assert facts.filtering is Filtering.FILTERED and v.code is Code.PUBLIC_FIREWALLED


def test_port_published_as_is_forwards() -> None:
    facts, v = judge(World(ModelNat(published={MEDIA_PORT: MEDIA_PORT})), plan())
    assert facts.filtering is Filtering.OPEN and facts.race is Race.NOT_APPLICABLE
    assert v.code is Code.FORWARDED


def test_published_other_port_with_its_announce_rule_answers() -> None:
    world = World(ModelNat(published={50000: MEDIA_PORT}))
    rule = AnnouncedSpec("172.17.0.2=198.51.100.1:50000", PUBLIC, 50000)
    facts, v = judge(world, plan(rule))
    (announced,) = facts.announced
    assert announced.reach is Reach.ANSWERS and announced.equals_mapped is False
    assert facts.race is Race.EXISTS  # the media port itself is not published as is
    assert (v.code, v.level) == (Code.ANNOUNCED_OK, Level.OK)


def test_announced_port_that_is_not_published_is_named() -> None:
    rule = AnnouncedSpec("172.17.0.2=198.51.100.1:50000", PUBLIC, 50000)
    facts, v = judge(World(), plan(rule))
    assert facts.announced[0].reach is Reach.SILENT
    assert v.code is Code.ANNOUNCED_SILENT and "-p 50000:40000/udp" in v.line


def test_auto_rule_is_judged_like_the_mapped_address() -> None:
    facts, v = judge(World(), plan(AnnouncedSpec("*=auto")))
    assert facts.announced[0].equals_mapped and facts.announced[0].reach is Reach.SILENT
    assert v.code is Code.RACE


def test_announced_address_on_another_ip_is_tried_by_hairpin() -> None:
    rule = AnnouncedSpec("*=203.0.113.9", "203.0.113.9", MEDIA_PORT)
    facts, _ = judge(World(), plan(rule))
    assert facts.announced[0].reach is Reach.UNKNOWN
    assert "hairpin" in facts.announced[0].evidence


def test_hairpin_that_loops_back_counts() -> None:
    world = World(ModelNat(published={50000: MEDIA_PORT}), stun=StunModel(rfc5780=False))
    world.hairpin = True
    rule = AnnouncedSpec("r", PUBLIC, 50000)
    facts, v = judge(world, plan(rule))
    assert facts.announced[0].reach is Reach.ANSWERS
    assert v.code is Code.ANNOUNCED_OK


def test_symmetric_nat_in_front_of_the_server() -> None:
    facts, v = judge(World(ModelNat(symmetric=True)), plan())
    assert facts.mapping is Mapping.ADDRESS_AND_PORT_DEPENDENT
    assert facts.port_preserved is False and facts.race is Race.UNKNOWN
    assert (v.code, v.level) == (Code.SYMMETRIC, Level.ACTION)
    facts, v = judge(World(ModelNat(symmetric=True)), plan(), turn_configured=True)
    assert (v.code, v.level) == (Code.SYMMETRIC, Level.INFO)


def test_without_rfc5780_the_race_is_unknown_but_two_servers_tell_the_mapping() -> None:
    world = World(stun=StunModel(rfc5780=False))
    facts, v = judge(world, plan())
    unknown = (Mapping.UNKNOWN, Filtering.UNKNOWN, Race.UNKNOWN)
    assert (facts.mapping, facts.filtering, facts.race) == unknown
    assert any("RFC 5780" in u for u in facts.unknown)
    assert v.code is Code.NAT_UNKNOWN
    second = ("192.0.2.2", 3478)  # a plain STUN server at another address

    class TwoServers(StunModel):
        @property
        def endpoints(self) -> set[Addr]:
            return {A, second}

    world = World(stun=TwoServers(rfc5780=False))
    facts, _ = judge(world, plan(servers=(A, second)))
    assert facts.mapping is Mapping.ENDPOINT_INDEPENDENT
    world = World(ModelNat(symmetric=True), stun=TwoServers(rfc5780=False))
    facts, v = judge(world, plan(servers=(A, second)))
    assert facts.mapping is Mapping.ENDPOINT_DEPENDENT and v.code is Code.SYMMETRIC


def test_another_port_of_the_same_ip_cannot_tell_address_dependence() -> None:
    same_ip = (A[0], B[1])

    class TwoPorts(StunModel):
        @property
        def endpoints(self) -> set[Addr]:
            return {A, same_ip}

    facts, _ = judge(World(stun=TwoPorts(rfc5780=False)), plan(servers=(A, same_ip)))
    assert facts.mapping is Mapping.UNKNOWN and any("same IP" in u for u in facts.unknown)
    world = World(ModelNat(symmetric=True), stun=TwoPorts(rfc5780=False))
    facts, _ = judge(world, plan(servers=(A, same_ip)))
    assert facts.mapping is Mapping.ADDRESS_AND_PORT_DEPENDENT


def test_a_server_that_ignores_change_request_proves_nothing() -> None:
    facts, v = judge(World(stun=StunModel(ignore_change=True)), plan())
    assert facts.filtering is Filtering.UNKNOWN
    assert v.code is not Code.FORWARDED


def test_a_server_that_ignores_response_port_proves_nothing() -> None:
    rule = AnnouncedSpec("r", PUBLIC, 50000)
    facts, v = judge(World(stun=StunModel(ignore_response_port=True)), plan(rule))
    assert facts.race is Race.UNKNOWN
    assert facts.announced[0].reach is Reach.UNKNOWN
    assert v.code is Code.NAT_UNKNOWN


def test_no_stun_answer() -> None:
    world = World(drop_all=True)
    obs = run_probe(world, plan())
    assert [r.error for r in obs.results] == ["no answer after 3 tries"]
    facts, v = judge(world, plan())
    assert v.code is Code.STUN_UNREACHABLE and facts.mapped is None


def test_probe_phases_wait_for_the_unsolicited_answers_then_map() -> None:
    obs = run_probe(World(), plan())
    steps = [r.step for r in obs.results]
    assert steps[0] is Step.BINDING
    # every outbound mapping step comes after the unsolicited ones had their full wait
    last_unsolicited = max(
        i for i, s in enumerate(steps) if s in (Step.UNSOLICITED, Step.RACE_SEED)
    )
    first_mapping = min(i for i, s in enumerate(steps) if s in (Step.MAPPING, Step.RACE_CHECK))
    assert last_unsolicited < first_mapping
    unsolicited = obs.first(Step.UNSOLICITED)
    assert unsolicited is not None and unsolicited.tries == 3 and not unsolicited.answered
    # the answers the media socket never sent to come from B, and the media socket never sends to B
    assert all(r.to != B for r in obs.results if r.sent_from is Role.MEDIA)


def test_running_again_sees_no_trace_of_the_previous_run() -> None:
    for nat, code in (
        (ModelNat(), Code.RACE),
        (ModelNat(firewall=True), Code.NO_RACE),
        (ModelNat(published={MEDIA_PORT: MEDIA_PORT}), Code.FORWARDED),
    ):
        world = World(nat)
        verdicts = [judge(world, plan(fresh=FRESH_PORT + i))[1].code for i in range(3)]
        assert verdicts == [code] * 3


def test_a_configured_stun_server_at_the_other_address_is_not_used_as_the_stranger() -> None:
    # B is configured too: the media socket talks to it, so an answer from it proves nothing
    _, v = judge(World(), plan(servers=(A, B)))
    assert v.code is Code.RACE
    unsolicited = run_probe(World(), plan(servers=(A, B))).first(Step.UNSOLICITED)
    assert unsolicited is not None and unsolicited.change == CHANGE_IP  # from (B's IP, A's port)


def test_time_bound_stops_the_probe() -> None:
    obs = run_probe(World(), plan(), stop_at=0.05)
    assert obs.stopped
    facts = derive_facts(obs, Context(media_local=(PRIVATE, MEDIA_PORT), media_port=MEDIA_PORT))
    assert facts.filtering is Filtering.UNKNOWN and any("time bound" in n for n in facts.notes)


def test_ephemeral_port_note() -> None:
    obs = run_probe(World(), replace(plan(), media_port=41234))
    ctx = Context(media_local=(PRIVATE, 41234), media_port=MEDIA_PORT, stun_configured=1)
    facts = derive_facts(obs, ctx)
    assert facts.ephemeral and any("not the media port 40000" in n for n in facts.notes)
    assert classify(facts).line.endswith(
        "(probed from another port than the media port: see /api/doctor)"
    )


def test_probe_without_servers_is_done_at_once() -> None:
    probe = NatProbe(plan(servers=()), 0.0)
    assert probe.done and probe.phase is Phase.DONE and probe.get_timer() is None


def test_probe_ignores_strangers_and_retransmits_the_same_bytes() -> None:
    probe = NatProbe(plan(), 0.0)
    ((role, to, first),) = probe.datagrams_to_send(0.0)
    assert (role, to) == (Role.MEDIA, A)
    assert not probe.receive(Role.MEDIA, binding_request()[1], A, 0.01)
    assert not probe.receive(Role.MEDIA, first, A, 0.01)  # our own request is not an answer
    probe.handle_timer(0.1)
    assert probe.datagrams_to_send(0.1) == [(Role.MEDIA, A, first)]


# -- announce rules to announced addresses ---------------------------------------------------


@pytest.mark.parametrize(
    ("rule", "media", "expected"),
    [
        ("172.17.0.2=198.51.100.1", MediaConfig(), AnnouncedSpec("", PUBLIC, 40000)),
        ("172.17.0.2=198.51.100.1:50000", MediaConfig(), AnnouncedSpec("", PUBLIC, 50000)),
        ("*=auto", MediaConfig(), AnnouncedSpec("", None, None)),
        ("*=auto:50000", MediaConfig(), AnnouncedSpec("", None, 50000)),
        ("10.0.0.9=198.51.100.1", MediaConfig(), None),  # another local address
        (
            "*=198.51.100.1:50000-50100",
            MediaConfig(mode=MediaMode.PORT_RANGE, port_min=40000, port_max=40100),
            AnnouncedSpec("", PUBLIC, 50000),
        ),
    ],
)
def test_announced_specs_follow_the_server_rules(
    rule: str, media: MediaConfig, expected: AnnouncedSpec | None
) -> None:
    parsed: AnnounceRule = parse_announce_rule(rule, media)
    specs = announced_specs(DoctorSettings(media=media, announce=(parsed,)), [PRIVATE], 40000)
    if expected is None:
        assert specs == ()
    else:
        (spec,) = specs
        assert (spec.ip, spec.port) == (expected.ip, expected.port)
        assert spec.rule == parsed.to_text(media)


def _response_port(data: bytes) -> int | None:
    pos = 20
    while pos + 4 <= len(data):
        kind, length = struct.unpack_from("!HH", data, pos)
        if kind == 0x0027:
            return int(struct.unpack_from("!H", data, pos + 4)[0])
        pos += 4 + length + (-length % 4)
    return None
