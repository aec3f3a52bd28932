"""Discovery responses assembled from pre-encoded bytes.

A resource is serialized once per version, when its snapshot is built. A response to any number
of streams is then a concatenation of those shared bytes plus a few per-response fields (nonce,
version), which is what protobuf itself would produce field by field. Field numbers are read from
the generated descriptors, not written down here.
"""

from __future__ import annotations

from collections.abc import Iterable

from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import any_pb2, duration_pb2

__all__ = [
    "RESOURCE_TYPE_URL",
    "control_plane",
    "delta_resource",
    "delta_response",
    "duration",
    "encode_any",
    "resource",
    "sotw_resource",
    "sotw_response",
    "sotw_wrapped",
]

_VARINT = 0  # wire type of integer fields
_LEN = 2  # wire type of length-delimited fields


def _field_numbers(desc) -> dict[str, int]:  # type: ignore[no-untyped-def]
    return {f.name: f.number for f in desc.fields}


_ANY = _field_numbers(any_pb2.Any.DESCRIPTOR)
_SOTW = _field_numbers(discovery_pb2.DiscoveryResponse.DESCRIPTOR)
_DELTA = _field_numbers(discovery_pb2.DeltaDiscoveryResponse.DESCRIPTOR)
_RESOURCE = _field_numbers(discovery_pb2.Resource.DESCRIPTOR)
_CONTROL_PLANE = _field_numbers(base_pb2.ControlPlane.DESCRIPTOR)
_DURATION = _field_numbers(duration_pb2.Duration.DESCRIPTOR)

#: The type URL of a resource wrapped in a ``Resource`` inside a SotW response (rule 14).
RESOURCE_TYPE_URL = "type.googleapis.com/" + discovery_pb2.Resource.DESCRIPTOR.full_name


_ONE_BYTE = [bytes((i,)) for i in range(0x80)]


def _varint(n: int) -> bytes:
    if n < 0x80:  # tags and short lengths: most calls
        return _ONE_BYTE[n]
    if n < 0x4000:
        return bytes((n & 0x7F | 0x80, n >> 7))
    out = bytearray()
    while True:
        low = n & 0x7F
        n >>= 7
        if n:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def _tag(number: int) -> bytes:
    return _varint((number << 3) | _LEN)


def _field(number: int, payload: bytes) -> bytes:
    return _tag(number) + _varint(len(payload)) + payload


def _int(number: int, value: int) -> bytes:
    return _varint(number << 3 | _VARINT) + _varint(value) if value else b""


def _text(number: int, value: str) -> bytes:
    return _field(number, value.encode()) if value else b""


def encode_any(type_url: str, body: bytes) -> bytes:
    """A ``google.protobuf.Any`` holding ``body``."""
    return _text(_ANY["type_url"], type_url) + (_field(_ANY["value"], body) if body else b"")


def sotw_resource(any_bytes: bytes) -> bytes:
    """One entry of ``DiscoveryResponse.resources``, ready to concatenate."""
    return _field(_SOTW["resources"], any_bytes)


def duration(seconds: float) -> bytes:
    """A ``google.protobuf.Duration`` of ``seconds`` (positive), to the nanosecond."""
    nanos_total = round(seconds * 1_000_000_000)
    if nanos_total <= 0:
        raise ValueError(f"a duration must be positive, not {seconds!r}")
    secs, nanos = divmod(nanos_total, 1_000_000_000)
    return _int(_DURATION["seconds"], secs) + _int(_DURATION["nanos"], nanos)


def resource(name: str, version: str, any_bytes: bytes | None, ttl: float | None = None) -> bytes:
    """A ``Resource``: the body in ``any_bytes``, or none for a heartbeat, and an optional TTL."""
    return (
        _text(_RESOURCE["version"], version)
        + (_field(_RESOURCE["resource"], any_bytes) if any_bytes is not None else b"")
        + _text(_RESOURCE["name"], name)
        + (_field(_RESOURCE["ttl"], duration(ttl)) if ttl is not None else b"")
    )


def sotw_wrapped(name: str, version: str, any_bytes: bytes | None, ttl: float | None) -> bytes:
    """One entry of ``DiscoveryResponse.resources`` holding a ``Resource`` wrapper (SotW TTL)."""
    return sotw_resource(encode_any(RESOURCE_TYPE_URL, resource(name, version, any_bytes, ttl)))


def delta_resource(name: str, version: str, any_bytes: bytes | None, ttl: float | None = None) -> bytes:
    """One entry of ``DeltaDiscoveryResponse.resources`` (a ``Resource``)."""
    return _field(_DELTA["resources"], resource(name, version, any_bytes, ttl))


def control_plane(identifier: str) -> bytes:
    return _text(_CONTROL_PLANE["identifier"], identifier)


def sotw_response(
    *, version: str, type_url: str, nonce: str, resources: Iterable[bytes], control_plane_id: bytes = b""
) -> bytes:
    parts = [_text(_SOTW["version_info"], version)]
    parts.extend(resources)
    parts.append(_text(_SOTW["type_url"], type_url))
    parts.append(_text(_SOTW["nonce"], nonce))
    if control_plane_id:
        parts.append(_field(_SOTW["control_plane"], control_plane_id))
    return b"".join(parts)


def delta_response(
    *,
    system_version: str,
    type_url: str,
    nonce: str,
    resources: Iterable[bytes],
    removed: Iterable[str] = (),
    control_plane_id: bytes = b"",
) -> bytes:
    parts = [_text(_DELTA["system_version_info"], system_version)]
    parts.extend(resources)
    parts.append(_text(_DELTA["type_url"], type_url))
    parts.append(_text(_DELTA["nonce"], nonce))
    parts.extend(_field(_DELTA["removed_resources"], name.encode()) for name in removed)
    if control_plane_id:
        parts.append(_field(_DELTA["control_plane"], control_plane_id))
    return b"".join(parts)
