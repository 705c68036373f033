"""The embedded broker's log-in settings and the MQTT version of skyrelay's own clients:
flags, environment, TOML, and the refusal to open the broker to the network without a log-in."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.app import embedded_broker, own_broker_address
from gateway.cli import build_parser
from gateway.config import ConfigError, load


def serve_flags(*argv: str) -> dict[str, object]:
    args = build_parser().parse_args(["serve", *argv])
    return {k: v for k, v in vars(args).items() if k not in ("command", "config") and v is not None}


def test_flags_env_and_toml_reach_the_broker_and_the_own_clients(tmp_path: Path) -> None:
    flags = serve_flags(
        "--mqtt-broker", "0.0.0.0:1884", "--mqtt-broker-user", "gw", "--mqtt-broker-password", "pw",
        "--mqtt-protocol", "3.1.1",
    )  # fmt: skip
    config = load(flags, environ={})
    broker = embedded_broker(config)
    assert broker is not None and (broker.host, broker.port) == ("0.0.0.0", 1884)
    assert broker.core.credentials is not None and broker.core.credentials.check("gw", b"pw")
    own = own_broker_address(config)
    assert own is not None
    assert (own.host, own.port, own.username, own.password, own.protocol) == (
        "127.0.0.1",
        1884,
        "gw",
        "pw",
        "3.1.1",
    )

    secret = tmp_path / "broker.pw"
    secret.write_text("from-file\n")
    env = {"SKYRELAY_MQTT_BROKER_USER": "gw", "SKYRELAY_MQTT_BROKER_PASSWORD_FILE": str(secret)}
    own = own_broker_address(load({}, environ=env))
    assert own is not None and (own.password, own.protocol) == ("from-file", "5")

    toml = tmp_path / "skyrelay.toml"
    toml.write_text('mqtt_broker = "[::]:1885"\nmqtt_broker_user = "gw"\nmqtt_broker_password = "t"\n')
    own = own_broker_address(load({}, config_file=toml, environ={}))
    assert own is not None and (own.host, own.port, own.password) == ("::1", 1885, "t")


def test_an_external_broker_url_keeps_its_own_log_in_and_the_protocol_setting() -> None:
    config = load({"mqtt": "mqtt://u:p@broker:1883", "mqtt_protocol": "3.1.1"}, environ={})
    assert embedded_broker(config) is None
    own = own_broker_address(config)
    assert own is not None and (own.host, own.username, own.protocol) == ("broker", "u", "3.1.1")


@pytest.mark.parametrize("bind", ["0.0.0.0:1883", "[::]:1883", "192.0.2.7:1883", "broker.lan:1883"])
def test_a_broker_beyond_loopback_without_a_log_in_is_refused(bind: str) -> None:
    with pytest.raises(ConfigError, match="mqtt_broker_user.*mqtt_broker_password"):
        load({"mqtt_broker": bind}, environ={})


@pytest.mark.parametrize(
    "bind", ["127.0.0.1:1883", "localhost:1883", "[::1]:1883", "::1:1883", "127.0.0.2:1"]
)
def test_loopback_needs_no_log_in(bind: str) -> None:
    config = load({"mqtt_broker": bind}, environ={})
    broker = embedded_broker(config)
    assert broker is not None and broker.core.credentials is None


@pytest.mark.parametrize(
    ("settings", "words"),
    [
        ({"mqtt_broker_user": "gw"}, "needs 'mqtt_broker_password'"),
        ({"mqtt_broker_password": "pw"}, "without 'mqtt_broker_user'"),
        (
            {"mqtt_broker_user": "gw", "mqtt_broker_password": "a", "mqtt_broker_password_file": "/x"},
            "give one",
        ),
        ({"mqtt_broker_user": "gw", "mqtt_broker_password_file": "/nonexistent/pw"}, "cannot read it"),
        ({"mqtt_protocol": "4"}, "mqtt_protocol"),
    ],
)
def test_bad_log_in_settings(settings: dict[str, str], words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        load(settings, environ={})


def test_the_cli_refuses_an_open_broker_with_a_clear_message(capsys: pytest.CaptureFixture[str]) -> None:
    from gateway.cli import main

    assert main(["serve", "--mqtt-broker", "0.0.0.0:1883"]) == 2
    assert "mqtt_broker_user" in capsys.readouterr().err


def test_dock_sim_and_demo_flags() -> None:
    args = build_parser().parse_args(["dock-sim", "--mqtt", "mqtt://h:1", "--mqtt-protocol", "3.1.1"])
    assert args.mqtt_protocol == "3.1.1"
    assert build_parser().parse_args(["dock-sim", "--mqtt", "mqtt://h:1"]).mqtt_protocol == "5"
    demo = build_parser().parse_args(["demo", "--mqtt-broker-user", "u", "--mqtt-broker-password", "p"])
    assert (demo.mqtt_broker_user, demo.mqtt_broker_password) == ("u", "p")
