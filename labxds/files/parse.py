"""One snapshot file: read it (YAML or JSON, as Envoy reads them), unwrap TTL wrappers, and report
mistakes with their line."""

from __future__ import annotations

import difflib
import functools
import json
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import yaml
from google.protobuf import duration_pb2

from ..net.budget import DEFAULT_BUDGET, BudgetExceeded, InputBudget, check_data, expanded_size
from ..xds import envoy_text, lenient, resource_types
from ..xds.messages import (
    ResourceError,
    document_items,
    to_message,
    version_of_document,
)
from ..xds.resource_types import ENDPOINT
from .lines import key_node, problem_line, search_line, snake

__all__ = [
    "NODES_DIR",
    "SNAPSHOT_SUFFIXES",
    "FileResource",
    "ParseMemo",
    "PathLike",
    "SnapshotFileError",
    "read_file",
]

log = logging.getLogger("labxds.snapshot_files")

SNAPSHOT_SUFFIXES = (".yaml", ".yml", ".json")
NODES_DIR = "nodes"

PathLike = Union[str, "os.PathLike[str]"]


# --------------------------------------------------------------------------- errors


class SnapshotFileError(ValueError):
    """A snapshot file that cannot be served: ``path``, ``line`` (or None), ``resource``, ``reason``."""

    def __init__(self, path: PathLike, reason: str, *, line: int | None = None, resource: str = "") -> None:
        self.path = Path(path)
        self.line = line
        self.resource = resource
        self.reason = reason
        where = f"{self.path}:{line}" if line else str(self.path)
        super().__init__(f"{where}: {resource}: {reason}" if resource else f"{where}: {reason}")


# --------------------------------------------------------------------------- one file


@dataclass(frozen=True)
class FileResource:
    message: Any
    type_url: str
    name: str
    path: Path
    index: int
    doc: _File
    ttl: float | None = None  # seconds, from a Resource wrapper

    @property
    def line(self) -> int | None:
        return self.doc.resource_line(self.index)

    @property
    def node(self) -> yaml.Node | None:
        return self.doc.resource_node(self.index)

    @property
    def label(self) -> str:
        return f"resource #{self.index} ({self.name})" if self.name else f"resource #{self.index}"


@dataclass(eq=False)
class _File:
    path: Path
    data: Any
    text: str
    version: str | None = None
    resources: list[FileResource] = field(default_factory=list)

    @functools.cached_property
    def root(self) -> yaml.Node | None:
        """The composed YAML tree, for line numbers; built only when an error needs a line
        (composing costs ten times the parse, on every reload)."""
        try:  # JSON is (nearly) YAML
            return yaml.compose(self.text, Loader=_SAFE_LOADER)
        except yaml.YAMLError:
            return None

    def item_node(self, index: int) -> yaml.Node | None:
        """The node of the ``index``-th item of the document (a resource or its wrapper)."""
        root = self.root
        if isinstance(root, yaml.MappingNode):
            for key, value in root.value:
                if key.value == "resources" and isinstance(value, yaml.SequenceNode):
                    return value.value[index] if index < len(value.value) else None
                if key.value == "resources" and isinstance(value, yaml.MappingNode):
                    return value if index == 0 else None  # one resource for the list, as Envoy reads it
            return root if index == 0 else None  # a single "@type" document
        if isinstance(root, yaml.SequenceNode):
            return root.value[index] if index < len(root.value) else None
        return None

    def resource_node(self, index: int) -> yaml.Node | None:
        """The node of the ``index``-th resource itself (inside its wrapper, if it has one)."""
        node = self.item_node(index)
        if node is None:
            return None
        kind = key_node(node, "@type")
        inner = key_node(node, "resource")
        wrapped = kind is not None and isinstance(kind[1], yaml.ScalarNode) and kind[1].value == _WRAPPER_TYPE
        return inner[1] if wrapped and inner is not None else node

    def resource_line(self, index: int) -> int | None:
        node = self.resource_node(index)
        return node.start_mark.line + 1 if node is not None else None


#: libyaml's safe loader when PyYAML was built with it (about 20x faster), else the pure one.
_SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _read_text(path: Path, budget: InputBudget = DEFAULT_BUDGET) -> str:
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        try:
            budget.check_bytes(os.fstat(fd).st_size, "the file")
            chunks = []
            size = 0
            while chunk := os.read(fd, 1 << 20):
                size += len(chunk)
                budget.check_bytes(size, "the file")  # it grew while being read
                chunks.append(chunk)
        finally:
            os.close(fd)
        raw = b"".join(chunks)
        return raw.decode("utf-8")
    except BudgetExceeded as exc:
        raise SnapshotFileError(path, f"refused: {exc}") from None
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        raise SnapshotFileError(path, f"not UTF-8 text ({exc.reason} at byte {exc.start}, column {column})",
                                line=line) from None
    except IsADirectoryError:
        raise SnapshotFileError(path, "is a directory, not a snapshot file") from None
    except FileNotFoundError:
        raise SnapshotFileError(path, "no such file or directory") from None
    except OSError as exc:
        raise SnapshotFileError(path, f"cannot read it: {exc.strerror or exc}") from None


def _yaml_children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def _check_yaml_budget(path: Path, node: yaml.Node | None, budget: InputBudget) -> None:
    """Refuse a composed YAML tree whose aliases expand past ``budget``, before it is constructed."""
    if node is None:
        return
    try:
        expanded_size(node, _yaml_children, budget)
    except BudgetExceeded as exc:
        at = exc.where if isinstance(exc.where, yaml.Node) else node
        line = at.start_mark.line + 1
        if exc.what == "cycle":
            reason = f"an alias names the mapping or list it is in (anchored at line {line}): the value would never end"
        else:
            reason = (f"refused: {exc} (through the value anchored at line {line}); YAML aliases are expanded "
                      "before a snapshot is built, so a few lines can stand for millions of values")
        raise SnapshotFileError(path, reason, line=line) from None


def _parse_yaml(path: Path, text: str, budget: InputBudget = DEFAULT_BUDGET) -> _File:
    try:
        doc = envoy_text.load_yaml(text)  # as Envoy reads it; a tag never builds a Python object
        if "&" in text:
            # Anchors: an alias is the anchored value again, shared, not copied, so loading is
            # cheap; walking it is not (9 aliases of 9 aliases 8 deep: 43 million values). Measure
            # the expansion before anything walks it.
            try:
                check_data(doc.data, budget)
            except BudgetExceeded:
                _check_yaml_budget(path, yaml.compose(text, Loader=_SAFE_LOADER), budget)  # to name the line
                raise
    except BudgetExceeded as exc:
        raise SnapshotFileError(path, f"refused: {exc}; YAML aliases are expanded before a snapshot is built, "
                                "so a few lines can stand for millions of values") from None
    except yaml.reader.ReaderError as exc:  # a character YAML does not allow: no mark, a position
        line = text.count("\n", 0, exc.position) + 1
        char = exc.character
        shown = f"#x{char:04x}" if isinstance(char, int) else f"#x{ord(char):04x}" if isinstance(char, str) and len(char) == 1 else repr(char)
        raise SnapshotFileError(path, f"not valid YAML: {exc.reason} ({shown})", line=line) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        problem = getattr(exc, "problem", None) or str(exc)
        context = getattr(exc, "context", None)
        reason = f"not valid YAML: {problem}" + (f" ({context})" if context and context not in problem else "")
        raise SnapshotFileError(path, reason, line=mark.line + 1 if mark is not None else None) from None
    if doc.more_at is not None:
        log.warning("%s:%d: a second YAML document, which Envoy does not read: only the first is served",
                    path, doc.more_at)
    return _File(path, doc.data, text)


def _parse_json(path: Path, text: str) -> _File:
    try:
        data = envoy_text.load_json(text) if text.strip() else None
    except envoy_text.JsonSyntaxError as exc:
        raise SnapshotFileError(path, f"not valid JSON: {exc.msg} (column {exc.colno})", line=exc.lineno) from None
    except RecursionError:
        raise SnapshotFileError(path, "refused: it nests too deeply to parse") from None
    return _File(path, data, text)


class ParseMemo:
    """What the last load parsed: each file by its text, each resource by its canonical JSON. A
    reload parses only the files, and in them the resources, that an edit changed."""

    def __init__(self) -> None:
        self._last: dict[str, Any] = {}
        self._next: dict[str, Any] = {}
        self._last_files: dict[tuple[Path, str], _File] = {}
        self._next_files: dict[tuple[Path, str], _File] = {}

    def file(self, path: Path, text: str) -> _File | None:
        doc = self._last_files.get((path, text))
        if doc is not None:
            self._next_files[(path, text)] = doc
        return doc

    def keep_file(self, doc: _File) -> None:
        self._next_files[(doc.path, doc.text)] = doc

    def message(self, item: Any, where: str) -> Any:
        try:
            key = json.dumps(item, sort_keys=True, separators=(",", ":"))
        except (TypeError, ValueError):  # not JSON-like (YAML dates, mixed keys): parse it afresh
            return to_message(item, where=where)
        msg = self._next.get(key)
        if msg is None:
            msg = self._last.get(key)
        if msg is None:
            msg = to_message(item, where=where)
        self._next[key] = msg
        return msg

    def done(self, ok: bool) -> None:
        """A load ended: after a good one only its files and resources are kept."""
        self._last = self._next if ok else {**self._last, **self._next}
        self._last_files = self._next_files if ok else {**self._last_files, **self._next_files}
        self._next, self._next_files = {}, {}


#: The protocol's wrapper of a resource, here for its TTL.
_WRAPPER_TYPE = resource_types.TYPE_PREFIX + "envoy.service.discovery.v3.Resource"
_WRAPPER_KEYS = {"@type", "name", "ttl", "resource"}


def _unwrap(doc: _File, index: int, item: Any) -> tuple[Any, float | None, str | None]:
    """A Resource wrapper's resource, TTL in seconds and name; other items pass through."""
    if not (isinstance(item, Mapping) and item.get("@type") == _WRAPPER_TYPE):
        return item, None, None

    def mistake(reason: str, field: str | None = None) -> SnapshotFileError:
        node = doc.item_node(index)
        line = (search_line(node, [field]) if field and node is not None else None) or (
            node.start_mark.line + 1 if node is not None else None)
        return SnapshotFileError(doc.path, reason, line=line, resource=f"resource #{index} (a Resource wrapper)")

    extra = sorted(set(item) - _WRAPPER_KEYS, key=str)
    if extra:
        raise mistake(f"a Resource wrapper here takes name, ttl and resource; {extra[0]!r} is not supported", str(extra[0]))
    inner = item.get("resource")
    if not isinstance(inner, Mapping) or "@type" not in inner:
        raise mistake('a Resource wrapper needs "resource": the resource itself, with its "@type"', "resource")
    ttl = item.get("ttl")
    seconds = None
    if ttl is not None:
        duration = duration_pb2.Duration()
        try:
            if not isinstance(ttl, str) or not lenient.valid_duration(ttl):
                raise ValueError
            duration.FromJsonString(ttl)
        except ValueError:
            raise mistake(f'ttl {ttl!r} is not a duration (write it like "30s" or "0.5s")', "ttl") from None
        seconds = duration.ToNanoseconds() / 1e9
        if seconds <= 0:
            raise mistake(f"ttl {ttl!r} must be positive", "ttl")
    name = item.get("name")
    if name is not None and not isinstance(name, str):
        raise mistake(f"name {name!r} is not a string", "name")
    return inner, seconds, name


def read_file(path: Path, memo: ParseMemo) -> _File:
    text = _read_text(path)
    known = memo.file(path, text)
    if known is not None:
        return known
    doc = _parse_json(path, text) if path.suffix.lower() == ".json" else _parse_yaml(path, text)
    try:
        items = document_items(doc.data)
    except ResourceError as exc:
        raise _wrap_resource_error(doc, exc) from None
    for i, item in enumerate(items):
        if not isinstance(item, Mapping):
            what = "null" if item is None else f"{type(item).__name__} {item!r}"
            raise SnapshotFileError(path, f'a resource is a mapping with "@type", not the {what}',
                                    line=doc.resource_line(i), resource=f"resource #{i}")
    unwrapped = [_unwrap(doc, i, item) for i, item in enumerate(items)]
    try:
        messages = [memo.message(item, f"resource #{i}") for i, (item, _, _) in enumerate(unwrapped)]
    except ResourceError as exc:
        raise _wrap_resource_error(doc, exc) from None
    doc.version = version_of_document(doc.data)
    for index, msg in enumerate(messages):
        type_url = resource_types.type_url_of(msg)
        try:
            rtype = resource_types.resource_type(type_url)
        except ValueError as exc:
            raise SnapshotFileError(path, str(exc), line=doc.resource_line(index), resource=f"resource #{index}") from None
        name = rtype.name_of(msg)
        if not name:
            key = "cluster_name" if type_url == ENDPOINT else "name"
            raise SnapshotFileError(
                path, f"{rtype.short} resource has an empty or missing {key!r}", line=doc.resource_line(index),
                resource=f"resource #{index}",
            )
        _, ttl, wrapper_name = unwrapped[index]
        if wrapper_name is not None and wrapper_name != name:
            wrapper = doc.item_node(index)
            raise SnapshotFileError(
                path, f"the Resource wrapper is named {wrapper_name!r} but its resource {name!r}",
                line=(search_line(wrapper, ["name"]) if wrapper is not None else None) or doc.resource_line(index),
                resource=f"resource #{index}",
            )
        doc.resources.append(FileResource(msg, type_url, name, path, index, doc, ttl))
    memo.keep_file(doc)
    return doc


# -- finding the line of a field --------------------------------------------------------------


def _tidy(problem: str) -> str:
    """json_format's text, shortened: the field's path first, a 'did you mean' for the field list."""
    head, sep, rest = problem.partition("\n")
    head = head.rstrip(".")
    at = re.search(r'\.? at "?([A-Za-z_][^\s"]*?)"?$', head)
    if at is None:
        return problem.rstrip(".")
    path = at.group(1).partition(".")[2]  # without the resource's message name
    inner = re.sub(r"^(Failed to parse \w+ field: )+", "", head[: at.start()])
    missing = re.search(r'^type "([^"]+)" has no field named "([^"]+)"$', inner)
    if missing:
        text = f"unknown field {missing.group(2)!r}" + (f" in {path}" if path else "") + f" ({missing.group(1)}"
        fields = [snake(f) for f in re.findall(r"'(\w+)'", rest)] if sep else []
        close = difflib.get_close_matches(snake(missing.group(2)), fields, n=1)
        return text + (f"; did you mean {close[0]!r}?)" if close else ")")
    return f"field {path}: {inner}" if path else inner


def _wrap_resource_error(doc: _File, exc: ResourceError) -> SnapshotFileError:
    index = re.match(r"resource #(\d+)", exc.where or "")
    problem = exc.problem
    line = None
    if index is not None:
        i = int(index.group(1))
        line = problem_line(doc.resource_node(i), problem) or doc.resource_line(i)
    else:  # the file's own fields (version_info...)
        line = problem_line(doc.root, problem)
    return SnapshotFileError(doc.path, _tidy(problem), line=line, resource=exc.where)
