"""`sfu natlab`'s engine: builds one lab per server setup and runs cells in it.

Per server setup, one :class:`~sfu.natlab.topology.Lab` with one client of each requested kind
and coturn (STUN and TURN) on 192.0.2.1; the delaying signaling proxy (sfu.natlab.proxy) on the
Docker host, where Docker's own userland proxy sits; ``python -m sfu serve`` in the server's
namespace, restarted for early checks on and off; one long-lived aiortc client process
(sfu.natlab.client) per client namespace, or Chromium (sfu.natlab.browser). UDP conntrack
entries are flushed in every namespace before each run, so runs do not see each other's NAT
state.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

from . import netns
from .coturn import CoturnSpec
from .matrix import HTTP_PORT, MEDIA_PORT, PROXY_PORT, STUN, Agent, Cell, Flow, ServerSetup
from .netns import LabError
from .report import CellResult, RunResult, progress_line
from .topology import HOST_IP, INTERNET_CLIENT_SIDE_IP, ClientKind, Lab, LabSpec, ServerMode

PACKAGE_ROOT = Path(__file__).resolve().parents[2]
Progress = Callable[[str, bool], None]  # (line, final)


class _Client:
    """The long-lived aiortc client in one namespace (python -m sfu.natlab.client)."""

    def __init__(self, lab: Lab, ns: str, env: dict[str, str]) -> None:
        self._proc = lab.exec(
            ns,
            [sys.executable, "-m", "sfu.natlab.client"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=env,
            cwd=str(PACKAGE_ROOT),
        )
        ready = self._line(60.0)
        if not ready.get("ready"):
            raise LabError(f"lab client in {ns} did not start: {ready}")

    def run(self, request: dict[str, Any], timeout: float) -> dict[str, Any]:
        assert self._proc.stdin is not None
        self._proc.stdin.write(json.dumps(request) + "\n")
        self._proc.stdin.flush()
        return self._line(timeout)

    def _line(self, timeout: float) -> dict[str, Any]:
        assert self._proc.stdout is not None
        line = read_line(self._proc.stdout, timeout)
        if line is None:
            raise LabError(f"lab client did not answer in {timeout:.0f} s")
        if not line:
            raise LabError(f"lab client exited (status {self._proc.poll()})")
        data: dict[str, Any] = json.loads(line)
        return data

    def close(self) -> None:
        if self._proc.stdin is not None and not self._proc.stdin.closed:
            self._proc.stdin.close()
        try:
            self._proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()


def read_line(stream: IO[str], timeout: float) -> str | None:
    """One line from a child's pipe ("" at EOF), or None after timeout seconds."""
    out: list[str] = []
    thread = threading.Thread(target=lambda: out.append(stream.readline()), daemon=True)
    thread.start()
    thread.join(timeout)
    return out[0] if out else None


class Runner:
    """Runs cells, `runs` times each; `run()` returns one CellResult per cell, in order.

    Cells are grouped by server setup (one lab each, in order of first appearance) and, within
    a setup, by early checks (one server process each). Results accumulate in `results`, so a
    caller interrupted by Ctrl-C still has what was measured.
    """

    def __init__(
        self,
        cells: Sequence[Cell],
        *,
        runs: int = 3,
        timeout: float = 5.0,
        frames: int = 5,
        progress: Progress | None = None,
        workdir: Path | None = None,
    ) -> None:
        if runs < 1:
            raise ValueError("runs must be at least 1")
        self.cells = list(cells)
        self.runs = runs
        self.timeout = timeout
        self.frames = frames
        self.progress = progress or (lambda line, final: None)
        self.workdir = workdir
        self.results: list[CellResult] = []
        self._env = _child_env()

    def run(self) -> list[CellResult]:
        netns.require_lab(["turnserver"])
        for setup in dict.fromkeys(c.setup for c in self.cells):
            self._run_setup(setup, [c for c in self.cells if c.setup == setup])
        return self.results

    # -- one lab per server setup -------------------------------------------------------------

    def _run_setup(self, setup: ServerSetup, cells: list[Cell]) -> None:
        lab_spec = LabSpec(
            server_mode=setup.mode,
            published=list(setup.published),
            host_input_firewall=setup.host_firewall,
            clients=list(dict.fromkeys(c.client for c in cells)),
            coturn=CoturnSpec(),
        )
        workdir = Path(tempfile.mkdtemp(prefix=f"natlab-{setup.name}-", dir=self.workdir))
        with Lab(lab_spec, workdir=workdir) as lab:
            proxy_ns, proxy_ip, upstream = proxy_place(lab, setup)
            self._start_proxy(lab, proxy_ns, proxy_ip, upstream)
            base = f"http://{proxy_ip}:{PROXY_PORT}"
            clients: dict[ClientKind, _Client] = {}
            try:
                for early in dict.fromkeys(c.early for c in cells):
                    log = workdir / f"server-early-{'on' if early else 'off'}.log"
                    server = self._start_server(lab, setup, early, log)
                    try:
                        for cell in (c for c in cells if c.early == early):
                            result = self._run_cell(lab, cell, base, clients)
                            self.results.append(result)
                            line = progress_line(len(self.results), len(self.cells), result)
                            self.progress(line, True)
                    finally:
                        _stop(server)
            finally:
                for client in clients.values():
                    client.close()

    def _start_proxy(self, lab: Lab, ns: str, ip: str, upstream: str) -> None:
        proc = lab.exec(
            ns,
            [sys.executable, "-m", "sfu.natlab.proxy", "--listen", f"{ip}:{PROXY_PORT}",
             "--upstream", upstream],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=self._env,
            cwd=str(PACKAGE_ROOT),
        )  # fmt: skip
        assert proc.stdout is not None
        line = read_line(proc.stdout, 30.0)
        if not line or "listening" not in line:
            raise LabError(f"signaling proxy did not start (exit {proc.poll()})")

    def _start_server(
        self, lab: Lab, setup: ServerSetup, early: bool, log_path: Path
    ) -> subprocess.Popen[Any]:
        argv = [
            sys.executable, "-m", "sfu", "serve",
            "--http-listen", f"0.0.0.0:{HTTP_PORT}",
            "--media-port", str(MEDIA_PORT),
            *setup.args,
        ]  # fmt: skip
        if not early:
            argv.append("--no-early-checks")
        static = web_dir()
        if static is not None:
            argv += ["--static-dir", str(static)]
        with log_path.open("w") as log:
            proc = lab.exec(
                lab.server_ns,
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**self._env, "PYTHONUNBUFFERED": "1"},
                cwd=str(PACKAGE_ROOT),
            )
        deadline = time.monotonic() + 30.0
        while "sfu serving" not in log_path.read_text(errors="replace"):
            if proc.poll() is not None or time.monotonic() > deadline:
                _stop(proc)
                tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-15:])
                raise LabError(f"sfu serve did not start ({' '.join(argv[3:])}):\n{tail}")
            time.sleep(0.05)
        return proc

    # -- one cell ----------------------------------------------------------------------------

    def _run_cell(
        self, lab: Lab, cell: Cell, base: str, clients: dict[ClientKind, _Client]
    ) -> CellResult:
        result = CellResult(cell)
        ws = f"ws://{base.split('://', 1)[1]}/d/{cell.delay_ms}/ws"
        if cell.agent is Agent.CHROMIUM:
            self._run_chromium(lab, cell, base, ws, result)
        else:
            if cell.client not in clients:
                clients[cell.client] = _Client(lab, lab.client(cell.client).ns, self._env)
            request = {
                "url": ws,
                "flow": cell.flow.value,
                "stun": [STUN],
                "timeout": self.timeout,
                "frames": self.frames,
                "trickle_after": cell.trickle.value,
            }
            for index in range(self.runs):
                self._show_run(result, index)
                self._flush(lab, cell.client)
                raw = clients[cell.client].run(request, self.timeout + 30.0)
                result.runs.append(RunResult.from_client(raw))
        if cell.setup.needs_relay and result.runs:
            seen = {c for r in result.runs for c in r.server_candidates}
            if "relay" not in seen:
                result.note = "not available: relay gathering not implemented (no relay candidate)"
        return result

    def _show_run(self, result: CellResult, index: int) -> None:
        self.progress(progress_line(len(self.results), len(self.cells), result, index), False)

    def _run_chromium(self, lab: Lab, cell: Cell, base: str, ws: str, result: CellResult) -> None:
        from . import browser

        reason = browser.missing_reason()
        if reason is not None:
            result.note = f"not available: {reason}"
            return
        url = browser.page_url(
            base, ws, [{"urls": f"stun:{STUN}"}], server_offers=cell.flow is Flow.SERVER_OFFERS
        )

        async def go() -> None:
            chromium = browser.LabBrowser(lab.client(cell.client).ns, base.split("://", 1)[1])
            await chromium.start()
            try:
                for index in range(self.runs):
                    self._show_run(result, index)
                    self._flush(lab, cell.client)
                    raw = await chromium.run(url, self.timeout)
                    result.runs.append(RunResult.from_client(raw))
            finally:
                await chromium.close()

        asyncio.run(go())

    def _flush(self, lab: Lab, kind: ClientKind) -> None:
        """Forget every UDP flow the previous run left in the lab's NATs and filters."""
        client = lab.client(kind)
        spaces = [lab.host_ns, client.ns]
        if client.router_ns:
            spaces.append(client.router_ns)
        if lab.container_ns:
            spaces.append(lab.container_ns)
        for ns in spaces:
            try:
                netns.conntrack(ns, "-D", "-p", "udp")
            except LabError:
                pass  # conntrack exits non-zero when there was nothing to delete


def proxy_place(lab: Lab, setup: ServerSetup) -> tuple[str, str, str]:
    """(namespace, address, upstream URL) of the signaling proxy.

    On the Docker host, where Docker's userland proxy for a published TCP port sits (it reaches
    the container over docker0); with macvlan the host cannot reach its own macvlan children,
    so the proxy sits on the "internet" router instead.
    """
    if setup.mode is ServerMode.MACVLAN:
        return lab.internet_ns, INTERNET_CLIENT_SIDE_IP, f"http://{lab.server_ip}:{HTTP_PORT}"
    if setup.mode is ServerMode.HOST_NETWORK:
        return lab.host_ns, HOST_IP, f"http://127.0.0.1:{HTTP_PORT}"
    return lab.host_ns, HOST_IP, f"http://{lab.server_ip}:{HTTP_PORT}"


def web_dir() -> Path | None:
    """The demo page directory the server should serve (for Chromium), if there is one."""
    for candidate in (PACKAGE_ROOT / "web", Path(__file__).resolve().parents[1] / "web"):
        if (candidate / "echotest.html").is_file():
            return candidate
    return None


def _child_env() -> dict[str, str]:
    """Our environment, with the package importable from wherever it lives."""
    path = [str(PACKAGE_ROOT), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(dict.fromkeys(path))}


def _stop(proc: subprocess.Popen[Any]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
