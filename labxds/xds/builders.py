"""Builders for the resources a lesson needs, in the spirit of go-control-plane's example.

Each builder returns an ordinary xds-protos message, so anything the builders do not cover can
be set on the result. ``sandbox_snapshot`` reproduces the snapshot of Envoy's "Dynamic
configuration (control plane)" sandbox, constants included.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Union

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import address_pb2, base_pb2, config_source_pb2, protocol_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2
from google.protobuf import any_pb2, duration_pb2, wrappers_pb2

from ..i18n import _
from .snapshot import Snapshot

__all__ = [
    "RESPONSE_FLAGS_HEADER",
    "SANDBOX_CLUSTER",
    "SANDBOX_LISTENER",
    "SANDBOX_LISTENER_PORT",
    "SANDBOX_ROUTE",
    "SANDBOX_UPSTREAM",
    "SANDBOX_UPSTREAM_PORT",
    "Endpoint",
    "api_listener",
    "cluster",
    "http_listener",
    "load_assignment",
    "route_configuration",
    "sandbox_resources",
    "sandbox_snapshot",
    "socket_address",
]

# The sandbox's constants (go-control-plane's example resource.go, as the sandbox sets them).
SANDBOX_CLUSTER = "example_proxy_cluster"
SANDBOX_ROUTE = "local_route"
SANDBOX_LISTENER = "listener_0"
SANDBOX_LISTENER_PORT = 10000
SANDBOX_UPSTREAM = "service1"
SANDBOX_UPSTREAM_PORT = 8080

#: The header ``http_listener(..., response_flags=True)`` puts on Envoy's own replies (503 "no
#: healthy upstream", 404 for no route, ...): Envoy's response flags, such as NC, UH or NR.
RESPONSE_FLAGS_HEADER = "x-lab-response-flags"

#: An endpoint: "host:port", (host, port) or (host, port, weight).
Endpoint = Union[str, tuple[str, int], tuple[str, int, int]]

_DISCOVERY = {
    "STATIC": cluster_pb2.Cluster.STATIC,
    "STRICT_DNS": cluster_pb2.Cluster.STRICT_DNS,
    "LOGICAL_DNS": cluster_pb2.Cluster.LOGICAL_DNS,
    "EDS": cluster_pb2.Cluster.EDS,
}
_LB = {
    name: getattr(cluster_pb2.Cluster, name)
    for name in ("ROUND_ROBIN", "LEAST_REQUEST", "RANDOM", "RING_HASH", "MAGLEV", "CLUSTER_PROVIDED")
}


def _choice(kind: str, value: str, table: Mapping[str, int]) -> int:
    key = value.upper()
    if key not in table:
        raise ValueError(f"unknown {kind} {value!r}; choose from {', '.join(table)}")
    return table[key]


def _split(endpoint: Endpoint) -> tuple[str, int, int | None]:
    if isinstance(endpoint, str):
        host, sep, port = endpoint.rpartition(":")
        if not sep or not port.isdigit():
            raise ValueError(f"endpoint {endpoint!r} is not host:port")
        return host.strip("[]"), int(port), None
    if len(endpoint) == 2:
        return endpoint[0], int(endpoint[1]), None
    if len(endpoint) == 3:
        return endpoint[0], int(endpoint[1]), int(endpoint[2])
    raise ValueError(f"endpoint {endpoint!r} is not host:port, (host, port) or (host, port, weight)")


def socket_address(host: str, port: int) -> address_pb2.Address:
    if not 0 < port < 65536:
        raise ValueError(f"port {port} is out of range 1-65535")
    return address_pb2.Address(
        socket_address=address_pb2.SocketAddress(protocol=address_pb2.SocketAddress.TCP, address=host, port_value=port)
    )


def _ads(initial_fetch_timeout: float | None = None) -> config_source_pb2.ConfigSource:
    source = config_source_pb2.ConfigSource(
        ads=config_source_pb2.AggregatedConfigSource(), resource_api_version=config_source_pb2.V3
    )
    if initial_fetch_timeout is not None:
        if initial_fetch_timeout < 0:
            raise ValueError(_("initial_fetch_timeout {value} must be seconds >= 0 (0: wait forever)").format(
                value=initial_fetch_timeout))
        source.initial_fetch_timeout.CopyFrom(_seconds(initial_fetch_timeout))
    return source


def _seconds(value: float) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromNanoseconds(int(value * 1e9))
    return d


def _pack(msg: object) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(msg)  # type: ignore[arg-type]
    return packed


def load_assignment(
    cluster_name: str, endpoints: Iterable[Endpoint], *, locality_weight: int | None = 1
) -> endpoint_pb2.ClusterLoadAssignment:
    """The endpoints of a cluster in one locality.

    The locality gets a ``load_balancing_weight`` because gRPC's xDS client ignores localities
    without one, and an (empty) ``locality`` because gRPC NACKs a LocalityLbEndpoints without it
    ("endpoints[0].locality error:field not present"). ``locality_weight=None`` leaves both out.
    """
    lb_endpoints = []
    for ep in endpoints:
        host, port, weight = _split(ep)
        lb = endpoint_components_pb2.LbEndpoint(endpoint=endpoint_components_pb2.Endpoint(address=socket_address(host, port)))
        if weight is not None:
            lb.load_balancing_weight.value = weight
        lb_endpoints.append(lb)
    locality = endpoint_components_pb2.LocalityLbEndpoints(lb_endpoints=lb_endpoints)
    if locality_weight is not None:
        locality.load_balancing_weight.value = locality_weight
        locality.locality.SetInParent()
    return endpoint_pb2.ClusterLoadAssignment(cluster_name=cluster_name, endpoints=[locality])


def cluster(
    name: str,
    endpoints: Iterable[Endpoint] = (),
    *,
    type: str = "EDS",
    lb_policy: str = "ROUND_ROBIN",
    connect_timeout: float = 5.0,
    http2: bool = False,
    service_name: str | None = None,
    initial_fetch_timeout: float | None = None,
) -> cluster_pb2.Cluster:
    """An upstream cluster.

    ``EDS`` clusters get their endpoints from a separate ClusterLoadAssignment over ADS (build one
    with ``load_assignment``); the other types carry ``endpoints`` inline. A new or changed EDS
    cluster warms until its endpoints arrive, or ``initial_fetch_timeout`` seconds (Envoy's
    default: 15; 0 waits forever) have passed; then it starts with what it has.
    """
    c = cluster_pb2.Cluster(
        name=name,
        type=_choice("cluster type", type, _DISCOVERY),
        lb_policy=_choice("lb_policy", lb_policy, _LB),
        connect_timeout=_seconds(connect_timeout),
    )
    if c.type == cluster_pb2.Cluster.EDS:
        eps = list(endpoints)
        if eps:
            raise ValueError(f"cluster {name!r} is EDS: put its endpoints in load_assignment({name!r}, ...)")
        c.eds_cluster_config.eds_config.CopyFrom(_ads(initial_fetch_timeout))
        if service_name:
            c.eds_cluster_config.service_name = service_name
    else:
        if initial_fetch_timeout is not None:
            raise ValueError(_("cluster '{name}' is {type}: only an EDS cluster fetches (and waits for) its endpoints").format(
                name=name, type=type))
        c.load_assignment.CopyFrom(load_assignment(name, endpoints, locality_weight=None))
        if c.type in (cluster_pb2.Cluster.STRICT_DNS, cluster_pb2.Cluster.LOGICAL_DNS):
            c.dns_lookup_family = cluster_pb2.Cluster.V4_ONLY
    if http2:
        options = http_protocol_options_pb2.HttpProtocolOptions(
            explicit_http_config=http_protocol_options_pb2.HttpProtocolOptions.ExplicitHttpConfig(
                http2_protocol_options=protocol_pb2.Http2ProtocolOptions()
            )
        )
        c.typed_extension_protocol_options["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"].CopyFrom(_pack(options))
    return c


def route_configuration(
    name: str,
    cluster: str | None = None,
    *,
    weights: Mapping[str, int] | None = None,
    virtual_host: str = "local_service",
    domains: Sequence[str] = ("*",),
    prefix: str = "/",
    routes: Mapping[str, str | Mapping[str, int]] | None = None,
    response_headers: Mapping[str, str] | None = None,
) -> route_pb2.RouteConfiguration:
    """A route configuration with one virtual host.

    Send everything under ``prefix`` to ``cluster``, or split it by ``weights`` (cluster name to
    weight, for a canary). ``routes`` maps several prefixes to a cluster or weights, most specific
    first. ``response_headers`` are added to every routed response; values may use Envoy's
    command operators, e.g. ``{"x-upstream": "%UPSTREAM_REMOTE_ADDRESS%"}`` says which endpoint
    answered.
    """
    table: dict[str, str | Mapping[str, int]] = dict(routes or {})
    if cluster is not None and weights is not None:
        raise ValueError("give either cluster or weights, not both")
    if cluster is not None or weights is not None:
        table[prefix] = cluster if cluster is not None else weights  # type: ignore[assignment]
    if not table:
        raise ValueError(f"route configuration {name!r} needs a cluster, weights or routes")
    vh = route_components_pb2.VirtualHost(name=virtual_host, domains=list(domains))
    for match_prefix, target in table.items():
        action = route_components_pb2.RouteAction()
        if isinstance(target, str):
            action.cluster = target
        else:
            if not target or any(w < 0 for w in target.values()) or sum(target.values()) == 0:
                raise ValueError(f"weights {dict(target)!r} must be non-negative and not all zero")
            for cname, weight in target.items():
                action.weighted_clusters.clusters.add(name=cname, weight=wrappers_pb2.UInt32Value(value=weight))
        vh.routes.append(route_components_pb2.Route(
            match=route_components_pb2.RouteMatch(prefix=match_prefix), route=action
        ))
    config = route_pb2.RouteConfiguration(name=name, virtual_hosts=[vh])
    for key, value in (response_headers or {}).items():
        config.response_headers_to_add.add(
            header=base_pb2.HeaderValue(key=key, value=value),
            append_action=base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD,
        )
    return config


def http_listener(
    name: str,
    port: int,
    route_config_name: str,
    *,
    address: str = "127.0.0.1",
    stat_prefix: str = "http",
    initial_fetch_timeout: float | None = None,
    response_flags: bool = False,
) -> listener_pb2.Listener:
    """An HTTP listener whose routes come over RDS through ADS, ending in the router filter.

    It binds 127.0.0.1 unless told otherwise; under docker compose pass ``address="0.0.0.0"``
    so the published port reaches it. A new listener warms (is not bound yet) until its route
    configuration arrives, or ``initial_fetch_timeout`` seconds (Envoy's default: 15; 0 waits
    forever) have passed; then it starts without routes and answers 404 (flag NR).

    ``response_flags=True`` makes Envoy put its response flags (NC: no such cluster, UH: no
    healthy endpoint, NR: no route, ...; the access log's ``%RESPONSE_FLAGS%``) in the
    ``x-lab-response-flags`` header of the replies it makes itself, so a client sees why.
    """
    manager = hcm_pb2.HttpConnectionManager(
        stat_prefix=stat_prefix,
        codec_type=hcm_pb2.HttpConnectionManager.AUTO,
        rds=hcm_pb2.Rds(config_source=_ads(initial_fetch_timeout), route_config_name=route_config_name),
        http_filters=[hcm_pb2.HttpFilter(name="envoy.filters.http.router", typed_config=_pack(router_pb2.Router()))],
    )
    if response_flags:
        # A local reply mapper whose filter matches any reply with a response flag set.
        mapper = manager.local_reply_config.mappers.add()
        mapper.filter.response_flag_filter.SetInParent()
        mapper.headers_to_add.add(
            header=base_pb2.HeaderValue(key=RESPONSE_FLAGS_HEADER, value="%RESPONSE_FLAGS%"),
            append_action=base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD,
        )
    return listener_pb2.Listener(
        name=name,
        address=socket_address(address, port),
        filter_chains=[listener_components_pb2.FilterChain(filters=[
            listener_components_pb2.Filter(name="envoy.filters.network.http_connection_manager", typed_config=_pack(manager))
        ])],
    )


def api_listener(name: str, route_config_name: str) -> listener_pb2.Listener:
    """A gRPC-style Listener: no address, an ``api_listener`` HttpConnectionManager with RDS over ADS.

    gRPC's xDS client looks up the target ``xds:///name`` as a Listener named ``name`` and wants
    the router as its last HTTP filter.
    """
    manager = hcm_pb2.HttpConnectionManager(
        rds=hcm_pb2.Rds(config_source=_ads(), route_config_name=route_config_name),
        http_filters=[hcm_pb2.HttpFilter(name="envoy.filters.http.router", typed_config=_pack(router_pb2.Router()))],
    )
    listener = listener_pb2.Listener(name=name)
    listener.api_listener.api_listener.CopyFrom(_pack(manager))
    return listener


def sandbox_resources(
    upstream: str = SANDBOX_UPSTREAM,
    port: int = SANDBOX_UPSTREAM_PORT,
    *,
    listener_port: int = SANDBOX_LISTENER_PORT,
    listener_address: str = "127.0.0.1",
) -> list[object]:
    """The sandbox's cluster, route and listener, with ``upstream:port`` as the one endpoint."""
    return [
        cluster(SANDBOX_CLUSTER, [(upstream, port)], type="LOGICAL_DNS"),
        route_configuration(SANDBOX_ROUTE, SANDBOX_CLUSTER),
        http_listener(SANDBOX_LISTENER, listener_port, SANDBOX_ROUTE, address=listener_address),
    ]


def sandbox_snapshot(
    upstream: str = SANDBOX_UPSTREAM,
    port: int = SANDBOX_UPSTREAM_PORT,
    *,
    version: str | int = "1",
    listener_port: int = SANDBOX_LISTENER_PORT,
    listener_address: str = "127.0.0.1",
) -> Snapshot:
    """The sandbox's snapshot: version "1" with service1:8080, as go-control-plane's example serves."""
    return Snapshot(
        sandbox_resources(upstream, port, listener_port=listener_port, listener_address=listener_address),
        version=version,
    )

