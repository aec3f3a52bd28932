"""State of the World: each response carries every resource of its type the client asked for."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from envoy.service.discovery.v3 import discovery_pb2

from .. import wire
from ..resource_types import (
    CLUSTER,
    ENDPOINT,
    FULL_STATE,
    LISTENER,
    ROUTE,
    order_key,
    short_name,
)
from ..snapshot import Entry, Snapshot
from .stream import (
    RETAINED,
    Stream,
    cluster_refs,
    dependencies_asked,
    heartbeat_answered,
    needed_names,
    rewarmed_endpoints,
    same_entries,
)

__all__ = ["SotwStream"]

log = logging.getLogger("labxds")


@dataclass
class _SotwType:
    url: str
    wildcard: bool = False
    named: bool = False  # the client has ever named resources of this type
    names: set[str] = field(default_factory=set)
    nonce: str = ""
    outstanding: bool = False
    sent_version: str | None = None
    sent: dict[str, Entry] = field(default_factory=dict)  # what the last response carried
    held: dict[str, Entry] = field(default_factory=dict)  # what the client last ACKed
    held_version: str | None = None
    client_version: str = ""  # version_info of the stream's first request (reconnects)
    # After a NACK the client may run part of the refused response (rule 15: Envoy applies the
    # valid listeners and clusters of an update), so "held" is a guess: send the next
    # acceptable version even if it equals what the client held before.
    unsure: bool = False
    beating: bool = False  # the unanswered response (nonce) is a heartbeat
    beat_due: bool = False  # a heartbeat waits for the type to be idle


@dataclass
class _Plan:
    version: str
    entries: dict[str, Entry]
    removed: list[str] = field(default_factory=list)


class SotwStream(Stream):
    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.types: dict[str, _SotwType] = {}

    def on_request(self, url: str, req: discovery_pb2.DiscoveryRequest) -> None:
        st = self.types.get(url)
        first = st is None
        if st is None:
            st = self.types[url] = _SotwType(url)
        # Rule 5: a nonce that is not the latest sent for this type marks a stale request.
        # Nonces live within one stream: before this stream answered the type, any nonce is
        # another stream's, and the request is an initial one.
        if req.response_nonce and st.nonce and req.response_nonce != st.nonce:
            self.trace("received", "stale", url, req.version_info, req.response_nonce, req.resource_names)
            return
        self._subscribe(st, list(req.resource_names), first)
        if not st.wildcard:
            # A client forgets the resources it stops asking for: drop them from what it is
            # known to hold, so asking again resends them (rule 7) and unsubscribing is not
            # mistaken for a removal to announce (rule 8).
            st.sent = {n: e for n, e in st.sent.items() if n in st.names}
            st.held = {n: e for n, e in st.held.items() if n in st.names}
        if not req.response_nonce or not st.nonce:
            # A client that reconnects says which version it runs; _plan adopts it if current
            # and one this server sent it (rule 16).
            st.client_version = req.version_info
            known = self.server.sotw_acked.get((self.node_id or "", url)) if first and req.version_info else None
            if known is not None and known[0] == req.version_info:
                # The version this node last ACKed: what it holds is known, current or not.
                held = known[1] if st.wildcard else {n: e for n, e in known[1].items() if n in st.names}
                st.sent = st.held = held
                st.sent_version = st.held_version = req.version_info
            self.trace("received", "request", url, req.version_info, "", req.resource_names)
            return
        if st.beating:
            # The answer to a heartbeat: nothing was applied, held and sent stay as they are.
            heartbeat_answered(self, st, url, req.version_info, req, list(req.resource_names))
            return
        st.outstanding = False
        if req.HasField("error_detail"):
            # Rule 3: error_detail makes a NACK; version_info is the last version that worked.
            refused = st.sent_version or ""
            st.sent, st.sent_version = st.held, st.held_version
            st.unsure = True
            self.trace("received", "NACK", url, refused, req.response_nonce,
                       req.resource_names, error=req.error_detail.message.strip())
        else:
            st.held, st.held_version = st.sent, st.sent_version
            if st.held_version is not None:
                self.server.sotw_acked[(self.node_id or "", url)] = (st.held_version, st.held)
            self.trace("received", "ACK", url, req.version_info, req.response_nonce, req.resource_names)

    @staticmethod
    def _subscribe(st: _SotwType, names: list[str], first: bool) -> None:
        # Rule 8: "*" or never having named anything means all; after explicit names an empty
        # list unsubscribes.
        explicit = [n for n in names if n != "*"]
        if "*" in names:
            st.wildcard = True
        elif explicit:
            st.wildcard = False
        else:
            st.wildcard = first or not st.named
        if explicit:
            st.named = True
        st.names = set(explicit)

    def _choose(self, st: _SotwType, snap: Snapshot) -> dict[str, Entry]:
        entries = snap.entries(st.url, self.ttl)
        if st.wildcard:
            return dict(entries)
        # Rules 7 and 10: what was asked for and exists; the rest stays remembered in st.names.
        return {n: entries[n] for n in sorted(st.names) if n in entries}

    def _refused(self, url: str, version: str) -> bool:
        # Rule 4: never send a version this node NACKed; wait for a newer one.
        return self.server.tracker.has_refused(self.node_id or "", url, version)

    def _plan(self, url: str, snap: Snapshot) -> _Plan | None:
        """What this type should send now, or None if the client has (or refused) it all."""
        st = self.types[url]
        if st.outstanding:
            return None
        if not st.wildcard and not st.names:
            return None  # Rule 8: unsubscribed from everything of this type
        version = snap.version(url)
        chosen = self._choose(st, snap)
        if (st.sent_version is None and st.client_version and st.client_version == version and not st.unsure
                and self.server.adopts(self.node_id or "", url, version)):
            st.sent = st.held = chosen
            st.sent_version = st.held_version = version
            self.server.tracker.resumed(self.node_id or "", url, version)
            return None
        if self._refused(url, version):
            return None
        if url in FULL_STATE:
            # Rule 9: full state; a resource left out is deleted, so removals count as changes.
            if version == st.sent_version and same_entries(chosen, st.sent) and not st.unsure:
                return None
            return _Plan(version, chosen, [n for n in st.sent if n not in chosen])
        # Rule 6: EDS/RDS and the rest only when a requested resource is new or changed.
        changed = any(st.sent.get(n) is None or st.sent[n].version != e.version for n, e in chosen.items())
        if not changed and not (st.unsure and chosen):
            return None
        return _Plan(version, chosen)

    def _routes_pending(self, snap: Snapshot) -> bool:
        """Whether listeners or routes still have to reach the client (rule 12)."""
        for url in (LISTENER, ROUTE):
            st = self.types.get(url)
            if st is not None and (st.outstanding or self._plan(url, snap) is not None):
                return True
            if st is None:
                # Not asked for on this stream (yet: a reconnecting client asks for CDS first), but
                # the node ACKed listeners or routes earlier that this snapshot changes.
                known = self.server.sotw_acked.get((self.node_id or "", url))
                if known is not None and known[0] != snap.version(url):
                    return True
        rds = self.types.get(ROUTE)
        needed = needed_names(self.types[LISTENER].sent.values()) if LISTENER in self.types else set()
        return bool(needed) and (rds is None or not (rds.wildcard or needed <= rds.names))

    def _unready(self, snap: Snapshot, names: set[str]) -> set[str]:
        """Those of ``names`` the client cannot route to yet (rule 12): new clusters whose CDS
        response it has not ACKed (Envoy ACKs once they have warmed), and EDS ones whose load
        assignment, which the snapshot has and the client asked for, it has not ACKed. Looks at
        the named clusters only: a route names few, a snapshot may hold thousands."""
        cds = self.types.get(CLUSTER)
        if cds is None or not names:
            return set()
        eds = self.types.get(ENDPOINT)
        available = snap.entries(ENDPOINT)  # a mapping: no set of every name built per call
        unready = set()
        for name in names:
            entry = cds.sent.get(name)
            if entry is None:
                continue  # not delivered by this stream (Envoy's bootstrap has it, or nobody does)
            if name not in cds.held:
                unready.add(name)
            elif eds is not None and any(n in available and (eds.wildcard or n in eds.names) and n not in eds.held
                                         for n in entry.needs):
                unready.add(name)
        return unready

    def respond(self) -> list[bytes]:
        snap = self.snapshot
        if snap is None:
            return []
        out: list[bytes] = []
        for url in sorted(self.types, key=order_key):  # Rule 12: CDS, EDS, LDS, RDS, others.
            st = self.types[url]
            if st.beating:
                continue  # one unanswered response per type, heartbeats included
            plan = self._plan(url, snap)
            if plan is None:
                continue
            if snap.make_before_break and url in (LISTENER, ROUTE) and self._unready(snap, cluster_refs(plan.entries.values())):
                # Make before break: routes move to a new cluster only once the client has it,
                # warm; sent earlier, they would answer 503 (NC) until it is.
                continue
            if url == CLUSTER and plan.removed and snap.make_before_break and self._routes_pending(snap):
                # Make before break: keep the clusters being removed until the listeners and
                # routes that stop using them have been delivered.
                keep = {n: st.sent[n] for n in plan.removed}
                plan = _Plan(plan.version + RETAINED, {**plan.entries, **keep})
                same = plan.version == st.sent_version and same_entries(plan.entries, st.sent) and not st.unsure
                if same or self._refused(url, plan.version):
                    continue
            if url == CLUSTER and ENDPOINT in self.types:
                rewarm = rewarmed_endpoints({n: e.version for n, e in st.sent.items()}, plan.entries.values())
                eds = self.types[ENDPOINT]
                eds.sent = {n: e for n, e in eds.sent.items() if n not in rewarm}
            nonce = self.next_nonce()
            st.nonce, st.outstanding, st.unsure = nonce, True, False
            st.beat_due = False  # the response carries every resource of the type, TTLs included
            st.sent, st.sent_version = plan.entries, plan.version
            self.server.issued(self.node_id or "", url, plan.version)
            if self.fragile_ttl and url in (ROUTE, ENDPOINT) and any(e.ttl for e in plan.entries.values()):
                self.fragile_ttl = False  # said once per stream
                log.warning(
                    "node %s (Envoy %s) is sent %s resources with a TTL over SotW: Envoy 1.40 crashes "
                    "(segfault) when such a TTL runs out, e.g. if this control plane stops; use Delta "
                    "xDS for it, or TTLs on listeners and clusters only", self.node_id,
                    self.agent_version, short_name(url),
                )
            out.append(wire.sotw_response(
                version=plan.version, type_url=url, nonce=nonce,
                resources=[e.sotw for e in plan.entries.values()],
                control_plane_id=self.server._control_plane,
            ))
            self.trace("sent", "response", url, plan.version, nonce, plan.entries)
            assert self.node_id is not None
            self.server.tracker.emit_response(self.node_id, url, plan.version, nonce, list(plan.entries))
        return out

    def is_settled(self) -> bool:
        snap = self.snapshot
        if snap is None:
            return False
        for url, st in self.types.items():
            if st.outstanding or self._plan(url, snap) is not None:
                return False
            if st.sent_version is not None and st.held_version != st.sent_version:
                return False
        held = {url: st.held.values() for url, st in self.types.items()}
        return dependencies_asked(self.types, held.get(CLUSTER, ()), held.get(LISTENER, ()))

    # -- rule 14: heartbeats -------------------------------------------------------------------

    def held_ttls(self) -> list[float]:
        return [e.ttl for st in self.types.values() for e in st.sent.values() if e.ttl is not None]

    def beats_due(self) -> None:
        for st in self.types.values():
            if any(e.ttl is not None for e in st.sent.values()):
                st.beat_due = True

    def heartbeats(self) -> list[bytes]:
        out: list[bytes] = []
        for url in sorted(self.types, key=order_key):
            st = self.types[url]
            if not st.beat_due or st.outstanding or st.beating:
                continue  # one unanswered response per type: the heartbeat waits for the answer
            if st.unsure or st.held_version != st.sent_version or st.held_version is None:
                continue  # what the client runs is unknown; the next response settles it
            beats = [e for e in st.held.values() if e.ttl is not None]
            st.beat_due = False
            if not beats:
                continue
            # At the version the client ACKed, the resources with a TTL (bare: without body),
            # and for LDS/CDS every other resource too: a SotW response left without them
            # would delete them (rule 9). Not a change: sent, held and the tracker's versions stay.
            if url in FULL_STATE:
                beats = list(st.held.values())
            bare = self.server.sotw_heartbeat == "bare"
            nonce = self.next_nonce()
            st.nonce, st.beating = nonce, True
            out.append(wire.sotw_response(
                version=st.held_version, type_url=url, nonce=nonce,
                resources=[e.heartbeat_sotw if bare and e.ttl is not None else e.sotw for e in beats],
                control_plane_id=self.server._control_plane,
            ))
            self.trace("sent", "heartbeat", url, st.held_version, nonce, [e.name for e in beats])
        return out
