"""A play request for a drone camera starts the dock's push over MQTT (real Mosquitto), the
dock simulator pushes RTMP (real ffmpeg) with the one-time key, and WebRTC players get the
video; the last player leaving stops the push after the linger."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import aiomqtt
import orjson
import pytest
import structlog

from gateway.access import OpenAccess
from gateway.app import Gateway
from gateway.dji.dock_sim import DockBehaviour
from gateway.media.ingest_keys import KEY_PREFIX
from gateway.media.synthetic import EncodedVideoTrack, read_access_units
from gateway.mqtt_link import BrokerAddress
from gateway.wcs.client import WcsClient, WcsError
from tests.conftest import MosquittoProcess, free_port, self_signed
from tests.integration.conftest import FrameCounter, bridged_gateway, local_config
from tests.integration.drone import AIRCRAFT_VIDEO, assert_inbound_figures, dock, http_json, play


async def test_play_starts_the_push_and_two_viewers_share_it_then_it_stops(
    drone_gateway: Gateway, mosquitto: MosquittoProcess, clip: Path
) -> None:
    async with dock(drone_gateway, mosquitto, clip) as sim:
        first, frames = await play(drone_gateway)
        await frames.wait_frames(20)
        assert (frames.frames[-1].width, frames.frames[-1].height) == (320, 240)
        (start,) = sim.starts
        port = drone_gateway.config.rtmp_port
        assert start["video_id"] == AIRCRAFT_VIDEO and start["url_type"] == 1
        assert str(start["url"]).startswith(f"rtmp://127.0.0.1:{port}/live/")
        assert len(str(start["url"]).rsplit("/", 1)[1]) >= 24  # an unguessable key
        await assert_inbound_figures(drone_gateway, AIRCRAFT_VIDEO, "rtmp")

        devices = await http_json(drone_gateway, "/api/devices")
        assert devices["mqtt_connected"] is True
        (gateway,) = devices["gateways"]
        assert gateway["sn"] == sim.gateway_sn and gateway["online"] is True
        assert gateway["aircraft"] == [sim.aircraft_sn]
        cameras = {(c["device_sn"], c["camera_index"]): c["streams"] for c in gateway["cameras"]}
        expected: dict[tuple[str, str], list[str]] = {}
        for v in sim.videos:
            expected.setdefault((v.sn, v.camera_index), []).append(str(v))
        assert cameras == expected and cameras[(sim.aircraft_sn, "53-0-0")] == [AIRCRAFT_VIDEO]
        by_stream = {v["stream"]: v for v in gateway["videos"]}
        assert sorted(by_stream) == sorted(str(v) for v in sim.videos)
        assert (by_stream[AIRCRAFT_VIDEO]["live"], by_stream[AIRCRAFT_VIDEO]["viewers"]) == ("live", 1)
        assert by_stream[AIRCRAFT_VIDEO]["device_streaming"] is True  # the dock's live_status
        assert by_stream[str(sim.videos[1])]["device_streaming"] is False

        second, more_frames = await play(drone_gateway)
        await more_frames.wait_frames(20)
        assert len(sim.starts) == 1, "the second viewer joins the running stream"

        await frames.stop()
        await first.close()
        await asyncio.sleep(drone_gateway.config.live_linger * 2)  # past the linger
        await more_frames.wait_frames(len(more_frames.pts) + 20)
        assert sim.stops == []  # the second viewer is still there: no stop, no linger
        await more_frames.stop()
        left = time.monotonic()
        await second.close()
        async with asyncio.timeout(10):  # linger 1 s, then live_stop_push
            while not sim.stops:
                await asyncio.sleep(0.05)
        assert sim.stops == [{"video_id": AIRCRAFT_VIDEO}]
        assert time.monotonic() - left >= drone_gateway.config.live_linger  # not before the linger


async def test_a_transient_error_is_retried(
    drone_gateway: Gateway, mosquitto: MosquittoProcess, clip: Path
) -> None:
    behaviour = DockBehaviour(fail_first=1, fail_code=613006)
    async with dock(drone_gateway, mosquitto, clip, behaviour) as sim:
        client, frames = await play(drone_gateway)
        await frames.wait_frames(10)
        assert len(sim.starts) == 2
        await frames.stop()
        await client.close()


async def test_already_streaming_is_a_success_and_the_push_is_awaited(
    drone_gateway: Gateway, mosquitto: MosquittoProcess, clip: Path
) -> None:
    behaviour = DockBehaviour(fail_first=1, fail_code=513003)  # answers 513003, pushes anyway
    async with dock(drone_gateway, mosquitto, clip, behaviour) as sim:
        client, frames = await play(drone_gateway)
        await frames.wait_frames(10)
        assert len(sim.starts) == 1, "513003 is not retried"
        await frames.stop()
        await client.close()


async def test_a_device_error_fails_the_play_with_its_code(
    drone_gateway: Gateway, mosquitto: MosquittoProcess, clip: Path
) -> None:
    behaviour = DockBehaviour(fail_first=5, fail_code=513013)
    async with dock(drone_gateway, mosquitto, clip, behaviour) as sim:
        client = await WcsClient.connect(f"ws://127.0.0.1:{drone_gateway.config.ws_port}")
        with pytest.raises(WcsError, match="513013") as failure:
            await client.play(AIRCRAFT_VIDEO, timeout=30)
        assert "not supported" in str(failure.value)
        assert len(sim.starts) == 1, "a non-transient error is not retried"
        await client.close()


async def test_viewers_stay_attached_while_the_push_drops_for_5_s_and_returns(
    mosquitto: MosquittoProcess, clip: Path
) -> None:
    async with (
        bridged_gateway(mosquitto, live_push_timeout=8.0) as gateway,
        dock(gateway, mosquitto, clip) as sim,
    ):
        client, frames = await play(gateway)
        await frames.wait_frames(20)
        player = next(iter(client.streams.values()))
        answers = len(client.received("setRemoteSDP"))
        await sim.drop_push(5.0)  # shorter than live_push_timeout (8 s)
        before = len(frames.pts)
        await frames.wait_frames(before + 30, timeout=20)
        # Same WebRTC session, no renegotiation, timestamps still going forward.
        assert len(client.received("setRemoteSDP")) == answers and player.status == "PLAYING"
        resumed = frames.pts[before - 1 :]
        assert all(b > a for a, b in zip(resumed, resumed[1:], strict=False))
        assert len(sim.starts) == 1
        await frames.stop()
        await client.close()


async def test_a_push_gone_longer_than_the_timeout_fails_the_viewers(
    drone_gateway: Gateway, mosquitto: MosquittoProcess, clip: Path
) -> None:
    async with dock(drone_gateway, mosquitto, clip) as sim:
        client, frames = await play(drone_gateway)
        await frames.wait_frames(10)
        player = next(iter(client.streams.values()))
        drop = asyncio.create_task(sim.drop_push(30.0))
        status = await player.wait_status("FAILED", timeout=20)
        assert status["info"] == "no video from the device within 4 s"
        drop.cancel()
        await frames.stop()
        await client.close()


async def test_a_silent_device_fails_plays_at_once_with_device_offline(
    mosquitto: MosquittoProcess, clip: Path
) -> None:
    config = local_config(
        mqtt=mosquitto.url,
        device_offline_after=1.0,
    )
    gateway = Gateway(config)
    await gateway.start()
    try:
        assert gateway.dji is not None
        async with asyncio.timeout(10):
            await gateway.dji.mqtt.connected.wait()
        # Announced, then the dock loses its network and says nothing more.
        async with dock(gateway, mosquitto, clip, DockBehaviour(offline_after=0.5)) as sim:
            async with asyncio.timeout(10):
                while any(g["online"] for g in (await http_json(gateway, "/api/devices"))["gateways"]):
                    await asyncio.sleep(0.1)
            client = await WcsClient.connect(f"ws://127.0.0.1:{config.ws_port}")
            with pytest.raises(WcsError, match="DJI device offline"):
                await client.play(AIRCRAFT_VIDEO)
            # Failed at once: no live_start_push was sent, so no reply timeout was waited for.
            assert gateway.dji.controllers[AIRCRAFT_VIDEO].attempts == 0
            assert sim.starts == []
            await client.close()
    finally:
        await gateway.stop()


async def test_with_the_default_settings_a_play_of_a_dock_known_offline_fails_at_once(
    mosquitto: MosquittoProcess, clip: Path, tmp_path: Path
) -> None:
    """With the default `device_offline_after` (60 s) a dock that lost its network is known
    offline only after a minute of silence (docs/dji.md says how that bounds a play); a
    gateway restarted from its state file knows its docks as offline at once. From then on a
    play fails at once: FAILED with "DJI device offline", no MQTT command sent, so no reply
    timeout waited for."""
    state_file = str(tmp_path / "devices.json")
    async with (
        bridged_gateway(mosquitto, device_state_file=state_file) as first,
        dock(first, mosquitto, clip) as sim,
    ):
        gateway_sn = sim.gateway_sn
    # The dock is gone (its simulator stopped). The next gateway runs with the defaults.
    config = local_config(mqtt=mosquitto.url, device_state_file=state_file)
    assert (config.device_offline_after, config.live_reply_timeout) == (60.0, 20.0)
    gateway = Gateway(config)
    await gateway.start()
    try:
        assert gateway.dji is not None
        async with aiomqtt.Client("127.0.0.1", mosquitto.port, identifier="hears-commands") as listener:
            async with asyncio.timeout(10):
                await gateway.dji.mqtt.connected.wait()
            await listener.subscribe(f"thing/product/{gateway_sn}/services", qos=1)
            (listed,) = (await http_json(gateway, "/api/devices"))["gateways"]
            assert (listed["sn"], listed["online"]) == (gateway_sn, False)
            client = await WcsClient.connect(f"ws://127.0.0.1:{config.ws_port}")
            # Answered within one reply timeout: no live_start_push reply was waited for.
            with pytest.raises(WcsError, match="DJI device offline"):
                await client.play(AIRCRAFT_VIDEO, timeout=config.live_reply_timeout)
            (player,) = client.streams.values()
            assert player.statuses[-1]["status"] == "FAILED"
            assert player.statuses[-1]["info"] == f"DJI device offline: {gateway_sn}"
            assert gateway.dji.controllers[AIRCRAFT_VIDEO].attempts == 0
            assert not gateway.dji.mqtt.commands
            # The broker carried no command to the dock: a marker published after the play
            # is the first message on its services topic.
            await listener.publish(f"thing/product/{gateway_sn}/services", b"marker", qos=1)
            async with asyncio.timeout(10):
                async for message in listener.messages:
                    assert message.payload == b"marker"
                    break
            await client.close()
    finally:
        await gateway.stop()


@pytest.mark.parametrize("dock_protocol", ["5", "3.1.1"])
async def test_docks_can_use_the_embedded_broker(clip: Path, dock_protocol: str) -> None:
    """With no --mqtt, the gateway runs its own MQTT broker, here with a log-in; the bridge
    speaks MQTT 5 to it, the dock MQTT 5 (or 3.1.1, side by side), and a drone camera plays."""
    port = free_port()
    login = {"mqtt_broker_user": "skyrelay", "mqtt_broker_password": "br0ker"}
    gateway = Gateway(local_config(mqtt_broker=f"127.0.0.1:{port}", live_linger=1.0, **login))
    await gateway.start()
    try:
        assert gateway.broker is not None and gateway.dji is not None
        async with asyncio.timeout(10):
            await gateway.dji.mqtt.connected.wait()
        url = f"mqtt://skyrelay:br0ker@127.0.0.1:{port}"
        async with dock(gateway, url, clip, protocol=dock_protocol) as sim:
            versions = {
                conn.client_id: conn.version
                for conn in gateway.broker.core.connections.values()
                if conn.session
            }
            assert versions[f"dock-sim-{sim.gateway_sn}"] == (5 if dock_protocol == "5" else 4)
            assert [v for k, v in versions.items() if k.startswith("skyrelay-")] == [5]  # the bridge
            client, frames = await play(gateway)
            await frames.wait_frames(10)
            assert len(sim.starts) == 1
            await frames.stop()
            await client.close()
        # Without the log-in, a dock is refused.
        async with asyncio.timeout(10):
            with pytest.raises(aiomqtt.MqttError, match="[Bb]ad user name or password|[Nn]ot authori"):
                async with BrokerAddress("127.0.0.1", port, protocol=dock_protocol).client("intruder"):
                    pass
    finally:
        await gateway.stop()


async def test_no_reply_is_retried_then_fails_after_the_timeout(
    mosquitto: MosquittoProcess, clip: Path
) -> None:
    settings = {"live_reply_timeout": 1.0, "live_max_attempts": 2, "live_retry_backoff": 0.5}
    async with (
        bridged_gateway(mosquitto, **settings) as gateway,
        dock(gateway, mosquitto, clip, DockBehaviour(unresponsive=True)) as sim,
    ):
        client = await WcsClient.connect(f"ws://127.0.0.1:{gateway.config.ws_port}")
        with pytest.raises(WcsError) as failed:
            await client.play(AIRCRAFT_VIDEO, timeout=30)
        assert str(failed.value).endswith(
            "DJI live_start_push failed after 2 attempts: no reply from the device within 1 s"
        )
        assert len(sim.starts) == 2  # retried once with a new tid
        await client.close()


async def test_a_broker_restart_keeps_the_video_flowing_and_new_plays_work(
    drone_gateway: Gateway, mosquitto: MosquittoProcess, clip: Path
) -> None:
    assert drone_gateway.dji is not None
    async with dock(drone_gateway, mosquitto, clip) as sim:
        client, frames = await play(drone_gateway)
        await frames.wait_frames(10)
        await asyncio.to_thread(mosquitto.stop)
        async with asyncio.timeout(10):
            while drone_gateway.dji.mqtt.connected.is_set():
                await asyncio.sleep(0.05)
        before = len(frames.pts)
        await frames.wait_frames(before + 30)  # media does not go through the broker
        await asyncio.to_thread(mosquitto.start)
        async with asyncio.timeout(30):
            await drone_gateway.dji.mqtt.connected.wait()
        await frames.wait_frames(len(frames.pts) + 10)  # the stream never stopped
        assert next(iter(client.streams.values())).status == "PLAYING"
        # Over the new connection: the linger's live_stop_push, then a new play's start.
        await frames.stop()
        await client.close()
        async with asyncio.timeout(15):
            while not sim.stops:
                await asyncio.sleep(0.05)
        again, frames = await play(drone_gateway)
        await frames.wait_frames(10)
        assert len(sim.starts) == 2
        await frames.stop()
        await again.close()


async def test_plays_fail_at_once_while_the_mqtt_link_is_down_and_work_when_it_is_back(
    drone_gateway: Gateway, mosquitto: MosquittoProcess, clip: Path
) -> None:
    """No reply can come over a link that is down: a start in flight fails when the link
    goes, and a play while it is down fails before anything is sent; no reply timeouts,
    no retries (the info says why, which a timeout would not)."""
    assert drone_gateway.dji is not None
    async with dock(drone_gateway, mosquitto, clip) as sim:
        sim.behaviour.reply_delay = 60  # the dock takes the command; its answer is late
        client = await WcsClient.connect(f"ws://127.0.0.1:{drone_gateway.config.ws_port}")
        asked = asyncio.create_task(client.play(AIRCRAFT_VIDEO, timeout=30))
        async with asyncio.timeout(10):
            while not sim.starts:
                await asyncio.sleep(0.05)
        await asyncio.to_thread(mosquitto.stop)
        with pytest.raises(WcsError, match="MQTT link to the device is down: link lost"):
            await asked
        with pytest.raises(WcsError, match="MQTT link to the device is down: not connected to the broker"):
            await client.play(AIRCRAFT_VIDEO, timeout=30)
        assert len(sim.starts) == 1  # neither retried nor sent again
        await client.close()

        sim.behaviour.reply_delay = 0
        await asyncio.to_thread(mosquitto.start)
        async with asyncio.timeout(30):
            await drone_gateway.dji.mqtt.connected.wait()
        again, frames = await play(drone_gateway)
        await frames.wait_frames(10)
        await frames.stop()
        await again.close()


async def test_a_tls_broker_that_wants_passwords(tmp_path: Path, clip: Path) -> None:
    """mqtts:// with user and password, as production brokers (EMQX, Mosquitto) run: the
    gateway and the dock each log in; a wrong password or an unknown CA never connects,
    is logged with the broker's reason, and is retried while the gateway serves on."""
    cert, key = self_signed(tmp_path)
    broker = MosquittoProcess(tmp_path, users={"skyrelay": "gw-s3cret", "dock": "d0ck"}, tls=(cert, key))
    broker.start()
    try:
        gateway_url = f"mqtts://skyrelay:gw-s3cret@127.0.0.1:{broker.port}"
        async with bridged_gateway(broker, mqtt=gateway_url, mqtt_ca_file=str(cert)) as gateway:
            dock_url = f"mqtts://dock:d0ck@127.0.0.1:{broker.port}"
            async with dock(gateway, dock_url, clip, ca_file=str(cert)) as sim:
                client, frames = await play(gateway)
                await frames.wait_frames(10)
                assert len(sim.starts) == 1
                await frames.stop()
                await client.close()

        refused = {
            "Not authorized": (f"mqtts://skyrelay:guess@127.0.0.1:{broker.port}", str(cert)),
            "Not authorized ": (f"mqtts://127.0.0.1:{broker.port}", str(cert)),  # no password
            "CERTIFICATE_VERIFY_FAILED": (gateway_url, None),  # the system's CAs only
        }
        for why, (url, ca_file) in refused.items():
            with structlog.testing.capture_logs() as logs:
                gateway = Gateway(local_config(mqtt=url, mqtt_ca_file=ca_file))
                await gateway.start()
                try:
                    async with asyncio.timeout(15):
                        while sum(entry["event"] == "mqtt_disconnected" for entry in logs) < 2:
                            await asyncio.sleep(0.05)  # tried, and tried again
                    assert gateway.dji is not None and not gateway.dji.mqtt.connected.is_set(), why
                    devices = await http_json(gateway, "/api/devices")  # the gateway serves on
                    assert devices["mqtt_connected"] is False
                finally:
                    await gateway.stop()
            errors = [entry["error"] for entry in logs if entry["event"] == "mqtt_disconnected"]
            assert all(why.strip() in error for error in errors), errors
    finally:
        broker.stop()


async def test_unknown_drone_video_is_not_found(
    drone_gateway: Gateway, mosquitto: MosquittoProcess, clip: Path
) -> None:
    async with dock(drone_gateway, mosquitto, clip):
        client = await WcsClient.connect(f"ws://127.0.0.1:{drone_gateway.config.ws_port}")
        with pytest.raises(WcsError, match="Stream not found"):
            await client.play("SIMAIRCRAFT0001/99-0-0/normal-0")
        await client.close()


async def test_the_commands_together(make_gateway: Any, mosquitto: MosquittoProcess) -> None:
    """`skyrelay serve --mqtt` and `skyrelay dock-sim` as separate processes, as a user runs them."""
    gateway = make_gateway({"SKYRELAY_MQTT": mosquitto.url, "SKYRELAY_LIVE_LINGER": "1"})
    sim = subprocess.Popen(
        [sys.executable, "-m", "gateway", "dock-sim", "--mqtt", mosquitto.url],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        client = await WcsClient.connect(gateway.ws_url)
        async with asyncio.timeout(90):  # the first run encodes the simulator's 720p clip
            while True:
                try:
                    player = await client.play(AIRCRAFT_VIDEO, timeout=30)
                    break
                except WcsError as exc:
                    assert "Stream not found" in str(exc)  # the dock is not announced yet
                    await asyncio.sleep(0.5)
        await player.wait_status("PLAYING", timeout=30)
        counter = FrameCounter(player).start()
        await counter.wait_frames(10)
        assert (counter.frames[-1].width, counter.frames[-1].height) == (1280, 720)
        await counter.stop()
        await client.close()
    finally:
        sim.terminate()
        sim.wait(timeout=10)


async def test_nobody_can_publish_under_a_drone_cameras_name(
    drone_gateway: Gateway, mosquitto: MosquittoProcess, clip: Path
) -> None:
    async with dock(drone_gateway, mosquitto, clip) as sim:
        client = await WcsClient.connect(f"ws://127.0.0.1:{drone_gateway.config.ws_port}")
        with pytest.raises(WcsError, match="Stream name belongs to a device camera"):
            await client.publish(AIRCRAFT_VIDEO, [EncodedVideoTrack(read_access_units(clip))])
        await client.close()
        # As an encoder would: app "live", the drone camera's name as the stream name.
        url = f"rtmp://127.0.0.1:{drone_gateway.config.rtmp_port}/live"
        cmd = ["ffmpeg", "-hide_banner", "-loglevel", "error", "-re", "-stream_loop", "-1", "-i", str(clip)]
        cmd += ["-c", "copy", "-f", "flv", "-rtmp_app", "live", "-rtmp_playpath", AIRCRAFT_VIDEO, url]
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        assert await asyncio.wait_for(asyncio.to_thread(proc.wait), 15) != 0
        assert drone_gateway.registry.find(AIRCRAFT_VIDEO) is None and sim.starts == []


async def test_a_wrong_or_stale_key_is_refused_even_where_anyone_may_publish(
    drone_gateway: Gateway, mosquitto: MosquittoProcess, clip: Path
) -> None:
    """Open access lets an encoder publish rtmp://host/live/{name}; a push whose name is
    shaped like an ingest key is still a key push: refused unless the key is open."""
    assert isinstance(drone_gateway.access, OpenAccess)
    async with dock(drone_gateway, mosquitto, clip) as sim:
        client, frames = await play(drone_gateway)
        await frames.wait_frames(10)
        (start,) = sim.starts
        await frames.stop()
        await client.close()
        async with asyncio.timeout(10):  # linger 1 s, then live_stop_push and the key revoked
            while not sim.stops:
                await asyncio.sleep(0.05)
        stale = str(start["url"])
        base, _, key = stale.rpartition("/")
        assert key.startswith(KEY_PREFIX)
        wrong = f"{base}/{KEY_PREFIX}{'x' * 32}"
        for url in (stale, wrong):
            cmd = ["ffmpeg", "-hide_banner", "-loglevel", "error", "-re", "-i", str(clip)]
            proc = subprocess.Popen([*cmd, "-c", "copy", "-f", "flv", url], stdin=subprocess.DEVNULL)
            try:
                assert await asyncio.wait_for(asyncio.to_thread(proc.wait), 15) != 0, url
            finally:
                proc.kill()
                proc.wait()
            assert drone_gateway.registry.find(url.rsplit("/", 1)[1]) is None
        assert drone_gateway.registry.find(AIRCRAFT_VIDEO) is None
        assert len(sim.starts) == 1


def _topo(*aircraft: str) -> bytes:
    data = {
        "domain": "3",
        "type": 98,
        "sub_type": 0,
        "sub_devices": [{"sn": sn, "type": 91} for sn in aircraft],
    }
    return orjson.dumps({"tid": "t", "bid": "b", "timestamp": 1, "method": "update_topo", "data": data})


async def test_a_flood_of_gateways_and_aircraft_is_refused_past_the_bounds_and_known_docks_keep_working(
    mosquitto: MosquittoProcess, clip: Path, tmp_path: Path
) -> None:
    """The probe's flood (502 gateways, one with 10,000 aircraft), scaled down: 20 gateways
    allowed, 60 announced by one client, one of them with 2,000 aircraft (64 allowed)."""
    state_file = tmp_path / "devices.json"
    max_gateways, flood, big = 20, 60, "FLOODBIG000001"
    with structlog.testing.capture_logs() as logs:
        async with (
            bridged_gateway(
                mosquitto, dji_max_gateways=max_gateways, device_state_file=str(state_file)
            ) as gw,
            dock(gw, mosquitto, clip) as sim,
        ):
            assert gw.dji is not None and gw.dji.state is not None
            started = time.monotonic()
            async with aiomqtt.Client("127.0.0.1", mosquitto.port, identifier="flood") as client:
                await client.publish(f"sys/product/{big}/status", _topo("BIGAIRCRAFT0"), qos=1)
                many = [f"AIRCRAFT{n:06d}" for n in range(2000)]
                for _ in range(3):
                    await client.publish(f"sys/product/{big}/status", _topo(*many), qos=1)
                for n in range(flood):
                    for _ in range(2):
                        await client.publish(f"sys/product/FLOOD{n:09d}/status", _topo(f"AC{n:010d}"), qos=1)
            # The dock and the big gateway are known: 18 of the 60 fit, 42 are refused twice.
            refused_gateways = (flood - (max_gateways - 2)) * 2
            expected = {"too_many_devices": 3, "too_many_gateways": refused_gateways}
            async with asyncio.timeout(30):
                while dict(gw.dji.mqtt.limited) != expected:
                    await asyncio.sleep(0.05)
            assert len(gw.dji.devices.gateways) == max_gateways
            big_topology = gw.dji.devices.gateways[big].topology
            assert big_topology is not None and big_topology.sub_devices == ("BIGAIRCRAFT0",)
            metrics = await asyncio.to_thread(_get_text, f"http://127.0.0.1:{gw.config.http_port}/metrics")
            assert 'skyrelay_dji_messages_rejected_total{reason="too_many_devices"} 3' in metrics
            assert (
                f'skyrelay_dji_messages_rejected_total{{reason="too_many_gateways"}} {refused_gateways}'
                in metrics
            )

            # The known dock keeps working: its camera plays, with frames.
            client2, frames = await play(gw)
            await frames.wait_frames(20)
            assert len(sim.starts) == 1
            await frames.stop()
            await client2.close()

            # 40-odd changes of devices, written at most once a second (plus the first).
            assert gw.dji.devices.revision > max_gateways
            elapsed = time.monotonic() - started
            assert 1 <= gw.dji.state.writes <= 2 + elapsed / gw.dji.state.min_interval
        final = gw.dji.devices.snapshot()
    limits = [entry for entry in logs if entry["event"] == "dji_device_limit"]
    assert sorted((e["reason"], e["gateway_sn"]) for e in limits) == [
        ("too_many_devices", big),
        ("too_many_gateways", f"FLOOD{max_gateways - 2:09d}"),
    ]  # once per gateway, not per message
    # At stop the last state was written: the file holds exactly the registry's final state.
    assert orjson.loads(state_file.read_bytes()) == final
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".devices.json")) == []


def _get_text(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as reply:
        return str(reply.read().decode())
