"""Text as Envoy reads it: YAML as yaml-cpp and Envoy's YAML-to-JSON conversion read it, JSON as
protobuf's C++ parser reads it with the legacy syntax Envoy gets.

Envoy reads a ``.yaml``/``.yml`` config file with yaml-cpp and turns it into JSON
(``parseYamlNode`` in ``source/common/protobuf/yaml_utility.cc``); any other file is JSON.
PyYAML reads YAML 1.1 and differs in ways that change what a file means:

========================  ==========================  ==============================
plain scalar              PyYAML                      Envoy
========================  ==========================  ==============================
``y``, ``n``, ``Y``, ``N``  text                        booleans
``1.5``, ``1e3``, ``.inf``  floats (``1e3``: text)      text (parsed per field later)
``1_000``, ``12:30``,     1000, 750, 5                text
``0b101``
``2024-01-01``            a date                      text
``3000000000``            an integer                  text (only 32-bit integers are
                                                      numbers; 64-bit ones become text)
``! 80``                  80                          text ("!" means a string)
``!!str 80``, ``!foo x``  "80", an error              80, "x" (tags are ignored)
``<<: *anchor``           a merge                     a key named "<<"
a key ``80:``, ``~:``     80, None                    "80", "null" (keys are text)
``!ignore key:``          an error                    dropped (Envoy's own extension)
a second document         an error                    not read
========================  ==========================  ==============================

:func:`load_yaml` reads YAML with PyYAML's parser (libyaml when available) and builds the data
from its events with yaml-cpp's and Envoy's rules, faster than PyYAML's own constructor; it
never builds a Python object from a tag. :func:`load_json` reads standard JSON with the json
module and falls back to a reader of protobuf's legacy syntax (single quotes, unquoted keys,
trailing commas, raw control characters, ``\\'`` and ``\\U`` escapes); ``NaN`` and ``Infinity``
are refused, as Envoy refuses them.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

import yaml

__all__ = ["JsonSyntaxError", "YamlDocument", "load_json", "load_yaml", "yaml_scalar"]

#: libyaml's parser when PyYAML was built with it (about 20x faster), else the pure one.
_PARSER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

_NULLS = frozenset({"", "~", "null", "Null", "NULL"})
_BOOLS = {
    **dict.fromkeys(("y", "Y", "yes", "Yes", "YES", "true", "True", "TRUE", "on", "On", "ON"), True),
    **dict.fromkeys(("n", "N", "no", "No", "NO", "false", "False", "FALSE", "off", "Off", "OFF"), False),
}
# yaml-cpp reads integers with a C++ stream that finds the base itself: 0x.. hex, 0.. octal.
_INTEGER = re.compile(r"([+-]?)(?:0[xX]([0-9a-fA-F]+)|(0[0-7]*)|([1-9][0-9]*))\Z")
_INT64 = 1 << 63
_INT32 = 1 << 31


def yaml_scalar(text: str, *, plain: bool = True, tag: str | None = None) -> Any:
    """A YAML scalar as Envoy's JSON has it: ``plain`` (not quoted, not a block) and untagged
    null words are null; quoted, block or ``!``-tagged scalars are text; otherwise (whatever the
    tag) booleans, then integers (text if they need more than 32 bits), else text."""
    if tag == "!" or (not plain and tag is None):
        return text
    if tag is None and text in _NULLS:
        return None
    flag = _BOOLS.get(text)
    if flag is not None:
        return flag
    if text and text[0] in "+-0123456789":
        m = _INTEGER.match(text)
        if m is not None:
            sign, hexa, octal, decimal = m.groups()
            n = int(hexa, 16) if hexa else int(octal, 8) if octal else int(decimal)
            if sign == "-":
                n = -n
            if -_INT64 <= n < _INT64:
                return n if -_INT32 <= n < _INT32 else str(n)
    return text


@dataclass(frozen=True)
class YamlDocument:
    """The first document of a YAML text as Envoy reads it; ``more_at``: the line where a second
    document starts (Envoy does not read it), or None."""

    data: Any
    more_at: int | None = None


_KEY = object()  # a mapping waits for a key
_SKIP = object()  # the key was tagged !ignore: drop its value
_SCALAR, _ALIAS = yaml.ScalarEvent, yaml.AliasEvent
_MAPPING, _SEQUENCE = yaml.MappingStartEvent, yaml.SequenceStartEvent
_ENDS = (yaml.MappingEndEvent, yaml.SequenceEndEvent)


def _error(problem: str, event: Any) -> yaml.YAMLError:
    return yaml.composer.ComposerError(None, None, problem, event.start_mark)


def load_yaml(text: str) -> YamlDocument:
    """The first YAML document of ``text`` as Envoy reads it. Raises ``yaml.YAMLError`` (with a
    ``problem_mark``) for text that is not YAML."""
    parser = _PARSER(text)
    try:
        get = parser.get_event
        get()  # StreamStartEvent
        if isinstance(get(), yaml.StreamEndEvent):
            return YamlDocument(None)
        anchors: dict[str, Any] = {}
        key_texts: dict[str, str] = {}  # anchor of a scalar -> its text, for an alias used as a key
        frames: list[list[Any]] = []  # [the open container, its state (_KEY, a key or _SKIP for dicts)]
        root = None
        while True:
            event = get()
            kind = type(event)
            if kind in _ENDS:
                frames.pop()
                if frames:
                    continue
                break
            frame = frames[-1] if frames else None
            if frame is not None and frame[1] is _KEY:  # a key: always its text
                if kind is _SCALAR:
                    if event.tag == "!ignore":
                        frame[1] = _SKIP
                    elif event.tag is None and event.implicit[0] and event.value in _NULLS:
                        frame[1] = "null"
                    else:
                        frame[1] = event.value
                    if event.anchor is not None:
                        anchors[event.anchor] = _scalar(event)
                        key_texts[event.anchor] = event.value
                    continue
                if kind is _ALIAS and event.anchor in key_texts:
                    frame[1] = key_texts[event.anchor]
                    continue
                raise _error("a mapping key must be a plain value, not a list or a mapping", event)
            if kind is _SCALAR:
                value = _scalar(event)
                if event.anchor is not None:
                    anchors[event.anchor] = value
                    key_texts[event.anchor] = event.value
            elif kind is _MAPPING or kind is _SEQUENCE:
                value = {} if kind is _MAPPING else []
                if event.anchor is not None:
                    anchors[event.anchor] = value
            elif kind is _ALIAS:
                if event.anchor not in anchors:
                    raise _error(f"found undefined alias {event.anchor!r}", event)
                value = anchors[event.anchor]
                if any(f[0] is value for f in frames):
                    raise _error(f"alias {event.anchor!r} refers to a node that contains it", event)
            else:  # an empty document
                break
            if frame is None:
                root = value
            elif type(frame[0]) is list:
                frame[0].append(value)
            else:
                if frame[1] is not _SKIP:
                    frame[0][frame[1]] = value
                frame[1] = _KEY
            if kind is _MAPPING:
                frames.append([value, _KEY])
            elif kind is _SEQUENCE:
                frames.append([value, None])
            elif frame is None:
                break  # a document that is one scalar
        get()  # DocumentEndEvent
        following = get()
        more_at = None if isinstance(following, yaml.StreamEndEvent) else following.start_mark.line + 1
        return YamlDocument(root, more_at)
    finally:
        parser.dispose()


def _scalar(event: Any) -> Any:
    tag = event.tag
    if tag is None:
        return yaml_scalar(event.value, plain=event.implicit[0])
    return yaml_scalar(event.value, tag=tag)


# ------------------------------------------------------------------ JSON


class JsonSyntaxError(ValueError):
    """JSON Envoy refuses: ``msg``, ``lineno``, ``colno``, as ``json.JSONDecodeError`` has them."""

    def __init__(self, msg: str, text: str, pos: int) -> None:
        self.msg = msg
        self.lineno = text.count("\n", 0, pos) + 1
        self.colno = pos - text.rfind("\n", 0, pos)
        super().__init__(f"{msg}: line {self.lineno} column {self.colno}")


def _no_constant(name: str) -> Any:
    raise ValueError(name)


_STANDARD_JSON = json.JSONDecoder(parse_constant=_no_constant)  # one decoder: json.loads(..., **kw) makes one a call


def load_json(text: str) -> Any:
    """JSON as Envoy reads it (see the module's docstring). Raises JsonSyntaxError."""
    try:
        return _STANDARD_JSON.decode(text)
    except ValueError:  # not standard JSON, or NaN/Infinity: the legacy reader decides, and explains
        return _LegacyJson(text).document()


_JSON_SPACE = " \t\r\n"
_ESCAPES = {'"': '"', "\\": "\\", "/": "/", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "'": "'"}
_NUMBER = re.compile(r"-?[0-9]*(?:\.[0-9]*)?(?:[eE][+-]?[0-9]*)?")
_BARE_WORD = re.compile(r"[A-Za-z0-9_]*")


class _LegacyJson:
    """protobuf's JsonLexer with allow_legacy_syntax, as far as text into data goes."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.depth = 0

    def error(self, msg: str, pos: int | None = None) -> JsonSyntaxError:
        return JsonSyntaxError(msg, self.text, self.pos if pos is None else pos)

    def skip(self) -> None:
        text, pos = self.text, self.pos
        while pos < len(text) and text[pos] in _JSON_SPACE:
            pos += 1
        self.pos = pos

    def peek(self, token: str) -> bool:
        """Consume ``token`` if it comes next (after whitespace)."""
        self.skip()
        if self.text.startswith(token, self.pos):
            self.pos += len(token)
            return True
        return False

    def document(self) -> Any:
        value = self.value()
        self.skip()
        if self.pos != len(self.text):
            raise self.error("extraneous characters after the end of the JSON value")
        return value

    def value(self) -> Any:
        self.skip()
        if self.pos >= len(self.text):
            raise self.error("the text ends where a value was expected")
        c = self.text[self.pos]
        if c == "{":
            return self.collection("}", {})
        if c == "[":
            return self.collection("]", [])
        if c in "\"'":
            return self.string()
        if c == "-" or "0" <= c <= "9":
            return self.number()
        for word, result in (("true", True), ("false", False), ("null", None)):
            if self.text.startswith(word, self.pos):
                self.pos += len(word)
                return result
        raise self.error(f"unexpected character {c!r}")

    def collection(self, close: str, out: Any) -> Any:
        self.pos += 1
        self.depth += 1
        if self.depth > 100:
            raise self.error("JSON nested too deeply")
        if not self.peek(close):
            while True:
                if isinstance(out, dict):
                    key = self.key()
                    if not self.peek(":"):
                        raise self.error("expected ':'")
                    out[key] = self.value()
                else:
                    out.append(self.value())
                has_comma = self.peek(",")
                if self.peek(close):  # a trailing comma is fine
                    break
                if not has_comma:
                    raise self.error(f"expected ',' or {close!r}")
        self.depth -= 1
        return out

    def key(self) -> str:
        self.skip()
        if self.text[self.pos:self.pos + 1] in ("'", '"'):
            return self.string()
        word = _BARE_WORD.match(self.text, self.pos).group()  # type: ignore[union-attr]
        if not word or word[0].isdigit() or word in ("null", "true", "false"):
            raise self.error("expected a key (a string)")
        self.pos += len(word)
        return word

    def string(self) -> str:
        text = self.text
        quote = text[self.pos]
        start = self.pos
        self.pos += 1
        parts: list[str] = []
        while True:
            end = self.pos
            while end < len(text) and text[end] != quote and text[end] != "\\":
                end += 1
            parts.append(text[self.pos:end])
            if end >= len(text):
                raise self.error("the text ends inside a string", start)
            self.pos = end + 1
            if text[end] == quote:
                return "".join(parts)
            c = text[self.pos:self.pos + 1]
            self.pos += 1
            if c in ("u", "U"):
                parts.append(self.unicode_escape())
            elif c in _ESCAPES:
                parts.append(_ESCAPES[c])
            else:
                raise self.error(f"invalid escape \\{c}", self.pos - 2)

    def hex4(self) -> int:
        digits = self.text[self.pos:self.pos + 4]
        if len(digits) != 4 or any(d not in "0123456789abcdefABCDEF" for d in digits):
            raise self.error("invalid Unicode escape")
        self.pos += 4
        return int(digits, 16)

    def unicode_escape(self) -> str:
        rune = self.hex4()
        if 0xD800 <= rune <= 0xDBFF:
            if self.text[self.pos:self.pos + 2] != "\\u":
                raise self.error("a high surrogate without its low surrogate")
            self.pos += 2
            low = self.hex4()
            if not 0xDC00 <= low <= 0xDFFF:
                raise self.error("invalid low surrogate")
            rune = 0x10000 + ((rune & 0x3FF) << 10 | (low & 0x3FF))
        elif 0xDC00 <= rune <= 0xDFFF:
            raise self.error("unpaired low surrogate")
        return chr(rune)

    def number(self) -> Any:
        start = self.pos
        found = _NUMBER.match(self.text, self.pos).group()  # type: ignore[union-attr]
        digits = found.lstrip("-")
        if not digits[:1].isdigit():
            raise self.error("expected a number")
        if len(digits) > 1 and digits[0] == "0" and digits[1].isdigit():
            raise self.error("a number cannot have a leading zero")
        if found[-1] in ".eE+-":
            raise self.error(f"invalid number {found!r}")
        self.pos += len(found)
        self.skip()
        if self.pos < len(self.text) and self.text[self.pos] not in ",]}":
            raise self.error(f"unexpected character {self.text[self.pos]!r} after a number")
        if any(c in found for c in ".eE"):
            value = float(found)
            if not math.isfinite(value):
                raise self.error(f"invalid number {found!r}", start)
            return value
        return int(found)
