"""Negotiation is pure: offers and answers in, decisions and SDP out."""

from __future__ import annotations

from pathlib import Path

import pytest

from sfu.dtls.certificate import Fingerprint
from sfu.sdp.description import SdpError, parse_description
from sfu.sdp.negotiate import (
    LocalParameters,
    answer_direction,
    answer_media,
    apply_answer,
    offer_media,
    write_description,
)

OFFER = (Path(__file__).parent.parent / "data" / "chrome_offer.sdp").read_text()
FP = [Fingerprint("sha-256", ":".join(["AB"] * 32))]


def _local(setup: str = "active") -> LocalParameters:
    return LocalParameters(ice_ufrag="uf12", ice_pwd="p" * 24, fingerprints=FP, setup=setup)


def test_parse_extracts_what_a_transport_needs() -> None:
    d = parse_description(OFFER, "offer")
    assert (d.ice_ufrag, d.ice_pwd, d.setup) == ("abcd", "abcdefghijklmnopqrstuvwx", "actpass")
    assert d.bundle == ("0", "1")
    audio, video = d.media
    assert audio.kind == "audio" and audio.ssrcs == (1111,)
    assert video.codecs[0].name == "VP8" and video.codecs[0].rtx_payload_type == 97
    assert ("FID", (2222, 3333)) in video.ssrc_groups


def test_answer_picks_codecs_drops_rtx_and_unsupported_feedback() -> None:
    media = answer_media(
        parse_description(OFFER, "offer"),
        send=lambda m: True,
        recv=lambda m: True,
        new_ssrc=lambda: 42,
    )
    audio, video = media
    assert audio.codec is not None and audio.codec.name == "opus" and audio.direction == "sendrecv"
    assert video.codec is not None and video.codec.payload_type == 96
    assert video.feedback == ("nack", "nack pli", "goog-remb")  # transport-cc not negotiated
    assert video.recv_ssrcs == (2222,)  # the RTX SSRC of the FID group is not a media stream
    sdp = write_description(media, _local())
    assert "a=rtpmap:97" not in sdp and "transport-cc" not in sdp
    assert "a=group:BUNDLE 0 1" in sdp and "a=setup:active" in sdp
    assert "a=ssrc:42 cname:sfu" in sdp
    # the answer parses back with our own parser
    back = parse_description(sdp, "answer")
    assert [m.codecs[0].name for m in back.media] == ["opus", "VP8"]


@pytest.mark.parametrize(
    ("remote", "send", "recv", "expected"),
    [
        ("sendrecv", True, True, "sendrecv"),
        ("sendonly", True, True, "recvonly"),
        ("recvonly", True, True, "sendonly"),
        ("inactive", True, True, "inactive"),
        ("sendrecv", False, True, "recvonly"),
        ("sendrecv", True, False, "sendonly"),
    ],
)
def test_answer_direction(remote: str, send: bool, recv: bool, expected: str) -> None:
    assert answer_direction(remote, send, recv) == expected


def test_unsupported_sections_are_rejected_not_fatal() -> None:
    offer = OFFER.replace("opus/48000/2", "G722/8000")
    audio, video = answer_media(
        parse_description(offer, "offer"), send=lambda m: True, recv=lambda m: True
    )
    assert audio.rejected and "no supported codec" in (audio.rejected_reason or "")
    assert not video.rejected
    sdp = write_description([audio, video], _local())
    assert "m=audio 0 " in sdp and "a=group:BUNDLE 1\r\n" in sdp


def test_nothing_usable_is_an_error_with_every_reason() -> None:
    offer = OFFER.replace("opus/48000/2", "G722/8000").replace("VP8/90000", "H261/90000")
    with pytest.raises(SdpError, match=r"no usable media.*0: .*1: "):
        answer_media(parse_description(offer, "offer"), send=lambda m: True, recv=lambda m: True)


def test_server_offer_and_answer_round_trip() -> None:
    offered = offer_media(["audio", "video"], new_ssrc=iter([7, 8]).__next__)
    sdp = write_description(offered, _local(setup="actpass"))
    assert "a=setup:actpass" in sdp and "a=candidate" not in sdp
    # the client answers: it accepts both, sends from its own SSRCs
    answer = (
        sdp.replace("a=setup:actpass", "a=setup:active")
        .replace("a=ssrc:7 cname:sfu", "a=ssrc:1001 cname:c")
        .replace("a=ssrc:7 msid:sfu sfu-audio-0", "")
        .replace("a=ssrc:8 cname:sfu", "a=ssrc:1002 cname:c")
        .replace("a=ssrc:8 msid:sfu sfu-video-1", "")
    )
    media = apply_answer(offered, parse_description(answer, "answer"))
    assert [m.recv_ssrcs for m in media] == [(1001,), (1002,)]
    assert [m.send_ssrc for m in media] == [7, 8]
    # an answer that only receives leaves the server send-only
    recvonly = answer.replace("a=sendrecv", "a=recvonly")
    media = apply_answer(offered, parse_description(recvonly, "answer"))
    assert [m.direction for m in media] == ["sendonly", "sendonly"]
    assert all(m.recv_ssrcs == () for m in media)


def test_answer_that_does_not_match_the_offer_is_refused() -> None:
    offered = offer_media(["audio", "video"])
    sdp = write_description(offered, _local(setup="active"))
    with pytest.raises(SdpError, match="m-sections"):
        apply_answer(offered[:1], parse_description(sdp, "answer"))
    with pytest.raises(SdpError, match="does not accept"):
        apply_answer(
            offered,
            parse_description(
                sdp.replace("VP8/90000", "VP9/90000").replace(" 96", " 98").replace(":96", ":98"),
                "answer",
            ),
        )
