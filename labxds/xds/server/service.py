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

import itertools
import logging
import threading
from collections.abc import AsyncIterator
from typing import Any

import grpc
from envoy.service.discovery.v3 import discovery_pb2

from .. import wire
from ..cache import ConfigWatcher
from ..resource_types import (
    CLUSTER,
    ENDPOINT,
    LISTENER,
    ROUTE,
    RUNTIME,
    SECRET,
)
from ..snapshot import Entry
from ..tracking import Tracker
from .delta import DeltaStream
from .sotw import SotwStream
from .stream import PEER_COMMON_NAME, PEER_DNS_NAMES, Authorizer, Stream

__all__ = ["Authorizer", "PEER_COMMON_NAME", "PEER_DNS_NAMES", "XdsServer"]

log = logging.getLogger("labxds")

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
ISSUED_KEPT = 16  # SotW versions remembered per node and type: a reconnecting client holds a recent one


def _identity(data: bytes) -> bytes:
    return data


class XdsServer:
    """The gRPC handlers; the ControlPlane owns the server and the event loop they run on."""

    def __init__(
        self,
        cache: ConfigWatcher,
        tracker: Tracker,
        *,
        identifier: str = "labxds",
        authorize: Authorizer | None = None,
        heartbeat_interval: float | None = None,
        sotw_heartbeat: str = "resend",
        trust_reconnect_versions: bool = True,
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
        self.max_streams: int | None = None  # more streams than this are refused (ControlPlane sets it)
        self.trust_reconnect_versions = trust_reconnect_versions
        self._control_plane = wire.control_plane(identifier)
        self._stream_ids = itertools.count(1)
        self._streams: set[Stream] = set()
        # Streams to wake after a snapshot change, woken by one callback on the loop: one
        # wake-up of the loop per push rather than one per stream (5,000 streams: 24% of a push).
        self._wake_lock = threading.Lock()
        self._to_wake: list[Stream] = []
        # Delta: per node and type, the resource versions and removals the node refused. They
        # outlive the stream, so a reconnect does not bring a NACKed version back (rule 4).
        self.delta_refused: dict[tuple[str, str], tuple[dict[str, dict[str, None]], dict[str, dict[str, None]]]] = {}
        # SotW: per node and type, the version it last ACKed and what that response held. A client
        # that reconnects says which version it runs; knowing its resources keeps make-before-break
        # (rule 12) when the next version removes some of them (found by the protocol's state
        # machine: reconnect, NACK, then a cluster removed before the route that used it moved).
        self.sotw_acked: dict[tuple[str, str], tuple[str, dict[str, Entry]]] = {}
        # SotW: per node and type, the last versions this server sent. Without
        # trust_reconnect_versions, a reconnecting client's version is taken as current only if
        # it is one of these: a label the client got from a control plane that ran before this one
        # may name other content (rule 16).
        self.sotw_issued: dict[tuple[str, str], dict[str, None]] = {}
        tracker.on_forget(self._forget)

    def _forget(self, node_id: str) -> None:
        """The tracker forgot a long-disconnected node: so does the server."""
        for key in [k for k in self.delta_refused if k[0] == node_id]:
            del self.delta_refused[key]
        for key in [k for k in self.sotw_acked if k[0] == node_id]:
            del self.sotw_acked[key]
        for key in [k for k in self.sotw_issued if k[0] == node_id]:
            del self.sotw_issued[key]

    def issued(self, node_id: str, url: str, version: str) -> None:
        """Remember that ``version`` of ``url`` went to ``node_id`` (the last few per node and type)."""
        recent = self.sotw_issued.setdefault((node_id, url), {})
        recent.pop(version, None)
        recent[version] = None
        while len(recent) > ISSUED_KEPT:
            del recent[next(iter(recent))]

    def adopts(self, node_id: str, url: str, version: str) -> bool:
        """Whether a reconnecting client that says it runs ``version`` is believed (rule 16)."""
        return self.trust_reconnect_versions or version in self.sotw_issued.get((node_id, url), ())

    def handlers(self) -> list[grpc.GenericRpcHandler]:
        def sotw(type_url: str | None) -> grpc.RpcMethodHandler:
            async def handle(requests: AsyncIterator[Any], context: Any) -> None:
                await self._serve(SotwStream, requests, context, type_url)

            return grpc.stream_stream_rpc_method_handler(
                handle,
                request_deserializer=discovery_pb2.DiscoveryRequest.FromString,
                response_serializer=_identity,
            )

        def delta(type_url: str | None) -> grpc.RpcMethodHandler:
            async def handle(requests: AsyncIterator[Any], context: Any) -> None:
                await self._serve(DeltaStream, requests, context, type_url)

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

    def wake_soon(self, stream: Stream) -> None:
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

    async def _serve(self, kind: type[Stream], requests: AsyncIterator[Any], context: Any, type_url: str | None) -> None:
        if self.max_streams is not None and len(self._streams) >= self.max_streams:
            log.warning("labxds refused a stream: %d streams open, the most it holds", len(self._streams))
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"this control plane holds at most {self.max_streams} streams and has {len(self._streams)} open: "
                "retry later, or raise ControlPlane(max_streams=...)",
            )
        stream = kind(self, next(self._stream_ids), context, type_url)
        self._streams.add(stream)
        try:
            await stream.run(requests)
        finally:
            self._streams.discard(stream)


# -- streams ------------------------------------------------------------------------------
