"""Lesson 3, changing the configuration: new versions while Envoy runs, a route added, one removed."""

from __future__ import annotations

from typing import Any

from ...xds.builders import SANDBOX_CLUSTER, SANDBOX_LISTENER
from ...xds.resource_types import CLUSTER, LISTENER
from ...xds.snapshot import Snapshot
from ..exercises import Exercise, Fail, Target
from .checks import acked, address_of, dynamic_clusters, expect_served, need, service_at, socket_address

__all__ = ["EXERCISES"]

DOCS = "https://www.envoyproxy.io/docs/envoy/v1.40.0"

GIVEN = '''\
route = labxds.route_configuration("local_route", "example_proxy_cluster")
listener = labxds.http_listener("listener_0", lab.listener_port, "local_route", address=lab.mode.listen_host)
'''


def _pushed(t: Target, pushed: Any, version: str, hint: str) -> Snapshot:
    """The learner's pushed snapshot: a Snapshot, at ``version``, served now, ACKed by Envoy."""
    need(pushed, "pushed", hint)
    if not isinstance(pushed, Snapshot):
        raise Fail(f"pushed is a {type(pushed).__name__}: keep what lab.push(...) returns", hint)
    if pushed.versions.get(CLUSTER) != version:
        raise Fail(f"your snapshot's version is {pushed.versions.get(CLUSTER)!r}, not {version!r}",
                   f'give it version "{version}": a new version tells you, and Envoy\'s config_dump, '
                   "which configuration runs")  # fmt: skip
    lab = t.own_lab()
    if lab.cp.snapshot(lab.node_id) is not pushed:
        raise Fail("your control plane does not serve this snapshot (built but not pushed, or pushed over since)",
                   "push it with lab.push(...) and run the check right after")  # fmt: skip
    if acked(t, CLUSTER) != version:
        raise Fail(f"Envoy has not ACKed version {version} of its clusters (it ACKed {acked(t, CLUSTER)})",
                   "lab.push(...) returns once Envoy ACKed: did it raise?")  # fmt: skip
    if SANDBOX_LISTENER not in pushed.names(LISTENER):
        raise Fail("your snapshot has no listener_0: Envoy removed its listener",
                   "a snapshot is everything Envoy should run: keep the listener (and its route) in it")
    return pushed


def _check_service2(t: Target, pushed: Any) -> str:
    hint = ('pushed = lab.push(labxds.Snapshot([labxds.cluster("example_proxy_cluster", [lab.upstream("service2")], '
            'type="LOGICAL_DNS"), route, listener], version="2"))')
    _pushed(t, pushed, "2", hint)
    entry = dynamic_clusters(t).get(SANDBOX_CLUSTER)
    if entry is None:
        raise Fail("Envoy has no example_proxy_cluster", "keep the cluster's name: local_route sends traffic to it")
    where = socket_address(entry["cluster"])
    if where != address_of(t, "service2"):
        raise Fail(f"Envoy's example_proxy_cluster points at {service_at(t, where)}", 'its endpoint: lab.upstream("service2")')
    expect_served(t, "service2")
    return f"version 2 ACKed; the sandbox's jq path gives {where}: Request served by service2"


def _check_route_one(t: Target, pushed: Any) -> str:
    hint = 'a cluster "service1" and local_route with routes={"/one": "service1", "/": "example_proxy_cluster"}'
    _pushed(t, pushed, "3", hint)
    clusters = dynamic_clusters(t)
    if "service1" not in clusters:
        raise Fail(f"Envoy has no cluster named service1 (it has {', '.join(sorted(clusters))})",
                   "add a cluster named service1 with service1 as its endpoint")  # fmt: skip
    expect_served(t, "service1", path="/one",
                  hint="Envoy takes the first route that matches: put /one before the catch-all /")
    expect_served(t, "service2", path="/", hint="everything else still goes to example_proxy_cluster (service2)")
    return "version 3: GET /one -> service1, GET / -> service2, on the same Envoy"


def _check_removed(t: Target, pushed: Any) -> str:
    hint = "push version 4 without the service1 cluster, and with local_route sending everything to example_proxy_cluster"
    _pushed(t, pushed, "4", hint)
    clusters = dynamic_clusters(t)
    if "service1" in clusters:
        raise Fail("Envoy still has the cluster service1", "leave it out of the snapshot: what is not in it is removed")
    if SANDBOX_CLUSTER not in clusters:
        raise Fail("Envoy has no example_proxy_cluster any more", "keep example_proxy_cluster, pointing at service2")
    expect_served(t, "service2", path="/one", hint="/one has no route of its own any more: it goes where / goes")
    return f"version 4: Envoy removed service1; its clusters are {', '.join(sorted(clusters))}; /one -> service2"


_V3 = '''\
pushed = lab.push(labxds.Snapshot([
    labxds.cluster("service1", [lab.upstream("service1")], type="STRICT_DNS"),
    labxds.cluster("example_proxy_cluster", [lab.upstream("service2")], type="LOGICAL_DNS"),
    labxds.route_configuration("local_route", routes={"/one": "service1", "/": "example_proxy_cluster"}),
    listener,
], version="3"))'''

EXERCISES = [
    Exercise(
        "3.1", "Switch to service2",
        'Push version "2" of the sandbox: the same route and listener, example_proxy_cluster pointing at service2.',
        _check_service2,
        placeholder="pushed = None  # version 2, pointing at service2: what lab.push(...) returns",
        solution='''\
host, port = lab.upstream("service2")
pushed = lab.push(labxds.Snapshot([
    labxds.cluster("example_proxy_cluster", [(host, port)], type="LOGICAL_DNS"),
    route,
    listener,
], version="2"))''',
        answers=("pushed",),
        mistakes=(
            'pushed = lab.push(lab.sandbox_snapshot("service2", version="1"))',  # the same version
            'pushed = labxds.Snapshot([labxds.cluster("example_proxy_cluster", [lab.upstream("service2")], '
            'type="LOGICAL_DNS"), route, listener], version="2")',  # not pushed
        ),
        given=GIVEN + 'lab.push(lab.sandbox_snapshot("service1", version="1"))\n',
        docs=(f"{DOCS}/intro/arch_overview/operations/dynamic_configuration",),
    ),
    Exercise(
        "3.2", "A route of its own",
        'Push version "3": GET /one goes to service1 (a cluster named service1), everything else still to '
        "example_proxy_cluster (service2).",
        _check_route_one,
        placeholder="pushed = None  # version 3: /one -> service1, / -> service2",
        solution=_V3,
        answers=("pushed",),
        mistakes=(
            _V3.replace('routes={"/one": "service1", "/": "example_proxy_cluster"}',
                        'routes={"/": "example_proxy_cluster", "/one": "service1"}'),  # catch-all first
        ),
        given=GIVEN,
        docs=(f"{DOCS}/intro/arch_overview/http/http_routing", f"{DOCS}/api-v3/config/route/v3/route_components.proto"),
    ),
    Exercise(
        "3.3", "Remove by leaving out",
        'Push version "4" without the cluster service1 and its /one route: Envoy must remove them.',
        _check_removed,
        placeholder="pushed = None  # version 4: without service1",
        solution='''\
pushed = lab.push(labxds.Snapshot([
    labxds.cluster("example_proxy_cluster", [lab.upstream("service2")], type="LOGICAL_DNS"),
    labxds.route_configuration("local_route", "example_proxy_cluster"),
    listener,
], version="4"))''',
        answers=("pushed",),
        mistakes=(
            'pushed = lab.push(labxds.Snapshot([labxds.cluster("example_proxy_cluster", [lab.upstream("service2")], '
            'type="LOGICAL_DNS")], version="4"))',  # no listener: everything else removed too
        ),
        given=GIVEN + _V3 + "\n",
        docs=(f"{DOCS}/api-docs/xds_protocol#resource-updates",),
    ),
]
