"""Simulcast in rooms without I/O: layer choice by request and by bandwidth (synthetic REMB
shares and bitrates on a fake clock), layer bitrates, upstream estimates, the SDP helpers and
the ``configure`` request."""

from __future__ import annotations

import pytest

from sfu.apps.base import AppError
from sfu.apps.room.feedback import BitrateEstimates
from sfu.apps.room.model import RoomError
from sfu.apps.room.requests import Configure, parse_request
from sfu.apps.room.simulcast import (
    AUTO,
    HOLD,
    IDLE_AFTER,
    SWITCH_PLI_RETRY,
    UP_BACKOFF,
    Layer,
    LayerRates,
    LayerSelector,
    SwitchRetries,
    choose_layer,
    resolve_request,
)
from sfu.engine.base import ControlKind, ControlPacket, StreamAnnouncement
from sfu.engine.pyengine import PyEngine
from sfu.rtp import rtcp
from sfu.rtp.rtcp import parse_rtcp
from sfu.sdp.capabilities import DEFAULT_CAPABILITIES, MID_URI, RID_URI
from sfu.sdp.negotiate import (
    RRID_URI,
    SIMULCAST_EXTENSIONS,
    SimulcastOffer,
    add_simulcast_answer,
    simulcast_offers,
    with_simulcast_extensions,
)
from tests.apps.test_room_logic import Client, Harness, answer_to
from tests.apps.test_room_logic import harness as harness  # the fixture

RATES = {"q": 150_000, "h": 500_000, "f": 1_500_000}


def test_choose_layer_by_estimate_with_hysteresis() -> None:
    layers = [Layer(r, b) for r, b in RATES.items()]
    assert choose_layer(layers) == "f"  # no estimate: the ceiling
    assert choose_layer(layers, ceiling="h") == "h"
    assert choose_layer(layers, estimate=1, current=None) == "f"  # nothing forwarded yet
    # up: straight to the highest layer that fits with 20 % headroom
    assert choose_layer(layers, estimate=10_000_000, current="q") == "f"
    assert choose_layer(layers, estimate=10_000_000, current="q", ceiling="h") == "h"
    assert choose_layer(layers, estimate=1_700_000, current="q") == "h"  # f needs 1.8 M
    # ... or one step when there is headroom over the current layer (REMB ~ what arrives)
    assert choose_layer(layers, estimate=200_000, current="q") == "h"
    assert choose_layer(layers, estimate=160_000, current="q") == "q"
    # down: under 85 % of the current layer, to the highest lower layer that fits
    assert choose_layer(layers, estimate=1_300_000, current="f") == "f"
    assert choose_layer(layers, estimate=1_200_000, current="f") == "h"
    assert choose_layer(layers, estimate=300_000, current="f") == "q"
    assert choose_layer(layers, estimate=10_000, current="q") == "q"  # the floor
    # not measured yet: fits
    assert choose_layer([Layer("q", 100), Layer("h", None)], estimate=200, current="q") == "h"
    assert choose_layer([], estimate=1) is None


def test_resolve_request() -> None:
    rids = ("q", "h", "f")
    assert resolve_request("h", rids) == "h"
    assert resolve_request(0, rids) == "q"
    assert resolve_request(AUTO, rids) == AUTO
    for bad in ("x", 3, -1, True):
        with pytest.raises(ValueError):
            resolve_request(bad, rids)


def test_bandwidth_switches_wait_for_the_hold_time() -> None:
    sel = LayerSelector(("q", "h", "f"))
    assert sel.update(RATES, now=0.0) == "f"  # first choice: at once
    sel.set_estimate(600_000)
    assert sel.update(RATES, now=0.5) is None  # too soon after the last switch
    assert sel.update(RATES, now=HOLD) == "h"
    sel.set_estimate(5_000_000)  # recovers: up again only after HOLD * UP_BACKOFF
    assert sel.update(RATES, now=HOLD * 2) is None
    assert sel.update(RATES, now=HOLD * (1 + UP_BACKOFF)) == "f"
    # a noisy estimate around the top layer does not flap
    t0 = HOLD * (1 + UP_BACKOFF)
    for i, estimate in enumerate([1_400_000, 1_700_000, 1_300_000, 1_900_000]):
        sel.set_estimate(estimate)
        assert sel.update(RATES, now=t0 + HOLD + i) is None
    assert sel.current == "f"


def test_auto_steps_up_on_headroom() -> None:
    """REMB hardly exceeds the bitrate received: each layer is tried after the hold."""
    sel = LayerSelector(("q", "h", "f"))
    sel.request("q")
    assert sel.update(RATES, now=0.0) == "q"
    sel.request(AUTO)
    sel.set_estimate(int(RATES["q"] * 1.5))
    assert sel.update(RATES, now=0.1) == "f"  # a request (auto) applies at once: the ceiling
    sel.set_estimate(int(RATES["q"] * 1.5))  # the subscriber cannot take it
    assert sel.update(RATES, now=0.1 + HOLD) == "q"
    sel.set_estimate(int(RATES["q"] * 1.5))  # headroom over q: probe h, after the backoff
    assert sel.update(RATES, now=0.2 + HOLD * 2) is None
    assert sel.update(RATES, now=0.1 + HOLD * (1 + UP_BACKOFF)) == "h"
    sel.set_estimate(int(RATES["h"] * 1.5))
    assert sel.update(RATES, now=0.1 + HOLD * (2 + UP_BACKOFF)) == "f"


def test_request_is_a_ceiling_applied_at_once() -> None:
    sel = LayerSelector(("q", "h", "f"))
    assert sel.update(RATES, now=0.0) == "f"
    assert sel.request("q") == "q"
    assert sel.update(RATES, now=0.1) == "q"  # no hold for a request
    sel.set_estimate(100_000)
    assert sel.request(2) == "f"
    assert sel.update(RATES, now=0.2) == "f"  # whatever the estimate says
    assert sel.update(RATES, now=0.3) is None
    assert sel.update(RATES, now=0.2 + HOLD) == "q"  # then the estimate lowers it
    sel.set_estimate(10_000_000)
    assert sel.request("h") == "h"
    assert sel.update(RATES, now=0.3 + HOLD) == "h"
    assert sel.update(RATES, now=10 * HOLD) is None  # never above the ceiling


def test_requested_layer_not_learned_yet() -> None:
    sel = LayerSelector(("q", "h", "f"))
    sel.request("f")
    assert sel.update({"q": None}, now=0.0) == "q"  # the best there is
    assert sel.update({"q": None, "h": None}, now=0.1) == "h"  # better, and below the ceiling
    assert sel.update({"q": None, "h": None, "f": None}, now=0.2) == "f"  # at once
    assert sel.update({"q": None, "h": None}, now=0.3) == "h"  # its layer went away


def test_switch_retries() -> None:
    retries = SwitchRetries(retry=1.0)
    assert retries.next_deadline() is None and retries.due(5.0) == []
    retries.start("1", now=10.0)
    retries.start("2", now=10.5)
    assert retries.next_deadline() == 11.0
    assert retries.due(10.9) == []
    assert retries.due(11.2) == ["1"]  # and re-armed from now
    assert retries.next_deadline() == 11.5
    retries.done("2")
    assert retries.due(11.9) == []
    assert retries.due(12.2) == ["1"]
    retries.done("1")
    assert retries.pending() == [] and retries.next_deadline() is None


def test_layer_rates() -> None:
    rates = LayerRates()
    rates.sample(1, 0, 0.0)
    assert rates.rate(1) is None
    rates.sample(1, 125_000, 1.0)
    assert rates.rate(1) == 1_000_000
    rates.sample(1, 187_500, 2.0)  # 500 kbit/s now: smoothed half-way
    assert rates.rate(1) == 750_000
    rates.sample(1, 10, 3.0)  # a counter that went back (a new stream): ignored
    assert rates.rate(1) == 750_000
    assert not rates.idle(1, 3.0 + IDLE_AFTER - 0.1)  # the counter moved at 3.0
    rates.sample(1, 10, 3.0 + IDLE_AFTER)
    assert rates.idle(1, 3.0 + IDLE_AFTER)  # no growth for IDLE_AFTER: the layer stopped
    rates.sample(1, 20, 9.0)
    assert not rates.idle(1, 9.0)
    assert not rates.idle(2, 9.0)  # never seen: not known to be idle
    rates.forget(1)
    assert rates.rate(1) is None


def test_simulcast_publisher_estimate_is_the_highest() -> None:
    low, high = BitrateEstimates(), BitrateEstimates(highest=True)
    for est in (low, high):
        assert est.update("a", 2_000_000, 0.0) == 2_000_000
        est.update("b", 300_000, 0.1)
    assert low.value(0.2) == 300_000
    assert high.value(0.2) == 2_000_000  # the slow subscriber does not cap the top layer
    assert high.due(1.5) == 2_000_000


CHROME_OFFER = "\r\n".join(
    [
        "v=0",
        "o=- 1 2 IN IP4 127.0.0.1",
        "s=-",
        "t=0 0",
        "a=group:BUNDLE 0 1",
        "m=audio 9 UDP/TLS/RTP/SAVPF 111",
        "a=mid:0",
        "a=sendonly",
        "m=video 9 UDP/TLS/RTP/SAVPF 96 97",
        "a=mid:1",
        "a=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid",
        "a=extmap:10 urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id",
        "a=extmap:11 urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id",
        "a=sendonly",
        "a=rid:q send",
        "a=rid:h send",
        "a=rid:f send max-width=1280",
        "a=simulcast:send q;h;f",
        "",
    ]
)


def test_simulcast_offers_and_answer_lines() -> None:
    offers = simulcast_offers(CHROME_OFFER)
    assert offers == {"1": SimulcastOffer("1", ("q", "h", "f"))}
    assert simulcast_offers(CHROME_OFFER.replace("a=simulcast:send q;h;f", "")) == {}
    alternatives = CHROME_OFFER.replace("q;h;f", "q,x;~h;f")
    assert simulcast_offers(alternatives)["1"].rids == ("q", "f")  # paused "~h" left out
    answer = "v=0\r\nm=audio 9 P 111\r\na=mid:0\r\na=recvonly\r\nm=video 9 P 96\r\na=mid:1\r\n"
    out = add_simulcast_answer(answer + "a=recvonly\r\n", offers).splitlines()
    assert out[-4:] == ["a=rid:q recv", "a=rid:h recv", "a=rid:f recv", "a=simulcast:recv q;h;f"]
    rejected = add_simulcast_answer(answer.replace("m=video 9", "m=video 0"), offers)
    assert "a=simulcast" not in rejected
    caps = with_simulcast_extensions(DEFAULT_CAPABILITIES)
    assert set(SIMULCAST_EXTENSIONS) <= set(caps.header_extensions["video"])
    assert caps.header_extensions["audio"] == DEFAULT_CAPABILITIES.header_extensions["audio"]


def test_configure_request() -> None:
    assert parse_request({"request": "configure", "mid": "1", "layer": "h"}) == Configure("1", "h")
    assert parse_request({"request": "configure", "mid": "1", "layer": 2}) == Configure("1", 2)
    for bad in (True, None, 1.5, ""):
        with pytest.raises(RoomError):
            parse_request({"request": "configure", "mid": "1", "layer": bad})
    with pytest.raises(RoomError):
        parse_request({"request": "configure", "layer": "h"})


# -- whole handles: a simulcast publisher and a subscriber (Peer + reference engine, no network) --


def simulcast_offer() -> str:
    """A browser publishing audio (with an SSRC) and simulcast video (rids only)."""
    common = [
        "c=IN IP4 0.0.0.0",
        "a=ice-ufrag:pubu",
        "a=ice-pwd:" + "q" * 24,
        "a=fingerprint:sha-256 " + ":".join(["CD"] * 32),
        "a=setup:actpass",
        "a=rtcp-mux",
        "a=sendonly",
    ]
    lines = ["v=0", "o=- 1 1 IN IP4 0.0.0.0", "s=-", "t=0 0", "a=group:BUNDLE 0 1"]
    lines += ["m=audio 9 UDP/TLS/RTP/SAVPF 109", *common, "a=mid:0", f"a=extmap:4 {MID_URI}"]
    lines += ["a=rtpmap:109 opus/48000/2", "a=ssrc:1111 cname:c"]
    lines += ["m=video 9 UDP/TLS/RTP/SAVPF 120", *common, "a=mid:1", f"a=extmap:4 {MID_URI}"]
    lines += [f"a=extmap:10 {RID_URI}", f"a=extmap:11 {RRID_URI}"]
    lines += ["a=rtpmap:120 VP8/90000", "a=rtcp-fb:120 nack pli", "a=rtcp-fb:120 goog-remb"]
    lines += ["a=rid:q send", "a=rid:h send", "a=rid:f send", "a=simulcast:send q;h;f"]
    return "\r\n".join(lines) + "\r\n"


def layer_events(client: Client) -> list[tuple[str, str, str]]:
    return [
        (f["data"]["layer"], f["data"]["requested"], f["data"]["reason"])
        for name, f in client.events
        if name == "app" and f["data"]["event"] == "layer"
    ]


async def test_simulcast_publish_learn_layers_and_switch(harness: Harness) -> None:
    clock = [100.0]
    harness.app.monotonic = lambda: clock[0]
    engine = harness.server.engine
    assert isinstance(engine, PyEngine)
    alice, bob = harness.attach(), harness.attach()
    await alice.request(request="join", room="r", display="alice")
    answer = await alice.handle.on_offer(simulcast_offer())
    video = answer.split("m=video")[1]
    for line in (
        "a=rid:q recv",
        "a=rid:f recv",
        "a=simulcast:recv q;h;f",
        f"a=extmap:10 {RID_URI}",
    ):
        assert line in video, video
    assert "x-google-start-bitrate=2500" in video
    a_id = next(iter(harness.app.publishers))[1]
    publisher = harness.app.publishers[("r", a_id)]
    pub_tid = publisher.peer.transport.id  # type: ignore[union-attr]
    (track,) = [t for t in publisher.tracks if t.kind == "video"]
    assert track.rids == ("q", "h", "f") and track.source.ssrc == 0

    b_id = (await bob.request(request="join", room="r", display="bob"))["participant"]["id"]
    bob_sub = harness.attach()
    sub = await bob_sub.request(request="subscribe", room="r", participant=b_id)
    assert [s.get("layers") for s in sub["streams"]] == [None, ["q", "h", "f"]]
    await bob_sub.handle.on_answer(answer_to(sub["sdp"]))
    session = harness.app.subscribers[("r", b_id)]
    assert set(session.consumers) == {"0"}  # no video consumer before a layer is known
    with pytest.raises(AppError) as err:
        await bob_sub.request(request="configure", mid="0", layer="h")
    assert err.value.code == 404
    with pytest.raises(AppError) as err:
        await bob_sub.request(request="configure", mid="1", layer="x")
    assert err.value.code == 400

    # the engine reports the layers' SSRCs (as its loop would, through the listener)
    def announce(ssrc: int, rid: str, repaired: str = "") -> None:
        a = StreamAnnouncement(pub_tid, ssrc, "1", rid, repaired)
        packet = ControlPacket(ControlKind.STREAM, 1, ("192.0.2.1", 9), a.encode(), pub_tid)
        engine._dispatch([packet])  # what the started engine does on the event loop

    announce(0xA0, "q")
    assert session.consumers["1"].src_ssrc == 0xA0
    announce(0xB0, "", "q")  # RTX: ignored
    announce(0xA1, "h")
    announce(0xA2, "f")
    assert session.consumers["1"].src_ssrc == 0xA2  # no estimate yet: the best one
    assert publisher.layers == {"1": {"q": 0xA0, "h": 0xA1, "f": 0xA2}}
    assert [e[0] for e in layer_events(bob_sub)] == ["q", "h", "f"]
    assert {e[1:] for e in layer_events(bob_sub)} == {("auto", "available")}
    dst = session.consumers["1"].dst_ssrc
    cid = session.consumers["1"].consumer_id
    # the first layer (q) got a consumer gated until its keyframe; h and f are switches of
    # that same consumer, which keeps forwarding q until a keyframe of the target comes
    c = engine._consumers[cid]
    assert (c.spec.src_ssrc, c.spec.dst_ssrc, c.spec.keyframe_gate) == (0xA0, dst, "vp8")
    assert c.target == (pub_tid, 0xA2)
    assert session.switches.pending() == ["1"]
    assert session.stats()["consumers"][1]["forwarding_ssrc"] == 0xA0

    def keyframe_arrives() -> None:
        """What the engine loop does at the first keyframe of a pending target."""
        for pending in engine._consumers.values():
            if pending.target is not None:
                engine._complete_switch(pending)

    keyframe_arrives()
    assert engine.consumer_source(cid) == (pub_tid, 0xA2)

    # by request: at once, same outbound SSRC, one engine consumer for the section
    reply = await bob_sub.request(request="configure", mid="1", layer=0)
    assert reply == {"result": "ok", "mid": "1", "layer": "q", "current": "q"}
    consumer = session.consumers["1"]
    assert (consumer.consumer_id, consumer.src_ssrc, consumer.dst_ssrc) == (cid, 0xA0, dst)
    assert [c.spec.src_ssrc for c in engine._consumers.values() if c.spec.dst_ssrc == dst] == [0xA2]
    assert engine._consumers[cid].target == (pub_tid, 0xA0)  # f flows until q's keyframe

    # the keyframe of q does not come: the PLI is sent again after SWITCH_PLI_RETRY, then
    # every SWITCH_PLI_RETRY until the switch is done
    requests = publisher.counters["keyframe_requests"]
    session.check_switches()
    assert session.counters["switch_plis"] == 0  # not yet
    clock[0] += SWITCH_PLI_RETRY
    session.check_switches()
    assert session.counters["switch_plis"] == 1
    assert publisher.counters["keyframe_requests"] == requests + 1
    keyframe_arrives()
    clock[0] += SWITCH_PLI_RETRY
    session.check_switches()
    assert session.counters["switch_plis"] == 1 and session.switches.pending() == []
    assert engine.consumer_source(cid) == (pub_tid, 0xA0)

    await bob_sub.request(request="configure", mid="1", layer="auto")
    assert session.consumers["1"].src_ssrc == 0xA2
    keyframe_arrives()

    # by bandwidth: bob's REMB over his video SSRC, with measured layer bitrates
    layer_rates = {0xA0: 150_000, 0xA1: 500_000, 0xA2: 1_500_000}
    sent = {ssrc: 0 for ssrc in layer_rates}
    for ssrc in layer_rates:
        publisher.rates.sample(ssrc, 0, clock[0] - 1.0)
    sampled = [clock[0] - 1.0]

    def flowing() -> None:  # every layer keeps sending at its rate until now
        for ssrc, rate in layer_rates.items():
            sent[ssrc] += int(rate / 8 * (clock[0] - sampled[0]))
            publisher.rates.sample(ssrc, sent[ssrc], clock[0])
        sampled[0] = clock[0]

    def remb(bitrate: int) -> None:
        flowing()
        session._on_rtcp(parse_rtcp(rtcp.remb(1, bitrate, [dst])))

    remb(600_000)
    assert session.consumers["1"].src_ssrc == 0xA2  # held: the last switch was just now
    clock[0] += HOLD
    remb(600_000)
    assert session.consumers["1"].src_ssrc == 0xA1
    keyframe_arrives()
    assert layer_events(bob_sub)[-1] == ("h", "auto", "bandwidth")
    assert publisher.estimates.value(clock[0]) == 600_000  # simulcast: the largest estimate
    clock[0] += HOLD * UP_BACKOFF
    remb(5_000_000)
    assert session.consumers["1"].src_ssrc == 0xA2
    keyframe_arrives()
    stats = session.stats()["consumers"]
    assert [(c["mid"], c.get("layer")) for c in stats] == [("0", None), ("1", "f")]
    assert publisher.stats()["simulcast"]["1"]["h"] == {"ssrc": 0xA1, "bitrate": 500_000}

    # the publisher restarts a layer on a new SSRC: the consumer follows
    announce(0xC2, "f")
    assert session.consumers["1"].src_ssrc == 0xC2
    assert layer_events(bob_sub)[-1] == ("f", "auto", "restarted")
    # (its engine consumer went with the old producer: a new one, gated)
    assert session.consumers["1"].consumer_id != cid
    cid = session.consumers["1"].consumer_id
    assert engine.consumer_source(cid) == (pub_tid, 0xC2)

    # a layer restarts while a switch to it waits: the switch follows it to the new SSRC
    await bob_sub.request(request="configure", mid="1", layer="h")
    assert engine._consumers[cid].target == (pub_tid, 0xA1)
    announce(0xD1, "h")
    assert engine._consumers[cid].target == (pub_tid, 0xD1)
    assert session.consumers["1"].consumer_id == cid  # still forwarding f meanwhile
    assert engine.consumer_source(cid) == (pub_tid, 0xC2)

    # the publisher stops sending a layer (Chromium drops layers under congestion): it is no
    # longer offered, so the switch waiting for it goes to another layer instead of waiting
    publisher.rates.sample(0xD1, 0, clock[0])  # h came back once, then went quiet
    for quiet in (0xA1, 0xA2):
        layer_rates.pop(quiet)
    layer_rates[0xC2] = 1_500_000
    sent[0xC2] = 0
    clock[0] += IDLE_AFTER
    flowing()
    assert set(publisher.layer_bitrates("1")) == {"q", "f"}
    harness.app.layers_changed(publisher.room, publisher.participant_id)  # as sampling does
    assert engine._consumers[cid].target == (pub_tid, 0xA0)  # the best below the ceiling h
