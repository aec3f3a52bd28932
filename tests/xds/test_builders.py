"""Builders, and the sandbox's snapshot with its constants."""

from __future__ import annotations

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import config_source_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2

from labxds import (
    CLUSTER,
    LISTENER,
    ROUTE,
    Snapshot,
    cluster,
    http_listener,
    load_assignment,
    route_configuration,
    sandbox_resources,
    sandbox_snapshot,
)
from labxds.xds import builders as res


def _addresses(cla):
    return [
        (lb.endpoint.address.socket_address.address, lb.endpoint.address.socket_address.port_value)
        for locality in cla.endpoints
        for lb in locality.lb_endpoints
    ]


@pytest.mark.parametrize("kind", ["STATIC", "STRICT_DNS", "LOGICAL_DNS"])
def test_inline_cluster_types_carry_their_endpoints(kind):
    c = cluster("web", ["127.0.0.1:8080", ("127.0.0.2", 8081)], type=kind.lower(), connect_timeout=0.25)
    assert c.type == cluster_pb2.Cluster.DiscoveryType.Value(kind)
    assert c.load_assignment.cluster_name == "web"
    assert _addresses(c.load_assignment) == [("127.0.0.1", 8080), ("127.0.0.2", 8081)]
    assert c.connect_timeout.ToNanoseconds() == 250_000_000
    assert c.lb_policy == cluster_pb2.Cluster.ROUND_ROBIN
    assert not c.HasField("eds_cluster_config")
    if kind == "STATIC":
        assert c.dns_lookup_family == cluster_pb2.Cluster.AUTO
    else:
        assert c.dns_lookup_family == cluster_pb2.Cluster.V4_ONLY


def test_eds_cluster_gets_endpoints_over_ads():
    c = cluster("web")
    assert c.type == cluster_pb2.Cluster.EDS
    src = c.eds_cluster_config.eds_config
    assert src.HasField("ads") and src.resource_api_version == config_source_pb2.V3
    assert not c.HasField("load_assignment")
    assert cluster("web", service_name="svc").eds_cluster_config.service_name == "svc"
    with pytest.raises(ValueError, match="load_assignment"):
        cluster("web", ["127.0.0.1:1"])


@pytest.mark.parametrize("policy", ["ROUND_ROBIN", "LEAST_REQUEST", "RANDOM", "RING_HASH", "MAGLEV"])
def test_lb_policies(policy):
    assert cluster("w", type="STATIC", lb_policy=policy.lower()).lb_policy == cluster_pb2.Cluster.LbPolicy.Value(policy)


def test_unknown_choices_list_the_options():
    with pytest.raises(ValueError, match="ROUND_ROBIN"):
        cluster("w", lb_policy="fastest")
    with pytest.raises(ValueError, match="STRICT_DNS"):
        cluster("w", type="MAGIC")


def test_http2_cluster_sets_protocol_options():
    c = cluster("w", ["127.0.0.1:1"], type="STATIC", http2=True)
    packed = c.typed_extension_protocol_options["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
    opts = http_protocol_options_pb2.HttpProtocolOptions()
    assert packed.Unpack(opts) and opts.explicit_http_config.HasField("http2_protocol_options")


def test_load_assignment_weights_and_locality():
    cla = load_assignment("web", [("10.0.0.1", 80, 3), "10.0.0.2:81"])
    assert _addresses(cla) == [("10.0.0.1", 80), ("10.0.0.2", 81)]
    eps = cla.endpoints[0].lb_endpoints
    assert eps[0].load_balancing_weight.value == 3 and not eps[1].HasField("load_balancing_weight")
    assert cla.endpoints[0].load_balancing_weight.value == 1  # gRPC's xDS client needs it
    assert cla.endpoints[0].HasField("locality")  # gRPC NACKs a LocalityLbEndpoints without one
    bare = load_assignment("web", [], locality_weight=None).endpoints[0]
    assert not bare.HasField("load_balancing_weight") and not bare.HasField("locality")
    assert _addresses(load_assignment("v6", ["[::1]:80"])) == [("::1", 80)]


@pytest.mark.parametrize("bad", ["nohost", "host:port", ("h", 1, 2, 3)])
def test_bad_endpoints(bad):
    with pytest.raises(ValueError, match="endpoint"):
        load_assignment("web", [bad])


def test_port_range():
    with pytest.raises(ValueError, match="70000"):
        load_assignment("web", [("h", 70000)])


def test_route_to_one_cluster():
    rc = route_configuration("r", "web")
    vh = rc.virtual_hosts[0]
    assert rc.name == "r" and vh.name == "local_service" and list(vh.domains) == ["*"]
    assert vh.routes[0].match.prefix == "/" and vh.routes[0].route.cluster == "web"


def test_weighted_routes():
    rc = route_configuration("r", weights={"blue": 90, "green": 10})
    wc = rc.virtual_hosts[0].routes[0].route.weighted_clusters.clusters
    assert [(c.name, c.weight.value) for c in wc] == [("blue", 90), ("green", 10)]
    with pytest.raises(ValueError, match="not all zero"):
        route_configuration("r", weights={"a": 0})
    with pytest.raises(ValueError, match="either cluster or weights"):
        route_configuration("r", "a", weights={"a": 1})
    with pytest.raises(ValueError, match="needs a cluster"):
        route_configuration("r")


def test_several_prefixes_keep_their_order():
    rc = route_configuration("r", routes={"/api": "api", "/": {"a": 1, "b": 1}})
    routes = rc.virtual_hosts[0].routes
    assert [r.match.prefix for r in routes] == ["/api", "/"]
    assert routes[0].route.cluster == "api" and len(routes[1].route.weighted_clusters.clusters) == 2


def test_http_listener_uses_rds_over_ads_and_ends_in_the_router():
    listener = http_listener("l0", 10000, "routes")
    sock = listener.address.socket_address
    assert (sock.address, sock.port_value) == ("127.0.0.1", 10000)
    assert http_listener("l0", 1, "r", address="0.0.0.0").address.socket_address.address == "0.0.0.0"
    hcm = hcm_pb2.HttpConnectionManager()
    assert listener.filter_chains[0].filters[0].typed_config.Unpack(hcm)
    assert hcm.rds.route_config_name == "routes" and hcm.rds.config_source.HasField("ads")
    assert hcm.http_filters[-1].name == "envoy.filters.http.router"
    assert hcm.http_filters[-1].typed_config.Is(router_pb2.Router.DESCRIPTOR)


def test_sandbox_snapshot_has_the_sandbox_constants():
    snap = sandbox_snapshot()
    assert snap.versions == {CLUSTER: "1", LISTENER: "1", ROUTE: "1"}
    assert snap.names(CLUSTER) == {"example_proxy_cluster"}
    assert snap.names(ROUTE) == {"local_route"}
    assert snap.names(LISTENER) == {"listener_0"}
    c = snap.resources(CLUSTER)["example_proxy_cluster"]
    assert c.type == cluster_pb2.Cluster.LOGICAL_DNS
    assert _addresses(c.load_assignment) == [("service1", 8080)]
    listener = snap.resources(LISTENER)["listener_0"]
    assert listener.address.socket_address.port_value == 10000
    rc = snap.resources(ROUTE)["local_route"]
    assert rc.virtual_hosts[0].routes[0].route.cluster == "example_proxy_cluster"
    assert (res.SANDBOX_CLUSTER, res.SANDBOX_ROUTE, res.SANDBOX_LISTENER) == ("example_proxy_cluster", "local_route", "listener_0")
    assert (res.SANDBOX_LISTENER_PORT, res.SANDBOX_UPSTREAM, res.SANDBOX_UPSTREAM_PORT) == (10000, "service1", 8080)


def test_sandbox_snapshot_parameters():
    snap = sandbox_snapshot("127.0.0.1", 9999, version=2, listener_port=12345)
    assert set(snap.versions.values()) == {"2"}
    c = snap.resources(CLUSTER)["example_proxy_cluster"]
    assert _addresses(c.load_assignment) == [("127.0.0.1", 9999)]
    assert snap.resources(LISTENER)["listener_0"].address.socket_address.port_value == 12345
    assert len(sandbox_resources()) == 3
    Snapshot(sandbox_resources()).check()


def test_api_listener_is_grpc_style():
    listener = res.api_listener("greeter", "greeter-route")
    assert listener.name == "greeter"
    assert not listener.HasField("address") and not listener.filter_chains
    hcm = hcm_pb2.HttpConnectionManager()
    assert listener.api_listener.api_listener.Unpack(hcm)
    assert hcm.rds.route_config_name == "greeter-route"
    assert hcm.rds.config_source.HasField("ads")
    assert hcm.rds.config_source.resource_api_version == config_source_pb2.V3
    assert [f.name for f in hcm.http_filters] == ["envoy.filters.http.router"]
    assert hcm.http_filters[-1].typed_config.Is(router_pb2.Router.DESCRIPTOR)
    snap = Snapshot([
        listener, route_configuration("greeter-route", "greeter"), cluster("greeter"), load_assignment("greeter", ["127.0.0.1:1"]),
    ])
    assert snap.rds_names() == {"greeter-route"}


def test_initial_fetch_timeouts_for_warming():
    """What a warming EDS cluster waits for its endpoints, a warming listener for its routes."""
    eds = cluster("c", initial_fetch_timeout=1.5)
    assert eds.eds_cluster_config.eds_config.initial_fetch_timeout.ToNanoseconds() == 1_500_000_000
    assert not cluster("c").eds_cluster_config.eds_config.HasField("initial_fetch_timeout")  # Envoy's 15 s
    forever = cluster("c", initial_fetch_timeout=0).eds_cluster_config.eds_config
    assert forever.HasField("initial_fetch_timeout") and forever.initial_fetch_timeout.ToNanoseconds() == 0
    with pytest.raises(ValueError, match="only an EDS cluster"):
        cluster("c", [("127.0.0.1", 80)], type="STATIC", initial_fetch_timeout=1)
    with pytest.raises(ValueError, match=">= 0"):
        cluster("c", initial_fetch_timeout=-1)
    hcm = hcm_pb2.HttpConnectionManager()
    http_listener("l0", 10000, "routes", initial_fetch_timeout=2).filter_chains[0].filters[0].typed_config.Unpack(hcm)
    assert hcm.rds.config_source.initial_fetch_timeout.seconds == 2


def test_response_flags_header_on_local_replies_only():
    hcm = hcm_pb2.HttpConnectionManager()
    http_listener("l0", 10000, "routes", response_flags=True).filter_chains[0].filters[0].typed_config.Unpack(hcm)
    (mapper,) = hcm.local_reply_config.mappers
    assert mapper.filter.HasField("response_flag_filter") and not mapper.filter.response_flag_filter.flags
    (header,) = mapper.headers_to_add
    assert (header.header.key, header.header.value) == (res.RESPONSE_FLAGS_HEADER, "%RESPONSE_FLAGS%")
    plain = hcm_pb2.HttpConnectionManager()
    http_listener("l0", 10000, "routes").filter_chains[0].filters[0].typed_config.Unpack(plain)
    assert not plain.HasField("local_reply_config")  # the sandbox's listener stays the sandbox's


def test_route_response_headers():
    rc = route_configuration("r", "c", response_headers={"x-upstream": "%UPSTREAM_REMOTE_ADDRESS%"})
    (added,) = rc.response_headers_to_add
    assert (added.header.key, added.header.value) == ("x-upstream", "%UPSTREAM_REMOTE_ADDRESS%")
    assert not route_configuration("r", "c").response_headers_to_add


# -- resilience (lesson 11) and TLS (lesson 13) options ------------------------------------------


def test_cluster_takes_outlier_detection_and_health_checks_in_envoys_json_form():
    c = cluster("backend", outlier_detection={"consecutive_5xx": 3, "base_ejection_time": "10s",
                                              "max_ejection_percent": 50},
                health_checks=[{"timeout": "1s", "interval": "0.5s", "unhealthy_threshold": 2,
                                "healthy_threshold": 1, "http_health_check": {"path": "/healthz"}}])  # fmt: skip
    assert c.outlier_detection.consecutive_5xx.value == 3
    assert c.outlier_detection.base_ejection_time.seconds == 10
    assert c.outlier_detection.max_ejection_percent.value == 50
    (hc,) = c.health_checks
    assert hc.http_health_check.path == "/healthz" and hc.interval.nanos == 500_000_000
    plain = cluster("backend")
    assert not plain.HasField("outlier_detection") and not plain.health_checks


def test_route_takes_a_timeout_and_a_retry_policy_on_every_route():
    r = route_configuration("r", routes={"/api": "a", "/": "b"}, timeout=0.5,
                            retry_policy={"retry_on": "5xx", "num_retries": 2, "per_try_timeout": "0.2s"})
    for route in r.virtual_hosts[0].routes:
        assert route.route.timeout.nanos == 500_000_000
        assert route.route.retry_policy.retry_on == "5xx" and route.route.retry_policy.num_retries.value == 2
        assert route.route.retry_policy.per_try_timeout.nanos == 200_000_000
    assert not route_configuration("r", "a").virtual_hosts[0].routes[0].route.HasField("retry_policy")


@pytest.mark.parametrize("call, words", [
    (lambda: route_configuration("r", "a", retry_policy={"retry_onn": "5xx"}), "retry_policy.*retry_onn"),
    (lambda: route_configuration("r", "a", retry_policy="5xx"), "retry_policy must be a dict"),
    (lambda: route_configuration("r", "a", timeout=-1), "timeout -1"),
    (lambda: cluster("c", outlier_detection={"consecutive_5xx": "three"}), "outlier_detection"),
    (lambda: cluster("c", health_checks=[{"interval": "soon"}]), r"health_checks\[0\]"),
    (lambda: cluster("c", outlier_detection=route_configuration("r", "a")), "not a envoy.config.route"),
])
def test_resilience_options_name_the_mistake(call, words):
    with pytest.raises((ValueError, TypeError), match=words):
        call()


def test_https_listener_fetches_its_certificate_over_sds():
    from envoy.extensions.transport_sockets.tls.v3 import tls_pb2

    listener = http_listener("l", 10443, "r", tls_secret="server_cert", client_ca_secret="clients")
    socket = listener.filter_chains[0].transport_socket
    assert socket.name == "envoy.transport_sockets.tls"
    context = tls_pb2.DownstreamTlsContext()
    socket.typed_config.Unpack(context)
    (cert,) = context.common_tls_context.tls_certificate_sds_secret_configs
    assert cert.name == "server_cert" and cert.sds_config.HasField("ads")
    assert context.common_tls_context.validation_context_sds_secret_config.name == "clients"
    assert context.require_client_certificate.value is True
    assert not http_listener("l", 10443, "r").filter_chains[0].HasField("transport_socket")
    with pytest.raises(ValueError, match="needs tls_secret"):
        http_listener("l", 10443, "r", client_ca_secret="clients")


def test_secrets_hold_pem_inline_and_refuse_file_names():
    pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
    key = "-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----\n"
    s = res.tls_secret("server_cert", pem.encode(), key)
    assert s.name == "server_cert"
    assert s.tls_certificate.certificate_chain.inline_string == pem
    assert s.tls_certificate.private_key.inline_string == key
    v = res.validation_secret("ca", pem)
    assert v.validation_context.trusted_ca.inline_string == pem
    snap = Snapshot([s, v])
    assert set(snap.names("type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret")) == {"server_cert", "ca"}
    with pytest.raises(ValueError, match="PEM text"):
        res.tls_secret("x", "server.pem", "server-key.pem")
