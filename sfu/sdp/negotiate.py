"""Negotiation as pure functions: pick codecs, feedback and extensions, and write SDP.

``answer_media`` decides, per remote m-section, what the server accepts; ``write_description``
renders the server's side (an answer or an offer) from those decisions and the transport's
ICE/DTLS parameters. Server offers are built from sections (``offer_media``, ``offer_section``);
a re-offer on the same transport keeps every earlier section in place (``check_reoffer``) and
marks the ones that carry nothing any more inactive (``deactivate``). Nothing here touches the
network or the clock.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from sfu.dtls.certificate import Fingerprint
from sfu.sdp.capabilities import DEFAULT_CAPABILITIES, CodecCapability, RouterCapabilities
from sfu.sdp.description import RemoteCodec, RemoteDescription, RemoteMedia, SdpError


@dataclass(frozen=True)
class NegotiatedMedia:
    """The server's side of one m-section."""

    index: int
    mid: str
    kind: str
    direction: str  # the server's direction
    codec: RemoteCodec | None  # None when rejected
    feedback: tuple[str, ...] = ()
    extensions: tuple[tuple[int, str], ...] = ()
    recv_ssrcs: tuple[int, ...] = ()  # what the peer sends (primary SSRCs, RTX excluded)
    send_ssrc: int | None = None  # what the server sends
    cname: str = "sfu"
    msid: str | None = None  # "stream track"
    rejected_reason: str | None = None
    protocol: str = "UDP/TLS/RTP/SAVPF"

    @property
    def rejected(self) -> bool:
        return self.codec is None


@dataclass(frozen=True)
class LocalParameters:
    ice_ufrag: str
    ice_pwd: str
    fingerprints: Sequence[Fingerprint]
    setup: str  # "active" | "passive" | "actpass"
    candidates: Sequence[str] = ()  # "candidate:..." values
    end_of_candidates: bool = False
    session_id: int = field(default_factory=lambda: secrets.randbits(62))
    session_version: int = 1


def _matches(cap: CodecCapability, codec: RemoteCodec, kind: str) -> bool:
    if cap.kind != kind or cap.name.lower() != codec.name.lower():
        return False
    if cap.clock_rate != codec.clock_rate:
        return False
    if cap.channels is not None and (codec.channels or 1) != cap.channels:
        return False
    return all(codec.parameters.get(k) == v for k, v in cap.match_params)


def choose_codec(
    media: RemoteMedia, caps: RouterCapabilities
) -> tuple[RemoteCodec, CodecCapability]:
    """The remote codec the server prefers for this m-section (raises SdpError if none fits)."""
    best: tuple[int, int, RemoteCodec, CodecCapability] | None = None
    for order, codec in enumerate(media.codecs):
        for cap in caps.codecs:
            if _matches(cap, codec, media.kind):
                key = (cap.preference, order)
                if best is None or key < best[:2]:
                    best = (cap.preference, order, codec, cap)
    if best is None:
        offered = ", ".join(f"{c.name}/{c.clock_rate}" for c in media.codecs) or "none"
        raise SdpError(
            f"m-section {media.index} ({media.kind}): no supported codec (offered: {offered})"
        )
    return best[2], best[3]


def answer_direction(remote: str, send: bool, recv: bool) -> str:
    """The answer's direction given the offer's and what the server wants to do."""
    peer_sends = remote in ("sendrecv", "sendonly")
    peer_recvs = remote in ("sendrecv", "recvonly")
    we_send = send and peer_recvs
    we_recv = recv and peer_sends
    return {
        (True, True): "sendrecv",
        (True, False): "sendonly",
        (False, True): "recvonly",
        (False, False): "inactive",
    }[(we_send, we_recv)]


def primary_ssrcs(media: RemoteMedia) -> tuple[int, ...]:
    """The peer's media SSRCs, without the RTX/FEC members of its ssrc-groups."""
    secondary = {
        g[1][i] for g in media.ssrc_groups if g[0] in ("FID", "FEC-FR") for i in range(1, len(g[1]))
    }
    return tuple(s for s in media.ssrcs if s not in secondary)


def answer_media(
    remote: RemoteDescription,
    *,
    send: Callable[[RemoteMedia], bool],
    recv: Callable[[RemoteMedia], bool],
    caps: RouterCapabilities = DEFAULT_CAPABILITIES,
    new_ssrc: Callable[[], int] = lambda: secrets.randbits(32) or 1,
    stream_id: str = "sfu",
) -> list[NegotiatedMedia]:
    """Decide every m-section of an offer. Raises SdpError when nothing usable remains."""
    if remote.type != "offer":
        raise SdpError("answer_media needs an offer")
    out: list[NegotiatedMedia] = []
    for m in remote.media:
        if m.kind not in ("audio", "video"):
            out.append(_rejected(m, f"{m.kind} is not supported"))
            continue
        if m.port == 0:
            out.append(_rejected(m, "rejected by the offerer"))
            continue
        if not m.rtcp_mux:
            out.append(_rejected(m, "rtcp-mux is required"))
            continue
        if "SAVPF" not in m.protocol or "TLS" not in m.protocol:
            out.append(_rejected(m, f"protocol {m.protocol} is not DTLS-SRTP"))
            continue
        if remote.bundle and m.mid not in remote.bundle:
            out.append(_rejected(m, "not in the BUNDLE group"))
            continue
        try:
            codec, cap = choose_codec(m, caps)
        except SdpError as exc:
            out.append(_rejected(m, str(exc)))
            continue
        direction = answer_direction(m.direction, send(m), recv(m))
        allowed = set(caps.header_extensions.get(m.kind, ()))
        ext = tuple((i, uri) for i, uri in m.extensions if uri in allowed)
        feedback = tuple(f for f in codec.feedback if f in cap.feedback)
        sends = direction in ("sendrecv", "sendonly")
        out.append(
            NegotiatedMedia(
                index=m.index,
                mid=m.mid,
                kind=m.kind,
                direction=direction,
                codec=RemoteCodec(
                    codec.payload_type,
                    codec.name,
                    codec.clock_rate,
                    codec.channels,
                    codec.parameters,
                    feedback,
                ),
                feedback=feedback,
                extensions=ext,
                recv_ssrcs=primary_ssrcs(m),
                send_ssrc=new_ssrc() if sends else None,
                msid=f"{stream_id} {stream_id}-{m.kind}-{m.mid}" if sends else None,
                protocol=m.protocol,
            )
        )
    if all(n.rejected for n in out):
        reasons = "; ".join(f"{n.mid}: {n.rejected_reason}" for n in out)
        raise SdpError(f"no usable media in the offer ({reasons})")
    return out


def _rejected(m: RemoteMedia, reason: str) -> NegotiatedMedia:
    return NegotiatedMedia(
        index=m.index,
        mid=m.mid,
        kind=m.kind,
        direction="inactive",
        codec=None,
        rejected_reason=reason,
        protocol=m.protocol,
    )


def write_description(media: Sequence[NegotiatedMedia], local: LocalParameters) -> str:
    """Render the server's SDP for ``media`` (all BUNDLEd on one transport, rtcp-mux)."""
    accepted = [m.mid for m in media if not m.rejected]
    lines = [
        "v=0",
        f"o=- {local.session_id} {local.session_version} IN IP4 0.0.0.0",
        "s=sfu",
        "t=0 0",
    ]
    if accepted:
        lines.append("a=group:BUNDLE " + " ".join(accepted))
    lines.append("a=msid-semantic: WMS *")
    first = True
    for m in media:
        if m.rejected:
            fmt = "webrtc-datachannel" if m.kind == "application" else "0"
            lines += [
                f"m={m.kind} 0 {m.protocol} {fmt}",
                "c=IN IP4 0.0.0.0",
                f"a=mid:{m.mid}",
                "a=inactive",
            ]
            continue
        assert m.codec is not None
        c = m.codec
        lines += [
            f"m={m.kind} 9 UDP/TLS/RTP/SAVPF {c.payload_type}",
            "c=IN IP4 0.0.0.0",
            "a=rtcp:9 IN IP4 0.0.0.0",
            f"a=ice-ufrag:{local.ice_ufrag}",
            f"a=ice-pwd:{local.ice_pwd}",
            "a=ice-options:trickle",
        ]
        lines += [f"a=fingerprint:{fp.algorithm} {fp.value}" for fp in local.fingerprints]
        lines += [f"a=setup:{local.setup}", f"a=mid:{m.mid}"]
        lines += [f"a=extmap:{i} {uri}" for i, uri in m.extensions]
        lines.append(f"a={m.direction}")
        if m.msid:
            lines.append(f"a=msid:{m.msid}")
        lines.append("a=rtcp-mux")
        rtpmap = f"{c.name}/{c.clock_rate}" + (
            f"/{c.channels}" if c.channels and c.channels > 1 else ""
        )
        lines.append(f"a=rtpmap:{c.payload_type} {rtpmap}")
        lines += [f"a=rtcp-fb:{c.payload_type} {fb}" for fb in m.feedback]
        if c.parameters:
            params = ";".join(f"{k}={v}" for k, v in c.parameters.items())
            lines.append(f"a=fmtp:{c.payload_type} {params}")
        if m.send_ssrc is not None:
            lines.append(f"a=ssrc:{m.send_ssrc} cname:{m.cname}")
            if m.msid:
                lines.append(f"a=ssrc:{m.send_ssrc} msid:{m.msid}")
        if first:
            lines += [f"a={cand}" for cand in local.candidates]
            if local.end_of_candidates:
                lines.append("a=end-of-candidates")
            first = False
    return "\r\n".join(lines) + "\r\n"


# -- the server offers ------------------------------------------------------------------------------

# Payload types and header extension ids the server uses in its own offers (one codec per kind).
OFFER_CODECS: dict[str, RemoteCodec] = {
    "audio": RemoteCodec(111, "opus", 48000, 2, {"minptime": "10", "useinbandfec": "1"}, ()),
    "video": RemoteCodec(96, "VP8", 90000, None, {}, ("nack", "nack pli", "ccm fir", "goog-remb")),
}
OFFER_EXTENSIONS: dict[str, tuple[tuple[int, str], ...]] = {
    "audio": (
        (1, "urn:ietf:params:rtp-hdrext:sdes:mid"),
        (2, "urn:ietf:params:rtp-hdrext:ssrc-audio-level"),
    ),
    "video": (
        (1, "urn:ietf:params:rtp-hdrext:sdes:mid"),
        (3, "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time"),
    ),
}


def offer_media(
    kinds: Sequence[str],
    *,
    direction: str = "sendrecv",
    new_ssrc: Callable[[], int] = lambda: secrets.randbits(32) or 1,
    stream_id: str = "sfu",
) -> list[NegotiatedMedia]:
    """The m-sections of a server offer: one per kind, mids "0", "1", ..."""
    out = []
    for index, kind in enumerate(kinds):
        if kind not in OFFER_CODECS:
            raise ValueError(f"cannot offer {kind!r}")
        codec = OFFER_CODECS[kind]
        sends = direction in ("sendrecv", "sendonly")
        out.append(
            NegotiatedMedia(
                index=index,
                mid=str(index),
                kind=kind,
                direction=direction,
                codec=codec,
                feedback=codec.feedback,
                extensions=OFFER_EXTENSIONS[kind],
                send_ssrc=new_ssrc() if sends else None,
                msid=f"{stream_id} {stream_id}-{kind}-{index}" if sends else None,
            )
        )
    return out


def offer_section(
    index: int,
    kind: str,
    codec: RemoteCodec,
    *,
    mid: str | None = None,
    direction: str = "sendonly",
    send_ssrc: int | None = None,
    msid: str | None = None,
    cname: str = "sfu",
    extensions: tuple[tuple[int, str], ...] = (),
) -> NegotiatedMedia:
    """One m-section of a server offer carrying ``codec`` (its feedback offered with it)."""
    if kind not in ("audio", "video"):
        raise ValueError(f"cannot offer {kind!r}")
    if direction not in _REVERSE:
        raise ValueError(f"unknown direction {direction!r}")
    sends = direction in ("sendrecv", "sendonly")
    if sends and send_ssrc is None:
        raise ValueError("a sending section needs a send_ssrc")
    return NegotiatedMedia(
        index=index,
        mid=str(index) if mid is None else mid,
        kind=kind,
        direction=direction,
        codec=codec,
        feedback=codec.feedback,
        extensions=extensions,
        send_ssrc=send_ssrc if sends else None,
        cname=cname,
        msid=msid if sends else None,
    )


def deactivate(section: NegotiatedMedia) -> NegotiatedMedia:
    """The section as a re-offer carries it once its track is gone: same index, mid, codec and
    extensions, direction inactive, no SSRC and no msid. It stays in the BUNDLE group (port 9),
    so the transport lives on even when every section is inactive."""
    return replace(section, direction="inactive", send_ssrc=None, msid=None, recv_ssrcs=())


def check_reoffer(previous: Sequence[NegotiatedMedia], new: Sequence[NegotiatedMedia]) -> None:
    """Raise SdpError unless ``new`` keeps every section of ``previous`` at its index with the
    same mid, kind and payload type (sections may only be appended, RFC 8829 5.2.2), and no mid
    is used twice."""
    if len(new) < len(previous):
        raise SdpError(f"a re-offer cannot drop m-sections ({len(previous)} -> {len(new)})")
    for old, cur in zip(previous, new, strict=False):
        if (old.index, old.mid, old.kind) != (cur.index, cur.mid, cur.kind):
            raise SdpError(
                f"m-section {old.index} changed from {old.kind}/{old.mid} to {cur.kind}/{cur.mid}"
            )
        if old.codec is not None and cur.codec is not None:
            if old.codec.payload_type != cur.codec.payload_type:
                raise SdpError(f"m-section {old.index} changed its payload type")
    mids = [m.mid for m in new]
    if len(set(mids)) != len(mids):
        raise SdpError("a mid is used twice")
    if any(m.index != i for i, m in enumerate(new)):
        raise SdpError("m-section indexes must be 0, 1, 2, ...")


_REVERSE = {
    "sendrecv": "sendrecv",
    "sendonly": "recvonly",
    "recvonly": "sendonly",
    "inactive": "inactive",
}


def apply_answer(
    offered: Sequence[NegotiatedMedia], remote: RemoteDescription
) -> list[NegotiatedMedia]:
    """Check an answer against what the server offered; fill in the peer's SSRCs and directions."""
    if remote.type != "answer":
        raise SdpError("apply_answer needs an answer")
    if len(remote.media) != len(offered):
        raise SdpError(
            f"the answer has {len(remote.media)} m-sections, the offer had {len(offered)}"
        )
    out: list[NegotiatedMedia] = []
    for ours, theirs in zip(offered, remote.media, strict=True):
        if theirs.kind != ours.kind or theirs.mid != ours.mid:
            raise SdpError(
                f"m-section {ours.index}: answer has {theirs.kind}/{theirs.mid}, offer {ours.kind}/{ours.mid}"
            )
        if ours.codec is None or theirs.port == 0:
            out.append(_rejected(theirs, "rejected by the answerer"))
            continue
        if not any(c.payload_type == ours.codec.payload_type for c in theirs.codecs):
            raise SdpError(f"m-section {ours.index}: the answer does not accept {ours.codec.name}")
        if not theirs.rtcp_mux:
            raise SdpError(f"m-section {ours.index}: rtcp-mux is required")
        theirs_dir = theirs.direction
        # what we may do is the intersection of what we offered and the reverse of their answer
        allowed = {
            "sendrecv": {"send", "recv"},
            "sendonly": {"send"},
            "recvonly": {"recv"},
            "inactive": set(),
        }
        ours_can = allowed[ours.direction] & allowed[_REVERSE[theirs_dir]]
        direction = {
            frozenset({"send", "recv"}): "sendrecv",
            frozenset({"send"}): "sendonly",
            frozenset({"recv"}): "recvonly",
            frozenset(): "inactive",
        }[frozenset(ours_can)]
        out.append(
            NegotiatedMedia(
                index=ours.index,
                mid=ours.mid,
                kind=ours.kind,
                direction=direction,
                codec=ours.codec,
                feedback=tuple(
                    f for f in ours.feedback if any(f in c.feedback for c in theirs.codecs)
                ),
                extensions=ours.extensions,
                recv_ssrcs=primary_ssrcs(theirs) if "recv" in ours_can else (),
                send_ssrc=ours.send_ssrc if "send" in ours_can else None,
                cname=ours.cname,
                msid=ours.msid,
                protocol=ours.protocol,
            )
        )
    if all(m.rejected for m in out):
        raise SdpError("the answer rejected every m-section")
    return out


# -- simulcast with RID (RFC 8853, RFC 8851) ---------------------------------------------------------

RRID_URI = "urn:ietf:params:rtp-hdrext:sdes:repaired-rtp-stream-id"
SIMULCAST_EXTENSIONS = (
    "urn:ietf:params:rtp-hdrext:sdes:mid",
    "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id",
    RRID_URI,
)


@dataclass(frozen=True)
class SimulcastOffer:
    """An m-section that sends simulcast: its mid and the RIDs, in the order of the offer's
    ``a=simulcast:send`` (the first alternative of each stream; paused ``~`` ones left out)."""

    mid: str
    rids: tuple[str, ...]


def simulcast_offers(sdp: str) -> dict[str, SimulcastOffer]:
    """The m-sections of an offer with ``a=simulcast:send`` and matching ``a=rid:<id> send``
    lines, by mid (aiortc's parser ignores both attributes, so this reads the text)."""
    out: dict[str, SimulcastOffer] = {}
    sections: list[list[str]] = []
    for raw in sdp.splitlines():
        line = raw.strip()
        if line.startswith("m="):
            sections.append([])
        elif sections:
            sections[-1].append(line)
    for index, lines in enumerate(sections):
        mid = str(index)
        send_rids: set[str] = set()
        order: list[str] = []
        for line in lines:
            if line.startswith("a=mid:"):
                mid = line[len("a=mid:") :]
            elif line.startswith("a=rid:"):
                parts = line[len("a=rid:") :].split()
                if len(parts) >= 2 and parts[1] == "send":
                    send_rids.add(parts[0])
            elif line.startswith("a=simulcast:"):
                words = line[len("a=simulcast:") :].split()
                for direction, streams in zip(words[::2], words[1::2], strict=False):
                    if direction == "send":
                        for alternatives in streams.split(";"):
                            first = alternatives.split(",")[0]
                            if first and not first.startswith("~"):
                                order.append(first)
        rids = tuple(dict.fromkeys(r for r in order if r in send_rids))
        if len(rids) >= 1:
            out[mid] = SimulcastOffer(mid, rids)
    return out


def with_simulcast_extensions(caps: RouterCapabilities) -> RouterCapabilities:
    """``caps`` accepting the MID, RID and repaired-RID header extensions on video."""
    exts = dict(caps.header_extensions)
    exts["video"] = tuple(dict.fromkeys((*exts.get("video", ()), *SIMULCAST_EXTENSIONS)))
    return replace(caps, header_extensions=exts)


def add_simulcast_answer(
    answer: str, offers: dict[str, SimulcastOffer], start_kbps: int | None = None
) -> str:
    """The answer with ``a=rid:<id> recv`` and ``a=simulcast:recv`` in each accepted section
    whose mid is in ``offers`` (a rejected or inactive section gets nothing). ``start_kbps``
    adds ``x-google-start-bitrate`` to the section's codec (libwebrtc's initial send estimate:
    high enough, every layer starts at once instead of after a slow ramp)."""
    out: list[str] = []
    pending: SimulcastOffer | None = None
    active = False
    section_start = 0
    payload_type = ""

    def flush() -> None:
        if pending is None or not active:
            return
        out.extend(f"a=rid:{rid} recv" for rid in pending.rids)
        out.append("a=simulcast:recv " + ";".join(pending.rids))
        if start_kbps is None or not payload_type:
            return
        param = f"x-google-start-bitrate={start_kbps}"
        prefix = f"a=fmtp:{payload_type} "
        for i in range(section_start, len(out)):
            if out[i].startswith(prefix):
                out[i] += ";" + param
                return
        out.append(prefix + param)

    for line in answer.splitlines():
        if line.startswith("m="):
            flush()
            words = line.split()
            pending, active = None, len(words) > 3 and words[1] != "0"
            section_start, payload_type = len(out), words[3] if len(words) > 3 else ""
        elif line.startswith("a=mid:"):
            pending = offers.get(line[len("a=mid:") :])
        elif line in ("a=inactive", "a=sendonly"):
            active = False
        out.append(line)
    flush()
    return "\r\n".join(out) + "\r\n"
