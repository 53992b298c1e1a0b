"""The room application: the rooms, every participant's sessions, and the fan-out between them.

:class:`RoomApp` owns the sans-IO :class:`~sfu.apps.room.model.Rooms` and finds sessions by
participant: it delivers the model's events to the participants' handles, re-offers every
subscription of a room whose tracks changed, and routes feedback from a subscriber to the
publisher it is about.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Hashable, Iterable, Mapping
from typing import TYPE_CHECKING

from sfu.apps.base import AppContext, AppHandle, Application
from sfu.apps.room.model import Feed, RoomEvent, RoomPolicy, Rooms
from sfu.auth.tokens import MIN_SECRET_BYTES

if TYPE_CHECKING:
    from sfu.apps.room.handle import RoomHandle
    from sfu.apps.room.publisher import PublisherSession
    from sfu.apps.room.subscriber import SubscriberSession

log = logging.getLogger(__name__)

# The configuration's name for [rooms] token_secret (what `sfu token` reads too), then the name
# this application read before the [rooms] section existed.
ENV_TOKEN_SECRETS = ("SFU_ROOMS_TOKEN_SECRET", "SFU_ROOM_TOKEN_SECRET")
# Engine consumer ids of this application start here, away from the echo test's (from 1).

Key = tuple[str, str]  # (room, participant id)


class RoomApp(Application):
    name = "room"

    def __init__(
        self,
        policy: RoomPolicy | None = None,
        *,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        policy = policy or RoomPolicy()
        secret = policy.token_secret
        if secret is not None and len(secret.encode()) < MIN_SECRET_BYTES:
            raise ValueError(f"the room token secret must be at least {MIN_SECRET_BYTES} bytes")
        self.rooms = Rooms(policy)
        self.clock = clock  # wall time, for token expiry
        self.monotonic = monotonic  # for rate limits and estimates
        self.members: dict[Key, RoomHandle] = {}  # the participant's own (join) handle
        self.publishers: dict[Key, PublisherSession] = {}
        self.subscribers: dict[Key, SubscriberSession] = {}

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> RoomApp:
        """The application as ``sfu serve`` builds it for now: the token secret from
        ``SFU_ROOMS_TOKEN_SECRET`` (or ``SFU_ROOM_TOKEN_SECRET``); unset or empty, rooms are
        open. A ``[rooms]`` table in a configuration file does not reach it yet: see
        docs/rooms.md."""
        env = os.environ if environ is None else environ
        name, secret = next(
            ((n, env[n].strip()) for n in ENV_TOKEN_SECRETS if env.get(n, "").strip()),
            (ENV_TOKEN_SECRETS[0], None),
        )
        try:
            return cls(RoomPolicy(token_secret=secret))
        except ValueError as exc:
            raise SystemExit(f"{name}: {exc}") from None

    def create_handle(self, ctx: AppContext) -> AppHandle:
        from sfu.apps.room.handle import RoomHandle

        return RoomHandle(ctx, self)

    # -- fan-out --------------------------------------------------------------------------------

    def dispatch(self, events: Iterable[RoomEvent]) -> None:
        """Tell each recipient, then re-offer the subscriptions of rooms whose tracks changed."""
        rooms: list[str] = []
        for ev in events:
            payload = ev.payload()
            for pid in ev.recipients:
                member = self.members.get((ev.room, pid))
                if member is not None:
                    member.notify(payload)
            if ev.tracks_changed and ev.room not in rooms:
                rooms.append(ev.room)
        for room in rooms:
            for (r, _), sub in list(self.subscribers.items()):
                if r != room:
                    continue
                try:
                    sub.refresh()
                except Exception:  # one broken subscription must not fail another's request
                    log.exception("re-offering subscription %s", sub.key)
                    sub.close("internal error")

    def subscription_ended(self, session: SubscriberSession) -> None:
        key = (session.room, session.participant_id)
        if self.subscribers.get(key) is session:
            del self.subscribers[key]
            self.rooms.unsubscribe(session.room, session.participant_id)
        for publisher in self.publishers.values():
            if publisher.room == session.room:
                publisher.forget_subscriber(session.key)

    # -- feedback toward publishers -----------------------------------------------------------

    def request_keyframe(self, room: str, feed: Feed, ssrc: int | None = None) -> None:
        """A keyframe of ``feed`` (of its simulcast layer ``ssrc``) toward its publisher."""
        publisher = self.publishers.get((room, feed.participant_id))
        if publisher is not None:
            publisher.request_keyframe(feed.track.source, ssrc)

    def layers_changed(self, room: str, publisher_id: str) -> None:
        """A publisher learned a simulcast layer: its subscribers may switch to it."""
        for (r, _), sub in list(self.subscribers.items()):
            if r == room and not sub.closed:
                sub.layers_changed(publisher_id)

    def on_estimate(self, room: str, publisher_id: str, subscriber: Hashable, bitrate: int) -> None:
        publisher = self.publishers.get((room, publisher_id))
        if publisher is not None:
            publisher.on_estimate(subscriber, bitrate)
