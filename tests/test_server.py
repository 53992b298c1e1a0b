"""The HTTP side of `sfu serve`: TLS (HTTPS and WSS), the demo page, health and stats endpoints."""

from __future__ import annotations

import datetime
import ipaddress
import json
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from sfu.config import MediaConfig
from sfu.server import HttpSettings, ServerSettings, SfuServer
from sfu.webrtc.server import MediaSettings


def _self_signed(tmp: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.IPv4Address("127.0.0.1"))]), False
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp / "cert.pem", tmp / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def _media() -> MediaSettings:
    return MediaSettings(
        MediaConfig(listen=(ipaddress.IPv4Address("127.0.0.1"),), port=0, include_loopback=True)
    )


@pytest.fixture
async def tls_server(tmp_path: Path) -> AsyncIterator[tuple[SfuServer, Path]]:
    cert, key = _self_signed(tmp_path)
    srv = SfuServer(
        ServerSettings(
            http=HttpSettings(listen=(("127.0.0.1", 0),), tls_cert=str(cert), tls_key=str(key)),
            media=_media(),
        )
    )
    await srv.start()
    try:
        yield srv, cert
    finally:
        await srv.stop()


async def test_https_and_wss(tls_server: tuple[SfuServer, Path]) -> None:
    srv, cert = tls_server
    host, port = srv.http_addresses[0]
    ctx = ssl.create_default_context(cafile=str(cert))
    async with aiohttp.ClientSession() as http:
        async with http.get(f"https://{host}:{port}/healthz", ssl=ctx) as resp:
            assert resp.status == 200
            assert (await resp.json())["status"] == "ok"
        async with http.get(f"https://{host}:{port}/", ssl=ctx) as resp:
            assert resp.status == 200
            assert "echo" in (await resp.text()).lower()
        async with http.ws_connect(f"wss://{host}:{port}/ws", ssl=ctx) as ws:
            await ws.send_str(json.dumps({"type": "attach", "app": "echotest", "id": 1}))
            reply = json.loads((await ws.receive(timeout=5)).data)
            assert reply["type"] == "ack" and reply["data"]["handle"]
            handle = reply["data"]["handle"]
            async with http.get(
                f"https://{host}:{port}/api/sessions/{handle}/stats", ssl=ctx
            ) as resp:
                body = await resp.json()
                assert resp.status == 200 and body["app"] == "echotest"
        # plain HTTP on the TLS port is refused
        with pytest.raises(aiohttp.ClientError):
            async with http.get(f"http://{host}:{port}/healthz") as resp:
                await resp.read()


async def test_stats_of_an_unknown_session_is_a_404_with_a_reason() -> None:
    srv = SfuServer(ServerSettings(http=HttpSettings(listen=(("127.0.0.1", 0),)), media=_media()))
    await srv.start()
    try:
        host, port = srv.http_addresses[0]
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://{host}:{port}/api/sessions/nope/stats") as resp:
                assert resp.status == 404
                assert "no session" in (await resp.json())["error"]
            async with http.get(f"http://{host}:{port}/js/signaling.js") as resp:
                assert resp.status == 200
                assert "javascript" in resp.headers["Content-Type"]
            async with http.get(f"http://{host}:{port}/api/stats") as resp:
                stats = await resp.json()
                assert stats["transports"] == 0 and "mux" in stats
    finally:
        await srv.stop()
