"""The ControlPlane: lifecycle, push(wait=True), hooks, and the trace/status tables."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from xds_client import (
    CLUSTER,
    LISTENER,
    ROUTE,
    DeltaClient,
    SotwClient,
    StreamEnded,
    names,
    wait_processed,
)

from labxds import (
    ControlPlane,
    PortInUseError,
    PushRejected,
    PushTimeout,
    Snapshot,
    cluster,
    http_listener,
    route_configuration,
)
from labxds.notebook.tables import status_table, trace_table
from labxds.xds import control_plane as control_plane_mod


@pytest.fixture
def pool():
    with ThreadPoolExecutor(2) as ex:
        yield ex


def static(name: str, port: int = 1):
    return cluster(name, [("127.0.0.1", port)], type="STATIC")


def snap(*cluster_names: str, version=None, port: int = 1) -> Snapshot:
    return Snapshot([static(n, port) for n in cluster_names], version=version)


def _running_sotw(cp: ControlPlane, node: str = "node-a", version: str = "1") -> SotwClient:
    """A client that holds version ``version`` of CDS and is settled."""
    cp.set_snapshot(snap("a", version=version))
    c = SotwClient(cp.address, node)
    c.ack(c.subscribe(CLUSTER))
    cp.wait_for_node(node, 5)
    wait_processed(cp, [c])
    return c


# -- lifecycle -------------------------------------------------------------------------------


def test_start_returns_bound_and_serving():
    plane = ControlPlane(port=0)
    assert not plane.running
    try:
        assert plane.start() is plane
        assert plane.running and plane.port > 0
        assert plane.address == f"127.0.0.1:{plane.port}"
        with socket.create_connection(("127.0.0.1", plane.port), timeout=2):
            pass
        assert "serving" in repr(plane)
    finally:
        plane.stop()
    assert "stopped" in repr(plane)


def _listening_addresses(port: int) -> list[str]:
    """Hex local addresses of the sockets listening on ``port`` (from /proc/net/tcp and tcp6)."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in open(table).read().splitlines()[1:]:
            fields = line.split()
            addr, hexport = fields[1].split(":")
            if fields[3] == "0A" and int(hexport, 16) == port:  # 0A: LISTEN
                found.append(addr)
    return found


def test_default_bind_is_loopback_only(cp):
    assert ControlPlane().host == "127.0.0.1"
    listening = _listening_addresses(cp.port)
    # 127.0.0.1, as IPv4 or as the IPv4-mapped IPv6 address gRPC may use; never 0.0.0.0 or ::
    loopback = {"0100007F", "0000000000000000FFFF00000100007F"}
    assert listening and set(listening) <= loopback, listening


def test_second_start_on_the_same_port_returns_the_running_one(cp):
    again = ControlPlane(port=cp.port)
    assert again.start() is cp
    assert not again.running
    assert control_plane_mod.running(cp.port) is cp


def test_port_held_by_a_socket_raises_port_in_use_naming_it():
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        plane = ControlPlane(port=port)
        with pytest.raises(PortInUseError, match=str(port)) as info:
            plane.start()
        assert info.value.port == port
        assert not plane.running
        assert control_plane_mod.running(port) is None


def test_port_held_by_another_process_raises_port_in_use():
    code = ("import socket,sys; s=socket.socket(); s.bind(('127.0.0.1',0)); s.listen(); "
            "print(s.getsockname()[1], flush=True); sys.stdin.read()")
    holder = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        port = int(holder.stdout.readline())
        with pytest.raises(PortInUseError, match=f"port {port}"):
            ControlPlane(port=port).start()
    finally:
        holder.stdin.close()
        holder.wait(5)


def test_grpc_options_replace_the_control_planes_own():
    """gRPC keeps the first of two options with one key; the caller's must still win."""
    with ControlPlane(port=0, grpc_options=[("grpc.max_receive_message_length", 2048)]) as plane:
        plane.set_snapshot(snap("a"))
        c = SotwClient(plane.address, "big-request")
        try:
            c.send(CLUSTER, ["n" * 100] * 40)  # ~4 KB: over the caller's 2 KB, far under the default
            ended = c.ended()
        finally:
            c.close()
        assert ended.code == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_so_reuseport_is_off_by_default_and_on_when_asked():
    """Several processes may share a port only if each asks (bench/fanout_processes.py)."""
    with socket.socket() as holder:  # another server that allows sharing its port
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        with pytest.raises(PortInUseError):
            ControlPlane(port=port).start()
        shared = ControlPlane(port=port, grpc_options=[("grpc.so_reuseport", 1)]).start()
        try:
            assert shared.running and shared.port == port
        finally:
            shared.stop()


def test_stop_frees_the_port_and_ends_streams():
    plane = ControlPlane(port=0).start()
    port = plane.port
    c = _running_sotw(plane)
    assert plane.stream_count == 1
    plane.stop()
    assert not plane.running
    ended = c.ended(5)
    assert isinstance(ended, StreamEnded)
    c.close()
    assert _listening_addresses(port) == []
    with socket.socket() as probe:  # free again (SO_REUSEADDR: connections in TIME_WAIT do not count)
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(("127.0.0.1", port))
        probe.listen()
    plane.stop()  # twice is fine
    assert control_plane_mod.running(port) is None


def test_restart_on_the_same_port():
    plane = ControlPlane(port=0).start()
    port = plane.port
    plane.stop()
    again = ControlPlane(port=port).start()
    try:
        assert again.port == port and again.running
    finally:
        again.stop()


def test_the_same_control_plane_started_again_binds_its_port_and_keeps_its_state():
    """A control plane that was away and comes back (lesson 14): its clients retry the port they
    knew, even when the first start let the kernel pick it."""
    plane = ControlPlane(port=0).start()
    try:
        port = plane.port
        c = _running_sotw(plane)
        plane.stop()
        assert isinstance(c.ended(5), StreamEnded)
        c.close()
        plane.start()
        assert plane.running and plane.port == port
        assert control_plane_mod.running(port) is plane
        again = _running_sotw(plane)  # a client on the old port is served again
        assert plane.stream_count == 1
        again.close()
    finally:
        plane.stop()


def test_context_manager():
    with ControlPlane(port=0) as plane:
        assert plane.running
    assert not plane.running


# -- push(wait=True) -------------------------------------------------------------------------


def test_push_returns_once_the_node_acked(cp, pool):
    c = _running_sotw(cp)
    future = pool.submit(cp.push, snap("a", "b", version="2"), timeout=10)
    r = c.recv()
    assert r.version_info == "2"
    time.sleep(0.1)
    assert not future.done(), "push returned before the ACK"
    c.ack(r)
    pushed = future.result(10)
    assert pushed.version(CLUSTER) == "2"
    c.close()


def test_push_raises_push_rejected_with_the_nack_text(cp, pool):
    c = _running_sotw(cp)
    future = pool.submit(cp.push, snap("a", "bad", version="2"), timeout=10)
    r = c.recv()
    c.nack(r, "cluster 'bad': something Envoy dislikes", last_good="1")
    with pytest.raises(PushRejected, match="node-a rejected CDS: cluster 'bad': something Envoy dislikes") as info:
        future.result(10)
    assert info.value.errors == {("node-a", CLUSTER): "cluster 'bad': something Envoy dislikes"}
    assert cp.snapshot().version(CLUSTER) == "2", "the snapshot stays served"
    c.close()


def test_pushing_a_rejected_snapshot_again_is_rejected_again(cp, pool):
    """The NACKed version is never resent (rule 4), so it can never be applied: say so."""
    c = _running_sotw(cp)
    bad = snap("a", "bad", version="2")
    future = pool.submit(cp.push, bad, timeout=10)
    c.nack(c.recv(), "no thanks", last_good="1")
    with pytest.raises(PushRejected):
        future.result(10)
    wait_processed(cp, [c])
    with pytest.raises(PushRejected, match="no thanks"):
        cp.push(snap("a", "bad", version="2"), timeout=2)
    c.expect_nothing()
    c.close()


def test_push_timeout_names_the_missing_nodes(cp):
    c = _running_sotw(cp)
    started = time.monotonic()
    with pytest.raises(PushTimeout, match="node-a") as info:
        cp.push(snap("a", version="2"), timeout=0.5)
    assert info.value.missing == ["node-a"]
    assert 0.4 < time.monotonic() - started < 5
    c.close()


def test_push_waits_for_named_nodes_even_if_absent(cp):
    with pytest.raises(PushTimeout, match="ghost"):
        cp.push(snap("a"), nodes=["ghost"], timeout=0.3)


def test_push_without_wait_returns_at_once(cp):
    c = _running_sotw(cp)
    started = time.monotonic()
    cp.push(snap("a", version="2"), wait=False)
    assert time.monotonic() - started < 0.5
    assert c.recv().version_info == "2"
    c.close()


def test_push_with_nobody_connected_returns(cp):
    assert cp.push([static("a")]).names(CLUSTER) == {"a"}


def test_push_to_one_node_waits_only_for_it(cp, pool):
    a = _running_sotw(cp, "node-a")
    b = SotwClient(cp.address, "node-b")
    b.ack(b.subscribe(CLUSTER))
    future = pool.submit(cp.push, snap("only-a", version="a2"), "node-a", timeout=10)
    a.ack(a.recv())
    future.result(10)
    b.expect_nothing()
    a.close()
    b.close()


def test_push_waits_for_every_stream_of_the_node(cp, pool):
    a1 = _running_sotw(cp)
    a2 = SotwClient(cp.address, "node-a")
    a2.ack(a2.subscribe(CLUSTER))
    wait_processed(cp, [a1, a2])
    future = pool.submit(cp.push, snap("a", version="2"), timeout=10)
    a1.ack(a1.recv())
    r = a2.recv()
    time.sleep(0.1)
    assert not future.done()
    a2.ack(r)
    future.result(10)
    a1.close()
    a2.close()


def test_push_waits_until_new_routes_are_asked_for_and_acked(cp, pool):
    """A listener naming a new route configuration is not applied until RDS is."""
    cp.set_snapshot(Snapshot([static("c"), route_configuration("r1", "c"), http_listener("l", 10000, "r1")]))
    c = SotwClient(cp.address, "node-a")
    for url, wanted in ((CLUSTER, []), (LISTENER, []), (ROUTE, ["r1"])):
        c.ack(c.subscribe(url, wanted), wanted)
    wait_processed(cp, [c])
    future = pool.submit(cp.push, Snapshot([static("c"), route_configuration("r2", "c"),
                                            http_listener("l", 10000, "r2")]), timeout=10)
    lds = c.recv()
    assert lds.type_url == LISTENER
    c.ack(lds)
    wait_processed(cp, [c])
    time.sleep(0.1)
    assert not future.done(), "the client has not even asked for r2"
    c.send(ROUTE, ["r2"], c.received[2].version_info, c.received[2].nonce)
    rds = c.recv()
    assert names(rds) == ["r2"]
    c.ack(rds, ["r2"])
    future.result(10)
    c.close()


def test_push_waits_until_new_routes_are_asked_for_delta(cp, pool):
    cp.set_snapshot(Snapshot([static("c"), route_configuration("r1", "c"), http_listener("l", 10000, "r1")]))
    c = DeltaClient(cp.address, "node-a")
    for url, wanted in ((CLUSTER, []), (LISTENER, []), (ROUTE, ["r1"])):
        c.send(url, wanted)
        c.ack(c.recv())
    wait_processed(cp, [c])
    future = pool.submit(cp.push, Snapshot([static("c"), route_configuration("r2", "c"),
                                            http_listener("l", 10000, "r2")]), timeout=10)
    lds = c.recv()
    assert lds.type_url == LISTENER
    c.ack(lds)
    wait_processed(cp, [c])
    time.sleep(0.1)
    assert not future.done(), "the client has not even asked for r2"
    c.send(ROUTE, ["r2"], ["r1"], nonce=c.received[2].nonce)
    rds = c.recv()
    assert names(rds) == ["r2"]
    c.ack(rds)
    future.result(10)
    c.close()


def test_push_from_the_server_thread_is_refused(cp):
    errors: list[BaseException] = []

    def hook(*args):
        try:
            cp.push(snap("x"))
        except RuntimeError as exc:
            errors.append(exc)

    cp.on("stream_open", hook)
    c = SotwClient(cp.address, "node-a")
    c.send(CLUSTER)
    cp.wait_for_node("node-a", 5)
    wait_processed(cp, [c])
    assert errors and "deadlock" in str(errors[0])
    c.close()


def test_set_snapshot_accepts_a_list(cp):
    s = cp.set_snapshot([static("a")], "node-z")
    assert cp.snapshot("node-z") is s and cp.snapshot() is None


# -- hooks, trace, status ---------------------------------------------------------------------


def test_hooks_fire(cp):
    seen: list[tuple] = []
    lock = threading.Lock()

    def record(event):
        def hook(*args):
            with lock:
                seen.append((event, args))
        return hook

    for event in ("stream_open", "request", "response", "stream_close"):
        cp.on(event, record(event))
    cp.set_snapshot(snap("a", version="1"))
    c = SotwClient(cp.address, "node-a")
    r = c.subscribe(CLUSTER)
    c.ack(r)
    wait_processed(cp, [c])
    c.close()
    deadline = time.monotonic() + 5
    while not any(e == "stream_close" for e, _ in seen) and time.monotonic() < deadline:
        time.sleep(0.01)
    events = [e for e, _ in seen]
    assert events == ["stream_open", "request", "response", "request", "stream_close"]
    assert seen[0][1][0] == "node-a"
    assert seen[1][1][1].type_url == CLUSTER  # the DiscoveryRequest itself
    assert seen[2][1] == ("node-a", CLUSTER, "1", r.nonce, ["a"])
    assert seen[4][1][0] == "node-a"


def test_trace_has_the_expected_rows(cp):
    c = _running_sotw(cp)
    cp.set_snapshot(snap("a", "b", version="2"))
    c.nack(c.recv(), "nope", last_good="1")
    wait_processed(cp, [c])
    trace = trace_table(cp, "node-a")
    rows = list(zip(trace["direction"], trace["type"], trace["kind"], trace["version"], trace["nonce"],
                    trace["resources"], trace["error"]))
    assert rows == [
        ("received", "CDS", "request", "", "", "", ""),
        ("sent", "CDS", "response", "1", "1", "a", ""),
        ("received", "CDS", "ACK", "1", "1", "", ""),
        ("sent", "CDS", "response", "2", "2", "a, b", ""),
        ("received", "CDS", "NACK", "2", "2", "", "nope"),
    ]
    assert len(trace_table(cp, last=2)) == 2
    assert set(trace["node"]) == {"node-a"}
    c.close()


def test_status_has_one_row_per_node_and_type(cp):
    c = _running_sotw(cp)
    c.ack(c.subscribe(LISTENER))
    d = SotwClient(cp.address, "node-b")
    d.ack(d.subscribe(CLUSTER))
    wait_processed(cp, [c, d])
    status = status_table(cp)
    rows = sorted(zip(status["node"], status["type"], status["sent"], status["acked"]))
    assert rows == [("node-a", "CDS", "1", "1"), ("node-a", "LDS", "1", "1"), ("node-b", "CDS", "1", "1")]
    assert status["connected_since"].notna().all()
    assert cp.nodes() == ["node-a", "node-b"]
    ns = cp.node_status("node-a")
    assert ns.streams == 1 and ns.cluster == "test-cluster" and "labxds-tests" in ns.user_agent
    c.close()
    d.close()


def test_wait_for_node(cp):
    with pytest.raises(TimeoutError):
        cp.wait_for_node("nobody", 0.1)
    c = SotwClient(cp.address, "late")
    c.send(CLUSTER)
    assert cp.wait_for_node(timeout=5) == "late"
    c.close()


def test_authorize_refuses_unknown_nodes():
    plane = ControlPlane(port=0, authorize=lambda node, md: node == "friend").start()
    try:
        plane.set_snapshot(snap("a"))
        with SotwClient(plane.address, "friend") as ok:
            assert names(ok.subscribe(CLUSTER)) == ["a"]
        with SotwClient(plane.address, "stranger") as bad:
            bad.send(CLUSTER)
            assert "not authorized" in bad.ended().details
    finally:
        plane.stop()


def test_keepalive_must_be_positive_seconds():
    for bad in ((0, 1), (1, 0), (-1, 5)):
        with pytest.raises(ValueError, match="keepalive"):
            ControlPlane(0, keepalive=bad)
    ControlPlane(0, keepalive=None)  # off: TCP's own timeouts


def test_any_loopback_address_is_this_machine_only(caplog) -> None:
    """127.0.0.0/8 is loopback (the compose harness gives each service one): no warning there;
    every interface gets one."""
    import logging

    caplog.set_level(logging.WARNING, "labxds")
    for host in ("127.0.0.2", "::1"):
        plane = ControlPlane(port=0, host=host).start()
        plane.stop()
    assert "beyond this machine" not in caplog.text
    wide = ControlPlane(port=0, host="0.0.0.0").start()
    wide.stop()
    assert "beyond this machine" in caplog.text
