"""Malformed messages on the wire: random bytes and mutated DiscoveryRequests (issue 17).

Each example is one ADS stream (SotW or Delta) carrying one generated message, then closed by the
client. The server must end every such stream by itself, with a status (INVALID_ARGUMENT for
what is no request, OK for what is one), within a bound; it must never crash, hang or stop
serving the others (a well-behaved client is checked at the end). ``make fuzz`` runs thousands.
"""

from __future__ import annotations

import os
import time
from collections import Counter

import grpc
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import struct_pb2
from google.rpc import status_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from xds_client import ADS, CLUSTER, LISTENER, ROUTE, SotwClient, names

from labxds import ControlPlane, Snapshot
from labxds.xds import cluster

FUZZ = bool(os.environ.get("LABXDS_FUZZ"))
EXAMPLES = int(os.environ.get("LABXDS_WIRE_EXAMPLES", "5000" if FUZZ else "100"))
BOUND = 5.0  # seconds within which the server ends a stream that sent one message and closed
FIGURES: dict[str, Counter] = {"sotw": Counter(), "delta": Counter()}
WORST: dict[str, float] = {"sotw": 0.0, "delta": 0.0}


@pytest.fixture(scope="module")
def plane():
    cp = ControlPlane(port=0).start()
    cp.set_snapshot(Snapshot([cluster("c0", [("127.0.0.1", 1)], type="STATIC")]))
    channel = grpc.insecure_channel(cp.address)
    yield cp, channel
    for kind in FIGURES:
        if FIGURES[kind]:
            print(f"\n[figures] wire fuzz {kind}: {sum(FIGURES[kind].values())} messages, worst stream end "
                  f"{WORST[kind] * 1000:.0f} ms, statuses {dict(FIGURES[kind])}")
    # Everyone else is still served.
    with SotwClient(cp.address, "after-the-fuzz") as good:
        assert good.subscribe(CLUSTER).version_info == Snapshot(
            [cluster("c0", [("127.0.0.1", 1)], type="STATIC")]).version(CLUSTER)
    channel.close()
    cp.stop()


def _one(channel: grpc.Channel, delta: bool, payload: bytes) -> grpc.StatusCode:
    method = ADS + ("DeltaAggregatedResources" if delta else "StreamAggregatedResources")
    rpc = channel.stream_stream(method, request_serializer=lambda b: b, response_deserializer=lambda b: b)
    t0 = time.monotonic()
    call = rpc(iter([payload]), timeout=BOUND * 4)
    try:
        for _ in call:
            pass
        code = call.code()
    except grpc.RpcError as exc:
        code = exc.code()
    took = time.monotonic() - t0
    kind = "delta" if delta else "sotw"
    WORST[kind] = max(WORST[kind], took)
    FIGURES[kind][code.name] += 1
    assert code != grpc.StatusCode.DEADLINE_EXCEEDED, f"the server left the stream open: {payload[:60]!r}"
    assert took < BOUND, f"{took:.1f}s to end a stream of one message: {payload[:60]!r}"
    assert code in (grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT), (code, payload[:60])
    return code


_SETTINGS = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))


@_SETTINGS
@given(delta=st.booleans(), payload=st.binary(max_size=4096))
def test_random_bytes_end_the_stream_with_a_status(plane, delta, payload):
    _one(plane[1], delta, payload)


def _requests(delta: bool) -> st.SearchStrategy[bytes]:
    names = st.lists(st.sampled_from(["c0", "*", "l0", "", "x" * 300, "é", "\x00"]), max_size=5)
    urls = st.sampled_from([CLUSTER, LISTENER, ROUTE, "", "type.googleapis.com/nothing", "x"])
    node = st.builds(lambda i, c: base_pb2.Node(id=i, cluster=c), st.text(max_size=20), st.text(max_size=5))
    error = st.none() | st.builds(lambda m: status_pb2.Status(code=3, message=m), st.text(max_size=50))
    if delta:
        build = st.builds(
            lambda n, u, sub, unsub, nonce, e, iv: discovery_pb2.DeltaDiscoveryRequest(
                node=n, type_url=u, resource_names_subscribe=sub, resource_names_unsubscribe=unsub,
                response_nonce=nonce, error_detail=e, initial_resource_versions=iv),
            node, urls, names, names, st.text(max_size=5), error,
            st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=3))
    else:
        build = st.builds(
            lambda n, u, rn, v, nonce, e: discovery_pb2.DiscoveryRequest(
                node=n, type_url=u, resource_names=rn, version_info=v, response_nonce=nonce, error_detail=e),
            node, urls, names, st.text(max_size=5), st.text(max_size=5), error)
    return build.map(lambda m: m.SerializeToString())


@st.composite
def _mutated(draw: st.DrawFn, delta: bool) -> bytes:
    data = bytearray(draw(_requests(delta)))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "cut", "insert", "repeat", "varint"]))
        at = draw(st.integers(0, max(0, len(data) - 1)))
        if op == "flip" and data:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "cut":
            del data[at:]
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif op == "repeat":
            data += data[at:at + draw(st.integers(1, 64))] * draw(st.integers(1, 50))
        elif op == "varint":  # a huge length prefix
            data[at:at] = b"\x0a\xff\xff\xff\xff\x0f"
    return bytes(data)


@_SETTINGS
@given(data=st.data(), delta=st.booleans())
def test_mutated_discovery_requests_end_the_stream_with_a_status(plane, data, delta):
    _one(plane[1], delta, data.draw(_mutated(delta)))


# -- the budget of a DiscoveryRequest ----------------------------------------------------------


def test_a_request_over_the_size_budget_is_refused_with_resource_exhausted(plane):
    cp, channel = plane
    from labxds.xds.control_plane import MAX_REQUEST_BYTES

    request = discovery_pb2.DiscoveryRequest(node=base_pb2.Node(id="big"), type_url=CLUSTER,
                                             resource_names=["n" * 1000] * (MAX_REQUEST_BYTES // 1000 + 10))
    rpc = channel.stream_stream(ADS + "StreamAggregatedResources", request_serializer=lambda b: b,
                                response_deserializer=lambda b: b)
    call = rpc(iter([request.SerializeToString()]), timeout=20)
    with pytest.raises(grpc.RpcError) as info:
        list(call)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "larger than max" in info.value.details()


def test_node_metadata_nested_past_the_depth_budget_is_invalid_argument(plane):
    cp, channel = plane

    def field(number: int, payload: bytes) -> bytes:  # protobuf won't build it: written by hand
        return _varint(number << 3 | 2) + _varint(len(payload)) + payload

    def request(depth: int) -> bytes:
        value = struct_pb2.Value(string_value="deep").SerializeToString()
        for _ in range(depth):
            value = field(5, field(1, field(1, b"k") + field(2, value)))  # Value.struct_value.fields["k"]
        node = field(1, b"deep") + field(3, field(1, field(1, b"k") + field(2, value)))  # Node.id, .metadata
        return field(2, node) + field(4, CLUSTER.encode())  # DiscoveryRequest.node, .type_url

    assert discovery_pb2.DiscoveryRequest.FromString(request(5)).node.id == "deep"
    assert _one(channel, False, request(5)) == grpc.StatusCode.OK
    assert _one(channel, False, request(200)) == grpc.StatusCode.INVALID_ARGUMENT


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        low, n = n & 0x7F, n >> 7
        out.append(low | (0x80 if n else 0))
        if not n:
            return bytes(out)


def test_many_resource_names_within_the_budget_are_answered(plane):
    cp, channel = plane
    with SotwClient(cp.address, "many-names", channel=channel) as c:
        c.send(CLUSTER, [f"c{i}" for i in range(20_000)])
        assert names(c.recv()) == ["c0"]  # the one that exists
