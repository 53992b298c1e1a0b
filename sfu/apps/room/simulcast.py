"""Simulcast layers, sans-IO: what each layer of a publisher's track measures, and which one a
subscriber's consumer forwards.

A simulcast track has layers named by RID, listed from the lowest to the highest (the order of
the publisher's ``sendEncodings``, as browsers send them). :class:`LayerRates` turns byte
counters sampled from the engine into bitrates; :class:`LayerSelector` picks the layer of one
consumer from what the subscriber asked for (a ceiling, or "auto") and its bandwidth estimate,
with hysteresis and a minimum hold time so that it does not flap. :class:`SwitchRetries` says
when to ask again for the keyframe a layer switch waits for.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

AUTO = "auto"
HOLD = 2.0  # seconds a bandwidth-driven choice stays before the next one
UP_MARGIN = 1.2  # going up to a layer needs estimate >= its bitrate * UP_MARGIN
STAY_MARGIN = 0.85  # staying on (or going down to) a layer needs estimate >= bitrate * STAY_MARGIN
UP_BACKOFF = 3  # after a switch down, going up again waits HOLD * UP_BACKOFF
RATE_WEIGHT = 0.5  # weight of the newest sample in the smoothed bitrate
SWITCH_PLI_RETRY = 1.0  # seconds a switch waits for the new layer's keyframe before a new PLI
IDLE_AFTER = 2.0  # a layer whose byte count has not grown for this long is not offered


@dataclass
class LayerRates:
    """Smoothed bitrate per SSRC from cumulative byte counters and the time they were read."""

    _last: dict[int, tuple[int, float]] = field(default_factory=dict)
    _rates: dict[int, int] = field(default_factory=dict)
    _grew: dict[int, float] = field(default_factory=dict)  # when the byte count last grew

    def sample(self, ssrc: int, total_bytes: int, now: float) -> None:
        last = self._last.get(ssrc)
        self._last[ssrc] = (total_bytes, now)
        if last is None or total_bytes != last[0]:
            self._grew[ssrc] = now
        if last is None or now <= last[1] or total_bytes < last[0]:
            return
        rate = (total_bytes - last[0]) * 8 / (now - last[1])
        old = self._rates.get(ssrc)
        smoothed = rate if old is None else old + RATE_WEIGHT * (rate - old)
        self._rates[ssrc] = int(smoothed)

    def rate(self, ssrc: int) -> int | None:
        return self._rates.get(ssrc)

    def idle(self, ssrc: int, now: float) -> bool:
        """True when the stream was seen but its byte count has not grown for IDLE_AFTER
        seconds (a publisher turned that layer off, as Chromium does under congestion)."""
        grew = self._grew.get(ssrc)
        return grew is not None and now - grew >= IDLE_AFTER

    def forget(self, ssrc: int) -> None:
        self._last.pop(ssrc, None)
        self._rates.pop(ssrc, None)
        self._grew.pop(ssrc, None)


@dataclass(frozen=True)
class Layer:
    """One layer as the selector sees it: its RID and measured bitrate (None: not yet)."""

    rid: str
    bitrate: int | None = None


def resolve_request(layer: str | int, rids: Sequence[str]) -> str:
    """A requested layer (a RID, a spatial index from 0 = lowest, or "auto") as a RID or AUTO;
    ValueError if the track has no such layer."""
    if isinstance(layer, bool):
        raise ValueError("a layer is a rid, an index or 'auto'")
    if isinstance(layer, int):
        if not 0 <= layer < len(rids):
            raise ValueError(f"layer index {layer} out of range (0..{len(rids) - 1})")
        return rids[layer]
    if layer == AUTO or layer in rids:
        return layer
    raise ValueError(f"no layer {layer[:16]!r} (layers: {', '.join(rids)}, or 'auto')")


def choose_layer(
    layers: Sequence[Layer],
    *,
    ceiling: str = AUTO,
    estimate: int | None = None,
    current: str | None = None,
) -> str | None:
    """The layer to forward, at most ``ceiling``; the lowest layer is the floor.

    Without an estimate (or a current layer): the ceiling. Down: when the estimate falls under
    the current layer's bitrate times STAY_MARGIN, the highest lower layer that fits with that
    margin. Up: the highest layer whose bitrate fits with UP_MARGIN; and since a receiver's
    REMB hardly exceeds what it receives (no probing here), headroom over the current layer
    (UP_MARGIN times its bitrate) is enough to try the next layer up. A layer not measured yet
    fits."""
    if not layers:
        return None
    rids = [layer.rid for layer in layers]
    rates = [layer.bitrate for layer in layers]
    top = rids.index(ceiling) if ceiling in rids else len(layers) - 1
    if estimate is None or current not in rids:
        return rids[top]
    here = rids.index(current)
    if here > top:
        here = top  # the ceiling came down

    def fits(i: int, margin: float) -> bool:
        rate = rates[i]
        return rate is None or estimate >= rate * margin

    if not fits(here, STAY_MARGIN):
        for i in range(here - 1, -1, -1):
            if fits(i, STAY_MARGIN):
                return rids[i]
        return rids[0]
    for i in range(top, here, -1):
        if fits(i, UP_MARGIN):
            return rids[i]
    if here < top and rates[here] is not None and fits(here, UP_MARGIN):
        return rids[here + 1]  # headroom: probe the next layer
    return rids[here]


@dataclass
class LayerSelector:
    """The layer choice of one consumer of a simulcast track.

    :meth:`update` returns the layer to switch to (or None to stay). A request applies at once
    (the requested layer, or the best one below it until it shows up), whatever the estimate.
    A change driven by the estimate waits until the current layer was held ``hold`` seconds
    (``hold * UP_BACKOFF`` to go up again after it went down), so that a noisy estimate does
    not make the subscriber flap between layers.
    """

    rids: tuple[str, ...]
    hold: float = HOLD
    requested: str = AUTO
    estimate: int | None = None
    current: str | None = None
    _since: float | None = None
    _forced: bool = False  # a request came since the last update
    _pending: bool = False  # the requested layer was not reached yet
    _down_at: float | None = None  # the last switch was down for bandwidth: back off going up

    def request(self, layer: str | int) -> str:
        """Set the ceiling (a RID, an index, or "auto"); returns it as a RID or "auto"."""
        self.requested = resolve_request(layer, self.rids)
        self._forced = True
        self._pending = self.requested != AUTO
        return self.requested

    def set_estimate(self, bitrate: int | None) -> None:
        self.estimate = bitrate

    def update(self, available: Mapping[str, int | None], now: float) -> str | None:
        """``available``: RID -> measured bitrate of the layers whose SSRC is known."""
        layers = [Layer(r, available[r]) for r in self.rids if r in available]
        ceiling = self.requested
        if ceiling != AUTO and ceiling not in available:
            # the requested layer is not there (yet): the best one below it, else the lowest
            below = [r for r in self.rids[: self.rids.index(ceiling)] if r in available]
            ceiling = below[-1] if below else AUTO
        forced, self._forced = self._forced, False
        if self._pending:  # moving toward the requested layer
            forced = True
        if forced or self.current not in available or self.estimate is None:
            # a request, a lost layer, or no estimate to go by: the ceiling, at once (the
            # estimate may lower it later)
            target = choose_layer(layers, ceiling=ceiling)
            if target == self.requested:
                self._pending = False
            return self._switch(target, now, down=False)
        target = choose_layer(layers, ceiling=ceiling, estimate=self.estimate, current=self.current)
        if target is None or target == self.current or self._since is None:
            return None
        assert self.current is not None
        down = self.rids.index(target) < self.rids.index(self.current)
        wait = self.hold if down or self._down_at is None else self.hold * UP_BACKOFF
        if now - self._since < wait:
            return None
        return self._switch(target, now, down=down)

    def _switch(self, target: str | None, now: float, *, down: bool) -> str | None:
        if target is None or target == self.current:
            return None
        self.current, self._since = target, now
        self._down_at = now if down else None
        return target


@dataclass
class SwitchRetries:
    """Layer switches waiting for the new layer's keyframe, by section (mid).

    The engine keeps forwarding the old layer until that keyframe comes, so a lost PLI would
    leave the subscriber on the old layer until the encoder's next periodic keyframe; after
    ``retry`` seconds without the switch done, the keyframe is asked for again.
    """

    retry: float = SWITCH_PLI_RETRY
    _due: dict[str, float] = field(default_factory=dict)

    def start(self, mid: str, now: float) -> None:
        """A switch of ``mid`` began (its PLI went out) at ``now``."""
        self._due[mid] = now + self.retry

    def done(self, mid: str) -> None:
        self._due.pop(mid, None)

    def pending(self) -> list[str]:
        return list(self._due)

    def next_deadline(self) -> float | None:
        return min(self._due.values(), default=None)

    def due(self, now: float) -> list[str]:
        """The switches whose retry time came; each is re-armed as if its PLI went out now
        (call :meth:`done` for those found complete)."""
        ready = [mid for mid, at in self._due.items() if at <= now]
        for mid in ready:
            self._due[mid] = now + self.retry
        return ready
