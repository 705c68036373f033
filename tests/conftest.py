"""Shared fixtures: a real gateway process on loopback."""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.ports import free_port, free_port_block

ROOT = Path(__file__).resolve().parent.parent


def dominant_frequency(samples: Any, rate: int) -> float:
    """The strongest frequency in ``samples`` (a 1-D numpy array at ``rate`` Hz): a tone's."""
    import numpy as np

    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.fft.rfftfreq(len(samples), 1 / rate)[np.argmax(spectrum)])


_SAMPLE = re.compile(r"^([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)$")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def metric_sum(body: str, name: str, labels: dict[str, str]) -> float:
    """The samples of ``name`` in a Prometheus text ``body`` whose labels are exactly
    ``labels`` (less ``worker``, unless asked for), summed (0 when there is none)."""
    total = 0.0
    for line in body.splitlines():
        match = _SAMPLE.match(line)
        if match is None or match.group(1) != name:
            continue
        found = dict(_LABEL.findall(match.group(2) or ""))
        if "worker" not in labels:
            found.pop("worker", None)
        if found == labels:
            total += float(match.group(3))
    return total


@dataclass
class GatewayProcess:
    """`skyrelay serve` started as a child process, bound to 127.0.0.1 only."""

    extra_args: list[str] = field(default_factory=list)
    extra_env: dict[str, str] = field(default_factory=dict)
    ws_port: int = field(default_factory=free_port)
    http_port: int = field(default_factory=free_port)
    rtmp_port: int = field(default_factory=free_port)
    rtsp_port: int = field(default_factory=free_port)
    mqtt_broker_port: int = field(default_factory=free_port)
    # Worker processes (`--workers`); None: the product's default (one per core).
    workers: int | None = None
    webrtc_port: int = 0  # UDP and ICE-TCP (worker i: + i); 0: free ones picked
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None

    def __post_init__(self) -> None:
        if not self.webrtc_port:
            self.webrtc_port = free_port_block(self.worker_count)

    @property
    def worker_count(self) -> int:
        return self.workers or len(os.sched_getaffinity(0))

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.ws_port}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, log_dir: Path, timeout: float = 30.0) -> None:
        self.log_path = log_dir / f"gateway-{self.ws_port}.log"
        cmd = [
            sys.executable,
            "-m",
            "gateway",
            "serve",
            "--host",
            "127.0.0.1",
            "--ws-port",
            str(self.ws_port),
            "--http-port",
            str(self.http_port),
            "--rtmp-port",
            str(self.rtmp_port),
            "--rtsp-port",
            str(self.rtsp_port),
            "--mqtt-broker",
            f"127.0.0.1:{self.mqtt_broker_port}",
            "--ice-address",
            "127.0.0.1",
            "--log-format",
            "json",
            *(["--workers", str(self.workers)] if self.workers is not None else []),
            *self.extra_args,
        ]
        # A free WebRTC port of its own, unless the test chose them (flags beat the environment).
        for flag in ("--webrtc-udp-port", "--webrtc-tcp-port"):
            if "SKYRELAY_" + flag[2:].replace("-", "_").upper() not in self.extra_env:
                cmd += [flag, str(self.webrtc_port)]
        env = {k: v for k, v in os.environ.items() if not k.startswith("SKYRELAY_")}
        env["SKYRELAY_DEVICE_STATE_FILE"] = str(log_dir / f"devices-{self.ws_port}.json")  # not the repo's
        env.update(self.extra_env)
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gateway exited early:\n{self.log_path.read_text()[-4000:]}")
            try:
                # With several workers: once every one answers (the first may answer alone).
                if all(worker.get("answering") for worker in self.health().get("workers", [])):
                    return
            except OSError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError("gateway did not become healthy in time")

    def health(self) -> dict:
        with urllib.request.urlopen(f"{self.http_url}/healthz", timeout=2) as resp:
            return json.loads(resp.read())

    def log_text(self) -> str:
        return self.log_path.read_text() if self.log_path and self.log_path.exists() else ""

    def log_events(self, event: str, **fields: Any) -> list[dict[str, Any]]:
        """The JSON log lines of ``event`` whose fields have these values."""
        found = []
        for line in self.log_text().splitlines():
            with contextlib.suppress(ValueError):
                entry = json.loads(line)
                if isinstance(entry, dict) and entry.get("event") == event:
                    if all(entry.get(key) == value for key, value in fields.items()):
                        found.append(entry)
        return found

    def metric(self, name: str, **labels: str) -> float:
        """The sample of ``/metrics`` with exactly these labels (0 when absent), summed over
        the workers (with several, each worker's sample carries a ``worker`` label)."""
        with urllib.request.urlopen(f"{self.http_url}/metrics", timeout=5) as reply:
            body = reply.read().decode()
        return metric_sum(body, name, labels)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)


def module_workers(request: pytest.FixtureRequest) -> int | None:
    """A module's `GATEWAY_WORKERS`: the worker count its gateways run with (a module about
    one process's internals sets 1, saying why); without it, the product's default."""
    return getattr(request.module, "GATEWAY_WORKERS", None)


@pytest.fixture(scope="module")
def gateway(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    """One gateway per test module (starting aiortc costs about a second)."""
    gw = GatewayProcess(workers=module_workers(request))
    gw.start(tmp_path_factory.mktemp("gateway"))
    try:
        yield gw
    finally:
        gw.stop()


@pytest.fixture
def make_gateway(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[Callable[[dict[str, str]], GatewayProcess]]:
    """Starts gateways with extra SKYRELAY_* settings for one test; stops them after it."""
    started: list[GatewayProcess] = []

    def start(env: dict[str, str]) -> GatewayProcess:
        gw = GatewayProcess(extra_env=env, workers=module_workers(request))
        started.append(gw)
        gw.start(tmp_path)
        return gw

    yield start
    for gw in started:
        gw.stop()


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key (PEM files in ``directory``); the
    certificate is its own CA."""
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


@dataclass
class MosquittoProcess:
    """A real Mosquitto broker on a free loopback port, with a private config; with
    ``users``, only they may connect (a password file); with ``tls`` (certificate and key
    files), the listener speaks TLS (mqtts://)."""

    workdir: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    users: dict[str, str] = field(default_factory=dict)
    tls: tuple[Path, Path] | None = None

    def start(self, timeout: float = 10.0) -> None:
        config = self.workdir / "mosquitto.conf"
        # Run as root, Mosquitto would switch to its own user, who cannot read the
        # password and key files in the test's private directory.
        lines = [f"listener {self.port} 127.0.0.1", "persistence false", "user root"]
        if self.users:
            passwords = self.workdir / "mosquitto.passwd"
            passwords.unlink(missing_ok=True)
            for user, password in self.users.items():
                create = [] if passwords.exists() else ["-c"]
                cmd = ["mosquitto_passwd", "-b", *create, str(passwords), user, password]
                subprocess.run(cmd, check=True, capture_output=True)
            lines += ["allow_anonymous false", f"password_file {passwords}"]
        else:
            lines.append("allow_anonymous true")
        if self.tls is not None:
            cert, key = self.tls
            lines += [f"certfile {cert}", f"keyfile {key}"]
        config.write_text("\n".join(lines) + "\n")
        log = (self.workdir / "mosquitto.log").open("ab")
        self.proc = subprocess.Popen(["/usr/sbin/mosquitto", "-c", str(config)], stdout=log, stderr=log)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"mosquitto exited: {(self.workdir / 'mosquitto.log').read_text()[-2000:]}"
                )
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError("mosquitto did not accept connections in time")

    @property
    def url(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[MosquittoProcess]:
    broker = MosquittoProcess(tmp_path)
    broker.start()
    yield broker
    broker.stop()
