"""The ``sfu`` command line: ``serve``, ``config``, ``version`` (and placeholders for more)."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import inspect
import json
import logging
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, Final, TextIO

from sfu import __version__
from sfu.config import (
    ENV_CONFIG,
    Config,
    ConfigError,
    LogConfig,
    LogFormat,
    add_config_arguments,
    config_to_json,
    config_to_toml,
    load_config,
)

__all__ = ["JsonFormatter", "build_parser", "main", "setup_logging"]

EXIT_OK: Final = 0
EXIT_USAGE: Final = 2  # bad configuration, bad usage, not implemented
EXIT_INTERRUPTED: Final = 130

_DESCRIPTION = """\
A WebRTC SFU and media server that works inside NATed containers.

Configuration comes from defaults < a TOML file (--config or $SFU_CONFIG) < SFU_<SECTION>_<KEY>
environment variables < command-line flags. See docs/configuration.md."""

_EPILOG = """\
examples:
  sfu serve                                   HTTP on 0.0.0.0:8080, media on UDP 40000
  sfu serve --announce 172.17.0.2=203.0.113.5 behind Docker's bridge, port published as-is
  sfu serve --stun 192.0.2.1 --announce '*=auto'
  sfu config --check --config sfu.toml        print the effective configuration"""

# Standard LogRecord attributes; anything else on a record came from `extra=` and is emitted.
_RECORD_ATTRS: Final = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", None, None)).keys() | {"message", "asctime"}
)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, extra fields, exc."""

    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        line: dict[str, Any] = {
            "ts": f"{ts}.{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _RECORD_ATTRS and not key.startswith("_"):
                line[key] = value
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def setup_logging(log: LogConfig, stream: TextIO | None = None) -> None:
    """Route the root logger to ``stream`` (stderr) at ``log.level`` in ``log.format``."""
    handler = logging.StreamHandler(stream or sys.stderr)
    if log.format is LogFormat.JSON:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=log.level.number, handlers=[handler], force=True)


def _print_config_error(error: ConfigError) -> None:
    for problem in error.problems:
        print(f"sfu: config error: {problem}", file=sys.stderr)


def _load(args: argparse.Namespace) -> Config | None:
    try:
        return load_config(args, os.environ)
    except ConfigError as e:
        _print_config_error(e)
        return None


def _install_uvloop() -> None:
    try:
        import uvloop
    except ImportError:
        logging.getLogger("sfu").warning("uvloop is not installed: using asyncio's own loop")
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def cmd_serve(args: argparse.Namespace) -> int:
    """Load the configuration, set up logging and uvloop, run sfu.server.run(config)."""
    config = _load(args)
    if config is None:
        return EXIT_USAGE
    setup_logging(config.log)
    try:
        server = importlib.import_module("sfu.server")  # imported late: it pulls in everything
    except ModuleNotFoundError as e:
        if e.name != "sfu.server":
            raise
        server = None
    run: Callable[[Config], object] | None = getattr(server, "run", None)
    if run is None:
        print("sfu serve: the server (sfu.server.run) is not available yet", file=sys.stderr)
        return EXIT_USAGE
    _install_uvloop()
    try:
        result = run(config)
        if inspect.isawaitable(result):
            result = asyncio.run(_await(result))
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    return result if isinstance(result, int) else EXIT_OK


async def _await(awaitable: Any) -> object:
    return await awaitable


def cmd_config(args: argparse.Namespace) -> int:
    """Print the effective configuration (exit 2 with every problem when it is invalid)."""
    config = _load(args)
    if config is None:
        return EXIT_USAGE
    redact = not args.show_secrets
    if args.format == "json":
        print(config_to_json(config, redact=redact))
    else:
        source = config.config_file or "none"
        print(f"# effective configuration (file: {source})")
        print(config_to_toml(config, redact=redact), end="")
    if args.check:
        print("sfu: configuration OK", file=sys.stderr)
    return EXIT_OK


def cmd_version(args: argparse.Namespace) -> int:
    """Print the version."""
    print(f"sfu {__version__} (Python {platform.python_version()})")
    return EXIT_OK


def cmd_doctor(args: argparse.Namespace) -> int:
    """Load the configuration like `serve`, probe the NAT, print the facts and the verdict."""
    config = _load(args)
    if config is None:
        return EXIT_USAGE
    setup_logging(config.log)
    from sfu.doctor import command as doctor_command

    try:
        return doctor_command.run(config, as_json=args.json, timeout=args.timeout)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


def cmd_token(args: argparse.Namespace) -> int:
    """Mint a room access token (HS256) with the configured or given secret."""
    from sfu.auth.tokens import TokenError, mint_token

    secret = args.secret or os.environ.get("SFU_ROOMS_TOKEN_SECRET")
    if not secret and args.config:
        config = _load(args)
        if config is None:
            return EXIT_USAGE
        secret = config.rooms.token_secret
    if not secret:
        print(
            "sfu token: no secret: give --secret, SFU_ROOMS_TOKEN_SECRET, or a --config "
            "with [rooms] token_secret",
            file=sys.stderr,
        )
        return EXIT_USAGE
    try:
        token = mint_token(
            secret,
            identity=args.identity,
            room=args.room,
            publish=not args.no_publish,
            subscribe=not args.no_subscribe,
            ttl=args.ttl,
            name=args.name,
        )
    except TokenError as exc:
        print(f"sfu token: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(token)
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    """The ``sfu`` argument parser with all subcommands."""
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog="sfu", description=_DESCRIPTION, epilog=_EPILOG, formatter_class=formatter
    )
    parser.add_argument("--version", action="version", version=f"sfu {__version__}")
    commands = parser.add_subparsers(title="commands", dest="command", metavar="COMMAND")

    serve = commands.add_parser(
        "serve",
        help="run the server",
        description="Run the SFU: HTTP + WebSocket signaling and UDP media. Every option "
        f"overrides the same setting of the file (--config or ${ENV_CONFIG}) and of the "
        "environment.",
    )
    add_config_arguments(serve)
    serve.set_defaults(handler=cmd_serve)

    config = commands.add_parser(
        "config",
        help="print the effective configuration",
        description="Print the configuration `sfu serve` would use with the same file, "
        "environment and options; exit 2 listing every problem when it is invalid.",
    )
    config.add_argument(
        "--check",
        action="store_true",
        help="validate; on success also print 'configuration OK' on stderr",
    )
    config.add_argument(
        "--format",
        choices=("toml", "json"),
        default="toml",
        help="output format (default: toml)",
    )
    config.add_argument(
        "--show-secrets",
        action="store_true",
        help="print TURN passwords and secrets instead of <redacted>",
    )
    add_config_arguments(config)
    config.set_defaults(handler=cmd_config)

    version = commands.add_parser(
        "version", help="print the version", description="Print the version."
    )
    version.set_defaults(handler=cmd_version)

    from sfu.doctor import command as doctor_command  # argparse and config only

    doctor = commands.add_parser(
        "doctor",
        help="probe the NAT in front of the media port and say what it means",
        description=doctor_command.DESCRIPTION,
        epilog=doctor_command.EPILOG,
        formatter_class=formatter,
    )
    doctor_command.add_arguments(doctor)
    doctor.set_defaults(handler=cmd_doctor)

    from sfu.natlab import command as natlab_command  # stdlib-only imports: cheap

    natlab = commands.add_parser(
        "natlab",
        help="build the network-namespace NAT lab and run the server against real clients in it",
        description=natlab_command.description(),
        epilog=natlab_command.EPILOG,
        formatter_class=formatter,
    )
    natlab_command.add_arguments(natlab)
    natlab.set_defaults(handler=natlab_command.run_command)

    from sfu.bench import command as bench_command  # argparse only; the bench loads on use

    bench = commands.add_parser(
        "bench",
        help="measure forwarding throughput, latency and memory against a C floor",
        description=bench_command.DESCRIPTION,
        formatter_class=formatter,
    )
    bench_command.add_arguments(bench)
    bench.set_defaults(handler=bench_command.run)

    token = commands.add_parser(
        "token",
        help="mint a room access token (HS256 JWT) for a client",
        description="Mint a room access token: an HS256 JWT carrying the room, the identity, "
        "the publish/subscribe permissions and an expiry, signed with the rooms' token secret.",
        formatter_class=formatter,
    )
    token.add_argument("--room", required=True, help="the room the token admits to")
    token.add_argument("--identity", required=True, help="who the bearer is (unique in the room)")
    token.add_argument("--name", help="display name carried in the token")
    token.add_argument("--ttl", type=int, default=3600, help="validity in seconds (default: 3600)")
    token.add_argument("--no-publish", action="store_true", help="the bearer may not publish")
    token.add_argument("--no-subscribe", action="store_true", help="the bearer may not subscribe")
    token.add_argument(
        "--secret",
        help="the signing secret (default: SFU_ROOMS_TOKEN_SECRET, or [rooms] token_secret of "
        "--config)",
    )
    token.add_argument("--config", help="TOML file to read [rooms] token_secret from")
    token.set_defaults(handler=cmd_token)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``sfu`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Callable[[argparse.Namespace], int] | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        return handler(args)
    except BrokenPipeError:  # `sfu config | head`: the reader went away
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
