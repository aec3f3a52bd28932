"""The lab under docker compose (LABXDS_MODE=docker), against a real Envoy that outlives the lab.

tests/test_compose_topology.py runs the whole compose topology; these check the runtime's docker
mode on free ports: an Envoy started before the lab (as the proxy container is) whose bootstrap
names the lab's port, names that resolve to addresses (``localhost``), and what switches a lab to
running its own Envoy in the container.
"""

from __future__ import annotations

import time

import pytest
from envoy_helpers import free_port

import labxds
from labxds.envoy import Envoy, render_bootstrap
from labxds.lab import LocalLabOnly, local_lab_only
from labxds.notebook import Lab


@pytest.fixture
def docker(monkeypatch: pytest.MonkeyPatch):
    """Docker mode, with Envoy and the control plane on this machine's loopback."""
    monkeypatch.setenv("LABXDS_MODE", "docker")
    monkeypatch.setenv("LABXDS_ENVOY_HOST", "127.0.0.1")
    monkeypatch.setenv("LABXDS_LISTEN_HOST", "127.0.0.1")
    for var in ("LABXDS_XDS_HOST", "LABXDS_XDS_PORT", "LABXDS_ADMIN_PORT", "LABXDS_LISTENER_PORT"):
        monkeypatch.delenv(var, raising=False)


def test_compose_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LABXDS_MODE", "docker")
    monkeypatch.delenv("LABXDS_LISTEN_HOST", raising=False)
    lab = Lab()
    assert lab.mode.docker and lab.mode.listen_host == "0.0.0.0"  # the proxy container's interfaces
    assert lab.sandbox_snapshot("service1").entries(labxds.LISTENER)  # builds without resolving anything


def test_labs_that_are_not_the_compose_files_run_here(monkeypatch: pytest.MonkeyPatch) -> None:
    """Lesson 7's second lab (port 0) and a learner's lab run their own Envoy in the container, on
    ports the kernel picks: the sandbox's are the proxy's."""
    monkeypatch.setenv("LABXDS_MODE", "docker")
    second = Lab(delta=True, xds_port=0, admin_port=0, listener_port=0)
    assert not second.mode.docker and second.admin_url.startswith("http://127.0.0.1:")
    learner = Lab(control_plane="127.0.0.1:1", node_id="alice")
    assert not learner.mode.docker
    assert learner.admin_port == 0 and learner.listener_port not in (0, 10000)


def test_names_resolve_to_the_replicas(docker) -> None:
    lab = Lab(services={"localhost": 1})
    assert lab.upstream("localhost") == ("localhost", 8080)  # DNS clusters take the name
    assert lab.endpoints("localhost") == [("127.0.0.1", 8080)]  # EDS and STATIC need addresses
    with pytest.raises(KeyError, match="does not resolve"):
        lab.endpoints("no-such-service.invalid")
    records = [{"served_by": "localhost", "instance": None, "upstream": "127.0.0.1:8080"},
               {"served_by": "localhost", "instance": None, "upstream": "127.0.0.9:8080"}]  # fmt: skip
    assert [r["instance"] for r in lab.number_instances(records)] == [1, None]


def test_local_lab_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LABXDS_MODE", "local")
    local_lab_only("a second Envoy")
    monkeypatch.setenv("LABXDS_MODE", "docker")
    with pytest.raises(LocalLabOnly, match="needs a second Envoy, which only the local lab has"):
        local_lab_only("a second Envoy")


@pytest.mark.envoy
@pytest.mark.timeout(180)
def test_a_lab_waits_for_an_envoy_that_outlives_it_and_takes_back_its_configuration(docker) -> None:
    """As under compose: Envoy starts first and retries; each lab waits for it, and a new lab
    starts from Envoy's bootstrap alone even if the last one left listeners, and its version
    "1" reaches Envoy although Envoy ran another "1" (rule 16)."""
    xds, admin, listener = free_port(), free_port(), free_port()
    envoy = Envoy(render_bootstrap(xds_port=xds, admin_port=admin), admin_port=admin).start()
    try:
        time.sleep(3)  # Envoy's retries back off while no control plane answers
        kwargs = dict(xds_port=xds, admin_port=admin, listener_port=listener, services={"localhost": 1})
        first = Lab(**kwargs).start(progress=False)
        assert first.node_id == "test-id" and first.envoy is None
        first.push(labxds.Snapshot([labxds.cluster("old", [("127.0.0.1", 1)], type="STATIC"),
                                    labxds.route_configuration("local_route", "old"),
                                    labxds.http_listener("listener_0", listener, "local_route")], version="1"))
        assert list(first.clusters()["name"]) == ["old"]
        first.stop()

        second = Lab(**kwargs).start(progress=False)
        assert second is not first
        assert second.clusters().empty and second.listeners().empty  # taken back, and drained
        second.push(labxds.Snapshot([labxds.cluster("new", [("127.0.0.1", 2)], type="STATIC"),
                                     labxds.route_configuration("local_route", "new"),
                                     labxds.http_listener("listener_0", listener, "local_route")], version="1"))
        assert list(second.clusters()["name"]) == ["new"]
        assert list(second.routes()["cluster"]) == ["new"]  # not the last lab's route "1"
        assert envoy.running  # the same Envoy all along
        second.stop()
    finally:
        envoy.stop()


@pytest.mark.timeout(60)
def test_without_envoy_the_wait_ends_with_what_to_check(docker, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("labxds.lab.runtime.COMPOSE_ENVOY_WAIT", 2.0)
    lab = Lab(xds_port=free_port(), admin_port=free_port(), services={"localhost": 1})
    with pytest.raises(TimeoutError, match="does not answer: is the proxy service running"):
        lab.start(progress=False, timeout=1)
    assert not lab.running
