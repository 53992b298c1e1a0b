"""The few STUN messages the doctor sends, with the RFC 5780 attributes aioice cannot encode.

A Binding request may carry CHANGE-REQUEST (answer from the server's other IP and/or port) and
RESPONSE-PORT (answer to another port of the address the request came from). Answers are decoded
with :func:`sfu.ice.stun.parse_stun`, which knows OTHER-ADDRESS and RESPONSE-ORIGIN.
"""

from __future__ import annotations

import os
import struct
import zlib
from dataclasses import dataclass
from typing import Final

from aioice.stun import Class, Method

from sfu.engine.base import Addr
from sfu.ice.stun import COOKIE, parse_stun

BINDING_REQUEST: Final = 0x0001
CHANGE_REQUEST: Final = 0x0003
RESPONSE_PORT: Final = 0x0027
FINGERPRINT: Final = 0x8028
CHANGE_IP: Final = 0x04
CHANGE_PORT: Final = 0x02
_FINGERPRINT_XOR: Final = 0x5354554E
_HEADER = struct.Struct("!HHI12s")


def binding_request(
    transaction_id: bytes | None = None, *, change: int = 0, response_port: int | None = None
) -> tuple[bytes, bytes]:
    """(transaction id, encoded Binding request) with optional CHANGE-REQUEST flags
    (:data:`CHANGE_IP` | :data:`CHANGE_PORT`) and RESPONSE-PORT, ending with FINGERPRINT."""
    txid = transaction_id if transaction_id is not None else os.urandom(12)
    if len(txid) != 12:
        raise ValueError("a STUN transaction id is 12 bytes")
    attrs = b""
    if change:
        attrs += struct.pack("!HHI", CHANGE_REQUEST, 4, change & (CHANGE_IP | CHANGE_PORT))
    if response_port is not None:
        if not 0 < response_port < 65536:
            raise ValueError(f"bad RESPONSE-PORT {response_port}")
        attrs += struct.pack("!HHHH", RESPONSE_PORT, 4, response_port, 0)
    head = _HEADER.pack(BINDING_REQUEST, len(attrs) + 8, COOKIE, txid)
    crc = (zlib.crc32(head + attrs) ^ _FINGERPRINT_XOR) & 0xFFFFFFFF
    return txid, head + attrs + struct.pack("!HHI", FINGERPRINT, 4, crc)


def transaction_id(data: bytes) -> bytes | None:
    """The transaction id of anything shaped like STUN (cheap: no decoding)."""
    if len(data) < 20 or data[0] > 3 or data[4:8] != COOKIE.to_bytes(4, "big"):
        return None
    return data[8:20]


@dataclass(frozen=True)
class Answer:
    """What a datagram carrying one of our transaction ids says."""

    kind: Class  # RESPONSE, ERROR, or REQUEST (our own request came back: hairpin)
    mapped: Addr | None = None
    other_address: Addr | None = None
    response_origin: Addr | None = None
    error: str | None = None


def decode_answer(data: bytes) -> Answer | None:
    """Decode a Binding response, error or request; None when it is not a valid Binding."""
    msg = parse_stun(data)
    if msg is None or msg.message_method != Method.BINDING:
        return None
    attrs = msg.attributes
    if msg.message_class == Class.ERROR:
        code = attrs.get("ERROR-CODE")
        if isinstance(code, tuple) and len(code) == 2:
            reason = str(code[1]).rstrip("\x00").strip()
            return Answer(Class.ERROR, error=f"error {code[0]} {reason}".rstrip())
        return Answer(Class.ERROR, error="error response")
    if msg.message_class == Class.REQUEST:
        return Answer(Class.REQUEST)
    if msg.message_class != Class.RESPONSE:
        return None
    return Answer(
        Class.RESPONSE,
        mapped=_addr(attrs.get("XOR-MAPPED-ADDRESS") or attrs.get("MAPPED-ADDRESS")),
        other_address=_addr(attrs.get("OTHER-ADDRESS")),
        response_origin=_addr(attrs.get("RESPONSE-ORIGIN")),
    )


def _addr(value: object) -> Addr | None:
    if isinstance(value, tuple) and len(value) == 2:
        host, port = value
        if isinstance(host, str) and isinstance(port, int):
            return (host, port)
    return None
