"""wss:// and https:// with a certificate from the configuration (a self-signed one made
by the test with the `cryptography` package aiortc already depends on)."""

from __future__ import annotations

import ssl
from pathlib import Path

import aiohttp
import pytest

from gateway.app import Gateway
from gateway.config import ConfigError
from gateway.wcs.client import WcsClient
from tests.conftest import self_signed
from tests.integration.conftest import local_config


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
