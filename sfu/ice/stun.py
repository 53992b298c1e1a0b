"""Thin STUN helpers over ``aioice.stun`` for ICE checks and for the UDP mux.

``is_stun`` and ``stun_username`` are cheap enough to run on every datagram of an unknown
source: they read the header and walk the attribute list without decoding anything else.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from aioice import stun as aioice_stun
from aioice.stun import Class, Message, Method

__all__ = [
    "Class",
    "Message",
    "Method",
    "binding_error",
    "binding_request",
    "binding_success",
    "is_stun",
    "parse_stun",
    "stun_username",
]

COOKIE = aioice_stun.COOKIE
HEADER_LENGTH = 20
_USERNAME = 0x0006
_FINGERPRINT = 0x8028
_HEADER = struct.Struct("!HHI")
_ATTR = struct.Struct("!HH")


def is_stun(data: bytes) -> bool:
    """RFC 7983 demux plus the RFC 8489 header checks: first byte 0-3, magic cookie, length."""
    if len(data) < HEADER_LENGTH or data[0] > 3:
        return False
    _, length, cookie = _HEADER.unpack_from(data)
    return cookie == COOKIE and length % 4 == 0 and length == len(data) - HEADER_LENGTH


def stun_username(data: bytes) -> str | None:
    """USERNAME of a STUN message, without checking integrity; None if absent or malformed."""
    if not is_stun(data):
        return None
    pos, end = HEADER_LENGTH, len(data)
    while pos + 4 <= end:
        attr_type, attr_len = _ATTR.unpack_from(data, pos)
        value_end = pos + 4 + attr_len
        if value_end > end:
            return None
        if attr_type == _USERNAME:
            try:
                return data[pos + 4 : value_end].decode("utf-8")
            except UnicodeDecodeError:
                return None
        pos = value_end + (-attr_len % 4)
    return None


def has_fingerprint(data: bytes) -> bool:
    """True if the last attribute is FINGERPRINT (its value is checked by ``parse_stun``)."""
    return len(data) >= HEADER_LENGTH + 8 and _ATTR.unpack_from(data, len(data) - 8) == (
        _FINGERPRINT,
        4,
    )


def parse_stun(data: bytes) -> Message | None:
    """Decode a STUN message with aioice; None for anything malformed (never raises)."""
    if not is_stun(data):
        return None
    try:
        return aioice_stun.parse_message(data)
    except Exception:  # aioice raises ValueError, struct.error, KeyError... on junk
        return None


@dataclass(frozen=True)
class CheckRequest:
    """An encoded Binding request and its transaction id."""

    transaction_id: bytes
    data: bytes


def binding_request(
    username: str,
    key: bytes,
    priority: int,
    controlling: bool,
    tie_breaker: int,
    use_candidate: bool,
) -> CheckRequest:
    """An ICE connectivity check (RFC 8445 section 7.2.2), signed with the remote password."""
    msg = Message(Method.BINDING, Class.REQUEST)
    msg.attributes["USERNAME"] = username
    msg.attributes["PRIORITY"] = priority
    if controlling:
        msg.attributes["ICE-CONTROLLING"] = tie_breaker
        if use_candidate:
            msg.attributes["USE-CANDIDATE"] = None
    else:
        msg.attributes["ICE-CONTROLLED"] = tie_breaker
    msg.add_message_integrity(key)
    return CheckRequest(msg.transaction_id, bytes(msg))


def binding_success(transaction_id: bytes, mapped: tuple[str, int], key: bytes) -> bytes:
    """A Binding success response carrying XOR-MAPPED-ADDRESS, signed with our password."""
    msg = Message(Method.BINDING, Class.RESPONSE, transaction_id)
    msg.attributes["XOR-MAPPED-ADDRESS"] = (mapped[0], mapped[1])
    msg.add_message_integrity(key)
    return bytes(msg)


def binding_error(transaction_id: bytes, code: int, reason: str, key: bytes | None) -> bytes:
    """A Binding error response; 400/401 are not signed (RFC 8489 section 9.1.3)."""
    msg = Message(Method.BINDING, Class.ERROR, transaction_id)
    msg.attributes["ERROR-CODE"] = (code, reason)
    if key is None:
        msg.add_fingerprint()
    else:
        msg.add_message_integrity(key)
    return bytes(msg)
