"""The mux helpers: is_stun and stun_username, on real and broken messages."""

from __future__ import annotations

import random

from aioice.stun import Class, Message, Method

from sfu.ice import is_stun, stun_username
from sfu.ice.stun import binding_request, has_fingerprint, parse_stun


def _request(username: str = "srv1:cli1") -> bytes:
    return binding_request(username, b"x" * 22, 1, True, 5, True).data


def test_is_stun_on_stun_and_other_protocols() -> None:
    assert is_stun(_request())
    rtp = bytes([0x80, 0x60]) + bytes(30)
    dtls = bytes([22, 0xFE, 0xFD]) + bytes(30)
    assert not is_stun(rtp) and not is_stun(dtls) and not is_stun(b"") and not is_stun(b"\0" * 19)
    bad_cookie = bytearray(_request())
    bad_cookie[4] ^= 1
    assert not is_stun(bytes(bad_cookie))
    assert not is_stun(_request()[:-4])  # length field disagrees


def test_stun_username_fast_path() -> None:
    assert stun_username(_request("abcd:efgh")) == "abcd:efgh"
    assert stun_username(_request("\u00e9t\u00e9:x")) == "\u00e9t\u00e9:x"
    no_user = Message(Method.BINDING, Class.REQUEST)
    no_user.add_fingerprint()
    assert stun_username(bytes(no_user)) is None
    assert stun_username(b"garbage") is None


def test_stun_username_on_malformed() -> None:
    data = bytearray(_request("abcd:efgh"))
    data[22:24] = (0xFFFF).to_bytes(2, "big")  # USERNAME length runs off the end
    assert stun_username(bytes(data)) is None
    bad_utf8 = bytearray(_request("abcd:efgh"))
    bad_utf8[24] = 0xFF
    assert stun_username(bytes(bad_utf8)) is None


def test_helpers_never_raise_on_garbage() -> None:
    rng = random.Random(7)
    valid = _request()
    for i in range(3000):
        if i % 2:
            data = bytearray(valid)
            for _ in range(rng.randint(1, 4)):
                data[rng.randrange(len(data))] = rng.randrange(256)
            blob = bytes(data)
        else:
            blob = rng.randbytes(rng.randrange(64))
        is_stun(blob)
        stun_username(blob)
        has_fingerprint(blob)
        parse_stun(blob)
    for n in range(len(valid)):
        assert parse_stun(valid[:n]) is None
