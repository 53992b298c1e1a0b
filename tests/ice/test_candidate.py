"""Candidate SDP syntax, priorities and foundations."""

from __future__ import annotations

import pytest

from sfu.ice import (
    Candidate,
    CandidateType,
    candidate_foundation,
    candidate_priority,
    is_mdns_name,
)

CHROME_SRFLX = (
    "candidate:842163049 1 udp 1677729535 203.0.113.7 56143 typ srflx raddr 192.168.1.20 "
    "rport 56143 generation 0 ufrag Ab3d network-id 1 network-cost 10"
)


def test_to_sdp_is_the_attribute_value() -> None:
    cand = Candidate("1", 1, "udp", 2130706431, "1.2.3.4", 5000, CandidateType.HOST)
    assert cand.to_sdp() == "1 1 udp 2130706431 1.2.3.4 5000 typ host"
    assert Candidate.from_sdp(cand.to_sdp()) == cand


@pytest.mark.parametrize("prefix", ["", "candidate:", "a=candidate:", "  a=candidate:"])
def test_from_sdp_accepts_prefixes(prefix: str) -> None:
    cand = Candidate.from_sdp(prefix + "1 1 UDP 2130706431 1.2.3.4 5000 typ host\r\n")
    assert cand.transport == "udp" and cand.addr == ("1.2.3.4", 5000)
    assert cand.type == CandidateType.HOST


def test_from_sdp_browser_extras() -> None:
    cand = Candidate.from_sdp(CHROME_SRFLX)
    assert cand.type == CandidateType.SRFLX
    assert (cand.related_address, cand.related_port) == ("192.168.1.20", 56143)
    assert cand.generation == 0 and cand.ufrag == "Ab3d"
    assert Candidate.from_sdp(cand.to_sdp()) == cand
    assert "network-id" not in cand.to_sdp()


def test_from_sdp_tcp_and_mdns() -> None:
    tcp = Candidate.from_sdp("candidate:1 1 tcp 1518280447 192.168.1.2 9 typ host tcptype active")
    assert tcp.transport == "tcp" and tcp.tcptype == "active"
    mdns = Candidate.from_sdp(
        "candidate:2 1 udp 2122260223 3b3c5e8d-1b6f-4c2b-9f44-2a7e3c0e1d5a.local 54321 typ host"
    )
    assert is_mdns_name(mdns.host)


@pytest.mark.parametrize(
    ("line", "needle"),
    [
        ("", "fields"),
        ("candidate:", "fields"),
        ("1 1 udp x 1.2.3.4 5000 typ host", "priority"),
        ("1 1 udp 1 1.2.3.4 70000 typ host", "port"),
        ("1 0 udp 1 1.2.3.4 5000 typ host", "component"),
        ("1 1 udp 1 1.2.3.4 5000 typo host", "typ"),
        ("1 1 udp 1 1.2.3.4 5000 typ bogus", "type"),
        ("1 1 udp 1 1.2.3.4 5000 typ host raddr", "no value"),
        ("1 1 udp 1 1.2.3.4 5000 typ srflx raddr 1.1.1.1 rport x", "rport"),
        ("{" * 40 + " 1 udp 1 1.2.3.4 5000 typ host", "foundation"),
        ("1 1 udp 1 bad/host 5000 typ host", "address"),
        ("1 1 udp 99999999999 1.2.3.4 5000 typ host", "priority"),
    ],
)
def test_from_sdp_rejects_junk_clearly(line: str, needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        Candidate.from_sdp(line)


def test_priorities_follow_rfc8445() -> None:
    assert candidate_priority(CandidateType.HOST) == 2130706431
    assert candidate_priority(CandidateType.PRFLX) == 1862270975
    assert candidate_priority(CandidateType.SRFLX) == 1694498815
    assert candidate_priority(CandidateType.RELAY) == 16777215
    assert candidate_priority(CandidateType.HOST, 65535, component=2) == 2130706430
    assert candidate_priority(CandidateType.HOST, 0) == (126 << 24) + 255
    with pytest.raises(ValueError):
        candidate_priority(CandidateType.HOST, 70000)


def test_foundations_group_by_type_base_transport_server() -> None:
    f = candidate_foundation
    assert f(CandidateType.HOST, "10.0.0.1") == f(CandidateType.HOST, "10.0.0.1")
    assert f(CandidateType.HOST, "10.0.0.1") != f(CandidateType.HOST, "10.0.0.2")
    assert f(CandidateType.HOST, "10.0.0.1") != f(CandidateType.SRFLX, "10.0.0.1")
    assert f(CandidateType.HOST, "10.0.0.1", "udp") != f(CandidateType.HOST, "10.0.0.1", "tcp")
    assert f(CandidateType.RELAY, "a", server="t1") != f(CandidateType.RELAY, "a", server="t2")
    assert f(CandidateType.HOST, "10.0.0.1").isalnum() and len(f(CandidateType.HOST, "x")) <= 32


def test_is_mdns_name() -> None:
    assert is_mdns_name("3b3c5e8d-1b6f-4c2b-9f44-2a7e3c0e1d5a.local")
    assert is_mdns_name("3B3C5E8D-1B6F-4C2B-9F44-2A7E3C0E1D5A.LOCAL")
    assert not is_mdns_name("10.0.0.1")
    assert not is_mdns_name("::1")
    assert not is_mdns_name("example.com")
