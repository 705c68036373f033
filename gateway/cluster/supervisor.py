"""The control process of ``--workers N``: it owns what there is one of per machine and
supervises the media workers.

- The listening sockets (WebSocket, HTTP, RTMP, RTSP) are bound here once and inherited by
  every worker, which all accept on them: the kernel hands each connection to one worker,
  a busy port fails the start once with the part's name, port 0 means one port for all, and
  a restarted worker accepts on the same socket (nothing queued is lost with a worker).
- The embedded MQTT broker runs here (one per machine, whatever N).
- The stream-name directory (`directory.Directory`): a name is unique across workers.
- Each worker is a process (``python -m gateway _worker``) with a control channel (a socket
  pair); one that dies is started again after a capped backoff and its names are freed.
  Workers stop when the control process goes (their channel closes).

Per-worker settings (each its own WebRTC UDP/TCP port, RTSP UDP pair) are made in one
place, `worker_config`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import shutil
import signal
import socket
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

from gateway.cluster import machine, wire
from gateway.cluster.channel import CALL_TIMEOUT_S, CallFailed, Channel, Handler
from gateway.cluster.directory import Directory, Notice
from gateway.cluster.shared_counts import COUNTS_FILE, SharedCounts
from gateway.config import Config
from gateway.heap import freeze_startup
from gateway.log import get_logger
from gateway.net_limits import LISTEN_BACKLOG, ConnectionLimits
from gateway.reconnect import ReconnectDelay
from gateway.tasks import TaskSet

log = get_logger(__name__)

# A worker that ran this long before it died is restarted at once (not a crash loop).
STABLE_RUN_S = 30.0
STOP_GRACE_S = 10.0
START_TIMEOUT_S = 60.0
# How long the owner of a name may take to hand it over: shorter than the taker's own call,
# so the directory decides (and puts things back) before the taker gives up.
HAND_OVER_TIMEOUT_S = CALL_TIMEOUT_S / 2


def worker_config(config: Config, index: int) -> Config:
    """The settings of worker ``index``: its own WebRTC ports and RTSP UDP pair (from the
    configured ones up: a range). The MQTT settings stay: they say where the machine's broker
    is, for the worker's SD view; the broker and the DJI bridge run only here (a worker's
    gateway builds neither)."""

    def shifted(port: int, step: int) -> int:
        return port + step * index if port else 0

    return dataclasses.replace(
        config,
        webrtc_udp_port=shifted(config.webrtc_udp_port, 1),
        webrtc_tcp_port=shifted(config.webrtc_tcp_port, 1),
        rtsp_udp_port=shifted(config.rtsp_udp_port, 2),
        device_state_file="off",
    )


def config_message(config: Config) -> dict[str, Any]:
    """``config`` as JSON (read back with `config_from_message`)."""
    values: dict[str, Any] = {}
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        values[field.name] = (
            str(value) if isinstance(value, Path) else list(value) if isinstance(value, tuple) else value
        )
    return values


def config_from_message(values: dict[str, Any]) -> Config:
    return Config().with_overrides(values)


# name -> (setting of its port, the part's name for errors)
LISTENERS = {
    "ws": ("ws_port", "WebSocket API"),
    "http": ("http_port", "HTTP server"),
    "rtmp": ("rtmp_port", "RTMP ingest"),
    "rtsp": ("rtsp_port", "RTSP server"),
}


class ListenError(OSError):
    """A listening port could not be bound; the message names the part."""


class WorkersFailed(RuntimeError):
    """A worker could not start (its own log line says why)."""


def bind_listeners(config: Config) -> dict[str, socket.socket]:
    """Every TCP port workers accept on, bound and listening (a port of 0 is off for RTMP
    and RTSP, any free port for the others)."""
    sockets: dict[str, socket.socket] = {}
    try:
        for name, (setting, part) in LISTENERS.items():
            port = getattr(config, setting)
            if port == 0 and name in ("rtmp", "rtsp"):
                continue
            try:
                sockets[name] = _listen(config.host, port)
            except OSError as exc:
                raise ListenError(f"{part} could not start: {exc}") from exc
    except BaseException:
        for sock in sockets.values():
            sock.close()
        raise
    return sockets


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(LISTEN_BACKLOG)
        sock.setblocking(False)
        sock.set_inheritable(True)
    except BaseException:
        sock.close()
        raise
    return sock


class WorkerProcess:
    """One worker: its process, its control channel, its restarts."""

    def __init__(self, supervisor: Supervisor, index: int) -> None:
        self.supervisor = supervisor
        self.index = index
        self.process: asyncio.subprocess.Process | None = None
        # Said hello: it gets directory changes from now on (and the whole directory first).
        self.linked = asyncio.Event()
        self.ready = asyncio.Event()  # its gateway started: it accepts connections
        self.restarts = 0
        self.channel: Channel | None = None
        # Its viewers of device cameras, by stream name: let go when it dies.
        self.wants: Counter[str] = Counter()
        self._delay = ReconnectDelay(0.5, 10.0)

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    @property
    def running(self) -> bool:
        """Its gateway started and it has not died since."""
        return self.ready.is_set()

    def send(self, message: dict[str, Any]) -> None:
        if self.channel is not None:
            self.channel.send(message)

    async def call(self, op: str, **fields: Any) -> Any:
        """Ask this worker (CallFailed if it cannot answer)."""
        if self.channel is None or not self.ready.is_set():
            raise CallFailed(f"worker {self.index} is not running")
        return await self.channel.call(op, **fields)

    async def run(self) -> None:
        """Start the worker, and again each time it dies, until cancelled."""
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            code = await self._run_once()
            self.ready.clear()
            self.linked.clear()
            if self.supervisor.counts is not None:
                self.supervisor.counts.clear_worker(self.index)  # its connections died with it
            for notice in self.supervisor.directory.worker_gone(self.index):
                self.supervisor.deliver(notice)
                if notice.message["op"] == "released":
                    self.supervisor.streams.report(notice.message["name"], playing=False)
            # Its viewers went with it: the cameras they watched may linger and stop.
            wants, self.wants = self.wants, Counter()
            for name, count in wants.items():
                for _ in range(count):
                    self.supervisor.streams.unwant(name)
            if loop.time() - started > STABLE_RUN_S:
                self._delay.reset()
            delay = self._delay.next()
            self.restarts += 1
            log.error("worker_died", worker=self.index, exit_code=code, restart_in=delay)
            await asyncio.sleep(delay)

    async def _run_once(self) -> int | None:
        supervisor = self.supervisor
        ours, theirs = socket.socketpair()
        listeners = {name: sock.fileno() for name, sock in supervisor.listeners.items()}
        try:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "gateway",
                "_worker",
                "--control-fd",
                str(theirs.fileno()),
                pass_fds=[theirs.fileno(), *listeners.values()],
                start_new_session=True,  # a Ctrl-C reaches the control process only
            )
        finally:
            theirs.close()
        reader, writer = await asyncio.open_unix_connection(sock=ours)
        handlers = supervisor.handlers(self)
        self.channel = Channel(reader, writer, self._message, handlers, f"worker {self.index}")
        self.send(
            {
                "op": "start",
                "index": self.index,
                "config": config_message(worker_config(supervisor.config, self.index)),
                "listeners": listeners,
                "runtime_dir": str(supervisor.runtime_dir),
                "workers": len(supervisor.workers),
            }
        )
        log.info("worker_started", worker=self.index, pid=self.process.pid)
        try:
            await self.channel.run()
        except (ConnectionError, wire.WireError) as exc:
            log.error("worker_control_broken", worker=self.index, error=str(exc))
            self.process.kill()
        finally:
            self.channel.close()
            self.channel = None
        return await self.process.wait()

    def _message(self, message: dict[str, Any]) -> None:
        directory = self.supervisor.directory
        match message:
            case {"op": "hello", "endpoint": str(endpoint)}:
                self.linked.set()
                for message in self.supervisor.snapshot():
                    self.send(message)
                notices = directory.hello(self.index, endpoint)  # the names come last: "synced"
            case {"op": "started"}:
                self.ready.set()
                return
            case {"op": "stopping"}:
                self.ready.clear()
                return
            case {"op": "claim", "name": str(name)}:
                notices = directory.claim(self.index, name)
            case {"op": "release", "name": str(name)}:
                notices = directory.release(self.index, name)
            case {"op": "want", "name": str(name)}:
                self.wants[name] += 1
                self.supervisor.streams.want(name)
                return
            case {"op": "unwant", "name": str(name)}:
                if self.wants[name] > 0:
                    self.wants[name] -= 1
                    self.supervisor.streams.unwant(name)
                return
            case {"op": "playing", "name": str(name)}:
                # A worker that handed the name over may still report it stopped: not its own.
                if directory.owners.get(name, self.index) == self.index:
                    self.supervisor.streams.report(name, message.get("playing") is True)
                return
            case _:
                log.warning("worker_message_unknown", worker=self.index, op=message.get("op"))
                return
        for notice in notices:
            self.supervisor.deliver(notice)

    async def stop(self) -> None:
        process = self.process
        if process is None or process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(STOP_GRACE_S):
                await process.wait()
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()


class Supervisor:
    """``skyrelay serve --workers N``: the control process (see the module's text)."""

    def __init__(self, config: Config, workers: int) -> None:
        # One broker and one DJI bridge per machine, built as the gateway builds its own.
        from gateway.app import dji_bridge, embedded_broker
        from gateway.cluster.devices import MachineStreams, RemotePull, SharedIngestKeys

        self.config = config
        self.directory = Directory()
        self.workers = [WorkerProcess(self, index) for index in range(workers)]
        self.listeners: dict[str, socket.socket] = {}
        self.runtime_dir = Path()
        # The broker's port is the control process's alone: its per-address count is too.
        self.connection_limits = ConnectionLimits(config.max_connections_per_ip)
        self.broker = embedded_broker(config, self.connection_limits)
        self.counts: SharedCounts | None = None
        self.streams = MachineStreams(self)
        self.ingest_keys = SharedIngestKeys(self)
        self.dji = dji_bridge(
            config, self.streams, self.ingest_keys, lambda name, url: RemotePull(self, name, url)
        )
        if self.dji is not None:
            self.dji.on_sources_changed = lambda: self.broadcast(self._cameras())
        self._tasks = TaskSet("supervisor")

    def handlers(self, worker: WorkerProcess) -> dict[str, Handler]:
        """The calls a worker may make of the control process."""

        async def control(message: dict[str, Any]) -> Any:
            name, action = str(message["name"]), str(message["action"])
            return await self.streams.control(name, action, message.get("value"))

        async def devices(message: dict[str, Any]) -> Any:
            return self.dji.describe() if self.dji is not None else None

        async def take_over(message: dict[str, Any]) -> dict[str, Any]:
            return await self._take_over(worker.index, str(message["name"]))

        return {"control": control, "devices": devices, "gather": self._gather, "take_over": take_over}

    async def _take_over(self, taker: int, name: str) -> dict[str, Any]:
        """A returning push on worker ``taker`` wants ``name``, which another worker holds:
        that worker is asked to hand it over; the directory decides in one step."""
        step = self.directory.take_over(taker, name)
        owner = step.ask
        if owner is not None:
            agreed, info = False, ""
            try:
                agreed = (
                    await self.workers[owner].call(
                        "hand_over", name=name, to=taker, timeout=HAND_OVER_TIMEOUT_S
                    )
                    is True
                )
            except CallFailed as exc:
                info = str(exc)
            finally:  # whatever happened (even this call cancelled): the name is decided
                step = self.directory.handed_over(taker, name, owner, agreed, info)
                for notice in step.notices:
                    self.deliver(notice)
        else:
            for notice in step.notices:
                self.deliver(notice)
        log.info(
            "stream_takeover", stream=name, taker=taker, owner=owner, granted=step.granted, info=step.info
        )
        return {"granted": step.granted, "owner": owner, "info": step.info}

    def broadcast(self, message: dict[str, Any]) -> None:
        self.deliver(Notice(None, message))

    def send_to(self, index: int, message: dict[str, Any]) -> None:
        self.deliver(Notice(index, message))

    def running_worker(self) -> WorkerProcess | None:
        return next((worker for worker in self.workers if worker.ready.is_set()), None)

    def snapshot(self) -> list[dict[str, Any]]:
        """What a worker that (re)started must know besides the names: the device cameras
        and the open push keys."""
        if self.dji is None:
            return []
        return [self._cameras(), *self.ingest_keys.messages()]

    def _cameras(self) -> dict[str, Any]:
        assert self.dji is not None
        return {"op": "cameras", "names": sorted(self.dji.sources)}

    async def _gather(self, message: dict[str, Any]) -> dict[str, Any]:
        """Every worker's report (``what``) for a worker answering for the machine (`machine`)."""
        return {
            "control": self.figures(message.get("what")),
            "workers": await machine.collect(self.workers, message),
        }

    def figures(self, what: object) -> dict[str, Any]:
        """The control process's own part of the machine's figures."""
        from gateway.http import metrics  # what workers import; the control process rarely needs it

        figures: dict[str, Any] = {"pid": os.getpid(), "mqtt_broker": self.broker is not None}
        if self.dji is not None:
            figures["mqtt_links"] = {"dji": self.dji.mqtt.connected.is_set()}
        if what == "metrics":
            outputs = metrics.Outputs(broker=self.broker, connections=self.connection_limits)
            figures["metrics"] = metrics.render_control(self.dji, outputs)
        return figures

    def deliver(self, notice: Notice) -> None:
        """Send a directory notice; a worker that has not said hello yet gets the whole
        directory with its hello instead."""
        for worker in self.workers:
            if worker.linked.is_set() and notice.to in (None, worker.index):
                worker.send(notice.message)

    async def start(self) -> None:
        """Bind the ports, start the broker and the workers; returns once every worker's
        gateway runs. Raises ListenError (a port) or WorkersFailed (a worker that would not
        start), having undone the rest."""
        self.listeners = bind_listeners(self.config)
        self.runtime_dir = Path(tempfile.mkdtemp(prefix="skyrelay-"))
        try:
            self.counts = SharedCounts(self.runtime_dir / COUNTS_FILE, len(self.workers), -1, create=True)
            if self.broker is not None:
                try:
                    await self.broker.start()
                except OSError as exc:
                    log.warning("mqtt_broker_not_started", bind=self.config.mqtt_broker, error=str(exc))
                    self.broker = None
            if self.dji is not None:
                await self.dji.start()
            for worker in self.workers:
                self._tasks.spawn(worker.run())
            async with asyncio.timeout(START_TIMEOUT_S):
                while not all(worker.ready.is_set() for worker in self.workers):
                    # A worker that fails to start dies (and would be restarted): the start failed.
                    if any(worker.restarts for worker in self.workers):
                        raise WorkersFailed("a worker could not start (its log says why)")
                    await asyncio.sleep(0.05)
        except BaseException:
            await self.stop()
            raise
        log.info(
            "gateway_started",
            workers=len(self.workers),
            pids=[worker.pid for worker in self.workers],
            ws_port=self.listeners["ws"].getsockname()[1],
            http_port=self.listeners["http"].getsockname()[1],
        )

    async def stop(self) -> None:
        await self._tasks.cancel()
        await asyncio.gather(*(worker.stop() for worker in self.workers))
        if self.dji is not None:
            await self.dji.stop()
        if self.broker is not None:
            await self.broker.stop()
        for sock in self.listeners.values():
            sock.close()
        if self.counts is not None:
            self.counts.close()
            self.counts = None
        self.listeners = {}
        if self.runtime_dir != Path():
            shutil.rmtree(self.runtime_dir, ignore_errors=True)
        log.info("gateway_stopped")


async def run_worker(control_fd: int) -> int:
    """A worker process: read its place and settings from the control channel, run a
    gateway until SIGTERM or until the control process is gone."""
    from gateway import log as logging_
    from gateway.app import Gateway, StartError
    from gateway.cluster.worker import WorkerPlace
    from gateway.media.webrtc.icemux import IceMuxError

    sock = socket.socket(fileno=control_fd)
    sock.setblocking(True)
    start = _read_start(sock)
    sock.setblocking(False)
    config = config_from_message(start["config"])
    logging_.configure(config.log_level, config.log_format)
    import structlog

    structlog.contextvars.bind_contextvars(worker=start["index"])
    place = WorkerPlace(
        int(start["index"]),
        sock.detach(),
        {str(k): int(v) for k, v in start["listeners"].items()},
        Path(start["runtime_dir"]),
        int(start["workers"]),
    )
    gateway = Gateway(config, place=place)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, lambda: None)  # the control process decides
    try:
        await gateway.start()
        freeze_startup()
        assert gateway.cluster is not None
        lost = asyncio.ensure_future(gateway.cluster.lost.wait())
        stopping = asyncio.ensure_future(stop.wait())
        await asyncio.wait([lost, stopping], return_when=asyncio.FIRST_COMPLETED)
        lost.cancel()
        stopping.cancel()
    except (StartError, IceMuxError) as exc:
        print(f"skyrelay worker {start['index']}: {exc}", file=sys.stderr)
        return 1
    finally:
        await gateway.stop()
    return 0


def _read_start(sock: socket.socket) -> dict[str, Any]:
    frames = wire.FrameReader(wire.CONTROL_MAX_BYTES)
    while True:
        data = sock.recv(65536)
        if not data:
            raise SystemExit("skyrelay worker: the control process went away before starting it")
        got = frames.feed(data)
        if got:
            message = wire.json_payload(got[0][1])
            if message.get("op") != "start" or got[1:]:
                raise SystemExit("skyrelay worker: unexpected first control message")
            return message
