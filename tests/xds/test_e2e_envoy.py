"""End to end: labxds's control plane drives a real Envoy (SotW and Delta ADS) in front of echo
services, as the lab does. Every port is chosen by the kernel."""

from __future__ import annotations

import contextlib
import socket
import time

import pytest
from envoy_helpers import free_port

from labxds import (
    CLUSTER,
    LISTENER,
    ControlPlane,
    PushRejected,
    Snapshot,
    cluster,
    http_listener,
    load_assignment,
    route_configuration,
    sandbox_resources,
    sandbox_snapshot,
)
from labxds.envoy import Envoy, render_bootstrap
from labxds.lab import EchoFleet, EchoService
from labxds.notebook import curl
from labxds.notebook.tables import status_table, trace_table

pytestmark = pytest.mark.envoy

NODE = "test-id"  # the sandbox bootstrap's node id


@pytest.fixture(params=[False, True], ids=["sotw", "delta"])
def delta(request):
    return request.param


@pytest.fixture
def cp():
    plane = ControlPlane(port=0).start()
    yield plane
    plane.stop()


@pytest.fixture
def envoy(cp, delta):
    proxy = Envoy(render_bootstrap(xds_port=cp.port, admin_port=0, delta=delta))
    proxy.start()
    try:
        cp.wait_for_node(NODE, 10)
        yield proxy
    finally:
        proxy.stop()


@pytest.fixture
def services():
    fleet = EchoFleet({"service1": 1, "service2": 1}).start()
    yield fleet
    fleet.stop()


def get(port: int, path: str = "/"):
    row = curl(port, path=path, timeout=2).iloc[0]
    return row


def wait_served_by(port: int, name: str, timeout: float = 10.0, path: str = "/") -> None:
    """Retry until Envoy answers from ``name`` (listeners and clusters warm asynchronously)."""
    deadline = time.monotonic() + timeout
    while True:
        row = get(port, path)
        if row["served_by"] == name:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{port}{path} not served by {name} within {timeout}s: {dict(row)}")
        time.sleep(0.05)


def lds_responses(cp: ControlPlane, version: str) -> list[str]:
    t = trace_table(cp, NODE)
    rows = t[(t["type"] == "LDS") & (t["kind"] == "response") & (t["version"] == version)]
    return list(rows["resources"])


def test_envoy_follows_the_control_plane(cp, envoy, services, delta):
    service1, service2 = services["service1"][0], services["service2"][0]
    port = free_port()
    pid = envoy.pid

    # Only the bootstrap: nothing listens on the listener port yet.
    assert get(port)["error"] == "connection refused"

    # The sandbox's snapshot, version "1", served by service1.
    cp.push(sandbox_snapshot("127.0.0.1", service1.port, listener_port=port), timeout=10)
    wait_served_by(port, "service1")
    assert get(port)["status"] == 200

    # Switch to service2 as version "2": same Envoy, new cluster endpoint.
    cp.push(sandbox_snapshot("127.0.0.1", service2.port, version="2", listener_port=port), timeout=10)
    wait_served_by(port, "service2")
    clusters = envoy.admin.config_dump(resource="dynamic_active_clusters")["configs"]
    proxy = next(c for c in clusters if c["cluster"]["name"] == "example_proxy_cluster")
    if delta:
        # Delta versions each resource by its content (so unchanged ones are never resent); the
        # snapshot's "2" is the response's system_version_info, which Envoy ACKs.
        entry = cp.snapshot().entries(CLUSTER)["example_proxy_cluster"]
        assert proxy["version_info"] == entry.version
    else:
        assert proxy["version_info"] == "2"
    assert status_table(cp).set_index("type").loc["CDS", "acked"] == "2"
    sock = proxy["cluster"]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]
    assert int(sock["port_value"]) == service2.port
    assert envoy.pid == pid, "Envoy was reconfigured, not restarted"

    # The listener moves to a route configuration of another name: the old one is removed
    # through its listener (rule 9), never by an RDS removal racing the listener update.
    moved = Snapshot([
        cluster("example_proxy_cluster", [("127.0.0.1", service1.port)], type="LOGICAL_DNS"),
        route_configuration("other_route", "example_proxy_cluster"),
        http_listener("listener_0", port, "other_route"),
    ], version="3")
    cp.push(moved, timeout=10)
    wait_served_by(port, "service1")
    routes = envoy.admin.config_dump(resource="dynamic_route_configs")["configs"]
    assert "other_route" in [r["route_config"]["name"] for r in routes]
    trace = trace_table(cp, NODE)
    rds = trace[trace["type"] == "RDS"]
    assert (rds["removed"] == "").all(), rds[rds["removed"] != ""]


def test_rule15_nacked_update_keeps_the_valid_listeners_running(cp, envoy, services, delta):
    service1, service2 = services["service1"][0], services["service2"][0]
    port = free_port()
    pid = envoy.pid
    cp.push(sandbox_snapshot("127.0.0.1", service2.port, listener_port=port), timeout=10)
    wait_served_by(port, "service2")

    # Version "2" adds a listener on a port something else holds: Envoy NACKs it with its own
    # words, keeps the good listener running, and the bad version is never sent again.
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        busy = holder.getsockname()[1]
        bad = Snapshot(
            sandbox_resources("127.0.0.1", service2.port, listener_port=port)
            + [http_listener("listener_busy", busy, "local_route")],
            version="2",
        )
        with pytest.raises(PushRejected) as info:
            cp.push(bad, timeout=10)
        text = str(info.value)
        assert f"{NODE} rejected LDS" in text and str(busy) in text, text
        assert "already in use" in text.lower() or "cannot bind" in text.lower(), text
        assert set(info.value.errors) == {(NODE, LISTENER)}

        # Traffic keeps flowing on the previous configuration.
        assert get(port)["served_by"] == "service2"

        # Rule 15: a NACK does not mean nothing was applied. Envoy's own view: the failed
        # listener in error_state, the good one still active.
        dump = envoy.admin.config_dump(resource="dynamic_listeners")["configs"]
        listeners = {entry["name"]: entry for entry in dump if "name" in entry}
        assert "error_state" in listeners["listener_busy"], listeners["listener_busy"]
        assert str(busy) in listeners["listener_busy"]["error_state"]["details"]
        assert "active_state" in listeners["listener_0"]
        assert "error_state" not in listeners["listener_0"]
        status = status_table(cp).set_index("type")
        assert status.loc["LDS", "nacked"] == "2"
        # SotW sends CDS "2" (a new version of a full-state type); Delta sends only what changed
        assert status.loc["CDS", "acked"] == ("1" if delta else "2")

        # Rule 4: the refused version is not resent, not even when pushed again.
        with pytest.raises(PushRejected):
            cp.push(bad, timeout=2)
        time.sleep(0.5)
        sent = lds_responses(cp, "2")
        assert len(sent) == 1, sent
        assert "listener_busy" in sent[0]

    # The next good version is applied.
    cp.push(sandbox_snapshot("127.0.0.1", service1.port, version="3", listener_port=port), timeout=10)
    wait_served_by(port, "service1")
    assert status_table(cp).set_index("type").loc["LDS", "acked"] == "3"
    names = [e["name"] for e in envoy.admin.config_dump(resource="dynamic_listeners")["configs"]]
    assert "listener_0" in names
    assert envoy.pid == pid


def test_round_robin_over_two_instances(cp, envoy, delta):
    fleet = EchoFleet({"static": 2, "eds": 2}).start()
    try:
        port = free_port()
        snap = Snapshot([
            cluster("static", fleet.endpoints("static"), type="STATIC"),
            cluster("eds", type="EDS"),
            load_assignment("eds", fleet.endpoints("eds")),
            route_configuration("routes", routes={"/static": "static", "/eds": "eds"}),
            http_listener("rr", port, "routes"),
        ])
        cp.push(snap, timeout=10)
        for name in ("static", "eds"):
            wait_served_by(port, name, path=f"/{name}")
            rows = curl(port, 6, path=f"/{name}")
            assert list(rows["served_by"]) == [name] * 6, rows
            instances = list(rows["instance"])
            assert sorted(set(instances)) == [1, 2], instances
            assert all(a != b for a, b in zip(instances, instances[1:])), f"{name} does not alternate: {instances}"
        assert envoy.admin.config_dump(resource="dynamic_active_clusters")["configs"]
    finally:
        fleet.stop()


def test_envoy_waits_for_its_first_snapshot(cp, envoy):
    """Envoy waits for its initial CDS/LDS: no snapshot, no listener, not ready."""
    assert not envoy.admin.ready()
    assert cp.nodes() == [NODE]
    t = trace_table(cp, NODE)
    assert {"CDS", "LDS"} >= set(t["type"]) and "CDS" in set(t["type"])
    assert (t["kind"] == "response").sum() == 0
    service = EchoService("late").start()
    try:
        port = free_port()
        cp.push(sandbox_snapshot("127.0.0.1", service.port, listener_port=port), timeout=10)
        wait_served_by(port, "late")
        deadline = time.monotonic() + 10
        while not envoy.admin.ready() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert envoy.admin.ready()
    finally:
        service.stop()


# -- rule 14: TTL and heartbeats with a real Envoy --------------------------------------------

TTL_FEATURE = "xds.config.supports-resource-ttl"


@contextlib.contextmanager
def ttl_lab(delta: bool, features: tuple[str, ...] = (), **options):
    """A control plane (with ``options``) and an Envoy whose bootstrap node lists ``features``;
    yields them and the client_features of every stream's first request."""
    plane = ControlPlane(port=0, **options).start()
    seen: list[list[str]] = []
    plane.on("request", lambda node, req: seen.append(list(req.node.client_features)) if req.HasField("node") else None)
    bootstrap = render_bootstrap(xds_port=plane.port, admin_port=0, delta=delta)
    if features:
        bootstrap["node"]["client_features"] = list(features)
    proxy = Envoy(bootstrap)
    try:
        proxy.start()
        plane.wait_for_node(NODE, 10)
        yield plane, proxy, seen
    finally:
        proxy.stop()
        plane.stop()


def two_listeners(upstream_port: int, ttl) -> tuple[Snapshot, int, int]:
    """Listener "ttl" and listener "keep" in front of one cluster; ``ttl`` as Snapshot's."""
    keep, short = free_port(), free_port()
    snap = Snapshot([
        cluster("c", [("127.0.0.1", upstream_port)], type="STATIC"),
        route_configuration("r", "c"),
        http_listener("keep", keep, "r"),
        http_listener("ttl", short, "r"),
    ], version="1", ttl=ttl)
    return snap, keep, short


def active_listeners(envoy: Envoy) -> list[str]:
    dump = envoy.admin.config_dump(resource="dynamic_listeners").get("configs", [])
    return sorted(e["name"] for e in dump if "active_state" in e)


def heartbeats(cp: ControlPlane, type_short: str = "LDS") -> int:
    t = trace_table(cp, NODE)
    return int(((t["type"] == type_short) & (t["kind"] == "heartbeat")).sum())


def test_rule14_envoy_does_not_advertise_ttl_and_gets_plain_resources(services, delta):
    """Envoy 1.40 sends an empty client_features: a snapshot with TTLs reaches it without them,
    it gets no heartbeats, and nothing expires."""
    with ttl_lab(delta, heartbeat_interval=0.1) as (cp, envoy, seen):
        assert seen and all(TTL_FEATURE not in features for features in seen), seen
        snap, keep, short = two_listeners(services["service1"][0].port, ttl=0.5)
        cp.push(snap, timeout=10)
        wait_served_by(short, "service1")
        time.sleep(1.5)  # three TTLs
        assert get(short)["served_by"] == get(keep)["served_by"] == "service1"
        assert active_listeners(envoy) == ["keep", "ttl"]
        assert (trace_table(cp, NODE)["kind"] != "heartbeat").all()
        assert envoy.admin.stats("listener_manager.listener_removed")["listener_manager.listener_removed"] == 0


def test_rule14_envoy_with_the_feature_drops_a_listener_once_the_control_plane_is_gone(services, delta):
    """Envoy advertises the feature if its bootstrap's node lists it. Then a listener with a
    TTL lives as long as the heartbeats come (SotW: the resources again; Delta: bare ones), and
    is dropped one TTL after the control plane stops; the listener without TTL stays."""
    with ttl_lab(delta, (TTL_FEATURE,)) as (cp, envoy, seen):
        assert seen and all(TTL_FEATURE in features for features in seen), seen
        snap, keep, short = two_listeners(services["service1"][0].port, ttl={"ttl": 1.0})
        cp.push(snap, timeout=10)
        wait_served_by(short, "service1")
        time.sleep(2.5)  # 2.5 TTLs: only the heartbeats (every 0.5 s) keep "ttl"
        assert heartbeats(cp) >= 3
        assert active_listeners(envoy) == ["keep", "ttl"]
        assert get(short)["served_by"] == "service1"
        stopped = time.monotonic()
        cp.stop()
        deadline = stopped + 5
        while active_listeners(envoy) != ["keep"] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert active_listeners(envoy) == ["keep"], "the listener with a TTL expired"
        gone = time.monotonic() - stopped
        assert 0.3 < gone < 2.5, gone  # one TTL after the last heartbeat
        assert get(keep)["served_by"] == "service1"
        assert get(short)["error"] == "connection refused"
        removed = envoy.admin.stats("listener_manager.listener_removed")["listener_manager.listener_removed"]
        assert removed == 1


def test_rule14_bare_sotw_heartbeats_delete_envoys_listeners(services):
    """Why SotW heartbeats resend the resources by default: Envoy 1.40 leaves bare heartbeat
    resources out of a SotW update, so an LDS heartbeat reads as a state of the world without
    the listeners it beats for, and removes them. If this starts failing, Envoy handles bare
    SotW heartbeats: revisit the default."""
    with ttl_lab(False, (TTL_FEATURE,), heartbeat_interval=0.3, sotw_heartbeat="bare") as (cp, envoy, _):
        snap, _, _ = two_listeners(services["service1"][0].port, ttl={"ttl": 30})
        cp.push(snap, timeout=10)
        deadline = time.monotonic() + 5
        while (heartbeats(cp) == 0 or active_listeners(envoy) != ["keep"]) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert heartbeats(cp) >= 1
        assert active_listeners(envoy) == ["keep"], "the heartbeat removed the listener it beat for"
