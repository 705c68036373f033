"""Workers scaling: the most viewers `skyrelay serve --workers K` holds at >= 99 % delivery,
for each K, in one run, and the ratio of the largest K's count to K = 1's.

For each K: start the gateway with ``--workers K``, publish the clip once (it lands on one
worker; a worker whose viewers want it mirrors it once over its Unix-socket link), then add
viewers in steps until a step is not held. A step is *held* when the median viewer got
>= 99 % of the RTP packets the clip makes in the window and at least 95 % of the viewers
did. Each step records the CPU of the gateway (the control process and every worker, and
each apart), of the viewer processes, of the publisher, and of the whole machine (from
/proc/stat: what the machine did that none of these did is someone else's), so the report
can say whether the limit was the gateway or the machine.

With ``--cores-per-worker C`` each worker runs in a cgroup of its own capped at C cores
(`cpucap.py`), so that K workers have K slices of the machine and the load generator the
rest: on two cores that is how "a core per worker" can be measured with the viewers on the
same machine.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import orjson

from gateway.media.synthetic import make_h264_clip

from .cpucap import CapError, CpuCaps
from .orchestrate import (
    CLIP,
    ROOT,
    STREAM,
    Bench,
    _raise_interrupt,
    free_port,
    free_port_run,
    int_list,
    log,
    log_notes,
    rtp_packets_per_second,
)
from .procs import CLK_TCK, Child, ChildError, Process, _stat_fields, cpu_sample, descendants, fan_out

HELD_DELIVERY = 0.99  # a viewer got at least this share of the clip's packets in the window
HELD_SHARE = 0.95  # ... and at least this share of the viewers did (with the median viewer)


@dataclass
class ScaleStep:
    viewers: int
    window_s: float = 0.0
    gateway_cores: float = 0.0  # control process + workers, in cores (1.0 = one core busy)
    process_cores: dict[str, float] = field(default_factory=dict)  # control, w0, w1, ...
    viewer_cores: float = 0.0  # every viewer process
    publisher_cores: float = 0.0
    machine_cores: float = 0.0  # all CPUs busy (from /proc/stat), in cores
    kernel_cores: float = 0.0  # of which irq + softirq (charged to no process) and steal
    throttled: dict[str, float] = field(default_factory=dict)  # share of the window held by the cap
    received: list[int] = field(default_factory=list)
    lost: list[int] = field(default_factory=list)
    error: str | None = None  # the step could not be measured (viewers did not start, ...)

    def shares(self, packets_per_s: float) -> list[float]:
        expected = packets_per_s * self.window_s
        return [r / expected for r in self.received] if expected > 0 else []

    def median_delivery(self, packets_per_s: float) -> float:
        shares = self.shares(packets_per_s)
        return statistics.median(shares) if shares else 0.0

    def share_held(self, packets_per_s: float) -> float:
        shares = self.shares(packets_per_s)
        return sum(s >= HELD_DELIVERY for s in shares) / len(shares) if shares else 0.0

    def held(self, packets_per_s: float) -> bool:
        return (
            self.error is None
            and self.median_delivery(packets_per_s) >= HELD_DELIVERY
            and self.share_held(packets_per_s) >= HELD_SHARE
        )

    @property
    def other_cores(self) -> float:
        """CPU the machine's other processes took (not the bench's, not irq/softirq/steal)."""
        bench = self.gateway_cores + self.viewer_cores + self.publisher_cores
        return max(0.0, self.machine_cores - self.kernel_cores - bench)


@dataclass
class ScalePhase:
    workers: int
    idle_cores: float = 0.0
    steps: list[ScaleStep] = field(default_factory=list)
    error: str | None = None
    log_notes: str = ""
    cap: float | None = None  # each worker's CPU cap, in cores (--cores-per-worker)

    def held(self, packets_per_s: float) -> ScaleStep | None:
        """The largest step held before the first one that was not."""
        best = None
        for step in self.steps:
            if not step.held(packets_per_s):
                break
            best = step
        return best

    def first_failed(self, packets_per_s: float) -> ScaleStep | None:
        return next((s for s in self.steps if not s.held(packets_per_s)), None)

    def projected(self, packets_per_s: float) -> float | None:
        """Viewers at which the busiest worker would reach one full core (its cap, if capped),
        linear through the origin from the largest held step (an extrapolation: what the
        gateway could hold with a core per worker to itself and the viewers elsewhere)."""
        best = self.held(packets_per_s)
        if best is None:
            return None
        busiest = max(
            v for k, v in best.process_cores.items() if k != "control" or len(best.process_cores) == 1
        )
        return best.viewers * (self.cap or 1.0) / busiest if busiest > 0 else None


def machine_busy_s() -> tuple[float, float]:
    """CPU seconds all CPUs spent busy since boot (/proc/stat: all but idle and iowait), and
    of those the ones in irq, softirq and steal (which no process is charged with)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal guest guest_nice: guest is in user
    busy = sum(fields[:8]) - fields[3] - fields[4]
    return busy / CLK_TCK, sum(fields[5:8]) / CLK_TCK


def process_cpu_s(pid: int) -> float:
    """utime + stime of one process (0 if gone)."""
    fields = _stat_fields(pid)
    return 0.0 if fields is None else (int(fields[11]) + int(fields[12])) / CLK_TCK


class ScalingBench(Bench):
    caps: CpuCaps | None = None
    phase_workers = 0

    def start_gateway(self, workers: int) -> tuple[Process, str]:
        ws_port, http_port = free_port(), free_port()
        webrtc_port = str(free_port_run(workers))
        cmd = [
            sys.executable, "-m", "gateway", "serve", "--workers", str(workers),
            "--host", "127.0.0.1", "--ws-port", str(ws_port), "--http-port", str(http_port),
            "--rtmp-port", "0", "--rtsp-port", "0", "--mqtt-broker", "off",
            "--ice-address", "127.0.0.1",
            "--webrtc-udp-port", webrtc_port, "--webrtc-tcp-port", webrtc_port,
            "--log-level", "warning",
        ]  # fmt: skip
        env = {**self.env, "SKYRELAY_MAX_CONNECTIONS_PER_IP": str(4 * self.args.max_viewers + 100)}
        if self.args.cores_per_worker:
            # One process on two cores would split each batch with the C burst's helper
            # thread; a worker with a slice of one core would not (what K > 1 does anyway).
            env["SKYRELAY_FANOUT_THREADS"] = "1"
        label = f"gateway-w{workers}"
        gateway = Process(label, cmd, self.run_dir / f"{label}.log", cwd=ROOT, env=env)
        self.processes.append(gateway)
        self.wait_healthy(gateway, f"http://127.0.0.1:{http_port}/healthz")
        return gateway, f"ws://127.0.0.1:{ws_port}"

    def cap_workers(self, gateway: Process, workers: int, *, first: bool) -> None:
        """Each worker (the one process with K = 1) into its capped group; a worker the
        control process restarted since is capped too (and said)."""
        if self.caps is None:
            return
        deadline = time.monotonic() + 30.0
        while True:
            pids = [gateway.pid] if workers == 1 else sorted(descendants(gateway.pid))
            if len(pids) >= workers or not first or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        for i, pid in enumerate(pids):
            if pid not in self.caps.pids:
                if not first:
                    log(f"workers={workers}: a new worker process {pid} (restarted?), capped too")
                self.caps.cap(pid, "control" if workers == 1 else f"w{i}-{pid}")

    def run_workers(self, workers: int) -> ScalePhase:
        args = self.args
        phase = ScalePhase(workers, cap=args.cores_per_worker)
        self.phase_workers = workers
        publisher: Child | None = None
        gateway: Process | None = None
        current = [0] * len(self.workers)
        try:
            if args.cores_per_worker:
                self.caps = CpuCaps.create(args.cores_per_worker)
            gateway, url = self.start_gateway(workers)
            self.cap_workers(gateway, workers, first=True)
            publisher = self.child(f"publisher-w{workers}", "publisher")
            publisher.request(
                "publish", timeout=45.0, url=url, name=STREAM, clip=str(self.clip), fps=CLIP["fps"]
            )
            log(f"workers={workers}: publishing")
            time.sleep(args.settle)
            c0 = cpu_sample(gateway.pid)
            time.sleep(3.0)
            c1 = cpu_sample(gateway.pid)
            phase.idle_cores = (c1.cpu_s - c0.cpu_s) / (c1.at - c0.at)
            n = args.start
            while n <= args.max_viewers:
                step = self.step(gateway, publisher, url, n, current)
                phase.steps.append(step)
                self.log_step(phase, step)
                if not step.held(self.packets_per_s):
                    break
                n += args.step
        except (ChildError, OSError, CapError) as exc:
            tail = gateway.log_tail() if gateway is not None else ""
            phase.error = f"{exc}\n--- gateway log ---\n{tail}"
            log(f"workers={workers} failed: {exc}")
        finally:
            with contextlib.suppress(ChildError):
                fan_out(self.workers, "close", timeout=120.0)
            if publisher is not None:
                with contextlib.suppress(ChildError):
                    publisher.request("stop", timeout=15.0)
                self.stop(publisher)
            if gateway is not None:
                self.stop(gateway)
                phase.log_notes = log_notes(gateway.log_path)
            if self.caps is not None:
                self.caps.close()
                self.caps = None
        return phase

    def step(self, gateway: Process, publisher: Child, url: str, n: int, current: list[int]) -> ScaleStep:
        step = ScaleStep(n)
        attached = sum(current)
        try:
            if n > attached:
                t = time.monotonic()
                self.add_viewers(n - attached, current, mode="wcs", url=url, name=STREAM)
                self.wait_receiving(n)
                log(f"  {n} viewers receiving after {time.monotonic() - t:.1f} s")
        except ChildError as exc:
            step.error = str(exc).splitlines()[0][:300]
            return step
        time.sleep(self.args.settle)
        self.cap_workers(gateway, self.phase_workers, first=False)
        self.measure_window(step, gateway, publisher)
        return step

    def measure_window(self, step: ScaleStep, gateway: Process, publisher: Child) -> None:
        viewer_pids = [w.pid for w in self.workers]
        tree = [gateway.pid, *sorted(descendants(gateway.pid))]
        r0, l0 = self.viewer_stats()
        m0, c0 = machine_busy_s(), cpu_sample(gateway.pid)
        p0 = {pid: process_cpu_s(pid) for pid in tree}
        v0 = sum(process_cpu_s(pid) for pid in viewer_pids)
        u0 = process_cpu_s(publisher.pid)
        t0 = self.caps.throttled_s() if self.caps else {}
        time.sleep(self.args.seconds)
        t1 = self.caps.throttled_s() if self.caps else {}
        m1, c1 = machine_busy_s(), cpu_sample(gateway.pid)
        p1 = {pid: process_cpu_s(pid) for pid in tree}
        v1 = sum(process_cpu_s(pid) for pid in viewer_pids)
        u1 = process_cpu_s(publisher.pid)
        r1, l1 = self.viewer_stats()
        span = c1.at - c0.at
        step.window_s = span
        step.gateway_cores = (c1.cpu_s - c0.cpu_s) / span
        names = ["control", *(f"w{i}" for i in range(len(tree) - 1))]
        step.process_cores = {name: (p1[pid] - p0[pid]) / span for name, pid in zip(names, tree, strict=True)}
        step.viewer_cores = (v1 - v0) / span
        step.publisher_cores = (u1 - u0) / span
        step.machine_cores = (m1[0] - m0[0]) / span
        step.kernel_cores = (m1[1] - m0[1]) / span
        step.throttled = {name.split("-")[0]: (t1[name] - t0.get(name, 0.0)) / span for name in t1}
        if len(r0) != step.viewers or len(r1) != step.viewers:
            step.error = f"expected {step.viewers} viewers, viewer processes report {len(r0)} then {len(r1)}"
            return
        step.received = [b - a for a, b in zip(r0, r1, strict=True)]
        step.lost = [b - a for a, b in zip(l0, l1, strict=True)]

    def log_step(self, phase: ScalePhase, step: ScaleStep) -> None:
        if step.error:
            log(f"workers={phase.workers}: N={step.viewers}: {step.error}")
            return
        pps = self.packets_per_s
        log(
            f"workers={phase.workers}: N={step.viewers}: median {100 * step.median_delivery(pps):.1f}%, "
            f"{100 * step.share_held(pps):.0f}% of viewers >= 99%; gateway {step.gateway_cores:.2f} cores, "
            f"viewers {step.viewer_cores:.2f}, machine {step.machine_cores:.2f}"
        )

    def run_scaling(self) -> list[ScalePhase]:
        args = self.args
        log(f"logs in {self.run_dir}")
        self.clip = make_h264_clip(args.clip_dir, **CLIP)
        self.packets_per_s = rtp_packets_per_second(self.clip, CLIP["fps"])
        log(f"clip {self.clip}: {self.packets_per_s:.1f} RTP packets/s")
        role = {"lean": ["--lean-viewers"], "counting": [], "full": ["--full-viewers"]}[args.viewer_kind]
        self.workers = [self.child(f"viewers{i}", "viewers", *role) for i in range(args.viewer_procs)]
        return [self.run_workers(k) for k in args.scaling]


# --- report ---------------------------------------------------------------------


def verdict(step: ScaleStep | None, workers: int, cpus: int, cap: float | None = None) -> str:
    """What ran out at a step that was not held: the gateway's workers or the machine."""
    if step is None:
        return "no step failed (raise --max-viewers)"
    if step.error:
        return f"the step failed: {step.error}"
    workers_busy = [v for k, v in step.process_cores.items() if k != "control" or workers == 1]
    if cap and workers_busy and min(workers_busy) >= 0.9 * cap and step.machine_cores < 0.95 * cpus:
        return f"the gateway (every worker at its cap of {cap:g} core)"
    if step.machine_cores >= 0.9 * cpus:
        full = f"its cap of {cap:g} core" if cap else "a full core"
        if max(workers_busy, default=0.0) >= 0.9 * (cap or 1.0):
            return f"the machine (all CPUs busy, and a gateway worker at {full})"
        return f"the machine (all CPUs busy; no gateway worker had {full})"
    if workers_busy and min(workers_busy) >= 0.9 * (cap or 1.0):
        return "the gateway (every worker at " + (f"its cap of {cap:g} core)" if cap else "a full core)")
    return "neither clearly (CPUs not all busy): latency or scheduling"


def report(phases: list[ScalePhase], args: argparse.Namespace, pps: float) -> str:
    cpus = os.cpu_count() or 1
    out = [
        f"workers scaling: one 720p30 H.264 2 Mbit/s stream ({pps:.1f} RTP packets/s), viewers added "
        f"+{args.step} from {args.start} until a step is not held (median viewer >= 99 % of the packets "
        f"and >= 95 % of viewers at >= 99 %); window {args.seconds:g} s; {args.viewer_procs} "
        f"{args.viewer_kind} viewer processes; {cpus} CPUs; cores = CPU seconds per second",
    ]
    if args.cores_per_worker:
        out.append(
            f"each worker (the one process with --workers 1) capped at {args.cores_per_worker:g} core "
            "by a cgroup CPU quota (20 ms period), the C burst on one thread; "
            "throttled: the share of the window a worker waited for its quota"
        )
    for phase in phases:
        failed = [f"FAILED: {phase.error}"] if phase.error else []
        out += ["", f"== --workers {phase.workers} ==", *failed, f"log: {phase.log_notes}"]
        out.append(f"0 viewers: gateway {phase.idle_cores:.3f} cores")
        out.append(
            "    N | median  >=99% | lost: sum  max  viewers | gateway (per process)        "
            "| viewers publisher other kernel | machine"
        )
        for s in phase.steps:
            if s.error:
                out.append(f"{s.viewers:5d} | not measured: {s.error}")
                continue
            per = " ".join(f"{k} {v:.2f}" for k, v in s.process_cores.items())
            if s.throttled:
                per += "; throttled " + " ".join(f"{k} {100 * v:.0f}%" for k, v in s.throttled.items())
            lossy = sum(1 for x in s.lost if x)
            out.append(
                f"{s.viewers:5d} | {100 * s.median_delivery(pps):5.1f}% {100 * s.share_held(pps):5.1f}% | "
                f"{sum(s.lost):9d} {max(s.lost, default=0):4d} {lossy:8d} | "
                f"{s.gateway_cores:.2f} ({per}) | {s.viewer_cores:7.2f} {s.publisher_cores:9.2f} "
                f"{s.other_cores:5.2f} {s.kernel_cores:6.2f} | "
                f"{s.machine_cores:.2f}{'' if s.held(pps) else '  NOT HELD'}"
            )
    out.append("")
    out.append("most viewers held at >= 99 % delivery:")
    held: dict[int, int] = {}
    for phase in phases:
        best = phase.held(pps)
        held[phase.workers] = best.viewers if best else 0
        fail = phase.first_failed(pps)
        where = verdict(fail, phase.workers, cpus, phase.cap)
        if best is not None:
            gw_per_viewer = 1000 * best.gateway_cores / best.viewers
            out.append(
                f"  --workers {phase.workers}: {best.viewers} viewers "
                f"(gateway {best.gateway_cores:.2f} cores = "
                f"{gw_per_viewer:.2f} ms per viewer-second; viewers {best.viewer_cores:.2f} cores = "
                f"{100 * best.viewer_cores / cpus:.0f}% of the machine; machine {best.machine_cores:.2f} of "
                f"{cpus}); limit: {where}"
            )
        else:
            out.append(f"  --workers {phase.workers}: 0 viewers (no step held); limit: {where}")
    base = held.get(min(held)) if held else None
    for k in sorted(held):
        if k == min(held):
            continue
        ratio = held[k] / base if base else float("nan")
        out.append(f"ratio --workers {k} / --workers {min(held)}: {ratio:.2f} ({held[k]} / {base})")
    projected = {p.workers: p.projected(pps) for p in phases}
    first = projected.get(min(projected)) if projected else None
    if first:
        out.append(
            "extrapolated, not measured: viewers at which the busiest worker would reach "
            + (f"its cap of {args.cores_per_worker:g} core " if args.cores_per_worker else "a full core ")
            + "(linear from the largest held step): "
            + ", ".join(f"--workers {k}: {v:.0f}" for k, v in projected.items() if v)
            + "; ratio "
            + ", ".join(
                f"{k}/{min(projected)} {v / first:.2f}"
                for k, v in projected.items()
                if v and k != min(projected)
            )
        )
    return "\n".join(out)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="scripts/bench/fanout --scaling",
        description="The most viewers skyrelay holds at >= 99 % delivery, per --workers count.",
    )
    parser.add_argument(
        "--scaling",
        required=True,
        type=int_list,
        help="worker counts to compare, e.g. 1,2 (the ratio is against the smallest)",
    )
    for flag, kind, default, text in (
        ("--start", int, 20, "viewers at the first step"),
        ("--step", int, 20, "viewers added per step"),
        ("--max-viewers", int, 1000, "stop here if still held"),
        ("--seconds", float, 10.0, "measurement window"),
        ("--settle", float, 3.0, "pause before windows"),
        ("--viewer-procs", int, 2, "viewer processes"),
    ):
        parser.add_argument(flag, type=kind, default=default, help=f"{text} ({default:g})")
    parser.add_argument(
        "--viewer-kind",
        choices=["lean", "counting", "full"],
        default="lean",
        help="lean (default): count RTP headers off the socket (benchlib/lean.py); counting: "
        "decrypt and count (the fan-out phases' default); full: aiortc's whole receive path",
    )
    parser.add_argument(
        "--cores-per-worker",
        type=float,
        help="cap each worker at this many cores with a cgroup CPU quota (root; see cpucap.py), "
        "so that the viewers have the rest of the machine",
    )
    clips = Path(tempfile.gettempdir()) / "skyrelay-clips"
    parser.add_argument("--clip-dir", type=Path, default=clips, help="the test clip's cache")
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    args = parser.parse_args(argv)
    if not args.scaling or min(args.scaling) <= 0:
        parser.error("--scaling needs positive worker counts")
    if min(args.start, args.step, args.max_viewers, args.viewer_procs) <= 0 or args.seconds <= 0:
        parser.error("--start, --step, --max-viewers, --viewer-procs and --seconds must be positive")
    cpus = os.cpu_count() or 1
    if args.cores_per_worker is not None and not 0 < args.cores_per_worker <= cpus:
        parser.error(f"--cores-per-worker must be above 0 and at most the machine's {cpus} CPUs")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    bench = ScalingBench(args)
    try:
        phases = bench.run_scaling()
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    finally:
        bench.stop_all()
    print(report(phases, args, bench.packets_per_s))
    if args.json:
        results = {
            "args": vars(args),
            "rtp_packets_per_s": bench.packets_per_s,
            "phases": [asdict(p) for p in phases],
        }
        args.json.write_bytes(orjson.dumps(results, default=str, option=orjson.OPT_INDENT_2))
    return 1 if any(p.error for p in phases) else 0
