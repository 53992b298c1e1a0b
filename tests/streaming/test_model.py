"""Mountpoint validation (every problem named by its field), JSON forms, file stream mapping."""

from __future__ import annotations

import base64
import dataclasses
import json
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest

from sfu.streaming.model import (
    MAX_METADATA_BYTES,
    Codec,
    ErrorCode,
    FileSource,
    MediaKind,
    Mountpoint,
    RtpSource,
    SrtpProfile,
    StreamingError,
    TestPattern,
    TestSource,
    WhipSource,
    parse_mountpoint,
    parse_patch,
)
from sfu.streaming.source import (
    FileInfo,
    FileStream,
    SourceError,
    check_file_media,
    map_file_streams,
    probe_file,
)
from tests.streaming import make_media_file

KEY30 = base64.b64encode(bytes(range(30))).decode()


def rtp(**source: Any) -> dict[str, Any]:
    return {"codec": "VP8", "source": {"type": "rtp", **source}}


def problems_of(body: object) -> dict[str, str]:
    with pytest.raises(StreamingError) as info:
        parse_mountpoint(body)
    assert info.value.code is ErrorCode.INVALID
    assert info.value.status == 422
    return {p.field: p.reason for p in info.value.problems}


def test_minimal_rtp_mountpoint_gets_defaults() -> None:
    mp = parse_mountpoint({"media": [rtp(), {"codec": "opus", "source": {"type": "rtp"}}]})
    assert mp.id == 0 and mp.name == "" and mp.enabled and not mp.permanent
    video, audio = mp.media
    assert (video.mid, video.kind, video.codec, video.payload_type, video.clock_rate) == (
        "0",
        MediaKind.VIDEO,
        Codec.VP8,
        96,
        90000,
    )
    assert (audio.mid, audio.kind, audio.payload_type, audio.clock_rate) == (
        "1",
        MediaKind.AUDIO,
        111,
        48000,
    )
    assert video.source == RtpSource(port=0)
    assert mp.rtp_ports() == (0, 0)


def test_codec_names_are_case_insensitive() -> None:
    mp = parse_mountpoint({"media": [{"codec": "h264", "source": {"type": "test"}}]})
    assert mp.media[0].codec is Codec.H264
    assert mp.media[0].payload_type == 102


ROUND_TRIP_BODIES: list[dict[str, Any]] = [
    {
        "id": 7,
        "name": "cam",
        "description": "front door",
        "metadata": {"room": "a", "tags": [1, 2.5, None, True]},
        "secret": "s3",
        "pin": "1234",
        "is_private": True,
        "enabled": False,
        "permanent": True,
        "media": [
            {
                "mid": "v",
                "codec": "H264",
                "payload_type": 126,
                "fmtp": "profile-level-id=42e01f;packetization-mode=1",
                "source": {
                    "type": "rtp",
                    "port": 5004,
                    "multicast": "239.1.2.3",
                    "iface": "eth0",
                    "srtp": {"profile": "AES_CM_128_HMAC_SHA1_80", "key": KEY30},
                },
            },
            {
                "mid": "a",
                "kind": "audio",
                "codec": "opus",
                "clock_rate": 48000,
                "source": {"type": "rtp", "port": 5006, "host": "::1"},
            },
        ],
    },
    {
        "media": [
            {"codec": "VP9", "source": {"type": "file", "path": "/m/x.webm", "loop": False}},
            {"codec": "opus", "source": {"type": "file", "path": "/m/x.webm", "loop": False}},
        ]
    },
    {
        "media": [
            {"codec": "VP8", "source": {"type": "test", "pattern": "testsrc", "width": 320}},
            {"codec": "opus", "source": {"type": "test", "tone_hz": 1000}},
        ]
    },
    {
        "media": [
            {"codec": "VP8", "source": {"type": "whip", "token": "t"}},
            {"codec": "opus", "source": {"type": "whip", "token": "t"}},
        ]
    },
]


@pytest.mark.parametrize("body", ROUND_TRIP_BODIES)
def test_admin_json_reads_back_unchanged(body: dict[str, Any]) -> None:
    mp = parse_mountpoint(body)
    mp = dataclasses.replace(mp, id=mp.id or 9, name=mp.name or "named by the registry")
    doc = json.loads(json.dumps(mp.to_admin_json()))
    assert parse_mountpoint(doc) == mp


def test_sources_are_typed() -> None:
    mp = parse_mountpoint(ROUND_TRIP_BODIES[0])
    src = mp.media[0].source
    assert isinstance(src, RtpSource) and src.srtp is not None
    assert src.srtp.profile is SrtpProfile.AES_CM_128_HMAC_SHA1_80
    assert src.srtp.key == bytes(range(30))
    assert str(src.multicast) == "239.1.2.3" and src.iface == "eth0"
    file_src = parse_mountpoint(ROUND_TRIP_BODIES[1]).media[0].source
    assert file_src == FileSource("/m/x.webm", loop=False)
    test_mp = parse_mountpoint(ROUND_TRIP_BODIES[2])
    assert test_mp.media[0].source == TestSource(pattern=TestPattern.TESTSRC, width=320)
    assert test_mp.media[1].source == TestSource(tone_hz=1000)
    assert parse_mountpoint(ROUND_TRIP_BODIES[3]).media[1].source == WhipSource("t")


def test_public_json_hides_secrets_and_source_details() -> None:
    mp = parse_mountpoint(ROUND_TRIP_BODIES[0])
    public = mp.to_public_json()
    text = json.dumps(public)
    assert "s3" not in text and "1234" not in text and KEY30 not in text and "5004" not in text
    assert public["pin_required"] is True
    assert public["media"][0]["source"] == {"type": "rtp"}
    assert public["media"][0]["fmtp"] == "profile-level-id=42e01f;packetization-mode=1"
    admin = mp.to_admin_json()
    assert admin["secret"] == "s3" and admin["pin"] == "1234"
    assert admin["media"][0]["source"]["srtp"]["key"] == KEY30


BAD_BODIES: list[tuple[object, str, str]] = [
    ([], "", "is not an object"),
    (None, "", "null is not an object"),
    ({}, "media", "is required"),
    ({"media": [], "name": "x"}, "media", "has 0 items"),
    ({"media": [rtp()] * 9}, "media", "has 9 items"),
    ({"media": "x"}, "media", "is not a list"),
    ({"media": [rtp()], "nmae": "x"}, "nmae", "did you mean 'name'"),
    ({"media": [rtp()], "zzz": 1}, "zzz", "unknown field (known: id, name"),
    ({"media": [rtp()], "id": -1}, "id", "out of range"),
    ({"media": [rtp()], "id": 2**53}, "id", "out of range"),
    ({"media": [rtp()], "id": "7"}, "id", "is not an integer"),
    ({"media": [rtp()], "id": 7.0}, "id", "is not an integer"),
    ({"media": [rtp()], "id": True}, "id", "is not an integer"),
    ({"media": [rtp()], "name": ""}, "name", "is empty"),
    ({"media": [rtp()], "name": "x" * 129}, "name", "longer than 128"),
    ({"media": [rtp()], "name": "a\nb"}, "name", "control characters"),
    ({"media": [rtp()], "name": "\ud800"}, "name", "not valid Unicode"),
    ({"media": [rtp()], "is_private": 1}, "is_private", "is not a boolean"),
    ({"media": [rtp()], "secret": ""}, "secret", "is empty"),
    ({"media": [rtp()], "metadata": []}, "metadata", "is not an object"),
    ({"media": [rtp()], "metadata": {"a": "x" * MAX_METADATA_BYTES}}, "metadata", "larger than"),
    ({"media": [rtp()], "metadata": {"a": json.loads("[" * 16 + "]" * 16)}}, "metadata", "deeper"),
    ({"media": [rtp()], "metadata": {"a": float("nan")}}, "metadata", "not finite"),
    ({"media": [rtp(port=70000)]}, "media[0].source.port", "70000 is out of range (0-65535)"),
    ({"media": [rtp(port="abc")]}, "media[0].source.port", '"abc" is not an integer'),
    ({"media": [rtp(prot=1)]}, "media[0].source.prot", "did you mean 'port'"),
    ({"media": [{"codec": "h265", "source": {"type": "rtp"}}]}, "media[0].codec", "not one of"),
    ({"media": [{"source": {"type": "rtp"}}]}, "media[0].codec", "is required"),
    ({"media": [{"codec": "VP8"}]}, "media[0].source", "is required"),
    ({"media": [{"codec": "VP8", "source": {}}]}, "media[0].source.type", "is required"),
    ({"media": [{"codec": "VP8", "source": {"type": "rtsp"}}]}, "media[0].source.type", "rtsp"),
    ({"media": [{**rtp(), "kind": "audio"}]}, "media[0].kind", "does not match codec VP8"),
    ({"media": [{**rtp(), "clock_rate": 48000}]}, "media[0].clock_rate", "90000"),
    ({"media": [{**rtp(), "payload_type": 0}]}, "media[0].payload_type", "out of range (96-127)"),
    ({"media": [{**rtp(), "mid": "a b"}]}, "media[0].mid", "is not a mid"),
    ({"media": [{**rtp(), "fmtp": "a=1\r\na=evil"}]}, "media[0].fmtp", "control characters"),
    ({"media": [{**rtp(), "fmtp": "garbage"}]}, "media[0].fmtp", "key=value"),
    ({"media": [{**rtp(), "mid": "x"}, {**rtp(), "mid": "x"}]}, "media[1].mid", "media[0]'s"),
    (
        {"media": [rtp(), {"codec": "VP9", "source": {"type": "rtp"}, "payload_type": 96}]},
        "media[1].payload_type",
        "another codec",
    ),
    ({"media": [rtp(port=5000), rtp(port=5000)]}, "media[1].source.port", "media[0]'s port"),
    (
        {"media": [rtp(), {"codec": "opus", "source": {"type": "test"}}]},
        "media[1].source.type",
        "one source type",
    ),
    ({"media": [rtp(multicast="10.0.0.1")]}, "media[0].source.multicast", "not a multicast"),
    ({"media": [rtp(host="nope")]}, "media[0].source.host", "not an IP address"),
    (
        {"media": [rtp(host="10.0.0.1", multicast="239.0.0.1")]},
        "media[0].source.host",
        "not both",
    ),
    ({"media": [rtp(iface="eth0")]}, "media[0].source.iface", "only applies with multicast"),
    (
        {"media": [rtp(multicast="ff02::1", iface="10.0.0.1")]},
        "media[0].source.iface",
        "family",
    ),
    (
        {"media": [rtp(srtp={"profile": "AEAD_AES_128_GCM", "key": KEY30})]},
        "media[0].source.srtp.key",
        "is 30 bytes; AEAD_AES_128_GCM needs 28",
    ),
    (
        {"media": [rtp(srtp={"profile": "AES_CM_128_HMAC_SHA1_80", "key": "!!"})]},
        "media[0].source.srtp.key",
        "not base64",
    ),
    (
        {"media": [rtp(srtp={"profile": "NULL", "key": KEY30})]},
        "media[0].source.srtp.profile",
        "not one of",
    ),
    (
        {"media": [{"codec": "VP8", "source": {"type": "file", "path": "x.webm"}}]},
        "media[0].source.path",
        "absolute",
    ),
    (
        {
            "media": [
                {"codec": "VP8", "source": {"type": "file", "path": "/a.webm"}},
                {"codec": "opus", "source": {"type": "file", "path": "/b.webm"}},
            ]
        },
        "media[1].source",
        "share one file",
    ),
    (
        {
            "media": [
                {"codec": "VP8", "source": {"type": "file", "path": "/a.webm", "stream": 0}},
                {"codec": "opus", "source": {"type": "file", "path": "/a.webm", "stream": 0}},
            ]
        },
        "media[1].source.stream",
        "media[0]'s stream",
    ),
    (
        {"media": [{"codec": "VP8", "source": {"type": "test", "tone_hz": 440}}]},
        "media[0].source.tone_hz",
        "does not apply to video",
    ),
    (
        {"media": [{"codec": "opus", "source": {"type": "test", "width": 320}}]},
        "media[0].source.width",
        "does not apply to audio",
    ),
    (
        {"media": [{"codec": "VP8", "source": {"type": "test", "height": 361}}]},
        "media[0].source.height",
        "even",
    ),
    (
        {"media": [{"codec": "VP8", "source": {"type": "test", "pattern": "plaid"}}]},
        "media[0].source.pattern",
        "not one of 'smpte'",
    ),
    (
        {
            "media": [
                {"codec": "VP8", "source": {"type": "whip", "token": "a"}},
                {"codec": "opus", "source": {"type": "whip"}},
            ]
        },
        "media[1].source.token",
        "media[0]'s",
    ),
]


@pytest.mark.parametrize(("body", "field", "reason"), BAD_BODIES)
def test_each_invalid_field_is_named(body: object, field: str, reason: str) -> None:
    problems = problems_of(body)
    assert field in problems, problems
    assert reason in problems[field], problems


def test_every_problem_is_reported_at_once() -> None:
    body = {
        "name": 5,
        "nmae": "x",
        "media": [rtp(port=-1), {"codec": "VP7", "source": {"type": "rtp"}}],
    }
    problems = problems_of(body)
    assert set(problems) == {"name", "nmae", "media[0].source.port", "media[1].codec"}
    with pytest.raises(StreamingError) as info:
        parse_mountpoint(body)
    doc = info.value.to_json()["error"]
    assert doc["code"] == "invalid"
    assert "media[0].source.port: -1 is out of range" in doc["reason"]
    assert len(doc["problems"]) == 4


def test_patch_changes_only_what_it_names() -> None:
    mp = parse_mountpoint({"id": 3, "name": "a", "secret": "s", "media": [rtp(port=5000)]})
    patch = parse_patch({"name": "b", "secret": None, "metadata": {"k": 1}, "permanent": True})
    new = patch.apply(mp)
    assert (new.name, new.secret, new.metadata, new.permanent) == ("b", None, {"k": 1}, True)
    assert new.media == mp.media and new.id == 3
    assert parse_patch({}).apply(mp) == mp


@pytest.mark.parametrize(
    ("body", "field", "reason"),
    [
        ({"media": []}, "media", "cannot be edited: destroy the mountpoint and create it again"),
        ({"id": 4}, "id", "cannot be changed"),
        ({"enabled": False}, "enabled", "/enable or /disable"),
        ({"pin": 5}, "pin", "is not a string"),
        ({"descripton": ""}, "descripton", "did you mean 'description'"),
    ],
)
def test_patch_refuses_what_cannot_change(body: object, field: str, reason: str) -> None:
    with pytest.raises(StreamingError) as info:
        parse_patch(body)
    problems = {p.field: p.reason for p in info.value.problems}
    assert reason in problems[field]


def test_error_codes_have_4xx_statuses_except_server_faults() -> None:
    for code in ErrorCode:
        expected_5xx = code in (ErrorCode.STORAGE, ErrorCode.INTERNAL)
        assert (code.status >= 500) == expected_5xx, code


# -- file sources ---------------------------------------------------------------------------


def file_mountpoint(path: str, *codecs: str, streams: tuple[int | None, ...] = ()) -> Mountpoint:
    media = []
    for i, codec in enumerate(codecs):
        source: dict[str, Any] = {"type": "file", "path": path}
        if i < len(streams) and streams[i] is not None:
            source["stream"] = streams[i]
        media.append({"codec": codec, "source": source})
    return parse_mountpoint({"media": media})


INFO = FileInfo(
    "matroska,webm",
    (
        FileStream(0, MediaKind.VIDEO, Codec.VP8, "vp8"),
        FileStream(1, MediaKind.AUDIO, Codec.OPUS, "opus"),
        FileStream(2, MediaKind.VIDEO, Codec.VP9, "vp9"),
        FileStream(3, None, None, "webvtt"),
    ),
)


def test_file_media_take_the_next_stream_of_their_kind() -> None:
    mp = file_mountpoint("/f.webm", "opus", "VP8")
    assert map_file_streams(mp.media, INFO) == (1, 0)


def test_file_media_may_name_their_stream() -> None:
    mp = file_mountpoint("/f.webm", "VP8", "VP9", streams=(None, 2))
    assert map_file_streams(mp.media, INFO) == (0, 2)
    mp = file_mountpoint("/f.webm", "VP9", "VP8", streams=(2, None))
    assert map_file_streams(mp.media, INFO) == (2, 0)


@pytest.mark.parametrize(
    ("codecs", "streams", "reason"),
    [
        (("VP9",), (), "stream 0 is vp8, not VP9 (files are not transcoded)"),
        (("opus", "opus"), (), "no unclaimed audio stream"),
        (("VP8",), (9,), "the file has no stream 9"),
        (("opus",), (3,), "stream 3 is webvtt, not opus"),
    ],
)
def test_file_stream_mismatches_are_explained(
    codecs: tuple[str, ...], streams: tuple[int | None, ...], reason: str
) -> None:
    mp = file_mountpoint("/f.webm", *codecs, streams=streams)
    with pytest.raises(StreamingError) as info:
        map_file_streams(mp.media, INFO)
    assert reason in info.value.reason


def test_real_files_are_probed_and_checked(tmp_path: Path) -> None:
    webm = make_media_file(tmp_path / "a.webm")
    info = probe_file(str(webm))
    assert info.container == "matroska,webm"
    assert [(s.kind, s.codec) for s in info.streams] == [
        (MediaKind.VIDEO, Codec.VP8),
        (MediaKind.AUDIO, Codec.OPUS),
    ]
    assert check_file_media(file_mountpoint(str(webm), "opus", "VP8")) == (1, 0)
    mp4 = make_media_file(tmp_path / "a.mp4", "libx264", None)
    assert check_file_media(file_mountpoint(str(mp4), "H264")) == (0,)
    with pytest.raises(StreamingError, match="is h264, not VP8"):
        check_file_media(file_mountpoint(str(mp4), "VP8"))


@pytest.mark.parametrize("case", ["missing", "directory", "not media", "wrong container"])
def test_bad_files_are_refused_with_a_reason(tmp_path: Path, case: str) -> None:
    path = tmp_path / "x.webm"
    expected = {
        "missing": "does not exist",
        "directory": "is not a regular file",
        "not media": "cannot read",
        "wrong container": "use WebM or MP4",
    }[case]
    if case == "directory":
        path.mkdir()
    elif case == "not media":
        path.write_bytes(b"hello, not a video" * 10)
    elif case == "wrong container":
        path = tmp_path / "x.wav"
        with av.open(str(path), "w", format="wav") as out:
            stream = out.add_stream("pcm_s16le", rate=48000)
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 480), np.int16), layout="mono")
            frame.sample_rate = 48000
            for packet in [*stream.encode(frame), *stream.encode()]:
                out.mux(packet)
    with pytest.raises(StreamingError) as info:
        check_file_media(file_mountpoint(str(path), "opus"))
    assert info.value.problems[0].field == "media[0].source.path"
    assert expected in info.value.reason


def test_probe_reports_unreadable_files() -> None:
    with pytest.raises(SourceError):
        probe_file("/nonexistent/file.webm")
