"""SRTP/SRTCP in C (sfu.engine._srtp) checked byte for byte against libsrtp (pylibsrtp)."""

from __future__ import annotations

import hashlib
import hmac
import random
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pylibsrtp
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from pylibsrtp import Policy, Session

from sfu.engine import _srtp
from sfu.engine._srtp import SrtpError, SrtpSession


@dataclass(frozen=True)
class Profile:
    ours: int
    libsrtp: int
    salt_len: int
    tag_len: int


AES_CM = Profile(
    _srtp.PROFILE_AES_CM_128_HMAC_SHA1_80, Policy.SRTP_PROFILE_AES128_CM_SHA1_80, 14, 10
)
GCM = Profile(_srtp.PROFILE_AEAD_AES_128_GCM, Policy.SRTP_PROFILE_AEAD_AES_128_GCM, 12, 16)


@pytest.fixture(params=[AES_CM, GCM], ids=["aes_cm_sha1_80", "aead_aes_128_gcm"])
def profile(request: pytest.FixtureRequest) -> Profile:
    param: Profile = request.param
    return param


@dataclass
class Keys:
    key: bytes
    salt: bytes


def make_keys(profile: Profile, rng: random.Random) -> Keys:
    return Keys(rng.randbytes(16), rng.randbytes(profile.salt_len))


def ours(profile: Profile, keys: Keys, outbound: bool) -> SrtpSession:
    return SrtpSession(profile.ours, keys.key, keys.salt, outbound)


def libsrtp(profile: Profile, keys: Keys, outbound: bool) -> Session:
    ssrc_type = Policy.SSRC_ANY_OUTBOUND if outbound else Policy.SSRC_ANY_INBOUND
    return Session(
        Policy(key=keys.key + keys.salt, ssrc_type=ssrc_type, srtp_profile=profile.libsrtp)
    )


def rtp_packet(
    rng: random.Random,
    ssrc: int,
    seq: int,
    *,
    csrcs: int | None = None,
    ext_words: int | None = None,
    payload_len: int | None = None,
    padding: bool = False,
) -> bytes:
    """An RTP packet with random CSRCs, extension, payload and (optionally) padding."""
    if csrcs is None:
        csrcs = rng.choice([0, 0, 0, 1, 2, 15])
    if ext_words is None:
        ext_words = rng.choice([-1, -1, 0, 1, 3])  # -1: no extension
    if payload_len is None:
        payload_len = rng.randint(0, 1200)
    first = 0x80 | csrcs | (0x10 if ext_words >= 0 else 0) | (0x20 if padding else 0)
    second = rng.choice([0, 0x80]) | rng.choice([96, 111, 100])
    out = struct.pack("!BBHII", first, second, seq & 0xFFFF, rng.getrandbits(32), ssrc)
    out += rng.randbytes(4 * csrcs)
    if ext_words >= 0:
        out += struct.pack("!HH", 0xBEDE, ext_words) + rng.randbytes(4 * ext_words)
    out += rng.randbytes(payload_len)
    if padding:
        pad = rng.randint(1, 16)
        out += bytes(pad - 1) + bytes([pad])
    return out


def rtcp_packet(rng: random.Random, ssrc: int) -> bytes:
    """A compound-ish RTCP packet: SR/RR-shaped header with the sender SSRC, random body."""
    words = rng.randint(1, 60)
    header = struct.pack(
        "!BBHI", 0x80 | rng.randint(0, 3), rng.choice([200, 201, 205, 206]), words, ssrc
    )
    return header + rng.randbytes(4 * words)


def interleaved_rtp(
    rng: random.Random, ssrcs: dict[int, int], count: int, reorder: float = 0.05
) -> Iterator[bytes]:
    """`count` packets over several SSRCs (start seq per SSRC), with some local reordering."""
    next_seq = dict(ssrcs)
    held: bytes | None = None
    for _ in range(count):
        ssrc = rng.choice(list(next_seq))
        packet = rtp_packet(rng, ssrc, next_seq[ssrc], padding=rng.random() < 0.05)
        next_seq[ssrc] = (next_seq[ssrc] + 1) & 0xFFFF
        if held is None and rng.random() < reorder:
            held = packet
            continue
        yield packet
        if held is not None:
            yield held
            held = None
    if held is not None:
        yield held


# ---- byte identity with libsrtp ----


def test_rtp_protect_is_byte_identical_across_seq_wrap(profile: Profile) -> None:
    rng = random.Random(1)
    keys = make_keys(profile, rng)
    mine, ref = ours(profile, keys, True), libsrtp(profile, keys, True)
    starts = {rng.getrandbits(32): 65535 - rng.randint(0, 600) for _ in range(4)}
    count = 0
    for packet in interleaved_rtp(rng, starts, 4000):
        assert mine.protect(packet) == ref.protect(packet), f"packet {count}"
        count += 1
    assert count == 4000
    assert mine.stream_count == 4


def test_rtp_protect_is_byte_identical_after_large_roc(profile: Profile) -> None:
    rng = random.Random(2)
    keys = make_keys(profile, rng)
    mine, ref = ours(profile, keys, True), libsrtp(profile, keys, True)
    ssrc = 0xCAFEBABE
    seq = 100
    # Jumps of 30,000 (under 2^15) advance the index; the ROC reaches ~46.
    for _ in range(100):
        packet = rtp_packet(rng, ssrc, seq, payload_len=20)
        assert mine.protect(packet) == ref.protect(packet)
        seq += 30_000
    assert seq >> 16 >= 45
    for packet in interleaved_rtp(rng, {ssrc: seq & 0xFFFF, 7: 65500}, 1500):
        assert mine.protect(packet) == ref.protect(packet)


@pytest.mark.parametrize("s_l", [0, 1, 32767, 32768, 32769, 65535])
def test_roc_estimation_boundaries_match_libsrtp(profile: Profile, s_l: int) -> None:
    rng = random.Random(s_l)
    keys = make_keys(profile, rng)
    for roc in (0, 2):
        for offset in (-32769, -32768, -32767, -1, 1, 32767, 32768, 32769):
            mine, ref = ours(profile, keys, True), libsrtp(profile, keys, True)
            index, target = -30_000, (roc << 16) + s_l
            while index < target:  # walk up in steps the estimator accepts
                index = min(index + 30_000, target)
                packet = rtp_packet(rng, 1, max(index, 0), payload_len=8)
                assert mine.protect(packet) == ref.protect(packet)
            probe = rtp_packet(rng, 1, (s_l + offset) & 0xFFFF, payload_len=8)
            try:
                expected = ref.protect(probe)
            except pylibsrtp.Error:
                with pytest.raises(SrtpError) as caught:
                    mine.protect(probe)
                assert caught.value.code in (_srtp.SRTP_ERR_REPLAY_OLD, _srtp.SRTP_ERR_REPLAY_DUP)
            else:
                assert mine.protect(probe) == expected, (roc, offset)


def test_rtcp_protect_is_byte_identical(profile: Profile) -> None:
    rng = random.Random(3)
    keys = make_keys(profile, rng)
    mine, ref = ours(profile, keys, True), libsrtp(profile, keys, True)
    ssrcs = [rng.getrandbits(32) for _ in range(5)]
    for i in range(3000):
        packet = rtcp_packet(rng, rng.choice(ssrcs))
        protected = mine.protect_rtcp(packet)
        assert protected == ref.protect_rtcp(packet), f"packet {i}"
        assert len(protected) == len(packet) + profile.tag_len + 4


def test_rtp_and_rtcp_of_one_ssrc_share_a_stream(profile: Profile) -> None:
    rng = random.Random(4)
    keys = make_keys(profile, rng)
    mine, ref = ours(profile, keys, True), libsrtp(profile, keys, True)
    for seq in range(65530, 65560):
        rtp = rtp_packet(rng, 42, seq)
        rtcp = rtcp_packet(rng, 42)
        assert mine.protect(rtp) == ref.protect(rtp)
        assert mine.protect_rtcp(rtcp) == ref.protect_rtcp(rtcp)
    assert mine.stream_count == 1


def test_many_streams_and_removal_keep_the_other_streams_intact(profile: Profile) -> None:
    rng = random.Random(5)
    keys = make_keys(profile, rng)
    mine, ref = ours(profile, keys, True), libsrtp(profile, keys, True)
    ssrcs = list({rng.getrandbits(32) for _ in range(300)})
    seq = {ssrc: rng.randint(0, 65535) for ssrc in ssrcs}
    last: dict[int, bytes] = {}
    for _ in range(3):
        for ssrc in ssrcs:
            last[ssrc] = rtp_packet(rng, ssrc, seq[ssrc], payload_len=30)
            seq[ssrc] = (seq[ssrc] + 1) & 0xFFFF
            assert mine.protect(last[ssrc]) == ref.protect(last[ssrc])
    assert mine.stream_count == len(ssrcs)
    removed, kept = ssrcs[::2], ssrcs[1::2]
    for ssrc in removed:
        assert mine.remove_stream(ssrc)
        ref.remove_stream(ssrc)
    assert not mine.remove_stream(removed[0])
    assert mine.stream_count == len(kept)
    for ssrc in kept:  # state survived the deletions: a resend is still a duplicate
        with pytest.raises(SrtpError) as caught:
            mine.protect(last[ssrc])
        assert caught.value.code == _srtp.SRTP_ERR_REPLAY_DUP
    for ssrc in ssrcs:  # removed streams start afresh, in both implementations
        packet = rtp_packet(rng, ssrc, seq[ssrc] + 20_000, payload_len=30)
        assert mine.protect(packet) == ref.protect(packet)


# ---- interoperability ----


def test_libsrtp_protects_we_unprotect(profile: Profile) -> None:
    rng = random.Random(6)
    keys = make_keys(profile, rng)
    sender, receiver = libsrtp(profile, keys, True), ours(profile, keys, False)
    starts = {rng.getrandbits(32): 65535 - rng.randint(0, 300) for _ in range(3)}
    for packet in interleaved_rtp(rng, starts, 2000):
        assert receiver.unprotect(sender.protect(packet)) == packet
    for _ in range(500):
        packet = rtcp_packet(rng, rng.choice(list(starts)))
        assert receiver.unprotect_rtcp(sender.protect_rtcp(packet)) == packet


def test_we_protect_libsrtp_unprotects(profile: Profile) -> None:
    rng = random.Random(7)
    keys = make_keys(profile, rng)
    sender, receiver = ours(profile, keys, True), libsrtp(profile, keys, False)
    starts = {rng.getrandbits(32): 65535 - rng.randint(0, 300) for _ in range(3)}
    for packet in interleaved_rtp(rng, starts, 2000):
        assert receiver.unprotect(sender.protect(packet)) == packet
    for _ in range(500):
        packet = rtcp_packet(rng, rng.choice(list(starts)))
        assert receiver.unprotect_rtcp(sender.protect_rtcp(packet)) == packet


def test_receiver_follows_large_roc(profile: Profile) -> None:
    rng = random.Random(8)
    keys = make_keys(profile, rng)
    sender, receiver = libsrtp(profile, keys, True), ours(profile, keys, False)
    for i in range(200):
        packet = rtp_packet(rng, 9, (i * 30_000) & 0xFFFF, payload_len=10)
        assert receiver.unprotect(sender.protect(packet)) == packet


# ---- replay protection ----


def expect_error(code: int, call: Callable[[bytes], bytes], packet: bytes) -> None:
    with pytest.raises(SrtpError) as caught:
        call(packet)
    assert caught.value.code == code, caught.value


def test_rtp_replay_window(profile: Profile) -> None:
    rng = random.Random(9)
    keys = make_keys(profile, rng)
    sender, receiver = ours(profile, keys, True), ours(profile, keys, False)
    protected = [sender.protect(rtp_packet(rng, 1, 65400 + i)) for i in range(300)]  # wraps
    assert receiver.unprotect(protected[10])
    expect_error(_srtp.SRTP_ERR_REPLAY_DUP, receiver.unprotect, protected[10])
    receiver.unprotect(protected[200])
    for i in range(199, 72, -1):  # out of order, all inside the window
        receiver.unprotect(protected[i])
    expect_error(_srtp.SRTP_ERR_REPLAY_OLD, receiver.unprotect, protected[72])  # 128 behind
    expect_error(_srtp.SRTP_ERR_REPLAY_OLD, receiver.unprotect, protected[11])
    expect_error(_srtp.SRTP_ERR_REPLAY_DUP, receiver.unprotect, protected[73])
    expect_error(_srtp.SRTP_ERR_REPLAY_DUP, receiver.unprotect, protected[200])
    for i in range(201, 300):
        receiver.unprotect(protected[i])
    expect_error(_srtp.SRTP_ERR_REPLAY_DUP, receiver.unprotect, protected[299])


def test_rtcp_replay_window(profile: Profile) -> None:
    rng = random.Random(10)
    keys = make_keys(profile, rng)
    sender, receiver = ours(profile, keys, True), ours(profile, keys, False)
    protected = [sender.protect_rtcp(rtcp_packet(rng, 5)) for _ in range(300)]
    receiver.unprotect_rtcp(protected[0])
    expect_error(_srtp.SRTP_ERR_REPLAY_DUP, receiver.unprotect_rtcp, protected[0])
    receiver.unprotect_rtcp(protected[250])
    receiver.unprotect_rtcp(protected[123])  # 127 behind: inside
    expect_error(_srtp.SRTP_ERR_REPLAY_OLD, receiver.unprotect_rtcp, protected[122])
    expect_error(_srtp.SRTP_ERR_REPLAY_DUP, receiver.unprotect_rtcp, protected[123])
    receiver.unprotect_rtcp(protected[249])


def test_sender_refuses_to_reuse_an_index(profile: Profile) -> None:
    rng = random.Random(11)
    keys = make_keys(profile, rng)
    mine, ref = ours(profile, keys, True), libsrtp(profile, keys, True)
    packet = rtp_packet(rng, 3, 1000)
    assert mine.protect(packet) == ref.protect(packet)
    expect_error(_srtp.SRTP_ERR_REPLAY_DUP, mine.protect, packet)
    with pytest.raises(pylibsrtp.Error):
        ref.protect(packet)


def test_allow_repeat_tx_resends_the_same_bytes(profile: Profile) -> None:
    rng = random.Random(21)
    keys = make_keys(profile, rng)
    mine = SrtpSession(profile.ours, keys.key, keys.salt, True, allow_repeat_tx=True)
    policy = Policy(
        key=keys.key + keys.salt, ssrc_type=Policy.SSRC_ANY_OUTBOUND, srtp_profile=profile.libsrtp
    )
    policy.allow_repeat_tx = True
    ref = Session(policy)
    packets = [rtp_packet(rng, 3, seq) for seq in range(1000, 1200)]
    for packet in packets:
        assert mine.protect(packet) == ref.protect(packet)
    assert mine.protect(packets[150]) == ref.protect(packets[150])
    expect_error(_srtp.SRTP_ERR_REPLAY_OLD, mine.protect, packets[0])


# ---- authentication ----


def flip(packet: bytes, index: int, bit: int = 0) -> bytes:
    out = bytearray(packet)
    out[index] ^= 1 << bit
    return bytes(out)


def test_tampered_rtp_is_rejected_and_the_context_keeps_working(profile: Profile) -> None:
    rng = random.Random(12)
    keys = make_keys(profile, rng)
    sender, receiver = ours(profile, keys, True), ours(profile, keys, False)
    plain = rtp_packet(rng, 77, 500, csrcs=1, ext_words=1, payload_len=100)
    good = sender.protect(plain)
    header_len = 12 + 4 + 8
    tampered = [
        flip(good, 1, 7),  # marker
        flip(good, 3),  # sequence number: another index, still unauthenticated
        flip(good, 5),  # timestamp
        flip(good, 13),  # CSRC
        flip(good, 20),  # extension body
        flip(good, header_len),  # first payload byte
        flip(good, len(good) - profile.tag_len - 1),  # last payload byte
        flip(good, len(good) - 1, 7),  # tag
        flip(good, len(good) - profile.tag_len),  # first tag byte
    ]
    for packet in tampered:
        expect_error(_srtp.SRTP_ERR_AUTH, receiver.unprotect, packet)
    assert receiver.stream_count == 0  # failed packets create no stream
    assert receiver.unprotect(good) == plain
    assert receiver.unprotect(sender.protect(rtp_packet(rng, 77, 501))) is not None
    assert receiver.stream_count == 1


def test_tampered_rtcp_is_rejected_and_the_context_keeps_working(profile: Profile) -> None:
    rng = random.Random(13)
    keys = make_keys(profile, rng)
    sender, receiver = ours(profile, keys, True), ours(profile, keys, False)
    plain = rtcp_packet(rng, 99)
    good = sender.protect_rtcp(plain)
    if profile is GCM:
        trailer = len(good) - 4  # tag16 | E|index
        tag = len(good) - 20
    else:
        trailer = len(good) - 14  # E|index | tag10
        tag = len(good) - 10
    for index in (1, 4, 8, len(plain) - 1, trailer, trailer + 3, tag, len(good) - 1):
        expect_error(_srtp.SRTP_ERR_AUTH, receiver.unprotect_rtcp, flip(good, index))
    expect_error(_srtp.SRTP_ERR_AUTH, receiver.unprotect_rtcp, flip(good, trailer, 7))  # E bit
    assert receiver.unprotect_rtcp(good) == plain


def test_wrong_key_fails_authentication(profile: Profile) -> None:
    rng = random.Random(14)
    sender = ours(profile, make_keys(profile, rng), True)
    receiver = ours(profile, make_keys(profile, rng), False)
    expect_error(_srtp.SRTP_ERR_AUTH, receiver.unprotect, sender.protect(rtp_packet(rng, 1, 1)))
    expect_error(
        _srtp.SRTP_ERR_AUTH, receiver.unprotect_rtcp, sender.protect_rtcp(rtcp_packet(rng, 1))
    )


# ---- SRTCP without encryption (E = 0), built with an independent Python reference ----


def kdf(keys: Keys, label: int, length: int) -> bytes:
    """RFC 3711 4.3.1 AES-CM PRF with kdr = 0 (a 96-bit GCM salt is multiplied by 2^16)."""
    x = bytearray(keys.salt.ljust(14, b"\0"))
    x[7] ^= label
    encryptor = Cipher(algorithms.AES(keys.key), modes.CTR(bytes(x) + b"\0\0")).encryptor()
    return encryptor.update(bytes(length))


def test_unencrypted_srtcp_is_accepted(profile: Profile) -> None:
    rng = random.Random(15)
    keys = make_keys(profile, rng)
    receiver = ours(profile, keys, False)
    plain = rtcp_packet(rng, 0x01020304)
    e_index = struct.pack("!I", 5)  # E = 0, index 5
    if profile is GCM:
        salt = kdf(keys, 5, 12)
        nonce = bytes(2) + plain[4:8] + bytes(2) + e_index
        iv = bytes(a ^ b for a, b in zip(salt, nonce, strict=True))
        tag = AESGCM(kdf(keys, 3, 16)).encrypt(iv, b"", plain + e_index)
        packet = plain + tag + e_index
    else:
        tag = hmac.new(kdf(keys, 4, 20), plain + e_index, hashlib.sha1).digest()[:10]
        packet = plain + e_index + tag
    assert receiver.unprotect_rtcp(packet) == plain
    expect_error(_srtp.SRTP_ERR_REPLAY_DUP, receiver.unprotect_rtcp, packet)


# ---- malformed input ----


def test_malformed_rtp(profile: Profile) -> None:
    rng = random.Random(16)
    keys = make_keys(profile, rng)
    sender, receiver = ours(profile, keys, True), ours(profile, keys, False)
    tag = b"\0" * profile.tag_len
    base = rtp_packet(rng, 1, 1, csrcs=0, ext_words=-1, payload_len=0)
    cases = [b"", b"\x80", base[:11], base[:11] + tag]
    cases += [bytes([v << 6]) + base[1:] + tag for v in (0, 1, 3)]  # bad version
    cases.append(bytes([0x80 | 3]) + base[1:] + b"\0" * 8 + tag)  # 3 CSRCs, room for 2
    cases.append(bytes([0x90]) + base[1:] + b"\xbe\xde" + tag)  # extension header cut short
    cases.append(bytes([0x90]) + base[1:] + b"\xbe\xde\x00\x05" + b"\0" * 16 + tag)  # ext > pkt
    for packet in cases:
        expect_error(_srtp.SRTP_ERR_MALFORMED, receiver.unprotect, packet)
        expect_error(_srtp.SRTP_ERR_MALFORMED, sender.protect, packet[: len(packet) - len(tag)])
    expect_error(_srtp.SRTP_ERR_MALFORMED, sender.protect, base[:11])
    assert sender.stream_count == 0 and receiver.stream_count == 0


def test_malformed_rtcp(profile: Profile) -> None:
    rng = random.Random(17)
    keys = make_keys(profile, rng)
    sender, receiver = ours(profile, keys, True), ours(profile, keys, False)
    good = sender.protect_rtcp(rtcp_packet(rng, 1))
    for packet in (b"", good[:7], good[: 8 + 4 + profile.tag_len - 1]):
        expect_error(_srtp.SRTP_ERR_MALFORMED, receiver.unprotect_rtcp, packet)
    expect_error(_srtp.SRTP_ERR_MALFORMED, receiver.unprotect_rtcp, b"\x40" + good[1:])
    expect_error(_srtp.SRTP_ERR_MALFORMED, sender.protect_rtcp, b"\x80\xc8\x00\x01\x00\x00\x00")
    expect_error(_srtp.SRTP_ERR_MALFORMED, sender.protect_rtcp, b"\xc0\xc8\x00\x01" + bytes(4))


def test_direction_and_capacity_errors(profile: Profile) -> None:
    rng = random.Random(18)
    keys = make_keys(profile, rng)
    sender, receiver = ours(profile, keys, True), ours(profile, keys, False)
    packet = rtp_packet(rng, 1, 1, payload_len=50)
    expect_error(_srtp.SRTP_ERR_DIRECTION, receiver.protect, packet)
    expect_error(_srtp.SRTP_ERR_DIRECTION, sender.unprotect, packet)
    expect_error(_srtp.SRTP_ERR_DIRECTION, receiver.protect_rtcp, rtcp_packet(rng, 1))
    expect_error(_srtp.SRTP_ERR_DIRECTION, sender.unprotect_rtcp, rtcp_packet(rng, 1) + bytes(32))

    buf = bytearray(packet) + bytearray(sender.rtp_overhead - 1)
    with pytest.raises(SrtpError) as caught:
        sender.protect_into(buf, len(packet))
    assert caught.value.code == _srtp.SRTP_ERR_NOSPACE
    buf.append(0)
    length = sender.protect_into(buf, len(packet))
    assert length == len(buf)
    assert receiver.unprotect(bytes(buf)) == packet

    rtcp = rtcp_packet(rng, 1)
    buf = bytearray(rtcp) + bytearray(sender.rtcp_overhead - 1)
    with pytest.raises(SrtpError) as caught:
        sender.protect_rtcp_into(buf, len(rtcp))
    assert caught.value.code == _srtp.SRTP_ERR_NOSPACE
    buf.append(0)
    assert sender.protect_rtcp_into(buf, len(rtcp)) == len(buf)
    assert receiver.unprotect_rtcp(bytes(buf)) == rtcp


def test_bad_parameters() -> None:
    with pytest.raises(ValueError):
        SrtpSession(_srtp.PROFILE_AES_CM_128_HMAC_SHA1_80, bytes(15), bytes(14), True)
    with pytest.raises(ValueError):
        SrtpSession(_srtp.PROFILE_AES_CM_128_HMAC_SHA1_80, bytes(16), bytes(12), True)
    with pytest.raises(ValueError):
        SrtpSession(_srtp.PROFILE_AEAD_AES_128_GCM, bytes(16), bytes(14), True)
    with pytest.raises(ValueError):
        SrtpSession(3, bytes(16), bytes(14), True)
    assert str(SrtpError(_srtp.SRTP_ERR_AUTH, "authentication failed")).startswith("auth")


# ---- fuzzing ----

KNOWN_ERRORS = {
    _srtp.SRTP_ERR_AUTH,
    _srtp.SRTP_ERR_REPLAY_OLD,
    _srtp.SRTP_ERR_REPLAY_DUP,
    _srtp.SRTP_ERR_MALFORMED,
}


def mutate(rng: random.Random, packet: bytes) -> bytes:
    out = bytearray(packet)
    choice = rng.randrange(7)
    if choice == 0:
        return rng.randbytes(rng.randint(0, 80))
    if choice == 1:
        return bytes(out[: rng.randint(0, len(out))])
    if choice == 2:
        return bytes(out + rng.randbytes(rng.randint(1, 40)))
    if choice == 3 and out:
        out[0] = rng.getrandbits(8)  # version, padding, extension, CSRC count
        return bytes(out)
    if choice == 4 and len(out) > 16:
        out[14:16] = rng.randbytes(2)  # extension length when there are no CSRCs
        return bytes(out)
    for _ in range(rng.randint(1, 4)):
        if out:
            out[rng.randrange(len(out))] ^= 1 << rng.randrange(8)
    return bytes(out)


def test_fuzz_unprotect_never_crashes(profile: Profile) -> None:
    rng = random.Random(19)
    keys = make_keys(profile, rng)
    sender, receiver = ours(profile, keys, True), ours(profile, keys, False)
    seeds_rtp = [sender.protect(rtp_packet(rng, 1 + i % 3, 65000 + i)) for i in range(64)]
    seeds_rtcp = [sender.protect_rtcp(rtcp_packet(rng, 1 + i % 3)) for i in range(64)]
    seen: set[int] = set()
    for _ in range(50_000):  # 100,000 packets per profile
        for seeds, call, overhead in (
            (seeds_rtp, receiver.unprotect, profile.tag_len),
            (seeds_rtcp, receiver.unprotect_rtcp, profile.tag_len + 4),
        ):
            packet = mutate(rng, rng.choice(seeds))
            try:
                out = call(packet)
            except SrtpError as error:
                assert error.code in KNOWN_ERRORS, error
                seen.add(error.code)
            else:
                assert len(out) == len(packet) - overhead
    assert {_srtp.SRTP_ERR_AUTH, _srtp.SRTP_ERR_MALFORMED} <= seen
    assert receiver.stream_count <= 3
    fresh = rtp_packet(rng, 1, 65100)
    assert receiver.unprotect(sender.protect(fresh)) == fresh


def test_stream_limit() -> None:
    rng = random.Random(20)
    keys = make_keys(AES_CM, rng)
    sender = ours(AES_CM, keys, True)
    packet = bytearray(rtp_packet(rng, 0, 1, csrcs=0, ext_words=-1, payload_len=4))
    limit = _srtp.MAX_STREAMS
    for ssrc in range(limit):
        struct.pack_into("!I", packet, 8, ssrc)
        sender.protect(bytes(packet))
    assert sender.stream_count == limit
    struct.pack_into("!I", packet, 8, limit)
    expect_error(_srtp.SRTP_ERR_STREAM_LIMIT, sender.protect, bytes(packet))
    assert sender.remove_stream(123)
    assert len(sender.protect(bytes(packet))) == len(packet) + AES_CM.tag_len
