"""The rooms themselves, sans-IO: who is in which room, what they publish, who may do what.

Nothing here touches a socket, the engine or a clock: every mutation takes what it needs
(``now`` for token checks) and returns typed events saying who must be told what. The
application (``app.py``) delivers the events and drives the PeerConnections.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from sfu.auth.tokens import AccessToken, TokenError, verify_token
from sfu.sdp.description import RemoteCodec


class RoomError(Exception):
    """A refused room request: ``code`` and ``reason`` become the signaling error."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


@dataclass(frozen=True)
class Source:
    """Where a track's packets come from in the engine: a transport and an SSRC."""

    transport_id: int
    ssrc: int


@dataclass(frozen=True)
class Track:
    """One published audio or video stream."""

    mid: str  # the publisher's mid
    kind: str  # "audio" | "video"
    codec: RemoteCodec  # as the publisher sends it (its payload type)
    source: Source
    extensions: tuple[tuple[int, str], ...] = ()  # (id, uri) the publisher's packets carry
    # simulcast: the layers' RIDs, lowest first; their SSRCs are learned from the packets and
    # ``source.ssrc`` is 0 (see sfu.apps.room.simulcast)
    rids: tuple[str, ...] = ()

    @property
    def simulcast(self) -> bool:
        return bool(self.rids)

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"mid": self.mid, "kind": self.kind, "codec": self.codec.name}
        if self.rids:
            out["layers"] = list(self.rids)
        return out


@dataclass(frozen=True)
class Permissions:
    publish: bool = True
    subscribe: bool = True


@dataclass
class Participant:
    id: str
    display: str
    identity: str | None = None
    permissions: Permissions = field(default_factory=Permissions)
    tracks: tuple[Track, ...] = ()
    subscribed: bool = False

    def describe(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "display": self.display,
            "identity": self.identity,
            "tracks": [t.describe() for t in self.tracks],
        }


@dataclass(frozen=True)
class Feed:
    """A track as a subscriber receives it: whose it is, and the track."""

    participant_id: str
    display: str
    track: Track

    @property
    def key(self) -> tuple[str, str, Source]:
        """Identifies the feed: republishing on a new transport is a new feed."""
        return (self.participant_id, self.track.mid, self.track.source)


# -- events ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RoomEvent:
    """Something every participant in ``recipients`` is told about ``participant``."""

    room: str
    participant: dict[str, Any]  # a snapshot (Participant.describe())
    recipients: tuple[str, ...]

    name = ""

    def payload(self) -> dict[str, Any]:
        return {"room": self.room, "event": self.name, "participant": self.participant}

    @property
    def tracks_changed(self) -> bool:
        """Subscribers of the room must be re-offered."""
        return False


@dataclass(frozen=True)
class ParticipantJoined(RoomEvent):
    name = "joined"


@dataclass(frozen=True)
class ParticipantLeft(RoomEvent):
    reason: str = "left"
    had_tracks: bool = False
    name = "left"

    def payload(self) -> dict[str, Any]:
        return {**super().payload(), "reason": self.reason}

    @property
    def tracks_changed(self) -> bool:
        return self.had_tracks


@dataclass(frozen=True)
class TracksPublished(RoomEvent):
    tracks: tuple[Track, ...] = ()
    name = "published"

    def payload(self) -> dict[str, Any]:
        return {**super().payload(), "tracks": [t.describe() for t in self.tracks]}

    @property
    def tracks_changed(self) -> bool:
        return True


@dataclass(frozen=True)
class TracksUnpublished(RoomEvent):
    tracks: tuple[Track, ...] = ()
    name = "unpublished"

    def payload(self) -> dict[str, Any]:
        return {**super().payload(), "tracks": [t.describe() for t in self.tracks]}

    @property
    def tracks_changed(self) -> bool:
        return True


# -- rooms -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RoomPolicy:
    """Who may enter which room. With ``token_secret`` every join and subscribe needs a token."""

    token_secret: str | None = None
    create_rooms: bool = True  # False: only the rooms in ``rooms`` exist
    rooms: tuple[str, ...] = ()
    max_participants: int = 50
    max_tracks: int = 4  # per publisher


@dataclass
class Room:
    name: str
    participants: dict[str, Participant] = field(default_factory=dict)
    permanent: bool = False  # listed in the policy: kept when empty

    def others(self, participant_id: str) -> tuple[str, ...]:
        return tuple(p for p in self.participants if p != participant_id)

    def describe(self) -> list[dict[str, Any]]:
        return [p.describe() for p in self.participants.values()]


class Rooms:
    """Every room of the server, and the rules to join them."""

    def __init__(
        self, policy: RoomPolicy, new_id: Callable[[], str] = lambda: secrets.token_hex(4)
    ) -> None:
        self.policy = policy
        self._new_id = new_id
        self.rooms: dict[str, Room] = {r: Room(r, permanent=True) for r in policy.rooms}

    def get(self, room: str) -> Room:
        found = self.rooms.get(room)
        if found is None:
            raise RoomError(404, f"no room '{room[:128]}'")
        return found

    def participant(self, room: str, participant_id: str) -> Participant:
        found = self.get(room).participants.get(participant_id)
        if found is None:
            raise RoomError(404, f"no participant '{participant_id[:64]}' in room '{room[:128]}'")
        return found

    def _check_token(self, room: str, token: str | None, now: float) -> AccessToken | None:
        secret = self.policy.token_secret
        if secret is None:
            return None
        try:
            access = verify_token(secret, token or "", now=now)
        except TokenError as exc:
            raise RoomError(403, str(exc)) from None
        if access.grant.room != room:
            raise RoomError(403, f"the token is for room '{access.grant.room[:128]}'")
        return access

    def join(
        self, room: str, display: str | None, token: str | None, now: float
    ) -> tuple[Participant, list[RoomEvent]]:
        """Enter ``room`` (creating it if allowed); the events tell the others."""
        access = self._check_token(room, token, now)
        target = self.rooms.get(room)
        if target is None:
            if not self.policy.create_rooms:
                raise RoomError(404, f"no room '{room[:128]}' (rooms are not created on demand)")
            target = Room(room)
        if len(target.participants) >= self.policy.max_participants:
            raise RoomError(429, f"room '{room[:128]}' is full")
        identity = access.identity if access else None
        if identity is not None and any(
            p.identity == identity for p in target.participants.values()
        ):
            raise RoomError(409, f"'{identity[:64]}' is already in room '{room[:128]}'")
        name = display or (access.name if access else None) or identity or "guest"
        pid = self._new_id()
        while pid in target.participants:
            pid = self._new_id()
        permissions = (
            Permissions(access.grant.publish, access.grant.subscribe) if access else Permissions()
        )
        participant = Participant(pid, name, identity, permissions)
        others = tuple(target.participants)
        target.participants[pid] = participant
        self.rooms[room] = target
        return participant, [ParticipantJoined(room, participant.describe(), others)]

    def leave(self, room: str, participant_id: str, reason: str = "left") -> list[RoomEvent]:
        target = self.rooms.get(room)
        if target is None or participant_id not in target.participants:
            return []
        participant = target.participants.pop(participant_id)
        if not target.participants and not target.permanent:
            del self.rooms[room]
        return [
            ParticipantLeft(
                room,
                participant.describe(),
                tuple(target.participants),
                reason,
                bool(participant.tracks),
            )
        ]

    def publish(self, room: str, participant_id: str, tracks: Iterable[Track]) -> list[RoomEvent]:
        participant = self.participant(room, participant_id)
        new = tuple(tracks)
        if not participant.permissions.publish:
            raise RoomError(403, "the token does not allow publishing")
        if participant.tracks:
            raise RoomError(409, "already publishing: unpublish first")
        if not new:
            raise RoomError(422, "nothing to publish: the offer sends no audio or video")
        if len(new) > self.policy.max_tracks:
            raise RoomError(400, f"at most {self.policy.max_tracks} tracks per publisher")
        participant.tracks = new
        room_ = self.get(room)
        return [TracksPublished(room, participant.describe(), room_.others(participant_id), new)]

    def check_publish(self, room: str, participant_id: str) -> None:
        """Raise RoomError unless the participant may publish now (before SDP is looked at)."""
        participant = self.participant(room, participant_id)
        if not participant.permissions.publish:
            raise RoomError(403, "the token does not allow publishing")
        if participant.tracks:
            raise RoomError(409, "already publishing: unpublish first")

    def unpublish(self, room: str, participant_id: str) -> list[RoomEvent]:
        target = self.rooms.get(room)
        participant = target.participants.get(participant_id) if target else None
        if target is None or participant is None or not participant.tracks:
            return []
        gone, participant.tracks = participant.tracks, ()
        return [
            TracksUnpublished(room, participant.describe(), target.others(participant_id), gone)
        ]

    def subscribe(
        self, room: str, participant_id: str, token: str | None, now: float
    ) -> Participant:
        """Mark ``participant_id`` subscribed, after checking the token and its permission."""
        access = self._check_token(room, token, now)
        participant = self.participant(room, participant_id)
        if access is not None and access.identity != participant.identity:
            raise RoomError(403, "the token is for another participant")
        if not participant.permissions.subscribe:
            raise RoomError(403, "the token does not allow subscribing")
        if participant.subscribed:
            raise RoomError(409, "this participant already has a subscription")
        participant.subscribed = True
        return participant

    def unsubscribe(self, room: str, participant_id: str) -> None:
        target = self.rooms.get(room)
        participant = target.participants.get(participant_id) if target else None
        if participant is not None:
            participant.subscribed = False

    def feeds_for(self, room: str, participant_id: str) -> list[Feed]:
        """Every track of every other participant, in join order: what the subscriber gets."""
        target = self.rooms.get(room)
        if target is None:
            return []
        return [
            Feed(p.id, p.display, t)
            for p in target.participants.values()
            if p.id != participant_id
            for t in p.tracks
        ]
