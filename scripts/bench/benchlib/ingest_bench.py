"""The ingest benchmark: the gateway's fixed CPU cost per published stream with no viewer,
for each kind of ingest, against a baseline commit's gateway in the same run.

Both gateways (this checkout's, ``new``, and with ``--baseline COMMIT`` that commit's, run
from a temporary ``git worktree add --detach``) are up side by side for the whole run. For
each ingest kind and stream count K, the same K publishers push to one gateway, then to the
other, ``--rounds`` times (baseline, new, baseline, new, ...), so drift of the machine
cancels out. A window's figure is the loaded gateway's CPU (utime+stime from /proc) per
second, less that gateway's idle CPU per second (measured while it carries nothing: a
window of its own at the start, and every window where the other gateway is loaded),
divided by K: ms of CPU per stream-second.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.media.synthetic import make_h264_clip

from .orchestrate import CLIP, Bench, _raise_interrupt, free_port, int_list, log
from .procs import Child, ChildError, Process, cpu_sample

BENCH_DIR = Path(__file__).resolve().parent.parent
ROOT = BENCH_DIR.parent.parent
SCRIPT = BENCH_DIR / "ingest"
KINDS = ("webrtc", "whip", "rtmp", "rtsp-push", "rtsp-pull")


@dataclass
class Gateway:
    label: str  # "new" or "baseline"
    root: Path  # the checkout it runs from
    commit: str
    proc: Process | None = None
    ports: dict[str, int] = field(default_factory=dict)
    idle: list[tuple[float, float]] = field(default_factory=list)  # (cpu s, wall s) while idle

    @property
    def idle_ms_per_s(self) -> float:
        cpu = sum(c for c, _ in self.idle)
        wall = sum(w for _, w in self.idle)
        return 1000.0 * cpu / wall if wall > 0 else 0.0


@dataclass
class Window:
    gateway: str
    kind: str
    streams: int
    seconds: float
    cpu_ms: float  # the loaded gateway's CPU over the window
    frames_per_s: float  # video frames per second per stream, as the gateway counted them


def _git(*args: str, cwd: Path = ROOT) -> str:
    return subprocess.run(
        ["git", *args], cwd=cwd, check=True, capture_output=True, text=True, timeout=120
    ).stdout.strip()


def _get_json(url: str, timeout: float = 5.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return json.loads(resp.read())


def _post_json(url: str, body: dict[str, Any], timeout: float = 20.0) -> Any:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=timeout) as resp:
        return json.loads(resp.read() or b"null")


class IngestBench(Bench):
    script = SCRIPT

    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__(args)
        self.gateways: list[Gateway] = []
        self.windows: list[Window] = []
        self.worktree: Path | None = None
        self.publishers: Child | None = None
        self.rtsp_source: Child | None = None
        self.ffmpegs: list[Process] = []

    # --- the gateways -----------------------------------------------------------------

    def prepare(self) -> None:
        args = self.args
        log(f"logs in {self.run_dir}")
        head = _git("rev-parse", "--short", "HEAD")
        dirty = " (uncommitted changes)" if _git("status", "--porcelain", "--untracked-files=no") else ""
        new = Gateway("new", ROOT, head + dirty)
        if args.baseline:
            commit = _git("rev-parse", "--short", args.baseline)
            self.worktree = Path(tempfile.mkdtemp(prefix="skyrelay-baseline-"))
            self.worktree.rmdir()  # git wants to make it
            _git("worktree", "add", "--detach", str(self.worktree), commit)
            log(f"baseline {commit} checked out in {self.worktree}")
            self.gateways = [Gateway("baseline", self.worktree, commit), new]
        else:
            self.gateways = [new]
        self.clip = make_h264_clip(args.clip_dir, **CLIP)
        log(f"clip {self.clip}")

    def start_gateway(self, gw: Gateway) -> None:
        gw.ports = {name: free_port() for name in ("ws", "http", "rtmp", "rtsp", "webrtc")}
        cmd = [
            sys.executable, "-m", "gateway", "serve", "--host", "127.0.0.1",
            "--ws-port", str(gw.ports["ws"]), "--http-port", str(gw.ports["http"]),
            "--rtmp-port", str(gw.ports["rtmp"]), "--rtsp-port", str(gw.ports["rtsp"]),
            "--mqtt-broker", "off", "--ice-address", "127.0.0.1",
            "--webrtc-udp-port", str(gw.ports["webrtc"]), "--webrtc-tcp-port", str(gw.ports["webrtc"]),
            "--log-level", "warning",
        ]  # fmt: skip
        # The checkout's own code first on the path (ahead of an editable install of another).
        env = {**self.env, "PYTHONPATH": str(gw.root)}
        where = subprocess.run(
            [sys.executable, "-c", "import gateway; print(gateway.__file__)"],
            cwd=gw.root, env=env, capture_output=True, text=True, timeout=60, check=True,
        ).stdout.strip()  # fmt: skip
        if not Path(where).resolve().is_relative_to(gw.root.resolve()):
            raise ChildError(f"{gw.label}: python imports the gateway from {where}, not {gw.root}")
        gw.proc = Process(
            f"gateway-{gw.label}", cmd, self.run_dir / f"gateway-{gw.label}.log", cwd=gw.root, env=env
        )
        self.processes.append(gw.proc)
        self.wait_healthy(gw.proc, f"http://127.0.0.1:{gw.ports['http']}/healthz")
        log(f"gateway {gw.label} ({gw.commit}) up, pid {gw.proc.pid}")

    def live_streams(self, gw: Gateway) -> dict[str, dict[str, Any]]:
        data = _get_json(f"http://127.0.0.1:{gw.ports['http']}/api/streams")
        return {s["name"]: s for s in data["streams"]}

    # --- the publishers ---------------------------------------------------------------

    def start_streams(self, gw: Gateway, kind: str, names: list[str]) -> None:
        assert self.clip is not None
        fps = CLIP["fps"]
        if kind in ("webrtc", "whip"):
            if self.publishers is None:
                self.publishers = self.child("publishers", "publishers")
            url = (
                f"ws://127.0.0.1:{gw.ports['ws']}"
                if kind == "webrtc"
                else f"http://127.0.0.1:{gw.ports['http']}"
            )
            self.publishers.request(
                "publish", timeout=60.0 + 5 * len(names), kind=kind, url=url, names=names,
                clip=str(self.clip), fps=fps,
            )  # fmt: skip
        elif kind in ("rtmp", "rtsp-push"):
            for name in names:
                if kind == "rtmp":
                    out = ["-f", "flv", f"rtmp://127.0.0.1:{gw.ports['rtmp']}/live/{name}"]
                else:
                    out = [
                        "-f",
                        "rtsp",
                        "-rtsp_transport",
                        "tcp",
                        f"rtsp://127.0.0.1:{gw.ports['rtsp']}/{name}",
                    ]
                cmd = [
                    "ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin",
                    "-re", "-stream_loop", "-1", "-i", str(self.clip), "-map", "0:v", "-c", "copy", *out,
                ]  # fmt: skip
                proc = Process(
                    f"ffmpeg-{name}", cmd, self.run_dir / f"ffmpeg-{name}.log", cwd=self.run_dir, env=self.env
                )
                self.processes.append(proc)
                self.ffmpegs.append(proc)
        elif kind == "rtsp-pull":
            if self.rtsp_source is None:
                self.rtsp_source = self.child("rtsp-source", "rtsp-source")
            port = self.rtsp_source.request("start", names=names, clip=str(self.clip), fps=fps)["port"]
            for name in names:
                _post_json(
                    f"http://127.0.0.1:{gw.ports['http']}/rest-api/rtsp/startup",
                    {"uri": f"rtsp://127.0.0.1:{port}/{name}", "name": name, "transport": "tcp"},
                )
        else:
            raise ValueError(kind)
        self.wait_flowing(gw, names)

    def wait_flowing(self, gw: Gateway, names: list[str]) -> None:
        """Until every stream is live and its frame count grows."""
        deadline = time.monotonic() + 30.0 + 2.0 * len(names)
        before: dict[str, int] = {}
        while True:
            for proc in self.ffmpegs:
                if not proc.alive():
                    raise ChildError(f"{proc.name} exited:\n{proc.log_tail()}")
            streams = self.live_streams(gw)
            now = {n: streams[n]["frames"] for n in names if n in streams and streams[n]["live"]}
            if len(now) == len(names) and all(now[n] > before.get(n, 0) > 0 for n in names):
                return
            if time.monotonic() > deadline:
                missing = sorted(set(names) - set(now))
                raise ChildError(f"{gw.label}: streams not flowing: {missing or 'frame counts stuck'}")
            before = now
            time.sleep(1.0)

    def stop_streams(self, gw: Gateway, kind: str, names: list[str]) -> None:
        if kind in ("webrtc", "whip") and self.publishers is not None:
            self.publishers.request("stop", timeout=60.0)
        elif kind in ("rtmp", "rtsp-push"):
            for proc in self.ffmpegs:
                self.stop(proc)
            self.ffmpegs = []
        elif kind == "rtsp-pull":
            for name in names:
                with contextlib.suppress(OSError):
                    _post_json(f"http://127.0.0.1:{gw.ports['http']}/rest-api/rtsp/terminate", {"name": name})
            if self.rtsp_source is not None:
                self.rtsp_source.request("stop")
        deadline = time.monotonic() + 20.0
        while set(names) & set(self.live_streams(gw)):
            if time.monotonic() > deadline:
                raise ChildError(f"{gw.label}: streams still there after the stop: {names}")
            time.sleep(0.3)

    # --- measuring --------------------------------------------------------------------

    def cpu_all(self) -> dict[str, tuple[float, float]]:
        out = {}
        for gw in self.gateways:
            assert gw.proc is not None
            sample = cpu_sample(gw.proc.pid)
            out[gw.label] = (sample.cpu_s, sample.at)
        return out

    def idle_window(self) -> None:
        """Every gateway idle at once."""
        c0 = self.cpu_all()
        time.sleep(self.args.window)
        c1 = self.cpu_all()
        for gw in self.gateways:
            gw.idle.append((c1[gw.label][0] - c0[gw.label][0], c1[gw.label][1] - c0[gw.label][1]))
        log("idle: " + ", ".join(f"{gw.label} {gw.idle_ms_per_s:.1f} ms/s" for gw in self.gateways))

    def measure(self, gw: Gateway, kind: str, count: int) -> Window:
        names = [f"{kind}-{i}" for i in range(count)]
        self.start_streams(gw, kind, names)
        try:
            time.sleep(self.args.settle)
            f0 = self.live_streams(gw)
            c0 = self.cpu_all()
            time.sleep(self.args.window)
            c1 = self.cpu_all()
            f1 = self.live_streams(gw)
        finally:
            self.stop_streams(gw, kind, names)
        for other in self.gateways:
            if other is not gw:
                cpu = c1[other.label][0] - c0[other.label][0]
                other.idle.append((cpu, c1[other.label][1] - c0[other.label][1]))
        seconds = c1[gw.label][1] - c0[gw.label][1]
        frames = sum(f1[n]["frames"] - f0[n]["frames"] for n in names)
        window = Window(
            gw.label,
            kind,
            count,
            seconds,
            1000.0 * (c1[gw.label][0] - c0[gw.label][0]),
            frames / seconds / count,
        )
        log(
            f"{gw.label} {kind} K={count}: {window.cpu_ms / seconds:.1f} ms/s, "
            f"{window.frames_per_s:.1f} frames/s per stream"
        )
        return window

    def run(self) -> None:  # type: ignore[override]
        args = self.args
        self.prepare()
        for gw in self.gateways:
            self.start_gateway(gw)
        time.sleep(args.settle)
        self.idle_window()
        for kind in args.kinds:
            for count in args.streams:
                for _ in range(args.rounds):
                    for gw in self.gateways:
                        self.windows.append(self.measure(gw, kind, count))

    def cleanup(self) -> None:
        self.stop_all()
        if self.worktree is not None:
            with contextlib.suppress(subprocess.SubprocessError, OSError):
                _git("worktree", "remove", "--force", str(self.worktree))
            with contextlib.suppress(subprocess.SubprocessError, OSError):
                _git("worktree", "prune")
            self.worktree = None


# --- report -----------------------------------------------------------------------------


def per_stream(windows: list[Window], idle_ms_per_s: float) -> tuple[float, float]:
    """ms per stream-second over these windows (pooled), and frames/s per stream."""
    seconds = sum(w.seconds for w in windows)
    streams = windows[0].streams
    busy = sum(w.cpu_ms for w in windows) / seconds
    fps = sum(w.frames_per_s * w.seconds for w in windows) / seconds
    return (busy - idle_ms_per_s) / streams, fps


def report(bench: IngestBench) -> str:
    args = bench.args
    gws = {gw.label: gw for gw in bench.gateways}
    out = [
        f"ingest: fixed gateway CPU per published stream, 0 viewers; one 720p30 H.264 2 Mbit/s clip "
        f"(GOP {CLIP['gop']}) per stream; window {args.window:g} s x {args.rounds} rounds; "
        f"{os.cpu_count()} CPUs",
        "gateways: " + ", ".join(f"{gw.label} = {gw.commit}" for gw in bench.gateways),
        "idle CPU (subtracted): "
        + ", ".join(f"{gw.label} {gw.idle_ms_per_s:.1f} ms/s" for gw in bench.gateways),
        "",
    ]
    labels = [gw.label for gw in bench.gateways]
    head = f"{'kind':10s} {'K':>3s} | " + " | ".join(
        f"{lb + ' ms/stream-s':>21s} {'fps':>4s}" for lb in labels
    )
    if len(labels) == 2:
        head += " | new/baseline"
    out.append(head)
    ratios: dict[str, float] = {}
    for kind in args.kinds:
        for count in args.streams:
            cells, figures = [], {}
            for label in labels:
                mine = [
                    w for w in bench.windows if w.gateway == label and w.kind == kind and w.streams == count
                ]
                if not mine:
                    cells.append(f"{'-':>21s} {'-':>4s}")
                    continue
                ms, fps = per_stream(mine, gws[label].idle_ms_per_s)
                figures[label] = ms
                cells.append(f"{ms:21.2f} {fps:4.1f}")
            line = f"{kind:10s} {count:3d} | " + " | ".join(cells)
            if len(labels) == 2 and len(figures) == 2 and figures["baseline"] > 0:
                ratio = figures["new"] / figures["baseline"]
                line += f" | {ratio:6.2f}"
                if count == max(args.streams):
                    ratios[kind] = ratio
            out.append(line)
    if ratios:
        out.append("")
        out.append(
            f"new/baseline per ingest kind (K={max(args.streams)}): "
            + ", ".join(f"{kind} {ratio:.2f}" for kind, ratio in ratios.items())
        )
    return "\n".join(out)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="scripts/bench/ingest", description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", help="a commit whose gateway runs side by side, for ratios")
    parser.add_argument(
        "--kinds",
        default=",".join(KINDS),
        type=lambda s: [k.strip() for k in s.split(",") if k.strip()],
        help=f"ingest kinds, comma-separated (default {','.join(KINDS)})",
    )
    parser.add_argument(
        "--streams",
        default="1,8",
        type=int_list,
        help="streams published at once (default 1,8)",
    )
    parser.add_argument("--window", type=float, default=10.0, help="seconds measured per window (10)")
    parser.add_argument("--settle", type=float, default=2.0, help="seconds before a window (2)")
    parser.add_argument("--rounds", type=int, default=2, help="windows per gateway, kind and K (2)")
    parser.add_argument(
        "--clip-dir", type=Path, default=Path(tempfile.gettempdir()) / "skyrelay-clips", help="clip cache"
    )
    args = parser.parse_args(argv)
    if not set(args.kinds) <= set(KINDS):
        parser.error(f"--kinds: choose from {', '.join(KINDS)}")
    if not args.streams or min(args.streams) <= 0 or args.rounds <= 0 or args.window <= 0:
        parser.error("--streams, --rounds and --window must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    bench = IngestBench(args)
    started = time.monotonic()
    try:
        bench.run()
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    except (ChildError, OSError, urllib.error.URLError, subprocess.SubprocessError) as exc:
        log(f"failed: {exc}")
        for gw in bench.gateways:
            if gw.proc is not None:
                log(f"--- {gw.label} log ---\n{gw.proc.log_tail()}")
        return 1
    finally:
        bench.cleanup()
    print(report(bench))
    log(f"total {time.monotonic() - started:.0f} s")
    return 0
