"""DtlsSession driven in memory with a fake clock."""

from __future__ import annotations

import random
import time
from typing import Any

import pytest

from sfu.dtls import (
    ApplicationData,
    Certificate,
    DtlsClosed,
    DtlsFailed,
    DtlsRole,
    DtlsSession,
    DtlsState,
    HandshakeCompleted,
    SrtpProfile,
)

from . import DropRule, Link, events

GCM = SrtpProfile.AEAD_AES_128_GCM
CM = SrtpProfile.AES_CM_128_HMAC_SHA1_80


@pytest.fixture(scope="module")
def cert_a() -> Certificate:
    return Certificate.generate()


@pytest.fixture(scope="module")
def cert_b() -> Certificate:
    return Certificate.generate()


def make_link(
    cert_a: Certificate,
    cert_b: Certificate,
    a_role: DtlsRole = DtlsRole.CLIENT,
    *,
    a: dict[str, Any] | None = None,
    b: dict[str, Any] | None = None,
    drop: DropRule | None = None,
) -> Link:
    """Session a (given role) with cert_a talks to session b (other role) with cert_b;
    ``a`` and ``b`` are extra DtlsSession arguments."""
    b_role = DtlsRole.SERVER if a_role is DtlsRole.CLIENT else DtlsRole.CLIENT
    session_a = DtlsSession(cert_a, a_role, cert_b.fingerprints(), **(a or {}))
    session_b = DtlsSession(cert_b, b_role, cert_a.fingerprints(), **(b or {}))
    return Link(session_a, session_b, drop)


def start(link: Link) -> None:
    link.a.start(link.now)
    link.b.start(link.now)
    link.pump()


def client_server(link: Link) -> tuple[DtlsSession, DtlsSession]:
    if link.a.role is DtlsRole.CLIENT:
        return link.a, link.b
    return link.b, link.a


@pytest.mark.parametrize("a_role", [DtlsRole.CLIENT, DtlsRole.SERVER])
def test_handshake_both_ways_round(
    cert_a: Certificate, cert_b: Certificate, a_role: DtlsRole
) -> None:
    link = make_link(cert_a, cert_b, a_role)
    start(link)
    assert link.a.state is DtlsState.CONNECTED
    assert link.b.state is DtlsState.CONNECTED
    (done_a,) = events(link.a)
    (done_b,) = events(link.b)
    assert isinstance(done_a, HandshakeCompleted) and isinstance(done_b, HandshakeCompleted)
    # Each side saw the other's certificate.
    assert done_a.remote_certificate_der == cert_b.der
    assert done_b.remote_certificate_der == cert_a.der
    # Keys match crosswise and both default to GCM.
    ka, kb = done_a.keys, done_b.keys
    assert ka == link.a.srtp_keys and kb == link.b.srtp_keys
    assert ka.profile is kb.profile is GCM
    assert (ka.local_key, ka.local_salt) == (kb.remote_key, kb.remote_salt)
    assert (ka.remote_key, ka.remote_salt) == (kb.local_key, kb.local_salt)
    assert ka.local_key != ka.remote_key
    assert (len(ka.local_key), len(ka.local_salt)) == (16, 12)
    # Nothing left to time once connected.
    assert link.a.get_timer() is None and link.b.get_timer() is None
    # Every datagram fits the default MTU and holds DTLS records only.
    assert link.sent and all(len(d) <= 1200 and 20 <= d[0] <= 63 for _, d in link.sent)


def test_server_starts_implicitly_on_first_record(cert_a: Certificate, cert_b: Certificate) -> None:
    link = make_link(cert_a, cert_b)
    link.a.start(0.0)  # the server's start() is never called
    assert link.b.state is DtlsState.NEW
    link.pump()
    assert link.a.state is link.b.state is DtlsState.CONNECTED


def test_client_drops_records_before_start(cert_a: Certificate, cert_b: Certificate) -> None:
    link = make_link(cert_a, cert_b, DtlsRole.SERVER)  # b is the client
    link.b.receive(b"\x16\xfe\xfd" + bytes(10), 0.0)
    assert link.b.state is DtlsState.NEW
    assert link.b.datagrams_dropped == 1


@pytest.mark.parametrize(
    ("client_profiles", "server_profiles", "expected"),
    [
        ((GCM, CM), (GCM, CM), GCM),
        ((CM,), (GCM, CM), CM),
        ((GCM,), (GCM, CM), GCM),
        ((GCM, CM), (CM,), CM),
        ((CM, GCM), (CM, GCM), CM),  # the server's preference wins
        ((CM, GCM), (GCM, CM), GCM),
    ],
)
def test_profile_negotiation(
    cert_a: Certificate,
    cert_b: Certificate,
    client_profiles: tuple[SrtpProfile, ...],
    server_profiles: tuple[SrtpProfile, ...],
    expected: SrtpProfile,
) -> None:
    link = make_link(
        cert_a, cert_b, a={"profiles": client_profiles}, b={"profiles": server_profiles}
    )
    start(link)
    client, server = client_server(link)
    assert client.srtp_keys is not None and server.srtp_keys is not None
    assert client.srtp_keys.profile is server.srtp_keys.profile is expected
    assert len(client.srtp_keys.local_key) == expected.key_len == 16
    assert len(client.srtp_keys.local_salt) == expected.salt_len
    assert client.srtp_keys.local_key == server.srtp_keys.remote_key
    assert client.srtp_keys.local_salt == server.srtp_keys.remote_salt


def test_no_common_profile_fails_both_sides(cert_a: Certificate, cert_b: Certificate) -> None:
    link = make_link(cert_a, cert_b, a={"profiles": (GCM,)}, b={"profiles": (CM,)})
    start(link)
    for session in (link.a, link.b):
        assert session.state is not DtlsState.CONNECTED
        assert session.srtp_keys is None
    client_events = events(link.a)
    assert isinstance(client_events[0], DtlsFailed)
    assert "SRTP profile" in client_events[0].reason


def test_profile_properties() -> None:
    assert (GCM.value, GCM.key_len, GCM.salt_len) == (7, 16, 12)
    assert (CM.value, CM.key_len, CM.salt_len) == (1, 16, 14)
    assert GCM.openssl_name == "SRTP_AEAD_AES_128_GCM"
    assert CM.openssl_name == "SRTP_AES128_CM_SHA1_80"
    assert SrtpProfile.from_openssl_name("SRTP_AES128_CM_SHA1_80") is CM
    with pytest.raises(ValueError):
        SrtpProfile.from_openssl_name("SRTP_NULL_SHA1_80")


@pytest.mark.parametrize("checker", [DtlsRole.CLIENT, DtlsRole.SERVER])
def test_wrong_fingerprint_fails_without_keys(
    cert_a: Certificate, cert_b: Certificate, checker: DtlsRole
) -> None:
    """The side given a wrong fingerprint fails with a clear reason; neither side gets keys."""
    intruder = Certificate.generate()
    other = DtlsRole.SERVER if checker is DtlsRole.CLIENT else DtlsRole.CLIENT
    # a expects intruder's fingerprint, but b presents cert_b.
    a = DtlsSession(cert_a, checker, intruder.fingerprints())
    b = DtlsSession(cert_b, other, cert_a.fingerprints())
    link = Link(a, b)
    start(link)
    assert a.state is DtlsState.FAILED and a.srtp_keys is None
    (failed,) = events(a)
    assert isinstance(failed, DtlsFailed)
    assert failed.reason.startswith("fingerprint mismatch")
    assert str(cert_b.fingerprint()) in failed.reason
    assert str(intruder.fingerprint()) in failed.reason
    # The peer was told with a fatal alert and derived no keys either.
    assert b.state is DtlsState.FAILED and b.srtp_keys is None
    (peer_failed,) = events(b)
    assert isinstance(peer_failed, DtlsFailed)
    assert "alert" in peer_failed.reason
    assert a.get_timer() is None and b.get_timer() is None


def test_empty_fingerprint_list_rejected(cert_a: Certificate) -> None:
    with pytest.raises(ValueError, match="fingerprint"):
        DtlsSession(cert_a, DtlsRole.CLIENT, [])


def _wait_for_openssl(link: Link, session: DtlsSession) -> None:
    """OpenSSL's retransmission timer runs on the wall clock (see session.py): let that
    much real time pass (about 1 s), then move the fake clock to the session's timer."""
    timer = session.get_timer()
    assert timer is not None
    time.sleep(max(0.0, timer - link.now) + 0.05)
    link.now = timer
    session.handle_timer(link.now)
    link.pump()


@pytest.mark.parametrize("lost", [0, 1, 3], ids=["client-hello", "server-flight", "final-flight"])
def test_lost_flight_recovered_by_retransmission(
    cert_a: Certificate, cert_b: Certificate, lost: int
) -> None:
    """Drop one flight (the first datagram of it); handle_timer brings the handshake back."""
    dropped: list[int] = []

    def drop(sender: DtlsSession, index: int) -> bool:
        if index == lost:
            dropped.append(index)
            return True
        return False

    link = make_link(cert_a, cert_b, drop=drop)
    start(link)
    assert dropped == [lost]
    client, server = client_server(link)
    assert client.state is DtlsState.CONNECTING
    # Firing the timer early on the fake clock does nothing harmful: OpenSSL re-arms.
    retransmitter = client
    timer = retransmitter.get_timer()
    assert timer is not None and 0.5 < timer - link.now <= 1.0
    _wait_for_openssl(link, retransmitter)
    assert client.retransmissions == 1
    assert client.state is DtlsState.CONNECTED
    assert server.state is DtlsState.CONNECTED
    assert client.srtp_keys is not None and server.srtp_keys is not None
    assert client.srtp_keys.local_key == server.srtp_keys.remote_key


def test_early_timer_rearms_without_retransmitting(
    cert_a: Certificate, cert_b: Certificate
) -> None:
    link = make_link(cert_a, cert_b, drop=lambda sender, index: True)
    start(link)
    timer = link.a.get_timer()
    assert timer is not None
    # The fake clock jumps ahead, but OpenSSL's wall-clock timer has not expired.
    link.now = timer
    link.a.handle_timer(link.now)
    assert link.a.datagrams_to_send() == []
    assert link.a.retransmissions == 0
    rearmed = link.a.get_timer()
    assert rearmed is not None and rearmed > link.now


@pytest.mark.parametrize("timeout", [10.0, 2.5])
def test_client_handshake_timeout(cert_a: Certificate, timeout: float) -> None:
    client = DtlsSession(cert_a, DtlsRole.CLIENT, cert_a.fingerprints(), handshake_timeout=timeout)
    client.start(100.0)
    client.datagrams_to_send()  # lost
    now = 100.0
    for _ in range(100):
        timer = client.get_timer()
        if timer is None:
            break
        assert timer <= 100.0 + timeout
        now = timer
        client.handle_timer(now)
    assert client.state is DtlsState.FAILED
    assert now == pytest.approx(100.0 + timeout)
    (failed,) = events(client)
    assert isinstance(failed, DtlsFailed) and "timed out" in failed.reason
    assert client.srtp_keys is None


def test_server_timeout_runs_from_first_record(cert_a: Certificate, cert_b: Certificate) -> None:
    link = make_link(cert_a, cert_b, drop=lambda sender, index: index > 0)
    link.b.start(0.0)
    assert link.b.get_timer() is None  # a server waits for the client without a deadline
    link.now = 50.0
    link.a.start(link.now)
    link.pump()  # the ClientHello arrives at 50; everything after it is lost
    assert link.b.state is DtlsState.CONNECTING
    link.b.handle_timer(59.9)
    assert link.b.state is DtlsState.CONNECTING
    link.b.handle_timer(60.0)
    assert link.b.state is DtlsState.FAILED
    (failed,) = events(link.b)
    assert isinstance(failed, DtlsFailed) and "timed out after 10 s" in failed.reason


def test_small_mtu_fragments_handshake(cert_a: Certificate, cert_b: Certificate) -> None:
    link = make_link(cert_a, cert_b, a={"mtu": 300}, b={"mtu": 300})
    start(link)
    assert link.a.state is link.b.state is DtlsState.CONNECTED
    assert max(len(d) for _, d in link.sent) <= 300


def _records(datagram: bytes) -> list[bytes]:
    out = []
    while datagram:
        end = 13 + int.from_bytes(datagram[11:13], "big")
        out.append(datagram[:end])
        datagram = datagram[end:]
    return out


def _garbage(rng: random.Random, real: list[bytes]) -> bytes:
    """Random bytes, or a real record cut short, with trailing junk, or a wrong length.

    (Whole records replayed from another session are not garbage: they are valid DTLS and
    may legitimately break a handshake, as an on-path attacker could.)
    """
    kind = rng.randrange(4)
    if kind == 0:
        return bytes([rng.randrange(20, 64)]) + rng.randbytes(rng.randrange(0, 200))
    record = rng.choice(real)
    if kind == 1:
        return record[: rng.randrange(0, len(record))]
    if kind == 2:
        return record + rng.randbytes(rng.randrange(1, 13))
    broken = bytearray(record)
    broken[11:13] = (len(record) + rng.randrange(1, 500)).to_bytes(2, "big")
    return bytes(broken)


def test_garbage_never_raises_and_handshake_survives(
    cert_a: Certificate, cert_b: Certificate
) -> None:
    rng = random.Random(5764)
    reference = make_link(cert_a, cert_b)
    start(reference)
    real = [r for _, d in reference.sent for r in _records(d)]

    link = make_link(cert_a, cert_b)
    link.a.start(0.0)
    for i in range(5000):
        target = link.a if i % 2 else link.b
        target.receive(_garbage(rng, real), 0.0)
        if i == 2500:
            link.pump()  # half way through, let the real handshake run
    link.pump()
    assert link.a.state is link.b.state is DtlsState.CONNECTED
    assert link.a.datagrams_dropped + link.b.datagrams_dropped > 4000
    assert link.a.srtp_keys is not None and link.b.srtp_keys is not None
    assert link.a.srtp_keys.local_key == link.b.srtp_keys.remote_key


def test_corrupted_records_never_raise(cert_a: Certificate, cert_b: Certificate) -> None:
    """Well-framed records with flipped body bytes: dropped, or a clean FAILED."""
    rng = random.Random(7983)
    reference = make_link(cert_a, cert_b)
    start(reference)
    flights = [(sender.role, d) for sender, d in reference.sent]
    link = make_link(cert_a, cert_b)
    link.a.start(0.0)
    fresh_sessions = 0
    for _ in range(1000):
        sender_role, datagram = rng.choice(flights)
        target = link.b if sender_role is DtlsRole.CLIENT else link.a
        mutated = bytearray(datagram)
        for _ in range(rng.randrange(1, 4)):
            position = rng.randrange(13, len(mutated))
            mutated[position] ^= 1 << rng.randrange(8)
        target.receive(bytes(mutated), 0.0)
        assert target.state in (DtlsState.CONNECTING, DtlsState.CONNECTED, DtlsState.FAILED)
        if target.state is DtlsState.FAILED:
            (failed,) = [e for e in events(target) if isinstance(e, DtlsFailed)]
            assert failed.reason
            fresh_sessions += 1
            link = make_link(cert_a, cert_b)
            link.a.start(0.0)
    assert fresh_sessions < 1000


def _second_client_flight(link: Link) -> list[bytes]:
    """Run the handshake up to the client's second flight and return its records:
    Certificate, ClientKeyExchange, CertificateVerify, ChangeCipherSpec, Finished."""
    link.a.start(link.now)
    for d in link.a.datagrams_to_send():
        link.b.receive(d, link.now)
    for d in link.b.datagrams_to_send():
        link.a.receive(d, link.now)
    records = [r for d in link.a.datagrams_to_send() for r in _records(d)]
    assert [r[0] for r in records] == [22, 22, 22, 20, 22]
    return records


@pytest.mark.parametrize("order", [(1, 0, 2, 3, 4), (2, 1, 0, 3, 4), (0, 1, 2, 4, 3)])
def test_reordered_records_are_buffered(
    cert_a: Certificate, cert_b: Certificate, order: tuple[int, ...]
) -> None:
    link = make_link(cert_a, cert_b)
    records = _second_client_flight(link)
    for i in order:
        link.b.receive(records[i], link.now)
    link.pump()
    assert link.a.state is link.b.state is DtlsState.CONNECTED


def test_reversed_flight_recovers_by_retransmission(
    cert_a: Certificate, cert_b: Certificate
) -> None:
    """ChangeCipherSpec before the messages it follows is dropped by OpenSSL; the client's
    retransmission then completes the handshake."""
    link = make_link(cert_a, cert_b)
    records = _second_client_flight(link)
    for record in reversed(records):
        link.b.receive(record, link.now)
    link.pump()
    assert link.b.state is DtlsState.CONNECTING
    _wait_for_openssl(link, link.a)
    assert link.a.state is link.b.state is DtlsState.CONNECTED


def test_mtu_below_openssl_minimum_rejected(cert_a: Certificate) -> None:
    with pytest.raises(ValueError, match="mtu"):
        DtlsSession(cert_a, DtlsRole.CLIENT, cert_a.fingerprints(), mtu=255)


def test_replayed_old_flight_after_connect_is_harmless(
    cert_a: Certificate, cert_b: Certificate
) -> None:
    link = make_link(cert_a, cert_b)
    start(link)
    events(link.a), events(link.b)
    for sender, datagram in link.sent:
        link.peer(sender).receive(datagram, 1.0)
    link.pump()
    assert link.a.state is link.b.state is DtlsState.CONNECTED
    assert events(link.a) == [] and events(link.b) == []


def test_application_data_and_garbage_after_connect(
    cert_a: Certificate, cert_b: Certificate
) -> None:
    link = make_link(cert_a, cert_b)
    start(link)
    events(link.a), events(link.b)
    link.a.send_application_data(b"hello over dtls")
    link.pump()
    assert events(link.b) == [ApplicationData(b"hello over dtls")]
    # A well-framed application record with a bad MAC is silently dropped.
    link.a.send_application_data(b"tampered")
    (record,) = link.a.datagrams_to_send()
    link.b.receive(record[:-1] + bytes([record[-1] ^ 0xFF]), 1.0)
    assert link.b.state is DtlsState.CONNECTED
    assert events(link.b) == []


def test_close_notifies_peer(cert_a: Certificate, cert_b: Certificate) -> None:
    link = make_link(cert_a, cert_b)
    start(link)
    events(link.a), events(link.b)
    link.a.close()
    assert link.a.state is DtlsState.CLOSED
    link.pump()
    assert link.b.state is DtlsState.CLOSED
    assert events(link.b) == [DtlsClosed()]
    assert link.a.get_timer() is None and link.b.get_timer() is None
    # Anything arriving afterwards is dropped.
    link.b.receive(link.sent[0][1], 2.0)
    assert link.b.datagrams_dropped == 1
    with pytest.raises(ConnectionError):
        link.a.send_application_data(b"too late")


def test_close_while_connecting(cert_a: Certificate, cert_b: Certificate) -> None:
    link = make_link(cert_a, cert_b)
    link.a.start(0.0)
    link.a.close()
    assert link.a.state is DtlsState.CLOSED
    assert link.a.get_timer() is None
    link.a.handle_timer(100.0)
    assert link.a.state is DtlsState.CLOSED
