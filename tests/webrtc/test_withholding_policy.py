"""When transports withhold their candidates: only where the container NAT race can happen."""

from __future__ import annotations

import ipaddress

from sfu.config import AnnounceMode, AnnounceRule, MediaConfig
from sfu.engine.pyengine import PyEngine
from sfu.webrtc.server import MediaSettings, WebRtcServer


def _server(*rules: AnnounceRule) -> WebRtcServer:
    media = MediaConfig(listen=(ipaddress.IPv4Address("127.0.0.1"),), port=0, include_loopback=True)
    server = WebRtcServer(PyEngine(), MediaSettings(media, rules))
    server.open()
    return server


def test_without_announce_rules_candidates_are_withheld() -> None:
    server = _server()
    try:
        assert server.withhold_candidates
    finally:
        server.engine.stop()


def test_an_explicit_announce_rule_means_a_published_port_no_withholding() -> None:
    rule = AnnounceRule(
        None, ipaddress.IPv4Address("203.0.113.5"), 40000, None, AnnounceMode.REPLACE
    )
    server = _server(rule)
    try:
        assert not server.withhold_candidates
        hosts = [c.host for c, _ in server.local_candidates()]
        assert hosts == ["203.0.113.5"]
    finally:
        server.engine.stop()


def test_an_auto_rule_still_withholds() -> None:
    rule = AnnounceRule(None, None, None, None, AnnounceMode.REPLACE)  # public = auto
    server = _server(rule)
    try:
        assert server.withhold_candidates
    finally:
        server.engine.stop()
