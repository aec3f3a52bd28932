"""Builders for the resources a lesson needs, in the spirit of go-control-plane's example.

Each builder returns an ordinary xds-protos message, so anything the builders do not cover can
be set on the result. ``sandbox_snapshot`` reproduces the snapshot of Envoy's "Dynamic
configuration (control plane)" sandbox, constants included.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, TypeVar, Union

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import address_pb2, base_pb2, config_source_pb2, protocol_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.config.cluster.v3 import outlier_detection_pb2
from envoy.config.core.v3 import health_check_pb2
from envoy.config.route.v3.route_components_pb2 import RetryPolicy
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2, tls_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2
from google.protobuf import any_pb2, duration_pb2, json_format, message, wrappers_pb2

from ..i18n import _
from .json_form import parse_dict
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
    "tls_secret",
    "validation_secret",
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

_M = TypeVar("_M", bound=message.Message)

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


def _part(value: Any, kind: type[_M], what: str) -> _M:
    """``value`` as a ``kind`` message: one already, or a dict in Envoy's JSON form (as Envoy's
    docs write it); a mistake names ``what`` and the field."""
    if isinstance(value, kind):
        return value
    if isinstance(value, message.Message):
        raise TypeError(_("{what} must be a {kind} or a dict, not a {given}").format(
            what=what, kind=kind.DESCRIPTOR.full_name, given=value.DESCRIPTOR.full_name))
    if not isinstance(value, Mapping):
        raise TypeError(_("{what} must be a dict in Envoy's JSON form (or a {kind}), not {given}").format(
            what=what, kind=kind.DESCRIPTOR.full_name, given=repr(value)))
    msg: _M = kind()
    try:
        parse_dict(value, msg)
    except (json_format.ParseError, ValueError, TypeError) as exc:
        raise ValueError(f"{what}: {exc}") from None
    return msg


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
    outlier_detection: Mapping[str, Any] | outlier_detection_pb2.OutlierDetection | None = None,
    health_checks: Sequence[Mapping[str, Any] | health_check_pb2.HealthCheck] = (),
) -> cluster_pb2.Cluster:
    """An upstream cluster.

    ``EDS`` clusters get their endpoints from a separate ClusterLoadAssignment over ADS (build one
    with ``load_assignment``); the other types carry ``endpoints`` inline. A new or changed EDS
    cluster warms until its endpoints arrive, or ``initial_fetch_timeout`` seconds (Envoy's
    default: 15; 0 waits forever) have passed; then it starts with what it has.
    ``outlier_detection`` (passive: eject hosts that fail) and ``health_checks`` (active: probe
    them) are written as Envoy's docs write them, e.g. ``{"consecutive_5xx": 3,
    "base_ejection_time": "10s"}``.
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
    if outlier_detection is not None:
        c.outlier_detection.CopyFrom(
            _part(outlier_detection, outlier_detection_pb2.OutlierDetection, f"cluster {name!r} outlier_detection")
        )
    for i, check in enumerate(health_checks):
        c.health_checks.append(_part(check, health_check_pb2.HealthCheck, f"cluster {name!r} health_checks[{i}]"))
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
    timeout: float | None = None,
    retry_policy: Mapping[str, Any] | RetryPolicy | None = None,
) -> route_pb2.RouteConfiguration:
    """A route configuration with one virtual host.

    Send everything under ``prefix`` to ``cluster``, or split it by ``weights`` (cluster name to
    weight, for a canary). ``routes`` maps several prefixes to a cluster or weights, most specific
    first. ``response_headers`` are added to every routed response; values may use Envoy's
    command operators, e.g. ``{"x-upstream": "%UPSTREAM_REMOTE_ADDRESS%"}`` says which endpoint
    answered. ``timeout`` (seconds; Envoy's default is 15) and ``retry_policy`` (Envoy's JSON form,
    e.g. ``{"retry_on": "5xx", "num_retries": 2}``) apply to every route.
    """
    table: dict[str, str | Mapping[str, int]] = dict(routes or {})
    if cluster is not None and weights is not None:
        raise ValueError("give either cluster or weights, not both")
    if cluster is not None or weights is not None:
        table[prefix] = cluster if cluster is not None else weights  # type: ignore[assignment]
    if not table:
        raise ValueError(f"route configuration {name!r} needs a cluster, weights or routes")
    retries = _part(retry_policy, RetryPolicy, f"route configuration {name!r} retry_policy") if retry_policy is not None else None
    if timeout is not None and not timeout >= 0:
        raise ValueError(_("route configuration '{name}': timeout {timeout} must be 0 (none) or more seconds").format(
            name=name, timeout=timeout))
    vh = route_components_pb2.VirtualHost(name=virtual_host, domains=list(domains))
    for match_prefix, target in table.items():
        action = route_components_pb2.RouteAction()
        if timeout is not None:
            action.timeout.CopyFrom(_seconds(timeout))
        if retries is not None:
            action.retry_policy.CopyFrom(retries)
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
    tls_secret: str | None = None,
    client_ca_secret: str | None = None,
) -> listener_pb2.Listener:
    """An HTTP listener whose routes come over RDS through ADS, ending in the router filter.

    It binds 127.0.0.1 unless told otherwise; under docker compose pass ``address="0.0.0.0"``
    so the published port reaches it. A new listener warms (is not bound yet) until its route
    configuration arrives, or ``initial_fetch_timeout`` seconds (Envoy's default: 15; 0 waits
    forever) have passed; then it starts without routes and answers 404 (flag NR).

    ``response_flags=True`` makes Envoy put its response flags (NC: no such cluster, UH: no
    healthy endpoint, NR: no route, ...; the access log's ``%RESPONSE_FLAGS%``) in the
    ``x-lab-response-flags`` header of the replies it makes itself, so a client sees why.

    ``tls_secret`` makes it HTTPS with the certificate of that SDS secret (``tls_secret(...)``),
    fetched over ADS; ``client_ca_secret`` also requires clients to present a certificate that CA
    signed (mutual TLS).
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
    chain = listener_components_pb2.FilterChain(filters=[
        listener_components_pb2.Filter(name="envoy.filters.network.http_connection_manager", typed_config=_pack(manager))
    ])
    if tls_secret is not None:
        context = tls_pb2.DownstreamTlsContext()
        context.common_tls_context.tls_certificate_sds_secret_configs.append(
            secret_pb2.SdsSecretConfig(name=tls_secret, sds_config=_ads())
        )
        if client_ca_secret is not None:
            context.require_client_certificate.value = True
            context.common_tls_context.validation_context_sds_secret_config.CopyFrom(
                secret_pb2.SdsSecretConfig(name=client_ca_secret, sds_config=_ads())
            )
        chain.transport_socket.name = "envoy.transport_sockets.tls"
        chain.transport_socket.typed_config.CopyFrom(_pack(context))
    elif client_ca_secret is not None:
        raise ValueError(_("listener '{name}': client_ca_secret needs tls_secret (mutual TLS is TLS first)").format(
            name=name))
    return listener_pb2.Listener(name=name, address=socket_address(address, port), filter_chains=[chain])


def _pem(value: bytes | str) -> str:
    text = value.decode() if isinstance(value, bytes) else value
    if "-----BEGIN " not in text:
        raise ValueError(_("expected PEM text ('-----BEGIN ...'), not a file name: read the file first"))
    return text


def tls_secret(name: str, certificate_chain: bytes | str, private_key: bytes | str) -> secret_pb2.Secret:
    """An SDS secret holding a certificate (PEM chain) and its private key, inline.

    Envoy receives the key itself over xDS: keep such a control plane on loopback or behind
    mutual TLS (docs/security.md)."""
    secret = secret_pb2.Secret(name=name)
    secret.tls_certificate.certificate_chain.inline_string = _pem(certificate_chain)
    secret.tls_certificate.private_key.inline_string = _pem(private_key)
    return secret


def validation_secret(name: str, trusted_ca: bytes | str) -> secret_pb2.Secret:
    """An SDS secret holding the CA certificates (PEM) a peer's certificate must chain to."""
    secret = secret_pb2.Secret(name=name)
    secret.validation_context.trusted_ca.inline_string = _pem(trusted_ca)
    return secret


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

