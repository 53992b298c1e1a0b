"""The room application's request bodies, parsed and validated into dataclasses.

A body that is not one of these is refused with a reason: a missing or wrongly typed field is a
401 (as in the signaling protocol), an unknown request or field or a value out of range a 400.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sfu.apps.room.model import RoomError

MAX_ROOM = 128
MAX_DISPLAY = 64
MAX_ID = 64
MAX_TOKEN = 4096


@dataclass(frozen=True)
class Join:
    room: str
    display: str | None = None
    token: str | None = None


@dataclass(frozen=True)
class Subscribe:
    room: str
    participant: str
    token: str | None = None


@dataclass(frozen=True)
class Unpublish:
    pass


@dataclass(frozen=True)
class Leave:
    pass


@dataclass(frozen=True)
class Participants:
    pass


@dataclass(frozen=True)
class Configure:
    """A subscriber's choice for one simulcast section: a RID, a spatial index or "auto"."""

    mid: str
    layer: str | int


Request = Join | Subscribe | Unpublish | Leave | Participants | Configure

_FIELDS: dict[str, tuple[set[str], set[str]]] = {  # request -> (required, optional)
    "join": ({"room"}, {"display", "token"}),
    "subscribe": ({"room", "participant"}, {"token"}),
    "unpublish": (set(), set()),
    "leave": (set(), set()),
    "participants": (set(), set()),
    "configure": ({"mid", "layer"}, set()),
}


def _text(body: dict[str, Any], key: str, limit: int, *, optional: bool = False) -> str | None:
    if key not in body or (optional and body[key] is None):
        if optional:
            return None
        raise RoomError(401, f"'{key}' is required")
    value = body[key]
    if not isinstance(value, str):
        raise RoomError(401, f"'{key}' must be a string")
    if not value.strip():
        raise RoomError(400, f"'{key}' must not be empty")
    if len(value) > limit:
        raise RoomError(400, f"'{key}' is longer than {limit} characters")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise RoomError(400, f"'{key}' must not contain control characters")
    return value


def parse_request(body: dict[str, Any]) -> Request:
    """The typed request of a ``message`` body, or RoomError saying what is wrong."""
    kind = body.get("request")
    if kind is None:
        raise RoomError(401, "'request' is required (join, subscribe, unpublish, leave...)")
    if not isinstance(kind, str):
        raise RoomError(401, "'request' must be a string")
    spec = _FIELDS.get(kind)
    if spec is None:
        known = ", ".join(_FIELDS)
        raise RoomError(400, f"unknown room request '{kind[:64]}' (known: {known})")
    required, optional = spec
    unknown = set(body) - required - optional - {"request"}
    if unknown:
        names = ", ".join(sorted(str(u)[:64] for u in unknown))
        raise RoomError(400, f"unknown field(s) for '{kind}': {names}")
    if kind == "join":
        room = _text(body, "room", MAX_ROOM)
        assert room is not None
        return Join(
            room,
            _text(body, "display", MAX_DISPLAY, optional=True),
            _text(body, "token", MAX_TOKEN, optional=True),
        )
    if kind == "subscribe":
        room = _text(body, "room", MAX_ROOM)
        participant = _text(body, "participant", MAX_ID)
        assert room is not None and participant is not None
        return Subscribe(room, participant, _text(body, "token", MAX_TOKEN, optional=True))
    if kind == "unpublish":
        return Unpublish()
    if kind == "leave":
        return Leave()
    if kind == "configure":
        mid = _text(body, "mid", MAX_ID)
        assert mid is not None
        layer = body.get("layer")
        if isinstance(layer, bool) or not isinstance(layer, str | int):
            raise RoomError(401, "'layer' must be a rid, a spatial index or 'auto'")
        if isinstance(layer, str):
            layer = _text(body, "layer", MAX_ID)
            assert layer is not None
        return Configure(mid, layer)
    return Participants()
