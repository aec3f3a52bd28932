"""The workshop's state survives a restart: SQLite store, real Envoys, nothing pushed twice."""

from __future__ import annotations

import time

import pytest

from envoy_helpers import free_port
from labxds.classroom import CheckResult, Workshop, canary, routes, sandbox
from labxds.notebook import Lab

pytestmark = [pytest.mark.envoy, pytest.mark.timeout(120)]

NAMES = ("alice", "bob", "carol")
COUNTERS = "^(cluster_manager.cds.update_success|listener_manager.lds.update_success)$"


def wait_for(predicate, timeout: float, what: str):  # noqa: ANN001, ANN201
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} within {timeout:g}s")
        time.sleep(0.05)
    return value


def acked(ws: Workshop, name: str) -> dict[str, str | None]:
    node = ws.control_plane.tracker.node(name)
    return {url: st.acked_version for url, st in node.types.items()} if node else {}


@pytest.fixture
def store(tmp_path):
    return tmp_path / "workshop.sqlite"


def test_a_restarted_workshop_serves_the_same_versions_and_sends_nothing_again(store, tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    port = free_port()
    ws = Workshop(port=port, tokens=True, desk_port=None, store=store).start()
    labs: dict[str, Lab] = {}
    try:
        tokens = {n: ws.add_learner(n) for n in NAMES}
        for n in NAMES:
            labs[n] = Lab(control_plane=ws.address, node_id=n, token=tokens[n], admin_port=0,
                            listener_port=free_port()).start(progress=False)
        ws.broadcast(sandbox("service1"))
        ws.push(routes({"/api": "service2", "/": "service1"}), "bob")
        ws.group("team", ["alice", "carol"])
        ws.push(canary({"service1": 80, "service2": 20}), "team")
        result = ws.check("route-api", "bob")
        assert result.passed and result.confirmed
        versions = {n: acked(ws, n) for n in NAMES}
        served = {n: ws.snapshot_of(n).versions for n in NAMES}
        counters = {n: labs[n].admin.stats(COUNTERS) for n in NAMES}
        assert all(versions[n] for n in NAMES)
        ws.stop()

        # The instructor's side is gone; every Envoy keeps serving what it has.
        assert list(labs["bob"].curl(1, path="/api")["served_by"]) == ["service2"]

        ws = Workshop(port=port, tokens=True, desk_port=None, store=store).start()
        assert [n for n in ws.learners() if n in NAMES] == list(NAMES)
        assert {n: ws.token(n) for n in NAMES} == tokens
        assert ws.groups == {"team": ["alice", "carol"]}
        assert ws.source_of("bob") == "own: routes({'/api': 'service2', '/': 'service1'})"
        assert ws.source_of("alice").startswith("own: canary(")
        assert ws.progress["bob"]["route-api"].passed and ws.progress["bob"]["route-api"].confirmed
        assert {n: ws.snapshot_of(n).versions for n in NAMES} == served

        cp = ws.control_plane
        for n in NAMES:
            wait_for(lambda n=n: cp.tracker.applied(n, cp.cache.get(n)), 30, f"{n}'s Envoy did not resync")
        time.sleep(0.5)  # a response sent by mistake would have been traced by now
        for n in NAMES:
            events = cp.tracker.events(n)
            requests = {e.type_url: e.version for e in events if e.kind == "request"}
            assert requests == versions[n], f"{n}'s Envoy reconnected holding {requests}, not {versions[n]}"
            responses = [(e.type_url, e.version) for e in events if e.kind == "response"]
            assert responses == [], f"{n} was sent again what it held: {responses}"
            assert acked(ws, n) == versions[n]
            assert labs[n].admin.stats(COUNTERS) == counters[n], f"{n}'s Envoy applied an update"

        # The restarted workshop goes on: one learner's push reaches that learner only.
        ws.push(sandbox("service2"), "carol")
        assert list(labs["carol"].curl(1)["served_by"]) == ["service2"]
        for n in ("alice", "bob"):
            assert labs[n].admin.stats(COUNTERS) == counters[n]
    finally:
        for lab in labs.values():
            lab.stop()
        ws.stop()


def test_the_store_keeps_what_the_instructor_set_before_anyone_connected(store):
    ws = Workshop(port=0, tokens=True, desk_port=None, store=store)
    assert store.stat().st_mode & 0o077 == 0  # every learner's token is in it
    token = ws.add_learner("dave")
    ws.broadcast(canary({"service1": 50, "service2": 50}), wait=False)
    ws.group("late", ["dave"])
    ws.record(CheckResult("route-api", "dave", False, hint="try again"))
    ws.store.close()
    again = Workshop(port=0, tokens=True, desk_port=None, store=store)
    assert again.token("dave") == token
    assert again.source_of("dave").startswith("class: canary(")
    assert again.groups == {"late": ["dave"]}
    assert again.progress["dave"]["route-api"].hint == "try again"
    again.store.close()


def test_a_template_of_your_own_keeps_its_snapshot_with_a_warning(store, caplog):
    from labxds.xds import Snapshot, cluster

    ws = Workshop(port=0, desk_port=None, store=store)
    ws.add_learner("erin")

    def mine(learner):  # noqa: ANN001, ANN202
        return Snapshot([cluster("mine", [("127.0.0.1", 9)], type="STATIC")], version="7")

    ws.push(mine, "erin", wait=False)
    ws.store.close()
    again = Workshop(port=0, desk_port=None, store=store)
    # erin never connected: nothing was rendered for her, and the function itself is not kept
    assert "mine was a function of your own" in caplog.text
    assert again.source_of("erin") == "-"
    again.store.close()
