"""What SotW and Delta streams share: the stream's life (open, authorize, requests, wake-ups,
heartbeats, close), its trace, and the constants both variants use."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf.message import DecodeError

from ..resource_types import (
    CLUSTER,
    ENDPOINT,
    ROUTE,
)
from ..snapshot import Entry, Snapshot
from ..tracking import TraceEvent

if TYPE_CHECKING:
    from .service import XdsServer

__all__ = [
    "BEAT",
    "END",
    "PEER_COMMON_NAME",
    "PEER_DNS_NAMES",
    "RETAINED",
    "TTL_FEATURE",
    "UNKNOWN",
    "WAKE",
    "Authorizer",
    "Stream",
    "dependencies_asked",
    "envoy_up_to",
    "heartbeat_answered",
    "needed_names",
    "peer_names",
    "rewarmed_endpoints",
    "same_entries",
    "version_text",
]

log = logging.getLogger("labxds")

Authorizer = Callable[[str, Mapping[str, str]], bool]

#: Keys the server adds to the metadata an authorizer sees, for a client that presented a verified
#: certificate (mutual TLS): its common name, and its DNS names joined by commas. No client can
#: send them: a metadata key that starts with ":" is dropped before they are added.
PEER_COMMON_NAME = ":x509-common-name"
PEER_DNS_NAMES = ":x509-dns-names"


def version_text(node: Any) -> str:
    v = node.user_agent_build_version.version
    return f"{v.major_number}.{v.minor_number}.{v.patch}" if node.HasField("user_agent_build_version") else ""


def envoy_up_to(node: Any, version: tuple[int, int]) -> bool:
    """Whether the client is Envoy at ``version`` (major, minor) or older."""
    if node.user_agent_name != "envoy" or not node.HasField("user_agent_build_version"):
        return False
    v = node.user_agent_build_version.version
    return (v.major_number, v.minor_number) <= version


def peer_names(context: Any) -> dict[str, str]:
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

WAKE = object()
BEAT = object()  # the stream's heartbeat timer fired
TTL_FEATURE = "xds.config.supports-resource-ttl"
UNKNOWN = "\x00unknown"  # a Delta resource version no snapshot has: what the client runs is unknown
END = object()
RETAINED = "+retained"


class Stream:
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
        # This round's trace events, handed to the tracker with the round's outcome under one
        # acquisition of its lock (a NACK is recorded at once: rule 4 reads it in the same round).
        self._events: list[TraceEvent] = []

    # Called by the cache from any thread.
    def wake(self) -> None:
        self.server.wake_soon(self)

    def queue_wake(self) -> None:
        if not self._wake_queued:
            self._wake_queued = True
            self.queue.put_nowait(WAKE)

    # Rule 14: one timer per stream, on the event loop, armed only while the client holds
    # resources with a TTL. It only queues a BEAT: the stream's own loop sends the heartbeats.
    def _timer_fired(self) -> None:
        self._beat_timer = None
        self.queue.put_nowait(BEAT)

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
            self.queue.put_nowait(END)

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
                    if item is WAKE:
                        self._wake_queued = False
                    elif item is BEAT:
                        self.beats_due()
                    elif item is END:
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
                # Before the writes, so the trace shows a response before the client can answer it.
                # A round that sends something leaves it unanswered: not settled either way.
                events, self._events = self._events, []
                tracker.commit(self.node_id, self.id, events, self.snapshot if self.is_settled() else None)
                for response in responses:
                    await self.context.write(response)
        finally:
            reader.cancel()
            if self._events:
                for event in self._events:
                    tracker.record(event)
                self._events = []
            if self._beat_timer is not None:
                self._beat_timer.cancel()
            if self._unwatch is not None:
                self._unwatch()
            if self.node_id is not None:
                tracker.stream_closed(self.node_id, self.id)
                tracker.emit_stream_close(self.node_id, self.id)

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
        assert self.node_id is not None  # set by the stream's first request
        self.server.tracker.emit_request(self.node_id, request)
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
            metadata.update(peer_names(self.context))
            if not server.authorize(node.id, metadata):
                log.warning("labxds refused node %r: not authorized", node.id)
                await self.context.abort(
                    grpc.StatusCode.PERMISSION_DENIED, f"node {node.id!r} is not authorized"
                )
        self.node_id = node.id
        # Rule 14: only the first request's node says whether the client supports TTLs.
        self.ttl = TTL_FEATURE in node.client_features
        self.fragile_ttl = self.ttl and not self.delta and envoy_up_to(node, (1, 40))
        self.agent_version = version_text(node)
        agent = f"{node.user_agent_name} {node.user_agent_version or self.agent_version}"
        server.tracker.stream_opened(node.id, node.cluster, agent.strip(), node.client_features)
        self._unwatch = server.cache.watch(node.id, self.wake)
        server.tracker.emit_stream_open(node.id, self.id)

    def trace(self, direction: str, kind: str, url: str, version: str, nonce: str,
              resources: Iterable[str], removed: Iterable[str] = (), error: str = "") -> None:
        assert self.node_id is not None
        event = TraceEvent(time.time(), self.node_id, self.id, direction, kind, url, version, nonce,
                           tuple(resources), tuple(removed), error)
        if kind == "NACK":
            self.server.tracker.record(event)
        else:
            self._events.append(event)

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



def heartbeat_answered(stream: Stream, st: Any, url: str, version: str, req: Any,
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


def rewarmed_endpoints(held: Mapping[str, str], sending: Iterable[Entry]) -> set[str]:
    """Load assignments to send again because the clusters naming them change.

    Rule 11: Envoy replaces a changed cluster with a new one that warms until it receives its
    ClusterLoadAssignment, even an unchanged one; without it the cluster warms until Envoy's
    initial fetch timeout.
    """
    return {n for e in sending if e.name in held and held[e.name] != e.version for n in e.needs}


def same_entries(a: Mapping[str, Entry], b: Mapping[str, Entry]) -> bool:
    return a.keys() == b.keys() and all(b[n].version == e.version for n, e in a.items())


def dependencies_asked(types: Mapping[str, Any], clusters: Iterable[Entry], listeners: Iterable[Entry]) -> bool:
    """Whether the client asks for the EDS and RDS resources its clusters and listeners name.

    EDS and RDS are asked for only once the client has the clusters and listeners naming
    them: until it has asked (and got them), it has not applied the snapshot.
    """
    for url, needed in ((ENDPOINT, needed_names(clusters)), (ROUTE, needed_names(listeners))):
        st = types.get(url)
        if needed and (st is None or not (st.wildcard or needed <= st.names)):
            return False
    return True


def cluster_refs(entries: Iterable[Entry]) -> set[str]:
    """The clusters these routes (or listeners, with inline routes or TCP proxies) send traffic to."""
    return {name for e in entries for url, name in e.refs if url == CLUSTER}


def needed_names(entries: Iterable[Entry]) -> set[str]:
    """The EDS (for clusters) or RDS (for listeners) names these resources make a client ask for."""
    return {n for e in entries for n in e.needs}


# -- Delta ------------------------------------------------------------------------------------
