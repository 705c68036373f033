"""How the machine's figures add up over its workers (`gateway.cluster.gather`), which HTTP
requests are about one stream by name (`gateway.cluster.forward.stream_named`), and that a
worker's own figures leave out its mirrors."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from gateway.cluster import gather
from gateway.cluster.forward import MachineCall, json_list, machine_call, stream_named
from gateway.cluster.machine import worker_health
from gateway.http.metrics import Family, _streams
from gateway.http.server import stream_list
from gateway.media.registry import StreamRegistry


def report(index: int, value: Any, *, up: bool = True, restarts: int = 0, error: str | None = None) -> dict:
    entry = gather.report_entry(index, 100 + index, up, restarts)
    entry.update(value=value, error=error)
    return entry


def figures(streams: int, sessions: int, kinds: dict[str, int]) -> dict[str, Any]:
    return {
        "streams": streams,
        "mirrors": 1,
        "sessions": sessions,
        "peer_connections": sessions,
        "tasks": sum(kinds.values()),
        "task_kinds": kinds,
        "threads": 3,
        "fds": 30,
        "mqtt_links": {},
        "webrtc_ports": {"udp_port": 5000},
    }


def test_health_sums_the_workers_and_lists_each() -> None:
    reports = [report(0, figures(2, 3, {"a": 2, "b": 1})), report(1, figures(1, 4, {"a": 5}), restarts=2)]
    merged = gather.merge_health(reports, {"pid": 7, "mqtt_links": {"dji": True}})
    assert merged["status"] == "ok" and merged["problems"] == []
    assert (merged["streams"], merged["mirrors"], merged["sessions"], merged["tasks"]) == (3, 2, 7, 8)
    assert merged["task_kinds"] == {"a": 7, "b": 1}
    assert merged["mqtt_links"] == {"dji": True}
    assert merged["control"] == {"pid": 7}
    second = merged["workers"][1]
    assert second["index"] == 1 and second["pid"] == 101 and second["restarts"] == 2
    assert second["answering"] and second["sessions"] == 4 and second["webrtc_ports"] == {"udp_port": 5000}


def test_a_link_of_every_worker_is_up_when_it_is_up_in_each() -> None:
    def linked(sd_view: bool) -> dict[str, Any]:
        return {**figures(0, 0, {}), "mqtt_links": {"sd_view": sd_view}}

    control = {"mqtt_links": {"dji": True}}
    both = gather.merge_health([report(0, linked(True)), report(1, linked(True))], control)
    assert both["mqtt_links"] == {"dji": True, "sd_view": True}
    for first, second in ((False, True), (True, False)):
        merged = gather.merge_health([report(0, linked(first)), report(1, linked(second))], control)
        assert merged["mqtt_links"] == {"dji": True, "sd_view": False}
        assert [w["mqtt_links"]["sd_view"] for w in merged["workers"]] == [first, second]


def test_a_worker_down_or_silent_is_listed_and_the_status_says_so() -> None:
    reports = [
        report(0, figures(2, 3, {})),
        report(1, None, up=False, restarts=1, error="not running"),
        report(2, None, error="no report in 2 s"),
    ]
    merged = gather.merge_health(reports, {})
    assert merged["status"] == "degraded"
    assert merged["streams"] == 2  # the figures of those that answered
    assert merged["problems"] == [
        "worker 1 is not running (restarts: 1)",
        "worker 2 did not answer: no report in 2 s",
    ]
    assert [(w["index"], w["up"], w["answering"]) for w in merged["workers"]] == [
        (0, True, True),
        (1, False, False),
        (2, True, False),
    ]
    assert merged["workers"][2]["error"] == "no report in 2 s" and "streams" not in merged["workers"][2]


def exposition(families: list[Family]) -> str:
    return "\n".join(line for family in families for line in family.lines()) + "\n"


label_values = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12)
worker_families = st.lists(
    st.lists(
        st.tuples(
            st.dictionaries(st.sampled_from(["stream", "kind"]), label_values, max_size=2),
            st.integers(0, 10**6),
        ),
        max_size=3,
    ),
    min_size=1,
    max_size=3,
)


@given(st.lists(worker_families, min_size=1, max_size=3))
def test_metrics_label_every_worker_sample_and_say_help_and_type_once(
    workers: list[list[list[tuple[dict[str, str], int]]]],
) -> None:
    texts = []
    for samples_by_family in workers:
        families = []
        for number, samples in enumerate(samples_by_family):
            family = Family(f"skyrelay_f{number}", "gauge", "Some figure.")
            for labels, value in samples:
                family.add(value, **labels)
            families.append(family)
        texts.append(exposition(families))
    reports = [report(index, text) for index, text in enumerate(texts)]
    broker = Family("skyrelay_broker", "gauge", "Control's.")
    broker.add(1)
    merged = gather.merge_metrics(reports, exposition([broker]))
    lines = merged.split("\n")
    names = {f"skyrelay_f{n}" for samples in workers for n in range(len(samples))} | {"skyrelay_broker"}
    for name in names:
        assert lines.count(f"# HELP {name} Some figure.") + lines.count(f"# HELP {name} Control's.") == 1
        assert lines.count(f"# TYPE {name} gauge") == 1
    # Every worker sample is there once, with its worker's label, under its family's head.
    for index, text in enumerate(texts):
        for sample in text.split("\n"):
            if sample and not sample.startswith("#"):
                assert gather.with_label(sample, "worker", str(index)) in lines
    samples = [line for line in lines if line.startswith("skyrelay_f")]
    assert len(samples) == sum(len(s) for w in workers for s in w)
    assert all('{worker="' in line for line in samples)
    assert "skyrelay_broker 1" in lines  # the control process's own: no worker label
    current = None
    for line in lines:  # each sample follows its own family's HELP/TYPE
        if line.startswith("# TYPE "):
            current = line.split()[2]
        elif line and not line.startswith("#"):
            assert line.split("{")[0].split(" ")[0] == current


def test_a_label_goes_first_in_any_sample() -> None:
    assert gather.with_label("m 1", "worker", "0") == 'm{worker="0"} 1'
    assert gather.with_label('m{a="x {y} z"} 2', "worker", "1") == 'm{worker="1",a="x {y} z"} 2'
    assert gather.with_label("m{} 3", "worker", "2") == 'm{worker="2"} 3'


def test_the_workers_own_series() -> None:
    text = gather.worker_series([report(0, "x"), report(1, None, up=False, restarts=3)])
    lines = text.splitlines()
    assert "skyrelay_workers 1" in lines
    assert 'skyrelay_worker_up{worker="0"} 1' in lines and 'skyrelay_worker_up{worker="1"} 0' in lines
    assert 'skyrelay_worker_restarts_total{worker="1"} 3' in lines


def test_streams_of_every_worker_by_name() -> None:
    reports = [report(0, [{"name": "b"}, {"name": "d"}]), report(1, [{"name": "a"}]), report(2, None)]
    assert gather.merge_streams(reports) == [
        {"name": "a", "worker": 1},
        {"name": "b", "worker": 0},
        {"name": "d", "worker": 0},
    ]
    assert gather.merge_entries([report(0, [{"x": 1}]), report(1, None), report(2, [{"y": 2}])]) == [
        {"x": 1},
        {"y": 2},
    ]


def test_which_requests_are_about_one_stream_by_name() -> None:
    name = {"name": "dji/sn/1"}
    assert stream_named("/api/streams/{name}", name, None) == "dji/sn/1"
    assert stream_named("/api/streams/{name}/thumbnail.jpg", name, None) == "dji/sn/1"
    assert stream_named("/api/streams/{name}/{action}", name, None) == "dji/sn/1"
    assert stream_named("/hls/{name}/seg-{sequence}.m4s", name, None) == "dji/sn/1"
    assert stream_named("/whep/{name}", name, None) is None  # a play: any worker (a mirror)
    assert stream_named("/api/streams", {}, None) is None
    assert stream_named("/api/recordings/{id}", {"id": "x"}, None) is None
    assert stream_named(None, name, None) is None
    snapshot = "/rest-api/stream/snapshot"
    assert stream_named(snapshot, {}, {"streamName": "cam"}) == "cam"
    assert stream_named(snapshot, {}, {"streamName": 5, "name": "cam2"}) == "cam2"
    assert stream_named(snapshot, {}, ["cam"]) is None
    assert stream_named("/rest-api/stream/startRecording", {}, {"mediaSessionId": "m"}) is None
    assert stream_named("/rest-api/push/startup", {}, {"streamName": "cam"}) == "cam"
    assert stream_named("/rest-api/stream/find_all", {}, {"name": "cam"}) is None


def test_which_requests_the_machine_answers_by_id_or_as_one_list() -> None:
    assert machine_call("DELETE", "/whip/{key}/{resource}") is MachineCall.BY_ID
    assert machine_call("DELETE", "/whep/sessions/{resource}") is MachineCall.BY_ID
    assert machine_call("POST", "/rest-api/stream/terminate") is MachineCall.BY_ID
    assert machine_call("POST", "/rest-api/push/terminate") is MachineCall.BY_ID
    assert machine_call("POST", "/rest-api/rtsp/terminate") is MachineCall.BY_ID
    assert machine_call("GET", "/rest-api/connection/find_all") is MachineCall.LIST
    assert machine_call("POST", "/rest-api/push/find") is MachineCall.LIST
    assert machine_call("POST", "/rest-api/recorder/find_all") is MachineCall.LIST
    # Not these: a stream by name (`stream_named`), the machine's own lists, new sessions.
    assert machine_call("POST", "/rest-api/stream/find_all") is None
    assert machine_call("POST", "/whip/{key}") is None
    assert machine_call("PATCH", "/whep/sessions/{resource}") is None
    assert machine_call("DELETE", "/rest-api/connection/find_all") is None
    assert machine_call("GET", None) is None


def test_a_list_answer_and_what_is_not_one() -> None:
    assert json_list(200, b'[{"a": 1}]') == [{"a": 1}]
    assert json_list(404, b'{"error": "not found"}') == []  # none here
    assert json_list(200, b'{"a": 1}') is None  # not a list
    assert json_list(200, b"not json") is None
    assert json_list(500, b"[]") is None
    assert json_list(403, b"[]") is None


def test_a_workers_own_figures_leave_out_its_mirrors() -> None:
    registry = StreamRegistry()
    registry.claim("held")
    registry.claim("relayed", on_demand=True, mirror=True)
    assert [entry["name"] for entry in stream_list(registry)] == ["held"]
    count = _streams(registry)[0]
    assert count.samples == [({}, 1)]
    assert all(
        labels.get("stream") != "relayed" for family in _streams(registry) for labels, _ in family.samples
    )
    assert worker_health({"streams": 1}, registry) == {"streams": 1, "mirrors": 1}
