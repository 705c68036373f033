"""The idle-sessions benchmark: the gateway's memory (RSS) and CPU per idle WebSocket
session, against the same gateway with none, in one run."""

from __future__ import annotations

import argparse
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from .orchestrate import ROOT, Bench, free_port, log
from .procs import ChildError, Process, cpu_sample, rss_kib

BENCH_DIR = Path(__file__).resolve().parent.parent


@dataclass
class Step:
    sessions: int
    rss_kib: int
    cpu_ms_per_s: float
    pings_per_s: float
    closed: int


class IdleBench(Bench):
    script = BENCH_DIR / "idle_sessions"

    def start_gateway(self) -> tuple[Process, int]:
        ws, http = free_port(), free_port()
        env = {
            **self.env,
            "SKYRELAY_MAX_CONNECTIONS_PER_IP": str(self.args.sessions * 2 + 100),
            "SKYRELAY_PING_INTERVAL": str(self.args.ping_interval),
        }
        cmd = [
            sys.executable, "-m", "gateway", "serve", "--host", "127.0.0.1",
            "--ws-port", str(ws), "--http-port", str(http),
            "--rtmp-port", str(free_port()), "--rtsp-port", str(free_port()),
            "--mqtt-broker", "off", "--webrtc-udp-port", "0", "--webrtc-tcp-port", "0",
            "--log-format", "json", "--log-level", "warning",
        ]  # fmt: skip
        gateway = Process("gateway", cmd, self.run_dir / "gateway.log", cwd=ROOT, env=env)
        self.processes.append(gateway)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{http}/healthz", timeout=2):
                    return gateway, ws
            except OSError:
                if not gateway.alive():
                    raise ChildError(f"gateway exited:\n{gateway.log_tail()}") from None
                time.sleep(0.2)
        raise ChildError("gateway did not start")

    def window(self, pid: int, clients: list, seconds: float) -> tuple[float, float, int]:
        """Gateway CPU ms/s and pings answered per second over ``seconds``."""
        before = [c.request("stats") for c in clients]
        cpu0 = cpu_sample(pid)
        time.sleep(seconds)
        cpu1 = cpu_sample(pid)
        after = [c.request("stats") for c in clients]
        elapsed = cpu1.at - cpu0.at
        pings = sum(a["pings"] - b["pings"] for a, b in zip(after, before, strict=True))
        closed = sum(a["closed"] for a in after)
        return 1000 * (cpu1.cpu_s - cpu0.cpu_s) / elapsed, pings / elapsed, closed

    def run_steps(self) -> tuple[Step, list[Step]]:
        gateway, port = self.start_gateway()
        url = f"ws://127.0.0.1:{port}"
        clients = [self.child(f"clients{i}", "clients") for i in range(self.args.client_procs)]
        time.sleep(2)  # the gateway settles (imports, first ticks)
        cpu, pings, closed = self.window(gateway.pid, clients, self.args.window)
        baseline = Step(0, rss_kib(gateway.pid), cpu, pings, closed)
        log(f"baseline: RSS {baseline.rss_kib} KiB, {cpu:.1f} ms CPU/s")
        steps = []
        for total in self.args.steps:
            share = -(-total // len(clients))  # ceil: each client process's sessions
            replies = [c.request("open", timeout=600, url=url, count=share, concurrency=100) for c in clients]
            opened = sum(r["open"] for r in replies)
            if opened < total * 0.99:
                raise ChildError(f"only {opened} of {total} sessions opened: {replies}")
            time.sleep(self.args.ping_interval * 2)  # every session through two ping rounds
            cpu, pings, closed = self.window(gateway.pid, clients, self.args.window)
            step = Step(opened, rss_kib(gateway.pid), cpu, pings, closed)
            steps.append(step)
            per = (step.rss_kib - baseline.rss_kib) / opened
            log(f"{opened} sessions: RSS {step.rss_kib} KiB ({per:.1f} KiB each), {cpu:.1f} ms CPU/s")
        return baseline, steps


def report(baseline: Step, steps: list[Step], args: argparse.Namespace) -> str:
    lines = [
        f"idle WebSocket sessions (WCS connection established, answering pings every "
        f"{args.ping_interval:g} s); window {args.window:g} s",
        "",
        "sessions    RSS KiB   KiB/session  CPU ms/s  CPU ms/s per 1000  pings/s  closed by server",
        f"{0:>8}  {baseline.rss_kib:>9}  {'':>11}  {baseline.cpu_ms_per_s:>8.1f}  {'':>17}  "
        f"{baseline.pings_per_s:>7.0f}",
    ]
    for step in steps:
        per = (step.rss_kib - baseline.rss_kib) / step.sessions
        cpu = (step.cpu_ms_per_s - baseline.cpu_ms_per_s) / step.sessions * 1000
        lines.append(
            f"{step.sessions:>8}  {step.rss_kib:>9}  {per:>11.1f}  {step.cpu_ms_per_s:>8.1f}  "
            f"{cpu:>17.2f}  {step.pings_per_s:>7.0f}  {step.closed:>5}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="idle_sessions", description=__doc__)
    parser.add_argument("--steps", default="1000,5000,10000", help="total sessions at each step")
    parser.add_argument("--window", type=float, default=10.0, help="seconds of CPU measured per step")
    parser.add_argument("--client-procs", type=int, default=2)
    parser.add_argument(
        "--ping-interval", type=float, default=5.0, help="the gateway's ping_interval (its default: 5)"
    )
    args = parser.parse_args(argv)
    args.steps = [int(s) for s in args.steps.split(",")]
    args.sessions = max(args.steps)
    bench = IdleBench(args)
    try:
        baseline, steps = bench.run_steps()
    finally:
        bench.stop_all()
    print(report(baseline, steps, args))
    return 0
