"""What `sfu natlab` measured: runs, cells, and the tables and JSON made of them."""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .matrix import SETUPS, Agent, Cell, Expectation, Flow, Trickle


@dataclass
class RunResult:
    ok: bool
    answer_to_connected: float | None
    pair: str | None
    server_candidates: list[str]
    error: str | None
    detail: dict[str, Any]

    @classmethod
    def from_client(cls, raw: dict[str, Any]) -> RunResult:
        return cls(
            ok=bool(raw.get("ok")),
            answer_to_connected=raw.get("answer_to_connected"),
            pair=pair_label(raw),
            server_candidates=list(raw.get("server_candidates") or []),
            error=raw.get("error"),
            detail=raw,
        )


def pair_label(raw: dict[str, Any]) -> str | None:
    """ "<server candidate>/<client candidate>" types of the selected pair.

    The first is the server candidate the client's pair uses (host, srflx, relay, or prflx),
    as the client saw it; the second the client candidate as the server saw it.
    """
    client_pair = raw.get("client_pair") or {}
    server = raw.get("server") or {}
    server_pair = server.get("selected_pair") or {}
    ours = (client_pair.get("remote") or {}).get("type")
    theirs = (server_pair.get("remote") or {}).get("type")
    if ours is None and theirs is None:
        return None
    return f"{ours or '?'}/{theirs or '?'}"


@dataclass
class CellResult:
    cell: Cell
    runs: list[RunResult] = field(default_factory=list)
    note: str | None = None

    @property
    def expected(self) -> Expectation | None:
        return self.cell.expected

    @property
    def successes(self) -> int:
        return sum(r.ok for r in self.runs)

    @property
    def median_ms(self) -> float | None:
        times = [r.answer_to_connected for r in self.runs if r.ok and r.answer_to_connected]
        return statistics.median(times) * 1000 if times else None

    @property
    def pairs(self) -> Counter[str]:
        return Counter(r.pair for r in self.runs if r.ok and r.pair)

    @property
    def as_expected(self) -> bool | None:
        exp = self.expected
        if exp is None or not self.runs or self.note:
            return None
        return self.successes == len(self.runs) if exp.ok else self.successes == 0

    def to_json(self) -> dict[str, Any]:
        exp = self.expected
        c = self.cell
        return {
            "cell": c.name,
            "setup": c.setup.name,
            "client": c.client.value,
            "flow": c.flow.value,
            "early_checks": c.early,
            "delay_ms": c.delay_ms,
            "agent": c.agent.value,
            "trickle_after": c.trickle.value if c.flow is Flow.CLIENT_OFFERS else None,
            "ok": self.successes,
            "runs": len(self.runs),
            "median_answer_to_connected_ms": _round(self.median_ms),
            "pairs": dict(self.pairs),
            "expected": None
            if exp is None
            else {"ok": exp.ok, "kind": exp.kind, "reason": exp.reason},
            "as_expected": self.as_expected,
            "note": self.note,
            "details": [
                {
                    "ok": r.ok,
                    "answer_to_connected": r.answer_to_connected,
                    "pair": r.pair,
                    "server_candidates": r.server_candidates,
                    "error": r.error,
                    "server": r.detail.get("server"),
                }
                for r in self.runs
            ],
        }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def progress_line(done: int, total: int, result: CellResult, run: int | None = None) -> str:
    """`[12/96] bridge-stun filtered server-offers early=on 50ms: 3/3 ok, median 145 ms`."""
    if run is not None:
        return f"[{done + 1}/{total}] {result.cell.name}: run {run + 1}..."
    median = result.median_ms
    timing = f", median {median:.0f} ms" if median is not None else ""
    note = f" ({result.note})" if result.note else ""
    return f"[{done}/{total}] {result.cell.name}: {result.successes}/{len(result.runs)} ok{timing}{note}"


def _expected_text(result: CellResult) -> str:
    exp = result.expected
    if exp is None:
        return "-"
    return "ok" if exp.ok else f"fail ({exp.kind})"


def verdict(result: CellResult) -> str:
    """ "yes"/"NO" (behaved as predicted or not), "-" (no prediction), "n/a" (not available)."""
    if result.note:
        return "n/a"
    as_expected = result.as_expected
    return "-" if as_expected is None else ("yes" if as_expected else "NO")


def format_table(results: Sequence[CellResult]) -> str:
    """A Markdown table: one row per cell."""
    rows = [
        "| cell | expected | ok/N | median answer->connected (ms) | pair (server/client cand) "
        "| as expected |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        median = r.median_ms
        pairs = ", ".join(f"{p} x{n}" if n > 1 else p for p, n in sorted(r.pairs.items()))
        rows.append(
            f"| {r.cell.name} | {_expected_text(r)} | {r.successes}/{len(r.runs)} "
            f"| {'-' if median is None else f'{median:.0f}'} | {pairs or '-'} | {verdict(r)} |"
            + (f" {r.note}" if r.note else "")
        )
    return "\n".join(rows)


def format_pivot(results: Sequence[CellResult]) -> str:
    """A compact Markdown table: one row per (setup, client, delay, agent, trickle), one column
    per (flow, early checks), each "ok/N, median" with the expected failure's kind."""

    def text(r: CellResult | None) -> str:
        if r is None:
            return "."
        out = f"{r.successes}/{len(r.runs)}"
        if r.median_ms is not None:
            out += f", {r.median_ms:.0f} ms"
        exp = r.expected
        if r.note:
            out += " (n/a)"
        elif exp is not None and not exp.ok:
            out += f" ({exp.kind})"
        if verdict(r) == "NO":
            out += " **unexpected**"
        return out

    columns = [(f, e) for e in (True, False) for f in Flow]
    index = {(r.cell.flow, r.cell.early, _row_key(r.cell)): r for r in results}
    rows = list(dict.fromkeys(_row_key(r.cell) for r in results))
    head = [f"{f.value}, early {'on' if e else 'off'}" for f, e in columns]
    lines = [
        "| setup | client | " + " | ".join(head) + " | pair (early on) |",
        "|---|---|" + "---|" * len(head) + "---|",
    ]
    for key in rows:
        setup, client, extra = key
        cells = [text(index.get((f, e, key))) for f, e in columns]
        on = [index.get((f, True, key)) for f in Flow]
        pairs = sorted({p for r in on if r is not None for p in r.pairs})
        label = f"{client} {extra}".strip()
        lines.append(
            f"| {setup} | {label} | " + " | ".join(cells) + f" | {', '.join(pairs) or '-'} |"
        )
    return "\n".join(lines)


def _row_key(cell: Cell) -> tuple[str, str, str]:
    extra = [f"{cell.delay_ms}ms"]
    if cell.agent is not Agent.AIORTC:
        extra.append(f"[{cell.agent.value}]")
    elif cell.trickle is Trickle.AFTER_OFFER:
        extra.append("trickle=offer")
    return cell.setup.name, cell.client.value, " ".join(extra)


def format_reasons(results: Sequence[CellResult]) -> str:
    """The reason behind each expected failure in the results, one line per (setup, client)."""
    seen: dict[tuple[str, str, str], str] = {}
    for r in results:
        exp = r.expected
        if exp is not None and not exp.ok:
            key = (r.cell.setup.name, r.cell.client.value, exp.kind)
            seen.setdefault(key, exp.reason)
    return "\n".join(f"- {s} x {c} ({kind}): {why}" for (s, c, kind), why in seen.items())


def summary(results: Sequence[CellResult]) -> dict[str, int]:
    """How many cells behaved as predicted, against prediction, had none, or could not run."""
    verdicts = Counter(verdict(r) for r in results)
    return {
        "cells": len(results),
        "as_expected": verdicts["yes"],
        "unexpected": verdicts["NO"],
        "no_prediction": verdicts["-"],
        "not_available": verdicts["n/a"],
    }


def to_json(results: Sequence[CellResult], runs: int, timeout: float) -> dict[str, Any]:
    """Everything measured, with each setup's `sfu serve` flags."""
    return {
        "runs_per_cell": runs,
        "timeout_s": timeout,
        "setups": {s.name: {"title": s.title, "serve_args": list(s.args)} for s in SETUPS},
        "summary": summary(results),
        "cells": [r.to_json() for r in results],
    }
