"""The fan-out benchmark: the gateway (fast and stock fan-out) vs stock aiortc, same clip,
same viewers, same run."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import statistics
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import orjson

from gateway.media.synthetic import make_h264_clip
from tests import ports

from .baseline import Baseline
from .latency import LatencyMeter, LatencyStep, report_lines
from .procs import Child, ChildError, CpuSample, Process, cpu_sample, fan_out, rss_kib

BENCH_DIR = Path(__file__).resolve().parent.parent
ROOT = BENCH_DIR.parent.parent
SCRIPT = BENCH_DIR / "fanout"
STREAM = "bench"
PHASES = ("gateway", "gateway-direct", "gateway-sockets", "gateway-stock", "reference")
# Not in the default order: needs --baseline COMMIT (the gateway of that commit, same run).
BASELINE = "baseline"
# Not in the default order either (--only): the gateway with UDP GSO forced on or off.
GSO_PHASES = {"gateway-gso": "true", "gateway-nogso": "false"}
# Nor this (--only): the gateway with two workers (the default on a 2-core machine); the
# viewers spread over both as the kernel hands out their connections.
WORKERS_PHASES = {"gateway-w2": 2}
# Nor this (--only): the floor in Python, without its C burst (SKYRELAY_FANOUT_NATIVE=false).
PYTHON_FLOOR = "gateway-py"
# Nor this (--only): one thread writing the fan-out (SKYRELAY_FANOUT_THREADS=1); `gateway`
# has the default, two on a machine of two cores or more (the C burst's helper thread).
ONE_THREAD = "gateway-t1"
CLIP = {"width": 1280, "height": 720, "fps": 30, "seconds": 10, "bitrate": 2_000_000, "gop": 30}


@dataclass
class Step:
    viewers: int
    window_s: float
    cpu_ms: float  # server CPU over the window
    rss_kib: int  # server RSS after attaching
    viewer_cpu_pct: float  # all viewer workers together, % of one core
    received: list[int]  # RTP packets per viewer over the window
    lost: list[int]  # packets lost per viewer over the window
    latency: LatencyStep | None = None  # gateway phases (latency.py)

    @property
    def ms_per_viewer_s(self) -> float:
        return self.cpu_ms / self.window_s / self.viewers

    @property
    def us_per_packet(self) -> float:
        """Server CPU per RTP packet that reached a viewer."""
        return 1000.0 * self.cpu_ms / max(1, sum(self.received))

    def delivered(self, packets_per_s: float) -> float:
        """Median share of the clip's RTP packets that reached a viewer."""
        return statistics.median(self.received) / (packets_per_s * self.window_s)


@dataclass
class Phase:
    label: str
    round: int = 1  # with --rounds K: which of the K
    rss0_kib: int = 0
    idle_ms_per_s: float = 0.0
    steps: list[Step] = field(default_factory=list)
    error: str | None = None
    log_notes: str = ""  # gateway phases: what its log says about the fan-out path

    def kib_per_viewer(self, step: Step) -> float:
        return (step.rss_kib - self.rss0_kib) / step.viewers


def rtp_packets_per_second(clip: Path, fps: float) -> float:
    """RTP packets per second that aiortc's H.264 packetiser makes of `clip`."""
    from aiortc.codecs.h264 import H264Encoder

    from gateway.media.synthetic import read_access_units

    units = read_access_units(clip)
    encoder = H264Encoder()
    packets = sum(len(encoder._packetize(encoder._split_bitstream(data))) for data, _ in units)
    return packets * fps / len(units)


def log_notes(path: Path) -> str:
    """What a gateway log says about the fan-out path: how often the fast path was
    unavailable (a viewer fell back to the stock sender) and how many warning/error lines
    it has in all."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return f"{path} unreadable"
    unavailable = sum("fast_fanout_unavailable" in line for line in lines)
    floor_off = sum("fanout_floor" in line and "unavailable" in line for line in lines)
    native_off = sum("fanout_native_unavailable" in line for line in lines)
    bad = sum(any(w in line.lower() for w in ("warning", "error", "traceback")) for line in lines)
    return (
        f"{unavailable} fast_fanout_unavailable, {floor_off} fanout_floor_unavailable, "
        f"{native_off} fanout_native_unavailable, {bad} warning/error lines ({path.name})"
    )


# Ports below the kernel's ephemeral range, checked free for TCP and UDP: the tests' allocator
# (one rule for both; a port bound to 0 and let go could be taken by a client socket first).
free_port = ports.free_port
free_port_run = ports.free_port_block


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class Bench:
    script = SCRIPT  # the file that runs the child roles (``--role ...``)

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.run_dir = Path(tempfile.mkdtemp(prefix="skyrelay-bench-"))
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("SKYRELAY_")}
        # One process (the figures recorded so far are of one); the scaling phases pass
        # --workers, which beats the environment. Older baselines ignore the setting.
        self.env["SKYRELAY_WORKERS"] = "1"
        self.env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), self.env.get("PYTHONPATH", "")) if p)
        self.processes: list[Process] = []
        self.workers: list[Child] = []
        self.clip: Path | None = None
        self.packets_per_s = 0.0
        self.latency: LatencyMeter | None = None  # while a gateway phase publishes
        self.baseline: Baseline | None = None  # the baseline phase's checkout

    # --- processes ------------------------------------------------------------

    def child(self, name: str, *role_args: str) -> Child:
        cmd = [sys.executable, str(self.script), "--role", *role_args]
        child = Child(name, cmd, self.run_dir / f"{name}.log", cwd=ROOT, env=self.env)
        self.processes.append(child)
        return child

    def stop(self, proc: Process) -> None:
        proc.stop()
        with contextlib.suppress(ValueError):
            self.processes.remove(proc)

    def stop_all(self) -> None:
        for proc in reversed(self.processes):
            with contextlib.suppress(Exception):
                proc.stop(grace=3.0)
        self.processes.clear()
        if self.baseline is not None:
            self.baseline.close()

    # --- viewers --------------------------------------------------------------

    def viewer_stats(self) -> tuple[list[int], list[int]]:
        replies = fan_out(self.workers, "stats", timeout=30.0)
        received = [n for r in replies for n in r["received"]]
        lost = [n for r in replies for n in r["lost"]]
        return received, lost

    def add_viewers(self, count: int, current: list[int], **target: Any) -> None:
        shares = [0] * len(self.workers)
        for _ in range(count):
            i = min(range(len(self.workers)), key=lambda k: current[k] + shares[k])
            shares[i] += 1
        pending = []
        timeout = 30.0 + 1.0 * max(shares)
        for worker, share in zip(self.workers, shares, strict=True):
            if share:
                # Lean viewer processes keep the latency-sampled viewers counting (their
                # packets are stamped as they are read); the others only count headers.
                keep = {"keep_sampled": True} if getattr(self.args, "lean_viewers", False) else {}
                pending.append((worker, worker.send("add", count=share, timeout=timeout, **target, **keep)))
        for worker, rid in pending:
            worker.wait_reply(rid, timeout + 15.0)
        for i, share in enumerate(shares):
            current[i] += share

    def wait_receiving(self, n: int) -> None:
        deadline = time.monotonic() + 30.0 + 0.3 * n
        before, _ = self.viewer_stats()
        while True:
            time.sleep(1.0)
            now, _ = self.viewer_stats()
            if len(now) == n and all(b < a for b, a in zip(before, now, strict=True)):
                return
            if time.monotonic() > deadline:
                idle = sum(1 for b, a in zip(before, now, strict=False) if a <= b)
                raise ChildError(f"{idle} of {n} viewers are not receiving")
            before = now

    # --- measurement ----------------------------------------------------------

    def measure(self, phase: Phase, server_pid: int, **target: Any) -> None:
        args = self.args
        time.sleep(args.settle)
        phase.rss0_kib = rss_kib(server_pid)
        c0 = cpu_sample(server_pid)
        time.sleep(min(5.0, args.seconds))
        c1 = cpu_sample(server_pid)
        phase.idle_ms_per_s = 1000.0 * (c1.cpu_s - c0.cpu_s) / (c1.at - c0.at)
        log(f"{phase.label}: 0 viewers: {phase.idle_ms_per_s:.1f} ms/s, RSS {phase.rss0_kib} KiB")
        current = [0] * len(self.workers)
        try:
            for n in args.viewers:
                attached = sum(current)
                if n > attached:
                    log(f"{phase.label}: attaching {n - attached} viewers")
                    t = time.monotonic()
                    self.add_viewers(n - attached, current, **target)
                    self.wait_receiving(n)
                    log(f"{phase.label}: {n} viewers receiving after {time.monotonic() - t:.1f} s")
                time.sleep(args.settle)
                step = self.window(server_pid, n)
                phase.steps.append(step)
                log(
                    f"{phase.label}: N={n}: {step.ms_per_viewer_s:.2f} ms/viewer-s, "
                    f"{phase.kib_per_viewer(step):.0f} KiB/viewer, "
                    f"median {statistics.median(step.received)} packets/viewer"
                )
        finally:
            with contextlib.suppress(ChildError):
                fan_out(self.workers, "close", timeout=60.0)

    def window(self, server_pid: int, n: int) -> Step:
        workers = [w.pid for w in self.workers]
        v0 = [cpu_sample(pid) for pid in workers]
        r0, l0 = self.viewer_stats()
        if self.latency is not None:
            self.latency.start()
        c0 = cpu_sample(server_pid)
        time.sleep(self.args.seconds)
        c1: CpuSample = cpu_sample(server_pid)
        latency = self.latency.stop() if self.latency is not None else None
        r1, l1 = self.viewer_stats()
        v1 = [cpu_sample(pid) for pid in workers]
        window_s = c1.at - c0.at
        viewer_cpu = sum(b.cpu_s - a.cpu_s for a, b in zip(v0, v1, strict=True))
        viewer_span = max(b.at - a.at for a, b in zip(v0, v1, strict=True))
        if len(r0) != n or len(r1) != n:
            raise ChildError(f"expected {n} viewers, workers report {len(r0)} then {len(r1)}")
        return Step(
            viewers=n,
            window_s=window_s,
            cpu_ms=1000.0 * (c1.cpu_s - c0.cpu_s),
            rss_kib=rss_kib(server_pid),
            viewer_cpu_pct=100.0 * viewer_cpu / viewer_span,
            received=[b - a for a, b in zip(r0, r1, strict=True)],
            lost=[b - a for a, b in zip(l0, l1, strict=True)],
            latency=latency,
        )

    # --- phases ---------------------------------------------------------------

    def run_gateway(self, label: str) -> Phase:
        """``gateway``: skyrelay as configured by default (fast fan-out with the floor: one
        burst per access unit and viewer, every session on one UDP port);
        ``gateway-direct``: the fast fan-out without the floor (SKYRELAY_FANOUT_FLOOR=false:
        per packet Session.protect and sendto); ``gateway-sockets``: the default with sockets
        of its own per peer connection (--webrtc-udp-port 0); ``gateway-stock``: one stock
        aiortc sender per viewer (SKYRELAY_FAST_FANOUT=false), on the one UDP port."""
        phase = Phase(label)
        assert self.clip is not None
        ws_port, http_port = free_port(), free_port()
        workers = WORKERS_PHASES.get(label, 1)
        webrtc_port = "0" if label == "gateway-sockets" else str(free_port_run(workers))
        cmd = [
            sys.executable,
            "-m",
            "gateway",
            "serve",
            "--host",
            "127.0.0.1",
            "--ws-port",
            str(ws_port),
            "--http-port",
            str(http_port),
            "--rtmp-port",
            "0",
            "--rtsp-port",
            "0",
            "--mqtt-broker",
            "off",
            "--ice-address",
            "127.0.0.1",
            "--webrtc-udp-port",
            webrtc_port,
            "--webrtc-tcp-port",
            webrtc_port,
            "--log-level",
            "warning",
        ]
        if workers > 1:
            cmd += ["--workers", str(workers)]  # beats SKYRELAY_WORKERS=1
        env = {
            **self.env,
            "SKYRELAY_FAST_FANOUT": "false" if label == "gateway-stock" else "true",
            "SKYRELAY_FANOUT_FLOOR": "false" if label == "gateway-direct" else "true",
        }
        if label in GSO_PHASES:
            env["SKYRELAY_FANOUT_GSO"] = GSO_PHASES[label]
        if label == PYTHON_FLOOR:
            env["SKYRELAY_FANOUT_NATIVE"] = "false"
        if label == ONE_THREAD:
            env["SKYRELAY_FANOUT_THREADS"] = "1"
        root = ROOT
        if label == BASELINE:
            # The gateway of --baseline COMMIT, as configured by default there.
            assert self.baseline is not None
            root = self.baseline.path
            cmd = self.baseline.command(cmd)
            env = self.baseline.environment({**self.env, "SKYRELAY_FAST_FANOUT": "true"})
        gateway = Process(label, cmd, self.run_dir / f"{label}.log", cwd=root, env=env)
        self.processes.append(gateway)
        publisher: Child | None = None
        try:
            self.wait_healthy(gateway, f"http://127.0.0.1:{http_port}/healthz")
            url = f"ws://127.0.0.1:{ws_port}"
            publisher = self.child("publisher", "publisher")
            publisher.request(
                "publish", timeout=45.0, url=url, name=STREAM, clip=str(self.clip), fps=CLIP["fps"]
            )
            log(f"{label}: publishing")
            self.latency = LatencyMeter(publisher, self.workers)
            self.measure(phase, gateway.pid, mode="wcs", url=url, name=STREAM)
        except (ChildError, OSError) as exc:
            phase.error = f"{exc}\n--- gateway log ---\n{gateway.log_tail()}"
            log(f"{label} phase failed: {exc}")
        finally:
            self.latency = None
            if publisher is not None:
                with contextlib.suppress(ChildError):
                    publisher.request("stop", timeout=15.0)
                self.stop(publisher)
            self.stop(gateway)
            phase.log_notes = log_notes(gateway.log_path)
            if label == BASELINE and self.baseline is not None:
                phase.log_notes += f"; commit {self.baseline.describe()}" + (
                    f"; flags it lacks, left out: {' '.join(self.baseline.dropped)}"
                    if self.baseline.dropped
                    else ""
                )
        return phase

    def wait_healthy(self, gateway: Process, url: str) -> None:
        deadline = time.monotonic() + 30.0
        while time.monotonic() < deadline:
            if not gateway.alive():
                raise ChildError(f"gateway exited early:\n{gateway.log_tail()}")
            with contextlib.suppress(OSError, urllib.error.URLError):
                with urllib.request.urlopen(url, timeout=2) as resp:
                    if resp.status == 200:
                        return
            time.sleep(0.2)
        raise ChildError("gateway /healthz did not answer 200 within 30 s")

    def run_reference(self) -> Phase:
        phase = Phase("reference")
        ref = self.child("reference", "reference")
        try:
            port = ref.request("start", timeout=30.0, clip=str(self.clip), fps=CLIP["fps"])["port"]
            self.measure(phase, ref.pid, mode="ref", url=f"ws://127.0.0.1:{port}")
        except (ChildError, OSError) as exc:
            phase.error = str(exc)
            log(f"reference phase failed: {exc}")
        finally:
            self.stop(ref)
        return phase

    def run(self) -> list[Phase]:
        args = self.args
        log(f"logs in {self.run_dir}")
        self.clip = make_h264_clip(args.clip_dir, **CLIP)
        self.packets_per_s = rtp_packets_per_second(self.clip, CLIP["fps"])
        log(f"clip {self.clip}: {self.packets_per_s:.1f} RTP packets/s")
        if BASELINE in args.order:
            self.baseline = Baseline(ROOT, args.baseline, self.run_dir).__enter__()
            log(f"baseline: {self.baseline.describe()} checked out in {self.baseline.path}")
        viewer_args = {"full": ["--full-viewers"], "counting": []}.get(viewer_kind(args), ["--lean-viewers"])
        self.workers = [self.child(f"viewers{i}", "viewers", *viewer_args) for i in range(args.viewer_procs)]
        phases: list[Phase] = []
        for number in range(1, args.rounds + 1):
            # Every other round in the reverse order: what the machine does over time (its
            # load, its caches, the viewers' processes growing) falls on each phase alike.
            order = args.order if number % 2 else list(reversed(args.order))
            if args.rounds > 1:
                log(f"round {number} of {args.rounds}: {', '.join(order)}")
            for which in order:
                phase = self.run_reference() if which == "reference" else self.run_gateway(which)
                phase.round = number
                phases.append(phase)
        return phases


# --- report ---------------------------------------------------------------------


def viewer_kind(args: argparse.Namespace) -> str:
    if args.full_viewers:
        return "full"
    return "lean (latency-sampled ones counting)" if args.lean_viewers else "counting"


def report(phases: list[Phase], args: argparse.Namespace, packets_per_s: float) -> str:
    out: list[str] = []
    by_label = {p.label: p for p in phases}
    out.append(
        f"fan-out of one 720p30 H.264 2 Mbit/s stream; window {args.seconds:.0f} s; "
        f"{args.viewer_procs} {viewer_kind(args)} viewer processes; "
        f"{os.cpu_count()} CPUs"
    )
    for phase in phases:
        out.append("")
        out.append(f"== {phase.label} ==")
        if phase.error:
            out.append(f"FAILED: {phase.error}")
        if phase.log_notes:
            out.append(f"log: {phase.log_notes}")
        out.append(f"0 viewers: {phase.idle_ms_per_s:.1f} ms CPU/s, RSS {phase.rss0_kib / 1024:.1f} MiB")
        for step in phase.steps:
            rec = step.received
            out.append(
                f"N={step.viewers:<4d} CPU {step.cpu_ms / step.window_s:7.1f} ms/s = "
                f"{step.ms_per_viewer_s:.2f} ms per viewer-second | RSS "
                f"{step.rss_kib / 1024:.1f} MiB, {phase.kib_per_viewer(step):.0f} KiB/viewer | "
                f"viewers' CPU {step.viewer_cpu_pct:.0f}%"
            )
            out.append(
                f"       {step.us_per_packet:.1f} us CPU per delivered RTP packet; median viewer "
                f"got {100 * step.delivered(packets_per_s):.1f}% of the "
                f"{packets_per_s * step.window_s:.0f} packets the clip makes in the window"
            )
            out.append(
                f"       RTP packets/viewer in {step.window_s:.1f} s: min {min(rec)} / "
                f"median {statistics.median(rec):.0f} / max {max(rec)}; "
                f"lost (sum) {sum(step.lost)}"
            )
            out.append(f"       received: {' '.join(str(n) for n in rec)}")
            out.extend(report_lines(step.latency))
    ref = by_label.get("reference")
    for gw in [p for p in phases if p.label != "reference"]:
        if not (ref and gw.steps and ref.steps):
            continue
        out.append("")
        out.append(f"== {gw.label} / reference ==")
        out.append(
            "   N | ms/viewer-s gw   ref  ratio | us/packet gw   ref  ratio |"
            " KiB/viewer gw   ref  ratio | delivered gw    ref"
        )
        ref_steps = {s.viewers: s for s in ref.steps}
        for g in gw.steps:
            r = ref_steps.get(g.viewers)
            if r is None:
                continue
            kg, kr = gw.kib_per_viewer(g), ref.kib_per_viewer(r)
            kratio = kg / kr if kr > 0 else float("nan")
            out.append(
                f"{g.viewers:4d} | {g.ms_per_viewer_s:14.2f} {r.ms_per_viewer_s:5.2f} "
                f"{g.ms_per_viewer_s / r.ms_per_viewer_s:6.2f} | "
                f"{g.us_per_packet:12.1f} {r.us_per_packet:5.1f} "
                f"{g.us_per_packet / r.us_per_packet:6.2f} | "
                f"{kg:13.0f} {kr:5.0f} {kratio:6.2f} | "
                f"{100 * g.delivered(packets_per_s):11.1f}% {100 * r.delivered(packets_per_s):5.1f}%"
            )
    for first, second, title in _pairs(args):
        out.extend(_pair_table(by_label.get(first), by_label.get(second), title, packets_per_s))
    if any(len(p.steps) > 1 for p in phases):
        out.append("")
        out.append("marginal CPU per added viewer (ms per viewer-second, between steps):")
        for phase in phases:
            parts = []
            for a, b in zip(phase.steps, phase.steps[1:], strict=False):
                ms = (b.cpu_ms / b.window_s - a.cpu_ms / a.window_s) / (b.viewers - a.viewers)
                parts.append(f"{a.viewers}->{b.viewers}: {ms:.2f}")
            out.append(f"  {phase.label:13s} " + ", ".join(parts))
    return "\n".join(out)


def _pairs(args: argparse.Namespace) -> list[tuple[str, str, str]]:
    """The phases compared side by side when both ran: (first, second, title)."""
    return [
        ("gateway", "gateway-direct", "gateway (floor: burst per access unit) / gateway-direct (per packet)"),
        ("gateway", "gateway-sockets", "gateway (one UDP port) / gateway-sockets (sockets per connection)"),
        ("gateway", BASELINE, f"gateway (this checkout) / baseline (commit {args.baseline})"),
        ("gateway-gso", "gateway-nogso", "gateway-gso (UDP GSO runs) / gateway-nogso (sendmmsg of packets)"),
        ("gateway-w2", "gateway", "gateway-w2 (--workers 2) / gateway (one process)"),
        ("gateway", PYTHON_FLOOR, "gateway (the floor's C burst) / gateway-py (the floor in Python)"),
        ("gateway", ONE_THREAD, "gateway (fan-out on two threads) / gateway-t1 (one thread)"),
    ]


def report_rounds(phases: list[Phase], args: argparse.Namespace, packets_per_s: float) -> str:
    """Each round's report, then per compared pair and N the ratio of every round and their
    median (what the machine did in between moves one round's ratio; the median less)."""
    rounds = sorted({p.round for p in phases})
    out: list[str] = []
    for number in rounds:
        out.append(f"######## round {number} of {len(rounds)}")
        out.append(report([p for p in phases if p.round == number], args, packets_per_s))
        out.append("")
    out.append(f"######## {len(rounds)} rounds (every other one in the reverse order)")
    for first, second, title in _pairs(args):
        table: dict[int, list[float]] = {}
        for number in rounds:
            by_label = {p.label: p for p in phases if p.round == number}
            a, b = by_label.get(first), by_label.get(second)
            if not (a and b):
                continue
            other = {s.viewers: s for s in b.steps}
            for step in a.steps:
                if step.viewers in other:
                    table.setdefault(step.viewers, []).append(
                        step.ms_per_viewer_s / other[step.viewers].ms_per_viewer_s
                    )
        if not table:
            continue
        out.append("")
        out.append(f"== {title}: ms per viewer-second, ratio per round ==")
        for viewers, ratios in sorted(table.items()):
            each = " ".join(f"{r:.2f}" for r in ratios)
            out.append(f"  N={viewers:<4d} {each}   median {statistics.median(ratios):.2f}")
    return "\n".join(out)


def _pair_table(a: Phase | None, b: Phase | None, title: str, packets_per_s: float) -> list[str]:
    """Two gateway phases side by side, per viewer count (first / second)."""
    if not (a and b and a.steps and b.steps):
        return []
    out = [
        "",
        f"== {title} ==",
        "   N | ms/viewer-s 1st    2nd  ratio | us/packet 1st    2nd  ratio | delivered 1st    2nd",
    ]
    second = {s.viewers: s for s in b.steps}
    for g in a.steps:
        r = second.get(g.viewers)
        if r is None:
            continue
        out.append(
            f"{g.viewers:4d} | {g.ms_per_viewer_s:15.2f} {r.ms_per_viewer_s:6.2f} "
            f"{g.ms_per_viewer_s / r.ms_per_viewer_s:6.2f} | "
            f"{g.us_per_packet:13.1f} {r.us_per_packet:6.1f} {g.us_per_packet / r.us_per_packet:6.2f} | "
            f"{100 * g.delivered(packets_per_s):12.1f}% {100 * r.delivered(packets_per_s):5.1f}%"
        )
    return out


def int_list(text: str) -> list[int]:
    """A flag's comma-separated counts ("10,40,100"), sorted, each once."""
    return sorted({int(x) for x in text.split(",") if x.strip()})


def _raise_interrupt(signum: int, frame: Any) -> NoReturn:
    raise KeyboardInterrupt


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="scripts/bench/fanout",
        description="CPU and memory per WebRTC viewer: skyrelay vs stock aiortc fan-out.",
    )
    parser.add_argument(
        "--viewers",
        default="10,40,100",
        type=int_list,
        help="viewer counts to measure, attached incrementally (default 10,40,100)",
    )
    parser.add_argument("--seconds", type=float, default=15.0, help="measurement window (15)")
    parser.add_argument("--settle", type=float, default=3.0, help="pause before windows (3)")
    parser.add_argument("--viewer-procs", type=int, default=2, help="viewer processes (2)")
    parser.add_argument(
        "--full-viewers",
        action="store_true",
        help="viewers run aiortc's whole receive path (NACK, REMB, jitter buffer), decoding "
        "off; default: they only decrypt, parse and count (see docs/performance.md)",
    )
    parser.add_argument(
        "--lean-viewers",
        action="store_true",
        help="viewers not sampled for latency count RTP headers off the socket, undecrypted "
        "(benchlib/lean.py): the load generator takes about a fifth of the CPU, so less of the "
        "gateway's latency is the machine's two cores being shared (see docs/performance.md)",
    )
    parser.add_argument(
        "--only",
        type=lambda s: [x.strip() for x in s.split(",") if x.strip()],
        help="measure these configurations only, in this order, comma-separated (default: all of "
        + ", ".join(PHASES)
        + ")",
    )
    parser.add_argument(
        "--reference-first", action="store_true", help="measure the reference before the gateway phases"
    )
    parser.add_argument(
        "--clip-dir",
        type=Path,
        default=Path(tempfile.gettempdir()) / "skyrelay-clips",
        help="where the test clip is cached",
    )
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="measure the phases this many times, every other round in the reverse order, and "
        "report each compared pair's median ratio (1)",
    )
    parser.add_argument(
        "--baseline",
        metavar="COMMIT",
        help="also measure the gateway of COMMIT (a temporary git worktree) as phase 'baseline', "
        "after the others unless --only orders it, with a gateway/baseline ratio table",
    )
    args = parser.parse_args(argv)
    if not args.viewers or min(args.viewers) <= 0:
        parser.error("--viewers needs positive counts")
    if args.seconds <= 0 or args.viewer_procs <= 0 or args.rounds <= 0:
        parser.error("--seconds, --viewer-procs and --rounds must be positive")
    order = ["reference", *PHASES[:-1]] if args.reference_first else list(PHASES)
    if args.baseline:
        order.append(BASELINE)
    extra = [BASELINE, *GSO_PHASES, *WORKERS_PHASES, PYTHON_FLOOR, ONE_THREAD]
    if args.only and not set(args.only) <= {*PHASES, *extra}:
        parser.error(f"--only: choose from {', '.join([*PHASES, *extra])}")
    if args.only and BASELINE in args.only and not args.baseline:
        parser.error("--only baseline needs --baseline COMMIT")
    args.order = args.only or order
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    bench = Bench(args)
    started = time.monotonic()
    phases: list[Phase] = []
    try:
        phases = bench.run()
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    finally:
        bench.stop_all()
    if args.rounds > 1:
        print(report_rounds(phases, args, bench.packets_per_s))
    else:
        print(report(phases, args, bench.packets_per_s))
    log(f"total {time.monotonic() - started:.0f} s")
    if args.json:
        data = {
            "args": {k: str(v) for k, v in vars(args).items()},
            "rtp_packets_per_s": bench.packets_per_s,
            "phases": [{**asdict(p), "steps": [asdict(s) for s in p.steps]} for p in phases],
        }
        args.json.write_bytes(orjson.dumps(data, option=orjson.OPT_INDENT_2))
    return 1 if any(p.error for p in phases) else 0
