"""Pair formation, priorities, ordering, pruning, initial states and Ta pacing (RFC 8445 6.1)."""

from __future__ import annotations

from collections.abc import Hashable

from sfu.ice import (
    Candidate,
    CandidateType,
    IceAgent,
    IceConfig,
    IceRole,
    PairState,
    candidate_foundation,
    candidate_priority,
    pair_priority,
)

from .test_network import A_ADDR, B_ADDR, Network, host_candidate, srflx_candidate


def _agent(role: IceRole = IceRole.CONTROLLING, **config: object) -> IceAgent:
    agent = IceAgent(role, tie_breaker=1, config=IceConfig(**config))  # type: ignore[arg-type]
    agent.set_remote_credentials("peer", "p" * 22)
    return agent


def test_pair_priority_formula() -> None:
    g, d = 2130706431, 1694498815
    assert pair_priority(g, d) == (d << 32) + 2 * g + 1
    assert pair_priority(d, g) == (d << 32) + 2 * g
    assert pair_priority(g, g) == (g << 32) + 2 * g


def test_pairs_by_family_and_priority_for_each_role() -> None:
    for role in IceRole:
        agent = _agent(role)
        agent.add_local_candidate(host_candidate(("10.0.0.1", 5000)), "v4")
        agent.add_local_candidate(host_candidate(("2001:db8::1", 5000), 65000), "v6")
        relay = Candidate(
            "9",
            1,
            "udp",
            candidate_priority(CandidateType.RELAY),
            "192.0.2.9",
            7000,
            CandidateType.RELAY,
            "10.0.0.1",
            5000,
        )
        agent.add_local_candidate(relay, "turn")
        remotes = [
            host_candidate(("10.0.0.2", 6000)),
            srflx_candidate(("198.51.100.2", 6000), ("10.0.0.2", 6000)),
            host_candidate(("2001:DB8::2", 6000)),
        ]
        for remote in remotes:
            agent.add_remote_candidate(remote, 0.0)
        pairs = agent.pairs
        # v4 locals x v4 remotes + v6 x v6: no cross-family pairs.
        assert len(pairs) == 2 * 2 + 1
        assert all((":" in p.local.host) == (":" in p.remote.host) for p in pairs)
        assert [p.priority for p in pairs] == sorted((p.priority for p in pairs), reverse=True)
        for p in pairs:
            g, d = (p.local, p.remote) if role == IceRole.CONTROLLING else (p.remote, p.local)
            assert p.priority == pair_priority(g.priority, d.priority)
        assert pairs[0].remote.host == "10.0.0.2" and pairs[0].local.host == "10.0.0.1"
        assert pairs[-1].socket_key == "turn"
        assert any(p.remote.host == "2001:db8::2" for p in pairs)  # canonicalised


def test_srflx_local_is_pruned_to_its_base() -> None:
    agent = _agent()
    agent.add_local_candidate(host_candidate(A_ADDR), "udp")
    agent.add_local_candidate(srflx_candidate(("198.51.100.1", 5000), A_ADDR), "udp")
    agent.add_remote_candidate(host_candidate(B_ADDR), 0.0)
    assert len(agent.pairs) == 1 and agent.pairs[0].local.type == CandidateType.HOST

    # The other way round: srflx first, then its base replaces it in the same pair.
    agent = _agent()
    agent.add_local_candidate(srflx_candidate(("198.51.100.1", 5000), A_ADDR), "udp")
    agent.add_remote_candidate(host_candidate(B_ADDR), 0.0)
    pair = agent.pairs[0]
    agent.add_local_candidate(host_candidate(A_ADDR), "udp")
    assert agent.pairs == [pair] and pair.local.type == CandidateType.HOST


def test_initial_states_one_waiting_per_foundation_and_unfreeze_on_success() -> None:
    net = Network()
    a = IceAgent(IceRole.CONTROLLING, tie_breaker=5, config=IceConfig(early_checks=False))
    b = IceAgent(IceRole.CONTROLLED, tie_breaker=1)
    b_second = ("10.0.0.2", 6001)
    net.add("a", a, {"udp": A_ADDR})
    net.add("b", b, {"udp": B_ADDR, "udp2": b_second})
    a.add_local_candidate(host_candidate(A_ADDR), "udp")
    b.add_local_candidate(host_candidate(B_ADDR), "udp")
    b.add_local_candidate(host_candidate(b_second, 65000), "udp2")
    a.set_remote_credentials(b.local_ufrag, b.local_pwd)
    first, second = host_candidate(B_ADDR), host_candidate(b_second, 65000)
    assert first.foundation == second.foundation  # same type and IP
    a.add_remote_candidate(first, 0.0)
    a.add_remote_candidate(second, 0.0)
    p1, p2 = a.pairs
    assert (p1.state, p2.state) == (PairState.WAITING, PairState.FROZEN)
    other = Candidate(
        candidate_foundation(CandidateType.HOST, "10.9.9.9"),
        1,
        "udp",
        5,
        "10.9.9.9",
        1,
        CandidateType.HOST,
    )
    a.add_remote_candidate(other, 0.0)
    assert a.pairs[-1].state == PairState.WAITING  # its own foundation

    a.start(0.0)
    a.handle_timer(0.0)  # paced: only the first Waiting pair
    out = a.datagrams_to_send(0.0)
    assert len(out) == 1 and out[0][1] == B_ADDR
    b.receive(out[0][2], "udp", A_ADDR, 0.01)  # b answers even before it is started
    (response,) = b.datagrams_to_send(0.01)
    assert a.receive(response[2], "udp", B_ADDR, 0.02)
    assert p1.state == PairState.SUCCEEDED
    assert p2.state == PairState.WAITING  # unfrozen by its foundation's success


def test_checks_are_paced_by_ta_without_early_checks() -> None:
    net = Network(latency=0.1)
    a = IceAgent(IceRole.CONTROLLING, tie_breaker=5, config=IceConfig(early_checks=False, ta=0.02))
    b = IceAgent(IceRole.CONTROLLED, tie_breaker=1)
    socks: dict[Hashable, tuple[str, int]] = {f"s{i}": ("10.0.0.2", 6000 + i) for i in range(3)}
    net.add("a", a, {"udp": A_ADDR})
    net.add("b", b, socks)
    a.add_local_candidate(host_candidate(A_ADDR), "udp")
    a.set_remote_credentials(b.local_ufrag, b.local_pwd)
    for i, addr in enumerate(socks.values()):
        b.add_local_candidate(host_candidate(addr, 65535 - i), f"s{i}")
        a.add_remote_candidate(host_candidate(addr, 65535 - i), 0.0)
    a.start(0.0)
    assert a.datagrams_to_send(0.0) == []  # nothing before the pacing timer fires
    net.run(0.5)
    sent = [(p.sent_at, p.dst[1]) for p in net.log if p.sender == "a" and p.is_request]
    assert [round(t, 6) for t, _ in sent[:3]] == [0.0, 0.02, 0.04]
    assert [port for _, port in sent[:3]] == [6000, 6001, 6002]  # priority order
    assert a.selected_pair is not None and a.selected_pair.remote.port == 6000
