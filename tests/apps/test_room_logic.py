"""The room application without a network: its pure pieces, then whole handles on a real Peer
and the reference engine that is never started (SDP in, SDP and events out).

Covers: request validation (4xx, never 500), the room model (join/leave/publish events and who
gets them, token admission and permissions), the subscriber layout (sections appended, made
inactive, never reused; payload types and extensions), feedback (keyframe gate, REMB minimum),
re-offers (same ICE/DTLS, session version, stable mids) and the full request flow.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from sfu.apps.base import AppContext, AppError
from sfu.apps.room import RoomApp, RoomPolicy
from sfu.apps.room.feedback import BitrateEstimates, KeyframeGate, remb_shares
from sfu.apps.room.handle import RoomHandle
from sfu.apps.room.layout import SubscriberLayout
from sfu.apps.room.model import (
    Feed,
    ParticipantJoined,
    ParticipantLeft,
    RoomError,
    Rooms,
    Source,
    Track,
    TracksPublished,
    TracksUnpublished,
)
from sfu.apps.room.requests import Join, Subscribe, parse_request
from sfu.apps.room.subscriber import fir_ssrcs
from sfu.auth.tokens import mint_token
from sfu.dtls.certificate import Certificate, Fingerprint
from sfu.engine.pyengine import PyEngine
from sfu.sdp.description import RemoteCodec, SdpError, parse_description
from sfu.sdp.negotiate import (
    LocalParameters,
    apply_answer,
    check_reoffer,
    deactivate,
    offer_section,
    write_description,
)
from sfu.webrtc.server import MediaSettings, WebRtcServer
from sfu.webrtc.transport import TransportConfig

SECRET = "unit-test-secret-0123456789abcdef-xyz"
NOW = 1_700_000_000.0
VP8 = RemoteCodec(97, "VP8", 90000, None, {}, ("nack", "nack pli"))
OPUS = RemoteCodec(96, "opus", 48000, 2, {"minptime": "10"}, ())
AUDIO_LEVEL = "urn:ietf:params:rtp-hdrext:ssrc-audio-level"
MID = "urn:ietf:params:rtp-hdrext:sdes:mid"


def track(mid: str, kind: str = "video", ssrc: int = 1000, transport: int = 1) -> Track:
    codec = VP8 if kind == "video" else OPUS
    ext = ((1, MID), (2, AUDIO_LEVEL)) if kind == "audio" else ((1, MID),)
    return Track(mid, kind, codec, Source(transport, ssrc), ext)


# -- requests -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "code", "words"),
    [
        ({}, 401, "'request' is required"),
        ({"request": 7}, 401, "must be a string"),
        ({"request": "dance"}, 400, "unknown room request"),
        ({"request": "join"}, 401, "'room' is required"),
        ({"request": "join", "room": 5}, 401, "'room' must be a string"),
        ({"request": "join", "room": ""}, 400, "must not be empty"),
        ({"request": "join", "room": "r" * 129}, 400, "longer than 128"),
        ({"request": "join", "room": "a\nb"}, 400, "control characters"),
        ({"request": "join", "room": "r", "display": ["x"]}, 401, "'display' must be a string"),
        ({"request": "join", "room": "r", "colour": "red"}, 400, "unknown field(s) for 'join'"),
        ({"request": "subscribe", "room": "r"}, 401, "'participant' is required"),
        ({"request": "leave", "room": "r"}, 400, "unknown field"),
    ],
)
def test_malformed_requests_are_refused_with_a_reason(
    body: dict[str, Any], code: int, words: str
) -> None:
    with pytest.raises(RoomError) as err:
        parse_request(body)
    assert err.value.code == code and words in err.value.reason


def test_requests_parse_into_their_dataclasses() -> None:
    assert parse_request({"request": "join", "room": "r", "display": None}) == Join("r")
    assert parse_request(
        {"request": "subscribe", "room": "r", "participant": "p", "token": "t"}
    ) == Subscribe("r", "p", "t")


# -- the room model -------------------------------------------------------------------------------


def _ids() -> Callable[[], str]:
    counter = iter(range(1, 1000))
    return lambda: f"p{next(counter)}"


def test_join_publish_unpublish_leave_tell_the_others() -> None:
    rooms = Rooms(RoomPolicy(), new_id=_ids())
    alice, ev = rooms.join("r", "alice", None, NOW)
    assert alice.id == "p1" and ev == [ParticipantJoined("r", alice.describe(), ())]
    bob, ev = rooms.join("r", "bob", None, NOW)
    assert bob.id == "p2" and ev[0].recipients == ("p1",) and ev[0].payload()["event"] == "joined"
    ev = rooms.publish("r", "p1", [track("0", "audio"), track("1")])
    assert isinstance(ev[0], TracksPublished) and ev[0].recipients == ("p2",)
    assert ev[0].tracks_changed
    assert ev[0].payload()["tracks"] == [
        {"mid": "0", "kind": "audio", "codec": "opus"},
        {"mid": "1", "kind": "video", "codec": "VP8"},
    ]
    assert [f.track.mid for f in rooms.feeds_for("r", "p2")] == ["0", "1"]
    assert rooms.feeds_for("r", "p1") == []  # never your own tracks
    with pytest.raises(RoomError, match="already publishing") as err:
        rooms.publish("r", "p1", [track("2")])
    assert err.value.code == 409
    ev = rooms.unpublish("r", "p1")
    assert isinstance(ev[0], TracksUnpublished) and len(ev[0].tracks) == 2
    assert rooms.unpublish("r", "p1") == []  # nothing left to unpublish
    ev = rooms.leave("r", "p2", "detached")
    assert isinstance(ev[0], ParticipantLeft) and ev[0].recipients == ("p1",)
    assert ev[0].payload()["reason"] == "detached" and not ev[0].tracks_changed
    rooms.leave("r", "p1")
    assert "r" not in rooms.rooms  # the last one out closes the room


def test_leaving_with_tracks_changes_the_subscriptions() -> None:
    rooms = Rooms(RoomPolicy(), new_id=_ids())
    rooms.join("r", "a", None, NOW)
    rooms.join("r", "b", None, NOW)
    rooms.publish("r", "p1", [track("0")])
    (ev,) = rooms.leave("r", "p1")
    assert ev.tracks_changed


def test_room_limits_and_policy() -> None:
    rooms = Rooms(RoomPolicy(max_participants=1, max_tracks=1), new_id=_ids())
    rooms.join("r", "a", None, NOW)
    with pytest.raises(RoomError) as err:
        rooms.join("r", "b", None, NOW)
    assert err.value.code == 429
    with pytest.raises(RoomError, match="at most 1 tracks"):
        rooms.publish("r", "p1", [track("0"), track("1")])
    with pytest.raises(RoomError) as err:
        rooms.publish("r", "p1", [])
    assert err.value.code == 422
    closed = Rooms(RoomPolicy(create_rooms=False, rooms=("lobby",)))
    with pytest.raises(RoomError) as err:
        closed.join("other", "a", None, NOW)
    assert err.value.code == 404
    p, _ = closed.join("lobby", None, None, NOW)
    assert p.display == "guest"
    closed.leave("lobby", p.id)
    assert "lobby" in closed.rooms  # a configured room stays when empty


def _token(**kw: Any) -> str:
    args: dict[str, Any] = {"identity": "alice", "room": "r", "now": NOW} | kw
    return mint_token(args.pop("secret", SECRET), **args)


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        (None, "a token is required"),
        ("not-a-jwt", "malformed token"),
        (_token(secret="another-secret-0123456789abcdef-xyz"), "signature is wrong"),
        (_token(room="elsewhere"), "the token is for room 'elsewhere'"),
        (_token(ttl=10, now=NOW - 100), "expired"),
    ],
)
def test_join_refuses_bad_tokens_with_the_token_error(token: str | None, reason: str) -> None:
    rooms = Rooms(RoomPolicy(token_secret=SECRET))
    with pytest.raises(RoomError) as err:
        rooms.join("r", "alice", token, NOW)
    assert err.value.code == 403 and reason in err.value.reason
    assert rooms.rooms == {}  # a refused join creates nothing


def test_token_identity_and_permissions() -> None:
    rooms = Rooms(RoomPolicy(token_secret=SECRET), new_id=_ids())
    viewer, _ = rooms.join("r", None, _token(publish=False, name="Alice"), NOW)
    assert (viewer.identity, viewer.display) == ("alice", "Alice")
    with pytest.raises(RoomError, match="does not allow publishing") as err:
        rooms.check_publish("r", viewer.id)
    assert err.value.code == 403
    with pytest.raises(RoomError) as err:
        rooms.join("r", "again", _token(), NOW)
    assert err.value.code == 409 and "already in room" in err.value.reason
    # subscribing needs a token of the same identity with the subscribe permission
    with pytest.raises(RoomError, match="another participant"):
        rooms.subscribe("r", viewer.id, _token(identity="mallory"), NOW)
    with pytest.raises(RoomError, match="a token is required"):
        rooms.subscribe("r", viewer.id, None, NOW)
    assert rooms.subscribe("r", viewer.id, _token(), NOW) is viewer
    with pytest.raises(RoomError) as err:
        rooms.subscribe("r", viewer.id, _token(), NOW)
    assert err.value.code == 409
    mute, _ = rooms.join("r", "bob", _token(identity="bob", subscribe=False), NOW)
    with pytest.raises(RoomError, match="does not allow subscribing"):
        rooms.subscribe("r", mute.id, _token(identity="bob"), NOW)
    with pytest.raises(RoomError) as err:
        rooms.subscribe("r", "nobody", _token(), NOW)
    assert err.value.code == 404


# -- the subscriber layout ------------------------------------------------------------------------


def test_layout_appends_deactivates_and_never_reuses_a_mid() -> None:
    ssrcs = iter(range(500, 600))
    layout = SubscriberLayout(new_ssrc=lambda: next(ssrcs))
    assert layout.update([]) is None
    a_audio, a_video = Feed("a", "alice", track("0", "audio")), Feed("a", "alice", track("1"))
    change = layout.update([a_audio, a_video])
    assert change is not None and [s.mid for s in change.added] == ["0", "1"]
    assert layout.update([a_audio, a_video]) is None  # nothing changed
    b_video = Feed("b", "bob", track("1", ssrc=2000, transport=2))
    change = layout.update([a_audio, a_video, b_video])
    assert change is not None and [s.mid for s in change.added] == ["2"]
    change = layout.update([b_video])  # alice left
    assert change is not None and [s.mid for s in change.removed] == ["0", "1"]
    media = layout.media()
    assert [(m.mid, m.direction) for m in media] == [
        ("0", "inactive"),
        ("1", "inactive"),
        ("2", "sendonly"),
    ]
    assert media[0].send_ssrc is None and media[0].msid is None
    assert media[2].send_ssrc == 502 and media[2].msid == "b b-video-2" and media[2].cname == "b"
    # alice republishes on a new transport: new sections, the old ones stay inactive
    change = layout.update([b_video, Feed("a", "alice", track("1", ssrc=3000, transport=3))])
    assert change is not None and [s.mid for s in change.added] == ["3"]
    assert [s["active"] for s in layout.streams()] == [False, False, True, True]
    assert layout.streams()[3]["participant"] == "a"


def test_layout_payload_types_and_extensions() -> None:
    layout = SubscriberLayout()
    h264 = RemoteCodec(
        102, "H264", 90000, None, {"packetization-mode": "1", "profile-level-id": "42e01f"}, ()
    )
    h264b = RemoteCodec(
        100, "H264", 90000, None, {"packetization-mode": "1", "profile-level-id": "640c1f"}, ()
    )
    chrome_audio = Track("0", "audio", OPUS, Source(2, 7), ((1, AUDIO_LEVEL), (4, MID)))
    feeds = [
        Feed("a", "a", track("0", "audio")),  # aiortc: audio-level is id 2
        Feed("a", "a", track("1")),
        Feed("b", "b", chrome_audio),  # Chrome: audio-level is id 1, clashes
        Feed("c", "c", Track("0", "video", h264, Source(3, 8))),
        Feed("d", "d", Track("0", "video", h264b, Source(4, 9))),
    ]
    layout.update(feeds)
    media = layout.media()
    pts = [m.codec.payload_type for m in media if m.codec]
    assert pts == [111, 96, 111, 102, 97]  # one number per codec configuration
    assert media[0].extensions == ((2, AUDIO_LEVEL),)  # never sdes:mid
    assert media[2].extensions == ()  # id 1 would mean something else on this connection
    assert media[1].feedback == ("nack", "nack pli", "ccm fir", "goog-remb")
    assert media[0].feedback == ()


# -- feedback -------------------------------------------------------------------------------------


def test_keyframe_gate_defers_instead_of_dropping() -> None:
    gate = KeyframeGate(interval=0.5)
    assert gate.request(1, 10.0)
    assert not gate.request(1, 10.1)
    assert not gate.request(1, 10.2)  # folded into the same deferred request
    assert gate.next_deadline() == 10.5
    assert gate.due(10.4) == []
    assert gate.due(10.5) == [1]
    assert gate.next_deadline() is None
    assert not gate.request(1, 10.6)  # 0.1 s after the deferred one went out
    assert gate.request(2, 10.6)  # streams are independent


def test_remb_is_split_per_stream_and_the_minimum_goes_upstream() -> None:
    owners = {10: "alice", 11: "alice", 20: "bob"}
    assert remb_shares(900_000, [10, 11, 20, 99], owners) == {"alice": 600_000, "bob": 300_000}
    assert remb_shares(900_000, [99], owners) == {}
    est = BitrateEstimates(ttl=5.0, refresh=1.0)
    assert est.update("s1", 800_000, 0.0) == 800_000  # first estimate: send at once
    assert est.update("s2", 500_000, 0.1) == 500_000  # the minimum dropped: at once
    assert est.update("s1", 900_000, 0.2) is None  # still 500k
    assert est.due(0.5) is None  # sent 0.4 s ago
    assert est.due(1.2) == 500_000  # periodic refresh
    est.remove("s2")
    assert est.minimum(1.3) == 900_000
    assert est.minimum(6.0) is None  # s1's estimate expired
    assert est.due(6.0) is None


def test_fir_entries_name_the_streams() -> None:
    fci = (1234).to_bytes(4, "big") + b"\x01\0\0\0" + (5678).to_bytes(4, "big") + b"\x02\0\0\0"
    assert fir_ssrcs(fci) == [1234, 5678]
    assert fir_ssrcs(b"\0\0") == []


# -- re-offers (pure) -----------------------------------------------------------------------------

FP = [Fingerprint("sha-256", ":".join(["AB"] * 32))]


def test_reoffer_rules() -> None:
    a = offer_section(0, "audio", OPUS, send_ssrc=1)
    v = offer_section(1, "video", VP8, send_ssrc=2)
    check_reoffer([a, v], [a, deactivate(v), offer_section(2, "video", VP8, send_ssrc=3)])
    with pytest.raises(SdpError, match="cannot drop"):
        check_reoffer([a, v], [a])
    with pytest.raises(SdpError, match="changed from"):
        check_reoffer([a, v], [v, a])
    with pytest.raises(SdpError, match="payload type"):
        check_reoffer([a, v], [a, offer_section(1, "video", OPUS, send_ssrc=2)])
    with pytest.raises(SdpError, match="twice"):
        check_reoffer([a], [a, offer_section(1, "video", VP8, mid="0", send_ssrc=3)])
    with pytest.raises(ValueError, match="send_ssrc"):
        offer_section(0, "video", VP8)


def test_an_inactive_section_stays_bundled_without_ssrc() -> None:
    v = offer_section(1, "video", VP8, send_ssrc=2, msid="s t", cname="p1")
    sdp = write_description(
        [offer_section(0, "audio", OPUS, send_ssrc=1), deactivate(v)],
        LocalParameters("uf12", "p" * 24, FP, "passive", session_id=5, session_version=3),
    )
    assert "o=- 5 3 IN IP4" in sdp and "a=group:BUNDLE 0 1" in sdp
    video = sdp.split("m=video")[1]
    assert video.startswith(" 9 ") and "a=inactive" in video and "a=ice-ufrag:uf12" in video
    assert "a=ssrc" not in video and "a=msid" not in video
    assert parse_description(sdp, "offer").media[1].direction == "inactive"


# -- whole handles: Peer + reference engine, no network --------------------------------------------


@dataclass
class Client:
    """One attached handle and what the server told it."""

    handle: RoomHandle
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    def app_events(self) -> list[str]:
        return [f["data"]["event"] for name, f in self.events if name == "app"]

    def offers(self) -> list[dict[str, Any]]:
        return [f for name, f in self.events if name == "offer"]

    async def request(self, **body: Any) -> dict[str, Any]:
        return await self.handle.on_message(body)


@dataclass
class Harness:
    app: RoomApp
    server: WebRtcServer
    certificate: Certificate
    loop: asyncio.AbstractEventLoop
    count: int = 0

    def attach(self) -> Client:
        self.count += 1
        events: list[tuple[str, dict[str, Any]]] = []
        ctx = AppContext(
            handle_id=f"h{self.count}",
            server=self.server,
            certificate=self.certificate,
            transport_config=TransportConfig(early_checks=False),
            loop=self.loop,
            emit=lambda name, fields: events.append((name, fields)),
        )
        handle = self.app.create_handle(ctx)
        assert isinstance(handle, RoomHandle)
        return Client(handle, events)


@pytest.fixture
async def harness() -> AsyncIterator[Harness]:
    engine = PyEngine()  # never started: producers and consumers are only table entries
    server = WebRtcServer(engine, MediaSettings())
    h = Harness(
        RoomApp(clock=lambda: NOW), server, Certificate.generate(), asyncio.get_running_loop()
    )
    yield h
    for key in list(h.app.members):
        h.app.members[key].close()
    engine.stop()


def publisher_offer(audio_ssrc: int, video_ssrc: int, direction: str = "sendonly") -> str:
    """What a browser offers to publish: opus + VP8 (with RTX), sendonly."""
    common = [
        "c=IN IP4 0.0.0.0",
        "a=ice-ufrag:pubu",
        "a=ice-pwd:" + "q" * 24,
        "a=fingerprint:sha-256 " + ":".join(["CD"] * 32),
        "a=setup:actpass",
        "a=rtcp-mux",
        f"a={direction}",
    ]
    lines = ["v=0", "o=- 1 1 IN IP4 0.0.0.0", "s=-", "t=0 0", "a=group:BUNDLE 0 1"]
    lines += ["m=audio 9 UDP/TLS/RTP/SAVPF 109", *common, "a=mid:0"]
    lines += [f"a=extmap:1 {MID}", f"a=extmap:2 {AUDIO_LEVEL}"]
    lines += ["a=rtpmap:109 opus/48000/2", f"a=ssrc:{audio_ssrc} cname:c"]
    lines += ["m=video 9 UDP/TLS/RTP/SAVPF 120 121", *common, "a=mid:1", f"a=extmap:1 {MID}"]
    lines += ["a=rtpmap:120 VP8/90000", "a=rtcp-fb:120 nack pli", "a=rtpmap:121 rtx/90000"]
    lines += ["a=fmtp:121 apt=120", f"a=ssrc-group:FID {video_ssrc} {video_ssrc + 1}"]
    lines += [f"a=ssrc:{video_ssrc} cname:c", f"a=ssrc:{video_ssrc + 1} cname:c"]
    return "\r\n".join(lines) + "\r\n"


def answer_to(
    offer: str, ufrag: str = "subu", reject: set[str] | None = None, fp: str = "EF"
) -> str:
    """What a browser answers to a server offer: every section recvonly (or rejected)."""
    out, mid = [], None
    sections = re.split(r"\r\n(?=m=)", offer.strip())
    out += [
        line
        for line in sections[0].split("\r\n")
        if not line.startswith(("a=ice", "a=fingerprint", "a=setup"))
    ]
    for section in sections[1:]:
        mid = re.search(r"a=mid:(\S+)", section).group(1)  # type: ignore[union-attr]
        for line in section.split("\r\n"):
            if line.startswith("m=") and reject and mid in reject:
                line = re.sub(r"^(m=\w+) 9", r"\1 0", line)
            if line.startswith(("a=ssrc", "a=msid", "a=ice-", "a=fingerprint", "a=setup")):
                continue
            if line in ("a=sendonly", "a=inactive"):
                line = "a=recvonly" if line == "a=sendonly" else line
            if line.startswith("a=mid:"):
                out += [
                    f"a=ice-ufrag:{ufrag}",
                    "a=ice-pwd:" + "s" * 24,
                    "a=fingerprint:sha-256 " + ":".join([fp] * 32),
                    "a=setup:active",
                ]
            out.append(line)
    return "\r\n".join(out) + "\r\n"


async def test_publish_subscribe_renegotiate_and_leave(harness: Harness) -> None:
    engine = harness.server.engine
    alice, bob = harness.attach(), harness.attach()
    joined = await alice.request(request="join", room="r", display="alice")
    a_id = joined["participant"]["id"]
    assert joined["participants"] == []
    answer = await alice.handle.on_offer(publisher_offer(1111, 2222))
    assert "a=recvonly" in answer and "a=sendonly" not in answer
    joined = await bob.request(request="join", room="r", display="bob")
    b_id = joined["participant"]["id"]
    assert [(p["id"], len(p["tracks"])) for p in joined["participants"]] == [(a_id, 2)]
    assert alice.app_events() == ["joined"]

    # bob subscribes: one offer with alice's two tracks, under the server's payload types
    bob_sub = harness.attach()
    sub = await bob_sub.request(request="subscribe", room="r", participant=b_id)
    assert [(s["mid"], s["kind"], s["participant"]) for s in sub["streams"]] == [
        ("0", "audio", a_id),
        ("1", "video", a_id),
    ]
    offer = sub["sdp"]
    assert "a=setup:actpass" in offer and "a=sendonly" in offer
    assert "a=rtpmap:111 opus/48000/2" in offer and "a=rtpmap:96 VP8/90000" in offer
    assert MID not in offer  # the publisher's mid values must not be read by the subscriber
    with pytest.raises(AppError) as err:
        await bob_sub.handle.on_offer(publisher_offer(1, 2))
    assert err.value.code == 409
    await bob_sub.handle.on_answer(answer_to(offer))
    session = harness.app.subscribers[("r", b_id)]
    consumers = {c.mid: c for c in session.consumers.values()}
    assert set(consumers) == {"0", "1"}
    stats = engine.transport_stats(session.peer.transport.id)  # type: ignore[union-attr]
    assert stats is not None and set(stats.outbound) == {c.dst_ssrc for c in consumers.values()}
    with pytest.raises(AppError) as err:
        await bob_sub.handle.on_answer(answer_to(offer))
    assert err.value.code == 409  # no offer pending

    # bob publishes: bob's subscription does not change, alice hears about it
    await bob.handle.on_offer(publisher_offer(3333, 4444))
    assert alice.app_events() == ["joined", "published"]
    assert bob_sub.offers() == []

    # carol joins and publishes: bob is re-offered (same ICE and DTLS, version up, mids kept)
    carol = harness.attach()
    c_id = (await carol.request(request="join", room="r", display="carol"))["participant"]["id"]
    await carol.handle.on_offer(publisher_offer(5555, 6666))
    (reoffer,) = bob_sub.offers()
    sdp2 = reoffer["sdp"]
    first, second = parse_description(offer, "offer"), parse_description(sdp2, "offer")
    assert (first.ice_ufrag, first.ice_pwd) == (second.ice_ufrag, second.ice_pwd)
    assert first.fingerprints == second.fingerprints
    assert "a=setup:passive" in sdp2  # the client answered active: the role stays
    assert re.search(r"o=- (\d+) 2 ", sdp2).group(1) == re.search(r"o=- (\d+) 1 ", offer).group(1)  # type: ignore[union-attr]
    assert [m.mid for m in second.media] == ["0", "1", "2", "3"]
    assert "a=candidate" not in sdp2

    # alice leaves before bob answered: folded into the next offer, sent after the answer
    await alice.request(request="leave")
    assert len(bob_sub.offers()) == 1
    assert "unpublished" in bob.app_events() and bob.app_events()[-1] == "left"
    await bob_sub.handle.on_answer(answer_to(sdp2))
    assert {c.feed.participant_id for c in session.consumers.values()} == {c_id}
    third = bob_sub.offers()[-1]
    assert [s["active"] for s in third["streams"]] == [False, False, True, True]
    assert re.findall(r"a=(sendonly|inactive)", third["sdp"]) == [
        "inactive",
        "inactive",
        "sendonly",
        "sendonly",
    ]
    await bob_sub.handle.on_answer(answer_to(third["sdp"]))
    assert len(session.consumers) == 2 and bob_sub.offers()[-1] is third

    # an ICE restart or a new certificate in an answer is refused; the offer stays pending
    carol.handle.close()  # detach: carol leaves
    last = bob_sub.offers()[-1]["sdp"]
    with pytest.raises(AppError) as err:
        await bob_sub.handle.on_answer(answer_to(last, ufrag="other"))
    assert err.value.code == 422 and "no ICE restart" in err.value.reason
    with pytest.raises(AppError) as err:
        await bob_sub.handle.on_answer(answer_to(last, fp="01"))
    assert err.value.code == 422 and "DTLS fingerprint" in err.value.reason
    await bob_sub.handle.on_answer(answer_to(last))
    assert session.consumers == {}
    assert harness.app.rooms.get("r").participants.keys() == {b_id}

    # bob leaves: his subscription ends with him
    await bob.request(request="leave")
    assert session.closed and ("hangup", {"reason": "left the room"}) in bob_sub.events
    assert "r" not in harness.app.rooms.rooms


async def test_nothing_to_receive_yet_then_the_first_offer_is_an_event(harness: Harness) -> None:
    alice, alice_sub, bob = harness.attach(), harness.attach(), harness.attach()
    a_id = (await alice.request(request="join", room="r"))["participant"]["id"]
    sub = await alice_sub.request(request="subscribe", room="r", participant=a_id)
    assert sub["sdp"] is None and sub["streams"] == []
    with pytest.raises(AppError) as err:
        await alice_sub.handle.on_answer("v=0")
    assert err.value.code == 409
    await bob.request(request="join", room="r")
    await bob.handle.on_offer(publisher_offer(1, 3))
    (offer,) = alice_sub.offers()
    assert len(parse_description(offer["sdp"], "offer").media) == 2
    # the client rejects the video section: only the audio gets a consumer
    await alice_sub.handle.on_answer(answer_to(offer["sdp"], reject={"1"}))
    session = harness.app.subscribers[("r", a_id)]
    assert [c.kind for c in session.consumers.values()] == ["audio"]


async def test_out_of_order_and_refused_requests(harness: Harness) -> None:
    h = harness.attach()
    for body, code in [
        ({"request": "unpublish"}, 409),
        ({"request": "leave"}, 409),
        ({"request": "participants"}, 409),
        ({"request": "subscribe", "room": "r", "participant": "x"}, 404),
    ]:
        with pytest.raises(AppError) as err:
            await h.request(**body)
        assert err.value.code == code, body
    with pytest.raises(AppError) as err:
        await h.handle.on_offer(publisher_offer(1, 2))
    assert err.value.code == 409 and "join a room first" in err.value.reason
    with pytest.raises(AppError) as err:
        h.handle.on_candidate(None)
    assert err.value.code == 409
    p_id = (await h.request(request="join", room="r"))["participant"]["id"]
    with pytest.raises(AppError) as err:
        await h.request(request="join", room="r")
    assert err.value.code == 409
    with pytest.raises(AppError) as err:
        await h.request(request="subscribe", room="r", participant=p_id)
    assert err.value.code == 409 and "another handle" in err.value.reason
    with pytest.raises(AppError) as err:
        await h.handle.on_offer("v=0\r\nnot sdp")
    assert err.value.code == 422
    with pytest.raises(AppError) as err:  # a recvonly offer publishes nothing
        await h.handle.on_offer(publisher_offer(1, 2, direction="recvonly"))
    assert err.value.code == 422 and "nothing to publish" in err.value.reason
    await h.handle.on_offer(publisher_offer(1, 2))
    with pytest.raises(AppError) as err:
        await h.handle.on_offer(publisher_offer(3, 4))
    assert err.value.code == 409 and "unpublish first" in err.value.reason
    assert (await h.request(request="unpublish")) == {"result": "ok"}
    assert ("hangup", {"reason": "unpublished"}) in h.events
    await h.handle.on_offer(publisher_offer(3, 4))  # publishing again works
    participants = await h.request(request="participants")
    assert [len(p["tracks"]) for p in participants["participants"]] == [2]


def test_the_token_secret_comes_from_the_environment() -> None:
    assert RoomApp.from_env({}).rooms.policy.token_secret is None
    assert RoomApp.from_env({"SFU_ROOMS_TOKEN_SECRET": " "}).rooms.policy.token_secret is None
    for name in ("SFU_ROOMS_TOKEN_SECRET", "SFU_ROOM_TOKEN_SECRET"):
        assert RoomApp.from_env({name: SECRET}).rooms.policy.token_secret == SECRET
    both = {"SFU_ROOMS_TOKEN_SECRET": SECRET, "SFU_ROOM_TOKEN_SECRET": "x" * 40}
    assert RoomApp.from_env(both).rooms.policy.token_secret == SECRET
    with pytest.raises(SystemExit, match=r"SFU_ROOM_TOKEN_SECRET: .*at least 32 bytes"):
        RoomApp.from_env({"SFU_ROOM_TOKEN_SECRET": "short"})


def test_apply_answer_keeps_the_cname() -> None:
    v = offer_section(0, "video", VP8, send_ssrc=2, msid="p p-v", cname="p")
    offer = write_description([v], LocalParameters("uf12", "p" * 24, FP, "actpass"))
    media = apply_answer([v], parse_description(answer_to(offer), "answer"))
    assert media[0].cname == "p" and media[0].direction == "sendonly"
