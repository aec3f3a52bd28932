"""The course's views on a real Envoy: curl -i, raw /config_dump and jq, the topology and sequence
pictures, and check/solve as a notebook uses them. One lab for the module."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator

import pytest
from envoy_helpers import free_port

import labxds
from labxds.envoy.jq import configs_index
from labxds.notebook import Lab, course, diagrams, raw

pytestmark = pytest.mark.envoy



@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    running = Lab(xds_port=free_port(), admin_port=0, listener_port=free_port()).start(progress=False)
    yield running
    running.stop()


def _arrow(model: tuple[list[diagrams.Box], list[diagrams.Arrow]], src: str, dst: str) -> diagrams.Arrow:
    return next(a for a in model[1] if a.src == src and a.dst == dst)


def test_before_any_snapshot(lab: Lab) -> None:
    """The sandbox's start: curl is refused, the jq path is null, the picture has no listener."""
    lab.push(labxds.Snapshot([], version="0"))
    refused = lab.curl_i()
    assert refused["error"] and str(refused).startswith("curl: (7) Failed to connect")
    assert f"port {lab.listener_port}" in str(refused)
    dump = lab.config_dump()
    assert raw.jq(dump, raw.SANDBOX_JQ) is None
    assert raw.jq(dump, ".configs[1].static_clusters[0].cluster.name") == "xds_cluster"
    index = configs_index(dump)
    assert [r["type"] for r in index[:2]] == ["BootstrapConfigDump", "ClustersConfigDump"]
    model = diagrams.topology_model(lab)
    assert not _arrow(model, "you", "listener").active
    assert _arrow(model, "envoy", "cp").active  # Envoy holds its ADS stream even with nothing to run
    assert not any(a.active for a in model[1] if a.dst.startswith("svc:"))


def test_after_the_sandbox_snapshot(lab: Lab) -> None:
    mark = lab.mark()
    lab.push(lab.sandbox_snapshot("service1", version="1"))
    answer = lab.curl_i()
    assert (answer["http_version"], answer["status"], answer["reason"]) == ("HTTP/1.1", 200, "OK")
    assert answer.header("server") == "envoy"
    assert answer.header("x-envoy-upstream-service-time", ).isdigit()
    assert answer["body"].startswith("Request served by service1")
    assert str(answer).startswith("HTTP/1.1 200 OK\nserver: envoy\n")

    host, port = lab.upstream("service1")
    dump = lab.config_dump()
    assert raw.jq(dump, raw.SANDBOX_JQ) == {"address": host, "port_value": port}
    if shutil.which("jq"):
        assert raw.run_jq(dump, raw.SANDBOX_JQ + ".port_value") == f"{port}\n"
    types = [r["type"] for r in configs_index(dump)]
    assert "RoutesConfigDump" in types and "ListenersConfigDump" in types

    model = diagrams.topology_model(lab)
    to_service1 = _arrow(model, "listener", "svc:service1")
    assert to_service1.active and to_service1.label == "example_proxy_cluster"
    assert not _arrow(model, "listener", "svc:service2").active
    assert _arrow(model, "you", "listener").active
    picture = diagrams.topology(lab)
    assert picture.png.startswith(b"\x89PNG") and picture._repr_png_() == picture.png

    rows, skipped = diagrams.sequence_model(lab, since=mark)
    kinds = [(r.type, r.direction, r.kind, r.version) for r in rows]
    assert skipped == 0
    for type_ in ("CDS", "LDS", "RDS"):
        assert (type_, "sent", "response", "1") in kinds
        assert (type_, "received", "ACK", "1") in kinds
    assert all(r.time >= mark for r in rows)


def test_a_nack_in_the_pictures(lab: Lab) -> None:
    before = len(lab.cp.trace(lab.node_id))
    host, port = lab.upstream("service2")
    broken = labxds.Snapshot([
        labxds.cluster("example_proxy_cluster", [(host, port)], type="LOGICAL_DNS"),
        labxds.route_configuration("local_route", "example_proxy_cluster"),
        labxds.http_listener("listener_0", lab.listener_port, "local_route", stat_prefix=""),
    ], version="2")
    with pytest.raises(labxds.PushRejected):
        lab.push(broken)
    picture = diagrams.sequence(lab, before)
    nacks = [r for r in picture.rows if r.kind == "NACK"]
    assert [(r.type, r.version) for r in nacks] == [("LDS", "2")]
    assert "StatPrefix" in nacks[0].error
    assert len(picture.rows) == len(lab.cp.trace(lab.node_id)) - before
    assert picture.png.startswith(b"\x89PNG")
    # Envoy applied the new cluster of the rejected version: the picture shows traffic to service2
    model = diagrams.topology_model(lab)
    assert _arrow(model, "listener", "svc:service2").active
    assert not _arrow(model, "listener", "svc:service1").active
    short = diagrams.sequence(lab, last=3)
    assert len(short.rows) == 3 and short.skipped == len(lab.cp.trace(lab.node_id)) - 3


def test_the_picture_without_the_control_plane(lab: Lab) -> None:
    """Envoy keeps its listener and clusters; only the ADS stream is gone, and comes back."""
    lab.control_plane.stop()
    try:
        deadline = time.monotonic() + 10
        while lab.admin.stats("^control_plane.connected_state$")["control_plane.connected_state"] != 0:
            assert time.monotonic() < deadline, "Envoy did not notice the control plane had gone"
            time.sleep(0.1)
        boxes, arrows = diagrams.topology_model(lab)
        state = {b.key: b.active for b in boxes}
        assert state["envoy"] and state["admin"] and state["listener"] and not state["cp"]
        assert not _arrow((boxes, arrows), "envoy", "cp").active
        assert _arrow((boxes, arrows), "you", "listener").active
    finally:
        lab.control_plane.start()
        lab.control_plane.wait_for_node(lab.node_id, timeout=30)


def test_check_shows_a_hint_and_never_raises(lab: Lab, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(course.STRICT_ENV, raising=False)
    result = course.check("1.1", lab, None)
    assert isinstance(result, course.Checked) and not result.passed
    assert "node_id is still None" in result.detail and "server_info" in result.hint
    assert "✗ 1.1" in repr(result) and "Hint:" in result._repr_html_()
    wrong_type = course.check("1.1", lab, 42)
    assert not wrong_type.passed and "not a string" in wrong_type.detail
    unknown = course.check("1.99", lab)
    assert not unknown.passed and "1.1" in unknown.detail
    monkeypatch.setenv(course.STRICT_ENV, "1")
    with pytest.raises(course.ExerciseFailed, match="1.1"):
        course.check("1.1", lab, None)
    passed = course.check("1.1", lab, lab.admin.server_info()["node"]["id"])
    assert passed.passed and repr(passed).startswith("✓ 1.1")


def test_solve_runs_the_solution_and_checks_it(lab: Lab, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(course.STRICT_ENV, "1")
    ns = course.namespace(lab)
    assert course.solve("1.1", lab, ns) == lab.node_id
    assert ns["node_id"] == lab.node_id  # the solution's names are defined afterwards
    table = course.exercises(2)
    assert list(table["key"][:3]) == ["2.1", "2.2", "2.3"]


def test_solve_in_a_notebook_defines_the_answer_and_shows_it_once(lab: Lab, monkeypatch: pytest.MonkeyPatch) -> None:
    """In IPython, solve runs the solution in the notebook's namespace; check's result shows once."""
    from IPython.core.interactiveshell import InteractiveShell

    monkeypatch.setenv(course.STRICT_ENV, "1")
    shell = InteractiveShell.instance()
    shown: list[object] = []
    monkeypatch.setattr(course, "_display", lambda result: shown.append(result))
    try:
        shell.user_ns["lab"] = lab
        outcome = shell.run_cell('from labxds.notebook import check, solve\nsolve("1.1", lab)\n')
        assert outcome.success, outcome.error_in_exec
        assert shell.user_ns["node_id"] == lab.node_id
        outcome = shell.run_cell('check("1.1", lab, node_id)')
        assert outcome.success and outcome.result.passed
        assert len(shown) == 2  # solve's check and this one; the cell's value did not show it again
        outcome.result._ipython_display_()  # as this cell's value: already shown
        assert len(shown) == 2
    finally:
        InteractiveShell.clear_instance()
