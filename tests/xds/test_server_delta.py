"""The incremental (Delta) protocol, rule 13 and the rules it shares with SotW, with the tests'
own xDS client against a real ControlPlane on a kernel-chosen port."""

from __future__ import annotations

import itertools
import time

import grpc
import pytest
from xds_client import (
    CLUSTER,
    ENDPOINT,
    LISTENER,
    ROUTE,
    TTL_FEATURE,
    DeltaClient,
    beat_timers,
    client_factory,
    describe,
    eventually,
    names,
    resources,
    ttls,
    versions,
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
    yield from client_factory(cp, DeltaClient)


def static(name: str, port: int = 1):
    return cluster(name, [("127.0.0.1", port)], type="STATIC")


def clusters(*spec: str | tuple[str, int], version=None) -> Snapshot:
    return Snapshot([static(s) if isinstance(s, str) else static(*s) for s in spec], version=version)


def routes(*pairs: tuple[str, str], version=None) -> Snapshot:
    return Snapshot([route_configuration(n, c) for n, c in pairs], version=version, check=False)


def kinds(cp: ControlPlane, node: str = "node-a") -> list[tuple[str, str]]:
    t = trace_table(cp, node)
    return list(zip(t["type"], t["kind"]))


def test_rule13_wildcard_and_system_version(cp, connect):
    cp.set_snapshot(clusters("a", "b", version="7"))
    c = connect()
    c.send(CLUSTER)  # a first request naming nothing: wildcard
    r = c.recv()
    assert sorted(names(r)) == ["a", "b"]
    assert r.system_version_info == "7"
    assert all(v for v in versions(r).values()), "every Resource carries its own version"
    assert r.nonce
    c.ack(r)
    c.expect_nothing()


def test_rule13_star_subscription(cp, connect):
    cp.set_snapshot(clusters("a", "b"))
    c = connect()
    c.send(CLUSTER, ["*"])
    assert sorted(names(c.recv())) == ["a", "b"]


def test_rule13_only_changes_are_sent(cp, connect):
    cp.set_snapshot(clusters("a", "b"))
    c = connect()
    c.send(CLUSTER)
    first = c.recv()
    c.ack(first)
    cp.set_snapshot(clusters("a", ("b", 2), "c"))
    r = c.recv()
    assert sorted(names(r)) == ["b", "c"], "a did not change"
    assert versions(r)["b"] != versions(first)["b"]
    assert list(r.removed_resources) == []


def test_rule13_removed_resources(cp, connect):
    cp.set_snapshot(clusters("a", "b"))
    c = connect()
    c.send(CLUSTER)
    c.ack(c.recv())
    cp.set_snapshot(clusters("a"))
    r = c.recv()
    assert names(r) == [] and list(r.removed_resources) == ["b"]
    c.ack(r)
    c.expect_nothing()


def test_rule13_subscribe_and_unsubscribe(cp, connect):
    cp.set_snapshot(routes(("a", "x"), ("b", "x"), version="1"))
    c = connect()
    c.send(ROUTE, ["a"])
    r1 = c.recv()
    assert names(r1) == ["a"]
    c.ack(r1)
    c.send(ROUTE, ["b"], nonce=r1.nonce)
    r2 = c.recv()
    assert names(r2) == ["b"], "only the newly subscribed one"
    c.ack(r2)
    c.send(ROUTE, unsubscribe=["a"], nonce=r2.nonce)
    c.expect_nothing()  # unsubscribing needs no answer
    connect.sync()
    cp.set_snapshot(routes(("a", "y"), ("b", "x"), version="2"))
    c.expect_nothing()  # a changed, but nobody asks for it any more
    cp.set_snapshot(routes(("a", "y"), ("b", "y"), version="3"))
    assert names(c.recv()) == ["b"]


def test_rule13_unsubscribe_star_ends_wildcard(cp, connect):
    cp.set_snapshot(clusters("a"))
    c = connect()
    c.send(CLUSTER)
    r = c.recv()
    c.ack(r)
    c.send(CLUSTER, unsubscribe=["*"], nonce=r.nonce)
    connect.sync()
    cp.set_snapshot(clusters("a", "b"))
    c.expect_nothing()


def test_rule13_unsubscribing_never_subscribed_names_is_ignored(cp, connect):
    cp.set_snapshot(routes(("a", "x"), version="1"))
    c = connect()
    c.send(ROUTE, ["a"])
    r = c.recv()
    c.ack(r)
    c.send(ROUTE, unsubscribe=["never"], nonce=r.nonce)
    c.expect_nothing()
    connect.sync()
    cp.set_snapshot(routes(("a", "y"), version="2"))
    assert names(c.recv()) == ["a"], "the real subscription is intact"


def test_rule13_resubscribe_resends(cp, connect):
    cp.set_snapshot(routes(("a", "x")))
    c = connect()
    c.send(ROUTE, ["a"])
    r1 = c.recv()
    c.ack(r1)
    c.send(ROUTE, ["a"], nonce=r1.nonce)  # subscribing again means "send it again"
    r2 = c.recv()
    assert names(r2) == ["a"] and versions(r2) == versions(r1)
    c.ack(r2)
    c.send(ROUTE, unsubscribe=["a"], nonce=r2.nonce)
    c.send(ROUTE, ["a"], nonce=r2.nonce)
    assert names(c.recv()) == ["a"]


def test_rule13_subscription_change_honoured_with_stale_nonce(cp, connect):
    cp.set_snapshot(routes(("a", "x"), ("b", "x")))
    c = connect()
    c.send(ROUTE, ["a"])
    r1 = c.recv()
    c.ack(r1)
    c.send(ROUTE, ["b"], nonce="no-such-nonce")
    r2 = c.recv()
    assert names(r2) == ["b"]
    assert ("RDS", "stale") in kinds(cp)


def test_rule13_nack_is_per_resource_and_never_resent(cp, connect):
    cp.set_snapshot(routes(("a", "x"), ("b", "x")))
    c = connect()
    c.send(ROUTE, ["a", "b"])
    c.ack(c.recv())
    cp.set_snapshot(routes(("a", "y"), ("b", "y")))
    bad = c.recv()
    assert sorted(names(bad)) == ["a", "b"]
    c.nack(bad, "route a: unknown cluster y")
    c.expect_nothing()
    connect.sync()
    status = status_table(cp).set_index("type").loc["RDS"]
    assert status["nack_error"] == "route a: unknown cluster y"
    cp.set_snapshot(routes(("a", "z"), ("b", "y")))  # a changes again, b is still the refused one
    r = c.recv()
    assert names(r) == ["a"]
    assert resources(r)["a"].virtual_hosts[0].routes[0].route.cluster == "z"


def test_rule04_every_refused_version_of_a_resource_stays_refused(cp, connect):
    """Found by the protocol's state machine (test_protocol_properties.py): a resource NACKed at
    version y, then at z, then back to y's content, was sent at y again (only the last refused
    version of each resource was remembered)."""
    cp.set_snapshot(routes(("a", "x")))
    c = connect()
    c.send(ROUTE, ["a"])
    c.ack(c.recv())
    cp.set_snapshot(routes(("a", "y")))
    c.nack(c.recv(), "y is bad")
    connect.sync()
    cp.set_snapshot(routes(("a", "z")))
    c.nack(c.recv(), "z is bad")
    connect.sync()
    cp.set_snapshot(routes(("a", "y")))
    c.expect_nothing()
    cp.set_snapshot(routes(("a", "w")))
    assert resources(c.recv())["a"].virtual_hosts[0].routes[0].route.cluster == "w"


def test_rule13_a_resubscribed_resource_that_is_gone_is_removed(cp, connect):
    """Found by the protocol's state machine: a client re-subscribes to a cluster it holds while
    a response removing it is unanswered; the server forgot the client held it, so once the
    snapshot no longer had it, its removal was never sent and the client kept it for good."""
    cp.set_snapshot(clusters("c0", "c1"))
    c = connect()
    c.send(CLUSTER)  # wildcard
    c.ack(c.recv())
    cp.set_snapshot(clusters("c1", "c2"))
    pending = c.recv()
    assert names(pending) == ["c2"] and list(pending.removed_resources) == ["c0"]
    c.send(CLUSTER, subscribe=["c2"])  # re-subscribed before answering
    connect.sync()
    cp.set_snapshot(clusters("c0", "c1"))
    c.ack(pending)  # the client now holds c1 and c2
    r = c.recv()
    assert names(r) == ["c0"] and list(r.removed_resources) == ["c2"]


def test_rule13_nack_of_a_removal_restores_it(cp, connect):
    cp.set_snapshot(clusters("a", "b"))
    c = connect()
    c.send(CLUSTER)
    c.ack(c.recv())
    cp.set_snapshot(clusters("a"))
    r = c.recv()
    assert list(r.removed_resources) == ["b"]
    c.nack(r, "cannot remove b")
    c.expect_nothing()  # the refused removal is not repeated in a loop
    connect.sync()
    cp.set_snapshot(clusters("a"))  # the same version again: still nothing
    c.expect_nothing()
    cp.set_snapshot(clusters(("a", 2)))  # a new version: the removal is tried again with it
    r2 = c.recv()
    assert names(r2) == ["a"] and list(r2.removed_resources) == ["b"]


def test_rule13_reconnect_with_matching_versions_sends_nothing(cp, connect):
    cp.set_snapshot(clusters("a", "b"))
    c = connect()
    c.send(CLUSTER)
    first = c.recv()
    c.ack(first)
    c.close()
    again = connect()
    again.send(CLUSTER, initial_versions=versions(first))
    again.expect_nothing()


def test_rule13_reconnect_sends_only_what_changed(cp, connect):
    cp.set_snapshot(clusters("a", "b", "c"))
    c = connect()
    c.send(CLUSTER)
    first = c.recv()
    c.ack(first)
    c.close()
    cp.set_snapshot(clusters("a", ("b", 2), "d"))  # b changed, c gone, d new
    again = connect()
    again.send(CLUSTER, initial_versions=versions(first))
    r = again.recv()
    assert sorted(names(r)) == ["b", "d"]
    assert list(r.removed_resources) == ["c"]


def test_rule13_reconnect_with_named_subscriptions(cp, connect):
    cp.set_snapshot(routes(("a", "x"), ("b", "x")))
    c = connect()
    c.send(ROUTE, ["a", "b"])
    first = c.recv()
    c.ack(first)
    c.close()
    cp.set_snapshot(routes(("a", "x"), ("b", "y")))
    again = connect()
    again.send(ROUTE, ["a", "b"], initial_versions=versions(first))
    assert names(again.recv()) == ["b"]


def test_rule04_delta_nacked_versions_not_resent_after_reconnect(cp, connect):
    cp.set_snapshot(routes(("a", "x"), ("b", "x")))
    c = connect()
    c.send(ROUTE, ["a", "b"])
    good = c.recv()
    c.ack(good)
    cp.set_snapshot(routes(("a", "y"), ("b", "x")))
    bad = c.recv()
    assert names(bad) == ["a"]
    c.nack(bad, "route a: cluster y unknown")
    c.expect_nothing()
    connect.sync()
    c.close()
    again = connect()  # the same node reconnects, holding the good versions
    again.send(ROUTE, ["a", "b"], initial_versions=versions(good))
    again.expect_nothing(0.5)
    cp.set_snapshot(routes(("a", "z"), ("b", "x")))
    r = again.recv()
    assert names(r) == ["a"] and resources(r)["a"].virtual_hosts[0].routes[0].route.cluster == "z"


def test_rule09_delta_routes_are_removed_through_their_listener(cp, connect):
    """Envoy ignores (and logs an error for) a Delta RDS removal: the listener removes it."""
    cp.set_snapshot(routes(("a", "x"), ("b", "x")))
    c = connect()
    c.send(ROUTE, ["a", "b"])
    c.ack(c.recv())
    cp.set_snapshot(routes(("a", "x")))
    c.expect_nothing()
    connect.sync()
    c.send(ROUTE, unsubscribe=["b"], nonce=c.received[-1].nonce)
    c.expect_nothing()


def test_rule13_delta_first_request_without_node_is_refused(cp, connect):
    c = connect()
    c.send(CLUSTER, node=False)
    assert c.ended().code == grpc.StatusCode.INVALID_ARGUMENT


def test_rule12_delta_removes_clusters_after_routes_moved(cp, connect):
    cp.set_snapshot(Snapshot([
        cluster("old", type="EDS"), load_assignment("old", [("127.0.0.1", 8080)]),
        route_configuration("routes", "old"), http_listener("l0", 10000, "routes"),
    ]))
    c = connect()
    for url, sub in ((CLUSTER, []), (ENDPOINT, ["old"]), (LISTENER, []), (ROUTE, ["routes"])):
        c.send(url, sub)
        c.ack(c.recv())
    cp.set_snapshot(Snapshot([
        cluster("new", type="EDS"), load_assignment("new", [("127.0.0.1", 8081)]),
        route_configuration("routes", "new"), http_listener("l0", 10000, "routes"),
    ]))
    cds = c.recv()
    assert cds.type_url == CLUSTER and names(cds) == ["new"]
    assert list(cds.removed_resources) == [], "old is still routed to"
    c.expect_nothing()  # the routes wait for the new cluster: sent now, they would point at nothing
    c.send(ENDPOINT, ["new"], nonce=c.received[1].nonce)  # the new cluster warms
    eds = c.recv()
    assert names(eds) == ["new"]
    assert list(eds.removed_resources) == [], "old's endpoints stay while routes use old"
    c.ack(eds)
    c.expect_nothing()  # as Envoy: CDS is ACKed once the cluster is warm
    c.ack(cds)
    rds = c.recv()
    assert rds.type_url == ROUTE and names(rds) == ["routes"]
    c.expect_nothing()
    c.ack(rds)
    final = c.recv()
    assert final.type_url == CLUSTER and list(final.removed_resources) == ["old"]
    assert names(final) == []
    c.ack(final)
    # old's endpoints go with their cluster: the client unsubscribes, no removal is sent (rule 9)
    c.expect_nothing()


def test_rule12_delta_push_order(cp, connect):
    cp.set_snapshot(Snapshot([
        cluster("web", type="EDS"), load_assignment("web", [("127.0.0.1", 8080)]),
        route_configuration("routes", "web"), http_listener("l0", 10000, "routes"),
    ], version="1"))
    c = connect()
    for url, sub in ((CLUSTER, []), (ENDPOINT, ["web"]), (LISTENER, []), (ROUTE, ["routes"])):
        c.send(url, sub)
        c.ack(c.recv())
    cp.set_snapshot(Snapshot([
        cluster("web", type="EDS", connect_timeout=2), load_assignment("web", [("127.0.0.1", 8081)]),
        route_configuration("routes", "web", prefix="/v2"), http_listener("l0", 10001, "routes"),
    ], version="2"))
    assert [c.recv().type_url for _ in range(4)] == [CLUSTER, ENDPOINT, LISTENER, ROUTE]


def test_rule12_delta_routes_wait_for_a_new_cluster_but_not_after_a_reconnect(cp, connect):
    web = [cluster("web", type="EDS"), load_assignment("web", [("127.0.0.1", 8080)]), http_listener("l0", 10000, "routes")]
    cp.set_snapshot(Snapshot([*web, route_configuration("routes", "web")]))
    c = connect()
    held = {}
    for url, sub in ((CLUSTER, []), (ENDPOINT, ["web"]), (LISTENER, []), (ROUTE, ["routes"])):
        c.send(url, sub)
        r = c.recv()
        held[url] = versions(r)
        c.ack(r)
    api = [cluster("api", type="EDS"), load_assignment("api", [("127.0.0.1", 9090)])]
    cp.set_snapshot(Snapshot([*web, *api, route_configuration("routes", routes={"/api": "api", "/": "web"})]))
    cds = c.recv()
    assert cds.type_url == CLUSTER and names(cds) == ["api"]
    c.expect_nothing()  # the routes name api, which the client does not have yet
    c.send(ENDPOINT, ["api"], nonce=c.received[1].nonce)
    eds = c.recv()
    c.ack(eds)
    c.ack(cds)
    rds = c.recv()
    assert rds.type_url == ROUTE
    c.ack(rds)
    held[CLUSTER] = {**held[CLUSTER], **versions(cds)}
    held[ENDPOINT] = {**held[ENDPOINT], **versions(eds)}
    c.close()
    # A reconnecting client holds its clusters and endpoints: a route change is not held back.
    cp.set_snapshot(Snapshot([*web, *api, route_configuration("routes", routes={"/": "api"})]))
    again = connect()
    for url, sub in ((CLUSTER, []), (ENDPOINT, ["web", "api"])):
        again.send(url, sub, initial_versions=held[url])
    again.send(LISTENER, initial_versions=held[LISTENER])
    again.send(ROUTE, ["routes"], initial_versions=held[ROUTE])
    r = again.recv()
    assert r.type_url == ROUTE and names(r) == ["routes"]


def test_rule12_delta_staged_steps_are_served_without_make_before_break(cp, connect):
    before = Snapshot([
        cluster("old", type="EDS"), load_assignment("old", [("127.0.0.1", 8080)]),
        route_configuration("routes", "old"), http_listener("l0", 10000, "routes"),
    ])
    after = Snapshot([
        cluster("new", type="EDS"), load_assignment("new", [("127.0.0.1", 8081)]),
        route_configuration("routes", "new"), http_listener("l0", 10000, "routes"),
    ])
    cp.set_snapshot(before)
    c = connect()
    for url, sub in ((CLUSTER, []), (ENDPOINT, ["old"]), (LISTENER, []), (ROUTE, ["routes"])):
        c.send(url, sub)
        c.ack(c.recv())
    clusters_step, routes_step, _ = staged(before, after, ["CDS", "RDS", "EDS"])
    cp.set_snapshot(clusters_step)
    cds = c.recv()
    assert names(cds) == ["new"] and list(cds.removed_resources) == ["old"]  # removed at once
    cp.set_snapshot(routes_step)
    rds = c.recv()  # not held back although "new" is not warm
    assert rds.type_url == ROUTE and names(rds) == ["routes"]


def test_two_delta_nodes_are_independent(cp, connect):
    cp.set_snapshot(clusters("for-a"), "node-a")
    cp.set_snapshot(clusters("for-b"), "node-b")
    a, b = connect("node-a"), connect("node-b")
    for cl in (a, b):
        cl.send(CLUSTER)
    ra, rb = a.recv(), b.recv()
    assert (names(ra), names(rb)) == (["for-a"], ["for-b"])
    a.ack(ra)
    b.ack(rb)
    cp.set_snapshot(clusters("for-a", "more"), "node-a")
    assert names(a.recv()) == ["more"]
    b.expect_nothing()


@pytest.mark.parametrize("url", [CLUSTER, ROUTE])
def test_delta_per_type_service(cp, connect, url):
    cp.set_snapshot(Snapshot([static("c"), route_configuration("routes", "c")]))
    c = connect(service=url)
    c.send(url, [] if url == CLUSTER else ["routes"])
    r = c.recv()
    assert r.type_url == url and len(names(r)) == 1
    assert describe(r).startswith("Delta ")


def test_delta_and_sotw_streams_of_one_node(cp, connect):
    from xds_client import SotwClient

    cp.set_snapshot(clusters("a"))
    d = connect()
    d.send(CLUSTER)
    d.ack(d.recv())
    with SotwClient(cp.address, "node-a") as s:
        first = s.subscribe(CLUSTER)
        assert names(first) == ["a"]
        s.ack(first)
        assert cp.node_status("node-a").streams == 2
        cp.set_snapshot(clusters("a", "b"))
        assert names(d.recv()) == ["b"]
        assert sorted(names(s.recv())) == ["a", "b"]


# -- rule 14: TTL and heartbeats --------------------------------------------------------------

BEAT = 0.2  # heartbeat interval of the rule 14 tests, seconds
beating = pytest.mark.parametrize("cp", [{"heartbeat_interval": BEAT}], indirect=True, ids=["beat"])


@beating
def test_rule14_ttl_only_for_clients_that_support_it(cp, connect):
    snap = cp.set_snapshot(Snapshot([static("a"), static("b")], version="1", ttl={"a": 30}))
    plain = connect("node-old")
    plain.send(CLUSTER)
    r = plain.recv()
    assert ttls(r) == {}, "no TTL for a client that did not ask"
    assert versions(r) == {n: e.version for n, e in snap.entries(CLUSTER).items()}
    plain.ack(r)
    plain.expect_nothing(4 * BEAT)  # and no heartbeats

    ttl = connect("node-ttl", client_features=[TTL_FEATURE])
    ttl.send(CLUSTER)
    r = ttl.recv()
    assert ttls(r) == {"a": 30.0}
    assert resources(r)["a"].name == "a" and resources(r)["b"].name == "b"
    # the TTL is part of the version a TTL client holds, so a new TTL is a change for it only
    assert versions(r)["b"] == snap.entries(CLUSTER)["b"].version
    assert versions(r)["a"] != snap.entries(CLUSTER)["a"].version
    ttl.ack(r)
    sent = time.monotonic()
    beats = []
    for _ in range(3):
        beat = ttl.recv(5 * BEAT + 2)
        beats.append((time.monotonic(), beat))
        ttl.ack(beat)
    times = [sent] + [t for t, _ in beats]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert all(0.7 * BEAT <= g <= BEAT + 0.5 for g in gaps), gaps
    for _, beat in beats:
        # the protocol's heartbeat: a Resource without body, at the version the client holds
        w = wrappers(beat)
        assert list(w) == ["a"] and not w["a"].HasField("resource"), describe(beat)
        assert w["a"].version == versions(r)["a"] and w["a"].ttl.seconds == 30
        assert beat.system_version_info == "1" and list(beat.removed_resources) == []
    connect.sync()  # every ACK taken in
    assert [k for t, k in kinds(cp, "node-ttl")][:9] == (
        ["request", "response", "ACK"] + ["heartbeat", "heartbeat ACK"] * 3)
    status = status_table(cp).set_index(["node", "type"]).loc[("node-ttl", "CDS")]
    assert (status["sent"], status["acked"]) == ("1", "1")


@beating
def test_rule14_no_heartbeat_while_a_response_is_outstanding(cp, connect):
    cp.set_snapshot(Snapshot([static("a")], version="1", ttl=30))
    c = connect(client_features=[TTL_FEATURE])
    c.send(CLUSTER)
    r = c.recv()
    c.expect_nothing(4 * BEAT)  # not ACKed: no heartbeat on top of it
    c.ack(r)
    t0 = time.monotonic()
    beat = c.recv(2)  # the heartbeat owed comes once the ACK arrives
    assert time.monotonic() - t0 < BEAT and names(beat) == ["a"] and resources(beat) == {"a": None}
    # an unanswered heartbeat holds back a change (one unanswered response per type)
    cp.set_snapshot(Snapshot([static("a"), static("b")], version="2", ttl=30))
    c.expect_nothing(2 * BEAT)
    c.ack(beat)
    r2 = c.recv(2)
    assert names(r2) == ["b"] and r2.system_version_info == "2", "the heartbeat changed nothing held"
    c.ack(r2)
    beat2 = c.recv(2)
    assert sorted(names(beat2)) == ["a", "b"] and beat2.system_version_info == "2"


@beating
def test_rule14_heartbeats_stop_when_the_stream_ends(cp, connect):
    cp.set_snapshot(Snapshot([static("a")], version="1", ttl=30))
    c = connect(client_features=[TTL_FEATURE])
    c.send(CLUSTER)
    c.ack(c.recv())
    c.ack(c.recv(2))
    assert eventually(lambda: len(beat_timers(cp)) == 1)
    c.close()
    assert eventually(lambda: cp.stream_count == 0)
    assert eventually(lambda: not beat_timers(cp)), "the stream's timer is cancelled with it"
    before = len(kinds(cp))
    time.sleep(3 * BEAT)
    assert len(kinds(cp)) == before


@beating
def test_rule14_reconnect_resumes_heartbeats_without_resending(cp, connect):
    cp.set_snapshot(Snapshot([static("a"), static("b")], version="1", ttl={"a": 30}))
    c = connect(client_features=[TTL_FEATURE])
    c.send(CLUSTER)
    r = c.recv()
    c.ack(r)
    c.close()
    again = connect(client_features=[TTL_FEATURE])
    again.send(CLUSTER, initial_versions=versions(r))
    beat = again.recv(5 * BEAT + 2)  # nothing resent, and the TTL'd resource still beats
    assert resources(beat) == {"a": None} and wrappers(beat)["a"].version == versions(r)["a"]


@beating
def test_rule14_a_new_ttl_reaches_ttl_clients_only(cp, connect):
    cp.set_snapshot(Snapshot([static("a")], version="1", ttl=30))
    plain, ttl = connect("node-old"), connect("node-ttl", client_features=[TTL_FEATURE])
    for c in (plain, ttl):
        c.send(CLUSTER)
        c.ack(c.recv())
    cp.set_snapshot(Snapshot([static("a")], version="1", ttl=60))
    plain.expect_nothing(3 * BEAT)
    while True:  # heartbeats of the first TTL may come before the update
        r = ttl.recv(2)
        ttl.ack(r)
        if ttls(r) == {"a": 60.0}:
            break
    assert resources(r)["a"].name == "a", "a new TTL comes with the resource"
    cp.set_snapshot(Snapshot([static("a")], version="1"))  # the TTL removed: resent without
    while True:
        r = ttl.recv(2)
        ttl.ack(r)
        if r.resources and r.resources[0].HasField("resource"):
            break
    assert ttls(r) == {} and names(r) == ["a"]
    ttl.expect_nothing(3 * BEAT)  # and no more heartbeats


def test_a_forgotten_node_takes_its_refused_versions_along():
    plane = ControlPlane(port=0, keep_disconnected=1).start()
    try:
        clients = client_factory(plane, DeltaClient)
        make = next(clients)
        plane.set_snapshot(routes(("a", "x")))
        c = make("refuser")
        c.send(ROUTE, ["a"])
        c.ack(c.recv())
        plane.set_snapshot(routes(("a", "y")))
        c.nack(c.recv(), "cluster y unknown")
        make.sync()
        assert [k for k in plane._xds.delta_refused if k[0] == "refuser"]
        c.close()
        assert eventually(lambda: plane.tracker.connected() == [])
        other = make("other")  # a second node comes and goes: the first is the longest gone
        other.send(ROUTE, ["a"])
        other.recv()
        other.close()
        assert eventually(lambda: plane.tracker.node("refuser") is None)
        assert [k for k in plane._xds.delta_refused if k[0] == "refuser"] == []
        assert plane.tracker.node("other") is not None
        next(clients, None)
    finally:
        plane.stop()
