"""The telemetry benchmark: the gateway CPU a DJI osd message costs (intake: MQTT, parse,
hub) and a telemetry message delivered to a viewer costs (delivery), measured against a
baseline with the same devices, video and viewers in the same run. See docs/performance.md.

Phases, one gateway, one run:
  A   devices announced and online (dock osd every 2 s), viewers playing drone cameras with
      telemetry off (``custom: {telemetry: false}``), no aircraft osd;
  B   the aircraft send osd at ``--rate`` each: the intake cost;
  C   the same, the viewers (re-attached) taking telemetry: the delivery cost;
  A2  aircraft osd stopped: the baseline again, to see how far the machine drifted during
      the run.
B and C are measured ``--repeat`` times each, in the order B1 C1 C2 B2 B3 C3 ...
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
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import orjson

from gateway.media.synthetic import make_h264_clip

from .devices import camera_stream, dock_sn
from .orchestrate import Bench, _raise_interrupt, free_port, log
from .procs import MOSQUITTO, Child, ChildError, Process, cpu_sample, fan_out, start_mosquitto, wait_tcp

BENCH_DIR = Path(__file__).resolve().parent.parent
ROOT = BENCH_DIR.parent.parent
# A small picture: the video is the same in every phase and only adds noise to differences
# of a few percent, so it is kept cheap (≈ 60 RTP packets/s per viewer).
CLIP = {"width": 640, "height": 360, "fps": 30, "seconds": 10, "bitrate": 600_000, "gop": 30}


@dataclass
class Window:
    label: str
    what: str
    seconds: float
    cpu_ms: float  # gateway CPU over the window
    aircraft_osd: int  # aircraft osd the generator sent
    dock_osd: int  # dock osd the generator sent (the camera docks' own are not counted)
    skipped: int  # osd the generator skipped, being too far behind its schedule
    late_ms_max: float  # the generator's worst wake-up delay since it started
    samples: int  # telemetry samples the gateway made (skyrelay_telemetry_samples_total)
    rejected: int  # osd the gateway refused by its per-device rate limit
    unknown: int  # osd of devices the gateway does not know (must stay 0)
    telemetry: list[int]  # telemetry messages per viewer
    rtp: list[int]  # video RTP packets per viewer
    lost: list[int]
    generator_cpu_pct: float
    viewers_cpu_pct: float

    @property
    def cpu_per_s(self) -> float:
        return self.cpu_ms / self.seconds

    def per_s(self, count: float) -> float:
        return count / self.seconds


def metrics(http_port: int) -> dict[str, float]:
    """The gateway's /metrics as {"name{labels}": value}."""
    with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            with contextlib.suppress(ValueError):
                values[key] = float(value)
    return values


SAMPLES = "skyrelay_telemetry_samples_total"
REJECTED = 'skyrelay_dji_messages_rejected_total{reason="osd_rate"}'
UNKNOWN = 'skyrelay_dji_messages_rejected_total{reason="osd_unknown_device"}'


class TelemetryBench(Bench):
    script = BENCH_DIR / "telemetry"

    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__(args)
        self.http_port = free_port()
        self.ws_port = free_port()
        self.gateway: Process | None = None
        self.devices: Child | None = None
        self.cameras: Child | None = None
        self.windows: list[Window] = []  # measured so far (kept if a later phase fails)

    # --- processes ------------------------------------------------------------

    def start_gateway(self, mqtt: list[str], rtmp_port: int) -> Process:
        args = self.args
        media_port = str(free_port())
        cmd = [
            sys.executable, "-m", "gateway", "serve",
            "--host", "127.0.0.1",
            "--ws-port", str(self.ws_port),
            "--http-port", str(self.http_port),
            "--rtmp-port", str(rtmp_port),
            "--rtsp-port", "0",
            "--ice-address", "127.0.0.1",
            "--webrtc-udp-port", media_port,
            "--webrtc-tcp-port", media_port,
            # the pushes outlive the viewers' re-attaching between phases B and C
            "--live-linger", "600",
            "--device-state-file", "off",
            "--max-connections-per-ip", str(max(256, args.devices + args.viewers + 64)),
            "--log-level", "warning",
            *mqtt,
        ]  # fmt: skip
        env = dict(self.env)
        if args.telemetry_rate is not None:
            env["SKYRELAY_TELEMETRY_RATE"] = str(args.telemetry_rate)
        gateway = Process("gateway", cmd, self.run_dir / "gateway.log", cwd=ROOT, env=env)
        self.processes.append(gateway)
        self.wait_healthy(gateway, f"http://127.0.0.1:{self.http_port}/healthz")
        return gateway

    def wait_devices(self, count: int) -> None:
        """Until the gateway lists every dock online, each with its aircraft camera."""
        wanted = {dock_sn(i) for i in range(count)}
        deadline = time.monotonic() + 30.0 + 0.1 * count
        online: set[str] = set()
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError, urllib.error.URLError, ValueError):
                url = f"http://127.0.0.1:{self.http_port}/api/devices"
                with urllib.request.urlopen(url, timeout=10) as reply:
                    listed = orjson.loads(reply.read())
                online = {
                    g["sn"]
                    for g in listed.get("gateways", [])
                    if g.get("online")
                    and any(v["stream"].startswith("BENCHUAV") for v in g.get("videos", []))
                }
                if wanted <= online:
                    return
            time.sleep(0.5)
        raise ChildError(f"the gateway lists {len(wanted & online)} of {count} devices online")

    def attach(self, telemetry: bool) -> None:
        """Viewers spread evenly over the watched cameras; wait until all receive video."""
        args = self.args
        current = [0] * len(self.workers)
        started = time.monotonic()
        for camera in range(args.cameras):
            count = args.viewers // args.cameras + (camera < args.viewers % args.cameras)
            if count:
                self.add_viewers(
                    count,
                    current,
                    mode="wcs",
                    url=f"ws://127.0.0.1:{self.ws_port}",
                    name=camera_stream(camera),
                    custom={"telemetry": telemetry},
                    data_channel=args.data_channel,
                )
        self.wait_receiving(args.viewers)
        log(f"{args.viewers} viewers (telemetry {'on' if telemetry else 'off'}) receiving after "
            f"{time.monotonic() - started:.1f} s")  # fmt: skip

    # --- measurement ----------------------------------------------------------

    def counters(self) -> tuple[dict[str, Any], dict[str, float], list[dict[str, Any]]]:
        assert self.devices is not None
        generator = self.devices.request("stats", timeout=10.0)
        return generator, metrics(self.http_port), fan_out(self.workers, "stats", timeout=30.0)

    def measure_window(self, label: str, what: str) -> Window:
        assert self.gateway is not None and self.devices is not None
        time.sleep(self.args.settle)
        g0, m0, v0 = self.counters()
        others = [self.devices.pid, *(w.pid for w in self.workers)]
        o0 = [cpu_sample(pid) for pid in others]
        c0 = cpu_sample(self.gateway.pid)
        time.sleep(self.args.seconds)
        c1 = cpu_sample(self.gateway.pid)
        o1 = [cpu_sample(pid) for pid in others]
        g1, m1, v1 = self.counters()

        def per_viewer(key: str, before: list[dict[str, Any]], after: list[dict[str, Any]]) -> list[int]:
            a = [n for reply in before for n in reply[key]]
            b = [n for reply in after for n in reply[key]]
            if len(a) != self.args.viewers or len(b) != self.args.viewers:
                raise ChildError(
                    f"expected {self.args.viewers} viewers, workers report {len(a)} then {len(b)}"
                )
            return [y - x for x, y in zip(a, b, strict=True)]

        def pct(i: int) -> float:
            return 100.0 * (o1[i].cpu_s - o0[i].cpu_s) / (o1[i].at - o0[i].at)

        result = Window(
            label=label,
            what=what,
            seconds=c1.at - c0.at,
            cpu_ms=1000.0 * (c1.cpu_s - c0.cpu_s),
            aircraft_osd=g1["aircraft"] - g0["aircraft"],
            dock_osd=g1["docks"] - g0["docks"],
            skipped=g1["skipped"] - g0["skipped"],
            late_ms_max=g1["late_ms_max"],
            samples=int(m1.get(SAMPLES, 0) - m0.get(SAMPLES, 0)),
            rejected=int(m1.get(REJECTED, 0) - m0.get(REJECTED, 0)),
            unknown=int(m1.get(UNKNOWN, 0) - m0.get(UNKNOWN, 0)),
            telemetry=per_viewer("telemetry", v0, v1),
            rtp=per_viewer("received", v0, v1),
            lost=per_viewer("lost", v0, v1),
            generator_cpu_pct=pct(0),
            viewers_cpu_pct=sum(pct(i) for i in range(1, len(others))),
        )
        log(
            f"{label}: gateway {result.cpu_per_s:.1f} ms CPU/s, aircraft osd "
            f"{result.per_s(result.aircraft_osd):.0f}/s, telemetry {result.per_s(sum(result.telemetry)):.0f} "
            "msg/s to viewers"
        )
        return result

    # --- the run --------------------------------------------------------------

    def run_phases(self) -> None:
        args = self.args
        log(f"logs in {self.run_dir}")
        clip = make_h264_clip(args.clip_dir, **CLIP)
        mqtt_port, rtmp_port = free_port(), free_port()
        if args.broker == "mosquitto":
            self.processes.append(start_mosquitto(self.run_dir, self.env, mqtt_port))
            mqtt = ["--mqtt", f"mqtt://127.0.0.1:{mqtt_port}", "--mqtt-broker", "off"]
        else:
            mqtt = ["--mqtt-broker", f"127.0.0.1:{mqtt_port}"]
        self.gateway = self.start_gateway(mqtt, rtmp_port)
        wait_tcp(mqtt_port, self.gateway)
        log(f"gateway up ({args.broker} broker on {mqtt_port})")
        self.workers = [self.child(f"viewers{i}", "viewers") for i in range(args.viewer_procs)]
        self.cameras = self.child("cameras", "cameras")
        self.cameras.request(
            "start", host="127.0.0.1", port=mqtt_port, clip=str(clip), docks=list(range(args.cameras))
        )
        self.devices = self.child("devices", "devices")
        self.devices.request(
            "connect", timeout=30.0 + 0.2 * args.devices,
            host="127.0.0.1", port=mqtt_port, devices=args.devices, announce_from=args.cameras,
        )  # fmt: skip
        self.wait_devices(args.devices)
        log(f"{args.devices} devices online")
        self.attach(telemetry=False)
        self.windows.append(self.measure_window("A", "no aircraft osd, viewers opted out"))
        self.devices.request("osd", rate=args.rate)
        # B and C alternate as B1 C1 C2 B2 B3 C3 ...: a steady drift of the machine (it shows
        # as A2 - A) then adds as much to the Bs as to the Cs, and each switch of the
        # viewers' telemetry re-attaches them once.
        taking = False
        for pair in range(1, args.repeat + 1):
            for kind in ("B", "C") if pair % 2 else ("C", "B"):
                if taking != (kind == "C"):
                    taking = kind == "C"
                    fan_out(self.workers, "close", timeout=60.0)
                    self.attach(telemetry=taking)
                viewers = "viewers take telemetry" if taking else "viewers opted out"
                what = f"aircraft osd {args.rate:g} Hz, {viewers}"
                self.windows.append(self.measure_window(f"{kind}{pair}", what))
        self.devices.request("osd", rate=0)
        viewers = "viewers take telemetry" if taking else "viewers opted out"
        self.windows.append(self.measure_window("A2", f"no aircraft osd, {viewers}"))
        fan_out(self.workers, "close", timeout=60.0)


# --- report ---------------------------------------------------------------------


def _spread(values: list[float]) -> str:
    return f"{min(values):.1f}/{statistics.median(values):.1f}/{max(values):.1f}"


def report(windows: list[Window], args: argparse.Namespace) -> tuple[str, dict[str, float]]:
    out = [
        f"telemetry: {args.devices} devices (aircraft osd at {args.rate:g} Hz each), {args.viewers} viewers "
        f"on {args.cameras} drone cameras ({'data channel' if args.data_channel else 'WebSocket'}), "
        f"telemetry_rate {args.telemetry_rate if args.telemetry_rate is not None else 'default'}; "
        f"{args.broker} broker; window {args.seconds:g} s; {os.cpu_count()} CPUs",
        "",
        "phase   gateway  osd sent  samples  rate-    telemetry  per viewer msg/s  video pkt/s   CPU % of",
        "       CPU ms/s        /s       /s  limited      msg/s    min/median/max   per viewer  gen. viewers",
    ]
    for w in windows:
        sent, telemetry = w.per_s(w.aircraft_osd + w.dock_osd), w.per_s(sum(w.telemetry))
        spread = _spread([w.per_s(n) for n in w.telemetry])
        video = statistics.median(w.rtp) / w.seconds
        out.append(
            f"{w.label:5s} {w.cpu_per_s:9.1f} {sent:9.0f} {w.per_s(w.samples):8.0f} {w.rejected:8d}"
            f" {telemetry:10.0f} {spread:>17s} {video:12.0f} {w.generator_cpu_pct:5.0f}"
            f" {w.viewers_cpu_pct:7.0f}"
        )
    described: dict[str, str] = {}
    for w in windows:
        described.setdefault(w.label if w.label.startswith("A") else w.label[0] + "n", w.what)
    out.extend(f"  {label}: {what}" for label, what in described.items())
    results: dict[str, float] = {}
    base = [w for w in windows if w.label in ("A", "A2")]
    intake = [w for w in windows if w.label.startswith("B")]
    pairs = [(b, c) for b in intake for c in windows if c.label == "C" + b.label[1:]]
    out.append("")
    if base and intake:
        base_cpu = statistics.mean(w.cpu_per_s for w in base)
        added = statistics.mean(w.cpu_per_s for w in intake) - base_cpu
        osd = statistics.mean(w.per_s(w.aircraft_osd) for w in intake)
        results["us_per_osd"] = 1000.0 * added / osd
        each = ", ".join(f"{1000.0 * (w.cpu_per_s - base_cpu) / w.per_s(w.aircraft_osd):.0f}" for w in intake)
        out.append(
            f"intake:   (B - A) / osd       = {results['us_per_osd']:6.1f} us gateway CPU per osd message "
            f"({added:.1f} ms/s for {osd:.0f} osd/s; A = mean of {'/'.join(w.label for w in base)}; "
            f"each B: {each})"
        )
    if pairs:
        delivery = statistics.mean(c.cpu_per_s - b.cpu_per_s for b, c in pairs)
        delivered = statistics.mean(c.per_s(sum(c.telemetry)) for _, c in pairs)
        results["us_per_delivered"] = 1000.0 * delivery / delivered
        results["ms_per_viewer_s"] = delivery / args.viewers
        each = ", ".join(
            f"{1000.0 * (c.cpu_per_s - b.cpu_per_s) / max(1e-9, c.per_s(sum(c.telemetry))):.1f}"
            for b, c in pairs
        )
        out.append(
            f"delivery: (C - B) / delivered = {results['us_per_delivered']:6.1f} us per telemetry message "
            f"to a viewer ({delivery:.1f} ms/s for {delivered:.0f} msg/s; each pair: {each}); "
            f"{results['ms_per_viewer_s']:.3f} ms/s per viewer at {delivered / args.viewers:.1f} msg/s"
        )
    first = windows[0] if windows and windows[0].label == "A" else None
    if first is not None and pairs:
        results["c_over_a"] = statistics.mean(c.cpu_per_s for _, c in pairs) / first.cpu_per_s
        results["b_over_a"] = statistics.mean(b.cpu_per_s for b, _ in pairs) / first.cpu_per_s
        ratios = f"ratios: C/A {results['c_over_a']:.2f}, B/A {results['b_over_a']:.2f}"
        last = windows[-1]
        if last.label == "A2":
            results["drift"] = last.cpu_per_s / first.cpu_per_s
            ratios += f"; drift A2/A {results['drift']:.2f} (the baseline again at the end)"
        out.append(ratios)
    loaded = [w for w in windows if w.aircraft_osd]
    rejected = sum(w.rejected for w in loaded)
    unknown = sum(w.unknown for w in windows)
    skipped = sum(w.skipped for w in windows)
    late = max((w.late_ms_max for w in windows), default=0.0)
    out.append(
        f"osd dropped by the gateway's rate limit: {rejected}; of unknown devices: {unknown}; skipped by "
        f"the generator (behind schedule): {skipped}; generator's worst wake-up delay {late:.0f} ms"
    )
    return "\n".join(out), results


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="scripts/bench/telemetry",
        description="Gateway CPU per DJI osd message and per telemetry message to a viewer.",
    )
    parser.add_argument("--devices", type=int, default=100, help="docks, one aircraft each (100)")
    parser.add_argument("--rate", type=float, default=10.0, help="aircraft osd per second, each (10)")
    parser.add_argument("--viewers", type=int, default=40, help="WebRTC viewers (40)")
    parser.add_argument(
        "--cameras", type=int, default=4, help="drone cameras watched, viewers spread evenly (4)"
    )
    parser.add_argument("--seconds", type=float, default=20.0, help="measurement window per phase (20)")
    parser.add_argument("--settle", type=float, default=3.0, help="pause before each window (3)")
    parser.add_argument(
        "--repeat", type=int, default=2, help="B/C pairs (2): their spread shows the noise of C - B"
    )
    parser.add_argument("--viewer-procs", type=int, default=2, help="viewer processes (2)")
    parser.add_argument(
        "--telemetry-rate", type=float, help="the gateway's telemetry_rate (default: its own, 10 a second)"
    )
    parser.add_argument(
        "--data-channel", action="store_true", help="viewers take telemetry on the data channel"
    )
    default_broker = "embedded"
    parser.add_argument(
        "--broker",
        choices=["embedded", "mosquitto"],
        default=default_broker,
        help="the gateway's embedded MQTT broker (its CPU counted as the gateway's; default) or Mosquitto",
    )
    parser.add_argument(
        "--clip-dir",
        type=Path,
        default=Path(tempfile.gettempdir()) / "skyrelay-clips",
        help="test clip cache",
    )
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    args = parser.parse_args(argv)
    if min(args.devices, args.viewers, args.cameras, args.viewer_procs, args.repeat) <= 0:
        parser.error("--devices, --viewers, --cameras, --viewer-procs and --repeat must be positive")
    if args.cameras > min(args.devices, args.viewers):
        parser.error("--cameras: at most --devices and at most --viewers")
    if args.seconds <= 0 or args.rate <= 0:
        parser.error("--seconds and --rate must be positive")
    if args.broker == "mosquitto" and not os.path.exists(MOSQUITTO):
        parser.error(f"--broker mosquitto: {MOSQUITTO} is not installed")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    bench = TelemetryBench(args)
    started = time.monotonic()
    error: str | None = None
    try:
        bench.run_phases()
    except KeyboardInterrupt:
        log("interrupted")
        bench.stop_all()
        return 130
    except (ChildError, OSError) as exc:
        gateway_log = bench.gateway.log_tail() if bench.gateway is not None else ""
        error = f"{exc}\n--- gateway log ---\n{gateway_log}"
        log(f"failed: {exc}")
    finally:
        bench.stop_all()
    windows = bench.windows
    text, results = report(windows, args)
    print(text)
    if error:
        print(f"FAILED: {error}")
    log(f"total {time.monotonic() - started:.0f} s")
    if args.json:
        data = {
            "args": {k: str(v) for k, v in vars(args).items()},
            "windows": [asdict(w) for w in windows],
            "results": results,
            "error": error,
        }
        args.json.write_bytes(orjson.dumps(data, option=orjson.OPT_INDENT_2))
    return 1 if error else 0
