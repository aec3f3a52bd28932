"""The tracker: node status, the trace, hooks, and waiting for a push to be applied."""

from __future__ import annotations

import threading
import time

import pytest

from labxds import CLUSTER, LISTENER, PushRejected, PushTimeout, Snapshot, cluster
from labxds.xds import TraceEvent, Tracker
from labxds.xds.tracking import _is_version_of


def _ev(kind: str, url: str = CLUSTER, version: str = "1", node: str = "a", error: str = "", t: float | None = None,
        direction: str | None = None) -> TraceEvent:
    return TraceEvent(t if t is not None else time.time(), node, 1, direction or ("sent" if kind == "response" else "received"),
                      kind, url, version, "1", ("c",), (), error)


def _snap(version: str = "1") -> Snapshot:
    return Snapshot([cluster("c", [("127.0.0.1", 1)], type="STATIC")], version=version)


def test_record_updates_sent_acked_nacked():
    tr = Tracker()
    tr.record(_ev("response", version="1"))
    tr.record(_ev("ACK", version="1"))
    tr.record(_ev("response", version="2"))
    tr.record(_ev("NACK", version="2", error="bad cluster"))
    st = tr.node("a").types[CLUSTER]
    assert (st.sent_version, st.acked_version, st.nacked_version, st.nack_error) == ("2", "1", "2", "bad cluster")
    assert tr.nacked_version("a", CLUSTER) == "2"
    assert tr.nacked_version("a", LISTENER) is None and tr.nacked_version("zz", CLUSTER) is None


def test_trace_is_bounded_per_node():
    tr = Tracker(trace_size=3)
    for i in range(5):
        tr.record(_ev("response", version=str(i)))
    tr.record(_ev("response", node="b"))
    assert [e.version for e in tr.events("a")] == ["2", "3", "4"]
    assert len(tr.events()) == 4


def test_a_node_keeps_what_its_client_announced():
    tr = Tracker()
    tr.stream_opened("g", "c", "gRPC C-core", ["xds.config.resource-in-sotw"])
    assert tr.node("g").client_features == ("xds.config.resource-in-sotw",)
    tr.stream_opened("g", "c", "gRPC C-core")  # a later stream says what it says, nothing more
    assert tr.node("g").client_features == ()


def test_trace_and_status_rows():
    tr = Tracker()
    tr.stream_opened("a", "test-cluster", "envoy 1.40")
    tr.record(_ev("response", version="1"))
    tr.record(_ev("NACK", version="1", error="no"))
    tr.record(_ev("response", url=LISTENER, version="1"))
    trace = tr.trace_rows()
    assert list(trace[0]) == ["time", "node", "stream", "direction", "type", "kind", "version", "nonce",
                              "resources", "removed", "error"]
    assert [r["kind"] for r in trace] == ["response", "NACK", "response"]
    assert [r["type"] for r in trace] == ["CDS", "CDS", "LDS"]
    assert trace[1]["error"] == "no"
    assert tr.trace_rows(last=1) == trace[-1:]
    status = tr.status_rows()
    assert [r["type"] for r in status] == ["CDS", "LDS"]  # push order
    cds = status[0]
    assert (cds["node"], cds["sent"], cds["nacked"], cds["nack_error"]) == ("a", "1", "1", "no")
    assert cds["connected_since"] > 0


def test_stream_counting_and_connected():
    tr = Tracker()
    tr.stream_opened("a", "c", "ua")
    tr.stream_opened("a", "c", "ua")
    assert tr.connected() == ["a"] and tr.node("a").streams == 2
    tr.stream_closed("a", 1)
    assert tr.connected() == ["a"]
    tr.stream_closed("a", 2)
    assert tr.connected() == [] and tr.node("a").connected_since is None


def test_disconnected_nodes_are_kept_up_to_a_bound_longest_gone_forgotten_first():
    tr = Tracker(keep_disconnected=2)
    forgotten: list[str] = []
    tr.on_forget(forgotten.append)
    tr.stream_opened("live", "c", "ua")
    for i, node in enumerate(["a", "b", "c", "d"]):
        tr.stream_opened(node, "c", "ua")
        tr.record(_ev("response", node=node))
        tr.stream_closed(node, i)
    assert forgotten == ["a", "b"]
    assert tr.node("a") is None and tr.events("a") == [] and tr.node("c") is not None
    assert sorted(r["node"] for r in tr.status_rows()) == ["c", "d"]  # "live" has no type yet: no row
    assert tr.node("live") is not None  # a connected node is never forgotten

    tr.stream_opened("c", "c", "ua")  # c comes back: d is now the only one gone
    tr.stream_opened("e", "c", "ua")
    tr.stream_closed("e", 9)
    assert forgotten == ["a", "b"] and tr.node("c").streams == 1
    tr.stream_opened("f", "c", "ua")
    tr.stream_closed("f", 10)
    assert forgotten == ["a", "b", "d"]
    with pytest.raises(ValueError, match="keep_disconnected"):
        Tracker(keep_disconnected=-1)


def test_hooks_fire_and_a_failing_hook_is_contained(caplog):
    tr = Tracker()
    seen = []
    remove = tr.on("response", lambda *args: seen.append(args))
    tr.on("response", lambda *args: 1 / 0)
    tr.emit_response("a", CLUSTER, "1", "n1", ["c"])
    assert seen == [("a", CLUSTER, "1", "n1", ["c"])]
    assert "hook" in caplog.text
    remove()
    tr.emit_response("a", CLUSTER, "2", "n2", [])
    assert len(seen) == 1
    with pytest.raises(ValueError, match="stream_open"):
        tr.on("nonsense", print)


def test_is_version_of_includes_the_retained_interim():
    assert _is_version_of("3", "3") and _is_version_of("3+retained", "3")
    assert not _is_version_of("30", "3") and not _is_version_of("3", None)


def test_wait_applied_returns_once_settled():
    tr = Tracker()
    snap = _snap()
    tr.stream_opened("a", "c", "ua")

    def settle():
        time.sleep(0.1)
        tr.settled("a", 7, snap)

    threading.Thread(target=settle).start()
    start = time.monotonic()
    tr.wait_applied(snap, ["a"], 5, time.time(), lambda n: snap)
    assert time.monotonic() - start < 2


def test_wait_applied_needs_every_stream_of_the_node():
    tr = Tracker()
    snap = _snap()
    tr.stream_opened("a", "c", "ua")
    tr.stream_opened("a", "c", "ua")
    tr.settled("a", 1, snap)
    with pytest.raises(PushTimeout):
        tr.wait_applied(snap, ["a"], 0.2, time.time(), lambda n: snap)
    tr.settled("a", 2, snap)
    tr.wait_applied(snap, ["a"], 0.2, time.time(), lambda n: snap)


def test_wait_applied_raises_push_rejected_with_the_nack_text():
    tr = Tracker()
    snap = _snap("5")
    tr.stream_opened("a", "c", "ua")
    since = time.time()
    tr.record(_ev("NACK", version="5+retained", error="Envoy says no"))
    with pytest.raises(PushRejected, match="a rejected CDS: Envoy says no") as info:
        tr.wait_applied(snap, ["a"], 5, since, lambda n: snap)
    assert info.value.errors == {("a", CLUSTER): "Envoy says no"}


def test_old_nacks_do_not_reject_a_new_push():
    tr = Tracker()
    snap = _snap("6")
    tr.stream_opened("a", "c", "ua")
    tr.record(_ev("NACK", version="5", error="old", t=time.time() - 10))
    tr.record(_ev("NACK", version="4", error="other version"))
    with pytest.raises(PushTimeout):
        tr.wait_applied(snap, ["a"], 0.1, time.time() - 1, lambda n: snap)


def test_every_refused_version_is_remembered_not_only_the_last():
    """Rule 4 for each version a node NACKed, not only the last: NACK v1, NACK v2, back to v1's
    content, and v1 used to be sent again. The push says so with v1's own error."""
    tr = Tracker()
    tr.stream_opened("a", "c", "ua")
    tr.record(_ev("NACK", version="5", error="five is bad", t=time.time() - 10))
    tr.record(_ev("NACK", version="4", error="four is bad"))
    assert tr.has_refused("a", CLUSTER, "5") and tr.has_refused("a", CLUSTER, "4")
    assert not tr.has_refused("a", CLUSTER, "6")
    snap = _snap("5")
    with pytest.raises(PushRejected, match="five is bad"):
        tr.wait_applied(snap, ["a"], 1, time.time(), lambda n: snap)


def test_an_earlier_nack_of_exactly_this_version_rejects_a_repush():
    """The server never resends a refused version: pushing it again cannot succeed."""
    tr = Tracker()
    snap = _snap("5")
    tr.stream_opened("a", "c", "ua")
    tr.settled("a", 1, snap)
    tr.record(_ev("NACK", version="5", error="still bad", t=time.time() - 10))
    with pytest.raises(PushRejected, match="still bad"):
        tr.wait_applied(snap, ["a"], 1, time.time(), lambda n: snap)
    tr.record(_ev("ACK", version="5"))  # applied after all (Delta: fixed resources, same label)
    tr.wait_applied(snap, ["a"], 1, time.time(), lambda n: snap)


def test_an_earlier_nack_of_the_interim_version_does_not_reject():
    tr = Tracker()
    snap = _snap("5")
    tr.stream_opened("a", "c", "ua")
    tr.settled("a", 1, snap)
    tr.record(_ev("NACK", version="5+retained", error="x", t=time.time() - 10))
    tr.wait_applied(snap, ["a"], 1, time.time(), lambda n: snap)


def test_applied_and_refused_say_where_a_node_stands_on_a_snapshot():
    tr = Tracker()
    snap, other = _snap("5"), _snap("6")
    assert not tr.applied("a", snap) and tr.refused("a", snap) == {}
    tr.stream_opened("a", "c", "ua")
    tr.stream_opened("a", "c", "ua")
    tr.settled("a", 1, snap)
    assert not tr.applied("a", snap)  # one of its two streams is not there yet
    tr.settled("a", 2, snap)
    assert tr.applied("a", snap) and not tr.applied("a", other)
    tr.record(_ev("NACK", version="5", error="bad cluster"))
    assert tr.refused("a", snap) == {CLUSTER: "bad cluster"} and tr.refused("a", other) == {}
    tr.record(_ev("ACK", version="5"))  # applied after all
    assert tr.refused("a", snap) == {}
    tr.record(_ev("NACK", version="6+retained", error="x"))  # an interim state's NACK, not 6's
    assert tr.refused("a", other) == {}


def test_push_timeout_names_the_missing_nodes():
    tr = Tracker()
    snap = _snap()
    for n in ("a", "b"):
        tr.stream_opened(n, "c", "ua")
    tr.settled("a", 1, snap)
    with pytest.raises(PushTimeout, match="b") as info:
        tr.wait_applied(snap, ["a", "b"], 0.2, time.time(), lambda n: snap)
    assert info.value.missing == ["b"]


def test_node_that_moved_to_a_newer_snapshot_no_longer_counts():
    tr = Tracker()
    snap, newer = _snap("1"), _snap("2")
    tr.stream_opened("a", "c", "ua")
    tr.wait_applied(snap, ["a"], 0.2, time.time(), lambda n: newer)


def test_wait_connected():
    tr = Tracker()
    with pytest.raises(TimeoutError, match="'x' did not connect"):
        tr.wait_connected("x", 0.1)
    threading.Timer(0.1, tr.stream_opened, args=("x", "c", "ua")).start()
    assert tr.wait_connected("x", 5) == "x"
    assert tr.wait_connected(None, 1) == "x"
