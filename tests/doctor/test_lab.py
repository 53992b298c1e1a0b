"""The doctor against real NATs: ``python -m sfu doctor`` in the lab's server namespace (root,
network namespaces; skipped otherwise), and the running server's /api/doctor and start-up line.

The lab's STUN server is coturn on 192.0.2.1:3478 started with a second listening IP
(192.0.2.2), which is what turns on its RFC 5780 support (OTHER-ADDRESS, CHANGE-REQUEST,
RESPONSE-PORT); one test uses the lab's plain coturn to show what stays unknown without it.

The last tests need no root: the live doctor through the reference engine against an RFC 5780
STUN model on 127.0.0.1/127.0.0.2.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, cast

import aiohttp
import pytest

from sfu.config import HostPort, MediaConfig
from sfu.doctor.live import LiveDoctor
from sfu.doctor.run import DoctorSettings
from sfu.doctor.stun import binding_request
from sfu.engine.base import Addr
from sfu.engine.pyengine import PyEngine
from sfu.natlab import CoturnSpec, Lab, LabSpec, LabUnavailable, ServerMode, netns
from sfu.server import HttpSettings, ServerSettings, SfuServer
from sfu.webrtc.server import MediaSettings, WebRtcServer
from tests.doctor.test_classify import StunModel
from tests.support import ROOT, http_get_json, in_ns, need_netns, sfu_process

STUN = "192.0.2.1:3478"
OTHER_IP = "192.0.2.2"
MEDIA = ["--media-port", "40000", "--no-include-loopback"]


def _udp_listening(pid: int, address: str, port: int) -> bool:
    key = f"{int.from_bytes(ipaddress.IPv4Address(address).packed, 'little'):08X}:{port:04X}"
    try:
        with open(f"/proc/{pid}/net/udp", encoding="ascii") as f:
            return any(line.split()[1] == key for line in f.read().splitlines()[1:] if line)
    except OSError:
        return False


def start_rfc5780_coturn(lab: Lab) -> None:
    """coturn on 192.0.2.1 and 192.0.2.2 (ports 3478 and 3479 on each): RFC 5780 is on."""
    assert lab.workdir is not None
    netns.ip(lab.internet_ns, "addr", "add", f"{OTHER_IP}/32", "dev", "svc0")
    work = lab.workdir / "coturn5780"
    work.mkdir()
    argv = [
        "turnserver", "-n",
        "--listening-ip", "192.0.2.1", "--listening-ip", OTHER_IP,
        "--relay-ip", "192.0.2.1", "--no-auth", "--no-tls", "--no-dtls", "--no-cli",
        "--userdb", str(work / "turndb"), "--pidfile", str(work / "turnserver.pid"),
        "--log-file", str(work / "turnserver.log"), "--simple-log", "--no-stdout-log",
        "--fingerprint",
    ]  # fmt: skip
    proc = lab.exec(
        lab.internet_ns, argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=None
    )
    deadline = time.monotonic() + 10
    wanted = [(ip, port) for ip in ("192.0.2.1", OTHER_IP) for port in (3478, 3479)]
    while not all(_udp_listening(proc.pid, ip, port) for ip, port in wanted):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"coturn with two IPs did not start (exit {proc.poll()})")
        time.sleep(0.02)


@contextlib.contextmanager
def doctor_lab(spec: LabSpec, *, rfc5780: bool = True) -> Iterator[Lab]:
    need_netns()
    if rfc5780:
        spec.coturn = None
    spec.clients = []
    lab = Lab(spec)
    try:
        lab.start()
    except LabUnavailable as exc:
        pytest.skip(str(exc))
    try:
        if rfc5780:
            start_rfc5780_coturn(lab)
        yield lab
    finally:
        lab.close()


def doctor(lab: Lab, *args: str) -> dict[str, Any]:
    """``python -m sfu doctor --json`` in the server's namespace; the report."""
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("SFU_")}}
    env["PYTHONPATH"] = str(ROOT)
    out = subprocess.run(
        in_ns(lab.server_ns, [sys.executable, "-m", "sfu", "doctor", "--json", *MEDIA, *args]),
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env=env,
    )
    assert out.returncode == 0, out.stderr
    report: dict[str, Any] = json.loads(out.stdout)
    return report


def verdict(report: dict[str, Any]) -> str:
    code: str = report["verdict"]["code"]
    return code


def facts(report: dict[str, Any]) -> dict[str, Any]:
    found: dict[str, Any] = report["sockets"][0]["facts"]
    return found


@pytest.mark.netns
@pytest.mark.slow
def test_host_networking_is_public() -> None:
    with doctor_lab(LabSpec(server_mode=ServerMode.HOST_NETWORK)) as lab:
        report = doctor(lab, "--stun", STUN)
    assert verdict(report) == "public", report
    f = facts(report)
    assert (f["nat"], f["mapped"], f["filtering"]) == ("none", "198.51.100.1:40000", "open")
    assert "nothing to do" in report["verdict"]["line"]


@pytest.mark.netns
@pytest.mark.slow
def test_bridge_without_host_firewall_has_the_race() -> None:
    with doctor_lab(LabSpec(server_mode=ServerMode.BRIDGE)) as lab:
        report = doctor(lab, "--stun", STUN)
    assert verdict(report) == "race", report
    f = facts(report)
    assert (f["nat"], f["mapping"], f["filtering"], f["race"]) == (
        "present",
        "endpoint-independent",
        "filtered",
        "exists",
    )
    assert f["port_preserved"] is True and f["stun"][0]["rfc5780"] is True
    assert "early checks cover browsers that reveal a candidate" in report["verdict"]["line"]


@pytest.mark.netns
@pytest.mark.slow
def test_bridge_with_host_input_firewall_removes_the_race() -> None:
    with doctor_lab(LabSpec(server_mode=ServerMode.BRIDGE, host_input_firewall=True)) as lab:
        report = doctor(lab, "--stun", STUN)
    assert verdict(report) == "no-race", report
    assert facts(report)["race"] == "absent"
    assert "the race cannot happen here" in report["verdict"]["line"]


@pytest.mark.netns
@pytest.mark.slow
def test_bridge_published_port_with_announce_answers() -> None:
    spec = LabSpec(server_mode=ServerMode.BRIDGE, published=[(50000, 40000)])
    with doctor_lab(spec) as lab:
        good = doctor(lab, "--stun", STUN, "--announce", "172.17.0.2=198.51.100.1:50000")
        wrong = doctor(lab, "--stun", STUN, "--announce", "172.17.0.2=198.51.100.1:50001")
    assert verdict(good) == "announced-ok", good
    (announced,) = facts(good)["announced"]
    assert (announced["address"], announced["reach"], announced["equals_mapped"]) == (
        "198.51.100.1:50000",
        "answers",
        False,
    )
    assert verdict(wrong) == "announced-silent", wrong
    assert "198.51.100.1:50001 does not answer" in wrong["verdict"]["line"]


@pytest.mark.netns
@pytest.mark.slow
def test_bridge_port_published_as_is_forwards() -> None:
    spec = LabSpec(server_mode=ServerMode.BRIDGE, published=[(40000, 40000)])
    with doctor_lab(spec) as lab:
        plain = doctor(lab, "--stun", STUN)
        auto = doctor(lab, "--stun", STUN, "--announce", "*=auto")
    assert verdict(plain) == "forwarded", plain
    assert (facts(plain)["filtering"], facts(plain)["race"]) == ("open", "not-applicable")
    assert verdict(auto) == "announced-ok", auto
    assert facts(auto)["announced"][0]["equals_mapped"] is True


@pytest.mark.netns
@pytest.mark.slow
def test_symmetric_nat_in_front_of_the_server() -> None:
    with doctor_lab(LabSpec(server_mode=ServerMode.BRIDGE)) as lab:
        netns.iptables(
            lab.host_ns, "-t", "nat", "-I", "POSTROUTING", "1", "-s", "172.17.0.0/16",
            "!", "-o", "docker0", "-j", "MASQUERADE", "--random-fully",
        )  # fmt: skip
        report = doctor(lab, "--stun", STUN)
    assert verdict(report) == "symmetric", report
    assert facts(report)["mapping"] == "address-and-port-dependent"


@pytest.mark.netns
@pytest.mark.slow
def test_stun_server_without_rfc5780_leaves_the_race_unknown() -> None:
    spec = LabSpec(server_mode=ServerMode.BRIDGE, coturn=CoturnSpec(users=()))
    with doctor_lab(spec, rfc5780=False) as lab:
        report = doctor(lab, "--stun", STUN)
    assert verdict(report) == "nat-unknown", report
    f = facts(report)
    assert (f["nat"], f["filtering"], f["race"]) == ("present", "unknown", "unknown")
    assert any("RFC 5780" in u for u in report["sockets"][0]["unknown"])


@pytest.mark.netns
@pytest.mark.slow
def test_running_server_logs_the_verdict_and_serves_it() -> None:
    with (
        doctor_lab(LabSpec(server_mode=ServerMode.BRIDGE)) as lab,
        sfu_process(
            lab.server_ns, "--http-listen", "127.0.0.1:8080", *MEDIA, "--stun", STUN
        ) as proc,
    ):
        log_path = proc.log_path  # type: ignore[attr-defined]
        deadline = time.monotonic() + 5
        while "doctor (" not in log_path.read_text():
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.05)
        line = next(x for x in log_path.read_text().splitlines() if "doctor (" in x)
        report = http_get_json(lab.server_ns, "http://127.0.0.1:8080/api/doctor?fresh=1")
        stats = http_get_json(lab.server_ns, "http://127.0.0.1:8080/api/stats")
        standalone = doctor(lab, "--stun", STUN)  # the media port is taken by the server
    assert "INFO sfu.doctor.live: doctor (info): bridge network" in line
    assert verdict(report) == "race", report
    assert facts(report)["local"] == "172.17.0.2:40000" and not facts(report)["ephemeral_port"]
    assert stats["mux"]["dropped_unroutable"] == 0  # type: ignore[index]
    assert facts(standalone)["ephemeral_port"] is True
    assert any("is in use" in n for n in standalone["sockets"][0]["notes"])


# -- no root: the live doctor through the reference engine on loopback --------------------------


class _StunSocket(asyncio.DatagramProtocol):
    """One endpoint of the STUN model; answers leave from the endpoint the model names."""

    def __init__(self, model: StunModel, local: Addr, sockets: dict[Addr, _StunSocket]) -> None:
        self.model, self.local, self.sockets = model, local, sockets
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        answer = self.model.answer(self.local, data, (str(addr[0]), int(addr[1])))
        if answer is not None:
            origin, dest, reply = answer
            out = self.sockets[origin].transport
            if out is not None:
                out.sendto(reply, dest)


@contextlib.asynccontextmanager
async def loopback_stun() -> AsyncIterator[Addr]:
    """An RFC 5780 STUN model on 127.0.0.1 and 127.0.0.2, ports P and P+1 on each."""
    loop = asyncio.get_running_loop()
    for _ in range(20):
        base = _free_port()
        if base >= 65535:
            continue
        model = StunModel(primary=("127.0.0.1", base), other=("127.0.0.2", base + 1))
        sockets: dict[Addr, _StunSocket] = {}
        try:
            for local in [(ip, p) for ip in ("127.0.0.1", "127.0.0.2") for p in (base, base + 1)]:
                proto = _StunSocket(model, local, sockets)
                await loop.create_datagram_endpoint(_factory(proto), local_addr=local)
                sockets[local] = proto
        except OSError:
            _close(sockets)
            continue
        try:
            yield model.primary
        finally:
            _close(sockets)
        return
    pytest.skip("no free pair of UDP ports on loopback")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _factory(proto: _StunSocket) -> Callable[[], _StunSocket]:
    return lambda: proto


def _close(sockets: dict[Addr, _StunSocket]) -> None:
    for s in sockets.values():
        if s.transport is not None:
            s.transport.close()


def _loopback_media(stun: Addr) -> MediaSettings:
    return MediaSettings(
        MediaConfig(listen=(ipaddress.IPv4Address("127.0.0.1"),), port=0, include_loopback=True),
        stun_servers=(HostPort(*stun),),
    )


async def test_live_doctor_uses_the_engine_socket_and_serves_the_report(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "sfu.doctor.live")
    async with loopback_stun() as stun:
        settings = ServerSettings(
            http=HttpSettings(listen=(("127.0.0.1", 0),)), media=_loopback_media(stun)
        )
        srv = SfuServer(settings, engine=PyEngine())
        await srv.start()
        try:
            host, port = srv.http_addresses[0]
            media_port = srv.webrtc.local_addresses[0][1]
            async with aiohttp.ClientSession() as http:
                async with http.get(f"http://{host}:{port}/api/doctor") as resp:
                    assert resp.status == 200
                    report = await resp.json()
                async with http.get(f"http://{host}:{port}/api/stats") as resp:
                    taken = (await resp.json())["mux"]["dropped_unroutable"]
                # outside a diagnosis the STUN hook is unset: everything reaches routing
                stranger, _ = await asyncio.get_running_loop().create_datagram_endpoint(
                    asyncio.DatagramProtocol, ("127.0.0.1", 0)
                )
                stranger.sendto(binding_request()[1], ("127.0.0.1", media_port))
                stranger.close()
                for _ in range(100):
                    async with http.get(f"http://{host}:{port}/api/stats") as resp:
                        passed = (await resp.json())["mux"]["dropped_unroutable"]
                    if passed:
                        break
                    await asyncio.sleep(0.02)
        finally:
            await srv.stop()
    assert report["verdict"]["code"] == "public", report
    f = report["sockets"][0]["facts"]
    assert f["local"] == f"127.0.0.1:{media_port}" and not f["ephemeral_port"]
    assert (f["nat"], f["filtering"], f["race"]) == ("none", "open", "not-applicable")
    unsolicited = next(s for s in report["sockets"][0]["steps"] if s["step"] == "unsolicited")
    assert unsolicited["source"] == f"127.0.0.2:{stun[1] + 1}"  # a stranger's answer got in
    assert taken == 0  # every doctor answer was taken before the WebRtcServer saw it
    assert passed == 1
    lines = [r.getMessage() for r in caplog.records if r.name == "sfu.doctor.live"]
    assert lines == [
        f"doctor (ok): public address 127.0.0.1:{media_port} on this host (no NAT): nothing to do"
    ]


async def test_live_doctor_reuses_a_recent_report() -> None:
    async with loopback_stun() as stun:
        server = WebRtcServer(PyEngine(), _loopback_media(stun))
        server.open()
        server.start()
        try:
            doc = LiveDoctor(server, DoctorSettings(stun_servers=(HostPort(*stun),)), reuse=60)
            first, again = await asyncio.gather(doc.diagnose(2.0), doc.diagnose(2.0))
            fresh = await doc.diagnose(2.0, fresh=True)
        finally:
            server.close()
    assert first is again and fresh is not first
    assert [d.verdict.code.value for d in (first.main, fresh.main) if d] == ["public", "public"]
    assert server.media_sockets
    assert all(s.local_addr[0] == "127.0.0.1" for s in server.media_sockets)


async def test_sfu_doctor_command_on_loopback() -> None:
    async with loopback_stun() as stun:
        port = _free_port()
        args = ["--stun", f"127.0.0.1:{stun[1]}", "--media-listen", "127.0.0.1"]
        args += ["--media-port", str(port)]
        text = await _sfu("doctor", *args)
        data = json.loads(await _sfu("doctor", "--json", *args))
    assert f"verdict (ok): public address 127.0.0.1:{port} on this host" in text
    assert "RFC 5780 (other 127.0.0.2:" in text
    assert data["verdict"]["code"] == "public"


async def _sfu(*args: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sfu", *args,
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()
    return out.decode()
