"""The xDS protocol: State-of-the-World and Delta streams, ADS and the per-type services.

Each stream runs as one coroutine on the server's event loop. It wakes on a request or on a
snapshot change, folds everything queued into its state, then decides per type, in
make-before-break order, what the client still lacks. Decisions follow the rules in Envoy's xDS
protocol document (the comments cite them as "rule N" of docs/xds-rules.md):

* a type has at most one unanswered response; the next is computed when the ACK or NACK
  arrives, so bursts of pushes coalesce and a slow client holds back only itself;
* a version a node NACKed is never sent to it again: it waits for a newer one;
* nothing is sent that the client already holds;
* resource TTLs and heartbeats only reach clients that advertise
  ``xds.config.supports-resource-ttl`` (rule 14); the others get the same resources without.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import grpc
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf.message import DecodeError

from . import wire
from .cache import SnapshotCache
from .resource_types import (
    CLUSTER,
    ENDPOINT,
    FULL_STATE,
    LISTENER,
    REMOVED_WITH_PARENT,
    ROUTE,
    RUNTIME,
    SECRET,
    order_key,
    short_name,
)
from .snapshot import Entry, Snapshot
from .tracking import TraceEvent, Tracker

__all__ = ["XdsServer"]

log = logging.getLogger("labxds")

Authorizer = Callable[[str, Mapping[str, str]], bool]

#: Keys the server adds to the metadata an authorizer sees, for a client that presented a verified
#: certificate (mutual TLS): its common name, and its DNS names joined by commas. No client can
#: send them: a metadata key that starts with ":" is dropped before they are added.
PEER_COMMON_NAME = ":x509-common-name"
PEER_DNS_NAMES = ":x509-dns-names"


def _version_text(node: Any) -> str:
    v = node.user_agent_build_version.version
    return f"{v.major_number}.{v.minor_number}.{v.patch}" if node.HasField("user_agent_build_version") else ""


def _envoy_up_to(node: Any, version: tuple[int, int]) -> bool:
    """Whether the client is Envoy at ``version`` (major, minor) or older."""
    if node.user_agent_name != "envoy" or not node.HasField("user_agent_build_version"):
        return False
    v = node.user_agent_build_version.version
    return (v.major_number, v.minor_number) <= version


def _peer_names(context: Any) -> dict[str, str]:
    """The verified client certificate's names from gRPC's auth context (none without mTLS)."""
    try:
        auth = context.auth_context() or {}
    except Exception:  # a context without TLS support (tests' fakes)
        return {}
    names: dict[str, str] = {}
    common = auth.get("x509_common_name")
    if common:
        names[PEER_COMMON_NAME] = common[0].decode()
    dns = auth.get("x509_subject_alternative_name")
    if dns:
        names[PEER_DNS_NAMES] = ",".join(d.decode() for d in dns)
    return names

_WAKE = object()
_BEAT = object()  # the stream's heartbeat timer fired
TTL_FEATURE = "xds.config.supports-resource-ttl"
_UNKNOWN = "\x00unknown"  # a Delta resource version no snapshot has: what the client runs is unknown
_END = object()
_RETAINED = "+retained"

#: Per-type services: (service, SotW method, Delta method, type).
_TYPED_SERVICES = (
    ("envoy.service.cluster.v3.ClusterDiscoveryService", "StreamClusters", "DeltaClusters", CLUSTER),
    ("envoy.service.endpoint.v3.EndpointDiscoveryService", "StreamEndpoints", "DeltaEndpoints", ENDPOINT),
    ("envoy.service.listener.v3.ListenerDiscoveryService", "StreamListeners", "DeltaListeners", LISTENER),
    ("envoy.service.route.v3.RouteDiscoveryService", "StreamRoutes", "DeltaRoutes", ROUTE),
    ("envoy.service.secret.v3.SecretDiscoveryService", "StreamSecrets", "DeltaSecrets", SECRET),
    ("envoy.service.runtime.v3.RuntimeDiscoveryService", "StreamRuntime", "DeltaRuntime", RUNTIME),
)
_ADS = "envoy.service.discovery.v3.AggregatedDiscoveryService"


def _identity(data: bytes) -> bytes:
    return data


class XdsServer:
    """The gRPC handlers; the ControlPlane owns the server and the event loop they run on."""

    def __init__(
        self,
        cache: SnapshotCache,
        tracker: Tracker,
        *,
        identifier: str = "labxds",
        authorize: Authorizer | None = None,
        heartbeat_interval: float | None = None,
        sotw_heartbeat: str = "resend",
    ) -> None:
        self.cache = cache
        self.tracker = tracker
        self.authorize = authorize
        # Rule 14: seconds between heartbeats to clients holding resources with a TTL; None
        # means half the shortest TTL the client holds.
        if heartbeat_interval is not None and not heartbeat_interval > 0:
            raise ValueError(f"heartbeat_interval must be positive seconds, not {heartbeat_interval!r}")
        self.heartbeat_interval = heartbeat_interval
        # What a SotW heartbeat carries. "bare": the protocol's heartbeat, Resource wrappers
        # without a body. Envoy (1.40) mishandles those: it leaves them out of the update, so a
        # bare LDS/CDS heartbeat deletes the listeners/clusters it beats for, and it refreshes
        # no TTL either. "resend" (the default): the resources again, bodies included, at the
        # same version: Envoy refreshes the TTLs and finds nothing changed. Delta heartbeats
        # are always bare; Envoy handles those as the protocol says.
        if sotw_heartbeat not in ("resend", "bare"):
            raise ValueError(f"sotw_heartbeat is 'resend' or 'bare', not {sotw_heartbeat!r}")
        self.sotw_heartbeat = sotw_heartbeat
        self._control_plane = wire.control_plane(identifier)
        self._stream_ids = itertools.count(1)
        self._streams: set[_Stream] = set()
        # Streams to wake after a snapshot change, woken by one callback on the loop: one
        # wake-up of the loop per push rather than one per stream (5,000 streams: 24% of a push).
        self._wake_lock = threading.Lock()
        self._to_wake: list[_Stream] = []
        # Delta: per node and type, the resource versions and removals the node refused. They
        # outlive the stream, so a reconnect does not bring a NACKed version back (rule 4).
        self.delta_refused: dict[tuple[str, str], tuple[dict[str, str], dict[str, str]]] = {}
        tracker.on_forget(self._forget)

    def _forget(self, node_id: str) -> None:
        """The tracker forgot a long-disconnected node: so does the server."""
        for key in [k for k in self.delta_refused if k[0] == node_id]:
            del self.delta_refused[key]

    def handlers(self) -> list[grpc.GenericRpcHandler]:
        def sotw(type_url: str | None) -> grpc.RpcMethodHandler:
            async def handle(requests: AsyncIterator[Any], context: Any) -> None:
                await self._serve(_SotwStream, requests, context, type_url)

            return grpc.stream_stream_rpc_method_handler(
                handle,
                request_deserializer=discovery_pb2.DiscoveryRequest.FromString,
                response_serializer=_identity,
            )

        def delta(type_url: str | None) -> grpc.RpcMethodHandler:
            async def handle(requests: AsyncIterator[Any], context: Any) -> None:
                await self._serve(_DeltaStream, requests, context, type_url)

            return grpc.stream_stream_rpc_method_handler(
                handle,
                request_deserializer=discovery_pb2.DeltaDiscoveryRequest.FromString,
                response_serializer=_identity,
            )

        out = [
            grpc.method_handlers_generic_handler(
                _ADS, {"StreamAggregatedResources": sotw(None), "DeltaAggregatedResources": delta(None)}
            )
        ]
        for service, stream_method, delta_method, url in _TYPED_SERVICES:
            out.append(
                grpc.method_handlers_generic_handler(
                    service, {stream_method: sotw(url), delta_method: delta(url)}
                )
            )
        return out

    @property
    def stream_count(self) -> int:
        return len(self._streams)

    def wake_soon(self, stream: _Stream) -> None:
        """Wake ``stream`` on its loop; callable from any thread (the cache calls it)."""
        with self._wake_lock:
            self._to_wake.append(stream)
            if len(self._to_wake) > 1:
                return  # a flush is already scheduled and will take this one too
        stream.loop.call_soon_threadsafe(self._flush_wakes)

    def _flush_wakes(self) -> None:
        with self._wake_lock:
            streams, self._to_wake = self._to_wake, []
        for stream in streams:
            stream.queue_wake()

    async def _serve(self, kind: type[_Stream], requests: AsyncIterator[Any], context: Any, type_url: str | None) -> None:
        stream = kind(self, next(self._stream_ids), context, type_url)
        self._streams.add(stream)
        try:
            await stream.run(requests)
        finally:
            self._streams.discard(stream)


# -- streams ------------------------------------------------------------------------------


class _Stream:
    """What SotW and Delta streams share: node, queue, wake-ups, the processing loop."""

    delta = False

    def __init__(self, server: XdsServer, sid: int, context: Any, fixed_type: str | None) -> None:
        self.server = server
        self.id = sid
        self.context = context
        self.fixed_type = fixed_type
        self.node_id: str | None = None
        self.queue: asyncio.Queue[Any] = asyncio.Queue()
        self.loop = asyncio.get_running_loop()
        self._wake_queued = False
        self._unwatch: Callable[[], None] | None = None
        self.snapshot: Snapshot | None = None
        self._nonce = 0
        self.ttl = False  # the client supports resource TTLs (rule 14)
        self.fragile_ttl = False  # ... and is an Envoy known to crash when an RDS/EDS TTL runs out
        self._beat_timer: asyncio.TimerHandle | None = None

    # Called by the cache from any thread.
    def wake(self) -> None:
        self.server.wake_soon(self)

    def queue_wake(self) -> None:
        if not self._wake_queued:
            self._wake_queued = True
            self.queue.put_nowait(_WAKE)

    # Rule 14: one timer per stream, on the event loop, armed only while the client holds
    # resources with a TTL. It only queues a _BEAT: the stream's own loop sends the heartbeats.
    def _timer_fired(self) -> None:
        self._beat_timer = None
        self.queue.put_nowait(_BEAT)

    def _arm_heartbeats(self) -> None:
        ttls = self.held_ttls()
        if not ttls:
            if self._beat_timer is not None:
                self._beat_timer.cancel()
                self._beat_timer = None
            return
        interval = self.server.heartbeat_interval or min(ttls) / 2
        if self._beat_timer is not None:
            if self._beat_timer.when() <= self.loop.time() + interval:
                return
            self._beat_timer.cancel()  # a shorter TTL arrived: beat sooner
        self._beat_timer = self.loop.call_later(interval, self._timer_fired)

    async def _read(self, requests: AsyncIterator[Any]) -> None:
        try:
            async for request in requests:
                self.queue.put_nowait(request)
        except Exception as exc:  # the client went away or sent garbage
            self.queue.put_nowait(exc)
        else:
            self.queue.put_nowait(_END)

    async def run(self, requests: AsyncIterator[Any]) -> None:
        tracker = self.server.tracker
        reader = asyncio.create_task(self._read(requests))
        try:
            while True:
                items = [await self.queue.get()]
                while not self.queue.empty():
                    items.append(self.queue.get_nowait())
                ended = False
                for item in items:
                    if item is _WAKE:
                        self._wake_queued = False
                    elif item is _BEAT:
                        self.beats_due()
                    elif item is _END:
                        ended = True
                    elif isinstance(item, BaseException):
                        if isinstance(item, DecodeError):
                            # Bytes that are no request: say so, not end the stream as if all was well.
                            await self.context.abort(
                                grpc.StatusCode.INVALID_ARGUMENT, f"could not parse the request: {item}"
                            )
                        if not isinstance(item, (asyncio.CancelledError, grpc.aio.AioRpcError)):
                            log.debug("stream %d ended: %r", self.id, item)
                        ended = True
                    else:
                        await self._accept(item)
                if ended:
                    return
                if self.node_id is None:
                    continue
                self.snapshot = self.server.cache.get(self.node_id)
                responses = self.respond()
                if self.ttl:
                    responses += self.heartbeats()
                    self._arm_heartbeats()
                for response in responses:
                    await self.context.write(response)
                tracker.settled(self.node_id, self.id, self.snapshot if self.is_settled() else None)
        finally:
            reader.cancel()
            if self._beat_timer is not None:
                self._beat_timer.cancel()
            if self._unwatch is not None:
                self._unwatch()
            if self.node_id is not None:
                tracker.stream_closed(self.node_id, self.id)
                tracker.emit("stream_close", self.node_id, self.id)

    async def _accept(self, request: Any) -> None:
        if self.node_id is None:
            await self._open(request)
        url = request.type_url or self.fixed_type or ""
        if self.fixed_type is not None and url != self.fixed_type:
            await self.context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"this service serves {self.fixed_type}, the request asked for {url}",
            )
        if not url:
            await self.context.abort(grpc.StatusCode.INVALID_ARGUMENT, "request without type_url on an ADS stream")
        self.server.tracker.emit("request", self.node_id, request)
        self.on_request(url, request)

    async def _open(self, request: Any) -> None:
        # Rule 1: the node is only guaranteed on the first request, so the stream is keyed on it.
        node = request.node
        if not request.HasField("node") or not node.id:
            await self.context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                "the first request on a stream must carry a node with an id",
            )
        server = self.server
        if server.authorize is not None:
            metadata = {
                k: v for k, v in (self.context.invocation_metadata() or ()) if isinstance(v, str) and not k.startswith(":")
            }
            metadata.update(_peer_names(self.context))
            if not server.authorize(node.id, metadata):
                log.warning("labxds refused node %r: not authorized", node.id)
                await self.context.abort(
                    grpc.StatusCode.PERMISSION_DENIED, f"node {node.id!r} is not authorized"
                )
        self.node_id = node.id
        # Rule 14: only the first request's node says whether the client supports TTLs.
        self.ttl = TTL_FEATURE in node.client_features
        self.fragile_ttl = self.ttl and not self.delta and _envoy_up_to(node, (1, 40))
        self.agent_version = _version_text(node)
        agent = f"{node.user_agent_name} {node.user_agent_version or self.agent_version}"
        server.tracker.stream_opened(node.id, node.cluster, agent.strip())
        self._unwatch = server.cache.watch(node.id, self.wake)
        server.tracker.emit("stream_open", node.id, self.id)

    def trace(self, direction: str, kind: str, url: str, version: str, nonce: str,
              resources: Iterable[str], removed: Iterable[str] = (), error: str = "") -> None:
        assert self.node_id is not None
        self.server.tracker.record(TraceEvent(
            time.time(), self.node_id, self.id, direction, kind, url, version, nonce,
            tuple(resources), tuple(removed), error,
        ))

    def next_nonce(self) -> str:
        self._nonce += 1
        return str(self._nonce)

    # Subclasses
    def on_request(self, url: str, request: Any) -> None:
        raise NotImplementedError

    def respond(self) -> list[bytes]:
        raise NotImplementedError

    def is_settled(self) -> bool:
        raise NotImplementedError

    def held_ttls(self) -> list[float]:
        """The TTLs of the resources the client holds or is being sent."""
        raise NotImplementedError

    def beats_due(self) -> None:
        """The heartbeat timer fired: every type holding resources with a TTL owes one."""
        raise NotImplementedError

    def heartbeats(self) -> list[bytes]:
        """Heartbeats owed by types that are idle (rule 14)."""
        raise NotImplementedError


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


class _SotwStream(_Stream):
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
            # A client that reconnects says which version it runs; _plan adopts it if current.
            st.client_version = req.version_info
            self.trace("received", "request", url, req.version_info, "", req.resource_names)
            return
        if st.beating:
            # The answer to a heartbeat: nothing was applied, held and sent stay as they are.
            _heartbeat_answered(self, st, url, req.version_info, req, list(req.resource_names))
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
        return self.server.tracker.nacked_version(self.node_id or "", url) == version

    def _plan(self, url: str, snap: Snapshot) -> _Plan | None:
        """What this type should send now, or None if the client has (or refused) it all."""
        st = self.types[url]
        if st.outstanding:
            return None
        if not st.wildcard and not st.names:
            return None  # Rule 8: unsubscribed from everything of this type
        version = snap.version(url)
        chosen = self._choose(st, snap)
        if st.sent_version is None and st.client_version and st.client_version == version and not st.unsure:
            st.sent = st.held = chosen
            st.sent_version = st.held_version = version
            return None
        if self._refused(url, version):
            return None
        if url in FULL_STATE:
            # Rule 9: full state; a resource left out is deleted, so removals count as changes.
            if version == st.sent_version and _same(chosen, st.sent) and not st.unsure:
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
        rds = self.types.get(ROUTE)
        needed = _needs(self.types[LISTENER].sent.values()) if LISTENER in self.types else set()
        return bool(needed) and (rds is None or not (rds.wildcard or needed <= rds.names))

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
            if url == CLUSTER and plan.removed and self._routes_pending(snap):
                # Make before break: keep the clusters being removed until the listeners and
                # routes that stop using them have been delivered.
                keep = {n: st.sent[n] for n in plan.removed}
                plan = _Plan(plan.version + _RETAINED, {**plan.entries, **keep})
                same = plan.version == st.sent_version and _same(plan.entries, st.sent) and not st.unsure
                if same or self._refused(url, plan.version):
                    continue
            if url == CLUSTER and ENDPOINT in self.types:
                rewarm = _rewarmed_endpoints({n: e.version for n, e in st.sent.items()}, plan.entries.values())
                eds = self.types[ENDPOINT]
                eds.sent = {n: e for n, e in eds.sent.items() if n not in rewarm}
            nonce = self.next_nonce()
            st.nonce, st.outstanding, st.unsure = nonce, True, False
            st.beat_due = False  # the response carries every resource of the type, TTLs included
            st.sent, st.sent_version = plan.entries, plan.version
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
            self.server.tracker.emit("response", self.node_id, url, plan.version, nonce, list(plan.entries))
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
        return _dependencies_asked(self.types, held.get(CLUSTER, ()), held.get(LISTENER, ()))

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


def _heartbeat_answered(stream: _Stream, st: Any, url: str, version: str, req: Any,
                        names: list[str], unsubs: Iterable[str] = ()) -> None:
    """The ACK or NACK of a heartbeat: traced as such, it changes nothing the client holds."""
    st.beating = False
    if req.HasField("error_detail"):
        # Not a refused configuration: a heartbeat carries none. Shown, never counted as a NACK
        # (rule 4 must not bar the version the client runs).
        error = req.error_detail.message.strip()
        log.warning("node %s refused a %s heartbeat: %s", stream.node_id, url, error)
        stream.trace("received", "heartbeat NACK", url, version, req.response_nonce, names, unsubs, error=error)
    else:
        stream.trace("received", "heartbeat ACK", url, version, req.response_nonce, names, unsubs)


def _rewarmed_endpoints(held: Mapping[str, str], sending: Iterable[Entry]) -> set[str]:
    """Load assignments to send again because the clusters naming them change.

    Rule 11: Envoy replaces a changed cluster with a new one that warms until it receives its
    ClusterLoadAssignment, even an unchanged one; without it the cluster warms until Envoy's
    initial fetch timeout.
    """
    return {n for e in sending if e.name in held and held[e.name] != e.version for n in e.needs}


def _same(a: Mapping[str, Entry], b: Mapping[str, Entry]) -> bool:
    return a.keys() == b.keys() and all(b[n].version == e.version for n, e in a.items())


def _dependencies_asked(types: Mapping[str, Any], clusters: Iterable[Entry], listeners: Iterable[Entry]) -> bool:
    """Whether the client asks for the EDS and RDS resources its clusters and listeners name.

    EDS and RDS are asked for only once the client has the clusters and listeners naming
    them: until it has asked (and got them), it has not applied the snapshot.
    """
    for url, needed in ((ENDPOINT, _needs(clusters)), (ROUTE, _needs(listeners))):
        st = types.get(url)
        if needed and (st is None or not (st.wildcard or needed <= st.names)):
            return False
    return True


def _needs(entries: Iterable[Entry]) -> set[str]:
    """The EDS (for clusters) or RDS (for listeners) names these resources make a client ask for."""
    return {n for e in entries for n in e.needs}


# -- Delta ------------------------------------------------------------------------------------


@dataclass
class _DeltaType:
    url: str
    wildcard: bool = False
    names: set[str] = field(default_factory=set)
    known: dict[str, str] = field(default_factory=dict)  # name -> version the client holds
    nonce: str = ""
    outstanding: bool = False
    pending: dict[str, tuple[str | None, str | None]] = field(default_factory=dict)
    nacked: dict[str, str] = field(default_factory=dict)  # name -> version the client refused
    nacked_removals: dict[str, str] = field(default_factory=dict)  # name -> system version
    system_version: str = ""
    beating: bool = False  # the unanswered response (nonce) is a heartbeat
    beat_due: bool = False  # a heartbeat waits for the type to be idle


class _DeltaStream(_Stream):
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
            if not req.resource_names_subscribe:
                st.wildcard = True  # legacy wildcard: a first request naming nothing
        # Rule 13: subscription changes count even when the nonce is stale.
        for name in req.resource_names_subscribe:
            if name == "*":
                st.wildcard = True
            else:
                if not first or name not in req.initial_resource_versions:
                    st.known.pop(name, None)  # a re-subscribed resource is sent again
                st.names.add(name)
        for name in req.resource_names_unsubscribe:
            if name == "*":
                st.wildcard = False
            elif name in st.names:
                st.names.discard(name)
                st.known.pop(name, None)
            # unsubscribing a name never subscribed is ignored
        subs, unsubs = list(req.resource_names_subscribe), list(req.resource_names_unsubscribe)
        if not req.response_nonce:
            self.trace("received", "request", url, "", "", subs, unsubs)
            return
        if req.response_nonce != st.nonce:
            self.trace("received", "stale", url, "", req.response_nonce, subs, unsubs)
            return
        if st.beating:
            _heartbeat_answered(self, st, url, st.system_version, req, subs, unsubs)
            return
        st.outstanding = False
        if req.HasField("error_detail"):
            for name, (old, new) in st.pending.items():
                if new is not None:
                    # Envoy applies the valid resources of a refused update (rule 15): which
                    # version the client runs is unknown, so any other version (a rollback
                    # included) is sent, and a later removal is announced.
                    st.known[name] = _UNKNOWN
                    st.nacked[name] = new
                else:
                    if old is not None:
                        st.known[name] = old
                    # Rule 4 holds for removals too: the refused removal waits for a new version.
                    st.nacked_removals[name] = st.system_version
            self.trace("received", "NACK", url, st.system_version, req.response_nonce, subs, unsubs,
                       error=req.error_detail.message.strip())
        else:
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
        send = [e for e in candidates if st.known.get(e.name) != e.version and st.nacked.get(e.name) != e.version]
        version = snap.version(url)
        removed = [
            n for n in st.known
            if n not in entries and (st.wildcard or n in st.names) and st.nacked_removals.get(n) != version
        ] if url not in REMOVED_WITH_PARENT else []
        if not send and not removed:
            return None
        return send, removed

    def _routes_pending(self, snap: Snapshot) -> bool:
        return any(
            url in self.types and (self.types[url].outstanding or self._plan(url, snap) is not None)
            for url in (LISTENER, ROUTE)
        )

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
            if url == CLUSTER and removed and self._routes_pending(snap):
                removed = []  # Rule 12: remove clusters only after the routes moved away.
                if not send:
                    continue
            st = self.types[url]
            if url == CLUSTER and ENDPOINT in self.types:
                eds = self.types[ENDPOINT]
                for name in _rewarmed_endpoints(st.known, send):
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
            self.server.tracker.emit("response", self.node_id, url, st.system_version, nonce, [e.name for e in send])
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
        return _dependencies_asked(self.types, held.get(CLUSTER, ()), held.get(LISTENER, ()))

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
