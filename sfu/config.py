"""Server configuration: defaults < TOML file < ``SFU_*`` environment < command-line flags.

:func:`load_config` merges the four sources and validates the result in one pass. It raises
:class:`ConfigError` listing every problem, each naming its source and key, e.g.
``config.toml [media] port: 70000 is not a port (1-65535)``. The resulting :class:`Config`
is a tree of frozen dataclasses with typed values; docs/configuration.md describes each option.
"""

from __future__ import annotations

import argparse
import base64
import difflib
import fnmatch
import hashlib
import hmac
import ipaddress
import json
import math
import os
import re
import ssl
import tomllib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from enum import Enum
from pathlib import Path
from typing import Any, Final, TypeVar

__all__ = [
    "AnnounceMode",
    "AnnounceRule",
    "Config",
    "ConfigError",
    "HostPort",
    "HttpConfig",
    "IceConfig",
    "LimitsConfig",
    "LogConfig",
    "LogFormat",
    "LogLevel",
    "MediaConfig",
    "MediaMode",
    "TurnServer",
    "TurnTransport",
    "add_config_arguments",
    "config_to_dict",
    "config_to_json",
    "config_to_toml",
    "env_names",
    "flag_names",
    "is_private_address",
    "load_config",
    "parse_announce_rule",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
T = TypeVar("T")

ENV_PREFIX: Final = "SFU_"
ENV_CONFIG: Final = "SFU_CONFIG"
STUN_PORT: Final = 3478
TURNS_PORT: Final = 5349
REDACTED: Final = "<redacted>"


# --------------------------------------------------------------------------------------------
# The configuration model
# --------------------------------------------------------------------------------------------


class ConfigError(Exception):
    """Invalid configuration; ``problems`` lists every problem, one line each."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems: tuple[str, ...] = tuple(problems)
        super().__init__("\n".join(self.problems))


class MediaMode(Enum):
    """How media sockets are laid out."""

    SINGLE_PORT = "single-port"  # one UDP port shared by all sessions (demuxed by ufrag/5-tuple)
    PORT_RANGE = "port-range"  # one UDP port per session, taken from port_min..port_max


class AnnounceMode(Enum):
    """What an announce rule does to the local candidate it matches."""

    REPLACE = "replace"  # advertise the public address instead of the local one
    APPEND = "append"  # advertise the public address in addition to the local one


class LogLevel(Enum):
    """Log threshold."""

    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"

    @property
    def number(self) -> int:
        """The :mod:`logging` level number."""
        return {"debug": 10, "info": 20, "warning": 30, "error": 40}[self.value]


class LogFormat(Enum):
    """Log line format."""

    TEXT = "text"
    JSON = "json"  # one JSON object per line


class TurnTransport(Enum):
    """Transport between this server and its TURN server."""

    UDP = "udp"
    TCP = "tcp"


@dataclass(frozen=True)
class HostPort:
    """A host (IP literal or DNS name) and a port."""

    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


@dataclass(frozen=True)
class HttpConfig:
    """``[http]``: the HTTP + WebSocket (signaling, web client) listener."""

    listen: tuple[HostPort, ...] = (HostPort("0.0.0.0", 8080),)
    tls_cert: Path | None = None
    tls_key: Path | None = None
    static_dir: Path | None = None  # None = the web client bundled with the package

    @property
    def tls(self) -> bool:
        """Whether HTTPS/WSS is served."""
        return self.tls_cert is not None


@dataclass(frozen=True)
class MediaConfig:
    """``[media]``: UDP media sockets and which local addresses become host candidates."""

    # Both families by default; the server skips a family the kernel lacks (binds "::" with
    # IPV6_V6ONLY so it can coexist with "0.0.0.0" on the same port).
    listen: tuple[IPAddress, ...] = (
        ipaddress.IPv4Address("0.0.0.0"),
        ipaddress.IPv6Address("::"),
    )
    mode: MediaMode = MediaMode.SINGLE_PORT
    port: int = 40000
    port_min: int = 40000
    port_max: int = 40100
    interfaces: tuple[str, ...] = ()  # allow-list of interface names (fnmatch patterns); () = all
    ignore_interfaces: tuple[str, ...] = ()  # deny-list, wins over the allow-list
    cidrs: tuple[IPNetwork, ...] = ()  # allow-list of host candidate addresses; () = all
    include_loopback: bool = False

    @property
    def port_count(self) -> int:
        """Number of local media ports (1 in single-port mode)."""
        if self.mode is MediaMode.SINGLE_PORT:
            return 1
        return self.port_max - self.port_min + 1

    def interface_allowed(self, name: str) -> bool:
        """Whether addresses of interface ``name`` may become host candidates."""
        if any(fnmatch.fnmatchcase(name, pat) for pat in self.ignore_interfaces):
            return False
        return not self.interfaces or any(fnmatch.fnmatchcase(name, p) for p in self.interfaces)

    def address_allowed(self, address: IPAddress) -> bool:
        """Whether ``address`` may become a host candidate (loopback and ``cidrs`` filters)."""
        if address.is_loopback and not self.include_loopback:
            return False
        return not self.cidrs or any(
            address.version == net.version and address in net for net in self.cidrs
        )


@dataclass(frozen=True)
class AnnounceRule:
    """A 1:1 NAT mapping: advertise ``public`` (and maybe another port) for ``local``.

    ``local`` None matches every local address of the public address's family (any family
    when ``public`` is "auto"). ``public`` None means "auto": learned from STUN at start-up.
    """

    local: IPAddress | None = None
    public: IPAddress | None = None
    public_port: int | None = None  # single-port mode: the published port
    public_port_min: int | None = None  # port-range mode: public = this + (local - port_min)
    mode: AnnounceMode = AnnounceMode.REPLACE

    @property
    def auto(self) -> bool:
        """Whether the public address is learned from STUN."""
        return self.public is None

    def matches(self, local: IPAddress) -> bool:
        """Whether this rule applies to a host candidate on ``local``."""
        if self.local is not None:
            return self.local == local
        return self.public is None or self.public.version == local.version

    def map_port(self, local_port: int, media: MediaConfig) -> int:
        """The port to advertise for a candidate on ``local_port``."""
        if media.mode is MediaMode.SINGLE_PORT:
            return self.public_port if self.public_port is not None else local_port
        if self.public_port_min is None:
            return local_port
        return self.public_port_min + (local_port - media.port_min)

    def to_text(self, media: MediaConfig | None = None) -> str:
        """The rule in the ``local=public[:port][/append]`` mini-syntax."""
        local = "*" if self.local is None else str(self.local)
        if self.public is None:
            public = "auto"
        elif self.public.version == 6:
            public = f"[{self.public}]"
        else:
            public = str(self.public)
        if self.public_port is not None:
            public += f":{self.public_port}"
        elif self.public_port_min is not None:
            if media is not None and media.mode is MediaMode.PORT_RANGE:
                public += f":{self.public_port_min}-{self.public_port_min + media.port_count - 1}"
            else:
                public += f":{self.public_port_min}"
        suffix = "/append" if self.mode is AnnounceMode.APPEND else ""
        return f"{local}={public}{suffix}"


@dataclass(frozen=True)
class TurnServer:
    """One ``[[ice.turn]]`` server with static or TURN REST (shared secret) credentials."""

    url: str  # normalised: turn[s]:host:port?transport=udp|tcp
    host: str
    port: int
    transport: TurnTransport = TurnTransport.UDP
    secure: bool = False  # turns: (TLS over TCP)
    username: str | None = None  # static user, or the user id part of REST usernames
    password: str | None = None
    shared_secret: str | None = None
    ttl: int = 86400  # lifetime of REST credentials, seconds

    def credentials(self, now: float) -> tuple[str, str]:
        """(username, password) to use at wall-clock time ``now`` (Unix seconds).

        With a shared secret this is the TURN REST scheme coturn's ``--use-auth-secret``
        checks: username ``expiry[:user]``, password base64(HMAC-SHA1(secret, username)).
        """
        if self.shared_secret is None:
            return self.username or "", self.password or ""
        expiry = str(int(now) + self.ttl)
        username = f"{expiry}:{self.username}" if self.username else expiry
        digest = hmac.new(self.shared_secret.encode(), username.encode(), hashlib.sha1).digest()
        return username, base64.b64encode(digest).decode("ascii")


@dataclass(frozen=True)
class IceConfig:
    """``[ice]``: STUN/TURN servers and ICE timing."""

    stun_servers: tuple[HostPort, ...] = ()
    turn: tuple[TurnServer, ...] = ()
    early_checks: bool = True  # send checks toward remote candidates before revealing ours
    withhold_timeout_ms: int = 300  # max wait for a usable remote candidate before revealing
    consent_timeout: float = 30.0  # RFC 7675 consent expiry, seconds
    failure_timeout: float = 10.0  # checking without success -> failed, seconds


@dataclass(frozen=True)
class LogConfig:
    """``[log]``."""

    level: LogLevel = LogLevel.INFO
    format: LogFormat = LogFormat.TEXT


@dataclass(frozen=True)
class LimitsConfig:
    """``[limits]``."""

    max_sessions: int | None = None  # None = unlimited (0 in files, env and flags)
    max_ws_message_bytes: int = 256 * 1024


@dataclass(frozen=True)
class StreamingConfig:
    """``[streaming]``: mountpoints (docs/streaming.md)."""

    admin_key: str | None = None  # needed to create mountpoints (and to see private ones)
    db_path: str = (
        "sfu-streaming.db"  # SQLite file for permanent mountpoints; ":memory:" keeps none
    )
    rtp_port_min: int = 20000  # RTP ingest ports allocated to mountpoints
    rtp_port_max: int = 20999


@dataclass(frozen=True)
class RoomsConfig:
    """``[rooms]``: publish/subscribe rooms (docs/rooms.md)."""

    token_secret: str | None = None  # set: joining needs an HS256 token signed with it
    auto_create: bool = True  # a join creates the room when it does not exist


@dataclass(frozen=True)
class Config:
    """The whole effective configuration."""

    http: HttpConfig = field(default_factory=HttpConfig)
    media: MediaConfig = field(default_factory=MediaConfig)
    announce: tuple[AnnounceRule, ...] = ()
    announce_private: bool = True  # False: never advertise private/loopback addresses
    ice: IceConfig = field(default_factory=IceConfig)
    log: LogConfig = field(default_factory=LogConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    streaming: StreamingConfig = field(default_factory=StreamingConfig)
    rooms: RoomsConfig = field(default_factory=RoomsConfig)
    config_file: Path | None = field(default=None, compare=False)  # the TOML file read, if any


_PRIVATE_NETWORKS: Final = tuple(
    ipaddress.ip_network(n)
    for n in (
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "100.64.0.0/10",
        "169.254.0.0/16",
        "127.0.0.0/8",
        "fc00::/7",
        "fe80::/10",
        "::1/128",
    )
)


def is_private_address(address: IPAddress) -> bool:
    """Whether ``announce_private = false`` drops candidates on ``address``.

    Private means RFC 1918, shared CGN space (100.64/10), link-local, loopback and IPv6 ULA.
    Documentation ranges (192.0.2/24, 198.51.100/24, 203.0.113/24) count as public.
    """
    return any(address.version == n.version and address in n for n in _PRIVATE_NETWORKS)


# --------------------------------------------------------------------------------------------
# Value converters: raw values from one source -> typed values, or _Invalid
# --------------------------------------------------------------------------------------------


class _Invalid(Exception):
    def __init__(self, *messages: str) -> None:
        self.messages = messages
        super().__init__("; ".join(messages))


@dataclass(frozen=True)
class _Raw:
    """One value as a source gave it: text (env, flags) or a TOML value."""

    value: object
    origin: str  # "config.toml [media] port", "SFU_MEDIA_PORT", "--media-port"
    text: bool  # True: parse from a string
    base: Path | None = None  # directory that relative paths resolve against


_Conv = Callable[[_Raw], Any]
_TRUE: Final = frozenset({"true", "1", "yes", "on"})
_FALSE: Final = frozenset({"false", "0", "no", "off"})
_HOSTNAME = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?$"
)
_INT_TEXT = re.compile(r"^[+-]?\d+$")


def _int_of(raw: _Raw) -> int:
    v = raw.value
    if raw.text:
        s = str(v).strip()
        if not _INT_TEXT.match(s):
            raise _Invalid(f"{s!r} is not an integer")
        return int(s)
    if isinstance(v, bool) or not isinstance(v, int):
        raise _Invalid(f"{v!r} is not an integer")
    return v


def _port(raw: _Raw) -> int:
    v = _int_of(raw)
    if not 1 <= v <= 65535:
        raise _Invalid(f"{v} is not a port (1-65535)")
    return v


def _port_text(text: str) -> int:
    """A port inside a larger string (host:port, rule ports)."""
    s = text.strip()
    if not _INT_TEXT.match(s) or not 1 <= int(s) <= 65535:
        raise _Invalid(f"port {text!r} is not a port (1-65535)")
    return int(s)


def _int_range(lo: int, hi: int) -> _Conv:
    def conv(raw: _Raw) -> int:
        v = _int_of(raw)
        if not lo <= v <= hi:
            raise _Invalid(f"{v} is out of range ({lo}-{hi})")
        return v

    return conv


def _max_sessions(raw: _Raw) -> int | None:
    v = _int_range(0, 1_000_000)(raw)
    return v or None


def _positive_float(raw: _Raw) -> float:
    v = raw.value
    if raw.text:
        s = str(v).strip()
        try:
            f = float(s)
        except ValueError:
            raise _Invalid(f"{s!r} is not a number") from None
    elif isinstance(v, bool) or not isinstance(v, int | float):
        raise _Invalid(f"{v!r} is not a number")
    else:
        f = float(v)
    if not math.isfinite(f) or f <= 0:
        raise _Invalid(f"{v!r} is not a positive number")
    return f


def _bool(raw: _Raw) -> bool:
    v = raw.value
    if isinstance(v, bool):
        return v
    if raw.text:
        s = str(v).strip().lower()
        if s in _TRUE:
            return True
        if s in _FALSE:
            return False
    raise _Invalid(f"{v!r} is not a boolean (true or false)")


def _string(raw: _Raw) -> str:
    if not isinstance(raw.value, str):
        raise _Invalid(f"{raw.value!r} is not a string")
    return raw.value


E = TypeVar("E", bound=Enum)


def _enum(cls: type[E], aliases: Mapping[str, str] | None = None) -> Callable[[_Raw], E]:
    def conv(raw: _Raw) -> E:
        s = _string(raw).strip().lower()
        s = (aliases or {}).get(s, s)
        for member in cls:
            if member.value == s:
                return member
        choices = ", ".join(repr(m.value) for m in cls)
        raise _Invalid(f"{raw.value!r} is not one of {choices}")

    return conv


def _ip(text: str) -> IPAddress:
    s = text.strip()
    if s.startswith("[") and s.endswith("]"):
        s = s[1:-1]
    try:
        return ipaddress.ip_address(s)
    except ValueError:
        raise _Invalid(f"{text!r} is not an IP address") from None


def _cidr(text: str) -> IPNetwork:
    try:
        return ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        raise _Invalid(f"{text!r} is not a network (like 10.0.0.0/8 or fd00::/8)") from None


def _ifname(text: str) -> str:
    s = text.strip()
    if not s or len(s) > 64 or any(c.isspace() or c == "/" for c in s):
        raise _Invalid(f"{text!r} is not an interface name or pattern")
    return s


def _host(text: str, original: str) -> str:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        pass
    if not _HOSTNAME.match(text):
        raise _Invalid(f"{original!r}: {text!r} is not an IP address or host name")
    return text


def _split_host_port(text: str, default_port: int | None, example: str) -> HostPort:
    """Parse ``host:port``, ``[v6]:port`` (or bare host / v6 when a default port exists)."""
    s = text.strip()
    bad = _Invalid(f"{text!r} is not host:port (like {example})")
    port_text: str | None
    if s.startswith("["):
        close = s.find("]")
        if close < 0:
            raise bad
        host, rest = s[1:close], s[close + 1 :]
        if rest and not rest.startswith(":"):
            raise bad
        port_text = rest[1:] if rest else None
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise _Invalid(f"{text!r}: {host!r} is not an IPv6 address") from None
    elif s.count(":") > 1:
        try:
            host = str(ipaddress.IPv6Address(s))
        except ValueError:
            raise bad from None
        if default_port is None:
            raise _Invalid(f"{text!r}: write IPv6 addresses in brackets, like {example}")
        port_text = None
    elif ":" in s:
        host, port_text = s.rsplit(":", 1)
    else:
        host, port_text = s, None
    if not host:
        raise bad
    if port_text is None:
        if default_port is None:
            raise bad
        port = default_port
    else:
        try:
            port = _port_text(port_text)
        except _Invalid as e:
            raise _Invalid(f"{text!r}: {e.messages[0]}") from None
    return HostPort(_host(host, text), port)


def _http_addr(text: str) -> HostPort:
    return _split_host_port(text, None, "0.0.0.0:8080 or [::]:8080")


def _stun(text: str) -> HostPort:
    s = text.strip()
    low = s.lower()
    if low.startswith("stuns:"):
        raise _Invalid(f"{text!r}: stuns: (STUN over TLS) is not supported")
    if low.startswith("stun:"):
        s = s[5:]
    if "?" in s or "/" in s:
        raise _Invalid(f"{text!r} is not a STUN server (like stun:192.0.2.1:3478)")
    return _split_host_port(s, STUN_PORT, "stun:192.0.2.1:3478")


def _split_items(value: object) -> list[str]:
    """Items of a textual list: one string or several (repeated flag), each comma-separated."""
    parts = value if isinstance(value, list | tuple) else [value]
    return [p.strip() for s in parts for p in str(s).split(",") if p.strip()]


def _list(item: Callable[[str], T]) -> Callable[[_Raw], tuple[T, ...]]:
    """A list: a TOML array (or one string), or comma-separated text."""

    def conv(raw: _Raw) -> tuple[T, ...]:
        v = raw.value
        texts: list[object]
        if raw.text:
            texts = list(_split_items(v))
        elif isinstance(v, str):
            texts = [v]
        elif isinstance(v, list):
            texts = list(v)
        else:
            raise _Invalid(f"{v!r} is not a list")
        out: list[T] = []
        problems: list[str] = []
        for t in texts:
            if not isinstance(t, str):
                problems.append(f"{t!r} is not a string")
                continue
            try:
                out.append(item(t))
            except _Invalid as e:
                problems.extend(e.messages)
        if problems:
            raise _Invalid(*problems)
        return tuple(out)

    return conv


def _path(raw: _Raw) -> Path:
    s = _string(raw).strip()
    if not s:
        raise _Invalid("empty path")
    p = Path(s).expanduser()
    if not p.is_absolute():
        p = (raw.base or Path.cwd()) / p
    return Path(os.path.normpath(p))


def _readable_file(raw: _Raw) -> Path:
    p = _path(raw)
    if not p.exists():
        raise _Invalid(f"{str(p)!r} does not exist")
    if not p.is_file():
        raise _Invalid(f"{str(p)!r} is not a file")
    if not os.access(p, os.R_OK):
        raise _Invalid(f"{str(p)!r} is not readable")
    return p


def _directory(raw: _Raw) -> Path:
    p = _path(raw)
    if not p.is_dir():
        raise _Invalid(f"{str(p)!r} is not a directory")
    return p


# --------------------------------------------------------------------------------------------
# The option table: TOML key, env var, flag and help come from one place
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Spec:
    section: str  # "" = top level
    key: str
    conv: _Conv
    help: str
    flag: str | None = None
    metavar: str | None = None
    repeat: bool = False  # list flag: may be given several times (and/or comma-separated)
    boolean: bool = False  # --flag / --no-flag

    @property
    def name(self) -> str:
        return f"{self.section}.{self.key}" if self.section else self.key

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.replace(".", "_").upper()

    @property
    def dest(self) -> str:
        assert self.flag is not None
        return self.flag.lstrip("-").replace("-", "_")


_CORE_SPECS: Final[tuple[_Spec, ...]] = (
    _Spec(
        "http",
        "listen",
        _list(_http_addr),
        "HTTP + WebSocket listen address, host:port (IPv6 as [::]:8080)",
        "--http-listen",
        "HOST:PORT",
        repeat=True,
    ),
    _Spec(
        "http", "tls_cert", _readable_file, "PEM certificate chain: serve HTTPS/WSS", "--tls-cert"
    ),
    _Spec("http", "tls_key", _readable_file, "PEM private key of --tls-cert", "--tls-key", "FILE"),
    _Spec(
        "http",
        "static_dir",
        _directory,
        "serve the web client from this directory instead of the bundled one",
        "--static-dir",
        "DIR",
    ),
    _Spec(
        "media",
        "listen",
        _list(_ip),
        "IP address(es) the media UDP socket(s) bind to",
        "--media-listen",
        "IP",
        repeat=True,
    ),
    _Spec("media", "mode", _enum(MediaMode), "'single-port' or 'port-range'"),
    _Spec("media", "port", _port, "UDP port shared by all sessions", "--media-port", "PORT"),
    _Spec("media", "port_min", _port, "first UDP port of the per-session range"),
    _Spec("media", "port_max", _port, "last UDP port of the per-session range"),
    _Spec(
        "media",
        "interfaces",
        _list(_ifname),
        "only gather host candidates on these interfaces (names or patterns like eth*)",
        "--interface",
        "NAME",
        repeat=True,
    ),
    _Spec(
        "media",
        "ignore_interfaces",
        _list(_ifname),
        "never gather host candidates on these interfaces (names or patterns)",
        "--ignore-interface",
        "NAME",
        repeat=True,
    ),
    _Spec(
        "media",
        "cidrs",
        _list(_cidr),
        "only use local addresses inside these networks as host candidates",
        "--cidr",
        "CIDR",
        repeat=True,
    ),
    _Spec(
        "media",
        "include_loopback",
        _bool,
        "also use loopback addresses as host candidates",
        "--include-loopback",
        boolean=True,
    ),
    _Spec(
        "",
        "announce_private",
        _bool,
        "advertise private addresses (RFC 1918, ULA, link-local, loopback); "
        "--no-announce-private drops them from the SDP",
        "--announce-private",
        boolean=True,
    ),
    _Spec(
        "ice",
        "stun_servers",
        _list(_stun),
        "STUN server for server-reflexive candidates and announce public=auto, "
        "host[:port] or stun:host[:port]",
        "--stun",
        "URL",
        repeat=True,
    ),
    _Spec(
        "ice",
        "early_checks",
        _bool,
        "send checks toward the peer's candidates before revealing ours "
        "(beats the container NAT race)",
        "--early-checks",
        boolean=True,
    ),
    _Spec(
        "ice",
        "withhold_timeout_ms",
        _int_range(0, 10_000),
        "with early checks, reveal our candidates after at most this many ms "
        "when the peer gave no usable candidate",
        "--withhold-timeout-ms",
        "MS",
    ),
    _Spec(
        "ice",
        "consent_timeout",
        _positive_float,
        "seconds without consent (RFC 7675) before a session is closed",
        "--consent-timeout",
        "SECONDS",
    ),
    _Spec(
        "ice",
        "failure_timeout",
        _positive_float,
        "seconds of checking without a working pair before ICE fails",
        "--failure-timeout",
        "SECONDS",
    ),
    _Spec(
        "log",
        "level",
        _enum(LogLevel, {"warn": "warning"}),
        "debug, info, warning or error",
        "--log-level",
        "LEVEL",
    ),
    _Spec("log", "format", _enum(LogFormat), "text or json (JSON lines)", "--log-format", "FORMAT"),
    _Spec(
        "limits",
        "max_sessions",
        _max_sessions,
        "maximum concurrent sessions (0 = unlimited)",
        "--max-sessions",
        "N",
    ),
    _Spec(
        "limits",
        "max_ws_message_bytes",
        _int_range(1024, 64 * 1024 * 1024),
        "largest accepted WebSocket message in bytes",
        "--max-ws-message-bytes",
        "BYTES",
    ),
)
_SPECS: Final[tuple[_Spec, ...]] = (
    *_CORE_SPECS,
    _Spec(
        "streaming",
        "admin_key",
        _string,
        "key that the streaming REST API requires to create mountpoints (none: open)",
        "--streaming-admin-key",
        "KEY",
    ),
    _Spec(
        "streaming",
        "db_path",
        _string,
        "SQLite file that keeps permanent mountpoints (':memory:' keeps none)",
        "--streaming-db",
        "FILE",
    ),
    _Spec(
        "streaming",
        "rtp_port_min",
        _port,
        "first UDP port for RTP ingest into mountpoints",
        "--streaming-rtp-port-min",
        "PORT",
    ),
    _Spec(
        "streaming",
        "rtp_port_max",
        _port,
        "last UDP port for RTP ingest into mountpoints",
        "--streaming-rtp-port-max",
        "PORT",
    ),
    _Spec(
        "rooms",
        "token_secret",
        _string,
        "secret (>= 32 bytes) that signs room access tokens; set, joining a room needs a token",
        "--room-token-secret",
        "SECRET",
    ),
    _Spec(
        "rooms",
        "auto_create",
        _bool,
        "create a room when someone joins one that does not exist",
        "--room-auto-create",
        boolean=True,
    ),
)
_SPEC_BY_NAME: Final = {s.name: s for s in _SPECS}
SECRET_KEYS: Final = ("streaming.admin_key", "rooms.token_secret")

# Keys handled outside the generic table.
_ANNOUNCE_KEYS: Final = ("local", "public", "public_port", "public_port_min", "mode")
_TURN_KEYS: Final = ("url", "username", "password", "shared_secret", "ttl")
_TURN_CRED_ENV: Final = {
    "SFU_ICE_TURN_USERNAME": "username",
    "SFU_ICE_TURN_PASSWORD": "password",
    "SFU_ICE_TURN_SHARED_SECRET": "shared_secret",
    "SFU_ICE_TURN_TTL": "ttl",
}
_TURN_CRED_FLAGS: Final = {
    "turn_user": ("--turn-user", "username"),
    "turn_pass": ("--turn-pass", "password"),
    "turn_secret": ("--turn-secret", "shared_secret"),
    "turn_ttl": ("--turn-ttl", "ttl"),
}
_ENV_ANNOUNCE: Final = "SFU_ANNOUNCE"
_ENV_TURN: Final = "SFU_ICE_TURN"
_SECTIONS: Final = ("http", "media", "ice", "log", "limits", "streaming", "rooms")
_ENV_SECTION_PREFIXES: Final = tuple(f"{ENV_PREFIX}{s.upper()}_" for s in (*_SECTIONS, "announce"))


def env_names() -> tuple[str, ...]:
    """Every environment variable the configuration reads."""
    names = [ENV_CONFIG, *(s.env for s in _SPECS), _ENV_ANNOUNCE, _ENV_TURN, *_TURN_CRED_ENV]
    return tuple(dict.fromkeys(names))


def flag_names() -> tuple[str, ...]:
    """Every configuration flag ``add_config_arguments`` defines (booleans as --x and --no-x)."""
    names = ["--config"]
    for s in _SPECS:
        if s.flag:
            names.append(s.flag)
            if s.boolean:
                names.append("--no-" + s.flag[2:])
    names += ["--media-port-range", "--announce", "--turn"]
    names += [flag for flag, _ in _TURN_CRED_FLAGS.values()]
    return tuple(names)


def _default_text(spec: _Spec) -> str:
    value = config_to_dict(Config(), redact=False)
    if spec.section:
        value = value.get(spec.section, {})
    v = value.get(spec.key) if isinstance(value, dict) else None
    if v is None:
        return "none"
    if isinstance(v, list):
        return ",".join(str(x) for x in v) if v else "none"
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """Add every configuration flag to ``parser`` (all default to None = not given)."""
    parser.add_argument(
        "--config",
        metavar="FILE",
        help=f"TOML configuration file (env {ENV_CONFIG}; default: none)",
    )
    groups: dict[str, argparse._ArgumentGroup] = {}
    titles = {
        "http": "HTTP / signaling",
        "media": "media sockets and host candidates",
        "": "announced addresses (1:1 NAT)",
        "ice": "ICE, STUN and TURN",
        "log": "logging",
        "limits": "limits",
        "streaming": "streaming mountpoints",
        "rooms": "rooms",
    }
    for key, title in titles.items():
        groups[key] = parser.add_argument_group(title)

    def suffix(env: str, default: str) -> str:
        return f" (env {env}; default: {default})".replace("%", "%%")

    for spec in _SPECS:
        if spec.flag is None:
            continue
        group = groups[spec.section]
        text = spec.help.replace("%", "%%") + suffix(spec.env, _default_text(spec))
        if spec.repeat:
            text += "; repeatable"
        if spec.boolean:
            group.add_argument(
                spec.flag, action=argparse.BooleanOptionalAction, default=None, help=text
            )
        else:
            group.add_argument(
                spec.flag,
                metavar=spec.metavar or "FILE",
                action="append" if spec.repeat else "store",
                default=None,
                help=text,
            )
        if spec.name == "media.port":
            group.add_argument(
                "--media-port-range",
                metavar="MIN-MAX",
                help="port-range mode: one UDP port per session from MIN-MAX, e.g. 40000-40100 "
                "(env SFU_MEDIA_MODE=port-range, SFU_MEDIA_PORT_MIN, SFU_MEDIA_PORT_MAX; "
                "default: single-port mode)",
            )
            group.add_argument(
                "--media-mode",
                metavar="MODE",
                help="'single-port' or 'port-range' (env SFU_MEDIA_MODE; default: single-port, "
                "or port-range when only port_min/port_max are set)",
            )
    groups[""].add_argument(
        "--announce",
        metavar="RULE",
        action="append",
        default=None,
        help="1:1 NAT rule local=public[:port][/append]: local is an IP, '*' or 'all'; public "
        "is an IP or 'auto' (learn via STUN); port is the published port, or MIN-MAX in "
        "port-range mode; e.g. 172.17.0.2=203.0.113.5:40000 or *=auto (env SFU_ANNOUNCE, "
        "comma-separated; default: none); repeatable",
    )
    ice = groups["ice"]
    ice.add_argument(
        "--turn",
        metavar="URL",
        action="append",
        default=None,
        help="TURN server turn:host[:port][?transport=udp|tcp] or turns:host[:port] "
        f"(env {_ENV_TURN}, comma-separated; default: none); repeatable",
    )
    ice.add_argument(
        "--turn-user",
        metavar="NAME",
        help="TURN username (static credentials), or the user id in REST usernames "
        "(env SFU_ICE_TURN_USERNAME); applies to every TURN server",
    )
    ice.add_argument(
        "--turn-pass",
        metavar="PASSWORD",
        help="TURN password for static credentials (env SFU_ICE_TURN_PASSWORD)",
    )
    ice.add_argument(
        "--turn-secret",
        metavar="SECRET",
        help="TURN REST shared secret (coturn --static-auth-secret): time-limited "
        "credentials instead of a password (env SFU_ICE_TURN_SHARED_SECRET)",
    )
    ice.add_argument(
        "--turn-ttl",
        metavar="SECONDS",
        help="lifetime of TURN REST credentials (env SFU_ICE_TURN_TTL; default: 86400)",
    )


# --------------------------------------------------------------------------------------------
# Sources: each produces a _Layer of raw values; later layers win
# --------------------------------------------------------------------------------------------


@dataclass
class _Table:
    """One [[announce]] or [[ice.turn]] entry (from a file, or built from text)."""

    origin: str  # "config.toml [[announce]] #2", "--turn 'turn:...'"
    keys: dict[str, _Raw]


@dataclass
class _Layer:
    values: dict[str, _Raw] = field(default_factory=dict)
    # Announce rules: a whole-rule text (mini-syntax) or a TOML table. None = not given.
    announce: list[_Raw | _Table] | None = None
    turn: list[_Table] | None = None  # None = not given
    turn_creds: dict[str, _Raw] = field(default_factory=dict)  # apply to every TURN server


def _did_you_mean(word: str, choices: Sequence[str], fmt: str = "{!r}") -> str:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f"; did you mean {fmt.format(close[0])}?" if close else ""


def _file_layer(path: Path, display: str, errors: list[str]) -> _Layer:
    layer = _Layer()
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as e:
        errors.append(f"{display}: cannot read the configuration file: {e.strerror or e}")
        return layer
    except UnicodeDecodeError:
        errors.append(f"{display}: not UTF-8 text")
        return layer
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        errors.append(f"{display}: invalid TOML: {e}")
        return layer
    base = path.resolve().parent

    def raw(value: object, origin: str) -> _Raw:
        return _Raw(value, origin, False, base)

    top_keys = [s.key for s in _SPECS if not s.section]
    for name, value in doc.items():
        if name == "announce":
            if not isinstance(value, list) or not all(isinstance(t, dict) for t in value):
                errors.append(f"{display} announce: write announce rules as [[announce]] tables")
                continue
            layer.announce = []
            for i, table in enumerate(value, 1):
                prefix = f"{display} [[announce]] #{i}"
                rule: dict[str, _Raw] = {}
                for key, v in table.items():
                    if key in _ANNOUNCE_KEYS:
                        rule[key] = raw(v, f"{prefix} {key}")
                    elif key == "announce_private":
                        errors.append(
                            f"{prefix} announce_private: put announce_private at the top of the "
                            "file, before any [section]"
                        )
                    else:
                        errors.append(
                            f"{prefix} {key}: unknown key" + _did_you_mean(key, _ANNOUNCE_KEYS)
                        )
                layer.announce.append(_Table(prefix, rule))
        elif name in _SECTIONS:
            if not isinstance(value, dict):
                errors.append(f"{display} {name}: must be a [{name}] table")
                continue
            known = [s.key for s in _SPECS if s.section == name]
            for key, v in value.items():
                origin = f"{display} [{name}] {key}"
                if name == "ice" and key == "turn":
                    layer.turn = _file_turn(v, display, base, errors)
                elif key in known:
                    layer.values[f"{name}.{key}"] = raw(v, origin)
                else:
                    choices = known + (["turn"] if name == "ice" else [])
                    errors.append(f"{origin}: unknown key" + _did_you_mean(key, choices))
        elif name in top_keys:
            layer.values[name] = raw(value, f"{display} {name}")
        elif isinstance(value, dict):
            sections = [*_SECTIONS, "announce"]
            hint = _did_you_mean(name, sections, "[{}]")
            errors.append(f"{display} [{name}]: unknown section{hint}")
        else:
            choices = [*top_keys, *_SECTIONS, "announce"]
            errors.append(f"{display} {name}: unknown key" + _did_you_mean(name, choices))
    return layer


def _file_turn(value: object, display: str, base: Path, errors: list[str]) -> list[_Table] | None:
    if not isinstance(value, list) or not all(isinstance(t, dict) for t in value):
        errors.append(f"{display} [ice] turn: write TURN servers as [[ice.turn]] tables")
        return None
    servers: list[_Table] = []
    for i, table in enumerate(value, 1):
        prefix = f"{display} [[ice.turn]] #{i}"
        server: dict[str, _Raw] = {}
        for key, v in table.items():
            if key in _TURN_KEYS:
                server[key] = _Raw(v, f"{prefix} {key}", False, base)
            else:
                errors.append(f"{prefix} {key}: unknown key" + _did_you_mean(key, _TURN_KEYS))
        if "url" not in server:
            errors.append(f"{prefix}: missing url")
            continue
        servers.append(_Table(prefix, server))
    return servers


def _env_layer(environ: Mapping[str, str], errors: list[str]) -> _Layer:
    layer = _Layer()
    by_env = {s.env: s for s in _SPECS}
    known = env_names()
    for name in sorted(environ):
        if not name.startswith(ENV_PREFIX) or name == ENV_CONFIG:
            continue
        value = environ[name]
        raw = _Raw(value, name, True)
        spec = by_env.get(name)
        if spec is not None:
            if value.strip() or spec.repeat:  # an empty scalar means "not set"
                layer.values[spec.name] = raw
        elif name == _ENV_ANNOUNCE:
            rules = _split_items(value)
            layer.announce = [
                _Raw(r, f"{name} rule {i} {r!r}", True) for i, r in enumerate(rules, 1)
            ]
        elif name == _ENV_TURN:
            urls = _split_items(value)
            layer.turn = [_Table(f"{name} {u!r}", {"url": _Raw(u, name, True)}) for u in urls]
        elif name in _TURN_CRED_ENV:
            if value.strip():
                layer.turn_creds[_TURN_CRED_ENV[name]] = raw
        elif name.startswith(_ENV_SECTION_PREFIXES):
            errors.append(f"{name}: unknown setting" + _did_you_mean(name, known, "{}"))
    return layer


def _flag_layer(args: Mapping[str, Any], errors: list[str]) -> _Layer:
    layer = _Layer()
    for spec in _SPECS:
        if spec.flag is None:
            continue
        value = args.get(spec.dest)
        if value is None:
            continue
        text = not isinstance(value, bool)
        layer.values[spec.name] = _Raw(value, spec.flag, text)
    port = args.get("media_port")
    port_range = args.get("media_port_range")
    mode = args.get("media_mode")
    if port is not None and port_range is not None:
        errors.append("--media-port and --media-port-range: give only one of them")
    elif mode is not None:
        layer.values["media.mode"] = _Raw(mode, "--media-mode", True)
    elif port is not None:
        layer.values["media.mode"] = _Raw("single-port", "--media-port", True)
    if port_range is not None:
        m = re.fullmatch(r"\s*(\S+?)\s*-\s*(\S+)\s*", str(port_range))
        if m is None:
            errors.append(f"--media-port-range: {port_range!r} is not MIN-MAX (like 40000-40100)")
        else:
            if mode is None:
                layer.values["media.mode"] = _Raw("port-range", "--media-port-range", True)
            layer.values["media.port_min"] = _Raw(m[1], "--media-port-range", True)
            layer.values["media.port_max"] = _Raw(m[2], "--media-port-range", True)
    rules = args.get("announce")
    if rules is not None:
        layer.announce = [_Raw(r, f"--announce {r!r}", True) for r in _split_items(rules)]
    turn = args.get("turn")
    if turn is not None:
        urls = _split_items(turn)
        layer.turn = [_Table(f"--turn {u!r}", {"url": _Raw(u, "--turn", True)}) for u in urls]
    for dest, (flag, key) in _TURN_CRED_FLAGS.items():
        value = args.get(dest)
        if value is not None:
            layer.turn_creds[key] = _Raw(str(value), flag, True)
    return layer


# --------------------------------------------------------------------------------------------
# Announce rules and TURN servers
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _RuleParts:
    """A rule before the media mode is known; ports as given."""

    local: IPAddress | None
    public: IPAddress | None
    port: int | None  # ":P": the public port (single) or first public port (range)
    port_max: int | None  # ":P-Q"
    mode: AnnounceMode


def _parse_rule_text(text: str) -> _RuleParts:
    """Parse ``[local=]public[:port[-port]][/replace|/append]``."""
    s = text.strip()
    syntax = _Invalid(f"{text!r} is not a rule local=public[:port][/append]")
    if not s:
        raise syntax
    body, slash, mode_text = s.partition("/")
    mode = AnnounceMode.REPLACE
    if slash:
        try:
            mode = AnnounceMode(mode_text.strip().lower())
        except ValueError:
            raise _Invalid(f"mode {mode_text!r} is not 'replace' or 'append'") from None
    local_text, eq, public_text = body.partition("=")
    if not eq:
        local_text, public_text = "*", body
    local_text, public_text = local_text.strip(), public_text.strip()
    local = _rule_local(local_text)
    port_text: str | None = None
    if public_text.startswith("["):
        close = public_text.find("]")
        if close < 0:
            raise syntax
        host, rest = public_text[1:close], public_text[close + 1 :]
        if rest:
            if not rest.startswith(":"):
                raise syntax
            port_text = rest[1:]
    elif public_text.count(":") > 1:
        host = public_text  # a bare IPv6 address, no port
    else:
        host, colon, port_text_ = public_text.partition(":")
        port_text = port_text_ if colon else None
    public = _rule_public(host.strip())
    port = port_max = None
    if port_text is not None:
        first, dash, last = port_text.partition("-")
        port = _port_text(first)
        if dash:
            port_max = _port_text(last)
            if port_max < port:
                raise _Invalid(f"port range {port_text!r} is reversed")
    return _RuleParts(local, public, port, port_max, mode)


def _rule_local(text: str) -> IPAddress | None:
    if text.lower() in ("*", "all"):
        return None
    try:
        return _ip(text)
    except _Invalid:
        raise _Invalid(f"local {text!r} is not an IP address, '*' or 'all'") from None


def _rule_public(text: str) -> IPAddress | None:
    if text.lower() == "auto":
        return None
    try:
        return _ip(text)
    except _Invalid:
        raise _Invalid(f"public {text!r} is not an IP address or 'auto'") from None


def _finish_rule(parts: _RuleParts, media: MediaConfig) -> AnnounceRule:
    """Resolve ports against the media mode and check the rule as a whole."""
    if (
        parts.local is not None
        and parts.public is not None
        and parts.local.version != parts.public.version
    ):
        raise _Invalid(
            f"local {parts.local} and public {parts.public} are not the same address family"
        )
    public_port = public_port_min = None
    if media.mode is MediaMode.SINGLE_PORT:
        if parts.port_max is not None:
            raise _Invalid(
                f"public port range {parts.port}-{parts.port_max} needs media mode 'port-range'"
            )
        public_port = parts.port
    elif parts.port is not None:
        public_port_min = parts.port
        last = parts.port + media.port_count - 1
        if parts.port_max is not None and parts.port_max != last:
            raise _Invalid(
                f"public ports {parts.port}-{parts.port_max} are not as many as the media "
                f"ports {media.port_min}-{media.port_max} ({media.port_count})"
            )
        if last > 65535:
            raise _Invalid(f"public ports {parts.port}-{last} go past 65535")
    return AnnounceRule(parts.local, parts.public, public_port, public_port_min, parts.mode)


def parse_announce_rule(text: str, media: MediaConfig | None = None) -> AnnounceRule:
    """Parse one rule of the ``[local=]public[:port][/append]`` mini-syntax.

    ``:PORT`` is the published port in single-port mode and the first published port in
    port-range mode (``:MIN-MAX`` spells the range out). Raises ValueError.
    """
    try:
        return _finish_rule(_parse_rule_text(text), media or MediaConfig())
    except _Invalid as e:
        raise ValueError("; ".join(e.messages)) from None


def _get(table: _Table, key: str, conv: Callable[[_Raw], T], errors: list[str]) -> T | None:
    """Convert one key of a table; log a problem and return None when it is invalid."""
    raw = table.keys.get(key)
    if raw is None:
        return None
    try:
        return conv(raw)
    except _Invalid as e:
        errors.extend(f"{raw.origin}: {m}" for m in e.messages)
        return None


def _table_rule(table: _Table, media: MediaConfig, errors: list[str]) -> AnnounceRule | None:
    """Build a rule from an [[announce]] table, or log its problems and return None."""
    n = len(errors)
    local = _get(table, "local", lambda r: _rule_local(_string(r)), errors)
    public = _get(table, "public", lambda r: _rule_public(_string(r)), errors)
    mode = _get(table, "mode", _enum(AnnounceMode), errors) or AnnounceMode.REPLACE
    single = _get(table, "public_port", _port, errors)
    first = _get(table, "public_port_min", _port, errors)
    if "public" not in table.keys:
        errors.append(f"{table.origin}: missing public (an IP address or 'auto')")
    range_mode = media.mode is MediaMode.PORT_RANGE
    if single is not None and range_mode:
        errors.append(
            f"{table.keys['public_port'].origin}: applies to single-port mode; "
            "use public_port_min in port-range mode"
        )
    if first is not None and not range_mode:
        errors.append(
            f"{table.keys['public_port_min'].origin}: applies to port-range mode; "
            "use public_port in single-port mode"
        )
    if len(errors) > n:
        return None
    parts = _RuleParts(local, public, first if range_mode else single, None, mode)
    try:
        return _finish_rule(parts, media)
    except _Invalid as e:
        errors.extend(f"{table.origin}: {m}" for m in e.messages)
        return None


def _turn_url(text: str) -> tuple[str, str, int, TurnTransport, bool]:
    """Parse turn:host[:port][?transport=udp|tcp] / turns:...; returns the normalised parts."""
    m = re.fullmatch(r"(?i)(turns?):([^?]+)(?:\?transport=(\w+))?", text.strip())
    if m is None:
        raise _Invalid(f"{text!r} is not a TURN URL (like turn:192.0.2.1:3478?transport=udp)")
    secure = m[1].lower() == "turns"
    hp = _split_host_port(m[2], TURNS_PORT if secure else STUN_PORT, "turn:192.0.2.1:3478")
    transport_text = (m[3] or ("tcp" if secure else "udp")).lower()
    try:
        transport = TurnTransport(transport_text)
    except ValueError:
        raise _Invalid(f"{text!r}: transport {m[3]!r} is not udp or tcp") from None
    if secure and transport is TurnTransport.UDP:
        raise _Invalid(f"{text!r}: turns: over UDP (DTLS) is not supported; use transport=tcp")
    url = f"{m[1].lower()}:{hp}?transport={transport.value}"
    return url, hp.host, hp.port, transport, secure


def _turn_server(table: _Table, errors: list[str]) -> TurnServer | None:
    """Build a TURN server, or log its problems and return None."""
    n = len(errors)
    parts = _get(table, "url", lambda r: _turn_url(_string(r)), errors)
    username = _get(table, "username", _string, errors)
    password = _get(table, "password", _string, errors)
    secret = _get(table, "shared_secret", _string, errors)
    ttl = _get(table, "ttl", _int_range(60, 365 * 86400), errors)
    keys = table.keys
    if "password" in keys and "shared_secret" in keys:
        errors.append(
            f"{table.origin}: give username + password or shared_secret, not both "
            f"(password from {keys['password'].origin}, "
            f"shared_secret from {keys['shared_secret'].origin})"
        )
    elif "password" not in keys and "shared_secret" not in keys:
        errors.append(f"{table.origin}: needs credentials: username + password, or shared_secret")
    elif "password" in keys and not username:
        errors.append(f"{table.origin}: a password needs a username")
    if parts is None or len(errors) > n:
        return None
    url, host, port, transport, secure = parts
    return TurnServer(url, host, port, transport, secure, username, password, secret, ttl or 86400)


# --------------------------------------------------------------------------------------------
# Building the Config
# --------------------------------------------------------------------------------------------


class _Builder:
    def __init__(self, values: Mapping[str, _Raw], errors: list[str]) -> None:
        self.values = values
        self.errors = errors
        self.bad: set[str] = set()
        self.defaults = config_defaults()

    def get(self, name: str) -> Any:
        spec = _SPEC_BY_NAME[name]
        raw = self.values.get(name)
        if raw is not None:
            try:
                return spec.conv(raw)
            except _Invalid as e:
                self.errors.extend(f"{raw.origin}: {m}" for m in e.messages)
                self.bad.add(name)
        if spec.section:
            return getattr(getattr(self.defaults, spec.section), spec.key)
        return getattr(self.defaults, spec.key)

    def given(self, name: str) -> bool:
        return name in self.values

    def origin(self, name: str) -> str:
        return self.values[name].origin

    def http(self) -> HttpConfig:
        listen = self.get("http.listen")
        cert = self.get("http.tls_cert")
        key = self.get("http.tls_key")
        if not listen and "http.listen" not in self.bad:
            self.errors.append(f"{self.origin('http.listen')}: needs at least one address")
        if not self.bad & {"http.tls_cert", "http.tls_key"}:
            if cert is not None and key is None:
                self.errors.append(f"{self.origin('http.tls_cert')}: needs tls_key too")
            elif key is not None and cert is None:
                self.errors.append(f"{self.origin('http.tls_key')}: needs tls_cert too")
            elif cert is not None and key is not None:
                self._check_tls_pair(cert, key)
        return HttpConfig(tuple(listen), cert, key, self.get("http.static_dir"))

    def _check_tls_pair(self, cert: Path, key: Path) -> None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        try:
            context.load_cert_chain(cert, key)
        except (ssl.SSLError, OSError) as e:
            reason = getattr(e, "reason", None) or str(e)
            self.errors.append(
                f"{self.origin('http.tls_cert')} + {self.origin('http.tls_key')}: "
                f"cannot load the certificate and key ({reason})"
            )

    def media(self) -> MediaConfig:
        listen = self.get("media.listen")
        if self.given("media.mode"):
            mode = self.get("media.mode")
        elif (self.given("media.port_min") or self.given("media.port_max")) and not self.given(
            "media.port"
        ):
            mode = MediaMode.PORT_RANGE
        else:
            mode = MediaMode.SINGLE_PORT
        port, port_min, port_max = (
            self.get("media.port"),
            self.get("media.port_min"),
            self.get("media.port_max"),
        )
        if not listen and "media.listen" not in self.bad:
            self.errors.append(f"{self.origin('media.listen')}: needs at least one address")
        if mode is MediaMode.PORT_RANGE and port_min > port_max:
            where = self.origin("media.port_min") if self.given("media.port_min") else ""
            where = where or self.origin("media.port_max")
            self.errors.append(f"{where}: port_min {port_min} is above port_max {port_max}")
        return MediaConfig(
            listen=tuple(listen),
            mode=mode,
            port=port,
            port_min=port_min,
            port_max=port_max,
            interfaces=self.get("media.interfaces"),
            ignore_interfaces=self.get("media.ignore_interfaces"),
            cidrs=self.get("media.cidrs"),
            include_loopback=self.get("media.include_loopback"),
        )

    def announce(
        self, rules: Sequence[_Raw | _Table], media: MediaConfig
    ) -> tuple[AnnounceRule, ...]:
        out: list[AnnounceRule | None] = []
        for rule in rules:
            if isinstance(rule, _Table):
                out.append(_table_rule(rule, media, self.errors))
                continue
            try:
                out.append(_finish_rule(_parse_rule_text(str(rule.value)), media))
            except _Invalid as e:
                self.errors.extend(f"{rule.origin}: {m}" for m in e.messages)
        return tuple(r for r in out if r is not None)

    def ice(self, turn: Sequence[_Table]) -> IceConfig:
        servers = [_turn_server(t, self.errors) for t in turn]
        return IceConfig(
            stun_servers=self.get("ice.stun_servers"),
            turn=tuple(s for s in servers if s is not None),
            early_checks=self.get("ice.early_checks"),
            withhold_timeout_ms=self.get("ice.withhold_timeout_ms"),
            consent_timeout=self.get("ice.consent_timeout"),
            failure_timeout=self.get("ice.failure_timeout"),
        )


def _check_overridden(
    layers: Sequence[_Layer],
    values: Mapping[str, _Raw],
    announce: Sequence[_Raw | _Table],
    turn: Sequence[_Table],
    media: MediaConfig,
    errors: list[str],
) -> None:
    """Report bad values that a later source overrode: they are still mistakes."""
    for layer in layers:
        for name, raw in layer.values.items():
            if values[name] is not raw:
                try:
                    _SPEC_BY_NAME[name].conv(raw)
                except _Invalid as e:
                    errors.extend(f"{raw.origin}: {m}" for m in e.messages)
        if layer.announce is not None and layer.announce is not announce:
            _Builder({}, errors).announce(layer.announce, media)
        effective_urls = [t.keys["url"] for t in turn]
        for table in layer.turn or ():
            if not any(table.keys["url"] is url for url in effective_urls):
                _get(table, "url", lambda r: _turn_url(_string(r)), errors)


def config_defaults() -> Config:
    """The configuration with nothing given."""
    return Config()


def _as_mapping(args: argparse.Namespace | Mapping[str, Any] | None) -> Mapping[str, Any]:
    if args is None:
        return {}
    if isinstance(args, argparse.Namespace):
        return vars(args)
    return args


def load_config(
    args: argparse.Namespace | Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    file: str | os.PathLike[str] | None = None,
) -> Config:
    """Merge defaults < TOML file < environment < flags and validate; raise ConfigError.

    ``args`` is the argparse namespace of :func:`add_config_arguments` or a mapping of the same
    dest names (``media_port``, ``announce``...), None meaning "not given". ``environ``
    defaults to ``os.environ``. The file is ``file``, else ``args.config``, else
    ``$SFU_CONFIG``, else none.
    """
    flags = _as_mapping(args)
    env = os.environ if environ is None else environ
    errors: list[str] = []
    layers: list[_Layer] = []
    path_text = file if file is not None else flags.get("config") or env.get(ENV_CONFIG) or None
    config_file: Path | None = None
    if path_text is not None:
        display = os.fspath(path_text)
        config_file = Path(display).expanduser().absolute()
        layers.append(_file_layer(config_file, display, errors))
    layers.append(_env_layer(env, errors))
    layers.append(_flag_layer(flags, errors))

    values: dict[str, _Raw] = {}
    announce: list[_Raw | _Table] = []
    turn: list[_Table] = []
    for layer in layers:
        values.update(layer.values)
        if layer.announce is not None:
            announce = layer.announce
        if layer.turn is not None:
            turn = [_Table(t.origin, dict(t.keys)) for t in layer.turn]
        if layer.turn_creds:
            if not turn:
                origins = ", ".join(r.origin for r in layer.turn_creds.values())
                errors.append(f"{origins}: no TURN server is configured")
            for server in turn:
                if "password" in layer.turn_creds:
                    server.keys.pop("shared_secret", None)
                if "shared_secret" in layer.turn_creds:
                    server.keys.pop("password", None)
                server.keys.update(layer.turn_creds)

    build = _Builder(values, errors)
    http = build.http()
    media = build.media()
    rules = build.announce(announce, media)
    ice = build.ice(turn)
    if any(r.auto for r in rules) and not ice.stun_servers and "ice.stun_servers" not in build.bad:
        errors.append(
            "announce: public 'auto' needs a STUN server ([ice] stun_servers, "
            "SFU_ICE_STUN_SERVERS or --stun)"
        )
    _check_overridden(layers, values, announce, turn, media, errors)
    streaming = StreamingConfig(
        build.get("streaming.admin_key"),
        build.get("streaming.db_path"),
        build.get("streaming.rtp_port_min"),
        build.get("streaming.rtp_port_max"),
    )
    if streaming.rtp_port_min > streaming.rtp_port_max:
        errors.append(
            f"streaming: rtp_port_min {streaming.rtp_port_min} is above rtp_port_max "
            f"{streaming.rtp_port_max}"
        )
    rooms = RoomsConfig(build.get("rooms.token_secret"), build.get("rooms.auto_create"))
    if rooms.token_secret is not None and len(rooms.token_secret.encode()) < 32:
        errors.append("rooms: token_secret must be at least 32 bytes (RFC 7518 3.2, HS256)")
    config = Config(
        http=http,
        media=media,
        announce=rules,
        announce_private=build.get("announce_private"),
        ice=ice,
        log=LogConfig(build.get("log.level"), build.get("log.format")),
        limits=LimitsConfig(
            build.get("limits.max_sessions"), build.get("limits.max_ws_message_bytes")
        ),
        streaming=streaming,
        rooms=rooms,
        config_file=config_file,
    )
    if errors:
        raise ConfigError(errors)
    return config


# --------------------------------------------------------------------------------------------
# Printing the effective configuration
# --------------------------------------------------------------------------------------------


def _plain(value: object) -> Any:
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, HostPort | ipaddress.IPv4Address | ipaddress.IPv6Address):
        return str(value)
    if isinstance(value, ipaddress.IPv4Network | ipaddress.IPv6Network):
        return str(value)
    return value


def config_to_dict(config: Config, *, redact: bool = True) -> dict[str, Any]:
    """The configuration as file keys (what a TOML file would say); unset values omitted."""
    out: dict[str, Any] = {"announce_private": config.announce_private}
    for name in ("http", "media"):
        section = getattr(config, name)
        out[name] = {
            f.name: _plain(getattr(section, f.name))
            for f in fields(section)
            if getattr(section, f.name) is not None
        }
    out["announce"] = [_rule_dict(r) for r in config.announce]
    ice = config.ice
    out["ice"] = {
        "stun_servers": [str(s) for s in ice.stun_servers],
        "early_checks": ice.early_checks,
        "withhold_timeout_ms": ice.withhold_timeout_ms,
        "consent_timeout": ice.consent_timeout,
        "failure_timeout": ice.failure_timeout,
        "turn": [_turn_dict(t, redact) for t in ice.turn],
    }
    out["log"] = {"level": config.log.level.value, "format": config.log.format.value}
    out["limits"] = {
        "max_sessions": config.limits.max_sessions or 0,
        "max_ws_message_bytes": config.limits.max_ws_message_bytes,
    }
    for name in ("streaming", "rooms"):
        section = getattr(config, name)
        out[name] = {
            f.name: (
                REDACTED
                if redact and f"{name}.{f.name}" in SECRET_KEYS
                else getattr(section, f.name)
            )
            for f in fields(section)
            if getattr(section, f.name) is not None
        }
    return out


def _rule_dict(rule: AnnounceRule) -> dict[str, Any]:
    d: dict[str, Any] = {
        "local": "*" if rule.local is None else str(rule.local),
        "public": "auto" if rule.public is None else str(rule.public),
    }
    if rule.public_port is not None:
        d["public_port"] = rule.public_port
    if rule.public_port_min is not None:
        d["public_port_min"] = rule.public_port_min
    d["mode"] = rule.mode.value
    return d


def _turn_dict(server: TurnServer, redact: bool) -> dict[str, Any]:
    d: dict[str, Any] = {"url": server.url}
    if server.username is not None:
        d["username"] = server.username
    if server.password is not None:
        d["password"] = REDACTED if redact else server.password
    if server.shared_secret is not None:
        d["shared_secret"] = REDACTED if redact else server.shared_secret
        d["ttl"] = server.ttl
    return d


def config_to_json(config: Config, *, redact: bool = True) -> str:
    """The configuration as indented JSON."""
    return json.dumps(config_to_dict(config, redact=redact), indent=2)


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(str(value))  # a TOML basic string: JSON's escapes are valid TOML


def _toml_table(header: str, table: Mapping[str, Any]) -> Iterator[str]:
    yield ""
    yield header
    for key, value in table.items():
        if not isinstance(value, list) or not value or not isinstance(value[0], dict):
            yield f"{key} = {_toml_value(value)}"


def config_to_toml(config: Config, *, redact: bool = True) -> str:
    """The configuration as a TOML file that :func:`load_config` reads back."""
    d = config_to_dict(config, redact=redact)
    lines = [f"announce_private = {_toml_value(d['announce_private'])}"]
    lines += _toml_table("[http]", d["http"])
    lines += _toml_table("[media]", d["media"])
    for rule in d["announce"]:
        lines += _toml_table("[[announce]]", rule)
    lines += _toml_table("[ice]", d["ice"])
    for server in d["ice"]["turn"]:
        lines += _toml_table("[[ice.turn]]", server)
    lines += _toml_table("[log]", d["log"])
    lines += _toml_table("[limits]", d["limits"])
    lines += _toml_table("[streaming]", d["streaming"])
    lines += _toml_table("[rooms]", d["rooms"])
    return "\n".join(lines) + "\n"
