"""Room access tokens: minted, verified, and refused with a reason when wrong."""

from __future__ import annotations

import jwt
import pytest

from sfu.auth.tokens import TokenError, mint_token, verify_token

SECRET = "0123456789abcdef-0123456789abcdef"


def test_round_trip_carries_room_identity_and_permissions() -> None:
    token = mint_token(
        SECRET, identity="alice", room="r1", publish=False, ttl=60, name="Alice", now=1000
    )
    t = verify_token(SECRET, token, now=1030)
    assert (t.identity, t.grant.room, t.grant.publish, t.grant.subscribe) == (
        "alice",
        "r1",
        False,
        True,
    )
    assert t.expires_at == 1060 and t.name == "Alice"


@pytest.mark.parametrize(
    ("make", "now", "reason"),
    [
        (lambda: mint_token(SECRET, identity="a", room="r", ttl=60, now=1000), 1100, "expired"),
        (
            lambda: mint_token(SECRET, identity="a", room="r", ttl=60, now=1000),
            900,
            "not valid yet",
        ),
        (
            lambda: mint_token(
                "another-secret-of-32-bytes-or-more", identity="a", room="r", now=1000
            ),
            1001,
            "signature",
        ),
        (lambda: "not.a.token", 1000, "malformed"),
        (lambda: "", 1000, "required"),
        (
            lambda: jwt.encode({"sub": "a", "exp": 2000}, SECRET.encode(), algorithm="HS256"),
            1000,
            "'room'",
        ),
        (
            lambda: jwt.encode(
                {"sub": "a", "room": "r", "exp": 2000}, SECRET.encode(), algorithm="HS512"
            ),
            1000,
            "malformed",
        ),
        (
            lambda: jwt.encode(
                {"sub": "a", "room": "r", "exp": 2000, "publish": "yes"},
                SECRET.encode(),
                algorithm="HS256",
            ),
            1000,
            "publish",
        ),
    ],
)
def test_bad_tokens_are_refused_with_a_reason(make: object, now: float, reason: str) -> None:
    with pytest.raises(TokenError, match=reason):
        verify_token(SECRET, make(), now=now)  # type: ignore[operator]


def test_unsigned_tokens_are_refused() -> None:
    token = jwt.encode({"sub": "a", "room": "r", "exp": 2000}, None, algorithm="none")
    with pytest.raises(TokenError):
        verify_token(SECRET, token, now=1000)


def test_short_secrets_and_empty_claims_are_refused() -> None:
    with pytest.raises(TokenError, match="at least"):
        mint_token("short", identity="a", room="r")
    with pytest.raises(TokenError, match="identity"):
        mint_token(SECRET, identity="", room="r")
    with pytest.raises(TokenError, match="ttl"):
        mint_token(SECRET, identity="a", room="r", ttl=0)
