"""NATs in memory: forensics in stats()/diagnose(), and the container NAT race."""

from __future__ import annotations

import pytest

from sfu.ice import CandidateType, FirstCheckSent, IceAgent, IceConfig, IceRole, IceState

from .test_network import (
    A_ADDR,
    B_ADDR,
    ConntrackNat,
    Network,
    connect_pair,
    connected,
    host_candidate,
    srflx_candidate,
)

B_PRIVATE = ("192.168.1.2", 6000)
B_PUBLIC = ("203.0.113.9", 7777)


def _remapped_client(b_checks: bool) -> tuple[Network, IceAgent, IceAgent]:
    """a = server at A_ADDR; b signals its private address, but its packets leave remapped."""
    net = Network()
    a = IceAgent(IceRole.CONTROLLED, tie_breaker=1)
    b = IceAgent(IceRole.CONTROLLING, tie_breaker=2)
    net.add("a", a, {"udp": A_ADDR})
    net.add("b", b, {"udp": B_PRIVATE})
    net.rewrite_source(B_PRIVATE, B_PUBLIC)
    net.forward(B_PUBLIC, B_PRIVATE)
    a.add_local_candidate(host_candidate(A_ADDR), "udp")
    b.add_local_candidate(host_candidate(B_PRIVATE), "udp")
    a.set_remote_credentials(b.local_ufrag, b.local_pwd)
    b.set_remote_credentials(a.local_ufrag, a.local_pwd)
    a.add_remote_candidate(host_candidate(B_PRIVATE), 0.0)
    a.add_remote_candidate(None, 0.0)
    a.start(0.0)
    if b_checks:
        b.add_remote_candidate(host_candidate(A_ADDR), 0.0)
        b.start(0.0)
    return net, a, b


def test_remapped_answers_are_reported_and_prflx_saves_the_day() -> None:
    net, a, b = _remapped_client(b_checks=True)
    net.run(1.0, stop=connected(a, b))
    pair = a.selected_pair
    assert pair is not None and pair.remote.type == CandidateType.PRFLX
    assert pair.remote.addr == B_PUBLIC
    host_pair = next(p for p in a.pairs if p.remote.addr == B_PRIVATE)
    assert host_pair.state.value == "failed"
    stats = next(s for s in a.stats()["pairs"] if s["remote"].startswith("host"))  # type: ignore[attr-defined]
    assert stats["unexpected_sources"] == {"203.0.113.9:7777": 1}
    assert a.stats()["counters"]["answers from unexpected address"] == 1  # type: ignore[index]
    # The client learns how it looks from outside.
    assert "the peer sees us at 203.0.113.9:7777" in b.diagnose()


def test_remapped_answers_explain_the_failure() -> None:
    net, a, _ = _remapped_client(b_checks=False)
    net.run(20.0, stop=lambda: a.state == IceState.FAILED)
    assert a.state == IceState.FAILED
    assert net.now == pytest.approx(0.02)  # fails as soon as the only pair failed
    assert (
        "answer from unexpected address 203.0.113.9:7777 to check sent to 192.168.1.2:6000"
        in a.diagnose()
    )


def test_answers_never_acknowledged() -> None:
    net, a, b = connect_pair()
    net.drop(lambda p: p.sender == "a")
    net.run(3.0)
    text = a.diagnose()
    assert text.startswith("checks from 10.0.0.2:6000 arrived, our answers never acknowledged")
    assert "the peer retransmitted" in text and "our checks were never answered" in text
    assert b.diagnose() == "checks sent to 1 remote address(es), never answered"
    pair = a.stats()["pairs"][0]  # type: ignore[index]
    assert pair["requests_received"] > 1 and pair["requests_retransmitted"] > 0
    assert pair["responses_received"] == 0


# --------------------------------------------------------------- the container NAT race

S_PRIVATE = ("172.17.0.2", 20000)
S_PUBLIC = ("198.51.100.1", 20000)
C_ADDR = ("203.0.113.2", 40000)
SIGNALING = 0.05


def _race(withhold: bool) -> tuple[Network, IceAgent, IceAgent, ConntrackNat]:
    """Server offers from behind a Docker-like NAT; the client has a Firefox-like filter."""
    net = Network()
    nat = ConntrackNat(S_PUBLIC[0])
    s = IceAgent(IceRole.CONTROLLING, tie_breaker=2, config=IceConfig())
    c = IceAgent(IceRole.CONTROLLED, tie_breaker=1)
    net.add("s", s, {"udp": S_PRIVATE}, nat=nat)
    net.add("c", c, {"udp": C_ADDR}, firewall=True)
    s_cands = [host_candidate(S_PRIVATE), srflx_candidate(S_PUBLIC, S_PRIVATE)]
    for cand in s_cands:
        s.add_local_candidate(cand, "udp")
    c.add_local_candidate(host_candidate(C_ADDR), "udp")

    def trickle_server_candidates() -> None:
        for cand in s_cands:
            c.add_remote_candidate(cand, net.now)
        c.add_remote_candidate(None, net.now)

    def client_gets_offer() -> None:
        c.set_remote_credentials(s.local_ufrag, s.local_pwd)
        if not withhold:
            trickle_server_candidates()
        c.start(net.now)
        net.at(net.now + SIGNALING, server_gets_answer)

    def server_gets_answer() -> None:
        s.set_remote_credentials(c.local_ufrag, c.local_pwd)
        s.add_remote_candidate(host_candidate(C_ADDR), net.now)
        s.add_remote_candidate(None, net.now)
        s.start(net.now)
        net.flush("s")
        if withhold and any(isinstance(e, FirstCheckSent) for e in net.events("s")):
            net.at(net.now + SIGNALING, trickle_server_candidates)

    net.at(SIGNALING, client_gets_offer)
    return net, s, c, nat


def test_container_nat_race_is_lost_when_candidates_go_first() -> None:
    net, s, c, nat = _race(withhold=False)
    net.run(20.0, stop=lambda: s.state == IceState.FAILED)
    assert s.state == IceState.FAILED and c.selected_pair is None
    assert (20000, C_ADDR) in nat.unreplied  # the client's check got there first
    remapped = {p.src for p in net.log if p.sender == "s"}
    assert remapped == {("198.51.100.1", 45358)}
    assert "never answered" in (s.failure_reason or "")


def test_container_nat_race_is_won_by_withholding_until_first_check() -> None:
    net, s, c, nat = _race(withhold=True)
    net.run(2.0, stop=connected(s, c))
    assert s.state == IceState.CONNECTED and c.state in (IceState.CONNECTED, IceState.COMPLETED)
    # Offer 0.05, answer 0.10, server candidates at 0.15: one round trip later both are up.
    assert net.now == pytest.approx(0.18)
    assert {p.src for p in net.log if p.sender == "s"} == {S_PUBLIC}  # port kept
    assert not nat.unreplied
    assert c.selected_pair is not None and c.selected_pair.remote.addr == S_PUBLIC
    assert s.selected_pair is not None and s.selected_pair.remote.addr == C_ADDR
    first = next(p for p in net.log if p.sender == "s")
    assert first.sent_at == pytest.approx(0.10) and first.fate == "dropped by firewall"
    assert B_ADDR != C_ADDR  # the lab uses its own addresses
