"""Snapshots: versions, names, and the consistency check that runs before anything is pushed."""

from __future__ import annotations

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from envoy.service.discovery.v3 import discovery_pb2

from labxds import (
    CLUSTER,
    ENDPOINT,
    LISTENER,
    ROUTE,
    ConsistencyError,
    ResourceError,
    Snapshot,
    cluster,
    http_listener,
    load_assignment,
    route_configuration,
)


def _web(port: int = 8080):
    return [
        cluster("web", type="EDS"),
        load_assignment("web", [("127.0.0.1", port)]),
        route_configuration("routes", "web"),
        http_listener("l0", 10000, "routes"),
    ]


# -- versions --------------------------------------------------------------------------------


def test_content_hash_version_is_stable():
    a, b = Snapshot(_web()), Snapshot(_web())
    assert a.versions == b.versions
    assert set(a.versions) == {CLUSTER, ENDPOINT, LISTENER, ROUTE}
    assert all(len(v) == 16 for v in a.versions.values())  # blake2b-64, hex
    assert a == b


def test_unchanged_type_keeps_its_version():
    a, b = Snapshot(_web(8080)), Snapshot(_web(8081))
    assert a.version(ENDPOINT) != b.version(ENDPOINT)
    for url in (CLUSTER, LISTENER, ROUTE):
        assert a.version(url) == b.version(url), url
    assert a != b


def test_resource_order_does_not_change_the_version():
    res = _web() + [cluster("other", [("127.0.0.1", 1)], type="STATIC")]
    assert Snapshot(res).versions == Snapshot(list(reversed(res))).versions


def test_explicit_version_applies_to_every_type():
    snap = Snapshot(_web(), version="1")
    assert snap.versions == {CLUSTER: "1", ENDPOINT: "1", LISTENER: "1", ROUTE: "1"}
    assert Snapshot(_web(), version=2).version(CLUSTER) == "2"


def test_per_type_version_mapping_falls_back_to_hash():
    snap = Snapshot(_web(), version={CLUSTER: "c7", LISTENER: "l3"})
    assert snap.version(CLUSTER) == "c7" and snap.version(LISTENER) == "l3"
    assert snap.version(ENDPOINT) == Snapshot(_web()).version(ENDPOINT)  # not in the mapping: hashed


def test_types_are_in_push_order():
    snap = Snapshot(list(reversed(_web())))
    assert snap.types == (CLUSTER, ENDPOINT, LISTENER, ROUTE)
    assert len(snap) == 4
    assert "CDS v" in repr(snap)
    assert repr(Snapshot()) == "Snapshot(empty)"


def test_mapping_of_type_to_resources():
    snap = Snapshot({CLUSTER: [cluster("c", [("127.0.0.1", 1)], type="STATIC")]})
    assert snap.names(CLUSTER) == {"c"}


def test_entries_carry_shared_pre_encoded_bytes():
    snap = Snapshot(_web())
    entry = snap.entries(CLUSTER)["web"]
    resp = discovery_pb2.DiscoveryResponse.FromString(entry.sotw)
    got = cluster_pb2.Cluster()
    assert resp.resources[0].Unpack(got) and got == snap.resources(CLUSTER)["web"]
    delta = discovery_pb2.DeltaDiscoveryResponse.FromString(entry.delta)
    assert delta.resources[0].name == "web" and delta.resources[0].version == entry.version


# -- names -----------------------------------------------------------------------------------


def test_duplicate_names_raise_naming_them():
    with pytest.raises(ResourceError, match="duplicate CDS resource named 'web'") as info:
        Snapshot([cluster("web", [("a", 1)], type="STATIC"), cluster("web", [("b", 2)], type="STATIC")])
    assert "resource #1" in str(info.value)
    with pytest.raises(ResourceError, match="duplicate EDS resource named 'x'"):
        Snapshot([load_assignment("x", []), load_assignment("x", [])], check=False)


def test_same_name_in_different_types_is_fine():
    snap = Snapshot([cluster("web", type="EDS"), load_assignment("web", []),
                     route_configuration("web", "web")])
    assert snap.names(CLUSTER) == snap.names(ENDPOINT) == snap.names(ROUTE) == {"web"}


def test_empty_names_raise_naming_the_field():
    with pytest.raises(ResourceError, match=r"CDS resource has an empty 'name'") as info:
        Snapshot([cluster_pb2.Cluster()])
    assert "resource #0" in str(info.value)
    with pytest.raises(ResourceError, match=r"EDS resource has an empty 'cluster_name'"):
        Snapshot([endpoint_pb2.ClusterLoadAssignment()])


def test_a_message_that_is_not_a_resource_is_refused():
    with pytest.raises(ResourceError, match="no 'name' field"):
        Snapshot([hcm_pb2.HttpConnectionManager()])


# -- consistency -----------------------------------------------------------------------------


def test_consistent_snapshot_passes():
    Snapshot(_web()).check()


def test_eds_cluster_without_load_assignment():
    with pytest.raises(ConsistencyError, match="EDS cluster 'web' has no ClusterLoadAssignment named 'web'"):
        Snapshot([cluster("web", type="EDS")])


def test_eds_cluster_with_service_name_needs_that_assignment():
    c = cluster("web", type="EDS", service_name="web-eds")
    with pytest.raises(ConsistencyError, match="'web-eds'"):
        Snapshot([c, load_assignment("web", [])])
    snap = Snapshot([c, load_assignment("web-eds", [])])
    assert snap.eds_names() == {"web-eds"}


def test_listener_naming_a_missing_route_configuration():
    with pytest.raises(ConsistencyError) as info:
        Snapshot([http_listener("l0", 10000, "nowhere")])
    assert "listener 'l0'" in str(info.value) and "'nowhere'" in str(info.value)
    assert len(info.value.problems) == 1


def test_route_to_a_missing_cluster():
    with pytest.raises(ConsistencyError, match="route configuration 'r' routes virtual host 'local_service' to cluster 'ghost'"):
        Snapshot([route_configuration("r", "ghost")])


def test_weighted_clusters_are_checked_each():
    rc = route_configuration("r", weights={"blue": 90, "green": 10})
    with pytest.raises(ConsistencyError) as info:
        Snapshot([rc, cluster("blue", [("127.0.0.1", 1)], type="STATIC")])
    assert "'green'" in str(info.value) and "'blue'" not in str(info.value)


def test_inline_route_config_and_tcp_proxy_are_checked():
    inline = hcm_pb2.HttpConnectionManager(stat_prefix="x", route_config=route_configuration("inline", "nope"))
    tcp = tcp_proxy_pb2.TcpProxy(stat_prefix="t", cluster="tcp-missing")
    listener = listener_pb2.Listener(name="l", filter_chains=[listener_components_pb2.FilterChain(filters=[
        listener_components_pb2.Filter(name="hcm"), listener_components_pb2.Filter(name="tcp"),
    ])])
    listener.filter_chains[0].filters[0].typed_config.Pack(inline)
    listener.filter_chains[0].filters[1].typed_config.Pack(tcp)
    with pytest.raises(ConsistencyError) as info:
        Snapshot([listener])
    assert len(info.value.problems) == 2
    assert "'nope'" in str(info.value) and "'tcp-missing'" in str(info.value)


def test_every_problem_is_reported_at_once():
    with pytest.raises(ConsistencyError) as info:
        Snapshot([cluster("web", type="EDS"), route_configuration("r", "ghost"), http_listener("l", 1, "r2")])
    assert len(info.value.problems) == 3


def test_check_false_skips_the_check():
    snap = Snapshot([route_configuration("r", "bootstrap_cluster")], check=False)
    assert snap.names(ROUTE) == {"r"}
    with pytest.raises(ConsistencyError, match="check=False"):
        snap.check()


def test_rds_and_eds_names():
    snap = Snapshot(_web())
    assert snap.rds_names() == {"routes"} and snap.eds_names() == {"web"}
    assert isinstance(snap.resources(ROUTE)["routes"], route_pb2.RouteConfiguration)


def test_mapping_key_must_match_the_resources_type():
    with pytest.raises(ResourceError) as info:
        Snapshot({ROUTE: [cluster("c", [("127.0.0.1", 1)], type="STATIC")]})
    text = str(info.value)
    assert "envoy.config.cluster.v3.Cluster" in text and "RouteConfiguration" in text and "#0" in text


# -- rule 14: TTLs ---------------------------------------------------------------------------


def _static(name: str):
    return cluster(name, [("127.0.0.1", 1)], type="STATIC")


def test_ttl_for_every_resource_seconds_or_timedelta():
    from datetime import timedelta

    for spec in (90, 90.0, timedelta(minutes=1, seconds=30)):
        snap = Snapshot(_web(), ttl=spec)
        assert {snap.ttl(url, n) for url in snap.types for n in snap.names(url)} == {90.0}


def test_ttl_by_type_url_and_by_name():
    snap = Snapshot([_static("a"), _static("b"), _static("c"), route_configuration("a", "a")],
                    ttl={CLUSTER: 10, "b": 2.5, "c": None}, check=False)
    assert snap.ttl(CLUSTER, "a") == 10.0
    assert snap.ttl(CLUSTER, "b") == 2.5, "a name wins over its type URL"
    assert snap.ttl(CLUSTER, "c") is None, "None exempts"
    assert snap.ttl(ROUTE, "a") is None, "a type URL key is for that type only"
    named = Snapshot([_static("a"), route_configuration("a", "a")], ttl={"a": 5}, check=False)
    assert named.ttl(CLUSTER, "a") == named.ttl(ROUTE, "a") == 5.0, "a name applies in every type"
    assert Snapshot([_static("a")], ttl={LISTENER: 1}).ttl(CLUSTER, "a") is None  # a type it lacks
    pair = Snapshot([_static("a"), route_configuration("a", "a")], ttl={(CLUSTER, "a"): 7, "a": 3}, check=False)
    assert (pair.ttl(CLUSTER, "a"), pair.ttl(ROUTE, "a")) == (7.0, 3.0), "a (type URL, name) pair wins over a name"


@pytest.mark.parametrize("spec, error", [
    ({"nope": 1}, "no resource of this snapshot has that name"),
    ({(ROUTE, "a"): 1}, "no resource of this snapshot has that type URL and name"),
    ({("a",): 1}, "no resource of this snapshot has that type URL and name"),
    (0, "positive"),
    (-1, "positive"),
    (float("nan"), "positive"),
    (float("inf"), "positive"),
    ({"a": 0}, "ttl['a']"),
    ("10", "seconds or a timedelta"),
    (True, "seconds or a timedelta"),
])
def test_bad_ttls_are_refused(spec, error):
    with pytest.raises((ValueError, TypeError)) as info:
        Snapshot([_static("a")], ttl=spec)
    assert error in str(info.value)


def test_ttl_keeps_the_content_versions_and_the_plain_bytes():
    plain = Snapshot(_web())
    ttl = Snapshot(_web(), ttl=30)
    assert ttl.versions == plain.versions
    for url in plain.types:
        for name, e in plain.entries(url).items():
            t = ttl.entries(url)[name]
            assert (t.version, t.sotw, t.delta, t.ttl) == (e.version, e.sotw, e.delta, None)
    assert ttl != plain, "a snapshot with TTLs is another snapshot"
    assert ttl == Snapshot(_web(), ttl=30) and ttl != Snapshot(_web(), ttl=31)


def test_ttl_entries_are_pre_encoded_resource_wrappers():
    snap = Snapshot([_static("a"), _static("b")], ttl={"a": 1.5})
    served = snap.entries(CLUSTER, ttl=True)
    assert served["b"] is snap.entries(CLUSTER)["b"], "a resource without TTL is served as is"
    a, plain = served["a"], snap.entries(CLUSTER)["a"]
    assert a.ttl == 1.5 and a.version != plain.version and plain.version in a.version
    resp = discovery_pb2.DiscoveryResponse.FromString(a.sotw)
    assert resp.resources[0].type_url == "type.googleapis.com/envoy.service.discovery.v3.Resource"
    wrapped = discovery_pb2.Resource()
    assert resp.resources[0].Unpack(wrapped)
    assert (wrapped.name, wrapped.version, wrapped.ttl.ToMilliseconds()) == ("a", a.version, 1500)
    body = cluster_pb2.Cluster()
    assert wrapped.resource.Unpack(body) and body == plain.message
    delta = discovery_pb2.DeltaDiscoveryResponse.FromString(a.delta).resources[0]
    assert delta == wrapped
    for beat_bytes, cls in ((a.heartbeat_sotw, discovery_pb2.DiscoveryResponse),
                            (a.heartbeat_delta, discovery_pb2.DeltaDiscoveryResponse)):
        beat = cls.FromString(beat_bytes).resources[0]
        if cls is discovery_pb2.DiscoveryResponse:
            unpacked = discovery_pb2.Resource()
            assert beat.Unpack(unpacked)
            beat = unpacked
        assert (beat.name, beat.version, beat.ttl.ToMilliseconds(), beat.HasField("resource")) == (
            "a", a.version, 1500, False)
    no_ttl = Snapshot([_static("a")])
    assert no_ttl.entries(CLUSTER, ttl=True) is no_ttl.entries(CLUSTER)


def test_an_unchanged_resource_reuses_the_bytes_of_the_last_snapshot():
    from labxds.xds import cluster

    a, b = cluster("a", [("h", 1)], type="STATIC"), cluster("b", [("h", 2)], type="STATIC")
    first = Snapshot([a, b])
    changed = cluster("b", [("h", 3)], type="STATIC")
    second = Snapshot([cluster("a", [("h", 1)], type="STATIC"), changed])  # equal to a, another object
    one, two = first.entries(CLUSTER), second.entries(CLUSTER)
    assert two["a"].sotw is one["a"].sotw and two["a"].delta is one["a"].delta
    assert two["a"].message is not one["a"].message  # each snapshot keeps its own message
    assert two["b"].version != one["b"].version and two["b"].sotw != one["b"].sotw
    assert two["b"].message is changed
    assert Snapshot([changed]).entries(CLUSTER)["b"] == two["b"]


def test_reused_bytes_are_bounded():
    from labxds.xds import cluster
    from labxds.xds import snapshot as snapshot_module

    framed = snapshot_module._Framed(budget=10_000)
    for i in range(500):
        framed.entry(CLUSTER, f"c{i}", cluster(f"c{i}", [("h", i + 1)], type="STATIC"))
        assert framed._size <= 10_000
    kept = len(framed._new) + len(framed._old)
    assert 0 < kept < 500


def test_each_entry_knows_what_it_refers_to():
    from labxds.xds import sandbox_resources

    snap = Snapshot(sandbox_resources("127.0.0.1", 8080))
    assert snap.entries(LISTENER)["listener_0"].refs == {(ROUTE, "local_route")}
    assert snap.entries(ROUTE)["local_route"].refs == {(CLUSTER, "example_proxy_cluster")}
    assert snap.entries(CLUSTER)["example_proxy_cluster"].refs == frozenset()  # LOGICAL_DNS, no EDS
    eds = Snapshot([cluster_pb2.Cluster(name="e", type=cluster_pb2.Cluster.EDS)], check=False)
    assert eds.entries(CLUSTER)["e"].refs == {(ENDPOINT, "e")}


# -- staged: out of order on purpose -----------------------------------------------------------


def _before_after():
    from labxds import Snapshot as S

    old = cluster("old", [("127.0.0.1", 8080)], type="STATIC")
    before = S([old, route_configuration("routes", "old"), http_listener("l0", 10000, "routes")], version="1")
    after = S([old, cluster("new", type="EDS"), load_assignment("new", [("127.0.0.1", 8081)]),
               route_configuration("routes", "new"), http_listener("l0", 10000, "routes")], version="2")
    return before, after


def test_staged_brings_one_type_at_a_time_in_the_given_order():
    from labxds import staged

    before, after = _before_after()
    routes_first, clusters, endpoints = staged(before, after, ["RDS", "CDS", "EDS"])
    # Step 1: the new route, which points at a cluster the step does not have: unchecked.
    assert routes_first.resources(ROUTE)["routes"].virtual_hosts[0].routes[0].route.cluster == "new"
    assert routes_first.names(CLUSTER) == {"old"} and not routes_first.names(ENDPOINT)
    assert routes_first.versions == {CLUSTER: "1", LISTENER: "1", ROUTE: "2"}
    with pytest.raises(ConsistencyError, match="'new'"):
        routes_first.check()
    # Step 2: the EDS cluster without its load assignment.
    assert clusters.names(CLUSTER) == {"old", "new"} and not clusters.names(ENDPOINT)
    assert clusters.version(CLUSTER) == "2"
    # The last step holds what `after` holds (the unchanged listener keeps its version label).
    assert endpoints.names(ENDPOINT) == {"new"}
    for url in (CLUSTER, ENDPOINT, ROUTE, LISTENER):
        assert {n: e.version for n, e in endpoints.entries(url).items()} == {n: e.version for n, e in after.entries(url).items()}
    endpoints.check()


def test_staged_refuses_an_order_that_leaves_a_changed_type_out():
    from labxds import staged

    before, after = _before_after()
    with pytest.raises(ValueError, match="EDS changes between the two snapshots"):
        staged(before, after, ["CDS", "RDS"])
    with pytest.raises(ValueError, match="unknown resource type 'XDS'"):
        staged(before, after, ["CDS", "EDS", "XDS"])
    with pytest.raises(ValueError, match="CDS more than once"):
        staged(before, after, ["CDS", "EDS", "RDS", "cds"])
    with pytest.raises(TypeError, match="list of types"):
        staged(before, after, "CDS")
    # Type URLs work as well as short names; from nothing, every type of `after` is a change.
    assert len(staged(before, after, [CLUSTER, ENDPOINT, ROUTE])) == 3
    assert staged(None, after, ["CDS", "EDS", "LDS", "RDS"])[-1].names(LISTENER) == {"l0"}
