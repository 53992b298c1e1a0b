"""The `sfu natlab` subcommand: options, root check, progress, table and JSON."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .matrix import DEFAULT_SETUPS, SETUPS, Flow, MatrixSpec, Trickle
from .netns import LabError, LabUnavailable
from .report import CellResult, format_pivot, format_reasons, format_table, summary, to_json
from .runner import Runner
from .topology import ClientKind

EXIT_OK = 0
EXIT_UNEXPECTED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

DESCRIPTION = """\
Build the network-namespace NAT lab (the kernel's own NAT: a Docker host with Docker's rules,
coturn, clients behind filters and NATs), run the real server in it per server setup, run real
clients (aiortc; Chromium with --chromium) across every chosen cell N times, with early checks
on and off, and print a table (successes, median answer -> ICE connected, selected pair) and,
with --json, every run. Needs root, iproute2, iptables, conntrack and coturn; touches nothing
outside the namespaces it creates, and removes them at the end (also on Ctrl-C).

server setups:
{setups}

client kinds: open (public address, no filter), filtered (Firefox-like: only established UDP
in), home (MASQUERADE + router firewall dropping new inbound UDP), masquerade (bare Linux
MASQUERADE, no firewall), symmetric (MASQUERADE --random-fully)."""

EPILOG = """\
examples:
  sfu natlab                                   the default matrix, 3 runs per cell, 50 ms
  sfu natlab --servers bridge-stun --clients filtered --flows server-offers --runs 10
  sfu natlab --servers bridge-stun --clients filtered --chromium-only --delay-ms 0,20,50
  sfu natlab --list                            the setups and every cell's expectation
exit status: 0 when every cell with an expectation behaved as expected, 1 otherwise,
2 when the lab cannot run here, 130 on Ctrl-C."""


def _split(values: Sequence[str] | None) -> list[str]:
    out: list[str] = []
    for value in values or []:
        out += [v.strip() for v in value.split(",") if v.strip()]
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The subcommand's options (the caller sets the handler to `run_command`)."""
    names = ", ".join(s.name for s in SETUPS)
    parser.add_argument(
        "--servers",
        action="append",
        metavar="LIST",
        help=f"server setups, comma-separated or repeated: {names}, or 'all' "
        f"(default: all but macvlan)",
    )
    parser.add_argument(
        "--clients",
        action="append",
        metavar="LIST",
        help="client kinds: " + ", ".join(k.value for k in ClientKind) + " (default: all)",
    )
    parser.add_argument(
        "--flows",
        action="append",
        metavar="LIST",
        help="server-offers, client-offers (default: both)",
    )
    parser.add_argument("--runs", type=int, default=3, help="runs per cell (default: 3)")
    parser.add_argument(
        "--delay-ms",
        action="append",
        metavar="LIST",
        help="one-way signaling delay(s) in ms, applied to every frame both ways (default: 50)",
    )
    parser.add_argument(
        "--early",
        choices=("on", "off", "both"),
        default="both",
        help="early checks on the server (default: both)",
    )
    parser.add_argument(
        "--chromium",
        action="store_true",
        help="also run headless Chromium (client offers, its own trickle) in every cell",
    )
    parser.add_argument(
        "--chromium-only", action="store_true", help="run Chromium cells only (no aiortc)"
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=5.0,
        help="seconds after the answer before a run counts as failed (default: 5)",
    )
    parser.add_argument(
        "--trickle-after",
        choices=("answer", "offer"),
        default="answer",
        help="client offers: the aiortc client trickles its candidates once the answer "
        "arrived (like the demo page; default) or right after its offer",
    )
    parser.add_argument("--json", metavar="FILE", help="write every cell and run as JSON")
    parser.add_argument(
        "--workdir", metavar="DIR", help="keep the server and coturn logs here (default: removed)"
    )
    parser.add_argument(
        "--list",
        action="store_true",
        help="print the server setups and the expectation of every cell, then exit (no root)",
    )


def spec_from_args(args: argparse.Namespace) -> MatrixSpec:
    """The MatrixSpec the options ask for; ValueError names what is wrong."""
    setups = _split(args.servers) or list(DEFAULT_SETUPS)
    if "all" in setups:
        setups = [s.name for s in SETUPS]
    try:
        clients = tuple(ClientKind(c) for c in _split(args.clients)) or tuple(ClientKind)
    except ValueError as exc:
        raise ValueError(f"{exc}; kinds: {', '.join(k.value for k in ClientKind)}") from None
    try:
        flows = tuple(Flow(f) for f in _split(args.flows)) or tuple(Flow)
    except ValueError as exc:
        raise ValueError(f"{exc}; flows: {', '.join(f.value for f in Flow)}") from None
    try:
        delays = tuple(int(d) for d in _split(args.delay_ms)) or (50,)
    except ValueError:
        raise ValueError("--delay-ms takes integers (milliseconds)") from None
    early = {"on": (True,), "off": (False,), "both": (True, False)}[args.early]
    if args.chromium_only and Flow.CLIENT_OFFERS not in flows:
        raise ValueError("Chromium runs the client-offers flow (the demo page offers)")
    if args.runs < 1:
        raise ValueError("--runs must be at least 1")
    return MatrixSpec(
        setups=tuple(dict.fromkeys(setups)),
        clients=tuple(dict.fromkeys(clients)),
        flows=tuple(dict.fromkeys(flows)),
        early=early,
        delays_ms=tuple(dict.fromkeys(delays)),
        chromium=args.chromium,
        chromium_only=args.chromium_only,
        trickle=Trickle(args.trickle_after),
    )


def _print_list(spec: MatrixSpec) -> None:
    for setup in SETUPS:
        print(f"{setup.name:18} {setup.title}")
        print(f"{'':18} sfu serve {' '.join(setup.args) or '(no extra flags)'}")
    print()
    print("cells of this selection and what the design predicts ('-': timing decides):")
    for cell in spec.cells():
        exp = cell.expected
        verdict = "-" if exp is None else ("ok" if exp.ok else f"fail ({exp.kind})")
        print(f"  {cell.name:60} {verdict}")


class _Progress:
    """One line per finished cell; on a terminal, the current run is shown in place."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.tty = hasattr(stream, "isatty") and stream.isatty()
        self._width = 0

    def __call__(self, line: str, final: bool) -> None:
        if not final and not self.tty:
            return
        if self.tty:
            pad = max(0, self._width - len(line))
            self.stream.write("\r" + line + " " * pad + ("\n" if final else ""))
            self._width = 0 if final else len(line)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()


def _report(results: list[CellResult], runner: Runner, json_path: str | None) -> int:
    if not results:
        return EXIT_OK
    print()
    print(format_table(results))
    print()
    print(format_pivot(results))
    reasons = format_reasons(results)
    if reasons:
        print()
        print("expected failures:")
        print(reasons)
    counts = summary(results)
    print()
    print(
        f"{counts['cells']} cells: {counts['as_expected']} as expected, "
        f"{counts['unexpected']} NOT as expected, {counts['no_prediction']} without prediction, "
        f"{counts['not_available']} not available"
    )
    if json_path:
        data = to_json(results, runner.runs, runner.timeout)
        Path(json_path).write_text(json.dumps(data, indent=1) + "\n")
        print(f"JSON written to {json_path}")
    return EXIT_UNEXPECTED if counts["unexpected"] else EXIT_OK


def run_command(args: argparse.Namespace) -> int:
    """Handler of `sfu natlab`."""
    try:
        spec = spec_from_args(args)
    except ValueError as exc:
        print(f"sfu natlab: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.list:
        _print_list(spec)
        return EXIT_OK
    if os.geteuid() != 0:
        print(
            "sfu natlab: needs root (it creates network namespaces and iptables rules); "
            "run it as root, e.g. `sudo sfu natlab`",
            file=sys.stderr,
        )
        return EXIT_USAGE
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="natlab-"))
    workdir.mkdir(parents=True, exist_ok=True)
    cells = spec.cells()
    runner = Runner(
        cells,
        runs=args.runs,
        timeout=args.timeout,
        progress=_Progress(sys.stderr),
        workdir=workdir,
    )
    print(f"sfu natlab: {len(cells)} cells x {args.runs} runs", file=sys.stderr)
    status = EXIT_OK
    try:
        runner.run()
    except LabUnavailable as exc:
        print(f"sfu natlab: cannot run here: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except LabError as exc:
        print(f"sfu natlab: lab error: {exc}", file=sys.stderr)
        status = EXIT_USAGE
    except KeyboardInterrupt:
        print("\nsfu natlab: interrupted; the lab was removed", file=sys.stderr)
        status = EXIT_INTERRUPTED
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    reported = _report(runner.results, runner, args.json)
    return status if status != EXIT_OK else reported


def build_parser(prog: str = "sfu natlab") -> argparse.ArgumentParser:
    """A stand-alone parser (the sfu CLI adds the same options to its subcommand)."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description=description(),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(parser)
    return parser


def description() -> str:
    """The subcommand's help text, with the server setups listed."""
    setups = "\n".join(f"  {s.name:18} {s.title}" for s in SETUPS)
    return DESCRIPTION.format(setups=setups)
