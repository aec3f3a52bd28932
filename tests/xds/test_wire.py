"""labxds.wire builds responses from pre-encoded bytes: protobuf itself must parse them back."""

from __future__ import annotations

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import any_pb2

from labxds.xds import CLUSTER, LISTENER, wire


def _cluster(name: str, timeout: int = 1) -> cluster_pb2.Cluster:
    c = cluster_pb2.Cluster(name=name)
    c.connect_timeout.seconds = timeout
    return c


@pytest.mark.parametrize("n", [0, 127, 128, 300, 16383, 16384, 2**31, 2**63 - 1])
def test_varint_matches_protobuf(n):
    # a uint64 field set to n is tag + varint: compare with what protobuf writes
    from google.protobuf import wrappers_pb2

    expected = wrappers_pb2.UInt64Value(value=n).SerializeToString()
    assert (b"\x08" + wire._varint(n) if n else b"") == expected


def test_encode_any_round_trips():
    body = _cluster("a").SerializeToString()
    packed = any_pb2.Any.FromString(wire.encode_any(CLUSTER, body))
    assert packed.type_url == CLUSTER
    out = cluster_pb2.Cluster()
    assert packed.Unpack(out) and out == _cluster("a")


def test_sotw_response_round_trips_through_protobuf():
    clusters = [_cluster("a"), _cluster("b", 2), _cluster("c" * 300)]  # a long name: multi-byte lengths
    entries = [wire.sotw_resource(wire.encode_any(CLUSTER, c.SerializeToString())) for c in clusters]
    data = wire.sotw_response(version="v7", type_url=CLUSTER, nonce="42", resources=entries,
                              control_plane_id=wire.control_plane("labxds-test"))
    resp = discovery_pb2.DiscoveryResponse.FromString(data)
    assert resp.version_info == "v7"
    assert resp.type_url == CLUSTER
    assert resp.nonce == "42"
    assert resp.control_plane.identifier == "labxds-test"
    got = []
    for packed in resp.resources:
        c = cluster_pb2.Cluster()
        assert packed.Unpack(c)
        got.append(c)
    assert got == clusters
    # the same bytes protobuf would produce (field order: version, resources, type_url, nonce, control_plane)
    expected = discovery_pb2.DiscoveryResponse(
        version_info="v7", type_url=CLUSTER, nonce="42",
        control_plane=base_pb2.ControlPlane(identifier="labxds-test"),
    )
    for c in clusters:
        expected.resources.add().Pack(c)
    assert resp == expected
    assert data == expected.SerializeToString(deterministic=True)


def test_empty_sotw_response_is_a_valid_message():
    resp = discovery_pb2.DiscoveryResponse.FromString(
        wire.sotw_response(version="1", type_url=LISTENER, nonce="1", resources=[])
    )
    assert resp.version_info == "1" and resp.type_url == LISTENER and len(resp.resources) == 0
    assert not resp.HasField("control_plane")


def test_delta_response_round_trips_with_removed_resources():
    a, b = _cluster("a"), _cluster("b", 3)
    entries = [
        wire.delta_resource(c.name, f"ver-{c.name}", wire.encode_any(CLUSTER, c.SerializeToString()))
        for c in (a, b)
    ]
    data = wire.delta_response(system_version="sys1", type_url=CLUSTER, nonce="9", resources=entries,
                               removed=["gone1", "gone2"], control_plane_id=wire.control_plane("cp"))
    resp = discovery_pb2.DeltaDiscoveryResponse.FromString(data)
    assert resp.system_version_info == "sys1"
    assert resp.type_url == CLUSTER and resp.nonce == "9"
    assert list(resp.removed_resources) == ["gone1", "gone2"]
    assert resp.control_plane.identifier == "cp"
    assert [(r.name, r.version) for r in resp.resources] == [("a", "ver-a"), ("b", "ver-b")]
    for r, c in zip(resp.resources, (a, b)):
        out = cluster_pb2.Cluster()
        assert r.resource.Unpack(out) and out == c
    expected = discovery_pb2.DeltaDiscoveryResponse(
        system_version_info="sys1", type_url=CLUSTER, nonce="9", removed_resources=["gone1", "gone2"],
        control_plane=base_pb2.ControlPlane(identifier="cp"),
    )
    for c in (a, b):
        res = expected.resources.add(name=c.name, version=f"ver-{c.name}")
        res.resource.Pack(c)
    assert resp == expected


def test_delta_response_with_only_removals():
    resp = discovery_pb2.DeltaDiscoveryResponse.FromString(
        wire.delta_response(system_version="", type_url=CLUSTER, nonce="2", resources=[], removed=["x"])
    )
    assert list(resp.removed_resources) == ["x"] and len(resp.resources) == 0


def test_control_plane_identifier_round_trips():
    assert base_pb2.ControlPlane.FromString(wire.control_plane("éé")).identifier == "éé"
    assert wire.control_plane("") == b""


# -- rule 14: TTLs and the Resource wrapper ------------------------------------------------------


@pytest.mark.parametrize("seconds", [0.001, 0.5, 1, 30, 1.000000001, 86400.25, 10**9])
def test_duration_matches_protobuf(seconds):
    from google.protobuf import duration_pb2

    expected = duration_pb2.Duration()
    expected.FromNanoseconds(round(seconds * 1_000_000_000))
    assert wire.duration(seconds) == expected.SerializeToString(deterministic=True)


@pytest.mark.parametrize("seconds", [0, -1, 1e-10])
def test_duration_must_be_positive(seconds):
    with pytest.raises(ValueError):
        wire.duration(seconds)


def test_sotw_wrapped_resource_is_what_protobuf_writes():
    c = _cluster("a")
    packed = wire.encode_any(CLUSTER, c.SerializeToString())
    data = wire.sotw_response(version="3", type_url=CLUSTER, nonce="1",
                              resources=[wire.sotw_wrapped("a", "va", packed, 2.5)])
    resp = discovery_pb2.DiscoveryResponse.FromString(data)
    assert resp.resources[0].type_url == wire.RESOURCE_TYPE_URL
    expected = discovery_pb2.Resource(name="a", version="va")
    expected.resource.Pack(c)
    expected.ttl.FromMilliseconds(2500)
    got = discovery_pb2.Resource()
    assert resp.resources[0].Unpack(got) and got == expected
    assert resp.resources[0].value == expected.SerializeToString(deterministic=True)


def test_heartbeats_have_no_body():
    sotw = discovery_pb2.DiscoveryResponse.FromString(
        wire.sotw_response(version="3", type_url=CLUSTER, nonce="1", resources=[wire.sotw_wrapped("a", "va", None, 1)]))
    beat = discovery_pb2.Resource()
    assert sotw.resources[0].Unpack(beat)
    assert (beat.name, beat.version, beat.ttl.seconds, beat.HasField("resource")) == ("a", "va", 1, False)
    delta = discovery_pb2.DeltaDiscoveryResponse.FromString(
        wire.delta_response(system_version="3", type_url=CLUSTER, nonce="1", resources=[wire.delta_resource("a", "va", None, 1)]))
    r = delta.resources[0]
    assert (r.name, r.version, r.ttl.seconds, r.HasField("resource")) == ("a", "va", 1, False)
    assert r.SerializeToString(deterministic=True) == beat.SerializeToString(deterministic=True)
