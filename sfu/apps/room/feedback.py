"""RTCP feedback relayed upstream, sans-IO: keyframe requests and receiver bandwidth estimates.

Both take the time as an argument; the publisher session owns one of each and sends what they
say (a PLI, a REMB) on its PeerConnection.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field

PLI_MIN_INTERVAL = 0.5
REMB_TTL = 5.0
REMB_REFRESH = 1.0


@dataclass
class KeyframeGate:
    """Keyframe requests toward a publisher's streams: at most one PLI per stream per
    ``interval``. A request inside the interval is deferred to its end rather than dropped, so
    a subscriber whose consumer started just after another's keyframe still gets one."""

    interval: float = PLI_MIN_INTERVAL
    _last: dict[int, float] = field(default_factory=dict)
    _deferred: dict[int, float] = field(default_factory=dict)  # ssrc -> when it may go

    def request(self, ssrc: int, now: float) -> bool:
        """True: send a PLI for ``ssrc`` now. False: it is sent later (see :meth:`due`)."""
        last = self._last.get(ssrc)
        if last is None or now - last >= self.interval:
            self._last[ssrc] = now
            self._deferred.pop(ssrc, None)
            return True
        self._deferred.setdefault(ssrc, last + self.interval)
        return False

    def next_deadline(self) -> float | None:
        return min(self._deferred.values(), default=None)

    def due(self, now: float) -> list[int]:
        """The deferred requests whose time came (each counts as sent now)."""
        ready = [ssrc for ssrc, at in self._deferred.items() if at <= now]
        for ssrc in ready:
            del self._deferred[ssrc]
            self._last[ssrc] = now
        return ready

    def forget(self, ssrc: int) -> None:
        self._last.pop(ssrc, None)
        self._deferred.pop(ssrc, None)


def remb_shares(
    bitrate: int, ssrcs: Sequence[int], owners: Mapping[int, Hashable]
) -> dict[Hashable, int]:
    """Split one subscriber's REMB over the video streams it covers.

    ``owners`` maps the subscriber's video SSRCs (the server's consumers) to whatever names
    their publisher. A REMB covers a set of SSRCs with one bitrate: each covered stream gets an
    equal share, and a publisher gets the sum of its streams' shares.
    """
    covered = [s for s in dict.fromkeys(ssrcs) if s in owners]
    if not covered or bitrate <= 0:
        return {}
    share = bitrate // len(covered)
    out: dict[Hashable, int] = {}
    for ssrc in covered:
        owner = owners[ssrc]
        out[owner] = out.get(owner, 0) + share
    return out


@dataclass
class BitrateEstimates:
    """What each subscriber can receive of one publisher's video; the minimum goes upstream.

    :meth:`update` says whether a REMB should go now (the value dropped), :meth:`due` whether
    the periodic refresh is due. Estimates older than ``ttl`` no longer count.

    With ``highest`` (a simulcast publisher) the largest estimate goes upstream instead: each
    subscriber is served by a layer that fits its own estimate, so the slowest one must not cap
    the encoder (the publisher adds what its lower layers need, see PublisherSession).
    """

    ttl: float = REMB_TTL
    refresh: float = REMB_REFRESH
    highest: bool = False
    _estimates: dict[Hashable, tuple[int, float]] = field(default_factory=dict)
    _last_sent: tuple[int, float] | None = None

    def update(self, subscriber: Hashable, bitrate: int, now: float) -> int | None:
        """Record an estimate; returns the bitrate to send at once, if the minimum dropped."""
        self._estimates[subscriber] = (bitrate, now)
        value = self.value(now)
        if value is None:
            return None
        if self._last_sent is None or value < self._last_sent[0]:
            self._last_sent = (value, now)
            return value
        return None

    def remove(self, subscriber: Hashable) -> None:
        self._estimates.pop(subscriber, None)

    def minimum(self, now: float) -> int | None:
        for key in [k for k, (_, at) in self._estimates.items() if now - at > self.ttl]:
            del self._estimates[key]
        return min((b for b, _ in self._estimates.values()), default=None)

    def value(self, now: float) -> int | None:
        """What goes upstream: the minimum, or with ``highest`` the maximum."""
        low = self.minimum(now)  # also drops the stale estimates
        if not self.highest or low is None:
            return low
        return max(b for b, _ in self._estimates.values())

    def due(self, now: float) -> int | None:
        """The bitrate to send if the last REMB is older than ``refresh`` (None: nothing)."""
        value = self.value(now)
        if value is None:
            self._last_sent = None
            return None
        if self._last_sent is not None and now - self._last_sent[1] < self.refresh:
            return None
        self._last_sent = (value, now)
        return value
