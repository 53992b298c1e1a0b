"""The verdict: one line for the operator, from a small decision table over :class:`Facts`.

The first row whose condition holds wins (docs/doctor.md has the same table):

=====================  ======================================================================
code                   when
=====================  ======================================================================
NO_STUN_SERVER         no STUN server configured
STUN_UNREACHABLE       no STUN server answered
ANNOUNCED_SILENT       an announced address does not reach the media socket from outside
PUBLIC                 no NAT, unsolicited UDP reaches the socket
PUBLIC_FIREWALLED      no NAT, a firewall drops unsolicited UDP
ANNOUNCED_OK           an announced address reaches the media socket from outside
FORWARDED              behind a NAT that forwards unsolicited UDP to the socket (published)
SYMMETRIC              endpoint-dependent mapping in front of the server
NO_RACE                NAT, but unsolicited UDP is dropped before conntrack keeps it
RACE                   NAT that keeps unsolicited UDP: the container NAT race
NAT_UNKNOWN            behind a NAT whose behaviour could not be measured
=====================  ======================================================================
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from sfu.doctor.facts import Facts, Filtering, Mapping, Nat, Race, Reach
from sfu.doctor.probe import fmt


class Level(enum.Enum):
    """How much the operator has to do."""

    OK = "ok"  # nothing
    INFO = "info"  # works for most clients; the line says who is left out
    ACTION = "action"  # something to fix
    UNKNOWN = "unknown"  # could not tell


class Code(enum.Enum):
    NO_STUN_SERVER = "no-stun-server"
    STUN_UNREACHABLE = "stun-unreachable"
    ANNOUNCED_SILENT = "announced-silent"
    PUBLIC = "public"
    PUBLIC_FIREWALLED = "public-firewalled"
    ANNOUNCED_OK = "announced-ok"
    FORWARDED = "forwarded"
    SYMMETRIC = "symmetric"
    NO_RACE = "no-race"
    RACE = "race"
    NAT_UNKNOWN = "nat-unknown"


@dataclass(frozen=True)
class Verdict:
    code: Code
    level: Level
    line: str


_REST = "browsers behind a symmetric NAT will need TURN or a published port"
_EARLY = "early checks cover browsers that reveal a candidate"


def classify(facts: Facts) -> Verdict:
    """The verdict for these facts (pure; see the module's table)."""
    verdict = _table(facts)
    if facts.ephemeral and verdict.code not in (Code.NO_STUN_SERVER, Code.STUN_UNREACHABLE):
        line = verdict.line + " (probed from another port than the media port: see /api/doctor)"
        return Verdict(verdict.code, verdict.level, line)
    return verdict


def _table(facts: Facts) -> Verdict:
    mapped = fmt(facts.mapped) or "?"
    port = facts.local[1]
    if facts.stun_configured == 0:
        return Verdict(
            Code.NO_STUN_SERVER,
            Level.UNKNOWN,
            "no STUN server configured: nothing can see this host from outside "
            "(give --stun HOST[:PORT] or [ice] stun_servers)",
        )
    if facts.mapped is None:
        servers = ", ".join(fmt(s.server) or "?" for s in facts.servers) or "none resolved"
        return Verdict(
            Code.STUN_UNREACHABLE,
            Level.ACTION,
            f"no STUN server answered ({servers}): allow UDP to it, or announce the public "
            "address by hand",
        )
    # an announced address equal to the STUN-mapped one is only as good as the srflx candidate:
    # the NAT rows below judge it
    silent = [a for a in facts.announced if a.reach is Reach.SILENT and not a.equals_mapped]
    if silent:
        address = fmt(silent[0].address) or "?"
        return Verdict(
            Code.ANNOUNCED_SILENT,
            Level.ACTION,
            f"announced address {address} does not answer from outside: publish it to UDP "
            f"port {port} of this server (docker run -p {_port_of(address)}:{port}/udp) "
            "or fix the announce rule",
        )
    if facts.nat is Nat.NONE:
        if facts.filtering is Filtering.FILTERED:
            return Verdict(
                Code.PUBLIC_FIREWALLED,
                Level.INFO,
                f"public address {mapped}, but a firewall drops unsolicited UDP to it: "
                f"{_EARLY}; open UDP port {port} for the rest" + _turn_suffix(facts),
            )
        return Verdict(
            Code.PUBLIC, Level.OK, f"public address {mapped} on this host (no NAT): nothing to do"
        )
    answering = [a for a in facts.announced if a.reach is Reach.ANSWERS]
    if answering:
        address = fmt(answering[0].address) or "?"
        return Verdict(
            Code.ANNOUNCED_OK,
            Level.OK,
            f"announced address {address} answers from outside: clients reach the media port "
            "directly; nothing to do",
        )
    if facts.filtering is Filtering.OPEN:
        return Verdict(
            Code.FORWARDED,
            Level.OK,
            f"unsolicited UDP to {mapped} reaches the media socket (port published as is): "
            "nothing to do",
        )
    if facts.mapping.symmetric:
        level = Level.INFO if facts.turn_configured else Level.ACTION
        tail = (
            "; TURN is configured: clients will use the relay"
            if facts.turn_configured
            else ": configure TURN or publish the port and announce it"
        )
        return Verdict(
            Code.SYMMETRIC,
            level,
            f"{facts.mapping.value} mapping (symmetric NAT) in front of the server: its STUN "
            f"address is of no use to clients" + tail,
        )
    if facts.race is Race.ABSENT:
        return Verdict(
            Code.NO_RACE,
            Level.INFO,
            "host firewall drops unsolicited UDP before conntrack keeps it: the race cannot "
            f"happen here; {_EARLY}; {_REST}" + _turn_suffix(facts),
        )
    if facts.race is Race.EXISTS:
        if not facts.early_checks:
            return Verdict(
                Code.RACE,
                Level.ACTION,
                "NAT in front of the server keeps unsolicited UDP (bridge network, ports not "
                "published) and early checks are OFF: server-offer sessions with filtered "
                "browsers will fail; enable early checks, publish the port or configure TURN",
            )
        return Verdict(
            Code.RACE,
            Level.INFO,
            "bridge network, ports not published (the NAT keeps unsolicited UDP, the race "
            f"exists): {_EARLY}; {_REST}" + _turn_suffix(facts),
        )
    early = _EARLY if facts.early_checks else "early checks are OFF: enable them"
    why = "the STUN server does not support RFC 5780" if not facts.rfc5780 else "probes failed"
    return Verdict(
        Code.NAT_UNKNOWN,
        Level.UNKNOWN,
        f"behind a NAT ({mapped}); {why}, so the race is unknown: {early}; publish the port "
        "or configure TURN to be sure" + _turn_suffix(facts),
    )


def _turn_suffix(facts: Facts) -> str:
    return " (TURN is configured: the relay covers them)" if facts.turn_configured else ""


def _port_of(address: str) -> str:
    return address.rsplit(":", 1)[-1]


def mapping_text(facts: Facts) -> str:
    """The mapping fact in words."""
    if facts.mapping is Mapping.NO_NAT:
        return "none (no NAT)"
    text = facts.mapping.value
    if facts.port_preserved is not None:
        text += ", port preserved" if facts.port_preserved else ", port NOT preserved"
    return text
