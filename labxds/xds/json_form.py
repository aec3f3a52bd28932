"""Envoy resources in protobuf's JSON form (dicts, as YAML and JSON files hold them) into messages.

``json_format.ParseDict`` is pure Python and looks its fields up in the descriptors for every
message it meets: 80 µs for the sandbox's cluster on a warm CPU, much of what a watched
snapshot file cost per change. :func:`parse_dict` (14 µs) walks the same mapping with field
tables built once per message type, for the forms resources are written in (messages, lists,
maps with string keys, scalars, enums by name, ``Any`` with ``"@type"``, wrappers, ``Duration``,
``Timestamp``). Anything else, and every mistake, takes the slow path: :func:`lenient.normalize`
rewrites what Envoy's config loader accepts beyond protobuf's JSON mapping (lowercase enums, one
value for a list...) and refuses what it refuses, the fast path runs again on the result, and
``json_format`` itself takes what remains, so its results and error messages stay its own. The
leniencies cost the common case nothing.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, cast

from google.protobuf import descriptor, json_format, message

from . import lenient, resource_types

__all__ = ["NestedTypeError", "parse_dict"]

_FD = descriptor.FieldDescriptor
_INTS = frozenset({_FD.CPPTYPE_INT32, _FD.CPPTYPE_INT64, _FD.CPPTYPE_UINT32, _FD.CPPTYPE_UINT64})
_FLOAT32_MAX = 3.4028234663852886e38
_DURATION = "google.protobuf.Duration"
_FROM_STRING = frozenset({_DURATION, "google.protobuf.Timestamp"})
_DECLINED = frozenset(
    {"google.protobuf.Struct", "google.protobuf.Value", "google.protobuf.ListValue", "google.protobuf.FieldMask"}
)
_MAX_DEPTH = 100  # json_format's own limit; deeper is its error to report


class NestedTypeError(ValueError):
    """A nested ``"@type"`` names no message type known here (or in any xds-protos module)."""


class _Declined(Exception):
    """Not a form the fast path handles (or a mistake): json_format decides."""


# How a value is checked and converted: the fast path accepts exactly what json_format would set
# unchanged (and declines the rest, for json_format to convert or reject).
_STR, _INT, _BOOL, _DOUBLE, _FLOAT, _OTHER = range(6)
_WRAPPER_KINDS = {
    "google.protobuf.BoolValue": _BOOL, "google.protobuf.BytesValue": _OTHER,
    "google.protobuf.DoubleValue": _DOUBLE, "google.protobuf.FloatValue": _FLOAT,
    "google.protobuf.Int32Value": _INT, "google.protobuf.Int64Value": _INT, "google.protobuf.StringValue": _STR,
    "google.protobuf.UInt32Value": _INT, "google.protobuf.UInt64Value": _INT,
}
_SCALAR, _ENUM, _MESSAGE, _REPEATED_SCALAR, _REPEATED_ENUM, _REPEATED_MESSAGE, _MAP = range(7)

# Per message type, JSON key (json_name or field name) -> (field name, kind, oneof name or None,
# scalar kind, enum numbers by name, map value spec): built once from the descriptors, so a parse
# touches no descriptor.
_Spec = tuple[str, int, Any, int, Any, Any]
_TABLES: dict[str, dict[str, _Spec]] = {}


def parse_dict(data: Mapping[str, Any], msg: message.Message) -> None:
    """Fill ``msg`` from ``data`` as Envoy's config loader reads the JSON form (raising
    ``json_format.ParseError``, in its words, for what it refuses), or raise NestedTypeError for a
    nested ``"@type"`` that names no known message type."""
    try:
        _message(data, msg, 0)
        return
    except _FALLBACK:
        msg.Clear()
    # Not the common form: read it as Envoy does (lenient.normalize rewrites Envoy's leniencies
    # into the strict form and refuses what Envoy refuses), then parse that.
    strict = lenient.normalize(data, msg.DESCRIPTOR)
    try:
        _message(strict, msg, 0)
        return
    except _FALLBACK:
        msg.Clear()
    _import_nested_types(strict)
    json_format.ParseDict(cast(dict[str, Any], strict), msg)


_FALLBACK = (_Declined, ValueError, TypeError, KeyError, AttributeError)


def _import_nested_types(data: Any) -> None:
    """Import the modules of every nested ``@type``: json_format resolves them only from what is
    loaded, and xds-protos is imported on demand (the fast path imports as it goes)."""
    stack = [data]
    while stack:
        node = stack.pop()
        if isinstance(node, Mapping):
            t = node.get("@type")
            if isinstance(t, str):
                try:
                    resource_types.ensure_importable(t)
                except ValueError as exc:
                    raise NestedTypeError(str(exc)) from None
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)


def _scalar_kind(f: Any) -> int:
    cpp = f.cpp_type
    if cpp == _FD.CPPTYPE_STRING:
        return _OTHER if f.type == _FD.TYPE_BYTES else _STR
    if cpp in _INTS:
        return _INT
    return {_FD.CPPTYPE_BOOL: _BOOL, _FD.CPPTYPE_DOUBLE: _DOUBLE, _FD.CPPTYPE_FLOAT: _FLOAT}.get(cpp, _OTHER)


def _enum_numbers(f: Any) -> dict[str, int] | None:
    return {v.name: v.number for v in f.enum_type.values} if f.cpp_type == _FD.CPPTYPE_ENUM else None


def _table(desc: Any) -> dict[str, _Spec]:
    table = _TABLES.get(desc.full_name)
    if table is None:
        table = {}
        for f in desc.fields:
            if f.is_extension:
                continue
            oneof = f.containing_oneof.name if f.containing_oneof is not None else None
            if f.cpp_type == _FD.CPPTYPE_MESSAGE and f.message_type.GetOptions().map_entry:
                key_f, value_f = f.message_type.fields_by_name["key"], f.message_type.fields_by_name["value"]
                value_kind = {_FD.CPPTYPE_MESSAGE: _MESSAGE, _FD.CPPTYPE_ENUM: _ENUM}.get(value_f.cpp_type, _SCALAR)
                values = (key_f.cpp_type == _FD.CPPTYPE_STRING, value_kind, _scalar_kind(value_f), _enum_numbers(value_f))
                spec: _Spec = (f.name, _MAP, oneof, _OTHER, None, values)
            else:
                if f.cpp_type == _FD.CPPTYPE_MESSAGE:
                    kind = _REPEATED_MESSAGE if f.is_repeated else _MESSAGE
                elif f.cpp_type == _FD.CPPTYPE_ENUM:
                    kind = _REPEATED_ENUM if f.is_repeated else _ENUM
                else:
                    kind = _REPEATED_SCALAR if f.is_repeated else _SCALAR
                spec = (f.name, kind, oneof, _scalar_kind(f), _enum_numbers(f), None)
            table[f.name] = spec
            table[f.json_name] = spec
        _TABLES[desc.full_name] = table
    return table


def _message(data: Any, msg: message.Message, depth: int) -> None:
    """``data`` into ``msg`` (already marked present by the caller)."""
    if depth >= _MAX_DEPTH:
        raise _Declined
    desc = msg.DESCRIPTOR
    full_name = desc.full_name
    table = _TABLES.get(full_name)
    if table is None:
        wrapped = _WRAPPER_KINDS.get(full_name)
        if wrapped is not None:
            msg.value = _scalar(data, wrapped)  # type: ignore[attr-defined]
            return
        if full_name in _FROM_STRING:
            if not isinstance(data, str) or (full_name == _DURATION and not lenient.valid_duration(data)):
                raise _Declined  # the object form, or a duration Python reads and Envoy does not (+5s)
            msg.FromJsonString(data)  # type: ignore[attr-defined]
            return
        if full_name == "google.protobuf.Any":
            _any(data, msg, depth)
            return
        if full_name in _DECLINED:
            raise _Declined
        table = _table(desc)
    if not isinstance(data, dict):
        raise _Declined
    seen: set[str] = set()
    for key, value in data.items():
        spec = table.get(key)
        if spec is None or value is None:
            raise _Declined  # unknown field (json_format names it), or null (its own rules)
        name, kind, oneof, scalar_kind, enum_numbers, map_spec = spec
        if name in seen or (oneof is not None and oneof in seen):
            raise _Declined  # both spellings of a field, or two members of a oneof
        seen.add(name)
        if oneof is not None:
            seen.add(oneof)
        if kind == _SCALAR:
            setattr(msg, name, _scalar(value, scalar_kind))
        elif kind == _MESSAGE:
            sub = getattr(msg, name)
            sub.SetInParent()
            _message(value, sub, depth + 1)
        elif kind == _ENUM:
            setattr(msg, name, _enum(value, enum_numbers))
        elif not isinstance(value, dict if kind == _MAP else list):
            raise _Declined
        elif kind == _REPEATED_MESSAGE:
            container = getattr(msg, name)
            for item in value:
                if item is None:
                    raise _Declined
                _message(item, container.add(), depth + 1)
        elif kind == _REPEATED_SCALAR:
            getattr(msg, name).extend([_scalar(item, scalar_kind) for item in value])
        elif kind == _REPEATED_ENUM:
            getattr(msg, name).extend([_enum(item, enum_numbers) for item in value])
        else:
            _map(value, getattr(msg, name), map_spec, depth)


def _map(value: Any, container: Any, spec: tuple[bool, int, int, Any], depth: int) -> None:
    string_keys, value_kind, scalar_kind, enum_numbers = spec
    if not string_keys:
        raise _Declined
    for key, item in value.items():
        if not isinstance(key, str) or item is None:
            raise _Declined
        if value_kind == _MESSAGE:
            _message(item, container[key], depth + 1)
        elif value_kind == _ENUM:
            container[key] = _enum(item, enum_numbers)
        else:
            container[key] = _scalar(item, scalar_kind)


def _any(data: Any, msg: Any, depth: int) -> None:
    if not isinstance(data, dict):
        raise _Declined
    if not data:
        return
    type_url = data.get("@type")
    if not isinstance(type_url, str) or type_url.rfind("/") <= 0:
        raise _Declined  # Envoy wants a host before the type's name
    try:
        inner = resource_types.message_class(type_url)()
    except ValueError:
        raise _Declined from None
    inner_name = inner.DESCRIPTOR.full_name
    if inner_name in _WRAPPER_KINDS or inner_name in _FROM_STRING or inner_name in _DECLINED or inner_name.startswith(
        "google.protobuf.Any"
    ):
        raise _Declined  # the {"@type", "value"} form of well-known types
    _message({k: v for k, v in data.items() if k != "@type"}, inner, depth + 1)
    msg.value = inner.SerializeToString()
    msg.type_url = type_url


def _scalar(value: Any, kind: int) -> Any:
    if kind == _STR:
        if not isinstance(value, str):
            raise _Declined
        return value
    if kind == _INT:
        if isinstance(value, bool):
            raise _Declined
        if isinstance(value, int):
            return value
        if isinstance(value, str) and value.isascii() and value.lstrip("-").isdigit():
            return int(value)
        raise _Declined
    if kind == _BOOL:
        if not isinstance(value, bool):
            raise _Declined
        return value
    if kind == _DOUBLE or kind == _FLOAT:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise _Declined
        if kind == _FLOAT and abs(value) > _FLOAT32_MAX:
            raise _Declined
        return value
    raise _Declined  # bytes (base64) and anything else


def _enum(value: Any, numbers: dict[str, int]) -> int:
    if isinstance(value, str):
        found = numbers.get(value)
        if found is not None:
            return found
    raise _Declined  # numbers, and names json_format may still know (or reject)
