"""What the doctor hands out: one :class:`Diagnosis` per media socket, the overall verdict, and
their JSON and text forms."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sfu.doctor.facts import Facts, Filtering, Nat, Race
from sfu.doctor.probe import StepResult, fmt, steps_table
from sfu.doctor.verdict import Code, Level, Verdict, classify, mapping_text


@dataclass(frozen=True)
class Diagnosis:
    """The facts, the verdict and the raw steps for one media socket."""

    facts: Facts
    verdict: Verdict
    steps: tuple[StepResult, ...] = ()

    @classmethod
    def of(cls, facts: Facts, steps: Sequence[StepResult] = ()) -> Diagnosis:
        return cls(facts, classify(facts), tuple(steps))

    def to_dict(self) -> dict[str, object]:
        f = self.facts
        return {
            "verdict": _verdict_dict(self.verdict),
            "facts": {
                "local": fmt(f.local),
                "ephemeral_port": f.ephemeral,
                "stun": [
                    {
                        "server": fmt(s.server),
                        "answered": s.answered,
                        "mapped": fmt(s.mapped),
                        "rfc5780": s.rfc5780,
                        "other_address": fmt(s.other_address),
                        "rtt_ms": round(s.rtt * 1000, 1) if s.rtt is not None else None,
                        "error": s.error,
                    }
                    for s in f.servers
                ],
                "primary": fmt(f.primary),
                "mapped": fmt(f.mapped),
                "nat": f.nat.value,
                "port_preserved": f.port_preserved,
                "mapping": f.mapping.value,
                "filtering": f.filtering.value,
                "race": f.race.value,
                "announced": [
                    {
                        "rule": a.rule,
                        "address": fmt(a.address),
                        "equals_mapped": a.equals_mapped,
                        "reach": a.reach.value,
                        "evidence": a.evidence,
                    }
                    for a in f.announced
                ],
                "turn_configured": f.turn_configured,
                "early_checks": f.early_checks,
                "evidence": dict(f.evidence),
            },
            "unknown": list(f.unknown),
            "notes": list(f.notes),
            "steps": steps_table(self.steps),
        }


@dataclass(frozen=True)
class Report:
    """Every socket's diagnosis; :attr:`verdict` is the first one that reached a STUN server."""

    diagnoses: tuple[Diagnosis, ...]
    notes: tuple[str, ...] = ()

    @property
    def main(self) -> Diagnosis | None:
        reached = [d for d in self.diagnoses if d.facts.mapped is not None]
        candidates = reached or list(self.diagnoses)
        return candidates[0] if candidates else None

    @property
    def verdict(self) -> Verdict:
        main = self.main
        if main is not None:
            return main.verdict
        return Verdict(Code.STUN_UNREACHABLE, Level.ACTION, "no media socket could be probed")

    def to_dict(self) -> dict[str, object]:
        return {
            "verdict": _verdict_dict(self.verdict),
            "sockets": [d.to_dict() for d in self.diagnoses],
            "notes": list(self.notes),
        }

    def render(self) -> str:
        """The facts and the verdict as text, for a terminal."""
        lines: list[str] = []
        for d in self.diagnoses:
            lines += _render_facts(d.facts)
            lines.append("")
        lines += [f"note: {n}" for n in self.notes]
        verdict = self.verdict
        lines.append(f"verdict ({verdict.level.value}): {verdict.line}")
        return "\n".join(lines) + "\n"


def _verdict_dict(v: Verdict) -> dict[str, str]:
    return {"code": v.code.value, "level": v.level.value, "line": v.line}


def _render_facts(f: Facts) -> list[str]:
    out = [_row("media socket", fmt(f.local) or "?")]
    for s in f.servers:
        if s.answered:
            rtt = f", rtt {s.rtt * 1000:.0f} ms" if s.rtt is not None else ""
            rfc = f", RFC 5780 (other {fmt(s.other_address)})" if s.rfc5780 else ", no RFC 5780"
            out.append(_row(f"STUN {fmt(s.server)}", f"mapped {fmt(s.mapped)}{rtt}{rfc}"))
        else:
            out.append(_row(f"STUN {fmt(s.server)}", f"no answer ({s.error or 'failed'})"))
    if f.mapped is None:
        return out + [_row("", u) for u in f.unknown]
    out.append(_row("NAT", _with(f.nat.value, f.evidence.get("nat"))))
    mapping = mapping_text(f)
    out.append(_row("mapping", _with(mapping, f.evidence.get("mapping"))))
    if f.nat is not Nat.NONE or f.filtering is not Filtering.UNKNOWN:
        out.append(_row("filtering", _with(f.filtering.value, f.evidence.get("filtering"))))
    if f.race is not Race.NOT_APPLICABLE or "race" in f.evidence:
        out.append(_row("race", _with(f.race.value, f.evidence.get("race"))))
    for a in f.announced:
        where = fmt(a.address) or "?"
        out.append(_row("announced", f"{a.rule} -> {where}: {a.reach.value} ({a.evidence})"))
    out += [_row("unknown", u) for u in f.unknown]
    out += [_row("note", n) for n in f.notes]
    return out


def _with(value: str, evidence: str | None) -> str:
    return f"{value} ({evidence})" if evidence else value


def _row(name: str, text: str) -> str:
    return f"{name:<22} {text}"
