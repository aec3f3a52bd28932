"""The lab runtime against the real Envoy: start, idempotency, errors, tables, no orphans."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from envoy_helpers import free_port

import labxds
from labxds.envoy import EnvoyPortBusy
from labxds.notebook import Lab
from labxds.xds import PortInUseError

pytestmark = pytest.mark.envoy

REPO = Path(__file__).resolve().parents[2]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); it is gone for our purposes.
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split(")")[-1].split()[0] != "Z"


def _wait_gone(pid: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _pid_alive(pid):
            return True
        time.sleep(0.05)
    return False


@pytest.fixture
def lab():
    lab = Lab(xds_port=0, admin_port=0, listener_port=free_port()).start(progress=False)
    yield lab
    lab.stop()


def test_lab_serves_the_sandbox_then_switches_without_restarting_envoy(lab: Lab) -> None:
    refused = lab.curl(1)
    assert refused.loc[0, "error"] == "connection refused"

    lab.push(lab.sandbox_snapshot("service1", version="1"))
    served = lab.curl(3)
    assert list(served["served_by"]) == ["service1"] * 3
    host, port = lab.upstream("service1")
    assert lab.sandbox_endpoint() == f"{host}:{port}"
    clusters = lab.clusters()
    assert clusters.loc[0, "name"] == "example_proxy_cluster"
    assert clusters.loc[0, "version_info"] == "1"

    pid = lab.envoy.pid
    lab.push(lab.sandbox_snapshot("service2", version="2"))
    assert list(lab.curl(2)["served_by"]) == ["service2"] * 2
    host2, port2 = lab.upstream("service2")
    assert lab.sandbox_endpoint() == f"{host2}:{port2}"
    assert lab.clusters().loc[0, "version_info"] == "2"
    assert lab.envoy.pid == pid

    routes = lab.routes()
    assert routes.loc[0, "route_config"] == "local_route"
    listeners = lab.listeners()
    assert listeners.loc[0, "name"] == "listener_0" and listeners.loc[0, "port"] == lab.listener_port
    endpoints = lab.endpoints_table()
    assert (endpoints["port"] == port2).any()


def test_starting_again_returns_the_running_lab(lab: Lab) -> None:
    again = Lab(xds_port=lab.xds_port).start(progress=False)
    assert again is lab
    assert lab.running


def test_where_lists_every_component(lab: Lab) -> None:
    where = lab.where()
    assert set(where["component"]) >= {"control plane (ADS)", "Envoy admin", "Envoy listener", "service1 #1", "service2 #1"}
    assert all(a.startswith(("127.0.0.1", "http://127.0.0.1")) for a in where["address"])


def test_round_robin_over_several_instances() -> None:
    with Lab(xds_port=0, admin_port=0, listener_port=free_port(), services={"service1": 2}) as lab:
        resources = [
            labxds.cluster("web", type="EDS"),
            labxds.load_assignment("web", lab.endpoints("service1")),
            labxds.route_configuration("local_route", "web"),
            labxds.http_listener("listener_0", lab.listener_port, "local_route"),
        ]
        lab.push(labxds.Snapshot(resources))
        instances = list(lab.curl(6)["instance"])
        assert sorted(set(instances)) == [1, 2]
        assert all(a != b for a, b in zip(instances, instances[1:])), instances


def test_busy_xds_port_names_the_port() -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        lab = Lab(xds_port=port, admin_port=0, listener_port=free_port())
        with pytest.raises(PortInUseError, match=str(port)):
            lab.start(progress=False)
        assert not lab.running


def test_busy_admin_port_names_the_port_and_cleans_up() -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        lab = Lab(xds_port=0, admin_port=port, listener_port=free_port())
        with pytest.raises(EnvoyPortBusy, match=str(port)):
            lab.start(progress=False)
        # The control plane that did start was stopped again: nothing is left half-running.
        assert lab.control_plane is not None and not lab.control_plane.running
        assert not any(s.running for s in lab.services)


def test_stop_leaves_no_envoy_behind() -> None:
    lab = Lab(xds_port=0, admin_port=0, listener_port=free_port()).start(progress=False)
    pid = lab.envoy.pid
    lab.stop()
    assert _wait_gone(pid)
    lab.stop()  # twice is fine


def test_envoy_dies_with_a_killed_parent(tmp_path: Path) -> None:
    script = tmp_path / "parent.py"
    script.write_text(textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(REPO)!r})
        from labxds.notebook import Lab
        lab = Lab(xds_port=0, admin_port=0, listener_port={free_port()}).start(progress=False)
        print(lab.envoy.pid, flush=True)
        time.sleep(60)
    """))
    # TMPDIR: Envoy's work dir goes under the test's own, since a killed parent cannot remove it
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True,
                              env=dict(os.environ, TMPDIR=str(tmp_path)))
    try:
        envoy_pid = int(parent.stdout.readline())
        assert _pid_alive(envoy_pid)
        parent.send_signal(signal.SIGKILL)
        parent.wait(10)
        assert _wait_gone(envoy_pid), "Envoy outlived its killed parent"
    finally:
        parent.kill()


def test_docker_mode_uses_the_service_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LABXDS_MODE", "docker")
    lab = Lab()
    assert lab.upstream("service2") == ("service2", 8080)
    assert lab.admin_url == "http://proxy:19000"
    assert lab.listener_url == "http://proxy:10000"


def test_bad_mode_and_port_variables_are_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LABXDS_MODE", "kubernetes")
    with pytest.raises(ValueError, match="LABXDS_MODE"):
        Lab()
    monkeypatch.setenv("LABXDS_MODE", "local")
    monkeypatch.setenv("LABXDS_ADMIN_PORT", "nineteen")
    with pytest.raises(ValueError, match="LABXDS_ADMIN_PORT"):
        Lab()


def test_labxds_up_serves_service1_and_stops_on_sigint() -> None:
    xds, admin, listener = free_port(), free_port(), free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "labxds", "up", "--xds-port", str(xds), "--admin-port", str(admin),
         "--listener-port", str(listener)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("Ctrl-C"):
                break
        assert any("labxds lab up in" in line for line in lines), "".join(lines) + proc.stderr.read()
        envoy_pid = int(next(line for line in lines if "Envoy pid" in line).rsplit(" ", 1)[-1].rstrip(")\n"))
        from labxds.notebook import curl

        assert curl(listener, 2)["served_by"].tolist() == ["service1", "service1"]
        proc.send_signal(signal.SIGINT)
        assert proc.wait(15) == 0
        assert curl(listener, 1).loc[0, "error"] == "connection refused"
        assert _wait_gone(envoy_pid, 5)
    finally:
        proc.kill()


@pytest.mark.parametrize("delta", [False, True], ids=["sotw", "delta"])
def test_changed_eds_cluster_gets_its_unchanged_assignment_again(delta: bool) -> None:
    """Rule 11: Envoy's replacement cluster warms until it receives its ClusterLoadAssignment."""
    with Lab(xds_port=0, admin_port=0, listener_port=free_port(), delta=delta) as lab:

        def snapshot(policy: str, version: str) -> labxds.Snapshot:
            return labxds.Snapshot([
                labxds.cluster("web", type="EDS", lb_policy=policy),
                labxds.load_assignment("web", lab.endpoints("service1")),
                labxds.route_configuration("local_route", "web"),
                labxds.http_listener("listener_0", lab.listener_port, "local_route"),
            ], version=version)

        lab.push(snapshot("ROUND_ROBIN", "1"))
        lab.push(snapshot("RANDOM", "2"), timeout=5)  # timed out waiting for warming before the fix
        assert lab.clusters().loc[0, "lb_policy"] == "RANDOM"
        assert lab.curl(1).loc[0, "served_by"] == "service1"


def test_a_new_lab_starts_on_the_ports_the_last_one_just_freed() -> None:
    """Re-running a lesson right after the previous one stopped: TIME_WAIT is not "busy"."""
    ports = {"xds_port": free_port(), "admin_port": free_port(), "listener_port": free_port()}
    first = Lab(**ports).start(progress=False)
    first.push(first.sandbox_snapshot("service1"))
    assert first.curl(2)["served_by"].tolist() == ["service1"] * 2
    first.clusters()  # an admin connection, closed by Envoy when it stops
    first.stop()
    second = Lab(**ports).start(progress=False)
    try:
        second.push(second.sandbox_snapshot("service2"))
        assert second.curl(1).loc[0, "served_by"] == "service2"
    finally:
        second.stop()
