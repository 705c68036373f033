"""Every WebRTC session on one UDP port and one ICE-TCP port (--webrtc-udp-port,
--webrtc-tcp-port): aiortc publishers and players over both, the answer's candidates, the
gateway's socket count, bad input on both ports, and a TCP viewer that stops draining."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import resource
import socket
from collections.abc import Awaitable, Callable

import aiohttp
import aioice.ice
import pytest
from aioice import stun
from aiortc import RTCConfiguration, RTCPeerConnection

from gateway.app import Gateway
from gateway.media.sinks.webrtc import WebRtcViewer
from gateway.media.synthetic import EncodedVideoTrack
from gateway.media.webrtc import fanout, icemux
from gateway.media.webrtc.demux import frame
from gateway.media.whip_client import WhipClient
from gateway.wcs.client import WcsClient, WcsError
from tests.conftest import GatewayProcess, free_port
from tests.integration.conftest import FrameCounter, local_config
from tests.integration.ice_tcp import IceTcpPath
from tests.integration.witness import Witness

# The ports of one process (its sockets, candidates and tables); with several workers each
# has its own pair, port + i: tests/integration/test_workers.py.
GATEWAY_WORKERS = 1

Connect = Callable[[], Awaitable[WcsClient]]
TrackFactory = Callable[[], EncodedVideoTrack]
CANDIDATE = re.compile(r"a=candidate:\S+ 1 (udp|tcp) \d+ (\S+) (\d+) typ (\S+)(?: tcptype (\S+))?", re.I)


def candidates(sdp: str) -> set[tuple[str, str, int, str | None]]:
    """(transport, address, port, tcptype) of each candidate in ``sdp``."""
    return {(m.group(1).lower(), m.group(2), int(m.group(3)), m.group(5)) for m in CANDIDATE.finditer(sdp)}


async def test_publish_and_play_over_ice_tcp(
    gateway: GatewayProcess, connect: Connect, video_track: TrackFactory
) -> None:
    path_pub, path_play = IceTcpPath(), IceTcpPath()
    pub_client = await connect()
    publisher = await pub_client.publish("tcp-both", [video_track()], transport="TCP", before_answer=path_pub)
    await publisher.wait_status("PUBLISHING")
    port = gateway.webrtc_port
    assert candidates(publisher.pc.remoteDescription.sdp) == {("tcp", "127.0.0.1", port, "passive")}
    client = await connect()
    player = await client.play("tcp-both", transport="TCP", before_answer=path_play)
    await player.wait_status("PLAYING")
    counter = FrameCounter(player).start()
    await counter.wait_frames(30)
    ports = gateway.health()["webrtc_ports"]
    assert ports["tcp_connections"] == 2 and ports["udp_addresses"] == 0
    await counter.stop()


def udp_sockets(pid: int) -> int:
    """UDP sockets the process ``pid`` holds (its fds matched with /proc/net/udp{,6})."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    udp = set()
    for table in ("udp", "udp6"):
        with open(f"/proc/{pid}/net/{table}") as fh:
            for line in fh.readlines()[1:]:
                udp.add(line.split()[9])
    return len(inodes & udp)


async def test_twenty_sessions_share_one_udp_socket(
    gateway: GatewayProcess, connect: Connect, video_track: TrackFactory
) -> None:
    before = udp_sockets(gateway.pid)
    pub_client = await connect()
    publisher = await pub_client.publish("udp-twenty", [video_track()])
    await publisher.wait_status("PUBLISHING")
    port = gateway.webrtc_port
    # The answer names exactly the two shared ports, UDP preferred by priority.
    assert candidates(publisher.pc.remoteDescription.sdp) == {
        ("udp", "127.0.0.1", port, None),
        ("tcp", "127.0.0.1", port, "passive"),
    }
    priorities = {
        m.group(1).lower(): int(m.group(0).split()[3])
        for m in CANDIDATE.finditer(publisher.pc.remoteDescription.sdp)
    }
    assert priorities["udp"] > priorities["tcp"]
    players = []
    for _ in range(19):
        client = await connect()
        players.append(await client.play("udp-twenty", kinds=("video",)))
    for player in players:
        await player.wait_status("PLAYING")
    counter = FrameCounter(players[-1]).start()
    await counter.wait_frames(30)
    ports = gateway.health()["webrtc_ports"]
    assert ports["sessions"] == 20 and ports["udp_addresses"] == 20
    assert udp_sockets(gateway.pid) == before, "the gateway's UDP sockets grew with sessions"
    await counter.stop()
    for player in players:
        await player.client.close()
    await pub_client.close()
    async with asyncio.timeout(10):  # every session that ended left the tables
        while (ports := gateway.health()["webrtc_ports"])["sessions"] or ports["udp_addresses"]:
            await asyncio.sleep(0.1)


def binding_request(username: str, password: bytes) -> bytes:
    request = stun.Message(message_method=stun.Method.BINDING, message_class=stun.Class.REQUEST)
    request.attributes["USERNAME"] = username
    request.attributes["PRIORITY"] = 1
    request.add_message_integrity(password)
    return bytes(request)


def ice_credentials(sdp: str) -> tuple[str, str]:
    ufrag = re.search(r"a=ice-ufrag:(\S+)", sdp)
    pwd = re.search(r"a=ice-pwd:(\S+)", sdp)
    assert ufrag and pwd
    return ufrag.group(1), pwd.group(1)


async def until_metric(gateway: GatewayProcess, at_least: float, name: str, **labels: str) -> None:
    async with asyncio.timeout(20):
        while gateway.metric(name, **labels) < at_least:
            await asyncio.sleep(0.1)


async def test_bad_datagrams_on_the_udp_port_are_dropped_and_counted(
    gateway: GatewayProcess, connect: Connect, video_track: TrackFactory
) -> None:
    witness = await Witness.start(gateway.ws_url, video_track(), gateway, "udp-witness")
    ufrag, _ = ice_credentials(witness.player.pc.remoteDescription.sdp)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    target = ("127.0.0.1", gateway.webrtc_port)
    try:
        for index in range(50):
            sock.sendto(os.urandom(1 + index * 20), target)  # garbage
            sock.sendto(b"\x80\x60" + os.urandom(170), target)  # RTP from an address ICE never checked
            sock.sendto(binding_request(f"nosuch{index}:x", b"x" * 22), target)  # unknown ufrag
            sock.sendto(binding_request(f"{ufrag}:x", b"not the password"), target)  # wrong integrity
            sock.sendto(b"\x00\x01\x00\x08\x21\x12\xa4\x42" + b"\x00" * 12, target)  # cut short
    finally:
        sock.close()
    counter = "skyrelay_webrtc_dropped_total"
    await until_metric(gateway, 50, counter, transport="udp", reason="unknown_ufrag")
    await until_metric(gateway, 50, counter, transport="udp", reason="bad_integrity")
    await until_metric(gateway, 50, counter, transport="udp", reason="malformed_stun")
    await until_metric(gateway, 50, counter, transport="udp", reason="not_stun")
    await witness.assert_streaming()
    assert gateway.health()["webrtc_ports"]["udp_addresses"] == 2  # nothing bound the attacker
    await witness.stop()


async def test_bad_tcp_clients_are_closed_and_counted(
    make_gateway: Callable[[dict[str, str]], GatewayProcess], video_track: TrackFactory
) -> None:
    raise_fd_limit(4096)
    # A thousand connections from one address are what this test sends on purpose.
    gateway = make_gateway({"SKYRELAY_ICE_TIMEOUT": "3", "SKYRELAY_MAX_CONNECTIONS_PER_IP": "2000"})
    witness = await Witness.start(gateway.ws_url, video_track(), gateway, "tcp-witness")
    ufrag, _ = ice_credentials(witness.player.pc.remoteDescription.sdp)
    port = gateway.webrtc_port
    closed = "skyrelay_webrtc_tcp_closed_total"

    async def closed_by_server(writer: asyncio.StreamWriter, reader: asyncio.StreamReader) -> None:
        async with asyncio.timeout(15):
            with contextlib.suppress(ConnectionError):
                while await reader.read(65536):
                    pass
        writer.close()

    # Never sends; declares a 65535-byte frame and stops: closed at the ICE timeout.
    silent = await asyncio.open_connection("127.0.0.1", port)
    partial = await asyncio.open_connection("127.0.0.1", port)
    partial[1].write(b"\xff\xff" + b"\x00" * 1000)
    # Floods garbage; sends a badly signed check: closed at once.
    flood = await asyncio.open_connection("127.0.0.1", port)
    flood[1].write((b"\x00\x20" + b"\x17" * 32) * 30000)
    forged = await asyncio.open_connection("127.0.0.1", port)
    forged[1].write(frame(binding_request(f"{ufrag}:x", b"not the password")))
    await closed_by_server(flood[1], flood[0])
    await closed_by_server(forged[1], forged[0])
    await until_metric(gateway, 1, closed, reason="not_stun")
    await until_metric(gateway, 1, closed, reason="bad_integrity")
    await closed_by_server(silent[1], silent[0])
    await closed_by_server(partial[1], partial[0])
    await until_metric(gateway, 2, closed, reason="ice_timeout")

    # A thousand connections that never check in: every one held until the ICE timeout closes
    # it (none refused, none closed for another reason). Opening them can itself take longer
    # than the timeout on a loaded machine, so the count that proves it is the closes, not a
    # moment when all thousand are pending at once.
    crowd = [await asyncio.open_connection("127.0.0.1", port) for _ in range(1000)]
    await until_metric(gateway, 1002, closed, reason="ice_timeout")
    for reader, writer in crowd:
        await closed_by_server(writer, reader)
    assert gateway.metric(closed, reason="ice_timeout") == 1002
    assert gateway.metric("skyrelay_webrtc_tcp_connections", state="pending") == 0
    await witness.assert_streaming()
    await witness.stop()


def raise_fd_limit(wanted: int) -> None:
    """Enough descriptors for a thousand connections, in this process and the gateways it
    starts after (a fresh Debian gives 1024)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(wanted, hard), hard))


async def test_a_tcp_viewer_that_stops_draining_skips_to_a_keyframe_and_stalls_no_one(
    local_gateway: Gateway, video_track: TrackFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Congested sooner than in production (512 KiB unsent behind a 256 KiB kernel buffer):
    # the clip here is 300 kbit/s.
    monkeypatch.setattr(fanout, "MAX_UNSENT_BYTES", 16 * 1024)
    monkeypatch.setattr(icemux, "TCP_SEND_BUFFER", 8 * 1024)
    url = f"ws://127.0.0.1:{local_gateway.config.ws_port}"
    clients = [await WcsClient.connect(url) for _ in range(3)]
    try:
        publisher = await clients[0].publish("tcp-slow", [video_track()])
        await publisher.wait_status("PUBLISHING")
        steady = await clients[1].play("tcp-slow", kinds=("video",))
        path = IceTcpPath(receive_buffer=4096)
        slow = await clients[2].play("tcp-slow", kinds=("video",), transport="TCP", before_answer=path)
        await steady.wait_status("PLAYING")
        await slow.wait_status("PLAYING")
        steady_frames, slow_frames = FrameCounter(steady).start(), FrameCounter(slow).start()
        await slow_frames.wait_frames(30)
        viewer = next(
            media
            for connection in local_gateway.wcs.connections
            for msid, media in connection.media.items()
            if msid == slow.media_session_id
        )
        assert isinstance(viewer, WebRtcViewer) and viewer.subscription is not None
        stream = local_gateway.registry.get("tcp-slow")
        assert stream is not None

        path.pause()
        pushed, seen = stream.inbound.total_frames, len(steady_frames.pts)
        async with asyncio.timeout(30):
            while viewer.subscription.video.dropped == 0:
                await asyncio.sleep(0.1)
        await steady_frames.wait_frames(seen + 60)
        # The other viewer got what the stream received meanwhile: no stall behind the TCP one.
        assert len(steady_frames.pts) - seen >= 0.9 * (stream.inbound.total_frames - pushed)

        path.resume()
        resumed = len(slow_frames.pts)
        await slow_frames.wait_frames(resumed + 30)  # decodes again: it restarted at a keyframe
        assert slow.status == "PLAYING"
        await steady_frames.stop()
        await slow_frames.stop()
    finally:
        for client in clients:
            await client.close()


async def test_tcp_asked_of_a_gateway_without_ice_tcp_fails_clearly(
    make_gateway: Callable[[dict[str, str]], GatewayProcess], video_track: TrackFactory
) -> None:
    gateway = make_gateway({"SKYRELAY_WEBRTC_TCP_PORT": "0", "SKYRELAY_WEBRTC_UDP_PORT": str(free_port())})
    client = await WcsClient.connect(gateway.ws_url)
    try:
        with pytest.raises(WcsError, match="WebRTC over TCP is off on this server"):
            await client.publish("no-tcp", [video_track()], transport="TCP")
        publisher = await client.publish("no-tcp", [video_track()])  # the same name, over UDP: fine
        await publisher.wait_status("PUBLISHING")
        assert {c[0] for c in candidates(publisher.pc.remoteDescription.sdp)} == {"udp"}
    finally:
        await client.close()


async def test_public_ip_and_whip_and_whep_answers_name_both_ports(video_track: TrackFactory) -> None:
    gateway = Gateway(local_config(public_ip="203.0.113.7"))
    await gateway.start()
    client = await WcsClient.connect(f"ws://127.0.0.1:{gateway.config.ws_port}")
    whep = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    try:
        publisher = await client.publish("public", [video_track()])
        await publisher.wait_status("PUBLISHING")
        port = gateway.config.webrtc_udp_port
        both = {(transport, address, port, tcptype)
                for transport, tcptype in (("udp", None), ("tcp", "passive"))
                for address in ("127.0.0.1", "203.0.113.7")}  # fmt: skip
        assert candidates(publisher.pc.remoteDescription.sdp) == both
        whep.addTransceiver("video", direction="recvonly")
        await whep.setLocalDescription(await whep.createOffer())
        url = f"http://127.0.0.1:{gateway.config.http_port}/whep/public"
        headers = {"Content-Type": "application/sdp"}
        async with (
            aiohttp.ClientSession() as http,
            http.post(url, data=whep.localDescription.sdp, headers=headers) as reply,
        ):
            assert reply.status == 201
            assert candidates(await reply.text()) == both
        whip = WhipClient(f"http://127.0.0.1:{gateway.config.http_port}/whip/public-whip", video_track())
        await whip.start()
        assert candidates(whip.pc.remoteDescription.sdp) == both
        await whip.stop()
    finally:
        await whep.close()
        await client.close()
        await gateway.stop()


def ipv6_loopback() -> bool:
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sock:
        sock.bind(("::1", 0))
        return True
    return False


@pytest.mark.skipif(not ipv6_loopback(), reason="no IPv6 loopback on this machine")
async def test_ipv6_publish_over_udp_and_play_over_tcp(
    video_track: TrackFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The ICE addresses are process-wide (aioice's): this test's ::1 must not outlive it.
    monkeypatch.setattr(aioice.ice, "get_host_addresses", aioice.ice.get_host_addresses)
    gateway = Gateway(local_config(host="::1", ice_addresses=("::1",)))
    await gateway.start()
    client = await WcsClient.connect(f"ws://[::1]:{gateway.config.ws_port}")
    try:
        publisher = await client.publish("v6", [video_track()])
        await publisher.wait_status("PUBLISHING")
        port = gateway.config.webrtc_udp_port
        assert candidates(publisher.pc.remoteDescription.sdp) == {
            ("udp", "::1", port, None),
            ("tcp", "::1", port, "passive"),
        }
        player = await client.play("v6", kinds=("video",), transport="TCP", before_answer=IceTcpPath())
        await player.wait_status("PLAYING")
        counter = FrameCounter(player).start()
        await counter.wait_frames(30)
        await counter.stop()
        ports = gateway.health()["webrtc_ports"]
        assert (ports["udp_addresses"], ports["tcp_connections"]) == (1, 1)
    finally:
        await client.close()
        await gateway.stop()


async def test_ice_tcp_connections_from_one_address_are_limited(
    make_gateway: Callable[[dict[str, str]], GatewayProcess], video_track: TrackFactory
) -> None:
    gateway = make_gateway({"SKYRELAY_MAX_CONNECTIONS_PER_IP": "5"})
    witness = await Witness.start(gateway.ws_url, video_track(), gateway, "limit-witness")
    held = [await asyncio.open_connection("127.0.0.1", gateway.webrtc_port) for _ in range(5)]
    await until_metric(gateway, 5, "skyrelay_webrtc_tcp_connections", state="pending")
    over = [await asyncio.open_connection("127.0.0.1", gateway.webrtc_port) for _ in range(3)]
    await until_metric(gateway, 3, "skyrelay_connections_refused_total", port_kind="webrtc_tcp")
    for reader, _writer in over:  # refused at once: closed by the gateway
        async with asyncio.timeout(10):
            with contextlib.suppress(ConnectionError):
                assert await reader.read() == b""
    assert gateway.metric("skyrelay_webrtc_tcp_connections", state="pending") == 5
    assert len(gateway.log_events("connections_refused", port_kind="webrtc_tcp")) == 1
    for _reader, writer in held + over:
        writer.close()
    await witness.assert_streaming()
    await witness.stop()
