"""The sans-IO TURN client against a small TURN server written here (real RFC 8656 messages both
ways, built and parsed with aioice's codec), driven with a fake clock; plus ChannelData framing."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest
from aioice.stun import Class, Message, Method, parse_message

from sfu.config import TurnServer
from sfu.webrtc.turn import (
    CHANNEL_MIN,
    REQUESTED_TRANSPORT_UDP,
    AllocationFailed,
    AllocationReady,
    ChannelBound,
    ChannelExpired,
    PermissionFailed,
    RelayedData,
    TurnClient,
    TurnEvent,
    TurnState,
    decode_channel_data,
    encode_channel_data,
    is_channel_data,
    long_term_key,
    send_indication,
)

REALM = "natlab.test"
USER, PASSWORD = "alice", "s3cret"
RELAYED = ("192.0.2.1", 49152)
MAPPED = ("198.51.100.1", 40000)
PEER = ("203.0.113.10", 5000)


class TurnServerModel:
    """Enough of a TURN server to answer one client: long-term credentials, nonces, and a
    record of what it was asked. ``answer(data)`` returns the response bytes (or None)."""

    def __init__(self, password: str = PASSWORD, lifetime: int = 600) -> None:
        self.password = password
        self.lifetime = lifetime
        self.nonce = b"nonce-1"
        self.requests: list[Message] = []
        self.indications: list[Message] = []
        self.permissions: set[str] = set()
        self.channels: dict[int, tuple[str, int]] = {}
        self.allocated = False
        self.error: tuple[int, str] | None = None  # answer the next request with this

    def key(self, username: str) -> bytes:
        return hashlib.md5(f"{username}:{REALM}:{self.password}".encode()).digest()

    def answer(self, data: bytes) -> bytes | None:
        msg = parse_message(data)
        if msg.message_class == Class.INDICATION:
            self.indications.append(msg)
            return None
        self.requests.append(msg)
        username = msg.attributes.get("USERNAME")
        if username is None or "MESSAGE-INTEGRITY" not in msg.attributes:
            return self._error(msg, 401, "Unauthorized", None)
        if msg.attributes.get("NONCE") != self.nonce:
            return self._error(msg, 438, "Stale Nonce", None)
        key = self.key(username)
        if not msg.check_message_integrity(key):
            return self._error(msg, 401, "Unauthorized", None)
        if self.error is not None:
            code, reason = self.error
            self.error = None
            return self._error(msg, code, reason, key)
        resp = Message(msg.message_method, Class.RESPONSE, msg.transaction_id)
        if msg.message_method == Method.ALLOCATE:
            assert msg.attributes["REQUESTED-TRANSPORT"] == REQUESTED_TRANSPORT_UDP
            self.allocated = True
            resp.attributes["XOR-RELAYED-ADDRESS"] = RELAYED
            resp.attributes["XOR-MAPPED-ADDRESS"] = MAPPED
            resp.attributes["LIFETIME"] = self.lifetime
        elif msg.message_method == Method.REFRESH:
            resp.attributes["LIFETIME"] = msg.attributes["LIFETIME"]
        elif msg.message_method == Method.CREATE_PERMISSION:
            self.permissions.add(msg.attributes["XOR-PEER-ADDRESS"][0])
        elif msg.message_method == Method.CHANNEL_BIND:
            peer = msg.attributes["XOR-PEER-ADDRESS"]
            self.channels[msg.attributes["CHANNEL-NUMBER"]] = peer
            self.permissions.add(peer[0])
        resp.add_message_integrity(key)
        return bytes(resp)

    def _error(self, msg: Message, code: int, reason: str, key: bytes | None) -> bytes:
        resp = Message(msg.message_method, Class.ERROR, msg.transaction_id)
        resp.attributes["ERROR-CODE"] = (code, reason)
        if code in (401, 438):
            resp.attributes["REALM"] = REALM
            resp.attributes["NONCE"] = self.nonce
        if key is not None:
            resp.add_message_integrity(key)
        else:
            resp.add_fingerprint()
        return bytes(resp)


class Harness:
    """A client and the server model, with a fake clock and the wire between them."""

    def __init__(self, server: TurnServerModel | None = None, **kw: object) -> None:
        self.server = server or TurnServerModel()
        self.client = TurnClient(USER, PASSWORD, **kw)  # type: ignore[arg-type]
        self.now = 1000.0
        self.events: list[TurnEvent] = []
        self.sent: list[bytes] = []
        self.drop = False  # lose everything the client sends

    def exchange(self) -> None:
        """Deliver everything in flight, both ways, until quiet."""
        for _ in range(20):
            out = self.client.datagrams_to_send(self.now)
            if not out:
                break
            self.sent += out
            for data in out:
                if self.drop or is_channel_data(data):
                    continue
                reply = self.server.answer(data)
                if reply is not None:
                    self.client.receive(reply, self.now)
        while (ev := self.client.next_event()) is not None:
            self.events.append(ev)

    def advance(self, to: float) -> None:
        """Run every timer due up to ``to``."""
        while (at := self.client.get_timer()) is not None and at <= to:
            self.now = max(self.now, at)
            self.client.handle_timer(self.now)
            self.exchange()
        self.now = to

    def allocate(self) -> None:
        self.client.allocate(self.now)
        self.exchange()
        assert self.client.state is TurnState.READY, self.events


def last(h: Harness, method: Method) -> Message:
    return next(m for m in reversed(h.server.requests) if m.message_method == method)


# -- framing ----------------------------------------------------------------------------------


def test_channel_data_round_trip_with_and_without_padding() -> None:
    payload = bytes(range(21))
    frame = encode_channel_data(0x4001, payload)
    assert frame[:4] == bytes([0x40, 0x01, 0x00, 21]) and len(frame) == 25
    assert decode_channel_data(frame) == (0x4001, payload)
    padded = encode_channel_data(0x4001, payload, pad=True)
    assert len(padded) == 28 and padded.endswith(b"\0\0\0")
    assert decode_channel_data(padded) == (0x4001, payload)  # padding ignored


def test_channel_data_rejects_what_is_not() -> None:
    assert decode_channel_data(b"\x40\x00\x00\x08abc") is None  # shorter than its length
    assert decode_channel_data(b"\x80\x00\x00\x00") is None  # RTP, not ChannelData
    assert decode_channel_data(b"\x40\x00") is None
    with pytest.raises(ValueError):
        encode_channel_data(0x3FFF, b"x")


def test_long_term_key_is_md5_of_user_realm_password() -> None:
    expected = hashlib.md5(b"alice:natlab.test:s3cret").digest()
    assert long_term_key(USER, REALM, PASSWORD) == expected


def test_send_indication_carries_peer_and_data() -> None:
    msg = parse_message(send_indication(PEER, b"hello"))
    assert (msg.message_method, msg.message_class) == (Method.SEND, Class.INDICATION)
    assert msg.attributes["XOR-PEER-ADDRESS"] == PEER
    assert msg.attributes["DATA"] == b"hello"
    assert "FINGERPRINT" in msg.attributes


# -- allocation -------------------------------------------------------------------------------


def test_allocate_answers_the_401_challenge_with_long_term_credentials() -> None:
    h = Harness()
    h.allocate()
    first, second = h.server.requests[:2]
    assert "USERNAME" not in first.attributes and "MESSAGE-INTEGRITY" not in first.attributes
    assert first.attributes["REQUESTED-TRANSPORT"] == REQUESTED_TRANSPORT_UDP
    assert second.attributes["USERNAME"] == USER
    assert second.attributes["REALM"] == REALM
    assert second.attributes["NONCE"] == b"nonce-1"
    assert second.check_message_integrity(long_term_key(USER, REALM, PASSWORD))
    assert h.events == [AllocationReady(RELAYED, MAPPED, 600)]
    assert (h.client.relayed, h.client.mapped) == (RELAYED, MAPPED)


def test_wrong_password_fails_with_a_hint() -> None:
    h = Harness(TurnServerModel(password="other"))
    h.client.allocate(h.now)
    h.exchange()
    assert h.client.state is TurnState.FAILED
    [ev] = h.events
    assert isinstance(ev, AllocationFailed)
    assert "401" in ev.reason and "password" in ev.reason


def test_rest_credentials_authenticate() -> None:
    secret = "S3CRET"
    server = TurnServer(
        "turn:192.0.2.1:3478?transport=udp", "192.0.2.1", 3478, shared_secret=secret
    )
    username, password = server.credentials(1_700_000_000.0)
    assert username == str(1_700_000_000 + 86400)
    digest = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    assert password == base64.b64encode(digest).decode()
    model = TurnServerModel(password=password)
    client = TurnClient(username, password)
    client.allocate(0.0)
    for _ in range(3):
        for data in client.datagrams_to_send(0.0):
            reply = model.answer(data)
            if reply is not None:
                client.receive(reply, 0.0)
    assert client.state is TurnState.READY
    assert model.requests[-1].attributes["USERNAME"] == username


def test_response_failing_integrity_is_ignored_and_retransmission_goes_on() -> None:
    h = Harness()
    h.allocate()
    h.client.permit(PEER[0], h.now)
    [req_bytes] = h.client.datagrams_to_send(h.now)
    req = parse_message(req_bytes)
    forged = Message(Method.CREATE_PERMISSION, Class.RESPONSE, req.transaction_id)
    forged.add_message_integrity(b"not the key")
    assert h.client.receive(bytes(forged), h.now)
    assert h.client.counters["responses failing integrity"] == 1
    h.advance(h.now + 0.3)  # retransmitted, then answered by the real server
    assert PEER[0] in h.server.permissions
    assert h.client.counters["retransmissions"] == 1


def test_unanswered_allocate_retransmits_then_fails() -> None:
    h = Harness()
    h.drop = True
    h.client.allocate(h.now)
    h.exchange()
    start = h.now
    times = []
    while h.client.state is TurnState.ALLOCATING:
        at = h.client.get_timer()
        assert at is not None
        h.advance(at)
        times.append(round(at - start, 3))
    assert times == [0.25, 0.75, 1.75, 3.75]  # 4 tries, RTO doubling from 250 ms
    assert len(h.sent) == 4
    assert isinstance(h.events[-1], AllocationFailed)
    assert "no answer after 4 tries" in h.events[-1].reason


def test_allocation_mismatch_deletes_the_stale_allocation_then_allocates() -> None:
    h = Harness()
    h.server.error = None
    h.client.allocate(h.now)
    h.exchange()  # 401 then authenticated Allocate -> success (a fresh server)
    # a second client on the same 5-tuple (our own previous run) meets 437
    h2 = Harness(h.server)
    h.server.error = (437, "Allocation Mismatch")
    h2.client.allocate(h2.now)
    h2.exchange()
    refresh = last(h2, Method.REFRESH)
    assert refresh.attributes["LIFETIME"] == 0
    assert h2.client.state is TurnState.ALLOCATING
    h2.advance(h2.now + 2.0)
    assert h2.client.state is TurnState.READY
    assert h2.client.counters["stale allocation deleted"] == 1


# -- refresh ----------------------------------------------------------------------------------


def test_refresh_before_expiry_and_stale_nonce() -> None:
    h = Harness()
    h.allocate()
    t0 = h.now
    h.server.nonce = b"nonce-2"  # the server rotated its nonce
    h.advance(t0 + 539.0)
    assert not any(m.message_method == Method.REFRESH for m in h.server.requests)
    h.advance(t0 + 541.0)
    refreshes = [m for m in h.server.requests if m.message_method == Method.REFRESH]
    assert [m.attributes["NONCE"] for m in refreshes] == [b"nonce-1", b"nonce-2"]
    assert h.client.counters["438 challenges"] == 1
    assert h.client.expires_at == pytest.approx(t0 + 540.0 + 600.0)
    assert h.client.state is TurnState.READY


def test_unanswered_refreshes_lose_the_allocation_at_expiry() -> None:
    h = Harness()
    h.allocate()
    h.client.want_channel(PEER, h.now)
    h.exchange()
    t0 = h.now
    h.drop = True
    h.advance(t0 + 601.0)
    assert h.client.state is TurnState.FAILED
    assert any(isinstance(e, ChannelExpired) and e.reason == "allocation lost" for e in h.events)
    assert isinstance(h.events[-1], AllocationFailed)
    assert "Refresh" in h.events[-1].reason  # retried every 5 s, given up before expiry
    assert h.client.counters["Refresh sent"] >= 5


def test_close_releases_the_allocation() -> None:
    h = Harness()
    h.allocate()
    h.client.close(h.now)
    h.exchange()
    assert last(h, Method.REFRESH).attributes["LIFETIME"] == 0
    assert h.client.state is TurnState.CLOSED and h.client.get_timer() is None


# -- permissions, Send and Data indications ---------------------------------------------------


def test_send_holds_data_until_the_permission_exists_then_uses_send_indications() -> None:
    h = Harness()
    h.allocate()
    h.client.send(PEER, b"check-1", h.now)
    out = h.client.datagrams_to_send(h.now)
    [req] = [parse_message(d) for d in out]
    assert req.message_method == Method.CREATE_PERMISSION
    assert req.attributes["XOR-PEER-ADDRESS"][0] == PEER[0]
    h.client.send(PEER, b"check-2", h.now)  # still pending: held too
    assert h.client.datagrams_to_send(h.now) == []
    h.client.receive(h.server.answer(out[0]) or b"", h.now)
    h.exchange()
    assert [m.attributes["DATA"] for m in h.server.indications] == [b"check-1", b"check-2"]
    assert all(m.attributes["XOR-PEER-ADDRESS"] == PEER for m in h.server.indications)
    h.client.send(PEER, b"check-3", h.now)
    h.exchange()
    assert h.server.indications[-1].attributes["DATA"] == b"check-3"


def test_permissions_are_refreshed_while_wanted_and_lapse_after_forget() -> None:
    h = Harness()
    h.allocate()
    t0 = h.now
    h.client.permit(PEER[0], h.now)
    h.exchange()

    def count() -> int:
        return sum(m.message_method == Method.CREATE_PERMISSION for m in h.server.requests)

    h.advance(t0 + 239.0)
    assert count() == 1
    h.advance(t0 + 241.0)
    assert count() == 2
    h.client.forget(PEER[0])
    h.advance(t0 + 900.0)
    assert count() == 2


def test_refused_permission_is_reported() -> None:
    h = Harness()
    h.allocate()
    h.server.error = (403, "Forbidden IP")
    h.client.send(PEER, b"x", h.now)
    h.exchange()
    assert h.events[-1] == PermissionFailed(PEER[0], "CreatePermission: 403 Forbidden IP")
    assert h.server.indications == []


def test_data_indication_is_unwrapped() -> None:
    h = Harness()
    h.allocate()
    ind = Message(Method.DATA, Class.INDICATION)
    ind.attributes["XOR-PEER-ADDRESS"] = PEER
    ind.attributes["DATA"] = b"\x00\x01stun..."
    assert h.client.receive(bytes(ind), h.now)
    assert h.client.next_event() == RelayedData(PEER, b"\x00\x01stun...")


# -- channels ---------------------------------------------------------------------------------


def test_channel_bind_then_channel_data_both_ways_and_refresh() -> None:
    h = Harness()
    h.allocate()
    t0 = h.now
    h.client.want_channel(PEER, h.now)
    h.exchange()
    bind = last(h, Method.CHANNEL_BIND)
    assert bind.attributes["CHANNEL-NUMBER"] == CHANNEL_MIN
    assert bind.attributes["XOR-PEER-ADDRESS"] == PEER
    assert h.events[-1] == ChannelBound(PEER, CHANNEL_MIN)
    assert h.client.channel(PEER) == CHANNEL_MIN
    h.client.send(PEER, b"rtcp", h.now)
    [frame] = h.client.datagrams_to_send(h.now)
    assert decode_channel_data(frame) == (CHANNEL_MIN, b"rtcp")
    assert h.client.unwrap(encode_channel_data(CHANNEL_MIN, b"dtls", pad=True)) == (PEER, b"dtls")
    assert h.client.unwrap(encode_channel_data(CHANNEL_MIN + 1, b"x")) is None
    h.advance(t0 + 481.0)  # refreshed before the 10 min lifetime
    binds = [m for m in h.server.requests if m.message_method == Method.CHANNEL_BIND]
    assert len(binds) == 2 and binds[1].attributes["CHANNEL-NUMBER"] == CHANNEL_MIN
    assert sum(isinstance(e, ChannelBound) for e in h.events) == 1


def test_dropped_channel_expires_and_its_number_cools_down() -> None:
    h = Harness()
    h.allocate()
    t0 = h.now
    h.client.want_channel(PEER, h.now)
    h.exchange()
    h.client.drop_channel(PEER)
    h.advance(t0 + 601.0)
    assert h.events[-1] == ChannelExpired(PEER, CHANNEL_MIN, "not refreshed")
    assert h.client.channel(PEER) is None
    other = ("203.0.113.11", 6000)
    h.client.want_channel(other, h.now)
    h.exchange()
    assert h.client.channel(other) == CHANNEL_MIN + 1  # 0x4000 may not be reused for 5 min
