"""The xDS protocol's rules as properties, checked by Hypothesis against the real server.

A state machine (``RuleBasedStateMachine``) drives two clients of the tests' own xDS client
(tests/xds_client.py: real gRPC, independent of the server's code) through random sequences of
subscribe, unsubscribe, ACK, NACK, stale nonce, reconnect, snapshot change and per-node change,
over SotW or Delta. After every step it waits until the server has finished the round that step
caused (the tracker's commit, counted per node) and has delivered what it traced as sent, then
checks every response received against a model of what each client holds and should hold:

* only types asked for, a fresh nonce, at most one unanswered response per type;
* only subscribed names (rule 7), removals in Delta only for names the client holds and never
  for RDS/EDS (rules 9, 13);
* never a version the node NACKed (rule 4), on this stream or an earlier one;
* versions never go back: every response carries the node's current snapshot's versions;
* make before break (rule 12): CDS, EDS, LDS, RDS order within a round; a cluster is removed
  only once no route the client runs still uses it;
* nothing when nothing changed (rule 6), and, once all is answered, the client holds exactly
  what its snapshot and subscriptions say (rules 7, 8, 9, 10, 13), refused versions aside.

``make test`` runs a bounded number of examples; ``make fuzz`` (LABXDS_FUZZ=1) thousands.
"""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from xds_client import (
    CLUSTER,
    ENDPOINT,
    LISTENER,
    ROUTE,
    DeltaClient,
    SotwClient,
    describe,
    resources,
)

from labxds import ControlPlane, Snapshot
from labxds.xds import cluster, http_listener, load_assignment, route_configuration
from labxds.xds.resource_types import order_key

FUZZ = bool(os.environ.get("LABXDS_FUZZ"))
EXAMPLES = int(os.environ.get("LABXDS_PROTOCOL_EXAMPLES", "3000" if FUZZ else "150"))
STEPS = 30 if FUZZ else 20
WAIT = 10.0  # seconds a step may take before the server counts as stuck
TYPES = (CLUSTER, ENDPOINT, LISTENER, ROUTE)
FULL_STATE = (CLUSTER, LISTENER)
NAMES = {CLUSTER: ("c0", "c1", "c2", "ce"), ENDPOINT: ("ce", "cx"), LISTENER: ("l0", "l1"), ROUTE: ("r0", "r1")}
RETAINED = "+retained"


# -- snapshots: a small pool that exercises changes, removals and routes moving between clusters --


def _static(name: str, port: int) -> Any:
    return cluster(name, [("127.0.0.1", port)], type="STATIC")


def _pool() -> list[Snapshot]:
    eds = [cluster("ce", type="EDS")]
    raw = [
        [_static("c0", 1), _static("c1", 1), route_configuration("r0", "c0"), http_listener("l0", 10000, "r0")],
        [_static("c0", 2), _static("c1", 1), route_configuration("r0", "c0"), http_listener("l0", 10000, "r0")],
        [_static("c0", 1), _static("c1", 1), route_configuration("r0", "c1"), http_listener("l0", 10000, "r0")],
        [_static("c1", 1), route_configuration("r0", "c1"), http_listener("l0", 10000, "r0")],
        [_static("c1", 1), _static("c2", 1), route_configuration("r0", "c2"), http_listener("l0", 10001, "r0")],
        [*eds, load_assignment("ce", [("127.0.0.1", 1)]), _static("c2", 1), route_configuration("r0", "ce"),
         route_configuration("r1", "c2"), http_listener("l0", 10000, "r0"), http_listener("l1", 10002, "r1")],
        [*eds, load_assignment("ce", [("127.0.0.1", 2)]), _static("c2", 1), route_configuration("r0", "ce"),
         route_configuration("r1", "c2"), http_listener("l0", 10000, "r0"), http_listener("l1", 10002, "r1")],
        [cluster("ce", type="EDS", connect_timeout=2), load_assignment("ce", [("127.0.0.1", 1)]), _static("c2", 1),
         route_configuration("r0", "ce"), route_configuration("r1", "c2"), http_listener("l0", 10000, "r0"),
         http_listener("l1", 10002, "r1")],
        [],
        [_static("c2", 1)],
    ]
    return [Snapshot(r) for r in raw]


POOL = _pool()


def _route_clusters(msg: Any) -> set[str]:
    return {r.route.cluster for vh in msg.virtual_hosts for r in vh.routes if r.route.cluster}


# -- the server, shared by all examples (each example uses node ids of its own) ------------------


class Server:
    """One ControlPlane for the module, and a count of each node's rounds (tracker commits)."""

    def __init__(self) -> None:
        self.cp = ControlPlane(port=0, trace_size=100_000).start()
        self.rounds: Counter[str] = Counter()
        self.cond = threading.Condition()
        commit = self.cp.tracker.commit

        def counted(node_id: str, stream: int, events: list, snapshot: object | None) -> None:
            commit(node_id, stream, events, snapshot)
            with self.cond:
                self.rounds[node_id] += 1
                self.cond.notify_all()

        self.cp.tracker.commit = counted  # type: ignore[method-assign]
        self.channel = grpc.insecure_channel(self.cp.address)
        self.examples = 0

    def wait_round(self, node: str, after: int) -> None:
        with self.cond:
            if not self.cond.wait_for(lambda: self.rounds[node] > after, WAIT):
                raise AssertionError(f"the server did not finish a round for {node} within {WAIT}s")

    def sent(self, node: str) -> int:
        return sum(1 for e in self.cp.tracker.events(node) if e.direction == "sent")

    def stop(self) -> None:
        self.channel.close()
        self.cp.stop()


_SERVER: Server | None = None


def server() -> Server:
    global _SERVER
    if _SERVER is None:
        _SERVER = Server()
    return _SERVER


@pytest.fixture(scope="module", autouse=True)
def _stop_server():
    yield
    global _SERVER
    if _SERVER is not None:
        print(f"\nprotocol state machine: {_SERVER.examples} examples")
        _SERVER.stop()
        _SERVER = None


# -- the model of one client ---------------------------------------------------------------------


@dataclass
class TypeModel:
    wildcard: bool = False
    names: set[str] = field(default_factory=set)
    named: bool = False  # SotW: has named resources (rule 8)
    requested: bool = False  # asked for on this stream
    outstanding: Any = None  # the response not answered yet
    latest_nonce: str = ""
    old_nonces: list[str] = field(default_factory=list)
    held: dict[str, Any] = field(default_factory=dict)  # SotW: name -> message; Delta: name -> version
    acked_version: str = ""  # SotW: version_info of the last response ACKed
    clean: bool = True  # SotW: nothing changed since that ACK (its version describes what is held)


@dataclass
class Peer:
    node: str
    client: Any = None
    base_sent: int = 0  # the server's "sent" count for this node when the stream opened
    # SotW: the client reconnected without saying which clusters it runs (version_info ""): the
    # server cannot keep them for make-before-break until the client has ACKed a CDS response.
    clusters_unknown: bool = False
    types: dict[str, TypeModel] = field(default_factory=dict)

    def t(self, url: str) -> TypeModel:
        return self.types.setdefault(url, TypeModel())


class ProtocolMachine(RuleBasedStateMachine):
    delta = False

    def __init__(self) -> None:
        super().__init__()
        self.srv = server()
        self.srv.examples += 1
        tag = f"{'d' if self.delta else 's'}{self.srv.examples}"
        self.peers = [Peer(f"pp-{tag}-a"), Peer(f"pp-{tag}-b")]
        self.default: Snapshot | None = None
        self.own: dict[str, Snapshot] = {}
        self.refused: dict[tuple[str, str], set[Any]] = {}  # (node, url) -> versions (SotW) / (name, version) (Delta)
        self.refused_removals: dict[tuple[str, str], dict[str, set[str]]] = {}
        self.route_nacked: set[str] = set()  # nodes that NACKed LDS or RDS: make-before-break cannot wait on them
        self.step_responses: list[tuple[Peer, Any]] = []

    # -- plumbing ------------------------------------------------------------------------------

    def snapshot_of(self, node: str) -> Snapshot | None:
        return self.own.get(node, self.default)

    def _open(self, peer: Peer) -> None:
        cls = DeltaClient if self.delta else SotwClient
        peer.base_sent = self.srv.sent(peer.node)
        peer.client = cls(self.srv.cp.address, peer.node, channel=self.srv.channel)

    def _close(self, peer: Peer) -> None:
        peer.client.close()
        peer.client = None
        deadline = time.monotonic() + WAIT
        while True:
            status = self.srv.cp.tracker.node(peer.node)
            if status is None or status.streams == 0:
                break
            assert time.monotonic() < deadline, f"{peer.node}'s stream did not close"
            time.sleep(0.002)
        for tm in peer.types.values():
            tm.requested = False
            tm.named = False  # per stream, as the server keeps it
            tm.outstanding = None
            tm.latest_nonce = ""
            tm.old_nonces = []

    def _send(self, peer: Peer, **kw: Any) -> list[Any]:
        """Write one request and return the responses of the round it caused."""
        before = self.srv.rounds[peer.node]
        peer.client.send(**kw)
        self.srv.wait_round(peer.node, before)
        return self._collect(peer)

    def _collect(self, peer: Peer) -> list[Any]:
        want = self.srv.sent(peer.node) - peer.base_sent
        got = []
        while len(peer.client.received) < want:
            got.append(peer.client.recv(WAIT))
        return got

    def _set(self, snapshot: Snapshot, node: str | None) -> None:
        open_peers = {p.node: p for p in self.peers if p.client is not None}
        before = {n: self.srv.rounds[n] for n in open_peers}
        affected = self.srv.cp.cache.set(snapshot, node)
        if node is None:
            self.default = snapshot
        else:
            self.own[node] = snapshot
        for n in affected:
            if n in open_peers:
                self.srv.wait_round(n, before[n])
                self.check(open_peers[n], self._collect(open_peers[n]))

    # -- the checks ------------------------------------------------------------------------------

    def check(self, peer: Peer, responses: list[Any]) -> None:
        snap = self.snapshot_of(peer.node)
        last_order = (-1, "")
        for resp in responses:
            url = resp.type_url
            tm = peer.types.get(url)
            what = f"{peer.node}: {describe(resp)}"
            assert tm is not None and tm.requested, f"a response of a type never asked for: {what}"
            assert resp.nonce and resp.nonce != tm.latest_nonce and resp.nonce not in tm.old_nonces, f"nonce reused: {what}"
            assert tm.outstanding is None, f"a second unanswered response of one type: {what}"
            assert order_key(url) >= last_order, f"make-before-break order broken in one round: {what}"
            last_order = order_key(url)
            assert snap is not None, f"a response without a snapshot: {what}"
            if self.delta:
                self._check_delta(peer, tm, snap, resp, what)
            else:
                self._check_sotw(peer, tm, snap, resp, what)
            if tm.latest_nonce:
                tm.old_nonces.append(tm.latest_nonce)
            tm.latest_nonce = resp.nonce
            tm.outstanding = resp

    def _check_sotw(self, peer: Peer, tm: TypeModel, snap: Snapshot, resp: Any, what: str) -> None:
        url = resp.type_url
        version = snap.version(url)
        assert resp.version_info in (version, version + RETAINED), f"not the current version {version}: {what}"
        assert resp.version_info not in self.refused.get((peer.node, url), ()), f"a NACKed version sent again: {what}"
        got = resources(resp)
        current = snap.resources(url)
        if not tm.wildcard:
            assert set(got) <= tm.names, f"names not subscribed to ({sorted(tm.names)}): {what}"
        for name, msg in got.items():
            if name in current:
                assert msg == current[name], f"{name} is not the snapshot's: {what}"
            else:  # only a cluster kept for make before break
                assert resp.version_info.endswith(RETAINED) and name in tm.held, f"{name} is in no snapshot: {what}"
        if url == CLUSTER:
            self._check_removals(peer, [n for n in tm.held if n not in got], what)

    def _check_delta(self, peer: Peer, tm: TypeModel, snap: Snapshot, resp: Any, what: str) -> None:
        url = resp.type_url
        assert resp.system_version_info == snap.version(url), f"not the current version: {what}"
        entries = snap.entries(url)
        refused = self.refused.get((peer.node, url), set())
        for r in resp.resources:
            assert tm.wildcard or r.name in tm.names, f"{r.name} not subscribed to: {what}"
            assert r.name in entries and r.version == entries[r.name].version, f"{r.name} is not the snapshot's: {what}"
            assert (r.name, r.version) not in refused, f"a NACKed version of {r.name} sent again: {what}"
        for name in resp.removed_resources:
            assert url in FULL_STATE, f"a {url} removed by name (it goes with its parent): {what}"
            assert name not in entries, f"{name} removed but it is in the snapshot: {what}"
            assert tm.wildcard or name in tm.names, f"{name} removed but not subscribed to: {what}"
        if url == CLUSTER:
            self._check_removals(peer, list(resp.removed_resources), what)

    def _check_removals(self, peer: Peer, removed: list[str], what: str) -> None:
        """Rule 12: a cluster goes only once no route the client runs uses it."""
        if not removed or peer.node in self.route_nacked or peer.clusters_unknown:
            return
        rds = peer.types.get(ROUTE)
        if rds is None:
            return
        snap = self.snapshot_of(peer.node)
        for name, held in rds.held.items():
            msg = held if not self.delta else (snap.resources(ROUTE).get(name) if snap else None)
            if msg is None or (snap is not None and name not in snap.names(ROUTE)):
                continue
            if self.delta and snap.entries(ROUTE)[name].version != held:
                continue  # Delta holds versions: the route as held is not in this snapshot
            used = _route_clusters(msg) & set(removed)
            assert not used, f"cluster(s) {sorted(used)} removed while route {name} still uses them: {what}"

    @invariant()
    def settled_state_is_right(self) -> None:
        """Once nothing is unanswered, the client holds what its snapshot and subscriptions say."""
        for peer in self.peers:
            snap = self.snapshot_of(peer.node)
            if peer.client is None or snap is None:
                continue
            for url, tm in peer.types.items():
                if not tm.requested or tm.outstanding is not None or not (tm.wildcard or tm.names):
                    continue
                if url in (LISTENER, ROUTE) and self._waits_for_clusters(peer, url, tm, snap):
                    continue  # rule 12: held until the clusters they name are warm at the client
                if self.delta:
                    self._settled_delta(peer, url, tm, snap)
                else:
                    self._settled_sotw(peer, url, tm, snap)

    def _waits_for_clusters(self, peer: Peer, url: str, tm: TypeModel, snap: Snapshot) -> bool:
        """Whether the listeners or routes the client should get name a cluster it cannot route to
        yet: one it subscribes to but has not ACKed at this content, or an EDS cluster whose load
        assignment (which the snapshot has, and the client asked for) it has not ACKed."""
        cds, eds = peer.types.get(CLUSTER), peer.types.get(ENDPOINT)
        if cds is None or not cds.requested:
            return False
        wanted = [e for n, e in snap.entries(url).items() if tm.wildcard or n in tm.names]
        refs = {n for e in wanted for u, n in e.refs if u == CLUSTER}
        clusters, assignments = snap.entries(CLUSTER), snap.entries(ENDPOINT)
        in_flight = set(resources(cds.outstanding)) if cds.outstanding is not None else set()
        for name in refs:
            if name in in_flight:
                return True  # in a CDS response the client has not answered yet
            entry = clusters.get(name)
            if entry is None or not (cds.wildcard or name in cds.names):
                continue
            have = cds.held.get(name)
            if have != (entry.version if self.delta else entry.message):
                return True
            if eds is not None and eds.requested:
                for need in entry.needs:
                    if need in assignments and (eds.wildcard or need in eds.names):
                        held = eds.held.get(need)
                        if held != (assignments[need].version if self.delta else assignments[need].message):
                            return True
        return False

    def _settled_sotw(self, peer: Peer, url: str, tm: TypeModel, snap: Snapshot) -> None:
        version = snap.version(url)
        refused = self.refused.get((peer.node, url), set())
        if version in refused or version + RETAINED in refused:
            return  # rule 4: it waits for a newer version
        current = snap.resources(url)
        wanted = current if tm.wildcard else {n: m for n, m in current.items() if n in tm.names}
        where = f"{peer.node} {url.rsplit('.', 1)[-1]} (subscribed {'*' if tm.wildcard else sorted(tm.names)})"
        for name, msg in wanted.items():
            assert tm.held.get(name) == msg, f"{where}: holds {name} {'not at all' if name not in tm.held else 'out of date'}"
        if url in FULL_STATE:
            extra = set(tm.held) - set(wanted)
            if extra and tm.acked_version == version + RETAINED:
                return  # clusters kept until the routes that used them have moved (rule 12)
            assert not extra, f"{where}: still holds {sorted(extra)}, which the snapshot removed"

    def _settled_delta(self, peer: Peer, url: str, tm: TypeModel, snap: Snapshot) -> None:
        entries = snap.entries(url)
        refused = self.refused.get((peer.node, url), set())
        where = f"{peer.node} Delta {url.rsplit('.', 1)[-1]} (subscribed {'*' if tm.wildcard else sorted(tm.names)})"
        for name, e in entries.items():
            if (tm.wildcard or name in tm.names) and (name, e.version) not in refused:
                assert tm.held.get(name) == e.version, f"{where}: holds {name} at {tm.held.get(name)}, not {e.version}"
        if url in FULL_STATE:
            if url == CLUSTER and any(peer.types[u].outstanding is not None for u in (LISTENER, ROUTE) if u in peer.types):
                return  # rule 12: removed clusters wait until the listeners and routes moved
            removals = self.refused_removals.get((peer.node, url), {})
            for name in tm.held:
                if name not in entries and (tm.wildcard or name in tm.names):
                    assert snap.version(url) in removals.get(name, ()), f"{where}: still holds {name}, which is gone"

    # -- rules -----------------------------------------------------------------------------------

    @initialize(default=st.sampled_from(range(len(POOL))), own=st.sampled_from([None, *range(len(POOL))]))
    def start(self, default: int, own: int | None) -> None:
        self._set(POOL[default], None)
        if own is not None:
            self._set(POOL[own], self.peers[1].node)
        for peer in self.peers:
            self._open(peer)

    def _subscribe_request(self, peer: Peer, url: str, names: list[str], wildcard: bool) -> dict[str, Any]:
        raise NotImplementedError

    @rule(p=st.integers(0, 1), url=st.sampled_from(TYPES), names=st.sets(st.sampled_from(sorted({n for v in NAMES.values() for n in v})), max_size=3),
          wildcard=st.booleans())
    def subscribe(self, p: int, url: str, names: set[str], wildcard: bool) -> None:
        peer = self.peers[p]
        if peer.client is None:
            return
        wildcard = wildcard and url in FULL_STATE
        self._subscribe(peer, url, sorted(names), wildcard)

    def _unanswered(self) -> list[tuple[int, str]]:
        return [(i, url) for i, peer in enumerate(self.peers) if peer.client is not None
                for url, tm in sorted(peer.types.items()) if tm.outstanding is not None]

    def _answered(self) -> list[tuple[int, str]]:
        return [(i, url) for i, peer in enumerate(self.peers) if peer.client is not None
                for url, tm in sorted(peer.types.items()) if tm.latest_nonce]

    @precondition(lambda self: self._unanswered())
    @rule(data=st.data())
    def ack(self, data: st.DataObject) -> None:
        p, url = data.draw(st.sampled_from(self._unanswered()), label="ack")
        self._answer(self.peers[p], url, self.peers[p].types[url], error=None)

    @precondition(lambda self: self._unanswered())
    @rule(data=st.data())
    def nack(self, data: st.DataObject) -> None:
        p, url = data.draw(st.sampled_from(self._unanswered()), label="nack")
        self._answer(self.peers[p], url, self.peers[p].types[url], error="refused by the state machine")

    @precondition(lambda self: self._answered())
    @rule(data=st.data(), names=st.sets(st.sampled_from(("c0", "c2", "l1", "r1", "ce")), max_size=2))
    def stale(self, data: st.DataObject, names: set[str]) -> None:
        p, url = data.draw(st.sampled_from(self._answered()), label="stale")
        peer = self.peers[p]
        tm = peer.types[url]
        nonce = tm.old_nonces[-1] if tm.old_nonces else "not-a-nonce-of-this-stream"
        self._stale(peer, url, tm, nonce, sorted(names))

    @rule(p=st.integers(0, 1))
    def reconnect(self, p: int) -> None:
        peer = self.peers[p]
        if peer.client is not None:
            self._close(peer)
        self._open(peer)
        for url in sorted(peer.types, key=order_key):
            tm = peer.types[url]
            if tm.wildcard or tm.names:
                self._resume(peer, url, tm)

    @rule(i=st.sampled_from(range(len(POOL))))
    def change_default(self, i: int) -> None:
        same = {p.node: self._same(p.node, POOL[i]) for p in self.peers if p.node not in self.own}
        counts = {p.node: len(p.client.received) for p in self.peers if p.client is not None}
        self._set(POOL[i], None)
        self._nothing_if_same(same, counts)

    @rule(p=st.integers(0, 1), i=st.sampled_from(range(len(POOL))))
    def change_node(self, p: int, i: int) -> None:
        node = self.peers[p].node
        same = {node: self._same(node, POOL[i])}
        counts = {pp.node: len(pp.client.received) for pp in self.peers if pp.client is not None}
        self._set(POOL[i], node)
        self._nothing_if_same(same, counts)

    def _same(self, node: str, snap: Snapshot) -> bool:
        old = self.snapshot_of(node)
        return old is not None and all(old.version(u) == snap.version(u) for u in TYPES)

    def _nothing_if_same(self, same: dict[str, bool], counts: dict[str, int]) -> None:
        """Rule 6: the same content again sends nothing; and a change for one node reaches no other."""
        for peer in self.peers:
            if peer.client is not None and same.get(peer.node, True):
                assert len(peer.client.received) == counts.get(peer.node, 0), \
                    f"{peer.node} was sent something though its snapshot did not change"

    # -- per protocol ------------------------------------------------------------------------------

    def _subscribe(self, peer: Peer, url: str, names: list[str], wildcard: bool) -> None:
        raise NotImplementedError

    def _answer(self, peer: Peer, url: str, tm: TypeModel, error: str | None) -> None:
        raise NotImplementedError

    def _stale(self, peer: Peer, url: str, tm: TypeModel, nonce: str, names: list[str]) -> None:
        raise NotImplementedError

    def _resume(self, peer: Peer, url: str, tm: TypeModel) -> None:
        raise NotImplementedError

    def teardown(self) -> None:
        for peer in self.peers:
            if peer.client is not None:
                peer.client.close()
        for peer in self.peers:
            self.srv.cp.cache.clear(peer.node)


class SotwMachine(ProtocolMachine):
    delta = False

    def _sotw_names(self, tm: TypeModel) -> list[str]:
        return (["*"] if tm.wildcard else []) + sorted(tm.names)

    def _subscribe(self, peer: Peer, url: str, names: list[str], wildcard: bool) -> None:
        tm = peer.t(url)
        if tm.outstanding is not None:
            return  # a SotW request with the latest nonce is an ACK: the ack rule does that
        sent = (["*"] if wildcard else []) + names
        # Rule 8: "*", or never having named anything, is the wildcard; after names, [] is none.
        first = not tm.requested
        before = (tm.wildcard, set(tm.names))
        tm.wildcard = True if wildcard else False if names else (first or not tm.named)
        tm.named = tm.named or bool(names)
        tm.names = set(names)
        if not tm.wildcard:
            tm.held = {n: m for n, m in tm.held.items() if n in tm.names}  # the client forgets the rest
        if (tm.wildcard, tm.names) != before:
            tm.clean = False  # its last ACKed version no longer says what it holds
        tm.requested = True
        self.check(peer, self._send(peer, type_url=url, names=sent, version=tm.acked_version, nonce=tm.latest_nonce))

    def _answer(self, peer: Peer, url: str, tm: TypeModel, error: str | None) -> None:
        resp = tm.outstanding
        tm.outstanding = None
        if error is None:
            got = resources(resp)
            tm.held = got if url in FULL_STATE else {**tm.held, **got}
            tm.acked_version = resp.version_info
            tm.clean = True
            if url == CLUSTER:
                peer.clusters_unknown = False
            version = resp.version_info
        else:
            self.refused.setdefault((peer.node, url), set()).add(resp.version_info)
            if url in (LISTENER, ROUTE):
                self.route_nacked.add(peer.node)
            version = tm.acked_version
        self.check(peer, self._send(peer, type_url=url, names=self._sotw_names(tm), version=version,
                                    nonce=resp.nonce, error=error))

    def _stale(self, peer: Peer, url: str, tm: TypeModel, nonce: str, names: list[str]) -> None:
        # Rule 5: ignored, names and all; the unanswered response stays unanswered.
        self.check(peer, self._send(peer, type_url=url, names=names, version="stale", nonce=nonce, error="stale"))

    def _resume(self, peer: Peer, url: str, tm: TypeModel) -> None:
        version = tm.acked_version if tm.clean else ""
        if not tm.wildcard and not tm.names:
            return  # named then unsubscribed: nothing to ask for
        tm.requested = True
        tm.named = bool(tm.names)
        if url == CLUSTER and not version:
            peer.clusters_unknown = True
        self.check(peer, self._send(peer, type_url=url, names=self._sotw_names(tm), version=version))


class DeltaMachine(ProtocolMachine):
    delta = True

    def _subscribe(self, peer: Peer, url: str, names: list[str], wildcard: bool) -> None:
        tm = peer.t(url)
        first = not tm.requested
        sub = [n for n in names if n not in tm.names] + (["*"] if wildcard and not tm.wildcard else [])
        unsub = [] if first else [n for n in sorted(tm.names) if n not in names]
        if not first and tm.wildcard and not wildcard:
            unsub.append("*")
        if first and not sub:
            tm.wildcard = True  # a first request naming nothing: the legacy wildcard
        else:
            tm.wildcard = wildcard or (tm.wildcard and "*" not in unsub)
        for n in unsub:
            if n != "*":
                tm.held.pop(n, None)  # the client forgets what it stops asking for
        tm.names = (tm.names | set(n for n in sub if n != "*")) - set(unsub)
        tm.requested = True
        # A pure subscription change (no nonce): it answers nothing.
        self.check(peer, self._send(peer, type_url=url, subscribe=sub, unsubscribe=unsub))

    def _answer(self, peer: Peer, url: str, tm: TypeModel, error: str | None) -> None:
        resp = tm.outstanding
        tm.outstanding = None
        if error is None:
            for r in resp.resources:
                tm.held[r.name] = r.version
            for name in resp.removed_resources:
                tm.held.pop(name, None)
        else:
            refused = self.refused.setdefault((peer.node, url), set())
            refused.update((r.name, r.version) for r in resp.resources)
            removals = self.refused_removals.setdefault((peer.node, url), {})
            for name in resp.removed_resources:
                removals.setdefault(name, set()).add(resp.system_version_info)
            if url in (LISTENER, ROUTE):
                self.route_nacked.add(peer.node)
        self.check(peer, self._send(peer, type_url=url, nonce=resp.nonce, error=error))

    def _stale(self, peer: Peer, url: str, tm: TypeModel, nonce: str, names: list[str]) -> None:
        # Rule 13: the ACK part of a stale request is ignored, its subscriptions are honoured.
        sub = [n for n in names if n not in tm.names]
        tm.names |= set(sub)
        self.check(peer, self._send(peer, type_url=url, subscribe=sub, nonce=nonce, error="stale"))

    def _resume(self, peer: Peer, url: str, tm: TypeModel) -> None:
        tm.requested = True
        known = dict(tm.held)
        sub = (["*"] if tm.wildcard and tm.names else []) + sorted(tm.names)
        if not tm.wildcard and not sub:
            tm.requested = False
            return
        self.check(peer, self._send(peer, type_url=url, subscribe=sub, initial_versions=known))


_SETTINGS = settings(
    max_examples=EXAMPLES,
    stateful_step_count=STEPS,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    print_blob=True,
)

TestSotwProtocol = SotwMachine.TestCase
TestSotwProtocol.settings = _SETTINGS
TestDeltaProtocol = DeltaMachine.TestCase
TestDeltaProtocol.settings = _SETTINGS
