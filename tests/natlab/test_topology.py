"""The NAT lab against the real kernel: Docker's race, its remedies, client NATs, coturn, cleanup.

Tests marked netns need root, iptables and conntrack; they skip (LabUnavailable) elsewhere.
Ordering across namespaces is enforced by waiting for conntrack entries or rule counters,
never by sleeping.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from sfu.natlab import (
    ClientKind,
    CoturnSpec,
    Lab,
    LabError,
    LabSpec,
    LabUnavailable,
    ServerMode,
    UdpPeer,
    cleanup_stale,
    docker_ruleset,
    netns,
    rest_credentials,
)
from sfu.natlab.topology import published_pairs

ROOT = Path(__file__).resolve().parents[2]
MakeLab = Callable[[LabSpec], Lab]
HOST_DROP = "-A INPUT -p udp -m conntrack --ctstate NEW -j DROP"
FILTERED_DROP = "-A INPUT -p udp -j DROP"
HOME_WAN_DROP = "-A INPUT -i wan -p udp -m conntrack --ctstate NEW -j DROP"


@pytest.fixture
def make_lab() -> Iterator[MakeLab]:
    labs: list[Lab] = []

    def make(spec: LabSpec) -> Lab:
        lab = Lab(spec)
        try:
            lab.start()
        except LabUnavailable as exc:
            pytest.skip(str(exc))
        labs.append(lab)
        return lab

    yield make
    for lab in labs:
        lab.close()


def wait_conntrack(lab: Lab, ns: str, needle: str) -> None:
    netns.wait_until(lambda: needle in lab.conntrack(ns), 3.0, f"conntrack entry {needle!r}")


def wait_dropped(lab: Lab, ns: str, rule: str, before: int = 0) -> None:
    netns.wait_until(
        lambda: lab.rule_packets(ns, "filter", rule) > before, 3.0, f"a drop by {rule!r}"
    )


def exchange(a: UdpPeer, b: UdpPeer, b_addr: tuple[str, int]) -> tuple[str, int]:
    """a sends to b_addr, b must hear it; returns the source address b saw."""
    a.send(b_addr, b"ping")
    got = b.recv(2.0)
    assert got is not None, f"{b.ns} heard nothing"
    assert got[0] == b"ping"
    return got[1]


# -- pure parts (no root) -------------------------------------------------------------------


def test_published_pairs_expand_port_by_port() -> None:
    assert published_pairs([(8000, 20000)]) == [(8000, 20000)]
    assert published_pairs([("20000-20002", (20000, 20002))]) == [
        (20000, 20000),
        (20001, 20001),
        (20002, 20002),
    ]
    with pytest.raises(ValueError):
        published_pairs([("8000-8001", 20000)])


def test_docker_ruleset_has_dockers_rules() -> None:
    rules = docker_ruleset([(8000, 20000)], input_firewall=True).splitlines()
    for rule in (
        "-A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE",
        "-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER",
        ":FORWARD DROP [0:0]",
        "-A FORWARD -o docker0 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
        "-A DOCKER ! -i docker0 -p udp -m udp --dport 8000 -j DNAT"
        " --to-destination 172.17.0.2:20000",
        "-A DOCKER -d 172.17.0.2/32 ! -i docker0 -o docker0 -p udp -m udp --dport 20000 -j ACCEPT",
        HOST_DROP,
    ):
        assert rule in rules


def test_coturn_spec_auth_choices() -> None:
    assert CoturnSpec().static_users == (("natlab", "natlab-pass"),)
    assert CoturnSpec(shared_secret="s").static_users == ()
    with pytest.raises(ValueError):
        CoturnSpec(users=(("a", "b"),), shared_secret="s")
    user, password = rest_credentials("s", "alice", 60, now=1000.0)
    assert user == "1060:alice" and len(password) == 28


# -- (1) the race, (2) the host firewall that removes it -------------------------------------


@pytest.mark.netns
def test_browser_first_remaps_the_servers_port(make_lab: MakeLab) -> None:
    lab = make_lab(LabSpec(clients=[ClientKind.OPEN]))
    browser = lab.client(ClientKind.OPEN)
    with lab.udp_peer(lab.server_ns, 20000) as srv, lab.udp_peer(browser.ns, 40000) as br:
        br.send((lab.public_ip, 20000), b"br-check")
        entry = f"src={browser.ip} dst={lab.public_ip} sport=40000 dport=20000 [UNREPLIED]"
        wait_conntrack(lab, lab.host_ns, entry)
        src = exchange(srv, br, (browser.ip, 40000))
        assert src[0] == lab.public_ip
        assert src[1] != 20000, "the server's flow should have left on a new public port"
        # the browser's packets to the port it was told keep hitting the dead entry
        br.send((lab.public_ip, 20000), b"br-check")
        assert srv.recv(0.3) is None
        assert entry in lab.conntrack(lab.host_ns)


@pytest.mark.netns
def test_server_first_keeps_the_port(make_lab: MakeLab) -> None:
    lab = make_lab(LabSpec(clients=[ClientKind.OPEN]))
    browser = lab.client(ClientKind.OPEN)
    with lab.udp_peer(lab.server_ns, 20001) as srv, lab.udp_peer(browser.ns, 40001) as br:
        assert exchange(srv, br, (browser.ip, 40001)) == (lab.public_ip, 20001)
        assert exchange(br, srv, (lab.public_ip, 20001)) == (browser.ip, 40001)


@pytest.mark.netns
def test_host_input_firewall_removes_the_race(make_lab: MakeLab) -> None:
    lab = make_lab(LabSpec(clients=[ClientKind.OPEN], host_input_firewall=True))
    browser = lab.client(ClientKind.OPEN)
    with lab.udp_peer(lab.server_ns, 20000) as srv, lab.udp_peer(browser.ns, 40000) as br:
        br.send((lab.public_ip, 20000), b"br-check")
        wait_dropped(lab, lab.host_ns, HOST_DROP)
        assert "dport=20000" not in lab.conntrack(lab.host_ns)
        assert exchange(srv, br, (browser.ip, 40000)) == (lab.public_ip, 20000)
        assert exchange(br, srv, (lab.public_ip, 20000)) == (browser.ip, 40000)


# -- (3) published ports ----------------------------------------------------------------------


@pytest.mark.netns
def test_published_ports_deliver_inbound(make_lab: MakeLab) -> None:
    spec = LabSpec(
        clients=[ClientKind.FILTERED],
        published=[(8000, 20000), ("20010-20012", "20010-20012"), (20020, 20020)],
    )
    lab = make_lab(spec)
    client = lab.client(ClientKind.FILTERED)
    with lab.udp_peer(client.ns, 41000) as cl:
        for host_port, ctr_port in ((8000, 20000), (20011, 20011), (20020, 20020)):
            with lab.udp_peer(lab.server_ns, ctr_port) as srv:
                # the client (Firefox-like filter) sends first to the HOST's port
                assert exchange(cl, srv, (lab.public_ip, host_port)) == (client.ip, 41000)
                assert exchange(srv, cl, (client.ip, 41000)) == (lab.public_ip, host_port)


# -- (4) client kinds -------------------------------------------------------------------------


@pytest.mark.netns
def test_client_kinds_behave_as_named(make_lab: MakeLab) -> None:
    kinds = [ClientKind.SYMMETRIC, ClientKind.MASQUERADE, ClientKind.FILTERED, ClientKind.HOME]
    lab = make_lab(LabSpec(server_mode=ServerMode.HOST_NETWORK, clients=kinds))
    dst1 = (lab.public_ip, 30000)
    dst2 = ("192.0.2.1", 30001)
    with lab.udp_peer(lab.server_ns, 30000) as d1, lab.udp_peer(lab.internet_ns, 30001) as d2:
        sym = lab.client(ClientKind.SYMMETRIC)
        with lab.udp_peer(sym.ns, 41000) as c:
            a, b = exchange(c, d1, dst1), exchange(c, d2, dst2)
            assert a[0] == b[0] == sym.public_ip
            assert a[1] != b[1], "symmetric NAT: one public port per destination"

        masq = lab.client(ClientKind.MASQUERADE)
        with lab.udp_peer(masq.ns, 41000) as c:
            assert exchange(c, d1, dst1) == exchange(c, d2, dst2) == (masq.public_ip, 41000)
        with lab.udp_peer(masq.ns, 42000) as c:
            # the mirror race: the server's packet arrives first and is parked on the router
            d1.send((masq.public_ip, 42000), b"early")
            wait_conntrack(lab, masq.router_ns or "", "dport=42000 [UNREPLIED]")
            assert exchange(c, d1, dst1)[1] != 42000

        filt = lab.client(ClientKind.FILTERED)
        with lab.udp_peer(filt.ns, 41000) as c:
            d1.send((filt.ip, 41000), b"unsolicited")
            wait_dropped(lab, filt.ns, FILTERED_DROP)
            assert c.recv(0.2) is None
            assert exchange(c, d1, dst1) == (filt.ip, 41000)
            assert exchange(d1, c, (filt.ip, 41000)) == dst1

        home = lab.client(ClientKind.HOME)
        assert home.router_ns is not None
        with lab.udp_peer(home.ns, 41000) as c:
            d1.send((home.public_ip, 41000), b"unsolicited")
            wait_dropped(lab, home.router_ns, HOME_WAN_DROP)
            assert "dport=41000" not in lab.conntrack(home.router_ns)
            assert exchange(c, d1, dst1) == (home.public_ip, 41000)  # no race on this side
            assert exchange(d1, c, (home.public_ip, 41000)) == dst1


# -- (5) coturn -------------------------------------------------------------------------------

STUN_SCRIPT = """
import socket, sys
from aioice import stun
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", int(sys.argv[3])))
s.settimeout(0.5)
req = stun.Message(stun.Method.BINDING, stun.Class.REQUEST)
for _ in range(4):
    s.sendto(bytes(req), (sys.argv[1], int(sys.argv[2])))
    try:
        resp = stun.parse_message(s.recvfrom(2048)[0])
    except socket.timeout:
        continue
    if resp.transaction_id == req.transaction_id:
        print(*resp.attributes["XOR-MAPPED-ADDRESS"])
        break
"""

ALLOCATE_SCRIPT = """
import asyncio, sys
from aioice import turn
async def main():
    try:
        t, _ = await asyncio.wait_for(turn.create_turn_endpoint(
            asyncio.DatagramProtocol, (sys.argv[1], int(sys.argv[2])), sys.argv[3], sys.argv[4]),
            5)
    except Exception as exc:
        print("FAIL", exc)
        return
    print("OK", *t.get_extra_info("sockname"), *t.get_extra_info("related_address"))
    t.close()
    await asyncio.sleep(0.05)
asyncio.run(main())
"""


def run_in(lab: Lab, ns: str, script: str, *args: object) -> str:
    proc = lab.exec(
        ns,
        [sys.executable, "-c", script, *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    out, err = proc.communicate(timeout=15)
    assert proc.returncode == 0, err
    return out.strip()


@pytest.mark.netns
@pytest.mark.parametrize(
    ("mode", "mapped"),
    [(ServerMode.BRIDGE, "198.51.100.1"), (ServerMode.MACVLAN, "198.51.100.2")],
)
def test_coturn_stun_and_turn(make_lab: MakeLab, mode: ServerMode, mapped: str) -> None:
    lab = make_lab(LabSpec(server_mode=mode, clients=[], coturn=CoturnSpec()))
    host, port = lab.stun_server
    assert (host, port) == ("192.0.2.1", 3478)
    assert run_in(lab, lab.server_ns, STUN_SCRIPT, host, port, 20000) == f"{mapped} 20000"
    turn = lab.turn
    assert turn is not None and turn.credentials() == ("natlab", "natlab-pass")
    out = run_in(lab, lab.server_ns, ALLOCATE_SCRIPT, host, port, "natlab", "natlab-pass")
    ok, relay_ip, relay_port, related_ip, _ = out.split()
    assert (ok, relay_ip, related_ip) == ("OK", "192.0.2.1", mapped)
    assert turn.spec.min_port <= int(relay_port) <= turn.spec.max_port
    out = run_in(lab, lab.server_ns, ALLOCATE_SCRIPT, host, port, "natlab", "wrong")
    assert out.startswith("FAIL") and "401" in out


@pytest.mark.netns
def test_coturn_rest_secret(make_lab: MakeLab) -> None:
    lab = make_lab(LabSpec(clients=[ClientKind.HOME], coturn=CoturnSpec(shared_secret="s3")))
    assert lab.turn is not None
    user, password = lab.turn.rest_credentials("alice", 600, time.time())
    home = lab.client(ClientKind.HOME)
    out = run_in(lab, home.ns, ALLOCATE_SCRIPT, *lab.stun_server, user, password)
    assert out.split()[:2] == ["OK", "192.0.2.1"]
    assert out.split()[3] == home.public_ip


@pytest.mark.netns
def test_netem_delays_client_links_or_is_refused_cleanly() -> None:
    lab = Lab(LabSpec(clients=[ClientKind.OPEN], netem_delay_ms=20))
    try:
        lab.start()
    except LabUnavailable as exc:
        # refused mid-build (no netem in this kernel): nothing may be left behind
        assert "netem" in str(exc) or "needs" in str(exc)
        assert lab.prefix == "" or lab_namespaces(lab.prefix) == []
        pytest.skip(str(exc))
    with lab:
        client = lab.client(ClientKind.OPEN)
        with lab.udp_peer(lab.server_ns, 20000) as srv, lab.udp_peer(client.ns, 40000) as cl:
            exchange(srv, cl, (client.ip, 40000))
            start = time.monotonic()
            exchange(cl, srv, (lab.public_ip, 20000))
            exchange(srv, cl, (client.ip, 40000))
            assert time.monotonic() - start >= 0.04


# -- (6) cleanup ------------------------------------------------------------------------------


def lab_namespaces(prefix: str) -> list[str]:
    return [ns for ns in netns.list_namespaces() if ns.startswith(prefix)]


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.netns
def test_cleanup_when_the_body_raises() -> None:
    lab = Lab(LabSpec(clients=list(ClientKind), coturn=CoturnSpec()))
    with pytest.raises(RuntimeError, match="boom"):
        try:
            with lab:
                peer = lab.udp_peer(lab.server_ns, 20000)
                assert lab.turn is not None
                pids = [peer.pid, lab.turn.pid]
                assert len(lab_namespaces(lab.prefix)) == 3 + 2 + 3 * 2  # inet, host, ctr; clients
                raise RuntimeError("boom")
        except LabUnavailable as exc:
            pytest.skip(str(exc))
    assert lab_namespaces(lab.prefix) == []
    assert not any(pid_alive(pid) for pid in pids)
    assert lab.workdir is not None and not lab.workdir.exists()
    with pytest.raises(LabError):
        lab.exec(lab.server_ns, ["true"])


@pytest.mark.netns
def test_cleanup_stale_removes_a_dead_labs_namespaces() -> None:
    try:
        netns.require_lab()
    except LabUnavailable as exc:
        pytest.skip(str(exc))
    prefix = f"slstale{os.getpid() % 10000}_"
    netns.ip(None, "netns", "add", prefix + "a")
    sleeper = subprocess.Popen(netns.ns_argv(prefix + "a", ["sleep", "30"]))
    try:
        netns.wait_until(
            lambda: sleeper.pid in netns.namespace_pids(prefix + "a"), 3.0, "sleep to enter"
        )
        assert cleanup_stale(prefix) == [prefix + "a"]
        assert sleeper.wait(timeout=5) == -signal.SIGTERM
        assert lab_namespaces(prefix) == []
    finally:
        if sleeper.poll() is None:
            sleeper.kill()
            sleeper.wait()
    with pytest.raises(ValueError):
        cleanup_stale("sl")


CHILD = """
import sys, time
from sfu.natlab import Lab, LabSpec, CoturnSpec
lab = Lab(LabSpec(coturn=CoturnSpec()))
lab.start()
print(lab.prefix, lab.turn.pid, flush=True)
if sys.argv[1] == "exit":
    sys.exit(0)
time.sleep(20)
"""


@pytest.mark.netns
@pytest.mark.parametrize("how", ["SIGINT", "SIGTERM", "exit"])
def test_cleanup_on_signal_or_exit(how: str) -> None:
    try:
        netns.require_lab(["turnserver"])
    except LabUnavailable as exc:
        pytest.skip(str(exc))
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, how],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        prefix, turn_pid = child.stdout.readline().split()
        assert lab_namespaces(prefix)
        if how != "exit":
            child.send_signal(getattr(signal, how))
        child.wait(timeout=10)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        assert child.stdout is not None and child.stderr is not None
        child.stdout.close()
        child.stderr.close()
    assert lab_namespaces(prefix) == []
    assert not pid_alive(int(turn_pid))
