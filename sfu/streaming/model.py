"""Streaming mountpoints: the configuration model, its validation and its JSON forms.

One table of small :class:`~sfu.streaming.rules.Rule` objects describes every field a client
may send. The same rules validate request bodies (every problem reported at once, each naming
its field, like ``media[0].source.port: 70000 is out of range (0-65535)``) and produce the JSON
Schema of the OpenAPI document (:mod:`sfu.streaming.openapi`), so what is documented and what
is checked cannot drift. Checks that span several fields (codec and kind agree, mids are unique, all media
of a file mountpoint name the same file...) follow in plain code.

Nothing here touches the file system or the network: a file source's path is checked against
the disk, and its streams against the file, by :mod:`sfu.streaming.source` at creation time.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, ClassVar, Final

from sfu.streaming.rules import (
    Bool,
    Choice,
    Const,
    Int,
    IpAddress,
    JsonObject,
    ListOf,
    Nullable,
    Obj,
    Problem,
    Rule,
    Str,
    Tagged,
    apply,
)

__all__ = [
    "MAX_MEDIA",
    "MAX_METADATA_BYTES",
    "Codec",
    "ErrorCode",
    "FileSource",
    "MediaEntry",
    "MediaKind",
    "Mountpoint",
    "MountpointPatch",
    "Problem",
    "RtpSource",
    "Source",
    "SourceType",
    "Srtp",
    "SrtpProfile",
    "StreamingError",
    "TestPattern",
    "TestSource",
    "WhipSource",
    "parse_mountpoint",
    "parse_patch",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

MAX_MEDIA: Final = 8
MAX_ID: Final = 2**53 - 1  # the largest integer a JavaScript client holds exactly
MAX_METADATA_BYTES: Final = 4096
MAX_METADATA_DEPTH: Final = 16
MAX_NAME: Final = 128
MAX_DESCRIPTION: Final = 1024
MAX_SECRET: Final = 256


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------


class ErrorCode(Enum):
    """Why a request failed; each code has one HTTP status."""

    BAD_JSON = "bad_json"  # the body is not JSON
    INVALID = "invalid"  # the JSON does not describe a valid mountpoint or change
    UNAUTHORIZED = "unauthorized"  # a credential is needed and none was sent
    FORBIDDEN = "forbidden"  # the credential sent is wrong
    NOT_FOUND = "not_found"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    CONFLICT = "conflict"  # duplicate id, port taken, ...
    NO_PORTS = "no_ports"  # the RTP port range is exhausted
    DISABLED = "disabled"  # the mountpoint is disabled (watching it)
    SOURCE_FAILED = "source_failed"  # its media source could not start
    TOO_LARGE = "too_large"
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"
    STORAGE = "storage"  # the database failed (server side)
    INTERNAL = "internal"  # a bug

    @property
    def status(self) -> int:
        """The HTTP status of this error."""
        return _STATUS[self]


_STATUS: Final[Mapping[ErrorCode, int]] = {
    ErrorCode.BAD_JSON: 400,
    ErrorCode.INVALID: 422,
    ErrorCode.UNAUTHORIZED: 401,
    ErrorCode.FORBIDDEN: 403,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.METHOD_NOT_ALLOWED: 405,
    ErrorCode.CONFLICT: 409,
    ErrorCode.NO_PORTS: 409,
    ErrorCode.DISABLED: 409,
    ErrorCode.SOURCE_FAILED: 409,
    ErrorCode.TOO_LARGE: 413,
    ErrorCode.UNSUPPORTED_MEDIA_TYPE: 415,
    ErrorCode.STORAGE: 500,
    ErrorCode.INTERNAL: 500,
}


class StreamingError(Exception):
    """A refused request: a code (and so an HTTP status), a reason, the invalid fields."""

    def __init__(self, code: ErrorCode, reason: str, problems: Sequence[Problem] = ()) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason
        self.problems: tuple[Problem, ...] = tuple(problems)

    @property
    def status(self) -> int:
        return self.code.status

    def to_json(self) -> dict[str, Any]:
        """``{"error": {"code", "reason", "problems"?}}``."""
        body: dict[str, Any] = {"code": self.code.value, "reason": self.reason}
        if self.problems:
            body["problems"] = [{"field": p.field, "reason": p.reason} for p in self.problems]
        return {"error": body}

    @classmethod
    def invalid(cls, problems: Sequence[Problem]) -> StreamingError:
        return cls(ErrorCode.INVALID, "; ".join(str(p) for p in problems), problems)


# --------------------------------------------------------------------------------------------
# Enumerations
# --------------------------------------------------------------------------------------------


class SourceType(Enum):
    """Where a mountpoint's media comes from."""

    RTP = "rtp"  # plain (or SRTP) RTP sent to a UDP port of the server
    FILE = "file"  # a WebM or MP4 file, packetized without transcoding
    TEST = "test"  # a generated test pattern (video) or tone (audio)
    WHIP = "whip"  # a WHIP publisher (RFC 9725) pushes over WebRTC


class MediaKind(Enum):
    AUDIO = "audio"
    VIDEO = "video"


class Codec(Enum):
    """Codecs a mountpoint forwards (never transcodes)."""

    OPUS = "opus"
    VP8 = "VP8"
    VP9 = "VP9"
    H264 = "H264"

    @property
    def kind(self) -> MediaKind:
        return MediaKind.AUDIO if self is Codec.OPUS else MediaKind.VIDEO

    @property
    def clock_rate(self) -> int:
        return 48000 if self is Codec.OPUS else 90000

    @property
    def default_payload_type(self) -> int:
        return {Codec.OPUS: 111, Codec.VP8: 96, Codec.VP9: 98, Codec.H264: 102}[self]


class SrtpProfile(Enum):
    """SRTP protection profiles of an RTP source (names as in RFC 4568 / RFC 7714)."""

    AES_CM_128_HMAC_SHA1_80 = "AES_CM_128_HMAC_SHA1_80"
    AES_CM_128_HMAC_SHA1_32 = "AES_CM_128_HMAC_SHA1_32"
    AEAD_AES_128_GCM = "AEAD_AES_128_GCM"
    AEAD_AES_256_GCM = "AEAD_AES_256_GCM"

    @property
    def key_length(self) -> int:
        """Bytes of master key followed by master salt."""
        return {
            SrtpProfile.AES_CM_128_HMAC_SHA1_80: 30,
            SrtpProfile.AES_CM_128_HMAC_SHA1_32: 30,
            SrtpProfile.AEAD_AES_128_GCM: 28,
            SrtpProfile.AEAD_AES_256_GCM: 44,
        }[self]


class TestPattern(Enum):
    """Video patterns of a test source (ffmpeg's lavfi sources of the same names)."""

    __test__ = False  # not a pytest class

    SMPTE = "smpte"  # SMPTE colour bars
    TESTSRC = "testsrc"  # moving colour pattern with a frame counter
    BLACK = "black"


# --------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Srtp:
    """SRTP keying of an RTP source: the profile and the master key followed by the salt."""

    profile: SrtpProfile
    key: bytes

    def to_json(self) -> dict[str, Any]:
        return {"profile": self.profile.value, "key": base64.b64encode(self.key).decode()}


@dataclass(frozen=True)
class RtpSource:
    """RTP to a UDP port: unicast on ``host`` (any address when None) or a multicast group."""

    port: int = 0  # 0 = allocate one from the configured range
    host: IPAddress | None = None
    multicast: IPAddress | None = None
    iface: str | None = None  # interface name or address to join the multicast group on
    srtp: Srtp | None = None

    type: ClassVar[SourceType] = SourceType.RTP

    def to_json(self, kind: MediaKind) -> dict[str, Any]:
        return {
            "type": self.type.value,
            "port": self.port,
            "host": None if self.host is None else str(self.host),
            "multicast": None if self.multicast is None else str(self.multicast),
            "iface": self.iface,
            "srtp": None if self.srtp is None else self.srtp.to_json(),
        }


@dataclass(frozen=True)
class FileSource:
    """A stream of a WebM (Matroska) or MP4 file; all file media of a mountpoint share one file."""

    path: str
    loop: bool = True
    stream: int | None = None  # the container's stream index; None = the next of this kind

    type: ClassVar[SourceType] = SourceType.FILE

    def to_json(self, kind: MediaKind) -> dict[str, Any]:
        return {
            "type": self.type.value,
            "path": self.path,
            "loop": self.loop,
            "stream": self.stream,
        }


@dataclass(frozen=True)
class TestSource:
    """A generated source: a pattern for video, a sine tone for audio."""

    __test__ = False  # not a pytest class

    pattern: TestPattern = TestPattern.SMPTE
    width: int = 640
    height: int = 360
    fps: int = 30
    tone_hz: int = 440

    type: ClassVar[SourceType] = SourceType.TEST

    def to_json(self, kind: MediaKind) -> dict[str, Any]:
        if kind is MediaKind.AUDIO:
            return {"type": self.type.value, "tone_hz": self.tone_hz}
        return {
            "type": self.type.value,
            "pattern": self.pattern.value,
            "width": self.width,
            "height": self.height,
            "fps": self.fps,
        }


@dataclass(frozen=True)
class WhipSource:
    """A WHIP publisher pushes this media; ``token`` is the bearer token it must present."""

    token: str | None = None

    type: ClassVar[SourceType] = SourceType.WHIP

    def to_json(self, kind: MediaKind) -> dict[str, Any]:
        return {"type": self.type.value, "token": self.token}


Source = RtpSource | FileSource | TestSource | WhipSource


@dataclass(frozen=True)
class MediaEntry:
    """One m-line a watcher receives, and where its packets come from."""

    mid: str
    kind: MediaKind
    codec: Codec
    payload_type: int
    clock_rate: int
    fmtp: str | None
    source: Source

    def to_public_json(self) -> dict[str, Any]:
        return {
            "mid": self.mid,
            "kind": self.kind.value,
            "codec": self.codec.value,
            "payload_type": self.payload_type,
            "clock_rate": self.clock_rate,
            "fmtp": self.fmtp,
            "source": {"type": self.source.type.value},
        }

    def to_admin_json(self) -> dict[str, Any]:
        return {**self.to_public_json(), "source": self.source.to_json(self.kind)}


@dataclass(frozen=True)
class Mountpoint:
    """A mountpoint's configuration (what is persisted); runtime state lives in the registry."""

    id: int  # 0 = allocate
    name: str
    media: tuple[MediaEntry, ...]
    description: str = ""
    metadata: Mapping[str, Any] = field(default_factory=dict)
    secret: str | None = None
    pin: str | None = None
    is_private: bool = False
    enabled: bool = True
    permanent: bool = False

    @property
    def source_type(self) -> SourceType:
        """The one source type of all its media."""
        return self.media[0].source.type

    def rtp_ports(self) -> tuple[int, ...]:
        """The UDP ports its RTP media use (0 for one not allocated yet)."""
        return tuple(m.source.port for m in self.media if isinstance(m.source, RtpSource))

    def to_public_json(self) -> dict[str, Any]:
        """What any client may see: no secret, no pin, no source details."""
        return {
            "id": self.id,
            "name": self.name,
            "description": self.description,
            "metadata": dict(self.metadata),
            "is_private": self.is_private,
            "enabled": self.enabled,
            "pin_required": self.pin is not None,
            "media": [m.to_public_json() for m in self.media],
        }

    def to_admin_json(self) -> dict[str, Any]:
        """The whole configuration; :func:`parse_mountpoint` reads it back unchanged."""
        return {
            "id": self.id,
            "name": self.name,
            "description": self.description,
            "metadata": dict(self.metadata),
            "secret": self.secret,
            "pin": self.pin,
            "is_private": self.is_private,
            "enabled": self.enabled,
            "permanent": self.permanent,
            "media": [m.to_admin_json() for m in self.media],
        }


@dataclass(frozen=True)
class MountpointPatch:
    """A validated edit: the fields to replace, by name."""

    changes: Mapping[str, Any]

    def apply(self, mountpoint: Mountpoint) -> Mountpoint:
        return dataclasses.replace(mountpoint, **self.changes)


def _parse(rule: Rule, value: object) -> Any:
    """Apply a rule to a whole body; raise StreamingError listing every problem."""
    parsed, problems = apply(rule, value)
    if problems:
        raise StreamingError.invalid(problems)
    return parsed


# --------------------------------------------------------------------------------------------
# The field table
# --------------------------------------------------------------------------------------------

_PORT = Int(0, 65535, "UDP port to receive RTP on; 0 = allocate one from the configured range")
_SECRET = Nullable(
    Str(MAX_SECRET, min_len=1),
    "needed (header X-Mountpoint-Secret) to edit, enable, disable or destroy it; null = none",
)
_PIN = Nullable(Str(MAX_SECRET, min_len=1), "needed to watch it; null = none")
_FMTP = Nullable(
    Str(
        1024,
        min_len=1,
        pattern=r"[A-Za-z0-9_.-]+=[^;\s]*(?:; ?[A-Za-z0-9_.-]+=[^;\s]*)*",
        pattern_reason="is not a list of key=value separated by ';'",
    ),
    "the a=fmtp parameters watchers get, e.g. 'profile-level-id=42e01f;packetization-mode=1'",
)

_SRTP = Obj(
    {
        "profile": Choice(SrtpProfile, "SRTP protection profile"),
        "key": Str(
            128,
            "base64 of the master key followed by the master salt "
            "(30 bytes for AES_CM_128_*, 28 for AEAD_AES_128_GCM, 44 for AEAD_AES_256_GCM)",
            min_len=1,
        ),
    },
    required=("profile", "key"),
    description="SRTP keys the sender uses (SDES-style); null = plain RTP",
)

_SOURCES = Tagged(
    {
        "rtp": Obj(
            {
                "type": Const("rtp"),
                "port": _PORT,
                "host": Nullable(IpAddress(), "local address to bind; null = all addresses"),
                "multicast": Nullable(
                    IpAddress(multicast=True), "multicast group to join; null = unicast"
                ),
                "iface": Nullable(
                    Str(
                        64,
                        min_len=1,
                        pattern=r"[A-Za-z0-9_.:%@-]+",
                        pattern_reason="is not an interface name or address",
                    ),
                    "interface (name or address) to join the multicast group on",
                ),
                "srtp": Nullable(_SRTP),
            },
            required=("type",),
            description="RTP (or SRTP) sent to a UDP port of the server",
        ),
        "file": Obj(
            {
                "type": Const("file"),
                "path": Str(
                    4096, "absolute path of a WebM/Matroska or MP4 file on the server", min_len=1
                ),
                "loop": Bool("start again at the end (default true)"),
                "stream": Nullable(
                    Int(0, 255),
                    "the file's stream index; null = the next stream of this media's kind",
                ),
            },
            required=("type", "path"),
            description="a file, demuxed and packetized without transcoding",
        ),
        "test": Obj(
            {
                "type": Const("test"),
                "pattern": Choice(TestPattern, "video: the pattern (default smpte)"),
                "width": Int(16, 1920, "video: width in pixels, even (default 640)"),
                "height": Int(16, 1080, "video: height in pixels, even (default 360)"),
                "fps": Int(1, 60, "video: frames per second (default 30)"),
                "tone_hz": Int(20, 20000, "audio: sine tone frequency (default 440)"),
            },
            required=("type",),
            description="a generated test pattern (video) or tone (audio)",
        ),
        "whip": Obj(
            {
                "type": Const("whip"),
                "token": Nullable(
                    Str(512, min_len=1), "bearer token the WHIP publisher must send; null = none"
                ),
            },
            required=("type",),
            description="a WHIP (RFC 9725) publisher pushes this media",
        ),
    },
    "where the media comes from; all media of a mountpoint use the same source type",
)

MEDIA_RULE: Final = Obj(
    {
        "mid": Str(
            16,
            "media id in the SDP (default: its index, '0', '1', ...)",
            min_len=1,
            pattern=r"[A-Za-z0-9_-]+",
            pattern_reason="is not a mid (letters, digits, '_' and '-')",
        ),
        "kind": Choice(MediaKind, "audio or video (default: from the codec)"),
        "codec": Choice(Codec, "opus (audio) or VP8, VP9, H264 (video)"),
        "payload_type": Int(
            96, 127, "RTP payload type (default opus 111, VP8 96, VP9 98, H264 102)"
        ),
        "clock_rate": Int(8000, 90000, "RTP clock rate: 48000 for opus, 90000 for video"),
        "fmtp": _FMTP,
        "source": _SOURCES,
    },
    required=("codec", "source"),
    description="one audio or video stream of the mountpoint",
)

_NAME = Str(MAX_NAME, "display name (default 'mountpoint-<id>')", min_len=1)
_DESCRIPTION = Str(MAX_DESCRIPTION, "free text")
_METADATA = JsonObject(
    MAX_METADATA_BYTES, MAX_METADATA_DEPTH, f"free JSON object, at most {MAX_METADATA_BYTES} bytes"
)
_PRIVATE = Bool("hidden from the list unless the admin key is sent")
_PERMANENT = Bool("stored in the database and restored at start-up")

MOUNTPOINT_RULE: Final = Obj(
    {
        "id": Int(0, MAX_ID, "unique id; 0 or absent = allocate one"),
        "name": _NAME,
        "description": _DESCRIPTION,
        "metadata": _METADATA,
        "secret": _SECRET,
        "pin": _PIN,
        "is_private": _PRIVATE,
        "enabled": Bool("start its source now (default true)"),
        "permanent": _PERMANENT,
        "media": ListOf(MEDIA_RULE, 1, MAX_MEDIA, "the streams, 1 to 8"),
    },
    required=("media",),
    description="a streaming mountpoint",
)

PATCH_RULE: Final = Obj(
    {
        "name": _NAME,
        "description": _DESCRIPTION,
        "metadata": _METADATA,
        "secret": _SECRET,
        "pin": _PIN,
        "is_private": _PRIVATE,
        "permanent": Bool("true stores it in the database, false removes it from there"),
    },
    description="the fields to change; absent ones keep their value",
    fixed={
        "id": "cannot be changed",
        "media": "cannot be edited: destroy the mountpoint and create it again",
        "enabled": "use POST /api/mountpoints/{id}/enable or /disable",
    },
)


# --------------------------------------------------------------------------------------------
# Building the model from validated JSON
# --------------------------------------------------------------------------------------------


def parse_mountpoint(body: object) -> Mountpoint:
    """A mountpoint from its JSON form (a create body or ``to_admin_json()``), or StreamingError.

    Ports may be 0 (allocate) and ``id`` may be 0 (allocate); the registry fills them in.
    """
    d = _parse(MOUNTPOINT_RULE, body)
    problems: list[Problem] = []
    media = tuple(_media(i, m, problems) for i, m in enumerate(d["media"]))
    _check_media_set(media, problems)
    if problems:
        raise StreamingError.invalid(problems)
    return Mountpoint(
        id=d.get("id", 0),
        name=d.get("name", ""),
        media=media,
        description=d.get("description", ""),
        metadata=d.get("metadata", {}),
        secret=d.get("secret"),
        pin=d.get("pin"),
        is_private=d.get("is_private", False),
        enabled=d.get("enabled", True),
        permanent=d.get("permanent", False),
    )


def parse_patch(body: object) -> MountpointPatch:
    """An edit from its JSON form, or StreamingError."""
    return MountpointPatch(_parse(PATCH_RULE, body))


def _media(i: int, m: Mapping[str, Any], problems: list[Problem]) -> MediaEntry:
    where = f"media[{i}]"
    codec: Codec = m["codec"]
    kind = m.get("kind", codec.kind)
    if kind is not codec.kind:
        problems.append(
            Problem(
                f"{where}.kind",
                f"{kind.value!r} does not match codec {codec.value} ({codec.kind.value})",
            )
        )
    clock_rate = m.get("clock_rate", codec.clock_rate)
    if clock_rate != codec.clock_rate:
        problems.append(
            Problem(f"{where}.clock_rate", f"{codec.value} runs at {codec.clock_rate} Hz")
        )
    source = _source(f"{where}.source", codec.kind, m["source"], problems)
    return MediaEntry(
        mid=m.get("mid", str(i)),
        kind=codec.kind,
        codec=codec,
        payload_type=m.get("payload_type", codec.default_payload_type),
        clock_rate=codec.clock_rate,
        fmtp=m.get("fmtp"),
        source=source,
    )


def _source(where: str, kind: MediaKind, s: Mapping[str, Any], problems: list[Problem]) -> Source:
    kind_name = kind.value
    match s["type"]:
        case "rtp":
            return _rtp_source(where, s, problems)
        case "file":
            path: str = s["path"]
            if not path.startswith("/"):
                problems.append(Problem(f"{where}.path", "must be an absolute path"))
            return FileSource(path=path, loop=s.get("loop", True), stream=s.get("stream"))
        case "test":
            video_only = ("pattern", "width", "height", "fps")
            wrong = ("tone_hz",) if kind is MediaKind.VIDEO else video_only
            for key in wrong:
                if key in s:
                    problems.append(Problem(f"{where}.{key}", f"does not apply to {kind_name}"))
            for key in ("width", "height"):
                if s.get(key, 2) % 2:
                    problems.append(Problem(f"{where}.{key}", "must be even"))
            return TestSource(
                pattern=s.get("pattern", TestPattern.SMPTE),
                width=s.get("width", 640),
                height=s.get("height", 360),
                fps=s.get("fps", 30),
                tone_hz=s.get("tone_hz", 440),
            )
        case _:
            return WhipSource(token=s.get("token"))


def _rtp_source(where: str, s: Mapping[str, Any], problems: list[Problem]) -> RtpSource:
    host: IPAddress | None = s.get("host")
    group: IPAddress | None = s.get("multicast")
    iface: str | None = s.get("iface")
    if host is not None and group is not None:
        problems.append(Problem(f"{where}.host", "give host (unicast) or multicast, not both"))
    if host is not None and host.is_multicast:
        problems.append(Problem(f"{where}.host", "is a multicast address: use multicast"))
    if iface is not None and group is None:
        problems.append(Problem(f"{where}.iface", "only applies with multicast"))
    if iface is not None and group is not None:
        try:
            iface_ip = ipaddress.ip_address(iface)
        except ValueError:
            iface_ip = None
        if iface_ip is not None and iface_ip.version != group.version:
            problems.append(Problem(f"{where}.iface", "is not of the multicast group's family"))
    srtp: Srtp | None = None
    raw = s.get("srtp")
    if raw is not None:
        profile: SrtpProfile = raw["profile"]
        try:
            key = base64.b64decode(raw["key"], validate=True)
        except (binascii.Error, ValueError):
            problems.append(Problem(f"{where}.srtp.key", "is not base64"))
        else:
            if len(key) != profile.key_length:
                problems.append(
                    Problem(
                        f"{where}.srtp.key",
                        f"is {len(key)} bytes; {profile.value} needs {profile.key_length} "
                        "(master key + salt)",
                    )
                )
            srtp = Srtp(profile, key)
    return RtpSource(port=s.get("port", 0), host=host, multicast=group, iface=iface, srtp=srtp)


def _check_media_set(media: Sequence[MediaEntry], problems: list[Problem]) -> None:
    """Checks across the media entries of one mountpoint."""
    first = media[0]
    seen_mid: dict[str, int] = {}
    seen_pt: dict[int, MediaEntry] = {}
    seen_port: dict[int, int] = {}
    seen_stream: dict[int, int] = {}
    for i, m in enumerate(media):
        where = f"media[{i}]"
        if m.mid in seen_mid:
            problems.append(
                Problem(f"{where}.mid", f"{m.mid!r} is also media[{seen_mid[m.mid]}]'s")
            )
        seen_mid.setdefault(m.mid, i)
        other = seen_pt.setdefault(m.payload_type, m)
        if (other.codec, other.fmtp) != (m.codec, m.fmtp):
            problems.append(
                Problem(
                    f"{where}.payload_type",
                    f"{m.payload_type} already names another codec or fmtp in this mountpoint",
                )
            )
        src = m.source
        if src.type is not first.source.type:
            problems.append(
                Problem(
                    f"{where}.source.type",
                    f"all media of a mountpoint use one source type; media[0] is "
                    f"{first.source.type.value!r}",
                )
            )
            continue
        if isinstance(src, RtpSource) and src.port:
            if src.port in seen_port:
                problems.append(
                    Problem(f"{where}.source.port", f"is also media[{seen_port[src.port]}]'s port")
                )
            seen_port.setdefault(src.port, i)
        if isinstance(src, FileSource):
            assert isinstance(first.source, FileSource)
            if (src.path, src.loop) != (first.source.path, first.source.loop):
                problems.append(
                    Problem(
                        f"{where}.source",
                        "all media of a file mountpoint share one file: "
                        "path and loop must be media[0]'s",
                    )
                )
            if src.stream is not None:
                if src.stream in seen_stream:
                    problems.append(
                        Problem(
                            f"{where}.source.stream",
                            f"is also media[{seen_stream[src.stream]}]'s stream",
                        )
                    )
                seen_stream.setdefault(src.stream, i)
        if isinstance(src, WhipSource):
            assert isinstance(first.source, WhipSource)
            if src.token != first.source.token:
                problems.append(
                    Problem(
                        f"{where}.source.token",
                        "one publisher pushes all media of a WHIP "
                        "mountpoint: the token must be media[0]'s",
                    )
                )
