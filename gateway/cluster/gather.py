"""Sans-I/O: the machine's figures from its workers' reports (``--workers N``).

A worker asked ``/healthz``, ``/metrics`` or ``/api/streams`` asks the control process,
which asks every running worker for its own figures (a *report*) and returns them as a list
of `WorkerReport` dicts; the asking worker merges them here. Every rule of how figures add
up over the workers lives in this module:

- each worker reports only the streams it holds (a *mirror*, another worker's stream
  relayed to its viewers here, is not reported), so sums never count a stream twice;
- a worker that is not running or did not answer in time is listed as such, and the
  machine's status is ``degraded`` (the figures are those of the workers that answered);
- an MQTT link the workers each have (the SD view's) is up when it is up in every one;
- in ``/metrics`` every worker sample gets a ``worker`` label, each family's HELP and TYPE
  come once, and the control process adds the workers' own series.

A `WorkerReport` is ``{"index", "pid", "up", "restarts", "value", "error"}``: ``up`` the
worker runs (its gateway started), ``value`` its report (None when it gave none) and
``error`` why not.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

WorkerReport = dict[str, Any]

# /healthz figures that add up over the workers.
SUMMED = ("streams", "mirrors", "sessions", "peer_connections", "tasks", "threads", "fds")


def report_entry(index: int, pid: int | None, up: bool, restarts: int) -> WorkerReport:
    """A worker's entry before it answered (or if it does not)."""
    return {"index": index, "pid": pid, "up": up, "restarts": restarts, "value": None, "error": None}


def problems(reports: Sequence[WorkerReport]) -> list[str]:
    """What keeps the machine's figures from being whole, one line a worker."""
    found = []
    for report in reports:
        if not report["up"]:
            found.append(f"worker {report['index']} is not running (restarts: {report['restarts']})")
        elif report["value"] is None:
            found.append(f"worker {report['index']} did not answer: {report['error'] or 'no report'}")
    return found


# --- /healthz --------------------------------------------------------------------------------


def merge_health(reports: Sequence[WorkerReport], control: dict[str, Any]) -> dict[str, Any]:
    """The machine's ``/healthz``: the workers' figures summed (``SUMMED``), their task kinds
    counted together, every MQTT link (the control process's and the workers'), and a
    ``workers`` list with each worker's own figures. ``control``: the control process's
    figures (``pid``, ``mqtt_links``)."""
    answered = [report["value"] for report in reports if report["value"] is not None]
    task_kinds: Counter[str] = Counter()
    mqtt_links: dict[str, bool] = dict(control.get("mqtt_links") or {})
    for figures in answered:
        task_kinds.update(figures.get("task_kinds") or {})
        for name, up in (figures.get("mqtt_links") or {}).items():
            mqtt_links[name] = mqtt_links.get(name, True) and up is True
    trouble = problems(reports)
    return {
        "status": "degraded" if trouble else "ok",
        **{key: sum(int(figures.get(key, 0)) for figures in answered) for key in SUMMED},
        "task_kinds": dict(task_kinds.most_common()),
        "mqtt_links": mqtt_links,
        "problems": trouble,
        "control": {key: value for key, value in control.items() if key != "mqtt_links"},
        "workers": [_worker_health(report) for report in reports],
    }


def _worker_health(report: WorkerReport) -> dict[str, Any]:
    entry = {key: report[key] for key in ("index", "pid", "up", "restarts")}
    entry["answering"] = report["value"] is not None
    if report["value"] is not None:
        entry.update(report["value"])
    elif report["error"]:
        entry["error"] = report["error"]
    return entry


# --- /metrics --------------------------------------------------------------------------------


def merge_metrics(reports: Sequence[WorkerReport], control_text: str = "") -> str:
    """The machine's exposition: the control process's own series (``control_text``, the
    embedded broker's), the workers' series (`worker_series`), then every worker's
    samples with ``worker="i"``, each family's HELP and TYPE once."""
    parts: list[tuple[str | None, str]] = [(None, control_text), (None, worker_series(reports))]
    parts += [(str(report["index"]), str(report["value"])) for report in reports if report["value"]]
    return render_families(parse_families(parts))


def worker_series(reports: Sequence[WorkerReport]) -> str:
    """The control process's series about its workers."""
    up = [report for report in reports if report["up"]]
    lines = [
        "# HELP skyrelay_workers Worker processes running.",
        "# TYPE skyrelay_workers gauge",
        f"skyrelay_workers {len(up)}",
        "# HELP skyrelay_worker_up 1 while a worker runs and answered this scrape.",
        "# TYPE skyrelay_worker_up gauge",
        *(
            f'skyrelay_worker_up{{worker="{r["index"]}"}} {1 if r["up"] and r["value"] is not None else 0}'
            for r in reports
        ),
        "# HELP skyrelay_worker_restarts_total Times a worker was started again after it died.",
        "# TYPE skyrelay_worker_restarts_total counter",
        *(f'skyrelay_worker_restarts_total{{worker="{r["index"]}"}} {r["restarts"]}' for r in reports),
    ]
    return "\n".join(lines) + "\n"


# A family: its HELP and TYPE lines and its samples, in the order they came.
Families = dict[str, tuple[list[str], list[str]]]


def parse_families(parts: Iterable[tuple[str | None, str]]) -> Families:
    """Expositions (as `gateway.http.metrics` renders them: each family's HELP and TYPE,
    then its samples) grouped by family, each sample labelled with its part's worker
    (None: no label)."""
    families: Families = {}
    for worker, text in parts:
        current: tuple[list[str], list[str]] | None = None
        for line in text.split("\n"):  # not splitlines(): a label value may hold \r, \x1e, ...
            if not line:
                continue
            if line.startswith("#"):
                words = line.split(" ", 3)
                if len(words) >= 3 and words[1] in ("HELP", "TYPE"):
                    current = families.setdefault(words[2], ([], []))
                    if not any(kept.split(" ", 3)[1] == words[1] for kept in current[0]):
                        current[0].append(line)
                continue
            if current is None:  # a sample before any HELP/TYPE: a family of its own
                current = families.setdefault(_sample_name(line), ([], []))
            current[1].append(line if worker is None else with_label(line, "worker", worker))
    return families


def render_families(families: Families) -> str:
    return "".join("\n".join([*head, *samples]) + "\n" for head, samples in families.values())


def with_label(sample: str, key: str, value: str) -> str:
    """One sample line with the label ``key="value"`` first."""
    name = _sample_name(sample)
    rest = sample[len(name) :]
    label = f'{key}="{value}"'
    if rest.startswith("{}"):
        return f"{name}{{{label}}}{rest[2:]}"
    if rest.startswith("{"):
        return f"{name}{{{label},{rest[1:]}"
    return f"{name}{{{label}}}{rest}"


def _sample_name(sample: str) -> str:
    end = len(sample)
    for mark in ("{", " "):
        at = sample.find(mark)
        if at != -1:
            end = min(end, at)
    return sample[:end]


# --- /api/streams and the REST API -----------------------------------------------------------


def merge_streams(reports: Sequence[WorkerReport]) -> list[dict[str, Any]]:
    """Every worker's streams (each ``worker`` said), by name."""
    streams = [
        {**stream, "worker": report["index"]} for report in reports for stream in report["value"] or ()
    ]
    return sorted(streams, key=lambda stream: (str(stream.get("name")), stream["worker"]))


def merge_entries(reports: Sequence[WorkerReport]) -> list[dict[str, Any]]:
    """Every worker's entries of the WCS REST API's stream list, worker by worker."""
    return [entry for report in reports for entry in report["value"] or ()]
