"""What each node was sent, what it acknowledged, and the trace of the conversation.

The protocol is the lesson: every request and response is recorded (bounded per node) so a
notebook can show versions, nonces, ACKs and NACKs as a table. The same records let a push wait
until nodes have really applied a snapshot, woken by the server rather than by polling.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, overload

from envoy.service.discovery.v3 import discovery_pb2

from ..i18n import _, explain
from .hooks import (
    EVENTS,
    Event,
    Hook,
    RequestHook,
    ResponseHook,
    StreamCloseHook,
    StreamOpenHook,
)
from .resource_types import order_key, short_name

if TYPE_CHECKING:
    from .snapshot import Snapshot

__all__ = ["NodeStatus", "PushRejected", "PushTimeout", "Tracker", "TypeStatus"]

log = logging.getLogger("labxds")

#: NACKed versions remembered per node and type (rule 4 holds for each of them).
REFUSED_KEPT = 32


def remover(callbacks: list[Any], callback: Any) -> Callable[[], None]:
    """A function that unregisters ``callback``; calling it again does nothing (widgets and
    workshops unhook on close and on stop, in either order)."""

    def remove() -> None:
        if callback in callbacks:
            callbacks.remove(callback)

    return remove


class PushRejected(RuntimeError):
    """A node NACKed the pushed version; ``errors`` holds Envoy's own words per node and type."""

    def __init__(self, errors: dict[tuple[str, str], str]) -> None:
        self.errors = errors
        lines = []
        for (node, url), text in errors.items():
            line = _("{node} rejected {type}: {error}").format(node=node, type=short_name(url), error=text)
            meaning = explain(text)  # Envoy's words stay; what the common ones mean, in the learner's language
            lines.append(f"{line}\n→ {meaning}" if meaning else line)
        super().__init__("; ".join(lines))


class PushTimeout(TimeoutError):
    """Some nodes did not apply the snapshot in time; ``missing`` names them."""

    def __init__(self, missing: list[str], timeout: float) -> None:
        self.missing = missing
        super().__init__(
            _("after {timeout}s these nodes had not acknowledged the snapshot: {nodes}").format(
                timeout=f"{timeout:g}", nodes=", ".join(missing))
        )


@dataclass
class TypeStatus:
    """One node's state for one resource type."""

    type_url: str
    sent_version: str | None = None
    sent_at: float | None = None
    acked_version: str | None = None
    acked_at: float | None = None
    nacked_version: str | None = None
    nack_error: str | None = None
    nacked_at: float | None = None
    #: Versions this node NACKed -> Envoy's error (the last REFUSED_KEPT, oldest first): never
    #: sent to it again (rule 4).
    refused: dict[str, str] = field(default_factory=dict, repr=False)


@dataclass
class NodeStatus:
    node_id: str
    cluster: str = ""
    user_agent: str = ""
    #: What the client announced it supports (its node's ``client_features``), e.g. gRPC's
    #: ``xds.config.resource-in-sotw``, or ``xds.config.supports-resource-ttl``.
    client_features: tuple[str, ...] = ()
    connected_since: float | None = None
    last_seen: float | None = None
    streams: int = 0
    types: dict[str, TypeStatus] = field(default_factory=dict)

    def type(self, url: str) -> TypeStatus:
        st = self.types.get(url)
        if st is None:
            st = self.types[url] = TypeStatus(url)
        return st


@dataclass(frozen=True, slots=True)
class TraceEvent:
    time: float
    node: str
    stream: int
    direction: str  # "received" (from the client) or "sent"
    kind: str  # request, ACK, NACK, stale, response
    type_url: str
    version: str
    nonce: str
    resources: tuple[str, ...]
    removed: tuple[str, ...] = ()
    error: str = ""


class Tracker:
    """Thread-safe record of nodes and streams, shared by the server and its users.

    Disconnected nodes stay (their history is what a lesson looks at after a restart) up to
    ``keep_disconnected`` of them; beyond, the longest gone are forgotten, so a control plane
    that sees ever new node ids (pods, learners' reruns) does not grow without bound.
    """

    def __init__(self, trace_size: int = 2000, keep_disconnected: int = 1000) -> None:
        if keep_disconnected < 0:
            raise ValueError(f"keep_disconnected must be 0 or more, not {keep_disconnected!r}")
        self._cond = threading.Condition()
        self._nodes: dict[str, NodeStatus] = {}
        self._trace: dict[str, deque[TraceEvent]] = {}
        self._trace_size = trace_size
        self._keep_disconnected = keep_disconnected
        self._gone: dict[str, None] = {}  # disconnected node ids, longest gone first
        self._forget_hooks: list[Callable[[str], Any]] = []
        self._settled: dict[str, dict[int, object]] = {}  # node -> stream id -> snapshot
        # Each waiting push holds a set of the nodes that changed since it last looked, so a
        # wake-up costs the nodes that changed, not every target (5,000 nodes, 15,000 events).
        self._waiters: list[set[str]] = []
        self._hooks: dict[str, list[Hook]] = {e: [] for e in EVENTS}

    # -- hooks -------------------------------------------------------------------------------

    @overload
    def on(self, event: Literal["stream_open"], callback: StreamOpenHook) -> Callable[[], None]: ...
    @overload
    def on(self, event: Literal["stream_close"], callback: StreamCloseHook) -> Callable[[], None]: ...
    @overload
    def on(self, event: Literal["request"], callback: RequestHook) -> Callable[[], None]: ...
    @overload
    def on(self, event: Literal["response"], callback: ResponseHook) -> Callable[[], None]: ...

    def on(self, event: Event, callback: Hook) -> Callable[[], None]:
        """Call ``callback`` on the server's thread for ``event`` (signatures: ``labxds.xds.hooks``);
        returns a function that removes it."""
        if event not in self._hooks:
            raise ValueError(f"unknown event {event!r}; choose from {', '.join(EVENTS)}")
        self._hooks[event].append(callback)
        return remover(self._hooks[event], callback)

    def _emit(self, event: Event, *args: object) -> None:
        for callback in list(self._hooks[event]):
            try:
                callback(*args)  # type: ignore[arg-type]
            except Exception:  # a user's hook must never break a stream
                log.exception("labxds %s hook %r failed", event, callback)

    def emit_stream_open(self, node_id: str, stream: int) -> None:
        self._emit("stream_open", node_id, stream)

    def emit_stream_close(self, node_id: str, stream: int) -> None:
        self._emit("stream_close", node_id, stream)

    def emit_request(
        self, node_id: str, request: discovery_pb2.DiscoveryRequest | discovery_pb2.DeltaDiscoveryRequest
    ) -> None:
        self._emit("request", node_id, request)

    def emit_response(self, node_id: str, type_url: str, version: str, nonce: str, resources: list[str]) -> None:
        self._emit("response", node_id, type_url, version, nonce, resources)

    # -- streams -----------------------------------------------------------------------------

    def stream_opened(
        self, node_id: str, cluster: str, user_agent: str, client_features: Iterable[str] = ()
    ) -> None:
        now = time.time()
        with self._cond:
            node = self._nodes.setdefault(node_id, NodeStatus(node_id))
            node.cluster, node.user_agent = cluster, user_agent
            node.client_features = tuple(client_features)
            if node.streams == 0:
                node.connected_since = now
                self._gone.pop(node_id, None)
            node.streams += 1
            node.last_seen = now
            self._changed(node_id)

    def stream_closed(self, node_id: str, stream: int) -> None:
        forgotten: list[str] = []
        with self._cond:
            node = self._nodes.get(node_id)
            if node is not None:
                node.streams = max(0, node.streams - 1)
                if node.streams == 0:
                    node.connected_since = None
                    self._gone[node_id] = None
                    while len(self._gone) > self._keep_disconnected:
                        oldest = next(iter(self._gone))
                        del self._gone[oldest]
                        self._nodes.pop(oldest, None)
                        self._trace.pop(oldest, None)
                        forgotten.append(oldest)
            streams = self._settled.get(node_id)
            if streams is not None:
                streams.pop(stream, None)
                if not streams:
                    del self._settled[node_id]
            self._changed(node_id)
        for gone in forgotten:
            for hook in list(self._forget_hooks):
                hook(gone)

    def on_forget(self, callback: Callable[[str], Any]) -> Callable[[], None]:
        """Call ``callback(node_id)`` when a disconnected node is forgotten (the server drops
        what it remembers of it too); returns a function to remove it."""
        self._forget_hooks.append(callback)
        return remover(self._forget_hooks, callback)

    def settled(self, node_id: str, stream: int, snapshot: object | None) -> None:
        """A stream says it has nothing left to send and everything sent is acknowledged."""
        with self._cond:
            self._settle(node_id, stream, snapshot)

    def _settle(self, node_id: str, stream: int, snapshot: object | None) -> None:
        streams = self._settled.get(node_id)
        if snapshot is None:
            if streams is None or streams.pop(stream, None) is None:
                return  # it was not settled and is not now: nobody needs to look again
        else:
            if streams is None:
                streams = self._settled[node_id] = {}
            if streams.get(stream) is snapshot:
                return  # settled on the same snapshot as before: nothing changed
            streams[stream] = snapshot
        self._changed(node_id)

    def _changed(self, node_id: str) -> None:
        if self._waiters:  # only a waiting push looks at changes
            for dirty in self._waiters:
                dirty.add(node_id)
            self._cond.notify_all()

    # -- protocol events --------------------------------------------------------------------

    def record(self, event: TraceEvent) -> None:
        with self._cond:
            self._record(event)

    def commit(self, node_id: str, stream: int, events: list[TraceEvent], snapshot: object | None) -> None:
        """A stream's round: its trace events and whether it settled (see settled()), under one
        acquisition of the lock rather than one per event (a push to 10,000 streams)."""
        with self._cond:
            for event in events:
                self._record(event)
            self._settle(node_id, stream, snapshot)

    def _record(self, event: TraceEvent) -> None:
        node = self._nodes.get(event.node)
        if node is None:
            node = self._nodes[event.node] = NodeStatus(event.node)
        node.last_seen = event.time
        st = node.type(event.type_url)
        kind = event.kind
        if kind == "response":
            st.sent_version, st.sent_at = event.version, event.time
        elif kind == "ACK":
            st.acked_version, st.acked_at = event.version, event.time
        elif kind == "NACK":
            st.nacked_version, st.nack_error, st.nacked_at = event.version, event.error, event.time
            refused = st.refused
            refused.pop(event.version, None)
            refused[event.version] = event.error
            while len(refused) > REFUSED_KEPT:
                del refused[next(iter(refused))]
        q = self._trace.get(event.node)
        if q is None:
            q = self._trace[event.node] = deque(maxlen=self._trace_size)
        q.append(event)
        if kind == "NACK":  # a waiting push fails now; other events settle through settled()
            self._changed(event.node)

    def resumed(self, node_id: str, type_url: str, version: str) -> None:
        """``node_id`` reconnected holding ``version``, the one it is to run, so nothing is sent:
        the version counts as acknowledged (after this control plane restarted, nothing else
        would say so; the workshop's dashboard shows it)."""
        with self._cond:
            node = self._nodes.setdefault(node_id, NodeStatus(node_id))
            st = node.type(type_url)
            if st.acked_version != version:
                st.acked_version, st.acked_at = version, time.time()
            self._changed(node_id)

    def nacked_version(self, node_id: str, type_url: str) -> str | None:
        """The version of ``type_url`` that ``node_id`` NACKed last (None if none)."""
        # Read without the lock: one reference read each, atomic in CPython, and asked by every
        # stream on every round.
        node = self._nodes.get(node_id)
        st = node.types.get(type_url) if node is not None else None
        return st.nacked_version if st is not None else None

    def has_refused(self, node_id: str, type_url: str, version: str) -> bool:
        """Whether ``node_id`` NACKed ``version`` of ``type_url`` (one of its last REFUSED_KEPT NACKed
        versions): rule 4, that version is never sent to it again. Lock-free, as nacked_version."""
        node = self._nodes.get(node_id)
        st = node.types.get(type_url) if node is not None else None
        return st is not None and version in st.refused

    # -- reading -----------------------------------------------------------------------------

    def node(self, node_id: str) -> NodeStatus | None:
        with self._cond:
            return self._nodes.get(node_id)

    def connected(self) -> list[str]:
        with self._cond:
            return sorted(n for n, s in self._nodes.items() if s.streams > 0)

    def events(self, node: str | None = None) -> list[TraceEvent]:
        with self._cond:
            queues = [self._trace.get(node, ())] if node is not None else list(self._trace.values())
            merged = [e for q in queues for e in q]
        merged.sort(key=lambda e: e.time)
        return merged

    def trace_rows(self, node: str | None = None, last: int | None = None) -> list[dict[str, Any]]:
        """The trace as records (oldest first; ``time`` in seconds since the epoch)."""
        events = self.events(node)
        if last:
            events = events[-last:]
        return [
            {
                "time": e.time,
                "node": e.node,
                "stream": e.stream,
                "direction": e.direction,
                "type": short_name(e.type_url),
                "kind": e.kind,
                "version": e.version,
                "nonce": e.nonce,
                "resources": ", ".join(e.resources),
                "removed": ", ".join(e.removed),
                "error": e.error,
            }
            for e in events
        ]

    def status_rows(self) -> list[dict[str, Any]]:
        """Per node and type: versions sent, ACKed and NACKed, Envoy's last error (times in epoch seconds)."""
        with self._cond:
            return [
                {
                    "node": n.node_id,
                    "connected_since": n.connected_since,
                    "last_seen": n.last_seen,
                    "type": short_name(url),
                    "sent": st.sent_version,
                    "acked": st.acked_version,
                    "nacked": st.nacked_version,
                    "nack_error": st.nack_error,
                }
                for n in self._nodes.values()
                for url, st in sorted(n.types.items(), key=lambda kv: order_key(kv[0]))
            ]

    # -- waiting -----------------------------------------------------------------------------

    def wait_applied(
        self,
        snapshot: Snapshot,
        nodes: Iterable[str],
        timeout: float,
        since: float,
        current: Callable[[str], object],
    ) -> None:
        """Block until every node in ``nodes`` has applied ``snapshot``.

        Raises PushRejected as soon as one of them NACKs a version of this snapshot (after
        ``since``), PushTimeout naming the stragglers otherwise. ``current`` tells which snapshot
        a node should run now: if a newer push replaced ours, that node no longer counts.
        """
        remaining = set(nodes)
        versions = snapshot.versions
        deadline = time.monotonic() + timeout
        with self._cond:
            dirty = set(remaining)
            self._waiters.append(dirty)
            try:
                while True:
                    errors: dict[tuple[str, str], str] = {}
                    for node_id in dirty & remaining:
                        node = self._nodes.get(node_id)
                        if node is not None:
                            for url, st in node.types.items():
                                version = versions.get(url)
                                if _rejects(st, version, since):
                                    errors[(node_id, url)] = st.refused.get(version or "", st.nack_error or "")
                        if current(node_id) is not snapshot or self._node_settled(node_id, snapshot):
                            remaining.discard(node_id)
                    dirty.clear()
                    if errors:
                        raise PushRejected(errors)
                    if not remaining:
                        return
                    left = deadline - time.monotonic()
                    if left <= 0:
                        # A newer push may have replaced ours for some of them meanwhile.
                        late = sorted(n for n in remaining if current(n) is snapshot)
                        if not late:
                            return
                        raise PushTimeout(late, timeout)
                    self._cond.wait(left)
            finally:
                self._waiters.remove(dirty)

    def applied(self, node_id: str, snapshot: object) -> bool:
        """Whether every open stream of ``node_id`` runs ``snapshot``: nothing left to send, all
        of it ACKed (what ``push(wait=True)`` waits for)."""
        with self._cond:
            return self._node_settled(node_id, snapshot)

    def refused(self, node_id: str, snapshot: Snapshot) -> dict[str, str]:
        """The types of ``snapshot`` whose version ``node_id`` NACKed and has not ACKed since:
        type URL -> Envoy's error."""
        versions = snapshot.versions
        with self._cond:
            node = self._nodes.get(node_id)
            if node is None:
                return {}
            return {url: st.refused.get(versions.get(url) or "", st.nack_error or "")
                    for url, st in node.types.items() if _refuses(st, versions.get(url))}  # fmt: skip

    def wait_connected(self, node_id: str | None, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        with self._cond:
            changes: set[str] = set()  # registered as a waiter: streams opening notify
            self._waiters.append(changes)
            try:
                while True:
                    connected = sorted(n for n, s in self._nodes.items() if s.streams > 0)
                    if node_id is None and connected:
                        return connected[0]
                    if node_id is not None and node_id in connected:
                        return node_id
                    left = deadline - time.monotonic()
                    if left <= 0:
                        who = f"node {node_id!r}" if node_id else "no node"
                        raise TimeoutError(f"{who} connected within {timeout:g}s" if node_id is None
                                           else f"{who} did not connect within {timeout:g}s")
                    changes.clear()
                    self._cond.wait(left)
            finally:
                self._waiters.remove(changes)

    def _node_settled(self, node_id: str, snapshot: object) -> bool:
        node = self._nodes.get(node_id)
        if node is None or node.streams == 0:
            return False
        mine = self._settled.get(node_id, {})
        return len(mine) >= node.streams and all(s is snapshot for s in mine.values())


def _is_version_of(sent: str, version: str | None) -> bool:
    """A NACKed version belongs to this push if it is the push's version (or its interim form)."""
    return version is not None and (sent == version or sent.startswith(version + "+"))


def _refuses(st: TypeStatus, version: str | None) -> bool:
    """Whether the node refused exactly ``version`` and has not run it since (an interim version's
    NACK is about another state: see test_an_earlier_nack_of_the_interim_version_does_not_reject)."""
    if version is None or version not in st.refused:
        return False
    return not (st.acked_version == version and st.acked_at is not None and st.nacked_at is not None
                and st.acked_at >= st.nacked_at)


def _rejects(st: TypeStatus, version: str | None, since: float) -> bool:
    """Whether this type's NACK means the node will not apply ``version``.

    A NACK of this push's version (or its interim form) after the push began, or an earlier
    NACK of exactly this version not ACKed since: the server never resends a version a node
    refused (rule 4), so re-pushing it can never be applied and must not look like success.
    """
    if st.nacked_version is None or st.nacked_at is None or version is None:
        return False
    if st.nacked_at >= since and _is_version_of(st.nacked_version, version):
        return True
    return _refuses(st, version)
