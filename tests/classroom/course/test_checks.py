"""labxds.classroom.course.checks: a check's push sends only what the learner changed."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from envoy_helpers import free_port

from labxds.classroom.course.checks import push, unchanged_versions
from labxds.classroom.exercises import Target
from labxds.lab import LabRuntime
from labxds.xds import CLUSTER, LISTENER, ROUTE, Snapshot, cluster, http_listener, route_configuration
from labxds.xds.builders import SANDBOX_CLUSTER, SANDBOX_ROUTE


def _resources(prefix: str = "/") -> list[object]:
    return [cluster("c", [("127.0.0.1", 8080)], type="STATIC"),
            route_configuration("r", "c", prefix=prefix),
            http_listener("l", 10000, "r")]


def test_an_unchanged_type_keeps_the_version_envoy_runs() -> None:
    served = Snapshot(_resources(), version="1")
    changed = Snapshot(_resources(prefix="/api"))
    assert unchanged_versions(changed, served) == {CLUSTER: "1", LISTENER: "1"}
    assert unchanged_versions(Snapshot(_resources()), served) == {CLUSTER: "1", ROUTE: "1", LISTENER: "1"}


def test_nothing_is_kept_without_a_served_snapshot_or_when_a_ttl_changes() -> None:
    assert unchanged_versions(Snapshot(_resources()), None) == {}
    served = Snapshot(_resources(), version="1")
    with_ttl = Snapshot(_resources(), ttl={CLUSTER: 30})
    assert CLUSTER not in unchanged_versions(with_ttl, served)



@pytest.fixture(scope="module")
def lab() -> Iterator[LabRuntime]:
    runtime = LabRuntime(xds_port=0, admin_port=0, listener_port=free_port()).start(progress=False)
    yield runtime
    runtime.stop()


@pytest.mark.envoy
def test_a_checks_route_change_is_one_rds_update_on_the_real_envoy(lab: LabRuntime) -> None:
    lab.push(lab.sandbox_snapshot("service1", version="1"))
    sandbox = lab.sandbox_snapshot("service1")
    resources = [*sandbox.resources(CLUSTER).values(), *sandbox.resources(LISTENER).values()]
    changed = route_configuration(SANDBOX_ROUTE, SANDBOX_CLUSTER, timeout=3.0)
    since = time.time()
    target = Target(lab.node_id or "", lab.admin_url, lab.listener_url, lab)
    pushed = push(target, [*resources, changed])
    sent = {row["type"] for row in lab.cp.trace() if row["time"] >= since and row["direction"] == "sent"}
    assert sent == {"RDS"}, f"a route change sent {sent}"
    assert pushed.version(CLUSTER) == "1" and pushed.version(LISTENER) == "1"
