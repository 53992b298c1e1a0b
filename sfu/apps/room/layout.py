"""A subscriber PeerConnection's m-sections, sans-IO.

The layout holds one slot per m-section the server ever offered on that PeerConnection. Given
the feeds the subscriber should receive now, :meth:`SubscriberLayout.update` appends a slot for
each new feed and deactivates the slots whose feed went away; :meth:`SubscriberLayout.media`
renders the sections of the next offer. Slots are never reused for another feed (a mid names
one media for the life of the session, RFC 8843), so a re-offer only appends sections.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sfu.apps.room.model import Feed
from sfu.sdp.capabilities import AUDIO_LEVEL_URI, VIDEO_FEEDBACK
from sfu.sdp.description import RemoteCodec
from sfu.sdp.negotiate import NegotiatedMedia, deactivate, offer_section

# Payload types the server prefers per codec in its offers; others get the next free dynamic one.
PREFERRED_PT = {"opus": 111, "vp8": 96, "vp9": 98, "h264": 102}
DYNAMIC_PT = range(96, 128)
# Header extensions a subscriber section may declare (see docs/rooms.md, "Header extensions").
FORWARDED_EXTENSIONS = {"audio": (AUDIO_LEVEL_URI,), "video": ()}
FEEDBACK = {"audio": (), "video": VIDEO_FEEDBACK}

CodecKey = tuple[str, int, int, tuple[tuple[str, str], ...]]


def _codec_key(codec: RemoteCodec) -> CodecKey:
    return (
        codec.name.lower(),
        codec.clock_rate,
        codec.channels or 1,
        tuple(sorted(codec.parameters.items())),
    )


@dataclass
class PayloadTypes:
    """Payload types of one PeerConnection: one per distinct codec configuration, so that two
    bundled sections never give one number two meanings."""

    by_codec: dict[CodecKey, int] = field(default_factory=dict)

    def assign(self, codec: RemoteCodec) -> int:
        key = _codec_key(codec)
        found = self.by_codec.get(key)
        if found is not None:
            return found
        used = set(self.by_codec.values())
        preferred = PREFERRED_PT.get(key[0])
        if preferred is not None and preferred not in used:
            pt = preferred
        else:
            free = [p for p in DYNAMIC_PT if p not in used and p not in PREFERRED_PT.values()]
            free = free or [p for p in DYNAMIC_PT if p not in used]
            if not free:
                raise ValueError("no payload type left on this PeerConnection")
            pt = free[0]
        self.by_codec[key] = pt
        return pt


@dataclass
class ExtensionMap:
    """The header extension ids declared on one PeerConnection (an id means one URI)."""

    by_uri: dict[str, int] = field(default_factory=dict)

    def admit(
        self, extensions: Sequence[tuple[int, str]], kind: str
    ) -> tuple[tuple[int, str], ...]:
        """The forwardable extensions of a feed whose ids agree with what is declared already."""
        out = []
        by_id = {i: u for u, i in self.by_uri.items()}
        for ext_id, uri in extensions:
            if uri not in FORWARDED_EXTENSIONS.get(kind, ()):
                continue
            if self.by_uri.get(uri, ext_id) != ext_id or by_id.get(ext_id, uri) != uri:
                continue
            self.by_uri[uri] = ext_id
            by_id[ext_id] = uri
            out.append((ext_id, uri))
        return tuple(out)


@dataclass
class Slot:
    """One m-section: the feed it carries (None once that feed went away) and how it is offered."""

    media: NegotiatedMedia
    feed: Feed | None

    @property
    def mid(self) -> str:
        return self.media.mid

    @property
    def active(self) -> bool:
        return self.feed is not None

    def describe(self) -> dict[str, Any]:
        feed = self.feed
        out: dict[str, Any] = {
            "mid": self.mid,
            "kind": self.media.kind,
            "active": feed is not None,
            "participant": feed.participant_id if feed else None,
            "display": feed.display if feed else None,
            "track": feed.track.mid if feed else None,
        }
        if feed is not None and feed.track.rids:
            out["layers"] = list(feed.track.rids)
        return out


@dataclass(frozen=True)
class LayoutChange:
    added: tuple[Slot, ...]
    removed: tuple[Slot, ...]  # slots just made inactive (their feeds are gone)


class SubscriberLayout:
    def __init__(self, new_ssrc: Callable[[], int] = lambda: secrets.randbits(32) or 1) -> None:
        self.slots: list[Slot] = []
        self._new_ssrc = new_ssrc
        self._payload_types = PayloadTypes()
        self._extensions = ExtensionMap()
        self._ssrcs: set[int] = set()

    def update(self, feeds: Sequence[Feed]) -> LayoutChange | None:
        """Make the layout carry exactly ``feeds``; None when nothing changes."""
        wanted = {f.key: f for f in feeds}
        removed = []
        for i, slot in enumerate(self.slots):
            if slot.feed is not None and slot.feed.key not in wanted:
                self.slots[i] = Slot(deactivate(slot.media), None)
                removed.append(slot)
        carried = {s.feed.key for s in self.slots if s.feed is not None}
        added = []
        for feed in feeds:
            if feed.key in carried:
                continue
            slot = Slot(self._section(len(self.slots), feed), feed)
            self.slots.append(slot)
            carried.add(feed.key)
            added.append(slot)
        if not added and not removed:
            return None
        return LayoutChange(tuple(added), tuple(removed))

    def _section(self, index: int, feed: Feed) -> NegotiatedMedia:
        track = feed.track
        codec = track.codec
        offered = RemoteCodec(
            self._payload_types.assign(codec),
            codec.name,
            codec.clock_rate,
            codec.channels,
            dict(codec.parameters),
            FEEDBACK.get(track.kind, ()),
        )
        ssrc = self._new_ssrc()
        while ssrc in self._ssrcs:
            ssrc = self._new_ssrc()
        self._ssrcs.add(ssrc)
        pid = feed.participant_id
        return offer_section(
            index,
            track.kind,
            offered,
            mid=str(index),
            direction="sendonly",
            send_ssrc=ssrc,
            msid=f"{pid} {pid}-{track.kind}-{index}",
            cname=pid,
            extensions=self._extensions.admit(track.extensions, track.kind),
        )

    def media(self) -> list[NegotiatedMedia]:
        return [s.media for s in self.slots]

    def streams(self) -> list[dict[str, Any]]:
        return [s.describe() for s in self.slots]

    def slot(self, mid: str) -> Slot | None:
        return next((s for s in self.slots if s.mid == mid), None)
