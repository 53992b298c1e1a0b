"""Trickle (RFC 8838), early checks, peer-reflexive learning and failure timing."""

from __future__ import annotations

import pytest
from aioice.stun import Class

from sfu.ice import (
    Candidate,
    CandidateType,
    FirstCheckSent,
    IceAgent,
    IceConfig,
    IceEvent,
    IceRole,
    IceState,
    IceStateChanged,
    RemoteCandidateDiscovered,
)

from .test_network import (
    A_ADDR,
    B_ADDR,
    Network,
    connect_pair,
    connected,
    host_candidate,
    srflx_candidate,
)


def _events(agent: IceAgent) -> list[IceEvent]:
    out = []
    while (event := agent.next_event()) is not None:
        out.append(event)
    return out


def _two_socket_agent(early: bool) -> IceAgent:
    agent = IceAgent(IceRole.CONTROLLED, config=IceConfig(early_checks=early))
    agent.add_local_candidate(host_candidate(A_ADDR), "udp")
    agent.add_local_candidate(host_candidate(("10.0.1.1", 5001), 60000), "udp-2")
    agent.set_remote_credentials("peer", "p" * 22)
    agent.start(0.0)
    agent.handle_timer(0.0)
    return agent


def test_early_checks_leave_from_every_local_candidate_at_once() -> None:
    agent = _two_socket_agent(early=True)
    remote = host_candidate(("10.0.1.2", 7000))
    agent.add_remote_candidate(remote, 0.5)
    assert not any(isinstance(e, FirstCheckSent) for e in _events(agent))  # not before sending
    out = agent.datagrams_to_send(0.5)
    assert {(key, addr) for key, addr, _ in out} == {("udp", remote.addr), ("udp-2", remote.addr)}
    first = [e for e in _events(agent) if isinstance(e, FirstCheckSent)]
    assert first == [FirstCheckSent(remote)]
    agent.add_remote_candidate(srflx_candidate(("198.51.100.9", 7001), remote.addr), 0.6)
    assert len(agent.datagrams_to_send(0.6)) == 2
    assert len([e for e in _events(agent) if isinstance(e, FirstCheckSent)]) == 1


def test_without_early_checks_the_pacer_sends_them() -> None:
    agent = _two_socket_agent(early=False)
    remote = host_candidate(("10.0.1.2", 7000))
    agent.add_remote_candidate(remote, 0.5)
    assert agent.datagrams_to_send(0.5) == []
    assert agent.get_timer() == 0.5
    agent.handle_timer(0.5)
    assert len(agent.datagrams_to_send(0.5)) == 1
    assert agent.get_timer() == pytest.approx(0.52)
    agent.handle_timer(0.52)
    assert len(agent.datagrams_to_send(0.52)) == 1
    assert [e for e in _events(agent) if isinstance(e, FirstCheckSent)] == [FirstCheckSent(remote)]


def test_trickle_before_start_connects() -> None:
    net, a, b = connect_pair(exchange=())
    a.add_remote_candidate(host_candidate(B_ADDR), 0.0)  # before credentials and start
    b.add_remote_candidate(host_candidate(A_ADDR), 0.0)
    net.at(0.2, lambda: a.set_remote_credentials(b.local_ufrag, b.local_pwd))
    net.at(0.2, lambda: b.set_remote_credentials(a.local_ufrag, a.local_pwd))
    net.at(0.3, lambda: a.start(net.now))
    net.at(0.3, lambda: b.start(net.now))
    net.run(1.0, stop=connected(a, b))
    assert next(p for p in net.log if p.is_request).sent_at == 0.3
    assert net.now == pytest.approx(0.32)


def test_trickle_after_start_connects() -> None:
    net, a, b = connect_pair(exchange=("creds", "start"))
    net.at(0.3, lambda: a.add_remote_candidate(host_candidate(B_ADDR), net.now))
    net.run(1.0, stop=connected(a, b))
    first = next(p for p in net.log if p.sender == "a" and p.is_request)
    assert first.sent_at == 0.3
    # a is done after one round trip (0.32); b after its triggered check's round trip.
    assert net.now == pytest.approx(0.33)
    # b never got a's candidate: it learned it as peer-reflexive.
    assert b.selected_pair is not None and b.selected_pair.remote.type == CandidateType.PRFLX


def test_prflx_learned_and_upgraded_when_signalled() -> None:
    net, a, b = connect_pair(exchange=("creds", "start"))
    b.add_remote_candidate(host_candidate(A_ADDR), 0.0)  # only b knows a's candidate
    net.run(1.0, stop=connected(a, b))
    discovered = [e for e in net.events("a") if isinstance(e, RemoteCandidateDiscovered)]
    assert [e.candidate.addr for e in discovered] == [B_ADDR]
    assert discovered[0].candidate.type == CandidateType.PRFLX
    pair = a.selected_pair
    assert pair is not None and pair.remote.type == CandidateType.PRFLX
    a.add_remote_candidate(host_candidate(B_ADDR), net.now)  # the signalled one, late
    assert a.selected_pair is pair and pair.remote.type == CandidateType.HOST
    assert len(a.pairs) == 1


def test_check_before_remote_credentials_is_answered_and_paired_later() -> None:
    net, a, b = connect_pair(exchange=())
    b.set_remote_credentials(a.local_ufrag, a.local_pwd)
    b.add_remote_candidate(host_candidate(A_ADDR), 0.0)
    b.start(0.0)
    a.start(0.0)  # a has neither b's credentials nor its candidates yet
    net.run(0.2)
    answered = [p for p in net.log if p.sender == "a" and p.stun_class is not None]
    assert answered and all(p.stun_class == Class.RESPONSE for p in answered)
    assert a.diagnose().startswith("waiting for remote credentials")
    assert [p.remote.type for p in a.pairs] == [CandidateType.PRFLX]
    net.at(0.25, lambda: a.set_remote_credentials(b.local_ufrag, b.local_pwd))
    net.run(1.0, stop=connected(a, b))
    first_a_check = next(p for p in net.log if p.sender == "a" and p.is_request)
    assert first_a_check.sent_at == 0.25  # the remembered check triggers at once
    assert a.state == IceState.CONNECTED


def _fail_time(net: Network, agent: IceAgent, until: float) -> float:
    net.run(until, stop=lambda: agent.state == IceState.FAILED)
    assert agent.state == IceState.FAILED
    return net.now


def test_end_of_candidates_fails_when_all_pairs_failed() -> None:
    net, a, _b = connect_pair()
    net.drop(lambda p: True)
    a.add_remote_candidate(None, 0.0)
    # 6 retransmissions from 0.1 s doubling to 1.6 s: the check gives up at 6.3 s.
    assert _fail_time(net, a, 20.0) == pytest.approx(6.3)
    reason = [e for e in net.events("a") if isinstance(e, IceStateChanged)][-1].reason
    assert reason is not None and reason.startswith("all 1 candidate pairs failed")
    assert "never answered" in reason
    assert a.get_timer() is None and a.datagrams_to_send(net.now) == []


def test_retransmissions_double_up_to_rto_max() -> None:
    net, _a, _b = connect_pair()
    net.drop(lambda p: True)
    net.run(7.0)
    times = [round(p.sent_at, 6) for p in net.log if p.sender == "a"]
    assert times == [0.0, 0.1, 0.3, 0.7, 1.5, 3.1, 4.7]
    ids = {bytes(p.data[8:20]) for p in net.log if p.sender == "a"}
    assert len(ids) == 1  # retransmissions reuse the transaction


def test_without_end_of_candidates_failure_timeout_decides() -> None:
    net, a, _b = connect_pair(failure_timeout=3.0)
    net.drop(lambda p: True)
    assert _fail_time(net, a, 20.0) == pytest.approx(3.0)
    net2, c, _d = connect_pair()
    net2.drop(lambda p: True)
    assert _fail_time(net2, c, 20.0) == pytest.approx(10.0)
    assert c.failure_reason is not None and c.failure_reason.startswith("no valid pair after 10 s")


def test_no_remote_candidates_waits_for_failure_timeout() -> None:
    net, a, _b = connect_pair(exchange=("creds", "start"))
    a.add_remote_candidate(None, 0.0)  # a peer whose candidates were all mDNS, say
    assert _fail_time(net, a, 20.0) == pytest.approx(10.0)
    assert a.failure_reason is not None and "no remote candidates" in a.failure_reason


def test_ignored_candidates_are_counted() -> None:
    agent = IceAgent(IceRole.CONTROLLED)
    agent.add_local_candidate(host_candidate(A_ADDR), "udp")
    agent.set_remote_credentials("peer", "p" * 22)
    agent.start(0.0)
    for line in [
        "1 1 tcp 1518280447 10.0.0.2 9 typ host tcptype active",
        "2 1 udp 2122260223 3b3c5e8d-1b6f-4c2b-9f44-2a7e3c0e1d5a.local 54321 typ host",
        "3 2 udp 2130706430 10.0.0.2 6001 typ host",
    ]:
        agent.add_remote_candidate(Candidate.from_sdp(line), 0.0)
    assert agent.pairs == []
    assert agent.stats()["ignored_remote_candidates"] == {
        "tcp": 1,
        "mdns": 1,
        "other component": 1,
    }
    assert agent.diagnose() == "no remote candidates (ignored: 1 tcp, 1 mdns, 1 other component)"
