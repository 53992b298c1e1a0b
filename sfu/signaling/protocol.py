"""The signaling protocol's vocabulary: error codes and frame builders (see docs/signaling.md)."""

from __future__ import annotations

import enum
from typing import Any


class ErrorCode(enum.IntEnum):
    BAD_JSON = 400
    MISSING_FIELD = 401
    UNAUTHORIZED = 403
    NO_SUCH_HANDLE = 404
    UNKNOWN_TYPE = 405
    UNKNOWN_APP = 406
    WRONG_STATE = 409
    INVALID_SDP = 422
    LIMIT = 429
    INTERNAL = 500


class SignalingError(Exception):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = int(code)
        self.reason = reason


RequestId = str | int | None


def ack(request_id: RequestId, data: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"type": "ack", "id": request_id, "data": data or {}}


def error(request_id: RequestId, code: int, reason: str) -> dict[str, Any]:
    return {"type": "error", "id": request_id, "code": int(code), "reason": reason}


def event(handle: str, name: str, fields: dict[str, Any]) -> dict[str, Any]:
    return {"type": "event", "handle": handle, "event": name, **fields}


def require(msg: dict[str, Any], key: str, kind: type | tuple[type, ...]) -> Any:
    """A required field of the given type, or a MISSING_FIELD error naming it."""
    if key not in msg:
        raise SignalingError(ErrorCode.MISSING_FIELD, f"'{key}' is required")
    value = msg[key]
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
        names = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise SignalingError(ErrorCode.MISSING_FIELD, f"'{key}' must be a {names}")
    return value
