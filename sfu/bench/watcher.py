"""A sans-IO watcher: the client half of ICE + DTLS-SRTP for the watchers bench.

:class:`WatcherCore` works both ways round. As a WHEP watcher (``WatcherMode.OFFER``) it writes a
receive-only offer (VP8 video, Opus audio, BUNDLE, rtcp-mux, one host candidate), takes the
server's answer and runs ICE as the controlling agent (the offerer controls). When the server
offers (``WatcherMode.ANSWER``, as Janus's streaming plugin does) it takes that offer, answers
receive-only with the offer's VP8 and Opus payload types, and runs ICE as the controlled agent.
Then DTLS in the role the descriptions leave it (:class:`~sfu.dtls.session.DtlsSession`). To an
``actpass`` offer it answers ``a=setup:passive`` by default, so the server starts DTLS when its
own ICE says it may: as the client, our ClientHello can reach Janus before it is ready for DTLS,
and OpenSSL's first retransmission is a second later (``answer_setup="active"`` does that).
Datagrams and a clock go in, datagrams and typed events come out; it never touches a socket.
Once :class:`WatcherConnected` comes out the media belongs to whoever holds the socket (the bench
hands it to a C receiver); STUN keeps flowing through :meth:`WatcherCore.receive_datagram` for
consent freshness (RFC 7675).
"""

from __future__ import annotations

import secrets
from collections import deque
from dataclasses import dataclass
from enum import Enum

from sfu.dtls.certificate import Certificate
from sfu.dtls.events import DtlsFailed, HandshakeCompleted
from sfu.dtls.session import DtlsRole, DtlsSession, SrtpKeys
from sfu.ice.agent import IceAgent, IceRole, IceState
from sfu.ice.candidate import Candidate, CandidateType, candidate_priority
from sfu.ice.events import ConsentExpired, IceStateChanged, SelectedPairChanged
from sfu.rtp.srtp import SrtpProfile
from sfu.sdp.description import RemoteDescription, RemoteMedia, SdpError, parse_description

__all__ = [
    "AUDIO_PT",
    "VIDEO_PT",
    "WatcherConnected",
    "WatcherCore",
    "WatcherEvent",
    "WatcherFailed",
    "WatcherMode",
    "WatcherState",
    "build_answer",
    "build_offer",
]

Addr = tuple[str, int]
VIDEO_PT = 96  # VP8, as the mountpoint's default
AUDIO_PT = 111  # Opus
_SOCKET = "udp"  # the one socket key: a watcher has one socket


class WatcherMode(Enum):
    OFFER = "offer"  # WHEP: the watcher offers, controls ICE
    ANSWER = "answer"  # the server offers (Janus): the watcher answers, is controlled


class WatcherState(Enum):
    NEW = "new"
    CHECKING = "checking"  # descriptions exchanged, ICE running
    HANDSHAKING = "handshaking"  # ICE has a pair, DTLS running
    CONNECTED = "connected"  # SRTP keys known
    FAILED = "failed"


@dataclass(frozen=True)
class WatcherConnected:
    """DTLS is done: ``keys.remote_*`` unprotect what the server sends from ``remote``."""

    keys: SrtpKeys
    remote: Addr


@dataclass(frozen=True)
class WatcherFailed:
    reason: str


WatcherEvent = WatcherConnected | WatcherFailed


def build_offer(
    ufrag: str, pwd: str, certificate: Certificate, candidate: Candidate, session_id: int
) -> str:
    """A receive-only BUNDLE offer with a VP8 video and an Opus audio section."""
    fingerprint = certificate.fingerprint()
    common = [
        "c=IN IP4 0.0.0.0",
        "a=rtcp:9 IN IP4 0.0.0.0",
        f"a=ice-ufrag:{ufrag}",
        f"a=ice-pwd:{pwd}",
        f"a=fingerprint:{fingerprint.algorithm} {fingerprint.value}",
        "a=setup:actpass",
        "a=recvonly",
        "a=rtcp-mux",
    ]
    lines = [
        "v=0",
        f"o=- {session_id} 1 IN IP4 0.0.0.0",
        "s=-",
        "t=0 0",
        "a=group:BUNDLE 0 1",
        "a=msid-semantic:WMS",
        f"m=video 9 UDP/TLS/RTP/SAVPF {VIDEO_PT}",
        *common,
        "a=mid:0",
        f"a=rtpmap:{VIDEO_PT} VP8/90000",
        f"a=rtcp-fb:{VIDEO_PT} nack",
        f"a=rtcp-fb:{VIDEO_PT} nack pli",
        f"a=candidate:{candidate.to_sdp()}",
        "a=end-of-candidates",
        f"m=audio 9 UDP/TLS/RTP/SAVPF {AUDIO_PT}",
        *common,
        "a=mid:1",
        f"a=rtpmap:{AUDIO_PT} opus/48000/2",
    ]
    return "\r\n".join(lines) + "\r\n"


_WANTED = {"video": "vp8", "audio": "opus"}


def _answer_section(m: RemoteMedia, common: list[str]) -> tuple[list[str], bool]:
    """One answer m-section: receive-only with the offer's VP8 / Opus, or rejected (port 0)."""
    codec = next((c for c in m.codecs if c.name.lower() == _WANTED.get(m.kind, "")), None)
    if codec is None:
        first = m.codecs[0].payload_type if m.codecs else 0
        return [f"m={m.kind} 0 {m.protocol} {first}", "c=IN IP4 0.0.0.0", f"a=mid:{m.mid}"], False
    pt = codec.payload_type
    rtpmap = f"a=rtpmap:{pt} {codec.name}/{codec.clock_rate}"
    if codec.channels:
        rtpmap += f"/{codec.channels}"
    lines = [f"m={m.kind} 9 UDP/TLS/RTP/SAVPF {pt}", *common, f"a=mid:{m.mid}", rtpmap]
    if m.kind == "video":
        lines += [f"a=rtcp-fb:{pt} nack", f"a=rtcp-fb:{pt} nack pli"]
    return lines, True


def build_answer(
    offer: RemoteDescription,
    ufrag: str,
    pwd: str,
    certificate: Certificate,
    candidate: Candidate,
    session_id: int,
    setup: str = "active",
) -> str:
    """A receive-only answer to ``offer``: VP8 and Opus accepted, anything else rejected, no
    header extensions and no RTX (so the server sends neither), one candidate, no trickle."""
    fingerprint = certificate.fingerprint()
    common = [
        "c=IN IP4 0.0.0.0",
        "a=rtcp:9 IN IP4 0.0.0.0",
        f"a=ice-ufrag:{ufrag}",
        f"a=ice-pwd:{pwd}",
        f"a=fingerprint:{fingerprint.algorithm} {fingerprint.value}",
        f"a=setup:{setup}",
        "a=recvonly",
        "a=rtcp-mux",
    ]
    body: list[str] = []
    accepted: list[str] = []
    for m in offer.media:
        lines, ok = _answer_section(m, common)
        if ok:
            if not accepted:  # the candidate goes in the first accepted section (BUNDLE)
                lines += [f"a=candidate:{candidate.to_sdp()}", "a=end-of-candidates"]
            accepted.append(m.mid)
        body += lines
    head = ["v=0", f"o=- {session_id} 1 IN IP4 0.0.0.0", "s=-", "t=0 0"]
    if accepted:
        head.append(f"a=group:BUNDLE {' '.join(accepted)}")
    head.append("a=msid-semantic:WMS")
    return "\r\n".join(head + body) + "\r\n"


class WatcherCore:
    """One watcher's ICE agent and DTLS session (see the module docstring)."""

    def __init__(
        self,
        certificate: Certificate,
        local_addr: Addr,
        profiles: tuple[SrtpProfile, ...] = (
            SrtpProfile.AEAD_AES_128_GCM,
            SrtpProfile.AES_CM_128_HMAC_SHA1_80,
        ),
        mode: WatcherMode = WatcherMode.OFFER,
        answer_setup: str = "passive",
    ) -> None:
        if answer_setup not in ("active", "passive"):
            raise ValueError(f"answer_setup must be active or passive, not {answer_setup!r}")
        self.certificate = certificate
        self.local_addr = local_addr
        self.profiles = profiles
        self.mode = mode
        self.answer_setup = answer_setup  # our DTLS role when an offer says actpass
        self.state = WatcherState.NEW
        self.ice = IceAgent(
            IceRole.CONTROLLING if mode is WatcherMode.OFFER else IceRole.CONTROLLED
        )
        self.dtls: DtlsSession | None = None
        self.keys: SrtpKeys | None = None
        self.remote: Addr | None = None
        self.media_before_handoff = 0  # RTP/RTCP that arrived before the socket was handed off
        self._dtls_role = DtlsRole.CLIENT
        self._events: deque[WatcherEvent] = deque()
        self._out: list[tuple[Addr, bytes]] = []
        priority = candidate_priority(CandidateType.HOST, 65535, 1)
        self.candidate = Candidate(
            "1", 1, "udp", priority, local_addr[0], local_addr[1], CandidateType.HOST
        )

    def offer(self) -> str:
        return build_offer(
            self.ice.local_ufrag,
            self.ice.local_pwd,
            self.certificate,
            self.candidate,
            secrets.randbits(62),
        )

    def accept_answer(self, sdp: str, now: float) -> None:
        """Apply the server's answer and start ICE (a bad answer fails the watcher)."""
        if self.mode is not WatcherMode.OFFER or self.state is not WatcherState.NEW:
            raise RuntimeError("accept_answer needs a new watcher in offer mode")
        try:
            answer = parse_description(sdp, "answer")
        except SdpError as exc:
            self._fail(f"bad answer: {exc}")
            return
        if answer.setup == "active":
            self._dtls_role = DtlsRole.SERVER
        self._apply_remote(answer, now)

    def accept_offer(self, sdp: str, now: float) -> str | None:
        """Answer the server's offer and start ICE; None (and :class:`WatcherFailed`) when the
        offer is unusable: not parseable, or neither VP8 video nor Opus audio in it."""
        if self.mode is not WatcherMode.ANSWER or self.state is not WatcherState.NEW:
            raise RuntimeError("accept_offer needs a new watcher in answer mode")
        try:
            offer = parse_description(sdp, "offer")
        except SdpError as exc:
            self._fail(f"bad offer: {exc}")
            return None
        setup = {"active": "passive", "passive": "active"}.get(offer.setup, self.answer_setup)
        self._dtls_role = DtlsRole.SERVER if setup == "passive" else DtlsRole.CLIENT
        answer = build_answer(
            offer,
            self.ice.local_ufrag,
            self.ice.local_pwd,
            self.certificate,
            self.candidate,
            secrets.randbits(62),
            setup,
        )
        if "a=group:BUNDLE" not in answer:
            self._fail("the offer has neither VP8 video nor Opus audio")
            return None
        self._apply_remote(offer, now)
        return answer

    def receive_datagram(self, data: bytes, addr: Addr, now: float) -> None:
        """One datagram from ``addr``: STUN to ICE, DTLS records to DTLS, media counted."""
        if not data or self.state is WatcherState.FAILED:
            return
        first = data[0]
        if first < 4:
            self.ice.receive(data, _SOCKET, addr, now)
        elif 20 <= first <= 63:
            if self.dtls is not None:
                self.dtls.receive(data, now)
        elif 128 <= first <= 191:
            self.media_before_handoff += 1
        self._pump(now)

    def datagrams_to_send(self, now: float) -> list[tuple[Addr, bytes]]:
        self._pump(now)
        out, self._out = self._out, []
        return out

    def get_timer(self) -> float | None:
        timers = [self.ice.get_timer()]
        if self.dtls is not None and self.state is WatcherState.HANDSHAKING:
            timers.append(self.dtls.get_timer())
        due = [t for t in timers if t is not None]
        return min(due) if due else None

    def handle_timer(self, now: float) -> None:
        self.ice.handle_timer(now)
        if self.dtls is not None and self.state is WatcherState.HANDSHAKING:
            self.dtls.handle_timer(now)
        self._pump(now)

    def next_event(self) -> WatcherEvent | None:
        return self._events.popleft() if self._events else None

    def close(self) -> None:
        self.ice.close()
        if self.dtls is not None:
            self.dtls.close()

    # -- internals -----------------------------------------------------------

    def _apply_remote(self, remote: RemoteDescription, now: float) -> None:
        """The other side's credentials, fingerprints and candidates: DTLS ready, ICE started."""
        self.dtls = DtlsSession(
            self.certificate, self._dtls_role, list(remote.fingerprints), profiles=self.profiles
        )
        self.ice.add_local_candidate(self.candidate, _SOCKET, now)
        self.ice.set_remote_credentials(remote.ice_ufrag, remote.ice_pwd, now)
        for _mid, line in remote.candidates:
            try:
                self.ice.add_remote_candidate(Candidate.from_sdp(line), now)
            except ValueError:
                continue
        if remote.end_of_candidates:
            self.ice.add_remote_candidate(None, now)
        self.state = WatcherState.CHECKING
        self.ice.start(now)
        self._pump(now)

    def _pump(self, now: float) -> None:
        for sock_key, addr, data in self.ice.datagrams_to_send(now):
            del sock_key
            self._out.append((addr, data))
        while (event := self.ice.next_event()) is not None:
            if isinstance(event, SelectedPairChanged):
                self.remote = event.pair.remote.addr
                self._start_dtls(now)
            elif isinstance(event, IceStateChanged) and event.state is IceState.FAILED:
                self._fail(f"ICE failed: {event.reason}")
            elif isinstance(event, ConsentExpired):
                self._fail(f"consent expired: {event.reason}")
        if self.dtls is None:
            return
        while (dtls_event := self.dtls.next_event()) is not None:
            if isinstance(dtls_event, HandshakeCompleted) and self.keys is None:
                self.keys = dtls_event.keys
                self.state = WatcherState.CONNECTED
                assert self.remote is not None
                self._events.append(WatcherConnected(dtls_event.keys, self.remote))
            elif isinstance(dtls_event, DtlsFailed):
                self._fail(f"DTLS failed: {dtls_event.reason}")
        if self.remote is not None:
            for data in self.dtls.datagrams_to_send():
                self._out.append((self.remote, data))

    def _start_dtls(self, now: float) -> None:
        if self.dtls is None or self.state is not WatcherState.CHECKING:
            return
        self.state = WatcherState.HANDSHAKING
        self.dtls.start(now)

    def _fail(self, reason: str) -> None:
        if self.state is WatcherState.FAILED:
            return
        self.state = WatcherState.FAILED
        self._events.append(WatcherFailed(reason))
