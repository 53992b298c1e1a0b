"""Room access tokens: HMAC-signed JWTs (HS256) carrying the room, the identity and permissions.

Shaped like LiveKit's access tokens: the server and whoever mints tokens share a secret; a token
says who the bearer is (``sub``), which room it may join (``room``), whether it may publish and
subscribe, and until when it is valid (``exp``, optionally ``nbf``). PyJWT does the encoding and
signature; this module owns the claims and the error messages.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import jwt

ALGORITHM = "HS256"
ISSUER = "sfu"
MIN_SECRET_BYTES = 32  # RFC 7518 3.2: an HS256 key at least as long as the hash


class TokenError(Exception):
    """The token is missing, malformed, expired, or does not allow what was asked."""


@dataclass(frozen=True)
class Grant:
    room: str
    publish: bool = True
    subscribe: bool = True


@dataclass(frozen=True)
class AccessToken:
    identity: str
    grant: Grant
    expires_at: int
    not_before: int | None = None
    name: str | None = None


def _check_secret(secret: str) -> bytes:
    raw = secret.encode()
    if len(raw) < MIN_SECRET_BYTES:
        raise TokenError(f"the token secret must be at least {MIN_SECRET_BYTES} bytes")
    return raw


def mint_token(
    secret: str,
    *,
    identity: str,
    room: str,
    publish: bool = True,
    subscribe: bool = True,
    ttl: int = 3600,
    name: str | None = None,
    now: float | None = None,
) -> str:
    """A signed token for ``identity`` in ``room``, valid ``ttl`` seconds from ``now``."""
    if not identity:
        raise TokenError("identity must not be empty")
    if not room:
        raise TokenError("room must not be empty")
    if ttl <= 0:
        raise TokenError("ttl must be positive")
    issued = int(time.time() if now is None else now)
    claims: dict[str, Any] = {
        "iss": ISSUER,
        "sub": identity,
        "iat": issued,
        "nbf": issued,
        "exp": issued + ttl,
        "room": room,
        "publish": publish,
        "subscribe": subscribe,
    }
    if name:
        claims["name"] = name
    return jwt.encode(claims, _check_secret(secret), algorithm=ALGORITHM)


def verify_token(
    secret: str, token: str, *, now: float | None = None, leeway: float = 5.0
) -> AccessToken:
    """Check the signature and the time window; raise TokenError with the reason otherwise."""
    if not isinstance(token, str) or not token:
        raise TokenError("a token is required")
    at = time.time() if now is None else now
    try:
        claims = jwt.decode(
            token,
            _check_secret(secret),
            algorithms=[ALGORITHM],
            options={"require": ["exp", "sub", "room"], "verify_exp": False, "verify_nbf": False},
        )
        if not isinstance(claims["exp"], int | float):
            raise TokenError("the token's 'exp' claim must be a number")
        if claims["exp"] + leeway < at:
            raise jwt.ExpiredSignatureError("expired")
        nbf = claims.get("nbf")
        if isinstance(nbf, int | float) and nbf - leeway > at:
            raise jwt.ImmatureSignatureError("not yet valid")
    except jwt.ExpiredSignatureError:
        raise TokenError("the token has expired") from None
    except jwt.ImmatureSignatureError:
        raise TokenError("the token is not valid yet") from None
    except jwt.InvalidSignatureError:
        raise TokenError("the token's signature is wrong (another secret?)") from None
    except jwt.MissingRequiredClaimError as exc:
        raise TokenError(f"the token lacks the '{exc.claim}' claim") from None
    except jwt.PyJWTError as exc:
        raise TokenError(f"malformed token: {exc}") from None
    for key in ("publish", "subscribe"):
        if not isinstance(claims.get(key, True), bool):
            raise TokenError(f"the token's '{key}' claim must be true or false")
    if not isinstance(claims["room"], str) or not isinstance(claims["sub"], str):
        raise TokenError("the token's 'room' and 'sub' claims must be strings")
    return AccessToken(
        identity=claims["sub"],
        grant=Grant(claims["room"], claims.get("publish", True), claims.get("subscribe", True)),
        expires_at=int(claims["exp"]),
        not_before=claims.get("nbf"),
        name=claims.get("name"),
    )
