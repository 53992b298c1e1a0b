"""The watchers bench's C tools on loopback: the RTP publisher's packets, and the receiver fed a
socket over SCM_RIGHTS with SRTP from libsrtp (pylibsrtp): counts, loss, samples, STUN relayed."""

from __future__ import annotations

import itertools
import json
import os
import select
import shutil
import socket
import struct
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pylibsrtp import Policy, Session

from sfu.bench.build import Tools, build_tools
from sfu.engine.keyframe import starts_keyframe


@pytest.fixture(scope="module")
def tools(tmp_path_factory: pytest.TempPathFactory) -> Tools:
    if shutil.which("cc") is None or not Path("/usr/include/openssl/evp.h").exists():
        pytest.skip("needs cc and libssl-dev")
    return build_tools(tmp_path_factory.mktemp("watch-bin"))


def _rtp(seq: int, ssrc: int, pt: int, size: int) -> bytes:
    head = struct.pack("!BBHII", 0x80, pt, seq & 0xFFFF, seq * 3000, ssrc)
    trailer = b"SFUW" + struct.pack("!QQ", seq, time.monotonic_ns())
    return head + bytes(size - 12 - len(trailer)) + trailer


def test_publisher_sends_vp8_frames_and_audio(tools: Tools) -> None:
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    port = rx.getsockname()[1]
    argv = [str(tools.rtppub), "127.0.0.1", str(port), str(port), "150", "50", "30", "10"]
    pub = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert pub.stdin is not None and pub.stdout is not None
    try:
        assert json.loads(pub.stdout.readline()) == {"ready": True}
        packets: list[bytes] = []
        deadline = time.monotonic() + 1.0
        rx.settimeout(0.2)
        while time.monotonic() < deadline:
            packets.append(rx.recv(2048))
        pub.stdin.write("stats\n")
        pub.stdin.flush()
        stats = json.loads(pub.stdout.readline())
    finally:
        pub.stdin.close()
        pub.wait(5)
        pub.stdout.close()
        rx.close()
    video = [p for p in packets if p[1] & 0x7F == 96]
    audio = [p for p in packets if p[1] & 0x7F == 111]
    assert 120 <= len(video) <= 180 and 40 <= len(audio) <= 60
    assert {len(p) for p in video} == {1200} and {len(p) for p in audio} == {172}
    assert all(p[-20:-16] == b"SFUW" for p in packets)
    seqs = [int.from_bytes(p[2:4], "big") for p in video]
    assert all((b - a) & 0xFFFF == 1 for a, b in itertools.pairwise(seqs))
    keys = [p for p in video if starts_keyframe("vp8", p)]
    assert 2 <= len(keys) <= 5  # one frame in 10 at 30 frames/s
    assert sum(p[1] >> 7 for p in video) >= 25  # a marker ends each frame
    assert stats["video"] >= len(video) and stats["keyframes"] >= len(keys)


@pytest.fixture
def receiver(tools: Tools) -> Iterator[tuple[socket.socket, subprocess.Popen[bytes]]]:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    proc = subprocess.Popen([str(tools.watchrx), str(theirs.fileno())], pass_fds=[theirs.fileno()])
    theirs.close()
    yield ours, proc
    ours.close()
    proc.wait(5)


def _recv(ctl: socket.socket, timeout: float = 5.0) -> str:
    ready, _, _ = select.select([ctl], [], [], timeout)
    assert ready, "the receiver did not answer"
    return ctl.recv(1 << 20).decode()


@pytest.mark.parametrize("profile", ["AES_CM_128_HMAC_SHA1_80", "AEAD_AES_128_GCM"])
def test_receiver_counts_loss_decrypts_and_relays_stun(
    receiver: tuple[socket.socket, subprocess.Popen[bytes]], profile: str
) -> None:
    ctl, _proc = receiver
    gcm = profile == "AEAD_AES_128_GCM"
    key, salt = os.urandom(16), os.urandom(12 if gcm else 14)
    policy = Policy(
        key=key + salt,
        ssrc_type=Policy.SSRC_ANY_OUTBOUND,
        srtp_profile=Policy.SRTP_PROFILE_AEAD_AES_128_GCM
        if gcm
        else Policy.SRTP_PROFILE_AES128_CM_SHA1_80,
    )
    srtp = Session(policy=policy)
    watcher = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    watcher.bind(("127.0.0.1", 0))
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind(("127.0.0.1", 0))
    try:
        number = 7 if gcm else 1
        msg = f"add 0 {number} {key.hex()} {salt.hex()}".encode()
        socket.send_fds(ctl, [msg], [watcher.fileno()])
        ctl.send(b"reset")
        assert _recv(ctl) == "ok"
        to = watcher.getsockname()
        for seq in range(1000, 1120):
            if seq not in (1050, 1051, 1100):  # three lost
                server.sendto(srtp.protect(_rtp(seq, 0xAAAA, 96, 1200)), to)
            if seq % 20 == 0:
                time.sleep(0.005)  # within the socket's default receive buffer
        for seq in range(50):
            server.sendto(srtp.protect(_rtp(seq, 0xBBBB, 111, 172)), to)
        server.sendto(b"\x80\xc8" + bytes(26), to)  # RTCP
        stun = b"\x00\x01\x00\x00\x21\x12\xa4\x42" + bytes(12)
        server.sendto(stun, to)
        relayed = _recv(ctl)
        ip, port = server.getsockname()
        assert relayed == f"stun 0 {ip} {port} {stun.hex()}"
        time.sleep(0.1)
        ctl.send(b"report")
        text = _recv(ctl)
        assert text.startswith("report ")
        r = json.loads(text.split(" ", 1)[1])
    finally:
        watcher.close()
        server.close()
    assert r["watchers"] == 1 and r["rtp"] == 167 and r["rtcp"] == 1 and r["stun"] == 1
    assert (r["video_expected"], r["video_lost"]) == (120, 3)
    assert (r["audio_expected"], r["audio_lost"]) == (50, 0)
    assert r["auth_failures"] == 0 and r["bad_payload"] == 0
    assert r["samples"] == 11  # one in 16 of 167
    assert 0 < r["p50_us"] <= r["p99_us"] and r["silent"] == 0
    assert len(r["first_ns"]) == 1 and r["first_ns"][0] > 0
