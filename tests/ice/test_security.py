"""STUN security: integrity, fingerprint, username, and never crashing on garbage."""

from __future__ import annotations

import random
import struct

from aioice import stun as astun
from aioice.stun import Class, Message, Method, parse_message

from sfu.ice import IceAgent, IceRole, IceState

from .test_network import A_ADDR, B_ADDR, connect_pair, connected, host_candidate

PEER_UFRAG, PEER_PWD = "peer", "p" * 22
SRC = ("192.0.2.50", 40000)


def _agent() -> IceAgent:
    agent = IceAgent(IceRole.CONTROLLED, local_ufrag="mine", local_pwd="m" * 22)
    agent.add_local_candidate(host_candidate(A_ADDR), "udp")
    agent.add_local_candidate(host_candidate(("10.0.1.1", 5001)), "udp-2")
    agent.set_remote_credentials(PEER_UFRAG, PEER_PWD)
    agent.start(0.0)
    agent.datagrams_to_send(0.0)
    return agent


def _request(
    username: str | None = "mine:peer",
    key: bytes | None = b"m" * 22,
    fingerprint: bool = True,
    priority: bool = True,
    cls: Class = Class.REQUEST,
) -> bytes:
    msg = Message(Method.BINDING, cls)
    if username is not None:
        msg.attributes["USERNAME"] = username
    if priority:
        msg.attributes["PRIORITY"] = 1862270975
    msg.attributes["ICE-CONTROLLING"] = 1
    if key is not None:
        msg.attributes["MESSAGE-INTEGRITY"] = astun.message_integrity(bytes(msg), key)
    if fingerprint:
        msg.add_fingerprint()
    return bytes(msg)


def _answers(agent: IceAgent) -> list[tuple[object, tuple[str, int], Message]]:
    return [(k, a, parse_message(d)) for k, a, d in agent.datagrams_to_send(1.0)]


def test_valid_check_is_answered_on_its_socket() -> None:
    agent = _agent()
    assert agent.receive(_request(), "udp-2", SRC, 1.0)
    out = _answers(agent)
    key, addr, response = out[0]
    assert (key, addr) == ("udp-2", SRC)
    assert response.message_class == Class.RESPONSE
    assert response.attributes["XOR-MAPPED-ADDRESS"] == SRC
    assert response.check_message_integrity(b"m" * 22) and "FINGERPRINT" in response.attributes
    # ...and the triggered check toward the new peer-reflexive candidate goes the same way.
    assert [(k, a) for k, a, m in out[1:]] == [("udp-2", SRC)]
    assert out[1][2].message_class == Class.REQUEST


def _rejected(data: bytes, code: int | None, counter: str) -> None:
    agent = _agent()
    assert agent.receive(data, "udp", SRC, 1.0) is False
    out = _answers(agent)
    if code is None:
        assert out == []
    else:
        ((_, addr, response),) = out
        assert addr == SRC and response.message_class == Class.ERROR
        assert response.error_code == code and "FINGERPRINT" in response.attributes
        assert "MESSAGE-INTEGRITY" not in response.attributes  # RFC 8489 9.1.3
    assert agent.stats()["counters"][counter] == 1  # type: ignore[index]
    assert all(p.requests_received == 0 for p in agent.pairs)


def test_missing_integrity_or_username_gets_400() -> None:
    _rejected(_request(key=None), 400, "bad requests (400)")
    _rejected(_request(username=None), 400, "bad requests (400)")
    _rejected(_request(priority=False), 400, "bad requests (400)")


def test_wrong_password_or_username_gets_401() -> None:
    _rejected(_request(key=b"x" * 22), 401, "unauthorized requests (401 integrity)")
    _rejected(_request(username="other:peer"), 401, "unauthorized requests (401 username)")
    _rejected(_request(username="mine:stranger"), 401, "unauthorized requests (401 username)")
    _rejected(_request(username="minepeer"), 401, "unauthorized requests (401 username)")


def test_missing_or_bad_fingerprint_is_dropped() -> None:
    _rejected(_request(fingerprint=False), None, "requests without fingerprint")
    data = bytearray(_request())
    data[-1] ^= 0xFF
    _rejected(bytes(data), None, "malformed stun")


def test_indication_is_a_keepalive_and_unknown_responses_are_refused() -> None:
    agent = _agent()
    assert agent.receive(_request(key=None, cls=Class.INDICATION), "udp", SRC, 1.0)
    assert agent.receive(_request(key=None, cls=Class.RESPONSE), "udp", SRC, 1.0) is False
    assert _answers(agent) == []
    counters = agent.stats()["counters"]
    assert counters["indications"] == 1 and counters["unmatched responses"] == 1  # type: ignore[index]


def test_forged_response_does_not_complete_a_check() -> None:
    agent = IceAgent(IceRole.CONTROLLING)
    agent.add_local_candidate(host_candidate(A_ADDR), "udp")
    agent.set_remote_credentials(PEER_UFRAG, PEER_PWD)
    agent.add_remote_candidate(host_candidate(B_ADDR), 0.0)
    agent.start(0.0)
    ((_, _, check),) = agent.datagrams_to_send(0.0)
    forged = Message(Method.BINDING, Class.RESPONSE, parse_message(check).transaction_id)
    forged.attributes["XOR-MAPPED-ADDRESS"] = A_ADDR
    forged.add_message_integrity(b"not the peer password!")
    assert agent.receive(bytes(forged), "udp", B_ADDR, 0.01) is False
    assert agent.pairs[0].state.value == "in-progress" and agent.selected_pair is None
    agent.handle_timer(0.1)
    assert len(agent.datagrams_to_send(0.1)) == 1  # still retransmitting


def _raw_stun(rng: random.Random, key: bytes) -> bytes:
    """A STUN-shaped request with random attributes, then integrity and fingerprint."""
    known = [0x0006, 0x0024, 0x0025, 0x8029, 0x802A, 0x0020, 0x0009, rng.randrange(65536)]
    body = b""
    for _ in range(rng.randrange(7)):
        attr_type = rng.choice(known)
        sizes = {0x0024: 4, 0x8029: 8, 0x802A: 8, 0x0025: 0}
        if attr_type == 0x0006 and rng.random() < 0.7:
            value = b"mine:peer"
        elif attr_type in sizes and rng.random() < 0.7:
            value = rng.randbytes(sizes[attr_type])
        else:
            value = rng.randbytes(rng.choice([0, 1, 2, 4, 8, 9, 20]))
        body += struct.pack("!HH", attr_type, len(value)) + value + bytes(-len(value) % 4)
    cls = rng.choice([0x0000, 0x0010, 0x0100, 0x0110])
    head = struct.pack("!HHI", 0x0001 | cls, len(body), astun.COOKIE) + rng.randbytes(12)
    data = head + body
    if rng.random() < 0.8:
        mi = astun.message_integrity(data, key)
        data = head + body + struct.pack("!HH", 0x0008, 20) + mi
        data = data[:2] + struct.pack("!H", len(data) - 20) + data[4:]
    if rng.random() < 0.8:
        fp = astun.message_fingerprint(data)
        data = data + struct.pack("!HHI", 0x8028, 4, fp)
        data = data[:2] + struct.pack("!H", len(data) - 20) + data[4:]
    return data


def test_garbage_never_crashes_the_agent() -> None:
    rng = random.Random(1234)
    agent = _agent()
    valid = _request()
    for i in range(10_000):
        kind = i % 4
        if kind == 0:
            blob = rng.randbytes(rng.randrange(120))
        elif kind == 1:
            data = bytearray(valid)
            for _ in range(rng.randint(1, 6)):
                data[rng.randrange(len(data))] = rng.randrange(256)
            blob = bytes(data)
        elif kind == 2:
            blob = valid[: rng.randrange(len(valid))]
        else:
            blob = _raw_stun(rng, b"m" * 22)
        src = (f"192.0.2.{rng.randrange(1, 4)}", rng.randrange(1, 65536))
        agent.receive(blob, rng.choice(["udp", "udp-2", "nope"]), src, 1.0 + i * 1e-4)
        agent.datagrams_to_send(1.0)
        agent.handle_timer(1.0 + i * 1e-4)
    for n in range(len(valid)):
        assert agent.receive(valid[:n], "udp", SRC, 3.0) is False
    assert agent.state in (IceState.CHECKING, IceState.CONNECTED)
    assert agent.stats()["counters"]["malformed stun"] > 0  # type: ignore[index]
    assert len(agent.remote_candidates) <= agent.config.max_remote_candidates


def test_agent_still_connects_after_garbage() -> None:
    net, a, b = connect_pair()
    rng = random.Random(5)
    for _ in range(500):
        a.receive(rng.randbytes(rng.randrange(60)), "udp", B_ADDR, 0.0)
    net.run(1.0, stop=connected(a, b))
    assert a.state == IceState.CONNECTED


def test_wrong_remote_password_shows_in_diagnose() -> None:
    net, a, b = connect_pair(exchange=("candidates",))
    a.set_remote_credentials(b.local_ufrag, "w" * 22)  # signalling mixed something up
    b.set_remote_credentials(a.local_ufrag, a.local_pwd)
    a.start(0.0)
    net.run(2.0)
    assert a.selected_pair is None
    assert a.diagnose().startswith("the peer answered our checks with errors 401 x")
    assert b.stats()["counters"]["unauthorized requests (401 integrity)"] > 1  # type: ignore[index]
