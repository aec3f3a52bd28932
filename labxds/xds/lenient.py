"""What Envoy's config loader reads in the JSON form of a message, rewritten into the strict form
protobuf's ``json_format`` reads, and what it refuses that ``json_format`` would take.

Envoy parses a config file's JSON (its YAML becomes JSON first) with protobuf's C++ parser run
with ``case_insensitive_enum_parsing`` and the legacy syntax that ``JsonStringToMessage`` always
enables (protobuf ``src/google/protobuf/json/json.cc``). That parser takes more than the proto3
JSON mapping, and some things Python's ``json_format`` takes it does not:

* enum names in any case (``strict_dns``); a number in a string for an enum;
* one value where a list is expected; lists inside a list, flattened; ``null`` in a list, the
  element's default (an empty message);
* booleans from the strings ``"true"``, ``"t"``, ``"yes"``, ``"y"``, ``"1"`` (and opposites, any case);
* integers from strings such as ``"1e3"`` or ``"0x10"`` (``absl::SimpleAtoi``, then an integral
  ``absl::SimpleAtod``), floats from ``" 1.5"``, ``"0x1p3"``, ``"inf"``; but no ``_`` in numbers,
  no whitespace around integers, no non-ASCII digits, no float beyond 2^53 for an integer;
* ``Duration``, ``Timestamp``, ``FieldMask``, ``ListValue`` and wrappers written as their fields
  (``{seconds: 5}``, ``{value: 3}``); durations only as digits, an optional point with 1 to 9
  digits, and ``s``;
* bytes in standard or URL-safe base64, padding optional, nothing else in it;
* an ``@type`` URL must have a host before its last ``/``; booleans are not numbers or enums.

:func:`normalize` rewrites a mapping accordingly and raises ``json_format.ParseError`` (in
``json_format``'s words: ``Failed to parse F field: ... at Type.path.``) for what Envoy refuses.
It runs only when the fast path of :mod:`json_form` declines, so the common case pays nothing.
One deliberate difference: a field written twice (``connect_timeout`` and ``connectTimeout``) is
refused, where Envoy keeps whichever its conversion happens to write last.
"""

from __future__ import annotations

import base64
import difflib
import math
import re
from collections.abc import Mapping
from typing import Any

from google.protobuf import descriptor, duration_pb2, field_mask_pb2, json_format, timestamp_pb2

from . import resource_types

__all__ = ["normalize", "simple_atod", "simple_atoi", "valid_duration"]

_FD = descriptor.FieldDescriptor
_INT_TYPES = frozenset({_FD.CPPTYPE_INT32, _FD.CPPTYPE_INT64, _FD.CPPTYPE_UINT32, _FD.CPPTYPE_UINT64})
_WRAPPERS = frozenset({
    "google.protobuf.DoubleValue", "google.protobuf.FloatValue", "google.protobuf.Int64Value",
    "google.protobuf.UInt64Value", "google.protobuf.Int32Value", "google.protobuf.UInt32Value",
    "google.protobuf.BoolValue", "google.protobuf.StringValue", "google.protobuf.BytesValue",
})  # fmt: skip
_UNCHANGED = frozenset({"google.protobuf.Struct", "google.protobuf.Value", "google.protobuf.Empty"})
#: In an Any these are written {"@type": ..., "value": <their JSON>}.
_SPECIAL_IN_ANY = _WRAPPERS | {
    "google.protobuf.Duration", "google.protobuf.Timestamp", "google.protobuf.FieldMask",
    "google.protobuf.Struct", "google.protobuf.Value", "google.protobuf.ListValue", "google.protobuf.Any",
}  # fmt: skip
_NOT_FLATTENED = frozenset({"google.protobuf.Value", "google.protobuf.ListValue"})

_SPACE = " \t\n\v\f\r"
_DURATION = re.compile(r"-?[0-9]+(?:\.[0-9]{1,9})?s\Z")
_ATOI = re.compile(r"[+-]?[0-9]+\Z")
_ATOD_DECIMAL = re.compile(r"-?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?\Z")
_ATOD_HEX = re.compile(r"-?0[xX](?:[0-9a-fA-F]+\.?[0-9a-fA-F]*|\.[0-9a-fA-F]+)(?:[pP][+-]?[0-9]+)?\Z")
_ATOD_SPECIAL = re.compile(r"(-?)(?:(inf|infinity)|nan(?:\([0-9A-Za-z_]*\))?)\Z", re.IGNORECASE)
_ATOB = {**dict.fromkeys(("true", "t", "yes", "y", "1"), True), **dict.fromkeys(("false", "f", "no", "n", "0"), False)}
_B64 = {c: i for i, c in enumerate("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")}
_B64.update({"-": 62, "_": 63})
_INT32 = (-(1 << 31), (1 << 31) - 1)
_UINT32 = (0, (1 << 32) - 1)
_INT64 = (-(1 << 63), (1 << 63) - 1)
_UINT64 = (0, (1 << 64) - 1)
_FLOAT32_MAX = 3.4028234663852886e38

# Per message type: every spelling of every field (name, JSON name, camelCase name) -> field.
_FIELDS: dict[str, dict[str, Any]] = {}
_ENUMS: dict[str, tuple[frozenset[str], dict[str, str]]] = {}


def normalize(data: Any, desc: Any, path: str | None = None) -> Any:
    """``data`` (the JSON form of a ``desc`` message) as Envoy reads it, in the form
    ``json_format`` reads; raises ``json_format.ParseError`` where Envoy refuses it.
    ``data`` is not modified."""
    return _message(data, desc, path or desc.name)


# ------------------------------------------------------------------ numbers and words as absl reads them


def simple_atoi(text: str) -> int | None:
    """``absl::SimpleAtoi`` (base 10; ASCII whitespace around the number is allowed)."""
    text = text.strip(_SPACE)
    return int(text) if _ATOI.match(text) else None


def simple_atod(text: str) -> float | None:
    """``absl::SimpleAtod``: decimal, hexadecimal (``0x1p3``), ``inf``/``infinity``/``nan``; one
    leading ``+``; ASCII whitespace around it. No ``_``, no other digits."""
    text = text.strip(_SPACE)
    if text.startswith("+"):
        text = text[1:]
        if text.startswith("-"):
            return None
    if _ATOD_DECIMAL.match(text):
        return float(text)
    if _ATOD_HEX.match(text):
        try:
            return float.fromhex(text)
        except OverflowError:
            return -math.inf if text.startswith("-") else math.inf
    special = _ATOD_SPECIAL.match(text)
    if special is not None:
        if special.group(2) is None:
            return math.nan
        return -math.inf if special.group(1) else math.inf
    return None


def valid_duration(text: str) -> bool:
    """A duration string as protobuf's C++ parser reads it: ``5s``, ``-0.25s``, ``1.000000001s``."""
    return _DURATION.match(text) is not None


def _b64decode(text: str) -> bytes | None:
    """protobuf's DecodeBase64InPlace: both alphabets, padding optional, nothing else."""
    end = len(text)
    if end % 4 == 0 and end >= 4 and text[-1] == "=":
        end -= 2 if text[-2] == "=" else 1
    body = text[:end]
    if len(body) % 4 == 1:
        return None
    try:
        digits = [_B64[c] for c in body]
    except KeyError:
        return None
    out = bytearray()
    for i in range(0, len(digits) - 3, 4):
        v = digits[i] << 18 | digits[i + 1] << 12 | digits[i + 2] << 6 | digits[i + 3]
        out += bytes((v >> 16, (v >> 8) & 0xFF, v & 0xFF))
    rest = len(digits) % 4
    if rest:
        tail = digits[len(digits) - rest:]
        v = tail[0] << 18 | tail[1] << 12 | (tail[2] << 6 if rest == 3 else 0)
        out.append(v >> 16)
        if rest == 3:
            out.append((v >> 8) & 0xFF)
    return bytes(out)


# ------------------------------------------------------------------ the walk


def _fail(path: str, reason: str) -> Exception:
    """json_format's ParseError, in its words, so that snapshot files find the field's line."""
    name = path.rsplit(".", 1)[-1].split("[", 1)[0]
    error: Exception = json_format.ParseError(f"Failed to parse {name} field: {reason} at {path}.")
    return error


def _fields(desc: Any) -> dict[str, Any]:
    table = _FIELDS.get(desc.full_name)
    if table is None:
        table = {}
        for f in desc.fields:
            table.setdefault(f.camelcase_name, f)
        for f in desc.fields:
            table[f.name] = f
            table.setdefault(f.json_name, f)
        _FIELDS[desc.full_name] = table
    return table


def _message(data: Any, desc: Any, path: str) -> Any:
    name = desc.full_name
    if name.startswith("google.protobuf."):
        if name == "google.protobuf.Any":
            return _any(data, path)
        if name in _WRAPPERS:
            return _wrapper(data, desc, path)
        if name == "google.protobuf.Duration":
            return _duration(data, desc, path)
        if name == "google.protobuf.Timestamp":
            return _timestamp(data, desc, path)
        if name == "google.protobuf.FieldMask":
            return _field_mask(data, desc, path)
        if name == "google.protobuf.ListValue":
            return data.get("values", []) if isinstance(data, dict) and set(data) <= {"values"} else data
        if name in _UNCHANGED:
            return data
    if not isinstance(data, Mapping):
        return data  # json_format says what it expected
    return _fields_of(data, desc, path)


def _fields_of(data: Mapping[str, Any], desc: Any, path: str) -> dict[str, Any]:
    table = _fields(desc)
    out: dict[str, Any] = {}
    given: dict[str, str] = {}
    for key, value in data.items():
        f = table.get(key) if isinstance(key, str) else None
        if f is None:
            if key == "<<":
                raise _fail(f"{path}.<<", '"<<" is a YAML merge key, which Envoy\'s YAML parser does not read: '
                                          "write the fields out")
            out[key] = value  # an unknown field: json_format names it (and snapshot files suggest one)
            continue
        if value is None:
            continue  # null sets nothing (for a google.protobuf.Value, json_format makes it null)
        if f.name in given:
            raise _fail(f"{path}.{key}", f"{f.name} is given twice, as {given[f.name]} and {key}: keep one "
                                         "(Envoy would keep either, in no order you can rely on)")
        given[f.name] = key
        out[key] = _field(value, f, f"{path}.{key}")
    for key, value in data.items():  # nulls that json_format gives a meaning (Value, NullValue)
        if value is None and isinstance(key, str) and key in table and key not in out:
            f = table[key]
            if f.type == _FD.TYPE_MESSAGE and f.message_type.full_name == "google.protobuf.Value":
                out[key] = None
    return out


def _field(value: Any, f: Any, path: str) -> Any:
    if f.type == _FD.TYPE_MESSAGE and f.message_type.GetOptions().map_entry:
        if not isinstance(value, Mapping):
            return value
        value_f = f.message_type.fields_by_name["value"]  # null: the default value, as protobuf's parser makes it
        return {k: _default(value_f) if v is None else _single(v, value_f, f"{path}[{k}]") for k, v in value.items()}
    if f.is_repeated:
        out: list[Any] = []
        if isinstance(value, list):
            _elements(value, f, path, out)
        else:
            out.append(_single(value, f, f"{path}[0]"))
        return out
    return _single(value, f, path)


def _elements(items: list[Any], f: Any, path: str, out: list[Any]) -> None:
    """protobuf's legacy ParseArray: a list in the list is flattened into it, null is the default."""
    element = f.message_type.full_name if f.type == _FD.TYPE_MESSAGE else None
    for item in items:
        if item is None:
            if element == "google.protobuf.Value":
                out.append(None)
            else:
                out.append(_default(f))
        elif isinstance(item, list) and element not in _NOT_FLATTENED:
            _elements(item, f, path, out)
        else:
            out.append(_single(item, f, f"{path}[{len(out)}]"))


def _default(f: Any) -> Any:
    if f.type == _FD.TYPE_MESSAGE:
        return {} if f.message_type.full_name not in _WRAPPERS else _default(f.message_type.fields_by_name["value"])
    if f.type == _FD.TYPE_ENUM:
        return 0
    if f.type == _FD.TYPE_BOOL:
        return False
    if f.type in (_FD.TYPE_STRING, _FD.TYPE_BYTES):
        return ""
    return 0


def _single(value: Any, f: Any, path: str) -> Any:
    t = f.type
    if t == _FD.TYPE_MESSAGE:
        return _message(value, f.message_type, path)
    if t == _FD.TYPE_ENUM:
        return _enum(value, f.enum_type, path)
    if t == _FD.TYPE_STRING:
        return _string(value, path)
    if t == _FD.TYPE_BOOL:
        return _bool(value, path)
    if t == _FD.TYPE_BYTES:
        return _bytes(value, path)
    if f.cpp_type in _INT_TYPES:
        return _integer(value, f.cpp_type, path)
    return _float(value, f.cpp_type == _FD.CPPTYPE_FLOAT, path)


def _what(value: Any) -> str:
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, (int, float)):
        return f"the number {value!r}"
    return repr(value)


_YAML_BOOLEANS = "(YAML reads y, yes, on and true, n, no, off and false as booleans)"


def _string(value: Any, path: str) -> Any:
    if isinstance(value, bool):
        raise _fail(path, f"expected a string, got {_what(value)} {_YAML_BOOLEANS}: quote it")
    if isinstance(value, (int, float)):
        raise _fail(path, f"expected a string, got {_what(value)}: quote it")
    return value


def _bool(value: Any, path: str) -> Any:
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        flag = _ATOB.get(value.lower()) if value.isascii() else None
        if flag is None:
            raise _fail(path, f"expected true or false, got {value!r} (Envoy also reads the strings "
                              '"yes" and "no", "y" and "n", "t" and "f", "1" and "0")')
        return flag
    if isinstance(value, (int, float)):
        raise _fail(path, f"expected true or false, got {_what(value)}")
    return value


def _bytes(value: Any, path: str) -> Any:
    if not isinstance(value, str):
        return value
    decoded = _b64decode(value)
    if decoded is None:
        raise _fail(path, f"{value!r} is not base64")
    return base64.b64encode(decoded).decode("ascii")


def _enum(value: Any, enum: Any, path: str) -> Any:
    if isinstance(value, bool):
        raise _fail(path, f"expected a name of {enum.full_name}, got {_what(value)} {_YAML_BOOLEANS}")
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if not isinstance(value, str):
        return value
    names, folded = _enum_names(enum)
    if value in names:
        return value
    found = folded.get(value.lower()) if value.isascii() else None
    if found is not None:
        return found
    number = simple_atoi(value)
    if number is not None:
        return number
    close = difflib.get_close_matches(value.upper(), sorted(names), n=1)
    hint = f"; did you mean {close[0]}?" if close else f" (one of {', '.join(sorted(names))})"
    raise _fail(path, f"unknown value {value!r} for {enum.full_name}{hint}")


def _enum_names(enum: Any) -> tuple[frozenset[str], dict[str, str]]:
    known = _ENUMS.get(enum.full_name)
    if known is None:
        folded: dict[str, str] = {}
        for v in enum.values:  # the first in declaration order wins, as in protobuf
            folded.setdefault(v.name.lower(), v.name)
        known = _ENUMS[enum.full_name] = (frozenset(v.name for v in enum.values), folded)
    return known


def _integer(value: Any, cpp_type: int, path: str) -> Any:
    """protobuf's ParseIntInner: an integer, or a string absl::SimpleAtoi reads, or a number (or a
    string absl::SimpleAtod reads) with no fraction within 2^53; then the field's range."""
    signed = cpp_type in (_FD.CPPTYPE_INT32, _FD.CPPTYPE_INT64)
    if isinstance(value, bool):
        raise _fail(path, f"expected an integer, got {_what(value)} {_YAML_BOOLEANS}")
    if isinstance(value, int):
        number = value
    elif isinstance(value, float):
        number = _float_as_integer(value, value, signed, path)
    elif isinstance(value, str):
        if any(c in _SPACE for c in value):
            raise _fail(path, f"{value!r} has whitespace in it: Envoy does not read it as a number")
        digits = simple_atoi(value) if value.isascii() else None
        if digits is not None and (digits >= 0 or signed):
            number = digits
        else:  # absl::SimpleAtoi refused it (into an unsigned type, a negative number too): SimpleAtod
            d = simple_atod(value) if value.isascii() else None
            if d is None:
                raise _fail(path, f"{value!r} is not a number as Envoy reads one (digits, or forms such as "
                                  '"1e3" and "0x10"; no "_")')
            number = _float_as_integer(d, value, signed, path)
    else:
        return value  # json_format says what it expected
    low, high = {
        _FD.CPPTYPE_INT32: _INT32, _FD.CPPTYPE_UINT32: _UINT32, _FD.CPPTYPE_INT64: _INT64, _FD.CPPTYPE_UINT64: _UINT64,
    }[cpp_type]  # fmt: skip
    if not low <= number <= high:
        raise _fail(path, f"{value!r} is out of range for this field ({low} to {high})")
    return number


def _float_as_integer(d: float, written: Any, signed: bool, path: str) -> int:
    low, high = (-9007199254740992.0, 9007199254740992.0) if signed else (0.0, 18014398509481984.0)
    if not math.isfinite(d):
        raise _fail(path, f"{written!r} is not a finite number")
    if not low <= d <= high:
        raise _fail(path, f"{written!r} is out of range: Envoy reads an integer written as a floating-point "
                          "number only within 2^53 (write its digits)")
    if not d.is_integer():
        raise _fail(path, f"expected an integer, {written!r} has a fraction")
    return int(d)


def _float(value: Any, is_float32: bool, path: str) -> Any:
    if isinstance(value, bool):
        raise _fail(path, f"expected a number, got {_what(value)} {_YAML_BOOLEANS}")
    if isinstance(value, str):
        if value in ("NaN", "Infinity", "-Infinity"):
            return value
        d = simple_atod(value) if value.isascii() else None
        if d is None:
            raise _fail(path, f"{value!r} is not a number as Envoy reads one (no \"_\")")
        if math.isnan(d):
            return "NaN"
        if math.isinf(d):
            return "Infinity" if d > 0 else "-Infinity"
        value = d
    if is_float32 and isinstance(value, (int, float)) and math.isfinite(value) and abs(value) > _FLOAT32_MAX:
        raise _fail(path, f"{value!r} is out of range for a float")
    return value


# ------------------------------------------------------------------ well-known types


def _any(data: Any, path: str) -> Any:
    if not isinstance(data, Mapping) or "@type" not in data:
        return data  # {} is an empty Any; anything else json_format refuses
    url = data["@type"]
    if not isinstance(url, str):
        return data
    if url.rfind("/") <= 0:
        raise _fail(f"{path}.@type", f'the type URL {url!r} has no host before its last "/" (Envoy refuses it): '
                                     f'write "{resource_types.TYPE_PREFIX}{url.lstrip("/")}"')
    try:
        inner = resource_types.message_class(url).DESCRIPTOR
    except ValueError:
        return data  # json_form reports the unknown type, with its line
    if inner.full_name in _SPECIAL_IN_ANY:
        extra = sorted(k for k in data if k not in ("@type", "value"))
        if extra:
            raise _fail(f"{path}.{extra[0]}", f"an Any holding a {inner.full_name} has only @type and value")
        if "value" not in data:
            return data
        return {"@type": url, "value": _message(data["value"], inner, f"{path}.value")}
    body = _fields_of({k: v for k, v in data.items() if k != "@type"}, inner, path)
    return {"@type": url, **body}


def _wrapper(data: Any, desc: Any, path: str) -> Any:
    f = desc.fields_by_name["value"]
    if isinstance(data, Mapping):  # the legacy object form, {value: ...}
        extra = sorted(k for k in data if k != "value")
        if extra:
            raise _fail(f"{path}.{extra[0]}", f"{desc.full_name} has only a value field")
        data = data.get("value")
        if data is None:
            return _default(f)
        return _single(data, f, f"{path}.value")
    return _single(data, f, path)


def _seconds_and_nanos(data: Mapping[str, Any], desc: Any, path: str) -> tuple[int, int]:
    extra = sorted(k for k in data if k not in ("seconds", "nanos"))
    if extra:
        raise _fail(f"{path}.{extra[0]}", f"{desc.full_name} has the fields seconds and nanos")
    values = _fields_of(data, desc, path)
    return values.get("seconds", 0), values.get("nanos", 0)


def _duration(data: Any, desc: Any, path: str) -> Any:
    if isinstance(data, str):
        if not valid_duration(data):
            raise _fail(path, f"{data!r} is not a duration as Envoy reads one: digits, then optionally a point "
                              'and 1 to 9 digits, then "s" (like "5s" or "0.25s")')
        return data
    if isinstance(data, Mapping):
        seconds, nanos = _seconds_and_nanos(data, desc, path)
        try:
            return duration_pb2.Duration(seconds=seconds, nanos=nanos).ToJsonString()
        except ValueError as exc:
            raise _fail(path, f"not a valid duration: {exc}") from None
    if isinstance(data, (bool, int, float)):
        raise _fail(path, f'a duration is a string such as "5s", not {_what(data)}')
    return data


def _timestamp(data: Any, desc: Any, path: str) -> Any:
    if isinstance(data, Mapping):
        seconds, nanos = _seconds_and_nanos(data, desc, path)
        try:
            return timestamp_pb2.Timestamp(seconds=seconds, nanos=nanos).ToJsonString()
        except ValueError as exc:
            raise _fail(path, f"not a valid timestamp: {exc}") from None
    return data


def _field_mask(data: Any, desc: Any, path: str) -> Any:
    if isinstance(data, Mapping) and set(data) <= {"paths"}:
        paths = data.get("paths") or []
        paths = [paths] if isinstance(paths, str) else paths
    elif isinstance(data, str):
        # protobuf's legacy reading: an upper-case letter is "_" and the letter, all else is kept
        paths = ["".join("_" + c.lower() if "A" <= c <= "Z" else c for c in p) for p in data.split(",")] if data else []
    else:
        return data
    try:
        return field_mask_pb2.FieldMask(paths=paths).ToJsonString()
    except (ValueError, TypeError) as exc:
        raise _fail(path, f"not a field mask json_format can write: {exc}") from None
