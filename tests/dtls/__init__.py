"""Tests for sfu.dtls, plus a tiny in-memory link that shuttles datagrams between sessions."""

from __future__ import annotations

from collections.abc import Callable

from sfu.dtls import DtlsEvent, DtlsSession

# Decides whether to drop a datagram: (sender, index of the datagram on the link) -> drop?
DropRule = Callable[[DtlsSession, int], bool]


def events(session: DtlsSession) -> list[DtlsEvent]:
    """Drain all pending events of a session."""
    out = []
    while (event := session.next_event()) is not None:
        out.append(event)
    return out


class Link:
    """Two sessions wired back to back with a fake clock and an optional drop rule."""

    def __init__(self, a: DtlsSession, b: DtlsSession, drop: DropRule | None = None) -> None:
        self.a, self.b = a, b
        self.now = 0.0
        self.sent: list[tuple[DtlsSession, bytes]] = []
        self._drop = drop

    def peer(self, session: DtlsSession) -> DtlsSession:
        return self.b if session is self.a else self.a

    def pump(self, max_rounds: int = 50) -> None:
        """Deliver datagrams both ways until neither side has anything to send."""
        for _ in range(max_rounds):
            moved = False
            for sender in (self.a, self.b):
                for datagram in sender.datagrams_to_send():
                    moved = True
                    index = len(self.sent)
                    self.sent.append((sender, datagram))
                    if self._drop is None or not self._drop(sender, index):
                        self.peer(sender).receive(datagram, self.now)
            if not moved:
                return
        raise AssertionError("link never went quiet")

    def advance_to_next_timer(self) -> float | None:
        """Move the fake clock to the earliest timer, fire it on both sides, pump."""
        timers = [t for t in (self.a.get_timer(), self.b.get_timer()) if t is not None]
        if not timers:
            return None
        self.now = max(self.now, min(timers))
        for session in (self.a, self.b):
            timer = session.get_timer()
            if timer is not None and timer <= self.now:
                session.handle_timer(self.now)
        self.pump()
        return self.now
