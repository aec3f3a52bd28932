"""Envoy resources in protobuf's JSON form (dicts, as YAML and JSON files hold them) into messages.

``json_format.ParseDict`` is pure Python and rebuilds its field tables for every message it
meets: about 0.25 ms for the sandbox's cluster, most of what a watched snapshot file costs per
change. :func:`parse_dict` walks the same mapping with the tables cached per message type, for the
forms resources are written in (messages, lists, maps with string keys, scalars, enums by name,
``Any`` with ``"@type"``, wrappers, ``Duration``, ``Timestamp``). Anything else, and every
mistake, goes to ``json_format`` itself, so results and error messages are exactly its own.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from google.protobuf import descriptor, json_format, message

from . import resource_types

__all__ = ["NestedTypeError", "parse_dict"]

_FD = descriptor.FieldDescriptor
_INTS = frozenset({_FD.CPPTYPE_INT32, _FD.CPPTYPE_INT64, _FD.CPPTYPE_UINT32, _FD.CPPTYPE_UINT64})
_FLOAT32_MAX = 3.4028234663852886e38
_WRAPPERS = frozenset(
    f"google.protobuf.{n}Value" for n in ("Bool", "Bytes", "Double", "Float", "Int32", "Int64", "String", "UInt32", "UInt64")
)
_FROM_STRING = frozenset({"google.protobuf.Duration", "google.protobuf.Timestamp"})
_DECLINED = frozenset(
    {"google.protobuf.Struct", "google.protobuf.Value", "google.protobuf.ListValue", "google.protobuf.FieldMask"}
)
_MAX_DEPTH = 100  # json_format's own limit; deeper is its error to report


class NestedTypeError(ValueError):
    """A nested ``"@type"`` names no message type known here (or in any xds-protos module)."""


class _Declined(Exception):
    """Not a form the fast path handles (or a mistake): json_format decides."""


# Per message type: JSON key (json_name or field name) -> (field, kind, extra).
_Table = dict[str, tuple[Any, int, Any]]
_TABLES: dict[str, _Table] = {}
_SCALAR, _ENUM, _MESSAGE, _REPEATED_SCALAR, _REPEATED_ENUM, _REPEATED_MESSAGE, _MAP = range(7)


def parse_dict(data: Mapping[str, Any], msg: message.Message) -> None:
    """Fill ``msg`` from ``data`` as ``json_format.ParseDict`` would (raising its ParseError), or
    raise NestedTypeError for a nested ``"@type"`` that names no known message type."""
    try:
        _message(data, msg, 0)
    except (_Declined, ValueError, TypeError, KeyError, AttributeError):
        msg.Clear()
        _import_nested_types(data)
        json_format.ParseDict(data, msg)


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


def _table(desc: Any) -> _Table:
    table = _TABLES.get(desc.full_name)
    if table is None:
        table = {}
        for f in desc.fields:
            if f.is_extension:
                continue
            if f.cpp_type == _FD.CPPTYPE_MESSAGE and f.message_type.GetOptions().map_entry:
                key_f, value_f = f.message_type.fields_by_name["key"], f.message_type.fields_by_name["value"]
                entry = (f, _MAP, (key_f, value_f))
            elif f.is_repeated:
                kind = {_FD.CPPTYPE_MESSAGE: _REPEATED_MESSAGE, _FD.CPPTYPE_ENUM: _REPEATED_ENUM}.get(
                    f.cpp_type, _REPEATED_SCALAR
                )
                entry = (f, kind, None)
            else:
                kind = {_FD.CPPTYPE_MESSAGE: _MESSAGE, _FD.CPPTYPE_ENUM: _ENUM}.get(f.cpp_type, _SCALAR)
                entry = (f, kind, None)
            table[f.name] = entry
            table[f.json_name] = entry
        _TABLES[desc.full_name] = table
    return table


def _message(data: Any, msg: message.Message, depth: int) -> None:
    """``data`` into ``msg`` (already marked present by the caller)."""
    if depth >= _MAX_DEPTH:
        raise _Declined
    full_name = msg.DESCRIPTOR.full_name
    if full_name in _WRAPPERS:
        msg.value = _scalar(data, msg.DESCRIPTOR.fields_by_name["value"])
        return
    if full_name in _FROM_STRING:
        if not isinstance(data, str):
            raise _Declined
        msg.FromJsonString(data)
        return
    if full_name == "google.protobuf.Any":
        _any(data, msg, depth)
        return
    if full_name in _DECLINED or not isinstance(data, dict):
        raise _Declined
    table = _table(msg.DESCRIPTOR)
    seen: set[Any] = set()
    for key, value in data.items():
        entry = table.get(key)
        if entry is None or value is None:
            raise _Declined  # unknown field (json_format names it), or null (its own rules)
        field, kind, extra = entry
        oneof = field.containing_oneof
        if field in seen or (oneof is not None and oneof in seen):
            raise _Declined
        seen.add(field)
        if oneof is not None:
            seen.add(oneof)
        name = field.name
        if kind == _SCALAR:
            setattr(msg, name, _scalar(value, field))
        elif kind == _ENUM:
            setattr(msg, name, _enum(value, field))
        elif kind == _MESSAGE:
            sub = getattr(msg, name)
            sub.SetInParent()
            _message(value, sub, depth + 1)
        elif not isinstance(value, (list, dict) if kind == _MAP else list):
            raise _Declined
        elif kind == _REPEATED_MESSAGE:
            container = getattr(msg, name)
            for item in value:
                if item is None:
                    raise _Declined
                _message(item, container.add(), depth + 1)
        elif kind == _REPEATED_SCALAR:
            getattr(msg, name).extend([_scalar(item, field) for item in value])
        elif kind == _REPEATED_ENUM:
            getattr(msg, name).extend([_enum(item, field) for item in value])
        else:
            _map(value, getattr(msg, name), extra, depth)


def _map(value: dict, container: Any, fields: tuple[Any, Any], depth: int) -> None:
    key_field, value_field = fields
    if key_field.cpp_type != _FD.CPPTYPE_STRING:
        raise _Declined
    for key, item in value.items():
        if not isinstance(key, str) or item is None:
            raise _Declined
        if value_field.cpp_type == _FD.CPPTYPE_MESSAGE:
            _message(item, container[key], depth + 1)
        elif value_field.cpp_type == _FD.CPPTYPE_ENUM:
            container[key] = _enum(item, value_field)
        else:
            container[key] = _scalar(item, value_field)


def _any(data: Any, msg: Any, depth: int) -> None:
    if not isinstance(data, dict):
        raise _Declined
    if not data:
        return
    type_url = data.get("@type")
    if not isinstance(type_url, str):
        raise _Declined
    try:
        inner = resource_types.message_class(type_url)()
    except ValueError:
        raise _Declined from None
    inner_name = inner.DESCRIPTOR.full_name
    if inner_name in _WRAPPERS or inner_name in _FROM_STRING or inner_name in _DECLINED or inner_name.startswith(
        "google.protobuf.Any"
    ):
        raise _Declined  # the {"@type", "value"} form of well-known types
    _message({k: v for k, v in data.items() if k != "@type"}, inner, depth + 1)
    msg.value = inner.SerializeToString()
    msg.type_url = type_url


def _scalar(value: Any, field: Any) -> Any:
    cpp = field.cpp_type
    if cpp == _FD.CPPTYPE_STRING:
        if field.type == _FD.TYPE_BYTES or not isinstance(value, str):
            raise _Declined
        return value
    if cpp in _INTS:
        if isinstance(value, bool):
            raise _Declined
        if isinstance(value, int):
            return value
        if isinstance(value, str) and value.isascii() and value.lstrip("-").isdigit():
            return int(value)
        raise _Declined
    if cpp == _FD.CPPTYPE_BOOL:
        if not isinstance(value, bool):
            raise _Declined
        return value
    if cpp in (_FD.CPPTYPE_DOUBLE, _FD.CPPTYPE_FLOAT):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise _Declined
        if cpp == _FD.CPPTYPE_FLOAT and abs(value) > _FLOAT32_MAX:
            raise _Declined
        return value
    raise _Declined


def _enum(value: Any, field: Any) -> int:
    if isinstance(value, str):
        found = field.enum_type.values_by_name.get(value)
        if found is not None:
            return found.number
    raise _Declined  # numbers, and names json_format may still know (or reject)
