"""Configuration: defaults, precedence, validation messages, announce rules, TLS checks."""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import ipaddress
import json
import tomllib
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from sfu.config import (
    AnnounceMode,
    AnnounceRule,
    Config,
    ConfigError,
    HostPort,
    LogFormat,
    LogLevel,
    MediaConfig,
    MediaMode,
    TurnServer,
    TurnTransport,
    config_to_dict,
    config_to_json,
    config_to_toml,
    env_names,
    flag_names,
    is_private_address,
    load_config,
    parse_announce_rule,
)

ROOT = Path(__file__).resolve().parent.parent
ip = ipaddress.ip_address


def write(tmp_path: Path, text: str, name: str = "config.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def problems(**kwargs: object) -> list[str]:
    """The problems load_config reports (it must report some)."""
    kwargs.setdefault("environ", {})
    with pytest.raises(ConfigError) as info:
        load_config(**kwargs)  # type: ignore[arg-type]
    assert str(info.value) == "\n".join(info.value.problems)
    return list(info.value.problems)


def one_problem(**kwargs: object) -> str:
    found = problems(**kwargs)
    assert len(found) == 1, found
    return found[0]


# ---------------------------------------------------------------------------- defaults


def test_defaults_need_no_file() -> None:
    config = load_config({}, {})
    assert config == Config()
    assert config.config_file is None
    assert config.http.listen == (HostPort("0.0.0.0", 8080),)
    assert not config.http.tls
    media = config.media
    assert media.mode is MediaMode.SINGLE_PORT
    assert media.port == 40000
    assert media.port_count == 1
    assert media.listen == (ip("0.0.0.0"), ip("::"))
    assert media.include_loopback is False
    assert config.announce == ()
    assert config.announce_private is True
    assert config.ice.stun_servers == ()
    assert config.ice.turn == ()
    assert config.ice.early_checks is True
    assert config.ice.withhold_timeout_ms == 300
    assert config.ice.consent_timeout == 30.0
    assert config.ice.failure_timeout == 10.0
    assert config.log.level is LogLevel.INFO
    assert config.log.format is LogFormat.TEXT
    assert config.limits.max_sessions is None
    assert config.limits.max_ws_message_bytes == 256 * 1024


def test_example_file_is_valid_and_matches_the_defaults() -> None:
    config = load_config({}, {}, ROOT / "sfu.example.toml")
    assert config == Config()


def test_unrelated_sfu_variables_are_ignored() -> None:
    assert load_config({}, {"SFU_TEST_SCRATCH": "x", "HOME": "/root"}) == Config()


# ---------------------------------------------------------------------------- precedence


def test_file_then_env_then_flags(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        [media]
        port = 40001
        include_loopback = true
        [log]
        level = "debug"
        format = "json"
        [http]
        listen = ["127.0.0.1:9000"]
        """,
    )
    only_file = load_config({}, {}, path)
    assert only_file.media.port == 40001
    assert only_file.media.include_loopback
    assert only_file.log.level is LogLevel.DEBUG
    assert only_file.config_file == path

    env = {"SFU_MEDIA_PORT": "40002", "SFU_LOG_LEVEL": "WARNING"}
    with_env = load_config({}, env, path)
    assert with_env.media.port == 40002
    assert with_env.log.level is LogLevel.WARNING
    assert with_env.log.format is LogFormat.JSON  # untouched keys stay from the file

    flags = {"media_port": "40003", "http_listen": ["[::1]:9001", "127.0.0.1:9002"]}
    with_flags = load_config(flags, env, path)
    assert with_flags.media.port == 40003
    assert with_flags.log.level is LogLevel.WARNING
    assert with_flags.http.listen == (HostPort("::1", 9001), HostPort("127.0.0.1", 9002))
    assert with_flags.media.include_loopback  # from the file still


def test_boolean_flags_override_env(tmp_path: Path) -> None:
    env = {"SFU_ICE_EARLY_CHECKS": "yes", "SFU_MEDIA_INCLUDE_LOOPBACK": "on"}
    config = load_config({"early_checks": False}, env)
    assert config.ice.early_checks is False
    assert config.media.include_loopback is True


def test_file_is_found_from_flag_then_env(tmp_path: Path) -> None:
    a = write(tmp_path, "[media]\nport = 41000\n", "a.toml")
    b = write(tmp_path, "[media]\nport = 42000\n", "b.toml")
    assert load_config({}, {"SFU_CONFIG": str(a)}).media.port == 41000
    assert load_config({"config": str(b)}, {"SFU_CONFIG": str(a)}).media.port == 42000
    assert load_config({"config": str(b)}, {}, a).media.port == 41000


def test_env_lists_are_comma_separated_and_empty_means_empty(tmp_path: Path) -> None:
    path = write(tmp_path, '[ice]\nstun_servers = ["stun:192.0.2.1"]\n')
    env = {"SFU_MEDIA_LISTEN": "127.0.0.1, ::1", "SFU_ICE_STUN_SERVERS": ""}
    config = load_config({}, env, path)
    assert config.media.listen == (ip("127.0.0.1"), ip("::1"))
    assert config.ice.stun_servers == ()


def test_empty_env_scalar_means_not_set(tmp_path: Path) -> None:
    path = write(tmp_path, "[media]\nport = 41000\n")
    assert load_config({}, {"SFU_MEDIA_PORT": "", "SFU_LOG_LEVEL": " "}, path).media.port == 41000


def test_repeated_flags_and_commas_combine() -> None:
    config = load_config({"stun": ["192.0.2.1,stun:192.0.2.2:3479", "[2001:db8::1]"]}, {})
    assert config.ice.stun_servers == (
        HostPort("192.0.2.1", 3478),
        HostPort("192.0.2.2", 3479),
        HostPort("2001:db8::1", 3478),
    )


def test_later_announce_rules_replace_earlier_ones(tmp_path: Path) -> None:
    path = write(tmp_path, '[[announce]]\nlocal = "10.0.0.2"\npublic = "203.0.113.9"\n')
    assert load_config({}, {}, path).announce == (AnnounceRule(ip("10.0.0.2"), ip("203.0.113.9")),)
    env = {"SFU_ANNOUNCE": "172.17.0.2=203.0.113.5:40000,*=198.51.100.1/append"}
    from_env = load_config({}, env, path).announce
    assert from_env == (
        AnnounceRule(ip("172.17.0.2"), ip("203.0.113.5"), public_port=40000),
        AnnounceRule(None, ip("198.51.100.1"), mode=AnnounceMode.APPEND),
    )
    from_flags = load_config({"announce": ["203.0.113.7"]}, env, path).announce
    assert from_flags == (AnnounceRule(None, ip("203.0.113.7")),)
    assert load_config({}, {"SFU_ANNOUNCE": ""}, path).announce == ()


# ---------------------------------------------------------------------------- media modes


def test_port_range_flag_selects_port_range_mode(tmp_path: Path) -> None:
    path = write(tmp_path, "[media]\nport = 41000\n")
    media = load_config({"media_port_range": "40000-40009"}, {}, path).media
    assert media.mode is MediaMode.PORT_RANGE
    assert (media.port_min, media.port_max, media.port_count) == (40000, 40009, 10)


def test_media_port_flag_selects_single_port_over_file_range(tmp_path: Path) -> None:
    path = write(tmp_path, '[media]\nmode = "port-range"\nport_min = 50000\nport_max = 50010\n')
    assert load_config({}, {}, path).media.mode is MediaMode.PORT_RANGE
    media = load_config({"media_port": "40005"}, {}, path).media
    assert media.mode is MediaMode.SINGLE_PORT
    assert media.port == 40005


def test_range_keys_alone_imply_port_range(tmp_path: Path) -> None:
    media = load_config({}, {"SFU_MEDIA_PORT_MIN": "41000", "SFU_MEDIA_PORT_MAX": "41001"}).media
    assert media.mode is MediaMode.PORT_RANGE
    assert media.port_count == 2


def test_media_filters() -> None:
    media = load_config(
        {
            "interface": ["eth*", "ens3"],
            "ignore_interface": ["eth9"],
            "cidr": ["10.0.0.0/8", "fd00::/8"],
            "include_loopback": True,
        },
        {},
    ).media
    assert media.interface_allowed("eth0")
    assert media.interface_allowed("ens3")
    assert not media.interface_allowed("eth9")
    assert not media.interface_allowed("docker0")
    assert media.address_allowed(ip("10.1.2.3"))
    assert media.address_allowed(ip("fd00::5"))
    assert not media.address_allowed(ip("192.168.1.1"))
    assert not media.address_allowed(ip("127.0.0.1"))  # loopback allowed, but not in cidrs
    assert MediaConfig(include_loopback=True).address_allowed(ip("127.0.0.1"))
    assert not MediaConfig().address_allowed(ip("::1"))
    assert MediaConfig().interface_allowed("anything")


def test_private_addresses() -> None:
    for text in ("10.1.1.1", "172.17.0.2", "192.168.0.1", "100.64.0.1", "127.0.0.1", "fd00::1"):
        assert is_private_address(ip(text)), text
    for text in ("203.0.113.5", "198.51.100.1", "8.8.8.8", "2001:db8::1", "172.32.0.1"):
        assert not is_private_address(ip(text)), text


# ---------------------------------------------------------------------------- validation


def test_file_value_errors_name_file_section_and_key(tmp_path: Path) -> None:
    path = write(tmp_path, "[media]\nport = 70000\n")
    assert one_problem(file=path) == f"{path} [media] port: 70000 is not a port (1-65535)"


def test_display_name_is_the_path_as_given(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    write(tmp_path, "[media]\nport = 70000\n")
    assert one_problem(file="config.toml") == (
        "config.toml [media] port: 70000 is not a port (1-65535)"
    )


def test_env_value_errors_name_the_variable() -> None:
    assert (
        one_problem(environ={"SFU_MEDIA_PORT": "abc"}) == "SFU_MEDIA_PORT: 'abc' is not an integer"
    )


def test_flag_value_errors_name_the_flag() -> None:
    assert one_problem(args={"media_port": "0"}) == "--media-port: 0 is not a port (1-65535)"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"SFU_MEDIA_PORT": "4e4"}, "SFU_MEDIA_PORT: '4e4' is not an integer"),
        ({"SFU_MEDIA_PORT": "65536"}, "SFU_MEDIA_PORT: 65536 is not a port (1-65535)"),
        (
            {"SFU_ICE_WITHHOLD_TIMEOUT_MS": "-1"},
            "SFU_ICE_WITHHOLD_TIMEOUT_MS: -1 is out of range (0-10000)",
        ),
        (
            {"SFU_LIMITS_MAX_WS_MESSAGE_BYTES": "10"},
            "SFU_LIMITS_MAX_WS_MESSAGE_BYTES: 10 is out of range (1024-67108864)",
        ),
        ({"SFU_ICE_CONSENT_TIMEOUT": "soon"}, "SFU_ICE_CONSENT_TIMEOUT: 'soon' is not a number"),
        ({"SFU_ICE_FAILURE_TIMEOUT": "0"}, "SFU_ICE_FAILURE_TIMEOUT: '0' is not a positive number"),
        (
            {"SFU_ICE_FAILURE_TIMEOUT": "inf"},
            "SFU_ICE_FAILURE_TIMEOUT: 'inf' is not a positive number",
        ),
        (
            {"SFU_ICE_EARLY_CHECKS": "maybe"},
            "SFU_ICE_EARLY_CHECKS: 'maybe' is not a boolean (true or false)",
        ),
        (
            {"SFU_LOG_LEVEL": "loud"},
            "SFU_LOG_LEVEL: 'loud' is not one of 'debug', 'info', 'warning', 'error'",
        ),
        ({"SFU_LOG_FORMAT": "xml"}, "SFU_LOG_FORMAT: 'xml' is not one of 'text', 'json'"),
        (
            {"SFU_MEDIA_MODE": "many"},
            "SFU_MEDIA_MODE: 'many' is not one of 'single-port', 'port-range'",
        ),
        ({"SFU_MEDIA_LISTEN": "0.0.0.0,eth0"}, "SFU_MEDIA_LISTEN: 'eth0' is not an IP address"),
        (
            {"SFU_MEDIA_CIDRS": "10.0.0.0/33"},
            "SFU_MEDIA_CIDRS: '10.0.0.0/33' is not a network (like 10.0.0.0/8 or fd00::/8)",
        ),
        (
            {"SFU_MEDIA_INTERFACES": "eth 0"},
            "SFU_MEDIA_INTERFACES: 'eth 0' is not an interface name or pattern",
        ),
        (
            {"SFU_HTTP_LISTEN": "0.0.0.0"},
            "SFU_HTTP_LISTEN: '0.0.0.0' is not host:port (like 0.0.0.0:8080 or [::]:8080)",
        ),
        (
            {"SFU_HTTP_LISTEN": "::1:8080"},
            "SFU_HTTP_LISTEN: '::1:8080': write IPv6 addresses in brackets, like 0.0.0.0:8080 "
            "or [::]:8080",
        ),
        (
            {"SFU_HTTP_LISTEN": "[::]8080"},
            "SFU_HTTP_LISTEN: '[::]8080' is not host:port (like 0.0.0.0:8080 or [::]:8080)",
        ),
        (
            {"SFU_HTTP_LISTEN": "0.0.0.0:http"},
            "SFU_HTTP_LISTEN: '0.0.0.0:http': port 'http' is not a port (1-65535)",
        ),
        (
            {"SFU_HTTP_LISTEN": "bad_host:80"},
            "SFU_HTTP_LISTEN: 'bad_host:80': 'bad_host' is not an IP address or host name",
        ),
        (
            {"SFU_ICE_STUN_SERVERS": "stuns:192.0.2.1"},
            "SFU_ICE_STUN_SERVERS: 'stuns:192.0.2.1': stuns: (STUN over TLS) is not supported",
        ),
        (
            {"SFU_ICE_STUN_SERVERS": "stun://192.0.2.1"},
            "SFU_ICE_STUN_SERVERS: 'stun://192.0.2.1' is not a STUN server "
            "(like stun:192.0.2.1:3478)",
        ),
        ({"SFU_HTTP_LISTEN": ""}, "SFU_HTTP_LISTEN: needs at least one address"),
        ({"SFU_MEDIA_LISTEN": ""}, "SFU_MEDIA_LISTEN: needs at least one address"),
        (
            {"SFU_MEDIA_PORT_MIN": "41000", "SFU_MEDIA_PORT_MAX": "40000"},
            "SFU_MEDIA_PORT_MIN: port_min 41000 is above port_max 40000",
        ),
        ({"SFU_MEDIA_PROT": "1"}, "SFU_MEDIA_PROT: unknown setting; did you mean SFU_MEDIA_PORT?"),
        ({"SFU_LOG_LEVLE": "debug"}, "SFU_LOG_LEVLE: unknown setting; did you mean SFU_LOG_LEVEL?"),
        (
            {"SFU_ANNOUNCE_PRIVAT": "0"},
            "SFU_ANNOUNCE_PRIVAT: unknown setting; did you mean SFU_ANNOUNCE_PRIVATE?",
        ),
        ({"SFU_ICE_ZZZZZZZZ": "1"}, "SFU_ICE_ZZZZZZZZ: unknown setting"),
    ],
)
def test_env_validation(env: dict[str, str], message: str) -> None:
    assert one_problem(environ=env) == message


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ("[media]\nprot = 1\n", "[media] prot: unknown key; did you mean 'port'?"),
        ("[mediaa]\nport = 1\n", "[mediaa]: unknown section; did you mean [media]?"),
        ("[zzz]\n", "[zzz]: unknown section"),
        (
            "anounce_private = true\n",
            "anounce_private: unknown key; did you mean 'announce_private'?",
        ),
        ("media = 3\n", "media: must be a [media] table"),
        ("[media]\nport = true\n", "[media] port: True is not an integer"),
        ('[media]\nport = "40000"\n', "[media] port: '40000' is not an integer"),
        (
            '[media]\ninclude_loopback = "yes"\n',
            "[media] include_loopback: 'yes' is not a boolean (true or false)",
        ),
        ("[media]\nlisten = 5\n", "[media] listen: 5 is not a list"),
        ("[media]\nlisten = [5]\n", "[media] listen: 5 is not a string"),
        ("[ice]\nconsent_timeout = -2.5\n", "[ice] consent_timeout: -2.5 is not a positive number"),
        ("[log]\nlevel = 3\n", "[log] level: 3 is not a string"),
        ('[announce]\npublic = "auto"\n', "announce: write announce rules as [[announce]] tables"),
        ('[ice.turn]\nurl = "turn:x"\n', "[ice] turn: write TURN servers as [[ice.turn]] tables"),
        ("[media\n", "invalid TOML: "),
    ],
)
def test_file_validation(tmp_path: Path, toml: str, message: str) -> None:
    path = write(tmp_path, toml)
    found = one_problem(file=path)
    assert found.startswith(
        f"{path} {message}" if not message.startswith("invalid") else f"{path}: {message}"
    ), found


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    assert one_problem(file=path) == (
        f"{path}: cannot read the configuration file: No such file or directory"
    )


def test_every_problem_is_listed_at_once(tmp_path: Path) -> None:
    path = write(tmp_path, '[media]\nport = 70000\nprot = 1\n[log]\nformat = "xml"\n')
    found = problems(
        file=path,
        environ={"SFU_LOG_LEVEL": "loud", "SFU_MEDIA_PORT": "abc"},
        args={"max_sessions": "-1", "announce": ["nonsense=1.2.3.4"]},
    )
    assert len(found) == 7, found
    text = "\n".join(found)
    for fragment in (
        "[media] port: 70000",  # overridden by the env, still reported
        "[media] prot: unknown key",
        "[log] format: 'xml'",
        "SFU_LOG_LEVEL: 'loud'",
        "SFU_MEDIA_PORT: 'abc'",
        "--max-sessions: -1 is out of range",
        "--announce 'nonsense=1.2.3.4': local 'nonsense'",
    ):
        assert fragment in text


def test_port_and_port_range_flags_conflict() -> None:
    assert one_problem(args={"media_port": "40000", "media_port_range": "40000-40010"}) == (
        "--media-port and --media-port-range: give only one of them"
    )


def test_port_range_flag_syntax() -> None:
    assert one_problem(args={"media_port_range": "40000"}) == (
        "--media-port-range: '40000' is not MIN-MAX (like 40000-40100)"
    )
    assert one_problem(args={"media_port_range": "40000-x"}) == (
        "--media-port-range: 'x' is not an integer"
    )


def test_static_dir_must_be_a_directory(tmp_path: Path) -> None:
    path = write(tmp_path, "", "file.txt")
    assert one_problem(args={"static_dir": str(path)}) == (
        f"--static-dir: {str(path)!r} is not a directory"
    )
    assert load_config({"static_dir": str(tmp_path)}, {}).http.static_dir == tmp_path


def test_relative_paths_in_the_file_are_relative_to_the_file(tmp_path: Path) -> None:
    (tmp_path / "web").mkdir()
    sub = tmp_path / "etc"
    sub.mkdir()
    path = write(sub, '[http]\nstatic_dir = "../web"\n')
    assert load_config({}, {}, path).http.static_dir == tmp_path / "web"


# ---------------------------------------------------------------------------- TLS


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """A self-signed certificate, its key, and an unrelated key."""
    directory = tmp_path_factory.mktemp("tls")
    key = ec.generate_private_key(ec.SECP256R1())
    other = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sfu.test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    fmt = serialization.PrivateFormat.PKCS8
    none = serialization.NoEncryption()
    (directory / "cert.pem").write_bytes(cert.public_bytes(pem))
    (directory / "key.pem").write_bytes(key.private_bytes(pem, fmt, none))
    (directory / "other.pem").write_bytes(other.private_bytes(pem, fmt, none))
    return directory / "cert.pem", directory / "key.pem", directory / "other.pem"


def test_tls_pair_loads(tls_files: tuple[Path, Path, Path]) -> None:
    cert, key, _ = tls_files
    http = load_config({"tls_cert": str(cert), "tls_key": str(key)}, {}).http
    assert http.tls
    assert (http.tls_cert, http.tls_key) == (cert, key)


def test_tls_needs_both(tls_files: tuple[Path, Path, Path]) -> None:
    cert, key, _ = tls_files
    assert one_problem(args={"tls_cert": str(cert)}) == "--tls-cert: needs tls_key too"
    assert one_problem(environ={"SFU_HTTP_TLS_KEY": str(key)}) == (
        "SFU_HTTP_TLS_KEY: needs tls_cert too"
    )


def test_tls_files_must_exist(tmp_path: Path, tls_files: tuple[Path, Path, Path]) -> None:
    cert, _, _ = tls_files
    missing = tmp_path / "missing.pem"
    assert one_problem(args={"tls_cert": str(cert), "tls_key": str(missing)}) == (
        f"--tls-key: {str(missing)!r} does not exist"
    )
    assert one_problem(args={"tls_cert": str(tmp_path), "tls_key": str(cert)}) == (
        f"--tls-cert: {str(tmp_path)!r} is not a file"
    )


def test_tls_key_must_match(tmp_path: Path, tls_files: tuple[Path, Path, Path]) -> None:
    cert, _, other = tls_files
    found = one_problem(args={"tls_cert": str(cert), "tls_key": str(other)})
    assert found.startswith("--tls-cert + --tls-key: cannot load the certificate and key (")
    junk = write(tmp_path, "not a pem file", "junk.pem")
    found = one_problem(args={"tls_cert": str(junk), "tls_key": str(other)})
    assert found.startswith("--tls-cert + --tls-key: cannot load the certificate and key (")


# ---------------------------------------------------------------------------- announce rules


@pytest.mark.parametrize(
    ("text", "rule"),
    [
        ("172.17.0.2=203.0.113.5", AnnounceRule(ip("172.17.0.2"), ip("203.0.113.5"))),
        (
            "172.17.0.2=203.0.113.5:40000",
            AnnounceRule(ip("172.17.0.2"), ip("203.0.113.5"), public_port=40000),
        ),
        ("*=auto", AnnounceRule(None, None)),
        ("all=auto:50000", AnnounceRule(None, None, public_port=50000)),
        ("203.0.113.5", AnnounceRule(None, ip("203.0.113.5"))),
        (" auto /append ", AnnounceRule(None, None, mode=AnnounceMode.APPEND)),
        (
            "10.0.0.2=198.51.100.7/APPEND",
            AnnounceRule(ip("10.0.0.2"), ip("198.51.100.7"), mode=AnnounceMode.APPEND),
        ),
        ("10.0.0.2=198.51.100.7/replace", AnnounceRule(ip("10.0.0.2"), ip("198.51.100.7"))),
        (
            "fd00::2=[2001:db8::5]:40000",
            AnnounceRule(ip("fd00::2"), ip("2001:db8::5"), public_port=40000),
        ),
        ("[fd00::2]=2001:db8::5", AnnounceRule(ip("fd00::2"), ip("2001:db8::5"))),
        ("*=[2001:db8::5]", AnnounceRule(None, ip("2001:db8::5"))),
    ],
)
def test_announce_mini_syntax(text: str, rule: AnnounceRule) -> None:
    assert parse_announce_rule(text) == rule
    assert parse_announce_rule(rule.to_text()) == rule


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "'' is not a rule local=public[:port][/append]"),
        ("eth0=1.2.3.4", "local 'eth0' is not an IP address, '*' or 'all'"),
        ("=1.2.3.4", "local '' is not an IP address, '*' or 'all'"),
        ("*=somewhere", "public 'somewhere' is not an IP address or 'auto'"),
        ("*=", "public '' is not an IP address or 'auto'"),
        ("*=1.2.3.4:0", "port '0' is not a port (1-65535)"),
        ("*=1.2.3.4:http", "port 'http' is not a port (1-65535)"),
        ("*=1.2.3.4/both", "mode 'both' is not 'replace' or 'append'"),
        ("*=[2001:db8::5", "'*=[2001:db8::5' is not a rule local=public[:port][/append]"),
        (
            "*=[2001:db8::5]40000",
            "'*=[2001:db8::5]40000' is not a rule local=public[:port][/append]",
        ),
        (
            "10.0.0.2=2001:db8::5",
            "local 10.0.0.2 and public 2001:db8::5 are not the same address family",
        ),
        ("*=1.2.3.4:50000-50100", "public port range 50000-50100 needs media mode 'port-range'"),
        ("*=1.2.3.4:50100-50000", "port range '50100-50000' is reversed"),
    ],
)
def test_announce_mini_syntax_errors(text: str, message: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_announce_rule(text)
    assert str(info.value) == message


def test_announce_ports_in_port_range_mode() -> None:
    media = MediaConfig(mode=MediaMode.PORT_RANGE, port_min=40000, port_max=40100)
    rule = parse_announce_rule("*=203.0.113.5:50000", media)
    assert rule.public_port_min == 50000
    assert rule.public_port is None
    assert rule.map_port(40000, media) == 50000
    assert rule.map_port(40042, media) == 50042
    assert parse_announce_rule("*=203.0.113.5:50000-50100", media) == rule
    assert rule.to_text(media) == "*=203.0.113.5:50000-50100"
    with pytest.raises(ValueError, match=r"are not as many as the media ports 40000-40100 \(101\)"):
        parse_announce_rule("*=203.0.113.5:50000-50099", media)
    with pytest.raises(ValueError, match="public ports 65500-65600 go past 65535"):
        parse_announce_rule("*=203.0.113.5:65500", media)
    assert parse_announce_rule("*=203.0.113.5", media).map_port(40007, media) == 40007


def test_announce_rule_matching_and_single_port_mapping() -> None:
    media = MediaConfig()
    rule = parse_announce_rule("*=203.0.113.5:50000")
    assert rule.map_port(40000, media) == 50000
    assert rule.matches(ip("172.17.0.2"))
    assert not rule.matches(ip("fd00::2"))  # "*" matches the public address's family only
    auto = parse_announce_rule("auto")
    assert auto.auto
    assert auto.matches(ip("fd00::2")) and auto.matches(ip("10.0.0.1"))
    assert auto.map_port(40000, media) == 40000
    exact = parse_announce_rule("172.17.0.2=203.0.113.5")
    assert exact.matches(ip("172.17.0.2"))
    assert not exact.matches(ip("172.17.0.3"))


def test_announce_tables(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        announce_private = false
        [[announce]]
        local = "172.17.0.2"
        public = "203.0.113.5"
        public_port = 50000
        [[announce]]
        public = "auto"
        mode = "append"
        [ice]
        stun_servers = ["192.0.2.1"]
        """,
    )
    config = load_config({}, {}, path)
    assert config.announce_private is False
    assert config.announce == (
        AnnounceRule(ip("172.17.0.2"), ip("203.0.113.5"), public_port=50000),
        AnnounceRule(None, None, mode=AnnounceMode.APPEND),
    )


def test_announce_table_in_port_range_mode(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        [media]
        mode = "port-range"
        port_min = 40000
        port_max = 40009
        [[announce]]
        public = "203.0.113.5"
        public_port_min = 50000
        """,
    )
    (rule,) = load_config({}, {}, path).announce
    assert rule.public_port_min == 50000


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        (
            '[[announce]]\nlocal = "10.0.0.1"\n',
            "[[announce]] #1: missing public (an IP address or 'auto')",
        ),
        (
            '[[announce]]\npublic = "x"\n',
            "[[announce]] #1 public: public 'x' is not an IP address or 'auto'",
        ),
        (
            '[[announce]]\npublic = "1.2.3.4"\nlocal = 5\n',
            "[[announce]] #1 local: 5 is not a string",
        ),
        (
            '[[announce]]\npublic = "1.2.3.4"\nmode = "add"\n',
            "[[announce]] #1 mode: 'add' is not one of 'replace', 'append'",
        ),
        (
            '[[announce]]\npublic = "1.2.3.4"\npublic_prot = 5\n',
            "[[announce]] #1 public_prot: unknown key; did you mean 'public_port'?",
        ),
        (
            '[[announce]]\npublic = "1.2.3.4"\nannounce_private = false\n',
            "[[announce]] #1 announce_private: put announce_private at the top of the file, "
            "before any [section]",
        ),
        (
            '[[announce]]\npublic = "1.2.3.4"\npublic_port_min = 50000\n',
            "[[announce]] #1 public_port_min: applies to port-range mode; "
            "use public_port in single-port mode",
        ),
        (
            '[media]\nmode = "port-range"\n[[announce]]\npublic = "1.2.3.4"\npublic_port = 5\n',
            "[[announce]] #1 public_port: applies to single-port mode; "
            "use public_port_min in port-range mode",
        ),
        (
            '[[announce]]\nlocal = "fd00::1"\npublic = "1.2.3.4"\n',
            "[[announce]] #1: local fd00::1 and public 1.2.3.4 are not the same address family",
        ),
        (
            '[[announce]]\npublic = "1.2.3.4"\npublic_port = 70000\n',
            "[[announce]] #1 public_port: 70000 is not a port (1-65535)",
        ),
    ],
)
def test_announce_table_errors(tmp_path: Path, toml: str, message: str) -> None:
    path = write(tmp_path, toml)
    assert one_problem(file=path) == f"{path} {message}"


def test_announce_errors_name_the_rule() -> None:
    assert one_problem(environ={"SFU_ANNOUNCE": "1.2.3.4=5.6.7.8, *=autoo"}) == (
        "SFU_ANNOUNCE rule 2 '*=autoo': public 'autoo' is not an IP address or 'auto'"
    )


def test_auto_needs_stun() -> None:
    assert one_problem(args={"announce": ["*=auto"]}) == (
        "announce: public 'auto' needs a STUN server ([ice] stun_servers, "
        "SFU_ICE_STUN_SERVERS or --stun)"
    )
    assert load_config({"announce": ["*=auto"], "stun": ["192.0.2.1"]}, {}).announce[0].auto


# ---------------------------------------------------------------------------- TURN


def test_turn_static_credentials(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        [[ice.turn]]
        url = "turn:192.0.2.1"
        username = "alice"
        password = "pw"
        [[ice.turn]]
        url = "TURNS:turn.example.org"
        username = "bob"
        password = "pw2"
        [[ice.turn]]
        url = "turn:[2001:db8::1]:3479?transport=tcp"
        username = "carol"
        password = "pw3"
        """,
    )
    a, b, c = load_config({}, {}, path).ice.turn
    assert a == TurnServer(
        "turn:192.0.2.1:3478?transport=udp", "192.0.2.1", 3478, TurnTransport.UDP, False,
        "alice", "pw",
    )  # fmt: skip
    assert a.credentials(now=1e9) == ("alice", "pw")
    assert (b.url, b.port, b.transport, b.secure) == (
        "turns:turn.example.org:5349?transport=tcp", 5349, TurnTransport.TCP, True,
    )  # fmt: skip
    assert (c.host, c.port, c.url) == ("2001:db8::1", 3479, "turn:[2001:db8::1]:3479?transport=tcp")


def test_turn_rest_credentials() -> None:
    config = load_config(
        {"turn": ["turn:192.0.2.1?transport=tcp"], "turn_secret": "S3CRET", "turn_ttl": "600"},
        {},
    )
    (server,) = config.ice.turn
    assert server.shared_secret == "S3CRET"
    assert server.ttl == 600
    username, password = server.credentials(now=1_700_000_000.7)
    assert username == "1700000600"
    expected = hmac.new(b"S3CRET", b"1700000600", hashlib.sha1).digest()
    assert password == base64.b64encode(expected).decode()
    named = load_config(
        {"turn": ["turn:192.0.2.1"], "turn_secret": "S3CRET", "turn_user": "sfu"}, {}
    )
    assert named.ice.turn[0].credentials(now=100)[0] == "86500:sfu"


def test_turn_credentials_from_env_apply_to_file_servers(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        [[ice.turn]]
        url = "turn:192.0.2.1"
        username = "u"
        password = "file-password"
        [[ice.turn]]
        url = "turn:192.0.2.1?transport=tcp"
        """,
    )
    # the second server has no credentials in the file: the environment supplies them
    config = load_config({}, {"SFU_ICE_TURN_SHARED_SECRET": "env-secret"}, path)
    for server in config.ice.turn:
        assert server.shared_secret == "env-secret"
        assert server.password is None
    flags = {"turn_pass": "flag-pw", "turn_user": "v"}
    again = load_config(flags, {"SFU_ICE_TURN_SHARED_SECRET": "env-secret"}, path)
    assert [(s.username, s.password, s.shared_secret) for s in again.ice.turn] == [
        ("v", "flag-pw", None),
        ("v", "flag-pw", None),
    ]


def test_turn_urls_from_env_replace_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, '[[ice.turn]]\nurl = "turn:192.0.2.1"\nshared_secret = "s"\n')
    env = {"SFU_ICE_TURN": "turn:192.0.2.9,turn:192.0.2.10", "SFU_ICE_TURN_PASSWORD": "p",
           "SFU_ICE_TURN_USERNAME": "u"}  # fmt: skip
    hosts = [s.host for s in load_config({}, env, path).ice.turn]
    assert hosts == ["192.0.2.9", "192.0.2.10"]


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (
            {"turn": ["turn:192.0.2.1"]},
            {},
            "--turn 'turn:192.0.2.1': needs credentials: username + password, or shared_secret",
        ),
        (
            {"turn": ["turn:192.0.2.1"], "turn_pass": "p"},
            {},
            "--turn 'turn:192.0.2.1': a password needs a username",
        ),
        (
            {"turn": ["http://x"], "turn_secret": "s"},
            {},
            "--turn: 'http://x' is not a TURN URL (like turn:192.0.2.1:3478?transport=udp)",
        ),
        (
            {"turn": ["turn:192.0.2.1?transport=sctp"], "turn_secret": "s"},
            {},
            "--turn: 'turn:192.0.2.1?transport=sctp': transport 'sctp' is not udp or tcp",
        ),
        (
            {"turn": ["turns:192.0.2.1?transport=udp"], "turn_secret": "s"},
            {},
            "--turn: 'turns:192.0.2.1?transport=udp': turns: over UDP (DTLS) is not "
            "supported; use transport=tcp",
        ),
        (
            {"turn": ["turn:192.0.2.1"], "turn_secret": "s", "turn_ttl": "5"},
            {},
            "--turn-ttl: 5 is out of range (60-31536000)",
        ),
        ({"turn_secret": "s"}, {}, "--turn-secret: no TURN server is configured"),
        ({}, {"SFU_ICE_TURN_PASSWORD": "p"}, "SFU_ICE_TURN_PASSWORD: no TURN server is configured"),
    ],
)
def test_turn_errors(args: dict[str, object], env: dict[str, str], message: str) -> None:
    assert one_problem(args=args, environ=env) == message


def test_turn_table_errors(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        [[ice.turn]]
        username = "u"
        [[ice.turn]]
        url = "turn:192.0.2.1"
        username = "u"
        password = "p"
        shared_secret = "s"
        realm = "r"
        """,
    )
    assert problems(file=path) == [
        f"{path} [[ice.turn]] #1: missing url",
        f"{path} [[ice.turn]] #2 realm: unknown key",
        f"{path} [[ice.turn]] #2: give username + password or shared_secret, not both "
        f"(password from {path} [[ice.turn]] #2 password, "
        f"shared_secret from {path} [[ice.turn]] #2 shared_secret)",
    ]


# ---------------------------------------------------------------------------- printing


def full_config(tmp_path: Path) -> Config:
    path = write(
        tmp_path,
        """
        announce_private = false
        [http]
        listen = ["127.0.0.1:9000", "[::1]:9000"]
        static_dir = "."
        [media]
        listen = ["127.0.0.1"]
        mode = "port-range"
        port_min = 41000
        port_max = 41009
        interfaces = ["eth*"]
        ignore_interfaces = ["docker0"]
        cidrs = ["10.0.0.0/8"]
        include_loopback = true
        [[announce]]
        local = "10.0.0.2"
        public = "203.0.113.5"
        public_port_min = 51000
        mode = "append"
        [ice]
        stun_servers = ["stun:192.0.2.1:3478"]
        early_checks = false
        withhold_timeout_ms = 0
        consent_timeout = 5
        failure_timeout = 2.5
        [[ice.turn]]
        url = "turn:192.0.2.1"
        username = "u"
        password = "p\\"w"
        [[ice.turn]]
        url = "turn:192.0.2.1?transport=tcp"
        shared_secret = "s"
        ttl = 600
        [log]
        level = "debug"
        format = "json"
        [limits]
        max_sessions = 10
        max_ws_message_bytes = 4096
        """,
    )
    return load_config({}, {}, path)


def test_toml_output_reads_back_the_same(tmp_path: Path) -> None:
    for config in (Config(), full_config(tmp_path)):
        text = config_to_toml(config, redact=False)
        again = load_config({}, {}, write(tmp_path, text, "again.toml"))
        assert again == config


def test_output_redacts_secrets(tmp_path: Path) -> None:
    config = full_config(tmp_path)
    turn = tomllib.loads(config_to_toml(config))["ice"]["turn"]
    assert turn[0]["password"] == "<redacted>"
    assert turn[1]["shared_secret"] == "<redacted>"
    data = json.loads(config_to_json(config))
    assert data == config_to_dict(config)
    assert data["ice"]["turn"][0]["password"] == "<redacted>"
    assert data["limits"] == {"max_sessions": 10, "max_ws_message_bytes": 4096}
    assert json.loads(config_to_json(config, redact=False))["ice"]["turn"][0]["password"] == 'p"w'


# ---------------------------------------------------------------------------- docs


def test_docs_mention_every_variable_and_flag() -> None:
    docs = (ROOT / "docs" / "configuration.md").read_text()
    for name in (*env_names(), *flag_names()):
        assert f"`{name}" in docs or f"{name} " in docs or f"{name}`" in docs, name


def test_list_flags_accept_commas() -> None:
    config = load_config(
        {"announce": ["10.0.0.2=203.0.113.5,10.0.0.3=203.0.113.6/append"],
         "turn": ["turn:192.0.2.1,turn:192.0.2.2"], "turn_secret": "s"},
        {},
    )  # fmt: skip
    assert [str(r.local) for r in config.announce] == ["10.0.0.2", "10.0.0.3"]
    assert [s.host for s in config.ice.turn] == ["192.0.2.1", "192.0.2.2"]
