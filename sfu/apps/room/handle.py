"""RoomHandle: one attached handle of the room application, one handler per request type.

A handle becomes the participant's own (publisher) handle with ``join``, or its subscriber
handle with ``subscribe``; it cannot be both (each handle owns at most one PeerConnection).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from sfu.apps.base import AppContext, AppError, AppHandle
from sfu.apps.room.model import RoomError
from sfu.apps.room.publisher import PublisherSession
from sfu.apps.room.requests import (
    Configure,
    Join,
    Leave,
    Participants,
    Subscribe,
    Unpublish,
    parse_request,
)
from sfu.apps.room.subscriber import SubscriberSession

if TYPE_CHECKING:
    from sfu.apps.room.app import RoomApp


class RoomHandle(AppHandle):
    def __init__(self, ctx: AppContext, app: RoomApp) -> None:
        super().__init__(ctx)
        self.app = app
        self.member: PublisherSession | None = None
        self.subscription: SubscriberSession | None = None
        self._handlers: dict[type, Callable[[Any], dict[str, Any]]] = {
            Join: self._join,
            Subscribe: self._subscribe,
            Unpublish: self._unpublish,
            Leave: self._leave,
            Participants: self._participants,
            Configure: self._configure,
        }

    async def on_message(self, body: dict[str, Any]) -> dict[str, Any]:
        try:
            request = parse_request(body)
            return self._handlers[type(request)](request)
        except RoomError as exc:
            raise AppError(exc.code, exc.reason) from None

    # -- one handler per request type -----------------------------------------------------------

    def _join(self, req: Join) -> dict[str, Any]:
        if self.member is not None:
            raise RoomError(409, f"this handle already joined room '{self.member.room[:128]}'")
        if self._subscribing:
            raise RoomError(409, "this handle subscribes: attach another handle to join")
        app = self.app
        participant, events = app.rooms.join(req.room, req.display, req.token, app.clock())
        session = PublisherSession(app, self.ctx, req.room, participant.id)
        key = (req.room, participant.id)
        self.member = session
        app.members[key] = self
        app.publishers[key] = session
        room = app.rooms.get(req.room)
        reply = {
            "result": "ok",
            "room": req.room,
            "participant": {
                "id": participant.id,
                "display": participant.display,
                "identity": participant.identity,
                "publish": participant.permissions.publish,
                "subscribe": participant.permissions.subscribe,
            },
            "participants": [
                p.describe() for p in room.participants.values() if p is not participant
            ],
        }
        app.dispatch(events)
        return reply

    def _subscribe(self, req: Subscribe) -> dict[str, Any]:
        if self.member is not None:
            raise RoomError(409, "this handle joined the room: subscribe on another handle")
        if self._subscribing:
            raise RoomError(409, "this handle is already subscribed")
        app = self.app
        app.rooms.subscribe(req.room, req.participant, req.token, app.clock())
        session = SubscriberSession(app, self.ctx, req.room, req.participant)
        app.subscribers[(req.room, req.participant)] = session
        self.subscription = session
        try:
            offer = session.start()
        except BaseException:
            session.close("failed to start")
            raise
        return {"result": "ok", "room": req.room, "participant": req.participant, **offer}

    def _unpublish(self, req: Unpublish) -> dict[str, Any]:
        member = self._member("unpublish")
        if not member.publishing:
            raise RoomError(409, "not publishing")
        member.unpublish("unpublished")
        return {"result": "ok"}

    def _leave(self, req: Leave) -> dict[str, Any]:
        if self.member is not None:
            self._leave_room("left")
        elif self._subscribing:
            assert self.subscription is not None
            self.subscription.close("left")
        else:
            raise RoomError(409, "nothing to leave: join or subscribe first")
        return {"result": "ok"}

    def _participants(self, req: Participants) -> dict[str, Any]:
        if self.member is not None:
            room = self.member.room
        elif self.subscription is not None:
            room = self.subscription.room
        else:
            raise RoomError(409, "join or subscribe first")
        return {"room": room, "participants": self.app.rooms.get(room).describe()}

    def _configure(self, req: Configure) -> dict[str, Any]:
        if not self._subscribing:
            raise RoomError(409, "'configure' needs a subscriber handle: subscribe first")
        assert self.subscription is not None
        return {"result": "ok", **self.subscription.configure(req.mid, req.layer)}

    # -- JSEP -----------------------------------------------------------------------------------

    async def on_offer(self, sdp: str) -> str:
        if self.member is None:
            if self.subscription is not None:
                raise AppError(409, "a subscriber handle takes no offers: answer the server's")
            raise AppError(409, 'join a room first ({"request": "join", "room": ...})')
        try:
            return self.member.publish(sdp)
        except RoomError as exc:
            raise AppError(exc.code, exc.reason) from None

    async def on_answer(self, sdp: str) -> None:
        if not self._subscribing:
            raise AppError(409, "no offer is waiting for an answer: subscribe first")
        assert self.subscription is not None
        self.subscription.accept_answer(sdp)

    def on_candidate(self, candidate: dict[str, Any] | None) -> None:
        if self.member is not None:
            peer = self.member.peer
            if peer is None:
                raise AppError(409, "a candidate arrived before the offer")
            if not peer.closed:
                peer.add_remote_candidate(candidate)
        elif self._subscribing:
            assert self.subscription is not None
            self.subscription.add_remote_candidate(candidate)
        else:
            raise AppError(409, "no PeerConnection to add a candidate to")

    # -- lifecycle ------------------------------------------------------------------------------

    def hangup(self, reason: str) -> None:
        if self.member is not None:
            self.member.unpublish(reason)
        if self.subscription is not None:
            self.subscription.close(reason)

    def close(self) -> None:
        if self.member is not None:
            self._leave_room("detached")
        if self.subscription is not None:
            self.subscription.close("detached")

    def _leave_room(self, reason: str) -> None:
        member = self.member
        assert member is not None
        self.member = None
        app = self.app
        key = member.key
        subscription = app.subscribers.get(key)
        if subscription is not None:
            subscription.close("left the room")
        member.close(reason)  # unpublishes: the others get "unpublished" and re-offers
        app.members.pop(key, None)
        app.publishers.pop(key, None)
        app.dispatch(app.rooms.leave(member.room, member.participant_id, reason))

    def notify(self, payload: dict[str, Any]) -> None:
        """A room event for this participant."""
        self.ctx.emit("app", {"data": payload})

    @property
    def _subscribing(self) -> bool:
        return self.subscription is not None and not self.subscription.closed

    def _member(self, request: str) -> PublisherSession:
        if self.member is None:
            raise RoomError(409, f"'{request}' needs a joined handle: join first")
        return self.member

    def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = {"app": "room"}
        if self.member is not None:
            out.update(
                role="publisher",
                room=self.member.room,
                participant=self.member.participant_id,
                **self.member.stats(),
            )
        elif self.subscription is not None:
            out.update(
                role="subscriber",
                room=self.subscription.room,
                participant=self.subscription.participant_id,
                closed=self.subscription.closed,
                **self.subscription.stats(),
            )
        return out
