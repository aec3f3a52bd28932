"""Lesson 2, the first snapshot: write the sandbox's resources three ways, then push version "1"."""

from __future__ import annotations

from typing import Any

from ...i18n import N_, _
from ...xds.builders import SANDBOX_CLUSTER, SANDBOX_LISTENER, SANDBOX_ROUTE, route_configuration
from ...xds.resource_types import CLUSTER, LISTENER, ROUTE, short_name
from ...xds.snapshot import Snapshot
from ..exercises import Exercise, Fail, Target
from .checks import (
    acked,
    address_of,
    config,
    dynamic_clusters,
    expect_served,
    need,
    resource,
    sandbox_cluster,
    sandbox_listener,
    service_at,
    socket_address,
    tried,
)

__all__ = ["EXERCISES"]

DOCS = "https://www.envoyproxy.io/docs/envoy/v1.40.0"

# The names the lesson's earlier cells define, for a check run outside the notebook.
GIVEN = '''\
host, port = lab.upstream("service1")
example_cluster = labxds.cluster("example_proxy_cluster", [(host, port)], type="LOGICAL_DNS")
route = labxds.route_configuration("local_route", "example_proxy_cluster")
listener = labxds.http_listener("listener_0", lab.listener_port, "local_route", address=lab.mode.listen_host)
'''


def _check_route_yaml(t: Target, route_yaml: Any) -> str:
    hint = _('a YAML text: "@type": type.googleapis.com/envoy.config.route.v3.RouteConfiguration, name: local_route, '
             'one virtual host with domains ["*"] and one route: match prefix "/" -> cluster example_proxy_cluster')
    need(route_yaml, "route_yaml", hint)
    if not isinstance(route_yaml, str):
        raise Fail(_("route_yaml is a {kind}: this exercise wants the YAML text itself").format(
            kind=type(route_yaml).__name__), hint)
    route = resource(route_yaml, ROUTE, "route_yaml", hint)
    if route.name != SANDBOX_ROUTE:
        raise Fail(_("your route configuration is named {name}").format(name=repr(route.name)),
                   _("listener_0 asks for {name} over RDS: name it so").format(name=repr(SANDBOX_ROUTE)))  # fmt: skip
    with tried(t, [sandbox_cluster(t), route, sandbox_listener(t)], what=_("your route configuration")):
        entries = {e["route_config"]["name"]: e for e in config(t, "dynamic_route_configs")}
        if SANDBOX_ROUTE not in entries:
            raise Fail(_("Envoy holds no local_route"), _("run the check again: it pushes your route with the cluster "
                                                          "and the listener"))
        expect_served(t, "service1", hint=_('the route must send the prefix "/" to example_proxy_cluster'))
    return _("Envoy runs your local_route (from YAML) and GET / is served by service1")


def _check_typed_cluster(t: Target, typed_cluster: Any) -> str:
    hint = _("for example: {code}").format(
        code="envoy_data_plane.envoy.config.cluster.v3.Cluster(name=..., type=ClusterDiscoveryType.LOGICAL_DNS, "
             "connect_timeout=timedelta(seconds=5), load_assignment=ClusterLoadAssignment(...))")
    need(typed_cluster, "typed_cluster", hint)
    if not type(typed_cluster).__module__.startswith("envoy_data_plane."):
        raise Fail(_("typed_cluster is a {kind}, not an envoy-data-plane class").format(
            kind=f"{type(typed_cluster).__module__}.{type(typed_cluster).__name__}"), hint)  # fmt: skip
    cluster = resource(typed_cluster, CLUSTER, "typed_cluster", hint)
    if cluster.name != SANDBOX_CLUSTER:
        raise Fail(_("your cluster is named {name}").format(name=repr(cluster.name)),
                   _("local_route sends traffic to {name}").format(name=repr(SANDBOX_CLUSTER)))
    route = _sandbox_route()
    with tried(t, [cluster, route, sandbox_listener(t)], what=_("your cluster")):
        entry = dynamic_clusters(t).get(SANDBOX_CLUSTER)
        if entry is None:
            raise Fail(_("Envoy has no example_proxy_cluster"), _("run the check again: it pushes your cluster"))
        c = entry["cluster"]
        if c.get("type") != "LOGICAL_DNS":
            raise Fail(_("Envoy runs your cluster as type {type}").format(type=c.get("type", "STATIC")),
                       _("the sandbox's cluster is LOGICAL_DNS: type=ClusterDiscoveryType.LOGICAL_DNS"))
        if c.get("connect_timeout") != "5s":
            raise Fail(_("Envoy runs your cluster with connect_timeout {value}").format(
                value=c.get("connect_timeout") or _("(unset)")),
                _("the sandbox sets 5 s: connect_timeout=timedelta(seconds=5)"))
        where = socket_address(c)
        if where != address_of(t, "service1"):
            raise Fail(_("your cluster's endpoint is {where}, which is {service}").format(
                where=where, service=service_at(t, where)),
                _('point it at service1: host, port = lab.upstream("service1")'))
        expect_served(t, "service1")
    return _("Envoy runs your typed example_proxy_cluster (LOGICAL_DNS, 5s) and service1 answers at {where}").format(
        where=where)


def _sandbox_route() -> Any:
    return route_configuration(SANDBOX_ROUTE, SANDBOX_CLUSTER)


def _check_version_1(t: Target, pushed: Any) -> str:
    hint = _("for example: {code}").format(
        code='pushed = lab.push(labxds.Snapshot([example_cluster, route, listener], version="1"))')
    need(pushed, "pushed", hint)
    if not isinstance(pushed, Snapshot):
        raise Fail(_("pushed is a {kind}: keep what lab.push(...) returns (the snapshot)").format(
            kind=type(pushed).__name__), hint)
    if not pushed.versions:
        raise Fail(_("your snapshot is empty"), hint)
    wrong = {short_name(k): v for k, v in pushed.versions.items() if v != "1"}
    if wrong:
        raise Fail(_("your snapshot's versions are {versions}").format(
            versions=", ".join(f"{k} {v}" for k, v in wrong.items())),
            _('give the whole snapshot version "1": labxds.Snapshot([...], version="1")'))
    for url, kind in ((CLUSTER, N_("your snapshot has no cluster")), (LISTENER, N_("your snapshot has no listener")),
                      (ROUTE, N_("your snapshot has no route configuration"))):
        if url not in pushed.versions:
            raise Fail(_(kind), _("the sandbox's snapshot holds a cluster, a route and a listener"))
    lab = t.own_lab()
    if lab.cp.snapshot(lab.node_id) is not pushed:
        raise Fail(_("your control plane does not serve this snapshot: it was built but not pushed"),
                   _("push it: pushed = lab.push(labxds.Snapshot([...], version=\"1\"))"))
    for url, kind in ((CLUSTER, N_("Envoy has not ACKed version 1 of its clusters (it ACKed {version})")),
                      (LISTENER, N_("Envoy has not ACKed version 1 of its listeners (it ACKed {version})"))):
        if acked(t, url) != "1":
            raise Fail(_(kind).format(version=acked(t, url)),
                       _("push the snapshot with lab.push(...): it returns once Envoy ACKed it"))
    if not lab.cp.tracker.applied(lab.node_id, pushed):
        raise Fail(_("Envoy has not ACKed all of your snapshot yet"),
                   _("push it with lab.push(...), which waits for the ACK"))
    entry = dynamic_clusters(t).get(SANDBOX_CLUSTER)
    if entry is None:  # (its version_info stays older if version 1 brought an identical cluster)
        raise Fail(_("Envoy has no example_proxy_cluster"), hint)
    where = socket_address(entry["cluster"])
    if where != address_of(t, "service1"):
        raise Fail(_("Envoy's example_proxy_cluster points at {service}").format(service=service_at(t, where)),
                   _("the sandbox starts on service1"))
    if SANDBOX_LISTENER not in pushed.names(LISTENER):
        raise Fail(_("your snapshot has no listener_0"), _("the sandbox's listener is listener_0"))
    expect_served(t, "service1")
    return _("Envoy ACKed version 1 of CDS, LDS and RDS; the sandbox's jq path gives {where}: Request served by "
             "service1").format(where=where)


EXERCISES = [
    Exercise(
        "2.1", N_("Version \"1\", pushed"),
        N_("Put example_cluster, route and listener in one snapshot with version \"1\" and push it to Envoy."),
        _check_version_1,
        placeholder="pushed = None  # the snapshot you pushed: what lab.push(...) returns",
        solution='pushed = lab.push(labxds.Snapshot([example_cluster, route, listener], version="1"))',
        answers=("pushed",),
        mistakes=(
            'pushed = labxds.Snapshot([example_cluster, route, listener], version="1")',  # built, not pushed
            "pushed = lab.push(labxds.Snapshot([example_cluster, route, listener]))",  # versions are hashes
        ),
        given=GIVEN + 'lab.push(labxds.Snapshot([], version="0"))  # Envoy on its bootstrap alone\n',
        docs=(f"{DOCS}/intro/arch_overview/operations/dynamic_configuration", f"{DOCS}/api-docs/xds_protocol"),
    ),
    Exercise(
        "2.2", N_("The route, in Envoy's JSON form"),
        N_("Write local_route as YAML text in Envoy's JSON form. The check tries it on your Envoy (with the "
           "sandbox's cluster and listener, and a request through the listener), then puts back version 1."),
        _check_route_yaml,
        placeholder="route_yaml = None  # local_route as YAML text, with its \"@type\"",
        solution='''\
route_yaml = """
"@type": type.googleapis.com/envoy.config.route.v3.RouteConfiguration
name: local_route
virtual_hosts:
- name: local_service
  domains: ["*"]
  routes:
  - match: {prefix: "/"}
    route: {cluster: example_proxy_cluster}
"""''',
        answers=("route_yaml",),
        mistakes=(
            'route_yaml = "name: local_route"',  # no @type
            'route_yaml = labxds.route_configuration("local_route", "example_proxy_cluster")',  # not YAML
            'route_yaml = """\n"@type": type.googleapis.com/envoy.config.route.v3.RouteConfiguration\n'
            'name: local_route\nvirtual_hosts:\n- name: local_service\n  domains: ["*"]\n  routes:\n'
            '  - match: {prefix: "/"}\n    route: {cluster: service1}\n"""',  # a service, not the cluster
        ),
        given=GIVEN,
        docs=(f"{DOCS}/api-v3/config/route/v3/route.proto", f"{DOCS}/configuration/overview/examples"),
    ),
    Exercise(
        "2.3", N_("The cluster, with typed classes"),
        N_("Write example_proxy_cluster (LOGICAL_DNS, 5 s connect timeout, service1 as its one endpoint) with "
           "envoy-data-plane's typed classes. The check tries it on your Envoy with local_route and listener_0."),
        _check_typed_cluster,
        placeholder="typed_cluster = None  # example_proxy_cluster, built with envoy_data_plane classes",
        solution='''\
from datetime import timedelta

from envoy_data_plane.envoy.config.cluster.v3 import Cluster, ClusterDiscoveryType
from envoy_data_plane.envoy.config.core.v3 import Address, SocketAddress
from envoy_data_plane.envoy.config.endpoint.v3 import ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints

host, port = lab.upstream("service1")
typed_cluster = Cluster(
    name="example_proxy_cluster",
    type=ClusterDiscoveryType.LOGICAL_DNS,
    connect_timeout=timedelta(seconds=5),
    load_assignment=ClusterLoadAssignment(
        cluster_name="example_proxy_cluster",
        endpoints=[LocalityLbEndpoints(lb_endpoints=[
            LbEndpoint(endpoint=Endpoint(address=Address(socket_address=SocketAddress(address=host, port_value=port))))
        ])],
    ),
)''',
        answers=("typed_cluster",),
        mistakes=(
            'typed_cluster = labxds.cluster("example_proxy_cluster", [lab.upstream("service1")], type="LOGICAL_DNS")',
            "from envoy_data_plane.envoy.config.cluster.v3 import Cluster\n"
            'typed_cluster = Cluster(name="example_proxy_cluster")',  # STATIC, no endpoint
        ),
        given=GIVEN,
        docs=(f"{DOCS}/api-v3/config/cluster/v3/cluster.proto",),
    ),
]
