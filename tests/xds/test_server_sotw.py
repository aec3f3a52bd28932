"""The State-of-the-World protocol, rule by rule (docs: /work/shared/xds-rules.md), with the
tests' own xDS client against a real ControlPlane on a kernel-chosen port."""

from __future__ import annotations

import itertools
import logging
import time

import grpc
import pytest
from xds_client import (
    CLUSTER,
    ENDPOINT,
    LISTENER,
    RESOURCE,
    ROUTE,
    TTL_FEATURE,
    SotwClient,
    StreamEnded,
    beat_timers,
    client_factory,
    describe,
    eventually,
    names,
    resources,
    ttls,
    wrappers,
)

from labxds import (
    ControlPlane,
    Snapshot,
    cluster,
    http_listener,
    load_assignment,
    route_configuration,
    staged,
)
from labxds.notebook.tables import status_table, trace_table


@pytest.fixture
def connect(cp):
    yield from client_factory(cp, SotwClient)


def static(name: str, port: int = 1) -> object:
    return cluster(name, [("127.0.0.1", port)], type="STATIC")


def web(version=None, *, port: int = 8080, timeout: float = 5.0, listener_port: int = 10000,
        routes_to: str = "web") -> Snapshot:
    """An EDS cluster, its endpoints, a listener and its route configuration."""
    return Snapshot([
        cluster("web", type="EDS", connect_timeout=timeout),
        load_assignment("web", [("127.0.0.1", port)]),
        route_configuration("routes", routes_to),
        http_listener("l0", listener_port, "routes"),
    ], version=version, check=False)


def routes(*names_and_clusters: tuple[str, str], version=None) -> Snapshot:
    return Snapshot([route_configuration(n, c) for n, c in names_and_clusters], version=version, check=False)


def kinds(cp: ControlPlane, node: str = "node-a") -> list[tuple[str, str, str]]:
    """(type, kind, version) of every trace row, oldest first."""
    t = trace_table(cp, node)
    return list(zip(t["type"], t["kind"], t["version"]))


# -- rule 1: the node comes on the first request ------------------------------------------


def test_rule01_stream_keyed_on_the_first_requests_node(cp, connect):
    cp.set_snapshot(web("1"))
    c = connect("node-a")
    r = c.subscribe(CLUSTER)
    assert c.sent[0].HasField("node")
    c.ack(r)
    # later requests carry no node and are still served, for the first request's node
    c.send(LISTENER, node=False)
    lds = c.recv()
    assert not c.sent[-1].HasField("node")
    assert names(lds) == ["l0"]
    assert cp.nodes() == ["node-a"]
    assert {row for row in trace_table(cp, "node-a")["node"]} == {"node-a"}


def test_rule01_first_request_without_node_is_invalid_argument(cp, connect):
    cp.set_snapshot(web("1"))
    c = connect("node-a")
    c.send(CLUSTER, node=False)
    with pytest.raises(StreamEnded) as info:
        c.recv()
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "node" in info.value.details
    assert cp.nodes() == []


def test_rule01_node_without_id_is_invalid_argument(cp, connect):
    c = connect("")
    c.send(CLUSTER, node=True)
    assert c.ended().code == grpc.StatusCode.INVALID_ARGUMENT


# -- rule 2: versions are per type --------------------------------------------------------


def test_rule02_types_advance_independently(cp, connect):
    cp.set_snapshot(web())
    c = connect()
    versions = {}
    for url, wanted in ((CLUSTER, []), (ENDPOINT, ["web"]), (LISTENER, []), (ROUTE, ["routes"])):
        r = c.subscribe(url, wanted)
        versions[url] = r.version_info
        c.ack(r, wanted)
    assert len(set(versions.values())) == 4, "hash versions differ per type"
    cp.set_snapshot(web(port=8081))  # only the endpoints change
    eds = c.recv()
    assert eds.type_url == ENDPOINT and eds.version_info != versions[ENDPOINT]
    c.ack(eds, ["web"])
    c.expect_nothing()
    status = status_table(cp).set_index("type")
    assert status.loc["CDS", "acked"] == versions[CLUSTER]
    assert status.loc["EDS", "acked"] == eds.version_info
    assert status.loc["LDS", "acked"] == versions[LISTENER]


def test_rule02_explicit_per_type_versions(cp, connect):
    cp.set_snapshot(web({CLUSTER: "c1", LISTENER: "l1"}))
    c = connect()
    cds = c.subscribe(CLUSTER)
    c.ack(cds)
    lds = c.subscribe(LISTENER)
    assert (cds.version_info, lds.version_info) == ("c1", "l1")


# -- rule 3: ACK and NACK by error_detail -------------------------------------------------


def test_rule03_nack_is_error_detail_not_the_version(cp, connect):
    cp.set_snapshot(web("1"))
    c = connect()
    r1 = c.subscribe(CLUSTER)
    c.ack(r1)
    cp.set_snapshot(web("2", timeout=2))
    r2 = c.recv()
    assert r2.version_info == "2"
    # version_info equal to the version sent, but with error_detail: still a NACK
    c.send(CLUSTER, version="2", nonce=r2.nonce, error="cluster web: bad timeout")
    c.expect_nothing()
    connect.sync()
    status = status_table(cp).set_index("type").loc["CDS"]
    assert (status["acked"], status["nacked"]) == ("1", "2")
    assert status["nack_error"] == "cluster web: bad timeout"
    last = trace_table(cp).iloc[-1]
    assert (last["kind"], last["version"], last["error"]) == ("NACK", "2", "cluster web: bad timeout")


def test_rule03_ack_with_an_unexpected_version_is_still_an_ack(cp, connect):
    cp.set_snapshot(web("1"))
    c = connect()
    r = c.subscribe(CLUSTER)
    c.send(CLUSTER, version="", nonce=r.nonce)  # no error_detail: an ACK, whatever the version says
    c.expect_nothing()
    connect.sync()
    kinds_seen = [k for t, k, v in kinds(cp) if t == "CDS"]
    assert kinds_seen == ["request", "response", "ACK"]
    assert status_table(cp).set_index("type").loc["CDS", "nacked"] is None


# -- rule 4: a NACKed version is never sent again -------------------------------------------


def test_rule04_nacked_version_is_not_resent(cp, connect):
    cp.set_snapshot(web("1"))
    c = connect()
    r1 = c.subscribe(CLUSTER)
    c.ack(r1)
    bad = web("2", timeout=2)
    cp.set_snapshot(bad)
    r2 = c.recv()
    c.nack(r2, "rejected", last_good="1")
    c.expect_nothing()
    connect.sync()
    cp.set_snapshot(bad)  # pushing it again does not resend it
    c.expect_nothing()
    c.send(CLUSTER, version="1", nonce=r2.nonce)  # nor does another request
    c.expect_nothing()
    cp.set_snapshot(web("3", timeout=3))
    r3 = c.recv()
    assert r3.version_info == "3"
    sent = [v for t, k, v in kinds(cp) if t == "CDS" and k == "response"]
    assert sent == ["1", "2", "3"]


def test_rule04_every_nacked_version_stays_refused_not_only_the_last(cp, connect):
    """NACK version 2, NACK version 3, then the snapshot goes back to version 2's content: it used
    to be sent again, because only the last NACKed version was remembered."""
    cp.set_snapshot(web("1"))
    c = connect()
    c.ack(c.subscribe(CLUSTER))
    cp.set_snapshot(web("2", timeout=2))
    c.nack(c.recv(), "two is bad", last_good="1")
    connect.sync()
    cp.set_snapshot(web("3", timeout=3))
    c.nack(c.recv(), "three is bad", last_good="1")
    connect.sync()
    cp.set_snapshot(web("2", timeout=2))
    c.expect_nothing()
    cp.set_snapshot(web("4", timeout=4))
    assert c.recv().version_info == "4"
    sent = [v for t, k, v in kinds(cp) if t == "CDS" and k == "response"]
    assert sent == ["1", "2", "3", "4"]


def test_rule12_a_reconnecting_client_keeps_its_clusters_until_its_routes_moved(cp, connect):
    """Found by the protocol's state machine: a client reconnects saying it runs the clusters and
    routes it last ACKed; meanwhile a cluster went and the route moved away from it. The new
    stream asked for CDS first and got the cluster removed while the client's route still used it.
    The server now remembers what the node last ACKed, and keeps the cluster until the route moved."""
    old = Snapshot([static("c0"), static("c1"), route_configuration("r0", "c0")])
    cp.set_snapshot(old)
    c = connect()
    c.ack(c.subscribe(CLUSTER))
    c.ack(c.subscribe(ROUTE, ["r0"]))
    connect.sync()
    c.close()
    new = Snapshot([static("c1"), route_configuration("r0", "c1")])
    cp.set_snapshot(new)
    again = connect()
    again.send(CLUSTER, version=old.version(CLUSTER))
    kept = again.recv()
    assert kept.version_info == new.version(CLUSTER) + "+retained" and sorted(names(kept)) == ["c0", "c1"]
    again.ack(kept)
    again.send(ROUTE, ["r0"], version=old.version(ROUTE))
    moved = again.recv()
    assert resources(moved)["r0"].virtual_hosts[0].routes[0].route.cluster == "c1"
    again.ack(moved, ["r0"])
    final = again.recv()
    assert final.version_info == new.version(CLUSTER) and names(final) == ["c1"]


def test_rule04_nacked_version_not_resent_after_reconnect(cp, connect):
    cp.set_snapshot(web("1"))
    c = connect()
    c.ack(c.subscribe(CLUSTER))
    cp.set_snapshot(web("2", timeout=2))
    r2 = c.recv()
    c.nack(r2, "rejected", last_good="1")
    c.expect_nothing()
    connect.sync()
    c.close()
    again = connect()  # the same node, a new stream, running version 1
    again.send(CLUSTER, version="1")
    again.expect_nothing(0.5)
    cp.set_snapshot(web("3", timeout=3))
    assert again.recv().version_info == "3"


# -- rule 5: nonces -------------------------------------------------------------------------


def test_rule05_every_response_has_a_fresh_nonce(cp, connect):
    cp.set_snapshot(web("1"))
    c = connect()
    seen = []
    for url, wanted in ((CLUSTER, []), (ENDPOINT, ["web"]), (LISTENER, []), (ROUTE, ["routes"])):
        r = c.subscribe(url, wanted)
        seen.append(r.nonce)
        c.ack(r, wanted)
    for v in ("2", "3"):
        cp.set_snapshot(web(v, timeout=int(v)))
        r = c.recv()
        seen.append(r.nonce)
        c.ack(r)
    assert all(seen) and len(set(seen)) == len(seen)


def test_rule05_stale_nonce_is_ignored(cp, connect):
    cp.set_snapshot(routes(("a", "x"), ("b", "x"), version="1"))
    c = connect()
    r1 = c.subscribe(ROUTE, ["a"])
    c.ack(r1, ["a"])
    cp.set_snapshot(routes(("a", "y"), ("b", "x"), version="2"))
    r2 = c.recv()
    assert r2.nonce != r1.nonce
    # a request echoing the old nonce is stale: neither its NACK nor its new names count
    c.send(ROUTE, ["a", "b"], "1", r1.nonce, error="late complaint")
    c.expect_nothing()
    connect.sync()
    assert status_table(cp).set_index("type").loc["RDS", "nacked"] is None
    assert ("RDS", "stale", "1") in kinds(cp)
    c.ack(r2, ["a"])
    c.expect_nothing()
    assert status_table(cp).set_index("type").loc["RDS", "acked"] == "2"


# -- rule 6: silence when nothing changed ---------------------------------------------------


def test_rule06_identical_snapshot_sends_nothing(cp, connect):
    cp.set_snapshot(web())
    c = connect()
    for url, wanted in ((CLUSTER, []), (ENDPOINT, ["web"]), (LISTENER, []), (ROUTE, ["routes"])):
        c.ack(c.subscribe(url, wanted), wanted)
    c.expect_nothing()
    cp.set_snapshot(web())  # a new object, the same content
    c.expect_nothing()
    cp.set_snapshot(cp.snapshot())  # the same object again
    c.expect_nothing()
    assert sum(k == "response" for _, k, _ in kinds(cp)) == 4


def test_rule06_an_ack_gets_no_echo(cp, connect):
    cp.set_snapshot(web("1"))
    c = connect()
    r = c.subscribe(CLUSTER)
    c.ack(r)
    c.ack(r)  # a duplicate ACK is stale (its nonce is answered) and changes nothing
    c.expect_nothing()


# -- rule 7: named subscriptions ------------------------------------------------------------


def test_rule07_only_the_named_resources_are_sent(cp, connect):
    cp.set_snapshot(routes(("a", "x"), ("b", "x"), ("c", "x")))
    c = connect()
    r = c.subscribe(ROUTE, ["a", "c"])
    assert sorted(names(r)) == ["a", "c"]


def test_rule07_growing_set_gets_the_new_names_even_unchanged(cp, connect):
    cp.set_snapshot(routes(("a", "x"), ("b", "x"), version="1"))
    c = connect()
    r1 = c.subscribe(ROUTE, ["a"])
    assert names(r1) == ["a"]
    c.send(ROUTE, ["a", "b"], r1.version_info, r1.nonce)  # ACK that also asks for b
    r2 = c.recv()
    assert "b" in names(r2)
    c.ack(r2, ["a", "b"])
    c.expect_nothing()


def test_rule07_resubscribed_name_is_sent_again(cp, connect):
    """A client that dropped a name and asks again has forgotten it: it must come again."""
    cp.set_snapshot(routes(("a", "x"), ("b", "x"), version="1"))
    c = connect()
    r1 = c.subscribe(ROUTE, ["a", "b"])
    assert sorted(names(r1)) == ["a", "b"]
    c.ack(r1, ["a"])  # drops b
    c.expect_nothing()
    connect.sync()
    c.ack(r1, ["a", "b"])  # wants b back: nonce r1 is still the latest
    r2 = c.recv()
    assert "b" in names(r2)


def test_rule07_named_cluster_subscription(cp, connect):
    """gRPC's xDS client names its clusters and listeners."""
    cp.set_snapshot(Snapshot([static("c1"), static("c2")]))
    c = connect()
    assert names(c.subscribe(CLUSTER, ["c2"])) == ["c2"]


# -- rule 8: wildcard -----------------------------------------------------------------------


def test_rule08_empty_first_request_is_wildcard(cp, connect):
    cp.set_snapshot(Snapshot([static("c1"), static("c2")]))
    c = connect()
    assert sorted(names(c.subscribe(CLUSTER))) == ["c1", "c2"]


def test_rule08_star_is_wildcard(cp, connect):
    cp.set_snapshot(Snapshot([static("c1"), static("c2")]))
    c = connect()
    r = c.subscribe(CLUSTER, ["*"])
    assert sorted(names(r)) == ["c1", "c2"]
    c.ack(r, ["*"])
    cp.set_snapshot(Snapshot([static("c1"), static("c2"), static("c3")]))
    assert sorted(names(c.recv())) == ["c1", "c2", "c3"]


def test_rule08_star_with_names_is_still_wildcard(cp, connect):
    cp.set_snapshot(Snapshot([static("c1"), static("c2")]))
    c = connect()
    assert sorted(names(c.subscribe(CLUSTER, ["*", "c1"]))) == ["c1", "c2"]


def test_rule08_wildcard_ack_with_empty_names_stays_wildcard(cp, connect):
    cp.set_snapshot(Snapshot([static("c1")]))
    c = connect()
    c.ack(c.subscribe(CLUSTER))
    cp.set_snapshot(Snapshot([static("c1"), static("c2")]))
    assert sorted(names(c.recv())) == ["c1", "c2"]


def test_rule08_explicit_names_then_empty_list_unsubscribes(cp, connect):
    cp.set_snapshot(Snapshot([static("c1"), static("c2")], version="1"))
    c = connect()
    r = c.subscribe(CLUSTER, ["c1"])
    assert names(r) == ["c1"]
    c.ack(r, [])  # unsubscribe from everything
    c.expect_nothing()
    connect.sync()
    cp.set_snapshot(Snapshot([static("c1", 2), static("c2", 2)], version="2"))
    c.expect_nothing()


def test_rule08_empty_list_unsubscribes_routes(cp, connect):
    cp.set_snapshot(routes(("a", "x"), version="1"))
    c = connect()
    r = c.subscribe(ROUTE, ["a"])
    c.ack(r, [])
    connect.sync()
    cp.set_snapshot(routes(("a", "y"), version="2"))
    c.expect_nothing()


# -- rule 9: full state for LDS/CDS ---------------------------------------------------------


def test_rule09_removed_cluster_is_absent_from_the_next_response(cp, connect):
    cp.set_snapshot(Snapshot([static("c1"), static("c2")]))
    c = connect()
    c.ack(c.subscribe(CLUSTER))
    cp.set_snapshot(Snapshot([static("c1")]))
    r = c.recv()
    assert names(r) == ["c1"]


def test_rule09_removing_every_listener_sends_an_empty_response(cp, connect):
    cp.set_snapshot(Snapshot([http_listener("l0", 10000, "r")], check=False))
    c = connect()
    c.ack(c.subscribe(LISTENER))
    cp.set_snapshot(Snapshot([]))
    r = c.recv()
    assert r.type_url == LISTENER and names(r) == []


def test_rule09_no_duplicates_even_when_names_repeat(cp, connect):
    cp.set_snapshot(Snapshot([static("c1"), static("c2")]))
    c = connect()
    r = c.subscribe(CLUSTER, ["c1", "c1", "c2", "c1"])
    assert sorted(names(r)) == ["c1", "c2"]


def test_rule09_rds_removal_goes_through_the_listener(cp, connect):
    """In SotW a route configuration is deleted by its listener: no RDS response for it."""
    cp.set_snapshot(routes(("a", "x"), ("b", "x"), version="1"))
    c = connect()
    c.ack(c.subscribe(ROUTE, ["a", "b"]), ["a", "b"])
    cp.set_snapshot(routes(("a", "x"), version="1"))
    c.expect_nothing()


# -- rule 10: requested but missing ---------------------------------------------------------


def test_rule10_missing_names_are_sent_when_they_appear(cp, connect):
    cp.set_snapshot(routes(("a", "x")))
    c = connect()
    r = c.subscribe(ROUTE, ["a", "late"])
    assert names(r) == ["a"]
    c.ack(r, ["a", "late"])
    c.expect_nothing()
    connect.sync()
    cp.set_snapshot(routes(("a", "x"), ("late", "x")))
    assert "late" in names(c.recv())


def test_rule10_no_snapshot_yet_then_one_arrives(cp, connect):
    c = connect()
    c.send(CLUSTER)
    c.expect_nothing()
    cp.set_snapshot(Snapshot([static("c1")]))
    assert names(c.recv()) == ["c1"]


# -- rules 11 and 12: make before break -----------------------------------------------------


def _subscribe_all(c: SotwClient, eds=("web",), rds=("routes",)) -> None:
    for url, wanted in ((CLUSTER, []), (ENDPOINT, list(eds)), (LISTENER, []), (ROUTE, list(rds))):
        c.ack(c.subscribe(url, wanted), wanted)


def test_rule12_push_order_is_cds_eds_lds_rds(cp, connect):
    cp.set_snapshot(web("1"))
    c = connect()
    _subscribe_all(c)
    c.expect_nothing()
    cp.set_snapshot(Snapshot([
        cluster("web", type="EDS", connect_timeout=3), load_assignment("web", [("127.0.0.1", 8082)]),
        route_configuration("routes", "web", prefix="/v2"), http_listener("l0", 10002, "routes"),
    ], version="2"))
    got = [c.recv() for _ in range(4)]
    assert [r.type_url for r in got] == [CLUSTER, ENDPOINT, LISTENER, ROUTE]
    assert {r.version_info for r in got} == {"2"}


def test_one_outstanding_response_per_type_and_pushes_coalesce(cp, connect):
    cp.set_snapshot(web("1"))
    c = connect()
    c.ack(c.subscribe(CLUSTER))
    cp.set_snapshot(web("2", timeout=2))
    r2 = c.recv()
    cp.set_snapshot(web("3", timeout=3))
    cp.set_snapshot(web("4", timeout=4))
    c.expect_nothing()  # version 2 is not answered yet
    c.ack(r2)
    r4 = c.recv()
    assert r4.version_info == "4", "3 was superseded before it could be sent"
    c.ack(r4)
    c.expect_nothing()


def test_rule11_new_eds_cluster_gets_its_load_assignment_when_asked(cp, connect):
    cp.set_snapshot(web())
    c = connect()
    _subscribe_all(c)
    cp.set_snapshot(Snapshot([  # hashed versions: only CDS and EDS change
        cluster("web", type="EDS"), load_assignment("web", [("127.0.0.1", 8080)]),
        cluster("api", type="EDS"), load_assignment("api", [("127.0.0.1", 9090)]),
        route_configuration("routes", "web"), http_listener("l0", 10000, "routes"),
    ]))
    cds = c.recv()
    assert sorted(names(cds)) == ["api", "web"]
    c.ack(cds)
    c.expect_nothing()  # EDS only for the names asked for
    # the cluster warms until its endpoints arrive: Envoy asks for them
    c.send(ENDPOINT, ["web", "api"], c.received[1].version_info, c.received[1].nonce)
    eds = c.recv()
    assert eds.type_url == ENDPOINT and "api" in names(eds)
    c.ack(eds, ["web", "api"])
    c.expect_nothing()


def test_rule12_clusters_removed_only_after_routes_moved(cp, connect):
    cp.set_snapshot(Snapshot([
        cluster("old", type="EDS"), load_assignment("old", [("127.0.0.1", 8080)]),
        route_configuration("routes", "old"), http_listener("l0", 10000, "routes"),
    ], version={CLUSTER: "1", ENDPOINT: "1", ROUTE: "1"}))
    c = connect()
    _subscribe_all(c, eds=["old"])
    cp.set_snapshot(Snapshot([  # the listener does not change
        cluster("new", type="EDS"), load_assignment("new", [("127.0.0.1", 8081)]),
        route_configuration("routes", "new"), http_listener("l0", 10000, "routes"),
    ], version={CLUSTER: "2", ENDPOINT: "2", ROUTE: "2"}))
    interim = c.recv()
    assert interim.type_url == CLUSTER
    assert interim.version_info == "2+retained"
    assert sorted(names(interim)) == ["new", "old"], "the old cluster stays while routes use it"
    c.expect_nothing()  # the routes wait for the new cluster: sent now, they would point at nothing
    # As Envoy does: the new cluster warms (asks for its endpoints), then CDS and EDS are ACKed.
    c.send(ENDPOINT, ["old", "new"], "1", c.received[1].nonce)
    eds = c.recv()
    assert names(eds) == ["new"]
    c.expect_nothing()  # warm only once ACKed
    c.ack(eds, ["old", "new"])
    c.expect_nothing()
    c.ack(interim)
    rds = c.recv()
    assert rds.type_url == ROUTE and rds.version_info == "2"
    assert resources(rds)["routes"].virtual_hosts[0].routes[0].route.cluster == "new"
    c.expect_nothing()  # routes not ACKed yet: the old cluster must stay
    c.ack(rds, ["routes"])
    final = c.recv()
    assert final.type_url == CLUSTER and final.version_info == "2"
    assert names(final) == ["new"]
    c.ack(final)
    c.expect_nothing()
    sent = [(t, v) for t, k, v in kinds(cp) if k == "response"]
    assert sent[-4:] == [("CDS", "2+retained"), ("EDS", "2"), ("RDS", "2"), ("CDS", "2")]


def test_rule12_routes_to_a_new_cluster_wait_until_it_is_warm(cp, connect):
    """Routes that name a new cluster go out once the client has ACKed it and its endpoints; routes
    to clusters it holds, or to none the snapshot has, are not held back."""
    cp.set_snapshot(web("1"))
    c = connect()
    _subscribe_all(c)
    cp.set_snapshot(Snapshot([
        cluster("web", type="EDS"), load_assignment("web", [("127.0.0.1", 8080)]),
        cluster("api", type="EDS"), load_assignment("api", [("127.0.0.1", 9090)]),
        route_configuration("routes", routes={"/api": "api", "/": "web"}), http_listener("l0", 10000, "routes"),
    ], version="2"))
    cds = c.recv()
    assert cds.type_url == CLUSTER and sorted(names(cds)) == ["api", "web"]
    lds = c.recv()
    assert lds.type_url == LISTENER  # the listener names no cluster: it need not wait
    c.ack(lds)
    c.expect_nothing()
    c.send(ENDPOINT, ["web", "api"], c.received[1].version_info, c.received[1].nonce)
    eds = c.recv()
    assert sorted(names(eds)) == ["api", "web"]
    c.ack(cds)  # a client that ACKs before it has the endpoints: still not warm
    c.expect_nothing()
    c.ack(eds, ["web", "api"])
    rds = c.recv()
    assert rds.type_url == ROUTE and rds.version_info == "2"
    c.ack(rds, ["routes"])
    # A route to a cluster the snapshot does not have (one of Envoy's bootstrap) is not held back.
    cp.set_snapshot(Snapshot([
        cluster("web", type="EDS"), load_assignment("web", [("127.0.0.1", 8080)]),
        cluster("api", type="EDS"), load_assignment("api", [("127.0.0.1", 9090)]),
        route_configuration("routes", routes={"/api": "api", "/": "static_in_bootstrap"}),
        http_listener("l0", 10000, "routes"),
    ], version={CLUSTER: "2", ENDPOINT: "2", ROUTE: "3", LISTENER: "2"}, check=False))
    rds = c.recv()
    assert rds.type_url == ROUTE and rds.version_info == "3"


def test_rule12_staged_steps_are_served_without_make_before_break(cp, connect):
    """A staged step is sent as it is: its routes do not wait for the new cluster, its removals
    are not held back (what lesson 9 shows on the real Envoy)."""
    before = Snapshot([
        cluster("old", type="EDS"), load_assignment("old", [("127.0.0.1", 8080)]),
        route_configuration("routes", "old"), http_listener("l0", 10000, "routes"),
    ], version="1")
    after = Snapshot([
        cluster("new", type="EDS"), load_assignment("new", [("127.0.0.1", 8081)]),
        route_configuration("routes", "new"), http_listener("l0", 10000, "routes"),
    ], version="2")
    cp.set_snapshot(before)
    c = connect()
    _subscribe_all(c, eds=["old"])
    clusters, routes, endpoints = staged(before, after, ["CDS", "RDS", "EDS"])
    assert not clusters.make_before_break and before.make_before_break
    cp.set_snapshot(clusters)
    cds = c.recv()
    assert (cds.type_url, cds.version_info, names(cds)) == (CLUSTER, "2", ["new"])  # old removed at once
    cp.set_snapshot(routes)
    rds = c.recv()  # not held back although "new" is not ACKed (warm) yet
    assert rds.type_url == ROUTE and resources(rds)["routes"].virtual_hosts[0].routes[0].route.cluster == "new"


def test_rule12_cluster_only_client_removes_at_once(cp, connect):
    cp.set_snapshot(Snapshot([static("a"), static("b")], version="1"))
    c = connect()
    c.ack(c.subscribe(CLUSTER))
    cp.set_snapshot(Snapshot([static("a")], version="2"))
    r = c.recv()
    assert (r.version_info, names(r)) == ("2", ["a"])


# -- several nodes, per-type services --------------------------------------------------------


def test_two_nodes_with_their_own_snapshots(cp, connect):
    cp.set_snapshot(Snapshot([static("for-a")], version="a1"), "node-a")
    cp.set_snapshot(Snapshot([static("for-b")], version="b1"), "node-b")
    a, b = connect("node-a"), connect("node-b")
    ra, rb = a.subscribe(CLUSTER), b.subscribe(CLUSTER)
    assert (names(ra), names(rb)) == (["for-a"], ["for-b"])
    a.ack(ra)
    b.ack(rb)
    cp.set_snapshot(Snapshot([static("for-a2")], version="a2"), "node-a")
    assert names(a.recv()) == ["for-a2"]
    b.expect_nothing()


def test_default_snapshot_does_not_reach_nodes_with_their_own(cp, connect):
    cp.set_snapshot(Snapshot([static("own")], version="o"), "node-a")
    cp.set_snapshot(Snapshot([static("default")], version="d1"))
    a, other = connect("node-a"), connect("node-x")
    a.ack(a.subscribe(CLUSTER))
    assert names(other.subscribe(CLUSTER)) == ["default"]
    other.ack(other.received[-1])
    cp.set_snapshot(Snapshot([static("default2")], version="d2"))
    assert names(other.recv()) == ["default2"]
    a.expect_nothing()


@pytest.mark.parametrize("url", [CLUSTER, LISTENER])
def test_per_type_service(cp, connect, url):
    cp.set_snapshot(web("1"))
    c = connect(service=url)
    r = c.subscribe(url)
    assert r.type_url == url and r.version_info == "1"
    c.ack(r)
    c.expect_nothing()


def test_per_type_service_fills_in_a_missing_type_url(cp, connect):
    cp.set_snapshot(web("1"))
    c = connect(service=ROUTE)
    r = c.subscribe("", ["routes"])
    assert r.type_url == ROUTE and names(r) == ["routes"]


def test_per_type_service_refuses_another_type(cp, connect):
    cp.set_snapshot(web("1"))
    c = connect(service=CLUSTER)
    c.send(LISTENER)
    ended = c.ended()
    assert ended.code == grpc.StatusCode.INVALID_ARGUMENT and "Cluster" in ended.details


def test_ads_request_without_type_url_is_refused(cp, connect):
    c = connect()
    c.send("")
    assert c.ended().code == grpc.StatusCode.INVALID_ARGUMENT


def test_responses_name_the_control_plane(cp, connect):
    cp.set_snapshot(web("1"))
    c = connect()
    assert c.subscribe(CLUSTER).control_plane.identifier == "labxds"


def test_describe_helper_is_readable(cp, connect):
    cp.set_snapshot(web("1"))
    c = connect()
    assert describe(c.subscribe(CLUSTER)) == "CDS v1 nonce=1 ['web']"


# -- rule 14: TTL and heartbeats --------------------------------------------------------------


BEAT = 0.2  # heartbeat interval of the rule 14 tests, seconds


def beating(**options):
    """A ControlPlane with fast heartbeats (and ``options``) for one test."""
    return pytest.mark.parametrize("cp", [{"heartbeat_interval": BEAT, **options}], indirect=True,
                                   ids=["beat"])


def heartbeat_times(c: SotwClient, count: int, ack: bool = True) -> list[tuple[float, object]]:
    """Receive ``count`` responses (ACKing each): (arrival time, response)."""
    out = []
    for _ in range(count):
        r = c.recv(5 * BEAT + 2)
        out.append((time.monotonic(), r))
        if ack:
            c.ack(r)
    return out


@beating()
def test_rule14_ttl_only_for_clients_that_support_it(cp, connect):
    snap = cp.set_snapshot(Snapshot([static("c1")], version="1", ttl=1.0))
    plain = connect("node-old")
    r = plain.subscribe(CLUSTER)
    assert r.resources[0].type_url == CLUSTER, "no TTL wrapper for a client that did not ask"
    assert r.resources[0].value == cluster_bytes(snap, "c1")
    plain.ack(r)
    plain.expect_nothing(4 * BEAT)  # and no heartbeats

    ttl = connect("node-ttl", client_features=[TTL_FEATURE])
    r = ttl.subscribe(CLUSTER)
    assert r.version_info == "1"
    assert [a.type_url for a in r.resources] == [RESOURCE]
    wrapped = wrappers(r)["c1"]
    assert wrapped.ttl.ToNanoseconds() == 1_000_000_000
    assert wrapped.resource.type_url == CLUSTER and wrapped.resource.value == cluster_bytes(snap, "c1")
    assert resources(r)["c1"].name == "c1"
    ttl.ack(r)
    beat = ttl.recv(2)  # before the TTL runs out: the resource again, at the same version
    assert beat.version_info == "1" and names(beat) == ["c1"] and ttls(beat) == {"c1": 1.0}
    assert beat.nonce != r.nonce


def cluster_bytes(snap: Snapshot, name: str) -> bytes:
    return snap.entries(CLUSTER)[name].message.SerializeToString(deterministic=True)


@beating(sotw_heartbeat="bare")
def test_rule14_bare_heartbeats_at_the_interval_without_body(cp, connect):
    cp.set_snapshot(Snapshot([static("c1"), static("keep")], version="1", ttl={"c1": 30}))
    c = connect(client_features=[TTL_FEATURE])
    r = c.subscribe(CLUSTER)
    assert ttls(r) == {"c1": 30.0} and sorted(names(r)) == ["c1", "keep"]
    assert resources(r)["c1"].name == "c1" and resources(r)["keep"].name == "keep"
    sent = time.monotonic()
    c.ack(r)
    beats = heartbeat_times(c, 3)
    times = [sent] + [t for t, _ in beats]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert all(0.7 * BEAT <= g <= BEAT + 0.5 for g in gaps), gaps
    for _, beat in beats:
        assert beat.version_info == "1"
        # c1 without its body, with its TTL; "keep" has none, and comes whole: a SotW CDS
        # response without it would delete it
        assert resources(beat) == {"c1": None, "keep": resources(r)["keep"]}, describe(beat)
        w = wrappers(beat)["c1"]
        assert not w.HasField("resource") and w.ttl.seconds == 30 and w.version == wrappers(r)["c1"].version
    connect.sync()  # every ACK taken in
    # not a change: the tracker still says version 1 was sent and ACKed; traced as heartbeats
    status = status_table(cp).set_index("type").loc["CDS"]
    assert (status["sent"], status["acked"], status["nacked"]) == ("1", "1", None)
    kinds_seen = [k for t, k, _ in kinds(cp) if t == "CDS"]
    expected = ["request", "response", "ACK"] + ["heartbeat", "heartbeat ACK"] * 3
    assert kinds_seen[:len(expected)] == expected, kinds_seen  # (a fourth may be on its way)


@beating()
def test_rule14_sotw_heartbeats_resend_the_resources_by_default(cp, connect):
    """Envoy drops bare SotW heartbeats from its update (a bare LDS heartbeat deletes every
    listener): by default a SotW heartbeat is the resources again, bodies included."""
    cp.set_snapshot(Snapshot([static("c1"), static("keep"),
                              route_configuration("r1", "c1"), route_configuration("r2", "c1")],
                             version="1", ttl={"c1": 30, "r1": 30}, check=False))
    c = connect(client_features=[TTL_FEATURE])
    r = c.subscribe(CLUSTER)
    c.ack(r)
    rds = c.subscribe(ROUTE, ["r1", "r2"])
    c.ack(rds, ["r1", "r2"])
    got: dict[str, list] = {CLUSTER: [], ROUTE: []}
    while min(len(v) for v in got.values()) < 2:
        beat = c.recv(5 * BEAT + 2)
        got[beat.type_url].append(beat)
        c.ack(beat, ["r1", "r2"] if beat.type_url == ROUTE else ())
    for beat in got[CLUSTER]:
        assert beat.version_info == "1"
        assert resources(beat) == resources(r) and ttls(beat) == {"c1": 30.0}
    for beat in got[ROUTE]:
        # RDS is not full state: only the resources with a TTL
        assert beat.version_info == "1" and names(beat) == ["r1"] and ttls(beat) == {"r1": 30.0}
        assert resources(beat)["r1"] == resources(rds)["r1"]


@beating()
def test_rule14_no_heartbeat_while_a_response_is_outstanding(cp, connect):
    cp.set_snapshot(Snapshot([static("c1")], version="1", ttl=30))
    c = connect(client_features=[TTL_FEATURE])
    r = c.subscribe(CLUSTER)
    c.expect_nothing(4 * BEAT)  # the response is not ACKed: no heartbeat on top of it
    c.ack(r)
    t0 = time.monotonic()
    beat = c.recv(2)  # the heartbeat it owes comes as soon as the ACK arrives
    assert time.monotonic() - t0 < BEAT and beat.version_info == "1"
    # A heartbeat not answered yet holds back a new version (one unanswered response per type)
    cp.set_snapshot(Snapshot([static("c1"), static("c2")], version="2", ttl=30))
    c.expect_nothing(2 * BEAT)
    c.ack(beat)
    r2 = c.recv(2)
    assert r2.version_info == "2" and sorted(names(r2)) == ["c1", "c2"], describe(r2)
    # and no heartbeat on top of it until it is ACKed
    c.expect_nothing(3 * BEAT)
    c.ack(r2)
    beat2 = c.recv(2)
    assert beat2.version_info == "2" and sorted(names(beat2)) == ["c1", "c2"]


@beating()
def test_rule14_a_refused_heartbeat_is_not_a_nack_of_the_version(cp, connect):
    cp.set_snapshot(Snapshot([static("c1")], version="1", ttl=30))
    c = connect(client_features=[TTL_FEATURE])
    r = c.subscribe(CLUSTER)
    c.ack(r)
    beat = c.recv(2)
    c.nack(beat, "cannot take a heartbeat", last_good="1")
    connect.sync()
    status = status_table(cp).set_index("type").loc["CDS"]
    assert (status["acked"], status["nacked"]) == ("1", None)
    assert [k for _, k, _ in kinds(cp)][-1] == "heartbeat NACK"
    # the next version is sent as usual
    cp.set_snapshot(Snapshot([static("c1"), static("c2")], version="2", ttl=30))
    assert c.recv(2).version_info == "2"


@pytest.mark.parametrize("cp", [{}], indirect=True, ids=["default"])
def test_rule14_heartbeats_every_half_ttl_by_default(cp, connect):
    cp.set_snapshot(Snapshot([static("c1")], version="1", ttl={"c1": 0.6, CLUSTER: 5}))
    c = connect(client_features=[TTL_FEATURE])
    r = c.subscribe(CLUSTER)
    sent = time.monotonic()
    c.ack(r)
    beats = heartbeat_times(c, 2)
    times = [sent] + [t for t, _ in beats]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert all(0.2 <= g <= 0.55 for g in gaps), gaps  # 0.3 s: half the shortest TTL


@beating()
def test_rule14_no_heartbeats_without_ttl(cp, connect):
    cp.set_snapshot(Snapshot([static("c1")], version="1"))
    c = connect(client_features=[TTL_FEATURE])
    r = c.subscribe(CLUSTER)
    assert r.resources[0].type_url == CLUSTER  # no TTL, no wrapper
    c.ack(r)
    c.expect_nothing(4 * BEAT)
    assert not beat_timers(cp)
    assert trace_table(cp)["kind"].tolist().count("heartbeat") == 0


@beating()
def test_rule14_heartbeats_stop_when_the_stream_ends(cp, connect):
    cp.set_snapshot(Snapshot([static("c1")], version="1", ttl=30))
    c = connect(client_features=[TTL_FEATURE])
    c.ack(c.subscribe(CLUSTER))
    c.ack(c.recv(2))
    assert eventually(lambda: len(beat_timers(cp)) == 1)
    c.close()
    assert eventually(lambda: cp.stream_count == 0)
    assert eventually(lambda: not beat_timers(cp)), "the stream's timer is cancelled with it"
    before = len(kinds(cp))
    time.sleep(3 * BEAT)
    assert len(kinds(cp)) == before


@beating()
def test_rule14_a_new_ttl_reaches_ttl_clients_only(cp, connect):
    """A TTL does not change the versions computed from content: a client without the feature
    is not sent the same resources again; a client with it gets the new TTL."""
    first = Snapshot([static("c1")], ttl=30)
    second = Snapshot([static("c1")], ttl=60)
    assert first.version(CLUSTER) == second.version(CLUSTER) == Snapshot([static("c1")]).version(CLUSTER)
    cp.set_snapshot(first)
    plain, ttl = connect("node-old"), connect("node-ttl", client_features=[TTL_FEATURE])
    for c in (plain, ttl):
        c.ack(c.subscribe(CLUSTER))
    cp.set_snapshot(second)
    plain.expect_nothing(3 * BEAT)
    while True:  # heartbeats of the first TTL may come before the update
        r = ttl.recv(2)
        ttl.ack(r)
        if ttls(r) == {"c1": 60.0}:
            break
        assert ttls(r) == {"c1": 30.0}
    assert r.version_info == second.version(CLUSTER)
    assert trace_table(cp, "node-ttl")["kind"].tolist().count("response") == 2


def test_rule05_nonces_live_within_one_stream(cp, connect):
    """A nonce from an earlier stream does not make a new stream's first request stale."""
    cp.set_snapshot(Snapshot([static("c1")], version="1"))
    c = connect()
    r = c.subscribe(CLUSTER)
    c.ack(r)
    c.close()
    cp.set_snapshot(Snapshot([static("c1"), static("c2")], version="2"))
    again = connect()
    again.send(CLUSTER, version="1", nonce=r.nonce)  # a client that kept its old nonce
    r2 = again.recv()
    assert (r2.version_info, sorted(names(r2))) == ("2", ["c1", "c2"])


def test_reconnect_running_the_current_version_gets_nothing_again(cp, connect):
    cp.set_snapshot(Snapshot([static("c1")], version="1"))
    c = connect()
    c.ack(c.subscribe(CLUSTER))
    c.close()
    again = connect()
    again.send(CLUSTER, version="1")  # Envoy reconnecting says which version it runs
    again.expect_nothing()
    cp.set_snapshot(Snapshot([static("c1"), static("c2")], version="2"))
    assert again.recv().version_info == "2"
    stale = connect("node-b")
    stale.send(CLUSTER, version="0")  # an older version: the current one is sent
    assert stale.recv().version_info == "2"


@pytest.mark.parametrize("cp", [{"trust_reconnect_versions": False}], indirect=True)
def test_rule16_a_version_from_another_control_plane_is_not_trusted(cp, connect):
    """An Envoy that outlives its control plane (docker compose: one proxy, a control plane per
    notebook kernel) reconnects saying version "1"; this server never sent it, and its own "1"
    may be other content: it is sent, and from then on the label is this server's."""
    cp.set_snapshot(Snapshot([static("c1"), static("c2")], version="1"))
    c = connect()
    c.send(CLUSTER, version="1")  # "1" from a control plane before this one
    r = c.recv()
    assert (r.version_info, sorted(names(r))) == ("1", ["c1", "c2"])
    c.ack(r)
    c.close()
    again = connect()
    again.send(CLUSTER, version="1")  # now it is this server's "1": nothing to send
    again.expect_nothing()


def test_rule16_by_default_a_reconnecting_version_is_trusted(cp, connect):
    """The default (a control plane restarted on the same snapshot resends nothing): the label
    is taken at its word."""
    cp.set_snapshot(Snapshot([static("c1")], version="1"))
    c = connect()
    c.send(CLUSTER, version="1")
    c.expect_nothing()


def test_rule15_after_a_nack_the_previous_version_is_sent_again(cp, connect):
    """A NACKed response may be partly applied (Envoy's LDS keeps the valid listeners), so going
    back to the version the client held before is a change to send, not a no-op."""
    good = Snapshot([static("c1")], version="1")
    cp.set_snapshot(good)
    c = connect()
    c.ack(c.subscribe(CLUSTER))
    cp.set_snapshot(Snapshot([static("c1"), static("c2")], version="2"))
    c.nack(c.recv(), "c2 refused", last_good="1")
    c.expect_nothing()
    connect.sync()
    cp.set_snapshot(good)
    r = c.recv()
    assert (r.version_info, names(r)) == ("1", ["c1"])


def test_rule14_envoy_140_is_warned_of_rds_ttls_over_sotw(cp, connect, caplog):
    # Envoy 1.40 segfaults when a SotW RDS/EDS TTL runs out (docs/xds-rules.md, rule 14).
    caplog.set_level(logging.WARNING, logger="labxds")
    cp.set_snapshot(Snapshot([route_configuration("r", "c")], version="1", ttl={ROUTE: 30}, check=False))
    envoy = connect("node-envoy", client_features=[TTL_FEATURE])
    envoy.node.user_agent_name = "envoy"
    envoy.node.user_agent_build_version.version.major_number = 1
    envoy.node.user_agent_build_version.version.minor_number = 40
    envoy.ack(envoy.subscribe(ROUTE, ["r"]))
    warnings = [r.getMessage() for r in caplog.records if "crashes" in r.getMessage()]
    assert len(warnings) == 1 and "node-envoy (Envoy 1.40.0)" in warnings[0] and "RDS" in warnings[0]

    caplog.clear()
    other = connect("node-other", client_features=[TTL_FEATURE])  # not Envoy: the protocol's TTLs
    other.ack(other.subscribe(ROUTE, ["r"]))
    assert not [r for r in caplog.records if "crashes" in r.getMessage()]
