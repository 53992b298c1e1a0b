"""An in-memory network for driving IceAgents with a fake clock, and tests of that network.

Other test modules import ``Network``, ``ConntrackNat`` and ``connect_pair`` from here. Packets
travel with a fixed latency; rules can drop, delay or rewrite them; a host can sit behind a
conntrack-like NAT (the container NAT race) or a Firefox-like inbound filter.
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, field

from aioice.stun import Class, parse_message

from sfu.ice import (
    Candidate,
    CandidateType,
    IceAgent,
    IceConfig,
    IceEvent,
    IceRole,
    IceState,
    candidate_foundation,
    candidate_priority,
)

Addr = tuple[str, int]


@dataclass
class Packet:
    """One datagram on the wire (source as seen after NAT and rewrite rules)."""

    sent_at: float
    sender: str
    src: Addr
    dst: Addr
    data: bytes
    deliver_at: float = 0.0
    fate: str = "in flight"

    @property
    def stun_class(self) -> Class | None:
        try:
            return parse_message(self.data).message_class
        except Exception:
            return None

    @property
    def is_request(self) -> bool:
        return self.stun_class == Class.REQUEST


class ConntrackNat:
    """Linux MASQUERADE as seen in docs: the first packet of a flow fixes its public port.

    Outbound keeps the private port unless that (port, remote) tuple is taken, e.g. by an
    UNREPLIED entry an earlier unsolicited inbound packet left; then another port is used.
    Inbound is delivered only to an existing flow (address-and-port-dependent filtering).
    """

    def __init__(self, public_ip: str, remap_start: int = 45358) -> None:
        self.public_ip = public_ip
        self._next_port = itertools.count(remap_start)
        self._out: dict[tuple[Addr, Addr], int] = {}
        self._flows: dict[tuple[int, Addr], Addr] = {}
        self.unreplied: set[tuple[int, Addr]] = set()

    def outbound(self, src: Addr, dst: Addr) -> Addr:
        port = self._out.get((src, dst))
        if port is None:
            port = src[1]
            while (port, dst) in self._flows or (port, dst) in self.unreplied:
                port = next(self._next_port)
            self._out[(src, dst)] = port
            self._flows[(port, dst)] = src
        return (self.public_ip, port)

    def inbound(self, src: Addr, dst: Addr) -> Addr | None:
        private = self._flows.get((dst[1], src))
        if private is None:
            self.unreplied.add((dst[1], src))
        return private


@dataclass
class _Host:
    name: str
    agent: IceAgent
    sockets: dict[Hashable, Addr]
    nat: ConntrackNat | None = None
    firewall: bool = False
    contacted: set[tuple[Hashable, Addr]] = field(default_factory=set)
    events: list[IceEvent] = field(default_factory=list)


class Network:
    """Moves datagrams between agents; time advances only in ``run``."""

    def __init__(self, latency: float = 0.010) -> None:
        self.now = 0.0
        self.latency = latency
        self.log: list[Packet] = []
        self._hosts: dict[str, _Host] = {}
        self._bound: dict[Addr, tuple[str, Hashable]] = {}
        self._queue: list[tuple[float, int, object]] = []
        self._seq = itertools.count()
        self._drops: list[Callable[[Packet], bool]] = []
        self._rewrites: list[tuple[Addr, Addr | None, Addr]] = []
        self._forwards: dict[Addr, Addr] = {}
        self._delays: list[Callable[[Packet], float]] = []

    # ---- topology
    def add(
        self,
        name: str,
        agent: IceAgent,
        sockets: dict[Hashable, Addr],
        nat: ConntrackNat | None = None,
        firewall: bool = False,
    ) -> None:
        """Attach ``agent``; ``sockets`` maps its socket keys to the addresses they bind."""
        self._hosts[name] = _Host(name, agent, sockets, nat, firewall)
        for key, addr in sockets.items():
            self._bound[addr] = (name, key)

    def agent(self, name: str) -> IceAgent:
        return self._hosts[name].agent

    def drop(self, rule: Callable[[Packet], bool]) -> None:
        """Drop every packet for which ``rule`` is true."""
        self._drops.append(rule)

    def delay(self, extra: Callable[[Packet], float]) -> None:
        """Add ``extra(packet)`` seconds to each packet (jitter, reordering, a slow path)."""
        self._delays.append(extra)

    def rewrite_source(self, src: Addr, new_src: Addr, dst: Addr | None = None) -> None:
        """Packets from ``src`` (to ``dst`` if given) appear to come from ``new_src``."""
        self._rewrites.append((src, dst, new_src))

    def forward(self, public: Addr, private: Addr) -> None:
        """Packets to ``public`` are delivered to ``private`` (a static NAT entry)."""
        self._forwards[public] = private

    def at(self, when: float, action: Callable[[], None]) -> None:
        """Run ``action`` at ``when`` (signalling, say)."""
        heapq.heappush(self._queue, (when, next(self._seq), action))

    # ---- running
    def events(self, name: str) -> list[IceEvent]:
        """All events ``name`` has emitted so far (drained from the agent)."""
        self._drain(self._hosts[name])
        return self._hosts[name].events

    def flush(self, name: str | None = None) -> None:
        """Send what the agent(s) queued, stamped with the current time."""
        for host in [self._hosts[name]] if name else list(self._hosts.values()):
            for key, dst, data in host.agent.datagrams_to_send(self.now):
                self._send(host, key, dst, data)
            self._drain(host)

    def run(self, until: float, stop: Callable[[], bool] | None = None) -> None:
        """Advance the clock through timers, deliveries and actions up to ``until``."""
        self.flush()
        for _ in range(200_000):
            if stop is not None and stop():
                return
            times = [t for h in self._hosts.values() if (t := h.agent.get_timer()) is not None]
            if self._queue:
                times.append(self._queue[0][0])
            if not times or min(times) > until:
                self.now = max(self.now, until)
                return
            self.now = max(self.now, min(times))
            while self._queue and self._queue[0][0] <= self.now:
                _, _, item = heapq.heappop(self._queue)
                if isinstance(item, Packet):
                    self._deliver(item)
                else:
                    assert callable(item)
                    item()
                    self.flush()
            for host in self._hosts.values():
                timer = host.agent.get_timer()
                if timer is not None and timer <= self.now:
                    host.agent.handle_timer(self.now)
                    self.flush(host.name)
        raise AssertionError("network did not settle: an agent timer keeps firing")

    # ---- internals
    def _drain(self, host: _Host) -> None:
        while (event := host.agent.next_event()) is not None:
            host.events.append(event)

    def _send(self, host: _Host, key: Hashable, dst: Addr, data: bytes) -> None:
        src = host.sockets[key]
        host.contacted.add((key, dst))
        if host.nat is not None:
            src = host.nat.outbound(src, dst)
        for match_src, match_dst, new_src in self._rewrites:
            if src == match_src and (match_dst is None or dst == match_dst):
                src = new_src
                break
        packet = Packet(self.now, host.name, src, dst, data)
        self.log.append(packet)
        if any(rule(packet) for rule in self._drops):
            packet.fate = "dropped by rule"
            return
        extra = sum(delay(packet) for delay in self._delays)
        packet.deliver_at = self.now + self.latency + extra
        heapq.heappush(self._queue, (packet.deliver_at, next(self._seq), packet))

    def _deliver(self, packet: Packet) -> None:
        dst = self._forwards.get(packet.dst, packet.dst)
        via_nat = False
        for host in self._hosts.values():
            if host.nat is not None and dst[0] == host.nat.public_ip:
                private = host.nat.inbound(packet.src, dst)
                if private is None:
                    packet.fate = "dropped by NAT"
                    return
                dst, via_nat = private, True
        owner = self._bound.get(dst)
        target = self._hosts[owner[0]] if owner else None
        if owner is None or target is None or (target.nat is not None and not via_nat):
            packet.fate = "unreachable"  # nothing there, or a private address behind a NAT
            return
        host = target
        if host.firewall and (owner[1], packet.src) not in host.contacted:
            packet.fate = "dropped by firewall"
            return
        packet.fate = "delivered"
        host.agent.receive(packet.data, owner[1], packet.src, self.now)
        self.flush(host.name)


def host_candidate(addr: Addr, local_pref: int = 65535) -> Candidate:
    """A host candidate for ``addr``."""
    return Candidate(
        foundation=candidate_foundation(CandidateType.HOST, addr[0]),
        component=1,
        transport="udp",
        priority=candidate_priority(CandidateType.HOST, local_pref),
        host=addr[0],
        port=addr[1],
        type=CandidateType.HOST,
    )


def srflx_candidate(addr: Addr, base: Addr, local_pref: int = 65535) -> Candidate:
    """A server-reflexive candidate ``addr`` whose base is ``base``."""
    return Candidate(
        foundation=candidate_foundation(CandidateType.SRFLX, base[0], server="stun"),
        component=1,
        transport="udp",
        priority=candidate_priority(CandidateType.SRFLX, local_pref),
        host=addr[0],
        port=addr[1],
        type=CandidateType.SRFLX,
        related_address=base[0],
        related_port=base[1],
    )


A_ADDR: Addr = ("10.0.0.1", 5000)
B_ADDR: Addr = ("10.0.0.2", 6000)


def make_agent(role: IceRole, tie_breaker: int, seed: int, **config: object) -> IceAgent:
    """An agent with a seeded rng, so consent jitter is the same on every run."""
    return IceAgent(
        role,
        tie_breaker=tie_breaker,
        config=IceConfig(**config),  # type: ignore[arg-type]
        rng=random.Random(seed),
    )


def connect_pair(
    net: Network | None = None,
    a_role: IceRole = IceRole.CONTROLLING,
    b_role: IceRole = IceRole.CONTROLLED,
    exchange: Iterable[str] = ("creds", "candidates", "start"),
    seed: int = 1,
    **config: object,
) -> tuple[Network, IceAgent, IceAgent]:
    """Two agents "a" (10.0.0.1:5000) and "b" (10.0.0.2:6000) on ``net``, not yet run."""
    net = net or Network()
    a = make_agent(a_role, 2**63 + 1, seed, **config)
    b = make_agent(b_role, 2**62 + 7, seed + 1, **config)
    net.add("a", a, {"udp": A_ADDR})
    net.add("b", b, {"udp": B_ADDR})
    a.add_local_candidate(host_candidate(A_ADDR), "udp")
    b.add_local_candidate(host_candidate(B_ADDR), "udp")
    steps = set(exchange)
    if "creds" in steps:
        a.set_remote_credentials(b.local_ufrag, b.local_pwd)
        b.set_remote_credentials(a.local_ufrag, a.local_pwd)
    if "candidates" in steps:
        a.add_remote_candidate(host_candidate(B_ADDR), net.now)
        b.add_remote_candidate(host_candidate(A_ADDR), net.now)
    if "start" in steps:
        a.start(net.now)
        b.start(net.now)
    return net, a, b


def connected(*agents: IceAgent) -> Callable[[], bool]:
    """A stop condition: every agent has a selected pair."""
    return lambda: all(x.selected_pair is not None for x in agents)


# ---------------------------------------------------------------- tests of the network itself


def test_conntrack_nat_keeps_port_when_inside_sends_first() -> None:
    nat = ConntrackNat("198.51.100.1")
    assert nat.outbound(("172.17.0.2", 20000), ("203.0.113.2", 40000)) == ("198.51.100.1", 20000)
    assert nat.inbound(("203.0.113.2", 40000), ("198.51.100.1", 20000)) == ("172.17.0.2", 20000)


def test_conntrack_nat_remaps_when_outside_sends_first() -> None:
    nat = ConntrackNat("198.51.100.1")
    assert nat.inbound(("203.0.113.2", 40000), ("198.51.100.1", 20000)) is None
    assert nat.outbound(("172.17.0.2", 20000), ("203.0.113.2", 40000)) == ("198.51.100.1", 45358)
    # The outside keeps hitting the dead entry.
    assert nat.inbound(("203.0.113.2", 40000), ("198.51.100.1", 20000)) is None


def test_network_delivers_with_latency_and_runs_actions() -> None:
    net, a, _b = connect_pair()
    seen: list[float] = []
    net.at(0.5, lambda: seen.append(net.now))
    net.run(1.0)
    assert seen == [0.5]
    first = net.log[0]
    assert first.sent_at == 0.0 and first.deliver_at == net.latency and first.fate == "delivered"
    assert a.state in (IceState.CONNECTED, IceState.COMPLETED)
