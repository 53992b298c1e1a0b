"""Consent freshness (RFC 7675): periodic checks, DISCONNECTED, recovery, expiry."""

from __future__ import annotations

import itertools

import pytest
from aioice.stun import Class

from sfu.ice import ConsentExpired, IceState, IceStateChanged

from .test_network import Network, Packet, connect_pair, connected


def _from_b_after(t: float) -> object:
    return lambda p: p.sender == "b" and p.sent_at >= t


def _state_changes(net: Network, name: str) -> list[IceStateChanged]:
    return [e for e in net.events(name) if isinstance(e, IceStateChanged)]


def _a_consent_checks(net: Network, after: float) -> list[Packet]:
    """a's consent requests (first transmissions only) sent after ``after``."""
    seen: set[bytes] = set()
    out = []
    for p in net.log:
        if p.sender == "a" and p.is_request and p.sent_at > after and p.data[8:20] not in seen:
            seen.add(p.data[8:20])
            out.append(p)
    return out


def test_consent_checks_every_randomised_interval() -> None:
    net, a, b = connect_pair()
    net.run(1.0, stop=connected(a, b))
    connected_at = net.now
    net.run(60.0)
    checks = _a_consent_checks(net, connected_at)
    times = [connected_at] + [p.sent_at for p in checks]
    gaps = [t2 - t1 for t1, t2 in itertools.pairwise(times)]
    assert len(gaps) >= 9
    assert all(4.0 - 1e-9 <= g <= 6.0 + 1e-9 for g in gaps)
    assert len({round(g, 6) for g in gaps}) > 1  # jittered
    assert all(p.dst == a.selected_pair.remote_addr for p in checks)  # type: ignore[union-attr]
    assert a.state == IceState.CONNECTED and b.state == IceState.CONNECTED


def test_jitter_comes_from_the_injected_rng() -> None:
    def first_consent(seed: int) -> float:
        net, _a, _b = connect_pair(seed=seed)
        net.run(7.0)
        return _a_consent_checks(net, 0.1)[0].sent_at

    assert first_consent(1) == first_consent(1)
    assert first_consent(1) != first_consent(3)


def test_disconnected_after_missing_responses_then_recovers() -> None:
    net, a, b = connect_pair(consent_timeout=60.0)
    net.run(1.0, stop=connected(a, b))
    blocked = {"on": False}
    net.drop(lambda p: blocked["on"] and p.sender == "b")
    net.at(10.0, lambda: blocked.update(on=True))
    net.run(30.0, stop=lambda: a.state == IceState.DISCONNECTED)
    first_unanswered = _a_consent_checks(net, 10.0)[0].sent_at
    assert net.now == pytest.approx(first_unanswered + 5.0)
    change = _state_changes(net, "a")[-1]
    assert change.state == IceState.DISCONNECTED and "no consent response" in (change.reason or "")
    assert "consent responses stopped" in a.diagnose()
    net.at(net.now + 1.0, lambda: blocked.update(on=False))
    net.run(40.0, stop=lambda: a.state == IceState.CONNECTED)
    assert a.state == IceState.CONNECTED
    assert _state_changes(net, "a")[-1].reason == "consent responses resumed"


def test_consent_expires_after_consent_timeout() -> None:
    net, a, b = connect_pair()
    net.run(1.0, stop=connected(a, b))
    net.drop(_from_b_after(10.0))  # type: ignore[arg-type]
    net.run(60.0, stop=lambda: a.state == IceState.FAILED)
    last_answer = max(
        p.deliver_at
        for p in net.log
        if p.sender == "b" and p.fate == "delivered" and p.stun_class == Class.RESPONSE
    )
    assert a.state == IceState.FAILED
    assert net.now == pytest.approx(last_answer + 30.0)
    expired = [e for e in net.events("a") if isinstance(e, ConsentExpired)]
    assert len(expired) == 1 and expired[0].reason.startswith("consent expired")
    assert _state_changes(net, "a")[-2].state == IceState.DISCONNECTED
    assert a.failure_reason is not None and a.failure_reason.startswith("consent expired")
    assert a.get_timer() is None
