"""Parsing and validating a remote session description, on top of aiortc's SDP codec.

aiortc's parser is lenient in places and asserts in others; this module turns every failure into
:class:`SdpError` with a reason a user can act on, and extracts what a WebRTC transport needs:
ICE credentials, DTLS fingerprints and role, the BUNDLE group, and per media section the codecs,
feedback, header extensions and SSRCs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from aiortc import sdp as aiosdp

from sfu.dtls.certificate import Fingerprint, parse_fingerprint


class SdpError(ValueError):
    """The SDP cannot be used; the message says why."""


@dataclass(frozen=True)
class RemoteCodec:
    payload_type: int
    name: str
    clock_rate: int
    channels: int | None
    parameters: dict[str, str]
    feedback: tuple[str, ...]
    rtx_payload_type: int | None = None


@dataclass(frozen=True)
class RemoteMedia:
    index: int
    kind: str  # "audio" | "video" | "application" | other
    mid: str
    port: int
    direction: str  # sendrecv | sendonly | recvonly | inactive
    codecs: tuple[RemoteCodec, ...]
    extensions: tuple[tuple[int, str], ...]
    ssrcs: tuple[int, ...]
    ssrc_groups: tuple[tuple[str, tuple[int, ...]], ...]
    cname: str | None
    msid: str | None
    rtcp_mux: bool
    protocol: str


@dataclass(frozen=True)
class RemoteDescription:
    type: str  # "offer" | "answer"
    ice_ufrag: str
    ice_pwd: str
    ice_lite: bool
    fingerprints: tuple[Fingerprint, ...]
    setup: str  # actpass | active | passive
    bundle: tuple[str, ...]
    media: tuple[RemoteMedia, ...]
    candidates: tuple[tuple[str, str], ...] = field(default=())  # (mid, "candidate:...")
    end_of_candidates: bool = False


_DIRECTIONS = ("sendrecv", "sendonly", "recvonly", "inactive")
MAX_SDP_BYTES = 64 * 1024


def _attr_lines(sdp: str) -> list[list[str]]:
    """Media-level attribute lines per m-section (index 0 = session level)."""
    sections: list[list[str]] = [[]]
    for raw in sdp.splitlines():
        line = raw.strip()
        if line.startswith("m="):
            sections.append([])
        sections[-1].append(line)
    return sections


def parse_description(sdp: str, type_: str) -> RemoteDescription:
    """Parse and validate ``sdp`` (an ``offer`` or an ``answer``) for a BUNDLEd WebRTC transport."""
    if type_ not in ("offer", "answer"):
        raise SdpError(f"unknown description type {type_!r}")
    if not isinstance(sdp, str) or not sdp.strip():
        raise SdpError("empty SDP")
    if len(sdp) > MAX_SDP_BYTES:
        raise SdpError(f"SDP larger than {MAX_SDP_BYTES} bytes")
    if not sdp.lstrip().startswith("v=0"):
        raise SdpError("SDP must start with v=0")
    try:
        parsed = aiosdp.SessionDescription.parse(sdp)
    except Exception as exc:  # aiortc asserts and raises bare errors on malformed input
        raise SdpError(f"malformed SDP: {type(exc).__name__}: {exc}".rstrip(": ")) from None
    if not parsed.media:
        raise SdpError("SDP has no media sections")

    raw_sections = _attr_lines(sdp)
    bundle: tuple[str, ...] = ()
    for group in parsed.group:
        if group.semantic == "BUNDLE":
            bundle = tuple(str(i) for i in group.items)

    media: list[RemoteMedia] = []
    ufrag = pwd = None
    ice_lite = False
    fingerprints: list[Fingerprint] = []
    setup: str | None = None
    candidates: list[tuple[str, str]] = []
    end_of_candidates = False
    for index, m in enumerate(parsed.media):
        raw = raw_sections[index + 1] if index + 1 < len(raw_sections) else []
        mid = m.rtp.muxId or str(index)
        if m.ice is not None:
            ufrag = ufrag or m.ice.usernameFragment
            pwd = pwd or m.ice.password
            ice_lite = ice_lite or bool(m.ice.iceLite)
        if m.dtls is not None:
            for fp in m.dtls.fingerprints:
                try:
                    parsed_fp = parse_fingerprint(f"{fp.algorithm} {fp.value}")
                except ValueError as exc:
                    raise SdpError(f"m-section {index}: {exc}") from None
                if parsed_fp not in fingerprints:
                    fingerprints.append(parsed_fp)
        for line in raw:
            if line.startswith("a=setup:"):
                setup = setup or line[len("a=setup:") :]
            elif line.startswith("a=candidate:"):
                candidates.append((mid, line[2:]))
            elif line == "a=end-of-candidates":
                end_of_candidates = True
        codecs = _codecs(m)
        direction = m.direction or "sendrecv"
        if direction not in _DIRECTIONS:
            raise SdpError(f"m-section {index}: unknown direction {direction!r}")
        cname = next((s.cname for s in m.ssrc if s.cname), None)
        media.append(
            RemoteMedia(
                index=index,
                kind=m.kind,
                mid=mid,
                port=m.port,
                direction=direction,
                codecs=codecs,
                extensions=tuple((e.id, e.uri) for e in m.rtp.headerExtensions),
                ssrcs=tuple(dict.fromkeys(s.ssrc for s in m.ssrc)),
                ssrc_groups=tuple(
                    (g.semantic, tuple(int(i) for i in g.items)) for g in m.ssrc_group
                ),
                cname=cname,
                msid=m.msid,
                rtcp_mux=m.rtcp_mux,
                protocol=m.profile,
            )
        )
    if not ufrag or not pwd:
        raise SdpError("SDP has no a=ice-ufrag / a=ice-pwd")
    if not fingerprints:
        raise SdpError("SDP has no a=fingerprint (DTLS-SRTP is required)")
    if setup is None:
        setup = "actpass" if type_ == "offer" else "active"
    if setup not in ("actpass", "active", "passive"):
        raise SdpError(f"unknown a=setup:{setup}")
    if type_ == "answer" and setup == "actpass":
        raise SdpError("an answer cannot use a=setup:actpass")
    return RemoteDescription(
        type=type_,
        ice_ufrag=ufrag,
        ice_pwd=pwd,
        ice_lite=ice_lite,
        fingerprints=tuple(fingerprints),
        setup=setup,
        bundle=bundle,
        media=tuple(media),
        candidates=tuple(candidates),
        end_of_candidates=end_of_candidates,
    )


def _codecs(m: aiosdp.MediaDescription) -> tuple[RemoteCodec, ...]:
    if m.kind not in ("audio", "video"):
        return ()
    rtx: dict[int, int] = {}  # apt -> rtx pt
    out: list[RemoteCodec] = []
    for c in m.rtp.codecs:
        name = c.mimeType.split("/", 1)[1]
        if c.payloadType is None:
            continue
        params = {str(k): str(v) for k, v in (c.parameters or {}).items()}
        if name.lower() == "rtx":
            try:
                rtx[int(params.get("apt", "-1"))] = c.payloadType
            except ValueError:
                pass
            continue
        feedback = tuple(
            f"{fb.type} {fb.parameter}" if fb.parameter else fb.type for fb in c.rtcpFeedback
        )
        out.append(RemoteCodec(c.payloadType, name, c.clockRate, c.channels, params, feedback))
    return tuple(
        RemoteCodec(
            c.payload_type,
            c.name,
            c.clock_rate,
            c.channels,
            c.parameters,
            c.feedback,
            rtx.get(c.payload_type),
        )
        for c in out
    )
