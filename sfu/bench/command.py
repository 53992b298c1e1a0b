"""The ``sfu bench`` subcommand: options, progress lines on stderr, the table, ``--json``.

Kept light at import time (argparse only): ``sfu.cli`` imports it to build its parser.
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sfu.bench.runner import BenchOptions

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_UNAVAILABLE = 2
EXIT_INTERRUPTED = 130

DESCRIPTION = """\
Measure the forwarding engine: publishers in a load namespace send SRTP over a veth to a server
namespace, subscribers check loss, decrypt samples and time them. For fan-out 1->10, 1->50,
1->200 and a 10x10 room, with AES_CM_128_HMAC_SHA1_80 and AEAD_AES_128_GCM, it reports CPU time
per packet out, the highest output rate under 0.1% loss, p50/p99 one-way latency at half that
rate and memory per subscriber, for the engine and for a minimal C loop (the floor), with
engine/floor ratios. Then the real `sfu serve`: one mountpoint fed by RTP, N WHEP watchers
(ICE + DTLS-SRTP), with loss, server CPU, memory per watcher and connect times (--watchers N
runs only that; --janus adds Janus from Debian under the same load, as a ratio). Needs root
(network namespaces), cc and libssl-dev; takes ~10-15 minutes (--quick: under a minute). See
docs/benchmarks.md."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--quick", action="store_true", help="smoke mode: one small scenario per profile (<60 s)"
    )
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the results here")
    parser.add_argument(
        "--engine",
        choices=("auto", "python", "cython"),
        default="auto",
        help="engine to measure (default: the Cython engine when built, else the Python one)",
    )
    parser.add_argument(
        "--scenario",
        action="append",
        choices=("fanout-10", "fanout-50", "fanout-200", "room-10x10"),
        help="run only this scenario (repeatable)",
    )
    parser.add_argument(
        "--profile",
        action="append",
        choices=("AES_CM_128_HMAC_SHA1_80", "AEAD_AES_128_GCM"),
        help="run only this SRTP profile (repeatable)",
    )
    parser.add_argument(
        "--watchers",
        action="append",
        type=int,
        metavar="N",
        help="mountpoint scenario with N WHEP watchers (repeatable; alone it skips the engine "
        "scenarios unless --scenario is given; 0: skip the mountpoint scenario)",
    )
    parser.add_argument(
        "--watch-seconds", type=float, help="length of the watchers' measurement window"
    )
    parser.add_argument(
        "--janus",
        action="store_true",
        help="after each watchers run, the same with Janus from Debian (/usr/bin/janus) as the "
        "server, and the Janus/sfu ratios",
    )
    parser.add_argument(
        "--janus-event-loops",
        type=int,
        default=1,
        metavar="N",
        help="Janus's event_loops setting (default 1: it is pinned to one CPU; 0: Janus's own "
        "default, one thread per watcher)",
    )
    parser.add_argument("--trial-seconds", type=float, help="length of a search trial")
    parser.add_argument("--no-floor", action="store_true", help="skip the C floor (no ratios)")
    parser.add_argument(
        "--no-pin",
        action="store_true",
        help="do not pin the server and the load generator to separate CPUs",
    )
    parser.add_argument(
        "--nice",
        type=int,
        default=0,
        metavar="N",
        help="run server and load generator at niceness N (e.g. -10 on a shared machine)",
    )


def _options(args: argparse.Namespace) -> BenchOptions:
    from sfu.bench.runner import BenchOptions
    from sfu.engine.base import SrtpProfile

    opts = BenchOptions.quick_mode(args.engine) if args.quick else BenchOptions(args.engine)
    if args.scenario:
        opts.scenarios = tuple(dict.fromkeys(args.scenario))
    if args.watchers:
        opts.watchers = tuple(n for n in dict.fromkeys(args.watchers) if n > 0)
        if opts.watchers and not args.scenario:
            opts.scenarios = ()
    if args.watch_seconds:
        opts.watch_window_s = args.watch_seconds
    if args.janus:
        opts.janus = True
        opts.janus_event_loops = max(0, args.janus_event_loops)
    if args.profile:
        opts.profiles = tuple(SrtpProfile[p] for p in dict.fromkeys(args.profile))
    if args.trial_seconds:
        opts.trial_s = args.trial_seconds
        opts.notes.append(f"trial length set to {args.trial_seconds} s")
    if args.no_floor:
        opts.floor = False
    if args.no_pin:
        opts.pin = False
    if args.nice:
        opts.nice = args.nice
        opts.notes.append(f"server and load generator ran at nice {args.nice}")
    return opts


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def run(args: argparse.Namespace) -> int:
    """Handler of ``sfu bench``."""
    from sfu.bench.report import format_table
    from sfu.bench.runner import run_bench
    from sfu.bench.topology import BenchError, BenchUnavailable

    opts = _options(args)

    def progress(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    previous = signal.signal(signal.SIGTERM, _interrupt)  # clean up on SIGTERM as on Ctrl-C
    try:
        report = run_bench(opts, progress)
    except BenchUnavailable as exc:
        print(f"sfu bench: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    except BenchError as exc:
        print(f"sfu bench: failed: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("sfu bench: interrupted (namespaces and processes removed)", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        signal.signal(signal.SIGTERM, previous)
    print(format_table(report))
    runs = len(report.results) + len(report.watchers)
    print(f"\n{runs} runs in {report.seconds:.0f} s, engine: {report.engine}")
    if args.json:
        args.json.write_text(report.dumps() + "\n")
        print(f"JSON written to {args.json}", file=sys.stderr)
    failed = [r.error for r in report.results if r.error]
    failed += [w.error for w in report.watchers if w.error]
    return EXIT_FAILED if failed else EXIT_OK
