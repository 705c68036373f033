"""`skyrelay serve --workers 2` over HTTP: /healthz, /metrics, /api/streams and the REST API
answer for the whole machine whichever worker a request lands on, and requests about one
stream by name are answered by the worker holding it.

Each request here is a new connection (the kernel picks its worker); the answer's
``X-Skyrelay-Worker`` says where it landed and ``X-Skyrelay-Forwarded-To`` where it was
passed on.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import urllib.parse
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest_asyncio

from gateway.media.whip_client import WhipClient
from gateway.wcs.client import WcsClient
from tests.conftest import GatewayProcess
from tests.integration.test_workers import TRIES, play_on, worker_of, worker_pids

Reply = tuple[int, dict[str, str], bytes]
NAMES = (f"w-http-{n}" for n in itertools.count())  # each test its own: a name is freed a little later


class Asker:
    def __init__(self, gateway: GatewayProcess, session: aiohttp.ClientSession) -> None:
        self.gateway = gateway
        self.session = session

    async def once(self, method: str, path: str, **kwargs: Any) -> tuple[int, Reply]:
        """One request on a new connection: the worker it landed on, and the answer."""
        async with self.session.request(method, self.gateway.http_url + path, **kwargs) as reply:
            body = await reply.read()
            return int(reply.headers["X-Skyrelay-Worker"]), (reply.status, dict(reply.headers), body)

    async def on_both(self, method: str, path: str, **kwargs: Any) -> dict[int, Reply]:
        """Asked until it landed on both workers: each one's answer. A few at once: one
        after the other, an idle worker can win every accept while the other is busy."""
        seen: dict[int, Reply] = {}
        for _ in range(TRIES):
            for worker, reply in await asyncio.gather(*(self.once(method, path, **kwargs) for _ in range(3))):
                seen.setdefault(worker, reply)
            if len(seen) == 2:
                return seen
            await asyncio.sleep(0.05)
        raise AssertionError(f"{path}: no request landed on both workers in {TRIES} tries")


@pytest_asyncio.fixture
async def ask(workers: GatewayProcess) -> AsyncIterator[Asker]:
    connector = aiohttp.TCPConnector(force_close=True)  # a connection, so a worker, per request
    async with aiohttp.ClientSession(connector=connector) as session:
        yield Asker(workers, session)


@pytest_asyncio.fixture
async def published(
    workers: GatewayProcess, video_track: Callable[[], object]
) -> AsyncIterator[tuple[str, int]]:
    """A stream published on one worker and played on the other (which holds a mirror):
    its name and the worker holding it."""
    opened: list[WcsClient] = []

    async def connect() -> WcsClient:
        opened.append(await WcsClient.connect(workers.ws_url))
        return opened[-1]

    name = next(NAMES)
    publisher = await (await connect()).publish(name, [video_track()])
    await publisher.wait_status("PUBLISHING")
    owner = worker_of(publisher, workers)
    _, player = await play_on(connect, workers, name, 1 - owner)
    await player.wait_status("PLAYING")
    try:
        yield name, owner
    finally:
        await asyncio.gather(*(client.close() for client in opened), return_exceptions=True)


def samples(text: str, name: str) -> dict[str, float]:
    """The samples of one family: labels -> value."""
    found = {}
    for line in text.splitlines():
        key, _, value = line.rpartition(" ")
        if key == name or key.startswith(name + "{"):
            found[key[len(name) :]] = float(value)
    return found


async def test_machine_figures_whichever_worker_answers(ask: Asker, published: tuple[str, int]) -> None:
    name, owner = published
    for worker, (status, _, body) in (await ask.on_both("GET", "/healthz")).items():
        health = json.loads(body)
        assert status == 200 and health["status"] == "ok", (worker, health)
        assert (health["streams"], health["mirrors"]) == (1, 1), health  # the mirror is not a stream
        assert health["sessions"] >= 2 and health["peer_connections"] >= 2
        listed = {entry["index"]: entry for entry in health["workers"]}
        assert set(listed) == {0, 1} and all(entry["up"] and entry["answering"] for entry in listed.values())
        assert (listed[owner]["streams"], listed[1 - owner]["mirrors"]) == (1, 1)

    for worker, (status, _, body) in (await ask.on_both("GET", "/metrics")).items():
        text = body.decode()
        assert status == 200 and text.count("# TYPE skyrelay_streams gauge") == 1, worker
        assert samples(text, "skyrelay_streams") == {
            f'{{worker="{owner}"}}': 1,
            f'{{worker="{1 - owner}"}}': 0,
        }
        viewers = samples(text, "skyrelay_stream_viewers")
        assert list(viewers) == [f'{{worker="{owner}",stream="{name}",ingest="webrtc"}}'], viewers
        assert samples(text, "skyrelay_workers") == {"": 2}
        assert samples(text, "skyrelay_websocket_connections").keys() == {'{worker="0"}', '{worker="1"}'}

    for worker, (status, _, body) in (await ask.on_both("GET", "/api/streams")).items():
        streams = json.loads(body)["streams"]
        assert status == 200
        assert [(s["name"], s["worker"]) for s in streams] == [(name, owner)], (worker, streams)

    for worker, (status, _, body) in (await ask.on_both("GET", "/rest-api/stream/find_all")).items():
        entries = json.loads(body)
        assert status == 200, worker
        assert sorted((e["name"], e["published"]) for e in entries) == [(name, False), (name, True)], entries
    found = await ask.on_both("POST", "/rest-api/stream/find", json={"name": name, "published": True})
    assert all(status == 200 for status, _, _ in found.values())


async def test_requests_about_a_stream_are_answered_by_its_worker(
    ask: Asker, published: tuple[str, int]
) -> None:
    name, owner = published
    quoted = urllib.parse.quote(name)

    def answered_by(worker: int, headers: dict[str, str]) -> int:
        return int(headers.get("X-Skyrelay-Forwarded-To", worker))

    for worker, (status, headers, body) in (await ask.on_both("GET", f"/api/streams/{quoted}")).items():
        assert status == 200 and json.loads(body)["name"] == name
        assert answered_by(worker, headers) == owner

    for _ in range(TRIES):  # the first keyframe may still be on its way (503)
        replies = await ask.on_both("GET", f"/api/streams/{quoted}/thumbnail.jpg?width=160")
        if all(status == 200 for status, _, _ in replies.values()):
            break
        await asyncio.sleep(0.2)
    for worker, (status, headers, body) in replies.items():
        assert status == 200 and headers["Content-Type"] == "image/jpeg" and body[:2] == b"\xff\xd8"
        assert answered_by(worker, headers) == owner

    # HLS from one packager, its worker's, whichever worker each request lands on.
    for _ in range(TRIES):  # packaging starts with the first request and waits for a segment
        playlists = await ask.on_both("GET", f"/hls/{quoted}/index.m3u8")
        if all(status == 200 for status, _, _ in playlists.values()):
            break
        await asyncio.sleep(0.2)
    listed = [line for line in playlists[owner][2].decode().splitlines() if line.startswith("seg-")]
    segments = await ask.on_both("GET", f"/hls/{quoted}/{listed[0]}")
    assert len({body for status, _, body in segments.values() if status == 200}) == 1, segments.keys()
    assert all(answered_by(w, headers) == owner for w, (_, headers, _) in segments.items())

    snapshot = await ask.on_both("POST", "/rest-api/stream/snapshot", json={"streamName": name})
    for status, headers, body in snapshot.values():
        assert status == 200 and b'"data"' in body, (status, headers, body[:300])

    # A control (loopback only without api_token): the worker holding it sees the client's
    # address, so it is not refused (403) but answered (no device behind this stream: 404).
    # A client cannot pose as another address (here one that would be refused) either.
    control = await ask.on_both(
        "POST",
        f"/api/streams/{quoted}/quality",
        json={"video_quality": 1},
        headers={"x-skyrelay-peer": "203.0.113.9"},
    )
    for worker, (status, headers, body) in control.items():
        assert status == 404 and b"No device" in body, body
        assert answered_by(worker, headers) == owner

    # Server-Sent Events come through as they are sent: the headers before any event.
    for _ in range(TRIES):
        url = f"{ask.gateway.http_url}/api/streams/{quoted}/telemetry"
        async with ask.session.get(url) as reply:
            assert reply.status == 200 and reply.headers["Content-Type"] == "text/event-stream"
            # (Answered where it landed, an event stream has sent its headers before ours.)
            if reply.headers.get("X-Skyrelay-Forwarded-To") == str(owner):
                assert reply.headers["X-Skyrelay-Worker"] == str(1 - owner)
                break
    else:
        raise AssertionError("no SSE request landed on the worker not holding the stream")


async def test_calls_by_id_and_lists_answer_for_the_machine(
    workers: GatewayProcess, ask: Asker, published: tuple[str, int], video_track: Callable[[], object]
) -> None:
    name, owner = published
    # A list: every worker's WebSocket connections (the publisher on one, the player on the
    # other), whichever worker answers; the same for the RTMP republishes (none: an empty list).
    for worker, (status, _, body) in (await ask.on_both("GET", "/rest-api/connection/find_all")).items():
        connections = json.loads(body)
        assert status == 200 and len(connections) == 2, (worker, connections)
        assert all(len(c["mediaSessions"]) == 1 for c in connections)
    for status, _, body in (await ask.on_both("POST", "/rest-api/push/find_all", json={})).values():
        assert (status, json.loads(body)) == (200, [])

    # By id: a WHIP session deleted by a DELETE that landed on the worker without it.
    for attempt in range(TRIES):
        whip = WhipClient(f"{workers.http_url}/whip/{name}-whip-{attempt}", video_track())
        await whip.start()
        assert whip.resource is not None
        holder = await stream_worker(ask, f"{name}-whip-{attempt}")
        landed, (status, headers, body) = await ask.once("DELETE", urllib.parse.urlparse(whip.resource).path)
        await whip.pc.close()
        assert status == 200, body
        if landed != holder:
            assert headers["X-Skyrelay-Forwarded-To"] == str(holder)
            break
    else:
        raise AssertionError(f"no DELETE landed on the worker not holding the session in {TRIES} tries")

    # By id: a WCS media session terminated through a worker that does not have it.
    client = await WcsClient.connect(workers.ws_url)
    try:
        for attempt in range(TRIES):
            publisher = await client.publish(f"{name}-term-{attempt}", [video_track()])
            await publisher.wait_status("PUBLISHING")
            holder = worker_of(publisher, workers)
            landed, (status, headers, body) = await ask.once(
                "POST", "/rest-api/stream/terminate", json={"mediaSessionId": publisher.media_session_id}
            )
            assert status == 200 and json.loads(body)["status"] == "terminated", body
            await publisher.wait_status("UNPUBLISHED", "FAILED")
            if landed != holder:
                assert headers["X-Skyrelay-Forwarded-To"] == str(holder)
                break
        else:
            raise AssertionError(
                f"no terminate landed on the worker not holding the session in {TRIES} tries"
            )
    finally:
        await client.close()
    # An id no worker knows: 404 from the worker it landed on.
    for status, _, body in (
        await ask.on_both("POST", "/rest-api/stream/terminate", json={"mediaSessionId": "no-such-session"})
    ).values():
        assert status == 404 and b"no-such-session" in body


async def stream_worker(ask: Asker, name: str) -> int:
    """The worker holding ``name`` (from the machine's /api/streams, once it is listed)."""
    for _ in range(TRIES):
        _, (_, _, body) = await ask.once("GET", "/api/streams")
        held = [s["worker"] for s in json.loads(body)["streams"] if s["name"] == name]
        if held:
            return int(held[0])
        await asyncio.sleep(0.1)
    raise AssertionError(f"{name!r} never listed")


async def test_a_killed_worker_shows_then_comes_back(workers: GatewayProcess, ask: Asker) -> None:
    pids = worker_pids(workers)
    os.kill(pids[1], signal.SIGKILL)
    async with asyncio.timeout(30):
        while True:  # seen down (not running, or not answering) by the worker still up
            _, (_, _, body) = await ask.once("GET", "/healthz")
            health = json.loads(body)
            gone = health["workers"][1]
            if not gone["answering"]:
                assert health["status"] == "degraded" and health["problems"], health
                break
            await asyncio.sleep(0.05)
        while True:  # restarted and answering again
            _, (_, _, body) = await ask.once("GET", "/healthz")
            health = json.loads(body)
            back = health["workers"][1]
            if health["status"] == "ok" and back["pid"] != pids[1]:
                break
            await asyncio.sleep(0.1)
    assert back["restarts"] == 1 and back["up"] and back["answering"]
    _, (_, _, body) = await ask.once("GET", "/metrics")
    text = body.decode()
    assert samples(text, "skyrelay_worker_restarts_total") == {'{worker="0"}': 0, '{worker="1"}': 1}
    assert samples(text, "skyrelay_worker_up") == {'{worker="0"}': 1, '{worker="1"}': 1}
