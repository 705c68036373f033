"""gateway.config: defaults < TOML file < SKYRELAY_* environment < command-line flags."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from gateway.config import (
    STATIC_DIR,
    Config,
    ConfigError,
    cores_of_quota,
    load,
    unknown_environment,
    usable_cores,
)
from gateway.dji.protocol import UrlType


def write(tmp_path: Path, text: str, name: str = "skyrelay.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# --- defaults -------------------------------------------------------------------------------------


def test_defaults() -> None:
    config = load({}, environ={})
    assert config == Config()
    assert config.host == "0.0.0.0"
    assert config.ws_port == 8080
    assert config.http_port == 8081
    assert config.rtsp_port == 8554
    assert config.public_ip is None
    assert config.ice_addresses == ()
    assert config.stun_servers == ()
    assert config.static_dir == STATIC_DIR
    assert config.max_frame_bytes == 1024 * 1024
    assert config.ping_interval == 5.0
    assert config.ping_probes == 10
    assert config.max_media_sessions == 16
    assert config.viewer_queue_frames == 90
    assert config.keyframe_request_interval == 1.0
    assert config.log_level == "info"
    assert config.log_format == "auto"


def test_defaults_ignore_other_environment_variables() -> None:
    config = load({}, environ={"HOME": "/root", "PATH": "/bin", "SKYRELAYX": "1", "skyrelay_ws_port": "1"})
    assert config == Config()


def test_config_is_frozen() -> None:
    config = Config()
    with pytest.raises(AttributeError):
        config.ws_port = 1  # type: ignore[misc]


# --- TOML -------------------------------------------------------------------------------------------


def test_toml_file(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
host = "127.0.0.1"
ws_port = 9000
http-port = 9001
public_ip = "203.0.113.7"
ice_addresses = ["192.0.2.2", "10.0.0.5"]
stun_servers = ["stun.example.org:3478"]
static_dir = "/srv/static"
ping_interval = 2.5
ping_probes = 3
max_media_sessions = 4
log_level = "debug"
log_format = "json"
""",
    )
    config = load({}, config_file=path, environ={})
    assert config.host == "127.0.0.1"
    assert (config.ws_port, config.http_port) == (9000, 9001)
    assert config.public_ip == "203.0.113.7"
    assert config.ice_addresses == ("192.0.2.2", "10.0.0.5")
    assert config.stun_servers == ("stun.example.org:3478",)
    assert config.static_dir == Path("/srv/static")
    assert config.ping_interval == 2.5
    assert (config.ping_probes, config.max_media_sessions) == (3, 4)
    assert (config.log_level, config.log_format) == ("debug", "json")


def test_toml_skyrelay_table(tmp_path: Path) -> None:
    path = write(tmp_path, '[skyrelay]\nws-port = 7000\nice-addresses = "192.0.2.2, 10.0.0.5"\n')
    config = load({}, config_file=path, environ={})
    assert config.ws_port == 7000
    assert config.ice_addresses == ("192.0.2.2", "10.0.0.5")


def test_toml_int_for_float_setting(tmp_path: Path) -> None:
    config = load({}, config_file=write(tmp_path, "ping_interval = 3\n"), environ={})
    assert config.ping_interval == 3.0
    assert isinstance(config.ping_interval, float)


def test_toml_file_from_environment(tmp_path: Path) -> None:
    path = write(tmp_path, "ws_port = 7001\n")
    config = load({}, environ={"SKYRELAY_CONFIG": str(path)})
    assert config.ws_port == 7001


def test_explicit_file_wins_over_skyrelay_config(tmp_path: Path) -> None:
    chosen = write(tmp_path, "ws_port = 7002\n", "a.toml")
    other = write(tmp_path, "ws_port = 7003\n", "b.toml")
    config = load({}, config_file=chosen, environ={"SKYRELAY_CONFIG": str(other)})
    assert config.ws_port == 7002


def test_empty_toml_file(tmp_path: Path) -> None:
    assert load({}, config_file=write(tmp_path, ""), environ={}) == Config()


def test_missing_toml_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load({}, config_file=tmp_path / "nope.toml", environ={})


def test_toml_file_that_is_a_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        load({}, config_file=tmp_path, environ={})


@pytest.mark.parametrize(
    "text", ["ws_port = ", "ws_port = 80\nws_port = 81\n", "[skyrelay\n", "\x00", "a = 'b"]
)
def test_invalid_toml(tmp_path: Path, text: str) -> None:
    with pytest.raises(ConfigError, match="not valid TOML"):
        load({}, config_file=write(tmp_path, text), environ={})


def test_unknown_toml_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="wsport"):
        load({}, config_file=write(tmp_path, "wsport = 80\n"), environ={})


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('ws_port = "eighty"', "ws_port"),
        ("ws_port = [80]", "ws_port"),
        ("ping_interval = 'soon'", "ping_interval"),
        ("ping_probes = {a = 1}", "ping_probes"),
    ],
)
def test_toml_values_of_the_wrong_type(tmp_path: Path, text: str, key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        load({}, config_file=write(tmp_path, text + "\n"), environ={})


# --- environment -------------------------------------------------------------------------------------


def test_environment() -> None:
    environ = {
        "SKYRELAY_HOST": "::",
        "SKYRELAY_WS_PORT": "9100",
        "SKYRELAY_HTTP_PORT": " 9101 ",
        "SKYRELAY_PUBLIC_IP": "203.0.113.9",
        "SKYRELAY_ICE_ADDRESSES": "192.0.2.2, 10.0.0.5,,",
        "SKYRELAY_STUN_SERVERS": "",
        "SKYRELAY_PING_INTERVAL": "0.5",
        "SKYRELAY_MAX_FRAME_BYTES": "2048",
        "SKYRELAY_LOG_FORMAT": "console",
        "SKYRELAY_STATIC_DIR": "/tmp/static",
    }
    config = load({}, environ=environ)
    assert config.host == "::"
    assert (config.ws_port, config.http_port) == (9100, 9101)
    assert config.public_ip == "203.0.113.9"
    assert config.ice_addresses == ("192.0.2.2", "10.0.0.5")
    assert config.stun_servers == ()
    assert config.ping_interval == 0.5
    assert config.max_frame_bytes == 2048
    assert config.log_format == "console"
    assert config.static_dir == Path("/tmp/static")


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("SKYRELAY_WS_PORT", "eighty"),
        ("SKYRELAY_WS_PORT", "80.5"),
        ("SKYRELAY_WS_PORT", ""),
        ("SKYRELAY_PING_PROBES", "many"),
        ("SKYRELAY_PING_INTERVAL", "5s"),
        ("SKYRELAY_MAX_MEDIA_SESSIONS", "0x10"),
    ],
)
def test_environment_values_that_are_not_numbers(key: str, value: str) -> None:
    name = key.removeprefix("SKYRELAY_").lower()
    with pytest.raises(ConfigError, match=name):
        load({}, environ={key: value})


# --- precedence ---------------------------------------------------------------------------------------


def test_precedence_flags_env_toml_defaults(tmp_path: Path) -> None:
    path = write(tmp_path, "ws_port = 1001\nhttp_port = 1002\nhost = '10.0.0.1'\nping_probes = 4\n")
    environ = {"SKYRELAY_WS_PORT": "2001", "SKYRELAY_HTTP_PORT": "2002"}
    flags: dict[str, Any] = {"ws_port": 3001}
    config = load(flags, config_file=path, environ=environ)
    assert config.ws_port == 3001  # flag > env > TOML
    assert config.http_port == 2002  # env > TOML
    assert config.host == "10.0.0.1"  # TOML > default
    assert config.ping_probes == 4
    assert config.max_media_sessions == 16  # default


def test_flags_set_to_none_do_not_override(tmp_path: Path) -> None:
    path = write(tmp_path, "ws_port = 1001\n")
    config = load({"ws_port": None, "host": None}, config_file=path, environ={"SKYRELAY_HOST": "::1"})
    assert config.ws_port == 1001
    assert config.host == "::1"


def test_flags_as_the_cli_passes_them() -> None:
    flags: dict[str, Any] = {
        "host": "127.0.0.1",
        "ws_port": 18080,
        "http_port": 18081,
        "ice_addresses": ["127.0.0.1"],
        "stun_servers": ["stun.example.org:3478", "stun2.example.org:3478"],
        "max_frame_bytes": 65536,
        "log_level": "warning",
        "log_format": "json",
    }
    config = load(flags, environ={"SKYRELAY_ICE_ADDRESSES": "10.0.0.1"})
    assert config.ice_addresses == ("127.0.0.1",)
    assert config.stun_servers == ("stun.example.org:3478", "stun2.example.org:3478")
    assert (config.ws_port, config.http_port, config.max_frame_bytes) == (18080, 18081, 65536)
    assert (config.log_level, config.log_format) == ("warning", "json")


def test_bad_flag_value() -> None:
    with pytest.raises(ConfigError, match="ws_port"):
        load({"ws_port": "x"}, environ={})


def test_unknown_flag() -> None:
    with pytest.raises(ConfigError, match="frobnicate"):
        load({"frobnicate": 1}, environ={})


def test_with_overrides() -> None:
    config = Config().with_overrides({"ws_port": "81", "ping_interval": "1", "public_ip": None})
    assert config.ws_port == 81 and config.ping_interval == 1.0 and config.public_ip is None


# --- validation ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "value", "words"),
    [
        ("ws_port", "70000", "ws_port"),
        ("ws_port", "-1", "ws_port"),
        ("http_port", "65536", "http_port"),
        ("max_frame_bytes", "1023", "max_frame_bytes"),
        ("max_frame_bytes", "0", "max_frame_bytes"),
        ("ping_interval", "0", "ping_interval"),
        ("ping_interval", "-5", "ping_interval"),
        ("ping_probes", "0", "ping_probes"),
        ("log_format", "xml", "log_format"),
        ("log_format", "JSON", "log_format"),
        ("dji_max_osd_rate", "0", "dji_max_osd_rate"),
        ("dji_max_osd_rate", "nan", "dji_max_osd_rate"),
        ("dji_max_osd_rate", "-3", "dji_max_osd_rate"),
    ],
)
def test_out_of_range_values(key: str, value: str, words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        load({}, environ={f"SKYRELAY_{key.upper()}": value})
    with pytest.raises(ConfigError, match=words):
        load({key: value}, environ={})


def test_port_limits_are_inclusive() -> None:
    config = load({"ws_port": 0, "http_port": 65535}, environ={})
    assert (config.ws_port, config.http_port) == (0, 65535)
    assert load({"max_frame_bytes": 1024, "ping_probes": 1}, environ={}).max_frame_bytes == 1024


def test_invalid_value_in_toml_is_reported_even_if_overridden_later(tmp_path: Path) -> None:
    # A TOML value of the wrong type is an error at once, whatever the flags say.
    path = write(tmp_path, 'ws_port = "x"\n')
    with pytest.raises(ConfigError, match="ws_port"):
        load({"ws_port": 80}, config_file=path, environ={})


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("ping_interval", "nan"),
        ("ping_interval", "inf"),
        ("ice_timeout", "-1"),
        ("keyframe_request_interval", "nan"),
        ("max_media_sessions", "-1"),
        ("viewer_queue_frames", "0"),
    ],
)
def test_unusable_numbers_are_refused(key: str, value: str) -> None:
    with pytest.raises(ConfigError, match=key):
        load({}, environ={f"SKYRELAY_{key.upper()}": value})


@pytest.mark.parametrize("text", ["ws_port = true", "ws_port = 8080.9", "max_media_sessions = true"])
def test_toml_booleans_and_floats_are_not_ports(tmp_path: Path, text: str) -> None:
    with pytest.raises(ConfigError):
        load({}, config_file=write(tmp_path, text + "\n"), environ={})


@pytest.mark.parametrize("text", ["skyrelay = 5", 'skyrelay = "x"', "skyrelay = [1, 2]"])
def test_skyrelay_key_that_is_not_a_table(tmp_path: Path, text: str) -> None:
    with pytest.raises(ConfigError, match="skyrelay"):
        load({}, config_file=write(tmp_path, text + "\n"), environ={})


def test_serve_flags_for_the_dji_bridge_reach_the_configuration() -> None:
    from gateway.cli import build_parser

    args = build_parser().parse_args(
        ["serve", "--mqtt", "mqtts://u:p@broker:8883", "--mqtt-ca-file", "/etc/ca.pem", "--live-linger", "5",
         "--mqtt-broker", "off", "--rtmp-port", "0"]
    )  # fmt: skip
    flags = {k: v for k, v in vars(args).items() if k not in ("command", "config") and v is not None}
    config = load(flags, environ={})
    assert (config.mqtt, config.mqtt_ca_file, config.live_linger) == (
        "mqtts://u:p@broker:8883",
        "/etc/ca.pem",
        5.0,
    )
    assert (config.mqtt_broker, config.rtmp_port) == ("off", 0)
    with pytest.raises(ConfigError, match="mqtt_broker"):
        load({"mqtt_broker": "nonsense"}, environ={})


def test_url_types_and_aliases_from_flags_and_toml(tmp_path: Path) -> None:
    from gateway.cli import build_parser
    from gateway.config import pairs

    args = build_parser().parse_args(
        ["serve", "--live-url-type", "whip", "--live-url-types", "RC1=rtsp,DOCK2=rtmp",
         "--alias", "roof=DOCK1/165-0-7/normal-0", "--alias", "nose=AC1/53-0-0/normal-0"]
    )  # fmt: skip
    flags = {k: v for k, v in vars(args).items() if k not in ("command", "config") and v is not None}
    config = load(flags, environ={})
    assert config.live_url_type == "whip"
    assert pairs(config.live_url_types) == {"RC1": "rtsp", "DOCK2": "rtmp"}
    assert pairs(config.aliases) == {"roof": "DOCK1/165-0-7/normal-0", "nose": "AC1/53-0-0/normal-0"}
    toml = write(
        tmp_path,
        '[skyrelay.aliases]\nroof = "DOCK1/165-0-7/normal-0"\n[skyrelay.live_url_types]\nRC1 = "rtsp"\n',
    )
    config = load({}, config_file=toml, environ={})
    assert pairs(config.aliases) == {"roof": "DOCK1/165-0-7/normal-0"}
    assert pairs(config.live_url_types) == {"RC1": "rtsp"}


@pytest.mark.parametrize(
    ("flags", "words"),
    [
        ({"live_url_type": "agora"}, "one of rtmp, whip, rtsp"),
        ({"live_url_types": "RC1=gb28181"}, "one of rtmp, whip, rtsp"),
        ({"live_url_types": "RC1"}, "NAME=VALUE"),
        ({"aliases": "=x"}, "NAME=VALUE"),
        ({"live_max_attempts": 0}, "at least 1"),
        ({"live_retry_backoff": -1}, "positive"),
    ],
)
def test_bad_live_settings(flags: dict[str, object], words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        load(flags, environ={})


@pytest.mark.parametrize(
    ("setting", "bind"),
    [("off", None), ("127.0.0.1:1883", ("127.0.0.1", 1883)), ("[::]:1885", ("::", 1885))],
)
def test_mqtt_broker_is_parsed_once_in_config(setting: str, bind: tuple[str, int] | None) -> None:
    assert Config(mqtt_broker=setting).mqtt_broker_bind == bind


def test_off_and_enum_settings_as_the_parts_use_them() -> None:
    config = Config(device_state_file="off", live_url_type="whip", live_url_types=("DOCK1=rtsp",))
    assert config.device_state_path is None
    assert Config().device_state_path == Path("state/devices.json")
    assert (config.live_push_type, config.live_push_types) == (UrlType.WHIP, {"DOCK1": UrlType.RTSP})


def test_osd_rate_setting_reaches_the_device_registry() -> None:
    from gateway.app import Gateway

    config = load({}, environ={"SKYRELAY_DJI_MAX_OSD_RATE": "12.5"})
    assert config.dji_max_osd_rate == 12.5
    assert load({}, environ={}).dji_max_osd_rate == 50.0
    gateway = Gateway(config)  # built, not started
    assert gateway.dji is not None and gateway.dji.devices.max_osd_rate == 12.5


@pytest.mark.parametrize(
    ("cpu_max", "cores"),
    [
        ("max 100000\n", None),  # no quota
        ("200000 100000\n", 2),  # docker --cpus 2
        ("150000 100000", 2),  # 1.5 cores: a second worker for the half
        ("50000 100000", 1),  # half a core: still one
        ("1 100000", 1),
        ("", None),
        ("garbage here", None),
        ("-1 100000", None),
        ("100000 0", None),
        ("100000", None),
    ],
)
def test_a_cgroup_quota_in_whole_cores(cpu_max: str, cores: int | None) -> None:
    assert cores_of_quota(cpu_max) == cores


def test_the_default_workers_are_the_usable_cores(tmp_path: Path) -> None:
    affinity = len(os.sched_getaffinity(0))
    assert Config().workers == 0
    assert usable_cores(tmp_path / "no such file") == affinity
    quota = tmp_path / "cpu.max"
    quota.write_text("100000 100000\n")
    assert usable_cores(quota) == 1
    quota.write_text(f"{(affinity + 3) * 100000} 100000\n")  # a quota above the cores: the cores
    assert usable_cores(quota) == affinity


def test_environment_variables_the_gateway_reads_are_not_called_typos() -> None:
    environ = {"SKYRELAY_WORKERS": "2", "SKYRELAY_NATIVE_DIR": "/opt/native", "SKYRELAY_WORKRES": "2"}
    assert unknown_environment(environ) == ["SKYRELAY_WORKRES"]


def test_fanout_threads_by_the_machine_or_as_set() -> None:
    cores = usable_cores()
    assert Config(workers=1).fanout_thread_count == (2 if cores >= 2 else 1)
    assert Config(workers=2).fanout_thread_count == 1  # one worker per core: no helper thread
    assert Config(workers=2, fanout_threads=2).fanout_thread_count == 2
    assert Config(workers=1, fanout_threads=1).fanout_thread_count == 1
    assert load({}, environ={"SKYRELAY_FANOUT_THREADS": "2"}).fanout_threads == 2
    for bad in ("3", "-1"):
        with pytest.raises(ConfigError, match="fanout_threads"):
            load({}, environ={"SKYRELAY_FANOUT_THREADS": bad})
