"""Lesson 3, changing the configuration: new versions while Envoy runs, a route added, one removed."""

from __future__ import annotations

from typing import Any

from ...i18n import N_, _
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
        raise Fail(_("pushed is a {kind}: keep what lab.push(...) returns").format(kind=type(pushed).__name__), hint)
    if pushed.versions.get(CLUSTER) != version:
        raise Fail(_("your snapshot's version is {got}, not {wanted}").format(
            got=repr(pushed.versions.get(CLUSTER)), wanted=repr(version)),
            _('give it version "{version}": a new version tells you, and Envoy\'s config_dump, '
              "which configuration runs").format(version=version))  # fmt: skip
    lab = t.own_lab()
    if lab.cp.snapshot(lab.node_id) is not pushed:
        raise Fail(_("your control plane does not serve this snapshot (built but not pushed, or pushed over since)"),
                   _("push it with lab.push(...) and run the check right after"))  # fmt: skip
    if acked(t, CLUSTER) != version:
        raise Fail(_("Envoy has not ACKed version {version} of its clusters (it ACKed {acked})").format(
            version=version, acked=acked(t, CLUSTER)),
            _("lab.push(...) returns once Envoy ACKed: did it raise?"))  # fmt: skip
    if SANDBOX_LISTENER not in pushed.names(LISTENER):
        raise Fail(_("your snapshot has no listener_0: Envoy removed its listener"),
                   _("a snapshot is everything Envoy should run: keep the listener (and its route) in it"))
    return pushed


def _check_service2(t: Target, pushed: Any) -> str:
    hint = _("for example: {code}").format(
        code='pushed = lab.push(labxds.Snapshot([labxds.cluster("example_proxy_cluster", [lab.upstream("service2")], '
             'type="LOGICAL_DNS"), route, listener], version="2"))')
    _pushed(t, pushed, "2", hint)
    entry = dynamic_clusters(t).get(SANDBOX_CLUSTER)
    if entry is None:
        raise Fail(_("Envoy has no example_proxy_cluster"), _("keep the cluster's name: local_route sends traffic to it"))
    where = socket_address(entry["cluster"])
    if where != address_of(t, "service2"):
        raise Fail(_("Envoy's example_proxy_cluster points at {service}").format(service=service_at(t, where)),
                   _('its endpoint: lab.upstream("service2")'))
    expect_served(t, "service2")
    return _("version 2 ACKed; the sandbox's jq path gives {where}: Request served by service2").format(where=where)


def _check_route_one(t: Target, pushed: Any) -> str:
    hint = _('a cluster "service1" and local_route with routes={"/one": "service1", "/": "example_proxy_cluster"}')
    _pushed(t, pushed, "3", hint)
    clusters = dynamic_clusters(t)
    if "service1" not in clusters:
        raise Fail(_("Envoy has no cluster named service1 (it has {names})").format(names=", ".join(sorted(clusters))),
                   _("add a cluster named service1 with service1 as its endpoint"))  # fmt: skip
    expect_served(t, "service1", path="/one",
                  hint=_("Envoy takes the first route that matches: put /one before the catch-all /"))
    expect_served(t, "service2", path="/", hint=_("everything else still goes to example_proxy_cluster (service2)"))
    return _("version 3: GET /one -> service1, GET / -> service2, on the same Envoy")


def _check_removed(t: Target, pushed: Any) -> str:
    hint = _("push version 4 without the service1 cluster, and with local_route sending everything to "
             "example_proxy_cluster")
    _pushed(t, pushed, "4", hint)
    clusters = dynamic_clusters(t)
    if "service1" in clusters:
        raise Fail(_("Envoy still has the cluster service1"),
                   _("leave it out of the snapshot: what is not in it is removed"))
    if SANDBOX_CLUSTER not in clusters:
        raise Fail(_("Envoy has no example_proxy_cluster any more"), _("keep example_proxy_cluster, pointing at service2"))
    expect_served(t, "service2", path="/one", hint=_("/one has no route of its own any more: it goes where / goes"))
    return _("version 4: Envoy removed service1; its clusters are {names}; /one -> service2").format(
        names=", ".join(sorted(clusters)))


_V3 = '''\
pushed = lab.push(labxds.Snapshot([
    labxds.cluster("service1", [lab.upstream("service1")], type="STRICT_DNS"),
    labxds.cluster("example_proxy_cluster", [lab.upstream("service2")], type="LOGICAL_DNS"),
    labxds.route_configuration("local_route", routes={"/one": "service1", "/": "example_proxy_cluster"}),
    listener,
], version="3"))'''

EXERCISES = [
    Exercise(
        "3.1", N_("Switch to service2"),
        N_('Push version "2" of the sandbox: the same route and listener, example_proxy_cluster pointing at service2.'),
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
        "3.2", N_("A route of its own"),
        N_('Push version "3": GET /one goes to service1 (a cluster named service1), everything else still to '
           "example_proxy_cluster (service2)."),
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
        "3.3", N_("Remove by leaving out"),
        N_('Push version "4" without the cluster service1 and its /one route: Envoy must remove them.'),
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
