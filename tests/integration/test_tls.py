"""wss:// and https:// with a certificate from the configuration (a self-signed one made
by the test with the `cryptography` package aiortc already depends on)."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from pathlib import Path

import aiohttp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gateway.app import Gateway
from gateway.config import ConfigError
from gateway.wcs.client import WcsClient
from tests.integration.conftest import local_config


def self_signed(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "skyrelay-test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


async def test_wss_and_https_with_the_configured_certificate(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    gateway = Gateway(local_config(tls_cert=str(cert), tls_key=str(key)))
    await gateway.start()
    try:
        trust = ssl.create_default_context(cafile=str(cert))
        client = await WcsClient.connect(f"wss://127.0.0.1:{gateway.config.ws_port}", tls=trust)
        assert client.user_data is not None
        await client.close()
        async with aiohttp.ClientSession() as http:
            async with http.get(f"https://127.0.0.1:{gateway.config.http_port}/healthz", ssl=trust) as reply:
                assert reply.status == 200
            with pytest.raises(aiohttp.ClientConnectorCertificateError):
                await http.get(f"https://127.0.0.1:{gateway.config.http_port}/healthz")  # not trusted
    finally:
        await gateway.stop()


def test_a_certificate_that_cannot_be_loaded_is_a_configuration_error(tmp_path: Path) -> None:
    (tmp_path / "bad.pem").write_text("not a certificate")
    with pytest.raises(ConfigError, match="tls_cert"):
        Gateway(local_config(tls_cert=str(tmp_path / "bad.pem"), tls_key=str(tmp_path / "bad.pem")))
