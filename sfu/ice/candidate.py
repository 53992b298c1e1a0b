"""ICE candidates: the SDP ``candidate`` attribute, priorities and foundations (RFC 8445, 8839)."""

from __future__ import annotations

import hashlib
import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from types import MappingProxyType

__all__ = [
    "Candidate",
    "CandidateType",
    "candidate_foundation",
    "candidate_priority",
    "is_ip_address",
    "is_mdns_name",
]

_ICE_CHARS = re.compile(r"^[A-Za-z0-9+/]{1,32}$")
_MDNS = re.compile(r"^[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*\.local\.?$", re.IGNORECASE)


class CandidateType(Enum):
    """The four candidate types of RFC 8445 section 5.1.1."""

    HOST = "host"
    SRFLX = "srflx"
    PRFLX = "prflx"
    RELAY = "relay"


# RFC 8445 section 5.1.2.2: recommended type preferences.
TYPE_PREFERENCE: Mapping[CandidateType, int] = MappingProxyType(
    {
        CandidateType.HOST: 126,
        CandidateType.PRFLX: 110,
        CandidateType.SRFLX: 100,
        CandidateType.RELAY: 0,
    }
)


def candidate_priority(
    type: CandidateType,
    local_pref: int = 65535,
    component: int = 1,
) -> int:
    """Priority of RFC 8445 section 5.1.2.1: type pref, local pref and component in 32 bits."""
    if not 0 <= local_pref <= 65535:
        raise ValueError(f"local preference {local_pref} is not in 0..65535")
    if not 1 <= component <= 256:
        raise ValueError(f"component {component} is not in 1..256")
    return (TYPE_PREFERENCE[type] << 24) + (local_pref << 8) + (256 - component)


def candidate_foundation(
    type: CandidateType,
    base_address: str,
    transport: str = "udp",
    server: str | None = None,
) -> str:
    """A foundation equal for candidates sharing type, base IP, transport and server (5.1.1.3)."""
    key = f"{type.value}|{base_address}|{transport.lower()}|{server or ''}"
    return str(int.from_bytes(hashlib.sha256(key.encode()).digest()[:4], "big"))


def is_mdns_name(host: str) -> bool:
    """True for a host name resolved by mDNS (``<uuid>.local``), which we cannot pair."""
    return not is_ip_address(host) and _MDNS.match(host) is not None


def is_ip_address(host: str) -> bool:
    """True for an IPv4 or IPv6 literal."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _int_field(value: str, name: str, low: int, high: int) -> int:
    if not value.isdigit():
        raise ValueError(f"candidate {name} {value!r} is not a number")
    number = int(value)
    if not low <= number <= high:
        raise ValueError(f"candidate {name} {number} is not in {low}..{high}")
    return number


@dataclass(frozen=True)
class Candidate:
    """One ICE candidate as signalled in SDP (``a=candidate:...``)."""

    foundation: str
    component: int
    transport: str
    priority: int
    host: str
    port: int
    type: CandidateType
    related_address: str | None = None
    related_port: int | None = None
    tcptype: str | None = None
    generation: int | None = None
    ufrag: str | None = None

    @property
    def addr(self) -> tuple[str, int]:
        """The transport address ``(host, port)``."""
        return (self.host, self.port)

    def to_sdp(self) -> str:
        """The value after ``a=candidate:``, e.g. ``1 1 udp 2130706431 1.2.3.4 5000 typ host``.

        SDP wants ``"a=candidate:" + to_sdp()``; trickle JSON wants ``"candidate:" + to_sdp()``.
        """
        parts = [
            self.foundation,
            str(self.component),
            self.transport,
            str(self.priority),
            self.host,
            str(self.port),
            "typ",
            self.type.value,
        ]
        if self.related_address is not None and self.related_port is not None:
            parts += ["raddr", self.related_address, "rport", str(self.related_port)]
        if self.tcptype is not None:
            parts += ["tcptype", self.tcptype]
        if self.generation is not None:
            parts += ["generation", str(self.generation)]
        if self.ufrag is not None:
            parts += ["ufrag", self.ufrag]
        return " ".join(parts)

    @classmethod
    def from_sdp(cls, line: str) -> Candidate:
        """Parse ``[a=][candidate:]foundation component transport ... typ T [ext...]``.

        Unknown extension pairs (``network-id 1``...) are tolerated. Raises ValueError.
        """
        text = line.strip()
        if text.startswith("a="):
            text = text[2:]
        if text.lower().startswith("candidate:"):
            text = text[len("candidate:") :]
        bits = text.split()
        if len(bits) < 8:
            raise ValueError(f"candidate has {len(bits)} fields, at least 8 expected: {line!r}")
        foundation, component, transport, priority, host, port, typ, type_name = bits[:8]
        if not _ICE_CHARS.match(foundation):
            raise ValueError(f"candidate foundation {foundation!r} is not 1-32 ice-chars")
        if typ != "typ":
            raise ValueError(f"candidate field 7 is {typ!r}, expected 'typ': {line!r}")
        try:
            cand_type = CandidateType(type_name.lower())
        except ValueError:
            raise ValueError(f"candidate type {type_name!r} is unknown") from None
        if not host or len(host) > 255:
            raise ValueError("candidate address is empty or too long")
        if not (is_ip_address(host) or re.match(r"^[A-Za-z0-9.\-_]+$", host)):
            raise ValueError(f"candidate address {host!r} is neither an IP nor a name")
        extensions = bits[8:]
        if len(extensions) % 2:
            raise ValueError(f"candidate extension {extensions[-1]!r} has no value")
        ext: dict[str, str] = {}
        for i in range(0, len(extensions), 2):
            ext.setdefault(extensions[i].lower(), extensions[i + 1])
        related_port = None
        if "rport" in ext:
            related_port = _int_field(ext["rport"], "rport", 0, 65535)
        generation = None
        if "generation" in ext:
            generation = _int_field(ext["generation"], "generation", 0, 2**32 - 1)
        return cls(
            foundation=foundation,
            component=_int_field(component, "component", 1, 256),
            transport=transport.lower(),
            priority=_int_field(priority, "priority", 0, 2**32 - 1),
            host=host,
            port=_int_field(port, "port", 0, 65535),
            type=cand_type,
            related_address=ext.get("raddr"),
            related_port=related_port,
            tcptype=ext.get("tcptype"),
            generation=generation,
            ufrag=ext.get("ufrag"),
        )

    def __str__(self) -> str:
        return f"{self.type.value} {format_addr(self.addr)}/{self.transport}"


def format_addr(addr: tuple[str, int]) -> str:
    """``1.2.3.4:5`` or ``[::1]:5``."""
    host, port = addr[0], addr[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def canonical_host(host: str) -> str:
    """The canonical text of an IP literal (``2001:DB8::1`` -> ``2001:db8::1``), else ``host``."""
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return host
