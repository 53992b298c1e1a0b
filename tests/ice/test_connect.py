"""Two agents in memory: roles, nomination, triggered checks, role conflicts."""

from __future__ import annotations

import random

import pytest
from aioice.stun import Class, parse_message

from sfu.ice import (
    FirstCheckSent,
    IceRole,
    IceState,
    IceStateChanged,
    SelectedPairChanged,
)

from .test_network import A_ADDR, B_ADDR, Network, Packet, connect_pair, connected


def _requests(net: Network, sender: str) -> list[Packet]:
    return [p for p in net.log if p.sender == sender and p.is_request]


def test_connects_in_one_round_trip_with_both_roles() -> None:
    net, a, b = connect_pair()
    net.run(1.0, stop=connected(a, b))
    assert net.now <= 2 * net.latency + 1e-9
    assert a.state == b.state == IceState.CONNECTED
    assert a.role == IceRole.CONTROLLING and b.role == IceRole.CONTROLLED
    assert a.selected_pair is not None and b.selected_pair is not None
    assert a.selected_pair.remote.addr == B_ADDR and b.selected_pair.remote.addr == A_ADDR
    assert a.selected_pair.socket_key == "udp"
    kinds = [type(e) for e in net.events("a")]
    assert kinds == [IceStateChanged, FirstCheckSent, SelectedPairChanged, IceStateChanged]
    assert a.diagnose().startswith("connected via host 10.0.0.1:5000")


def test_aggressive_nomination_and_controlled_selection() -> None:
    net, a, b = connect_pair()
    net.run(1.0, stop=connected(a, b))
    for p in _requests(net, "a"):
        attrs = parse_message(p.data).attributes
        assert "USE-CANDIDATE" in attrs and "ICE-CONTROLLING" in attrs
    for p in _requests(net, "b"):
        attrs = parse_message(p.data).attributes
        assert "USE-CANDIDATE" not in attrs and "ICE-CONTROLLED" in attrs
    assert b.selected_pair is not None and b.selected_pair.nominated
    assert b.selected_pair.remote_nominated


def test_regular_nomination() -> None:
    net, a, b = connect_pair(aggressive_nomination=False)
    net.run(1.0, stop=connected(a, b))
    flags = ["USE-CANDIDATE" in parse_message(p.data).attributes for p in _requests(net, "a")]
    assert flags[0] is False and flags[-1] is True and flags.count(True) == 1
    assert a.selected_pair is not None and a.selected_pair.nominated
    assert b.selected_pair is not None and b.selected_pair.remote.addr == A_ADDR


def test_end_of_candidates_after_success_completes() -> None:
    net, a, b = connect_pair()
    a.add_remote_candidate(None, 0.0)
    b.add_remote_candidate(None, 0.0)
    net.run(1.0)
    assert a.state == b.state == IceState.COMPLETED


def test_triggered_check_leaves_when_the_peer_check_arrives() -> None:
    """a's first check is lost; b's check arriving at a makes a check again at once."""
    net, a, b = connect_pair(exchange=("creds", "candidates"))
    net.drop(lambda p: p.sender == "a" and p.sent_at == 0.0)
    a.start(0.0)
    net.at(0.035, lambda: b.start(net.now))
    net.run(1.0, stop=connected(a, b))
    arrival = next(p.deliver_at for p in _requests(net, "b"))
    assert arrival == pytest.approx(0.045)
    a_checks = [p.sent_at for p in _requests(net, "a")]
    assert a_checks[:2] == [0.0, arrival]  # not at 0.1, the retransmission time
    assert net.now == pytest.approx(arrival + 2 * net.latency)  # done one round trip later
    assert a.stats()["counters"]["triggered checks"] == 1  # type: ignore[index]


def test_triggered_check_revives_a_failed_pair() -> None:
    net, a, b = connect_pair(exchange=("creds", "candidates"))
    net.drop(lambda p: p.sender == "a" and p.sent_at < 7.0)
    a.start(0.0)
    net.run(7.0)
    pair = a.pairs[0]
    assert pair.state.value == "failed" and pair.timeouts == 1
    b.start(net.now)
    net.run(8.0, stop=connected(a, b))
    assert pair.state.value == "succeeded" and a.state == IceState.CONNECTED


def test_close_silences_the_agent() -> None:
    net, a, b = connect_pair()
    net.run(1.0, stop=connected(a, b))
    a.close()
    assert a.state == IceState.CLOSED and a.get_timer() is None
    assert net.events("a")[-1] == IceStateChanged(IceState.CLOSED, None)
    request = next(p.data for p in net.log if p.sender == "b" and p.is_request)
    assert a.receive(request, "udp", B_ADDR, net.now) is False
    assert a.datagrams_to_send(net.now) == []


def _role_conflict(a_role: IceRole, b_role: IceRole, first: str) -> tuple[Network, str]:
    """Both agents think they have the same role; only ``first`` sends at first."""
    net, a, b = connect_pair(a_role=a_role, b_role=b_role, exchange=("creds", "candidates"))
    starter, other = (a, b) if first == "a" else (b, a)
    starter.start(0.0)
    net.at(0.1, lambda: other.start(net.now))
    net.run(2.0, stop=connected(a, b))
    assert a.selected_pair is not None and b.selected_pair is not None
    assert {a.role, b.role} == {IceRole.CONTROLLING, IceRole.CONTROLLED}
    # a has the larger tie-breaker: it keeps or takes the controlling role.
    assert a.role == IceRole.CONTROLLING
    codes = [parse_message(p.data).error_code for p in net.log if p.stun_class == Class.ERROR]
    return net, "487" if 487 in codes else "switch"


def test_role_conflict_both_controlling() -> None:
    # b checks first: a (larger tie-breaker) answers 487, b switches to controlled.
    assert _role_conflict(IceRole.CONTROLLING, IceRole.CONTROLLING, "b")[1] == "487"
    # a checks first: b sees the larger tie-breaker and switches without an error.
    assert _role_conflict(IceRole.CONTROLLING, IceRole.CONTROLLING, "a")[1] == "switch"


def test_role_conflict_both_controlled() -> None:
    # b checks first: a's tie-breaker is larger, a switches to controlling.
    assert _role_conflict(IceRole.CONTROLLED, IceRole.CONTROLLED, "b")[1] == "switch"
    # a checks first: b answers 487, a switches to controlling.
    assert _role_conflict(IceRole.CONTROLLED, IceRole.CONTROLLED, "a")[1] == "487"


def _chaos_run(seed: int) -> bool:
    rng = random.Random(seed)
    net, a, b = connect_pair(exchange=("creds", "candidates"), seed=seed)
    net.drop(lambda p: rng.random() < 0.3)
    net.delay(lambda p: rng.random() * 0.06)
    net.at(rng.random() * 0.1, lambda: a.start(net.now))
    net.at(rng.random() * 0.1, lambda: b.start(net.now))
    net.run(10.0, stop=connected(a, b))
    if a.selected_pair is None or b.selected_pair is None:
        return False
    assert a.selected_pair.remote.addr == B_ADDR and b.selected_pair.remote.addr == A_ADDR
    return True


def test_lossy_reordering_network_still_connects() -> None:
    """30 % loss and 0-60 ms jitter (so reordering), 40 seeded runs: no hang, same pair."""
    assert sum(_chaos_run(seed) for seed in range(40)) >= 38
