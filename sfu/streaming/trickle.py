"""Whole answers for WHIP and WHEP: the server's candidates go into the SDP, not trickled.

A WebSocket client receives the server's candidates as events; an HTTP client gets one answer.
With early checks on, a transport reveals its candidates only once its first check toward the
client has left (docs/architecture.md, "Candidate withholding"): usually while the answer is
built, since the offer carries the client's candidates; otherwise they come as ``candidate``
events within ``withhold_timeout``. :class:`CandidateCollector` is the PeerConnection's event
sink that gathers them, and :func:`add_candidates` writes them into the answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

__all__ = ["CandidateCollector", "add_candidates", "parse_sdpfrag"]

log = logging.getLogger(__name__)


class CandidateCollector:
    """An ``emit`` callback for a Peer: keeps the candidate events, logs the rest."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.lines: list[str] = []
        self.complete = asyncio.Event()

    def __call__(self, event: str, fields: dict[str, Any]) -> None:
        if event == "candidate":
            candidate = fields.get("candidate")
            if candidate is None:
                self.complete.set()
            elif isinstance(candidate, dict) and isinstance(candidate.get("candidate"), str):
                self.lines.append(candidate["candidate"])
        else:
            log.debug("%s: %s %s", self.name, event, fields)

    async def answer(self, sdp: str, timeout: float) -> str:
        """``sdp`` with the candidates: as it is when it has some, else once they came (or
        ``timeout`` passed)."""
        if "\na=candidate:" in sdp or "\na=end-of-candidates" in sdp:
            return sdp
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.complete.wait(), timeout)
        return add_candidates(sdp, self.lines, self.complete.is_set())


def add_candidates(sdp: str, candidates: list[str], end: bool) -> str:
    """``sdp`` with ``a=candidate`` lines (values "candidate:...") and, if ``end``,
    ``a=end-of-candidates`` at the end of its first m-section (the BUNDLE transport)."""
    lines = sdp.replace("\r\n", "\n").rstrip("\n").split("\n")
    starts = [i for i, line in enumerate(lines) if line.startswith("m=")]
    if not starts:
        return sdp
    at = starts[1] if len(starts) > 1 else len(lines)
    extra = [f"a={c}" for c in candidates] + (["a=end-of-candidates"] if end else [])
    lines[at:at] = extra
    return "\r\n".join(lines) + "\r\n"


def parse_sdpfrag(text: str) -> tuple[str | None, list[dict[str, Any] | None]]:
    """A trickle-ice-sdpfrag (RFC 8840) PATCH body: (its ice-ufrag if any, the candidates as
    signaling candidate objects, None for end-of-candidates)."""
    ufrag = None
    out: list[dict[str, Any] | None] = []
    mid: str | None = None
    for raw in text.replace("\r\n", "\n").split("\n"):
        line = raw.strip()
        if line.startswith("a=ice-ufrag:"):
            ufrag = line[len("a=ice-ufrag:") :]
        elif line.startswith("a=mid:"):
            mid = line[len("a=mid:") :]
        elif line.startswith("a=candidate:"):
            out.append({"candidate": line[2:], "sdpMid": mid, "sdpMLineIndex": None})
        elif line == "a=end-of-candidates":
            out.append(None)
    return ufrag, out
