"""What the server can forward: codecs, RTCP feedback and header extensions, in one place.

Enabling a feature here (an rtcp-fb type, a header extension) is what makes negotiation offer or
accept it; the runtime piece that handles it is registered next to it in :data:`FEEDBACK_HANDLERS`,
so what is negotiated and what runs cannot drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class CodecCapability:
    kind: str  # "audio" | "video"
    name: str  # e.g. "opus", "VP8" (case-insensitive match)
    clock_rate: int
    channels: int | None = None
    # fmtp parameters that must match for the codec to be the same codec (H.264 profile, mode)
    match_params: tuple[tuple[str, str], ...] = ()
    feedback: tuple[str, ...] = ()  # "nack", "nack pli", "ccm fir", "goog-remb"
    preference: int = 0  # lower is preferred


@dataclass(frozen=True)
class RouterCapabilities:
    codecs: tuple[CodecCapability, ...]
    header_extensions: dict[str, tuple[str, ...]] = field(default_factory=dict)  # kind -> uris


VIDEO_FEEDBACK = ("nack", "nack pli", "ccm fir", "goog-remb")
AUDIO_FEEDBACK: tuple[str, ...] = ()

MID_URI = "urn:ietf:params:rtp-hdrext:sdes:mid"
ABS_SEND_TIME_URI = "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time"
AUDIO_LEVEL_URI = "urn:ietf:params:rtp-hdrext:ssrc-audio-level"
RID_URI = "urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id"

DEFAULT_CAPABILITIES = RouterCapabilities(
    codecs=(
        CodecCapability("audio", "opus", 48000, 2, preference=0),
        CodecCapability("video", "VP8", 90000, feedback=VIDEO_FEEDBACK, preference=0),
        CodecCapability("video", "VP9", 90000, feedback=VIDEO_FEEDBACK, preference=1),
        CodecCapability(
            "video",
            "H264",
            90000,
            match_params=(("packetization-mode", "1"),),
            feedback=VIDEO_FEEDBACK,
            preference=2,
        ),
    ),
    header_extensions={
        "audio": (MID_URI, AUDIO_LEVEL_URI),
        "video": (MID_URI, ABS_SEND_TIME_URI),
    },
)

# rtcp-fb values and the module that handles each at run time (see sfu.webrtc.rtcp_handler).
FEEDBACK_HANDLERS = {
    "nack": "retransmit from the consumer's cache",
    "nack pli": "keyframe request forwarded to the producer",
    "ccm fir": "keyframe request forwarded to the producer",
    "goog-remb": "receiver estimate, capped per consumer and relayed upstream",
}
