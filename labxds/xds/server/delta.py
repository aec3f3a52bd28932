"""Delta (incremental) xDS: responses carry only what changed, and removals by name."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from envoy.service.discovery.v3 import discovery_pb2

from .. import wire
from ..resource_types import (
    CLUSTER,
    ENDPOINT,
    LISTENER,
    REMOVED_WITH_PARENT,
    ROUTE,
    order_key,
)
from ..snapshot import Entry, Snapshot
from ..tracking import REFUSED_KEPT
from .stream import (
    UNKNOWN,
    Stream,
    cluster_refs,
    dependencies_asked,
    heartbeat_answered,
    rewarmed_endpoints,
)

__all__ = ["DeltaStream"]

log = logging.getLogger("labxds")


def _remember(refused: dict[str, dict[str, None]], name: str, version: str) -> None:
    """Add ``version`` to what the node refused of ``name``, keeping the last REFUSED_KEPT."""
    versions = refused.setdefault(name, {})
    versions.pop(version, None)
    versions[version] = None
    while len(versions) > REFUSED_KEPT:
        del versions[next(iter(versions))]


@dataclass
class _DeltaType:
    url: str
    wildcard: bool = False
    names: set[str] = field(default_factory=set)
    known: dict[str, str] = field(default_factory=dict)  # name -> version the client holds
    nonce: str = ""
    outstanding: bool = False
    pending: dict[str, tuple[str | None, str | None]] = field(default_factory=dict)
    # Rule 4, per resource: name -> the versions the node refused (the last REFUSED_KEPT), and
    # name -> the system versions at which it refused the resource's removal.
    nacked: dict[str, dict[str, None]] = field(default_factory=dict)
    nacked_removals: dict[str, dict[str, None]] = field(default_factory=dict)
    system_version: str = ""
    acked: set[str] = field(default_factory=set)  # names the client has ACKed some version of
    beating: bool = False  # the unanswered response (nonce) is a heartbeat
    beat_due: bool = False  # a heartbeat waits for the type to be idle


class DeltaStream(Stream):
    delta = True

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.types: dict[str, _DeltaType] = {}

    def on_request(self, url: str, req: discovery_pb2.DeltaDiscoveryRequest) -> None:
        st = self.types.get(url)
        first = st is None
        if st is None:
            st = self.types[url] = _DeltaType(url)
            assert self.node_id is not None
            st.nacked, st.nacked_removals = self.server.delta_refused.setdefault((self.node_id, url), ({}, {}))
            # Rule 13: on reconnect the client says what it holds; only differences are sent.
            st.known.update(req.initial_resource_versions)
            st.acked.update(req.initial_resource_versions)
            if not req.resource_names_subscribe:
                st.wildcard = True  # legacy wildcard: a first request naming nothing
        # Rule 13: subscription changes count even when the nonce is stale.
        for name in req.resource_names_subscribe:
            if name == "*":
                st.wildcard = True
            else:
                if (not first or name not in req.initial_resource_versions) and name in st.known:
                    # A re-subscribed resource is sent again. The client still holds it: if it is
                    # gone from the snapshot, its removal is announced (forgetting it, as this
                    # did, left the client holding a removed cluster for good).
                    st.known[name] = UNKNOWN
                st.names.add(name)
        for name in req.resource_names_unsubscribe:
            if name == "*":
                st.wildcard = False
            elif name in st.names:
                st.names.discard(name)
                st.known.pop(name, None)
                st.acked.discard(name)
            # unsubscribing a name never subscribed is ignored
        subs, unsubs = list(req.resource_names_subscribe), list(req.resource_names_unsubscribe)
        if not req.response_nonce:
            self.trace("received", "request", url, "", "", subs, unsubs)
            return
        if req.response_nonce != st.nonce:
            self.trace("received", "stale", url, "", req.response_nonce, subs, unsubs)
            return
        if st.beating:
            heartbeat_answered(self, st, url, st.system_version, req, subs, unsubs)
            return
        st.outstanding = False
        if req.HasField("error_detail"):
            for name, (old, new) in st.pending.items():
                if new is not None:
                    # Envoy applies the valid resources of a refused update (rule 15): which
                    # version the client runs is unknown, so any other version (a rollback
                    # included) is sent, and a later removal is announced.
                    st.known[name] = UNKNOWN
                    _remember(st.nacked, name, new)
                else:
                    if old is not None:
                        st.known[name] = old
                    # Rule 4 holds for removals too: the refused removal waits for a new version.
                    _remember(st.nacked_removals, name, st.system_version)
            self.trace("received", "NACK", url, st.system_version, req.response_nonce, subs, unsubs,
                       error=req.error_detail.message.strip())
        else:
            for name, (_, new) in st.pending.items():
                if new is None:
                    st.acked.discard(name)
                else:
                    st.acked.add(name)
            self.trace("received", "ACK", url, st.system_version, req.response_nonce, subs, unsubs)
        st.pending = {}

    def _plan(self, url: str, snap: Snapshot) -> tuple[list[Entry], list[str]] | None:
        st = self.types[url]
        if st.outstanding:
            return None
        entries = snap.entries(url, self.ttl)
        if st.wildcard:
            candidates: Iterable[Entry] = entries.values()
        else:
            candidates = (entries[n] for n in sorted(st.names) if n in entries)
        nacked = st.nacked
        send = [e for e in candidates if st.known.get(e.name) != e.version and e.version not in nacked.get(e.name, ())]
        version = snap.version(url)
        removed = [
            n for n in st.known
            if n not in entries and (st.wildcard or n in st.names) and version not in st.nacked_removals.get(n, ())
        ] if url not in REMOVED_WITH_PARENT else []
        if not send and not removed:
            return None
        return send, removed

    def _routes_pending(self, snap: Snapshot) -> bool:
        return any(
            url in self.types and (self.types[url].outstanding or self._plan(url, snap) is not None)
            for url in (LISTENER, ROUTE)
        )

    def _unready(self, snap: Snapshot, names: set[str]) -> set[str]:
        """Those of ``names`` the client cannot route to yet (rule 12): new clusters in a CDS
        response it has not ACKed (Envoy ACKs once they have warmed), and EDS ones whose load
        assignment, which the snapshot has and the client asked for, it has not ACKed. Looks at
        the named clusters only: a route names few, a snapshot may hold thousands."""
        cds = self.types.get(CLUSTER)
        if cds is None or not names:
            return set()
        eds = self.types.get(ENDPOINT)
        available = snap.entries(ENDPOINT)  # a mapping: no set of every name built per call
        clusters = snap.entries(CLUSTER)
        unready = set()
        for name in names:
            pending = cds.pending.get(name) if cds.outstanding else None
            if pending is not None and pending[0] is None and pending[1] is not None:
                unready.add(name)  # new, in a response not ACKed yet
                continue
            entry = clusters.get(name)
            if entry is None or name not in cds.known or eds is None:
                continue
            if any(n in available and (eds.wildcard or n in eds.names) and n not in eds.acked for n in entry.needs):
                unready.add(name)
        return unready

    def respond(self) -> list[bytes]:
        snap = self.snapshot
        if snap is None:
            return []
        out: list[bytes] = []
        for url in sorted(self.types, key=order_key):
            if self.types[url].beating:
                continue  # one unanswered response per type, heartbeats included
            plan = self._plan(url, snap)
            if plan is None:
                continue
            send, removed = plan
            if snap.make_before_break and url in (LISTENER, ROUTE) and self._unready(snap, cluster_refs(send)):
                # Make before break: routes move to a new cluster only once the client has it,
                # warm; sent earlier, they would answer 503 (NC) until it is.
                continue
            if url == CLUSTER and removed and snap.make_before_break and self._routes_pending(snap):
                removed = []  # Rule 12: remove clusters only after the routes moved away.
                if not send:
                    continue
            st = self.types[url]
            if url == CLUSTER and ENDPOINT in self.types:
                eds = self.types[ENDPOINT]
                for name in rewarmed_endpoints(st.known, send):
                    eds.known.pop(name, None)
            nonce = self.next_nonce()
            st.nonce, st.outstanding = nonce, True
            st.system_version = snap.version(url)
            st.pending = {e.name: (st.known.get(e.name), e.version) for e in send}
            st.pending.update({n: (st.known.get(n), None) for n in removed})
            for e in send:
                st.known[e.name] = e.version
            for n in removed:
                st.known.pop(n, None)
            out.append(wire.delta_response(
                system_version=st.system_version, type_url=url, nonce=nonce,
                resources=[e.delta for e in send], removed=removed,
                control_plane_id=self.server._control_plane,
            ))
            self.trace("sent", "response", url, st.system_version, nonce, [e.name for e in send], removed)
            assert self.node_id is not None
            self.server.tracker.emit_response(self.node_id, url, st.system_version, nonce, [e.name for e in send])
        return out

    def is_settled(self) -> bool:
        snap = self.snapshot
        if snap is None:
            return False
        for url, st in self.types.items():
            if st.outstanding or self._plan(url, snap) is not None:
                return False
        held = {
            url: [e for n, e in snap.entries(url, self.ttl).items() if self.types[url].known.get(n) == e.version]
            for url in (CLUSTER, LISTENER) if url in self.types
        }
        return dependencies_asked(self.types, held.get(CLUSTER, ()), held.get(LISTENER, ()))

    # -- rule 14: heartbeats -------------------------------------------------------------------

    def _held_ttl_entries(self, url: str) -> list[Entry]:
        """Resources with a TTL the client holds (or is being sent) at their current version."""
        snap, st = self.snapshot, self.types[url]
        if snap is None or not st.known:
            return []
        entries = snap.entries(url, True)
        return [e for n, v in st.known.items() if (e := entries.get(n)) is not None and e.ttl is not None and e.version == v]

    def held_ttls(self) -> list[float]:
        return [e.ttl for url in self.types for e in self._held_ttl_entries(url) if e.ttl is not None]

    def beats_due(self) -> None:
        for url, st in self.types.items():
            if self._held_ttl_entries(url):
                st.beat_due = True

    def heartbeats(self) -> list[bytes]:
        out: list[bytes] = []
        for url in sorted(self.types, key=order_key):
            st = self.types[url]
            if not st.beat_due or st.outstanding or st.beating:
                continue  # one unanswered response per type: the heartbeat waits for the answer
            beats = self._held_ttl_entries(url)
            st.beat_due = False
            if not beats:
                continue
            # Resources without their body at the version the client holds: only their TTLs
            # are refreshed. Not a change: known versions and the tracker's versions stay.
            nonce = self.next_nonce()
            st.nonce, st.beating = nonce, True
            out.append(wire.delta_response(
                system_version=st.system_version, type_url=url, nonce=nonce,
                resources=[e.heartbeat_delta for e in beats],
                control_plane_id=self.server._control_plane,
            ))
            self.trace("sent", "heartbeat", url, st.system_version, nonce, [e.name for e in beats])
        return out
