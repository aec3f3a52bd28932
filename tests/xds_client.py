"""A small xDS client of the tests' own: it speaks the protocol step by step.

Envoy hides the protocol behind its behaviour; this client shows it. Each request is
written explicitly (``send``), each response is read back parsed (``recv``), and
``expect_nothing`` asserts the server stays silent. SotW and Delta, over ADS or over
the per-type services (StreamClusters, DeltaListeners, ...).

It is deliberately independent of labxds's server code: it uses grpcio's own
serializers and the xds-protos messages, so a bug in labxds's wire encoding shows up
as a parse failure or a wrong field here.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Mapping

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.rpc import status_pb2

CLUSTER = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
ENDPOINT = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
LISTENER = "type.googleapis.com/envoy.config.listener.v3.Listener"
ROUTE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
SECRET = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
RUNTIME = "type.googleapis.com/envoy.service.runtime.v3.Runtime"
#: A SotW resource in a Resource wrapper (rule 14: how SotW carries a TTL)
RESOURCE = "type.googleapis.com/envoy.service.discovery.v3.Resource"
TTL_FEATURE = "xds.config.supports-resource-ttl"

ADS = "/envoy.service.discovery.v3.AggregatedDiscoveryService/"
#: type URL -> (SotW method path, Delta method path) of its per-type service
SERVICES = {
    CLUSTER: ("/envoy.service.cluster.v3.ClusterDiscoveryService/StreamClusters",
              "/envoy.service.cluster.v3.ClusterDiscoveryService/DeltaClusters"),
    ENDPOINT: ("/envoy.service.endpoint.v3.EndpointDiscoveryService/StreamEndpoints",
               "/envoy.service.endpoint.v3.EndpointDiscoveryService/DeltaEndpoints"),
    LISTENER: ("/envoy.service.listener.v3.ListenerDiscoveryService/StreamListeners",
               "/envoy.service.listener.v3.ListenerDiscoveryService/DeltaListeners"),
    ROUTE: ("/envoy.service.route.v3.RouteDiscoveryService/StreamRoutes",
            "/envoy.service.route.v3.RouteDiscoveryService/DeltaRoutes"),
    SECRET: ("/envoy.service.secret.v3.SecretDiscoveryService/StreamSecrets",
             "/envoy.service.secret.v3.SecretDiscoveryService/DeltaSecrets"),
    RUNTIME: ("/envoy.service.runtime.v3.RuntimeDiscoveryService/StreamRuntime",
              "/envoy.service.runtime.v3.RuntimeDiscoveryService/DeltaRuntime"),
}

_CLOSE = object()


class StreamEnded(AssertionError):
    """The server ended the stream; ``code`` and ``details`` say how."""

    def __init__(self, code: grpc.StatusCode | None, details: str | None) -> None:
        self.code, self.details = code, details
        super().__init__(f"stream ended: {code} {details}")


class _Base:
    delta = False

    def __init__(
        self,
        address: str,
        node: str | None = "node-a",
        *,
        service: str | None = None,
        cluster: str = "test-cluster",
        client_features: Iterable[str] = (),
        channel: grpc.Channel | None = None,
    ) -> None:
        self.address = address
        self.node_id = node
        self.node = base_pb2.Node(id=node or "", cluster=cluster, user_agent_name="labxds-tests",
                                  client_features=list(client_features))
        self._own_channel = channel is None
        self.channel = channel or grpc.insecure_channel(address)
        if service is None:
            method = ADS + ("DeltaAggregatedResources" if self.delta else "StreamAggregatedResources")
        else:
            method = SERVICES[service][1 if self.delta else 0]
        request_cls = discovery_pb2.DeltaDiscoveryRequest if self.delta else discovery_pb2.DiscoveryRequest
        response_cls = discovery_pb2.DeltaDiscoveryResponse if self.delta else discovery_pb2.DiscoveryResponse
        rpc = self.channel.stream_stream(
            method,
            request_serializer=request_cls.SerializeToString,
            response_deserializer=response_cls.FromString,
        )
        self._requests: queue.Queue = queue.Queue()
        self._responses: queue.Queue = queue.Queue()
        self._sent_first = False
        self.sent: list = []  # every request written, for inspection
        self.received: list = []  # every response read
        self._call = rpc(self._request_iter(), wait_for_ready=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    # -- plumbing -----------------------------------------------------------------------------

    def _request_iter(self):
        while True:
            item = self._requests.get()
            if item is _CLOSE:
                return
            yield item

    def _read(self) -> None:
        try:
            for response in self._call:
                self._responses.put(response)
        except grpc.RpcError as exc:
            self._responses.put(StreamEnded(exc.code(), exc.details()))
        else:
            self._responses.put(StreamEnded(grpc.StatusCode.OK, ""))

    def _with_node(self, request, node: bool | None):
        include = (not self._sent_first) if node is None else node
        if include and self.node_id is not None:
            request.node.CopyFrom(self.node)
        self._sent_first = True
        return request

    def _put(self, request) -> None:
        self.sent.append(request)
        self._requests.put(request)

    # -- reading ------------------------------------------------------------------------------

    def recv(self, timeout: float = 10.0):
        """The next response, parsed; raises StreamEnded if the server closed the stream."""
        try:
            item = self._responses.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no response within {timeout}s") from None
        if isinstance(item, StreamEnded):
            self._responses.put(item)  # stays ended for later reads
            raise item
        self.received.append(item)
        return item

    def expect_nothing(self, timeout: float = 0.3) -> None:
        """Assert the server sends nothing within ``timeout``."""
        try:
            item = self._responses.get(timeout=timeout)
        except queue.Empty:
            return
        if isinstance(item, StreamEnded):
            self._responses.put(item)
            raise item
        raise AssertionError(f"expected no response, got {describe(item)}")

    def ended(self, timeout: float = 10.0) -> StreamEnded:
        """Wait for the stream to end (skipping responses); returns how it ended."""
        while True:
            try:
                item = self._responses.get(timeout=timeout)
            except queue.Empty:
                raise AssertionError(f"stream still open after {timeout}s") from None
            if isinstance(item, StreamEnded):
                self._responses.put(item)
                return item

    def close(self) -> None:
        self._requests.put(_CLOSE)
        self._call.cancel()
        self._reader.join(timeout=5)
        if self._own_channel:
            self.channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SotwClient(_Base):
    """State-of-the-World: DiscoveryRequest / DiscoveryResponse."""

    def send(
        self,
        type_url: str,
        names: Iterable[str] = (),
        version: str = "",
        nonce: str = "",
        error: str | None = None,
        *,
        node: bool | None = None,
    ) -> discovery_pb2.DiscoveryRequest:
        """Write one request. The node goes on the stream's first request unless ``node`` says."""
        req = discovery_pb2.DiscoveryRequest(
            type_url=type_url, resource_names=list(names), version_info=version, response_nonce=nonce
        )
        if error is not None:
            req.error_detail.CopyFrom(status_pb2.Status(code=3, message=error))
        self._put(self._with_node(req, node))
        return req

    def ack(self, response: discovery_pb2.DiscoveryResponse, names: Iterable[str] = ()) -> None:
        self.send(response.type_url, names, response.version_info, response.nonce)

    def nack(self, response: discovery_pb2.DiscoveryResponse, error: str, last_good: str = "",
             names: Iterable[str] = ()) -> None:
        self.send(response.type_url, names, last_good, response.nonce, error=error)

    def subscribe(self, type_url: str, names: Iterable[str] = (), timeout: float = 10.0):
        """Send an initial request and return the response."""
        self.send(type_url, names)
        return self.recv(timeout)


class DeltaClient(_Base):
    """Incremental: DeltaDiscoveryRequest / DeltaDiscoveryResponse."""

    delta = True

    def send(
        self,
        type_url: str,
        subscribe: Iterable[str] = (),
        unsubscribe: Iterable[str] = (),
        nonce: str = "",
        error: str | None = None,
        *,
        initial_versions: Mapping[str, str] | None = None,
        node: bool | None = None,
    ) -> discovery_pb2.DeltaDiscoveryRequest:
        req = discovery_pb2.DeltaDiscoveryRequest(
            type_url=type_url,
            resource_names_subscribe=list(subscribe),
            resource_names_unsubscribe=list(unsubscribe),
            response_nonce=nonce,
            initial_resource_versions=dict(initial_versions or {}),
        )
        if error is not None:
            req.error_detail.CopyFrom(status_pb2.Status(code=3, message=error))
        self._put(self._with_node(req, node))
        return req

    def ack(self, response: discovery_pb2.DeltaDiscoveryResponse) -> None:
        self.send(response.type_url, nonce=response.nonce)

    def nack(self, response: discovery_pb2.DeltaDiscoveryResponse, error: str) -> None:
        self.send(response.type_url, nonce=response.nonce, error=error)


# -- reading responses ----------------------------------------------------------------------


def names(response) -> list[str]:
    """Names of the resources a response carries, in order (SotW: unpacked; Delta: Resource.name)."""
    if isinstance(response, discovery_pb2.DeltaDiscoveryResponse):
        return [r.name for r in response.resources]
    return [w.name if w is not None else _name(unpack(a)) for a, w in _wrappers(response)]


def wrappers(response) -> dict[str, discovery_pb2.Resource]:
    """name -> Resource: Delta's resources, or the SotW resources that come wrapped (rule 14)."""
    if isinstance(response, discovery_pb2.DeltaDiscoveryResponse):
        return {r.name: r for r in response.resources}
    return {w.name: w for _, w in _wrappers(response) if w is not None}


def ttls(response) -> dict[str, float]:
    """name -> TTL in seconds, for the resources that carry one."""
    return {n: r.ttl.ToNanoseconds() / 1e9 for n, r in wrappers(response).items() if r.HasField("ttl")}


def _wrappers(response):
    for a in response.resources:
        if a.type_url == RESOURCE:
            w = discovery_pb2.Resource()
            assert a.Unpack(w)
            yield a, w
        else:
            yield a, None


def versions(response: discovery_pb2.DeltaDiscoveryResponse) -> dict[str, str]:
    return {r.name: r.version for r in response.resources}


def resources(response) -> dict[str, object]:
    """name -> unpacked message (None for a resource without body: a heartbeat)."""
    if isinstance(response, discovery_pb2.DeltaDiscoveryResponse):
        return {r.name: unpack(r.resource) if r.HasField("resource") else None for r in response.resources}
    out = {}
    for a, w in _wrappers(response):
        if w is not None:
            out[w.name] = unpack(w.resource) if w.HasField("resource") else None  # None: a heartbeat
        else:
            msg = unpack(a)
            out[_name(msg)] = msg
    return out


def unpack(packed):
    from labxds.xds.resource_types import (
        message_class,  # only to find the generated class
    )

    msg = message_class(packed.type_url)()
    assert packed.Unpack(msg), packed.type_url
    return msg


def _name(msg) -> str:
    return msg.cluster_name if msg.DESCRIPTOR.name == "ClusterLoadAssignment" else msg.name


def short(type_url: str) -> str:
    return {CLUSTER: "CDS", ENDPOINT: "EDS", LISTENER: "LDS", ROUTE: "RDS"}.get(type_url, type_url.rsplit(".", 1)[-1])


def describe(response) -> str:
    if isinstance(response, discovery_pb2.DeltaDiscoveryResponse):
        return (f"Delta {short(response.type_url)} v{response.system_version_info} nonce={response.nonce} "
                f"{names(response)} removed={list(response.removed_resources)}")
    return f"{short(response.type_url)} v{response.version_info} nonce={response.nonce} {names(response)}"


def wait_processed(cp, clients: Iterable[_Base], timeout: float = 10.0) -> None:
    """Block until ``cp`` has taken in every request these clients sent.

    The server traces each request it handles (request, ACK, NACK or stale), after applying
    it: once the counts match, a following snapshot change cannot overtake a request.
    """
    import time

    want: dict[str, int] = {}
    for c in clients:
        if c.node_id:
            want[c.node_id] = want.get(c.node_id, 0) + len(c.sent)
    deadline = time.monotonic() + timeout
    while True:
        have = {
            node: sum(1 for e in cp.tracker.events(node) if e.direction == "received") for node in want
        }
        if all(have[n] >= want[n] for n in want):
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"the server took in {have} requests, the clients sent {want}")
        time.sleep(0.005)


def client_factory(cp, cls: type[_Base]):
    """A fixture body: ``make(node, **kw)`` opens a ``cls`` client on ``cp`` (``make.sync()``
    waits until the server took in all their requests); every client is closed afterwards."""
    clients: list[_Base] = []

    def make(node: str | None = "node-a", **kw):
        c = cls(cp.address, node, **kw)
        clients.append(c)
        return c

    make.sync = lambda: wait_processed(cp, clients)  # type: ignore[attr-defined]
    yield make
    for c in clients:
        c.close()


def eventually(check, timeout: float = 5.0) -> bool:
    """Poll ``check`` until it is true (True) or ``timeout`` passes (False)."""
    import time

    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def beat_timers(cp) -> list:
    """Heartbeat timers (rule 14) pending on the server's event loop."""
    return [h for h in list(cp._loop._scheduled) if not h.cancelled()
            and getattr(h._callback, "__name__", "") == "_timer_fired"]


def ads_once(channel: grpc.Channel, node: str, metadata: tuple = ()) -> discovery_pb2.DiscoveryResponse:
    """One ADS request for clusters as ``node``; the first response (gRPC errors raise)."""
    rpc = channel.stream_stream("/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources", request_serializer=discovery_pb2.DiscoveryRequest.SerializeToString,
                                response_deserializer=discovery_pb2.DiscoveryResponse.FromString)
    request = discovery_pb2.DiscoveryRequest(type_url=CLUSTER)
    request.node.id = node
    call = rpc(iter([request]), timeout=5, metadata=metadata)
    try:
        return next(call)
    finally:
        call.cancel()


def tls_channel(port: int, credentials: grpc.ChannelCredentials, server_name: str = "labxds-control-plane") -> grpc.Channel:
    """A channel to 127.0.0.1:port that checks the control plane's certificate for ``server_name``."""
    return grpc.secure_channel(f"127.0.0.1:{port}", credentials,
                               options=[("grpc.ssl_target_name_override", server_name)])
