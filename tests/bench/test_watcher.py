"""The watchers bench's sans-IO client (sfu.bench.watcher) against the project's own server-side
cores on a fake clock: offer, answer, ICE, DTLS, keys; both as a WHEP watcher (it offers) and in
answer mode (the server offers, as Janus does)."""

from __future__ import annotations

from typing import Protocol

import pytest

from sfu.bench.watcher import (
    AUDIO_PT,
    VIDEO_PT,
    WatcherConnected,
    WatcherCore,
    WatcherEvent,
    WatcherFailed,
    WatcherMode,
    WatcherState,
    build_offer,
)
from sfu.dtls.certificate import Certificate
from sfu.dtls.events import HandshakeCompleted
from sfu.dtls.session import DtlsRole, DtlsSession
from sfu.ice.agent import IceAgent, IceRole
from sfu.ice.candidate import Candidate, CandidateType
from sfu.rtp.srtp import SrtpProfile
from sfu.sdp.description import parse_description

CLIENT = ("198.51.100.2", 40001)
SERVER = ("198.51.100.1", 40000)


@pytest.fixture(scope="module")
def certs() -> tuple[Certificate, Certificate]:
    return Certificate.generate(), Certificate.generate()


class FakeServer:
    """What the SFU does for one WHEP session, from the same sans-IO cores."""

    def __init__(self, cert: Certificate, offer: str, setup: str = "passive") -> None:
        remote = parse_description(offer, "offer")
        self.ice = IceAgent(IceRole.CONTROLLED)
        self.ice.add_local_candidate(
            Candidate("1", 1, "udp", 2130706431, *SERVER, CandidateType.HOST), "s", 0.0
        )
        self.ice.set_remote_credentials(remote.ice_ufrag, remote.ice_pwd, 0.0)
        for _mid, line in remote.candidates:
            self.ice.add_remote_candidate(Candidate.from_sdp(line), 0.0)
        self.ice.start(0.0)
        role = DtlsRole.SERVER if setup == "passive" else DtlsRole.CLIENT
        self.dtls = DtlsSession(cert, role, list(remote.fingerprints))
        if role is DtlsRole.CLIENT:
            self.dtls.start(0.0)
        cand = Candidate("1", 1, "udp", 2130706431, *SERVER, CandidateType.HOST)
        self.answer = (
            build_offer(self.ice.local_ufrag, self.ice.local_pwd, cert, cand, 7)
            .replace("a=setup:actpass", f"a=setup:{setup}")
            .replace("a=recvonly", "a=sendonly")
        )
        self.keys: HandshakeCompleted | None = None

    def receive(self, data: bytes, now: float) -> list[bytes]:
        if data[0] < 4:
            self.ice.receive(data, "s", CLIENT, now)
        else:
            self.dtls.receive(data, now)
        return self.output(now)

    def output(self, now: float) -> list[bytes]:
        out = [d for _k, _a, d in self.ice.datagrams_to_send(now)]
        out += self.dtls.datagrams_to_send()
        while (ev := self.dtls.next_event()) is not None:
            if isinstance(ev, HandshakeCompleted):
                self.keys = ev
        return out


class Peer(Protocol):
    ice: IceAgent

    def receive(self, data: bytes, now: float) -> list[bytes]: ...

    def output(self, now: float) -> list[bytes]: ...


def _run(client: WatcherCore, server: Peer, until: float = 5.0) -> list[WatcherEvent]:
    """Deliver datagrams both ways and fire timers on a fake clock until the client reports."""
    now, events = 0.0, list[WatcherEvent]()
    to_server = [d for _a, d in client.datagrams_to_send(now)]
    to_client = server.output(now)
    while now < until and not events:
        for data in to_server:
            to_client += server.receive(data, now)
        to_server = []
        for data in to_client:
            client.receive_datagram(data, SERVER, now)
        to_client = []
        to_server = [d for addr, d in client.datagrams_to_send(now) if addr == SERVER]
        while (ev := client.next_event()) is not None:
            events.append(ev)
        if not to_server:
            timers = [t for t in (client.get_timer(), server.ice.get_timer()) if t is not None]
            now = max(now + 0.001, min(timers)) if timers else now + 0.01
            client.handle_timer(now)
            server.ice.handle_timer(now)
            to_server = [d for _a, d in client.datagrams_to_send(now)]
            to_client = server.output(now)
    for data in to_server:  # the last flight (when the watcher is the DTLS server)
        server.receive(data, now)
    return events


def test_offer_is_a_receive_only_bundle(certs: tuple[Certificate, Certificate]) -> None:
    core = WatcherCore(certs[0], CLIENT)
    offer = parse_description(core.offer(), "offer")
    assert offer.bundle == ("0", "1") and offer.setup == "actpass"
    assert [(m.kind, m.direction, m.codecs[0].payload_type) for m in offer.media] == [
        ("video", "recvonly", VIDEO_PT),
        ("audio", "recvonly", AUDIO_PT),
    ]
    assert all(m.rtcp_mux for m in offer.media)
    assert offer.fingerprints == (certs[0].fingerprint(),)
    assert [Candidate.from_sdp(c).addr for _m, c in offer.candidates] == [CLIENT]
    assert offer.end_of_candidates


@pytest.mark.parametrize("setup", ["passive", "active"])
def test_connects_and_derives_the_servers_keys(
    certs: tuple[Certificate, Certificate], setup: str
) -> None:
    client = WatcherCore(certs[0], CLIENT, profiles=(SrtpProfile.AES_CM_128_HMAC_SHA1_80,))
    server = FakeServer(certs[1], client.offer(), setup)
    client.accept_answer(server.answer, 0.0)
    assert client.state is WatcherState.CHECKING
    events = _run(client, server)
    assert len(events) == 1 and isinstance(events[0], WatcherConnected), events
    assert client.state is WatcherState.CONNECTED and events[0].remote == SERVER
    assert server.keys is not None
    mine, theirs = events[0].keys, server.keys.keys
    assert mine.profile is SrtpProfile.AES_CM_128_HMAC_SHA1_80
    # what the server protects with is what the watcher unprotects with
    assert (mine.remote_key, mine.remote_salt) == (theirs.local_key, theirs.local_salt)
    assert (mine.local_key, mine.local_salt) == (theirs.remote_key, theirs.remote_salt)


def test_consent_keeps_flowing_after_connect(certs: tuple[Certificate, Certificate]) -> None:
    client = WatcherCore(certs[0], CLIENT)
    server = FakeServer(certs[1], client.offer())
    client.accept_answer(server.answer, 0.0)
    assert isinstance(_run(client, server)[0], WatcherConnected)
    # consent checks from the server are answered, and the client sends its own
    server.ice.handle_timer(20.0)
    requests = server.output(20.0)
    assert requests and all(d[0] < 4 for d in requests)
    for data in requests:
        client.receive_datagram(data, SERVER, 20.0)
    client.handle_timer(20.0)
    replies = [d for _a, d in client.datagrams_to_send(20.0)]
    assert replies and all(d[0] < 4 for d in replies)
    client.receive_datagram(b"\x80\x60" + bytes(30), SERVER, 20.0)  # media is only counted
    assert client.media_before_handoff == 1 and client.state is WatcherState.CONNECTED


def test_a_bad_answer_or_an_unreachable_server_fails(
    certs: tuple[Certificate, Certificate],
) -> None:
    client = WatcherCore(certs[0], CLIENT)
    client.accept_answer("v=0\r\n", 0.0)
    event = client.next_event()
    assert isinstance(event, WatcherFailed) and "bad answer" in event.reason
    lonely = WatcherCore(certs[0], CLIENT)
    server = FakeServer(certs[1], lonely.offer())
    lonely.accept_answer(server.answer, 0.0)
    now = 0.0
    while lonely.state is WatcherState.CHECKING and now < 60:
        now = lonely.get_timer() or now + 1
        lonely.handle_timer(now)
        lonely.datagrams_to_send(now)  # lost
    event = lonely.next_event()
    assert isinstance(event, WatcherFailed) and "ICE failed" in event.reason


# -- answer mode: the server offers (Janus's streaming plugin) -------------------------------


def janus_like_offer(ice: IceAgent, cert: Certificate) -> str:
    """A sendonly offer shaped like Janus's: mids v/a, RTX, header extensions, SSRCs, trickle."""
    fp = cert.fingerprint()
    cand = Candidate("1", 1, "udp", 2015363327, *SERVER, CandidateType.HOST).to_sdp()

    def section(kind: str, mid: str, fmt: str, codec: list[str]) -> list[str]:
        return [
            f"m={kind} 9 UDP/TLS/RTP/SAVPF {fmt}",
            "c=IN IP4 127.0.0.1",
            "a=sendonly",
            f"a=mid:{mid}",
            "a=rtcp-mux",
            f"a=ice-ufrag:{ice.local_ufrag}",
            f"a=ice-pwd:{ice.local_pwd}",
            "a=ice-options:trickle",
            "a=setup:actpass",
            *codec,
            "a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid",
            f"a=candidate:{cand}",
            "a=end-of-candidates",
        ]

    video = [
        "a=rtpmap:100 VP8/90000",
        "a=rtcp-fb:100 nack",
        "a=rtpmap:101 rtx/90000",
        "a=fmtp:101 apt=100",
        "a=ssrc-group:FID 11 12",
        "a=ssrc:11 cname:janus",
        "a=ssrc:12 cname:janus",
    ]
    audio = ["a=rtpmap:109 opus/48000/2", "a=ssrc:13 cname:janus"]
    lines = [
        "v=0",
        "o=- 42 1 IN IP4 127.0.0.1",
        "s=Mountpoint 1",
        "t=0 0",
        "a=group:BUNDLE v a",
        f"a=fingerprint:{fp.algorithm} {fp.value}",
        *section("video", "v", "100 101", video),
        *section("audio", "a", "109", audio),
    ]
    return "\r\n".join(lines) + "\r\n"


class FakeOfferer:
    """A server that offers first, from the project's cores: controlling ICE, DTLS server."""

    def __init__(self, cert: Certificate) -> None:
        self.ice = IceAgent(IceRole.CONTROLLING)
        self.ice.add_local_candidate(
            Candidate("1", 1, "udp", 2015363327, *SERVER, CandidateType.HOST), "s", 0.0
        )
        self.cert = cert
        self.offer = janus_like_offer(self.ice, cert)
        self.dtls: DtlsSession | None = None
        self.keys: HandshakeCompleted | None = None

    def apply_answer(self, sdp: str, now: float = 0.0) -> None:
        answer = parse_description(sdp, "answer")
        role = DtlsRole.SERVER if answer.setup == "active" else DtlsRole.CLIENT
        self.dtls = DtlsSession(self.cert, role, list(answer.fingerprints))
        self.ice.set_remote_credentials(answer.ice_ufrag, answer.ice_pwd, 0.0)
        for _mid, line in answer.candidates:
            self.ice.add_remote_candidate(Candidate.from_sdp(line), 0.0)
        self.ice.start(0.0)
        if role is DtlsRole.CLIENT:  # a real server would wait for ICE: this one is early
            self.dtls.start(now)

    def receive(self, data: bytes, now: float) -> list[bytes]:
        if data[0] < 4:
            self.ice.receive(data, "s", CLIENT, now)
        elif self.dtls is not None:
            self.dtls.receive(data, now)
        return self.output(now)

    def output(self, now: float) -> list[bytes]:
        out = [d for _k, _a, d in self.ice.datagrams_to_send(now)]
        if self.dtls is not None:
            out += self.dtls.datagrams_to_send()
            while (ev := self.dtls.next_event()) is not None:
                if isinstance(ev, HandshakeCompleted):
                    self.keys = ev
        return out


def test_answers_a_server_offer_receive_only(certs: tuple[Certificate, Certificate]) -> None:
    server = FakeOfferer(certs[1])
    client = WatcherCore(certs[0], CLIENT, mode=WatcherMode.ANSWER)
    assert client.ice.role is IceRole.CONTROLLED
    sdp = client.accept_offer(server.offer, 0.0)
    assert sdp is not None and client.state is WatcherState.CHECKING
    answer = parse_description(sdp, "answer")
    assert answer.bundle == ("v", "a") and answer.setup == "passive"  # the default
    assert [(m.mid, m.direction, [c.payload_type for c in m.codecs]) for m in answer.media] == [
        ("v", "recvonly", [100]),
        ("a", "recvonly", [109]),
    ]
    assert all(not m.extensions and m.rtcp_mux for m in answer.media)  # no extensions, no RTX
    assert [Candidate.from_sdp(c).addr for _m, c in answer.candidates] == [CLIENT]
    assert answer.fingerprints == (certs[0].fingerprint(),)
    # the offer's two copies of the same candidate are one remote candidate
    assert [c.addr for c in client.ice.remote_candidates] == [SERVER]


@pytest.mark.parametrize("setup", ["passive", "active"])
def test_answer_mode_connects_with_the_offerers_keys(
    certs: tuple[Certificate, Certificate], setup: str
) -> None:
    server = FakeOfferer(certs[1])
    client = WatcherCore(
        certs[0],
        CLIENT,
        profiles=(SrtpProfile.AEAD_AES_128_GCM,),
        mode=WatcherMode.ANSWER,
        answer_setup=setup,
    )
    sdp = client.accept_offer(server.offer, 0.0)
    assert sdp is not None and f"a=setup:{setup}" in sdp
    server.apply_answer(sdp)
    events = _run(client, server)
    assert len(events) == 1 and isinstance(events[0], WatcherConnected), events
    assert client.state is WatcherState.CONNECTED and events[0].remote == SERVER
    assert server.keys is not None and server.ice.selected_pair is not None
    mine, theirs = events[0].keys, server.keys.keys
    assert mine.profile is SrtpProfile.AEAD_AES_128_GCM
    assert (mine.remote_key, mine.remote_salt) == (theirs.local_key, theirs.local_salt)


def test_answer_mode_refuses_an_offer_without_our_codecs(
    certs: tuple[Certificate, Certificate],
) -> None:
    server = FakeOfferer(certs[1])
    client = WatcherCore(certs[0], CLIENT, mode=WatcherMode.ANSWER)
    offer = server.offer.replace("VP8/90000", "H264/90000").replace("opus/48000", "PCMU/48000")
    assert client.accept_offer(offer, 0.0) is None
    event = client.next_event()
    assert isinstance(event, WatcherFailed) and "neither VP8" in event.reason
    with pytest.raises(RuntimeError):
        WatcherCore(certs[0], CLIENT).accept_offer(server.offer, 0.0)
    with pytest.raises(ValueError):
        WatcherCore(certs[0], CLIENT, mode=WatcherMode.ANSWER, answer_setup="actpass")
    # an offer that fixes its own role is followed
    active = WatcherCore(certs[0], CLIENT, mode=WatcherMode.ANSWER)
    sdp = active.accept_offer(server.offer.replace("setup:actpass", "setup:passive"), 0.0)
    assert sdp is not None and "a=setup:active" in sdp
