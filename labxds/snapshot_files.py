"""Snapshots that live in files: load them, watch them, serve them (``python -m labxds serve``).

The files use Envoy's filesystem-config form, the one ``path_config_source`` reads::

    version_info: "1"            # optional
    resources:
    - "@type": type.googleapis.com/envoy.config.cluster.v3.Cluster
      name: example_proxy_cluster
      ...

A resource may be wrapped as the protocol wraps it to give it a time to live (rule 14), served
with heartbeats to clients that support TTLs::

    - "@type": type.googleapis.com/envoy.service.discovery.v3.Resource
      ttl: 30s
      resource:
        "@type": type.googleapis.com/envoy.config.cluster.v3.Cluster
        name: example_proxy_cluster
        ...

A PATH is one such file (YAML or JSON) or a directory: every ``*.yaml``, ``*.yml`` and ``*.json``
file directly in it, in name order, merged into one snapshot. In a directory, ``nodes/<node-id>/``
(a directory) or ``nodes/<node-id>.yaml`` holds one node's own, complete snapshot; everything else
is the default snapshot that every other node gets. Files are read with ``yaml.safe_load``: a
snapshot file never constructs Python objects.

Every mistake is reported as a :class:`SnapshotFileError` naming the file, the line where it can
be found, the resource (index and name) and the field or value at fault.
"""

from __future__ import annotations

import difflib
import errno
import functools
import json
import logging
import os
import re
import signal
import sys
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Union

import yaml
from google.protobuf import duration_pb2

from . import resource_types
from .messages import ResourceError, document_items, to_message, version_of_document
from .resource_types import CLUSTER, ENDPOINT, LISTENER, ROUTE
from .snapshot import ConsistencyError, Snapshot

__all__ = [
    "SNAPSHOT_SUFFIXES",
    "SnapshotFileError",
    "SnapshotSet",
    "SnapshotWatcher",
    "describe",
    "load_path",
    "load_snapshots",
    "serve",
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
class _Resource:
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
    resources: list[_Resource] = field(default_factory=list)

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
            return root if index == 0 else None  # a single "@type" document
        if isinstance(root, yaml.SequenceNode):
            return root.value[index] if index < len(root.value) else None
        return None

    def resource_node(self, index: int) -> yaml.Node | None:
        """The node of the ``index``-th resource itself (inside its wrapper, if it has one)."""
        node = self.item_node(index)
        if node is None:
            return None
        kind = _key(node, "@type")
        inner = _key(node, "resource")
        wrapped = kind is not None and isinstance(kind[1], yaml.ScalarNode) and kind[1].value == _WRAPPER_TYPE
        return inner[1] if wrapped and inner is not None else node

    def resource_line(self, index: int) -> int | None:
        node = self.resource_node(index)
        return node.start_mark.line + 1 if node is not None else None


#: libyaml's safe loader when PyYAML was built with it (about 20x faster), else the pure one.
_SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _read_text(path: Path) -> str:
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        try:
            chunks = []
            while chunk := os.read(fd, 1 << 20):
                chunks.append(chunk)
        finally:
            os.close(fd)
        return b"".join(chunks).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SnapshotFileError(path, f"not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except IsADirectoryError:
        raise SnapshotFileError(path, "is a directory, not a snapshot file") from None
    except FileNotFoundError:
        raise SnapshotFileError(path, "no such file or directory") from None
    except OSError as exc:
        raise SnapshotFileError(path, f"cannot read it: {exc.strerror or exc}") from None


def _parse_yaml(path: Path, text: str) -> _File:
    loader = _SAFE_LOADER(text)  # a safe loader: plain data only, never Python objects
    try:
        data = loader.get_single_data()
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        problem = getattr(exc, "problem", None) or str(exc)
        context = getattr(exc, "context", None)
        reason = f"not valid YAML: {problem}" + (f" ({context})" if context and context not in problem else "")
        if isinstance(exc, yaml.constructor.ConstructorError) and "tag" in problem:
            reason += "; snapshot files are plain YAML (read with yaml.safe_load): tags that build Python objects are refused"
        raise SnapshotFileError(path, reason, line=mark.line + 1 if mark is not None else None) from None
    finally:
        loader.dispose()
    return _File(path, data, text)


def _parse_json(path: Path, text: str) -> _File:
    try:
        data = json.loads(text) if text.strip() else None
    except json.JSONDecodeError as exc:
        raise SnapshotFileError(path, f"not valid JSON: {exc.msg} (column {exc.colno})", line=exc.lineno) from None
    return _File(path, data, text)


class _ParseMemo:
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
        line = (_search(node, [field]) if field and node is not None else None) or (
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
            if not isinstance(ttl, str):
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


def _read_file(path: Path, memo: _ParseMemo) -> _File:
    text = _read_text(path)
    known = memo.file(path, text)
    if known is not None:
        return known
    doc = _parse_json(path, text) if path.suffix.lower() == ".json" else _parse_yaml(path, text)
    try:
        items = document_items(doc.data)
    except ResourceError as exc:
        raise _wrap_resource_error(doc, exc) from None
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
                line=(_search(wrapper, ["name"]) if wrapper is not None else None) or doc.resource_line(index),
                resource=f"resource #{index}",
            )
        doc.resources.append(_Resource(msg, type_url, name, path, index, doc, ttl))
    memo.keep_file(doc)
    return doc


# -- finding the line of a field --------------------------------------------------------------

_INDEXED = re.compile(r"^(\w+)((?:\[\d+\])*)$")


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(p[:1].upper() + p[1:] for p in rest)


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)([A-Z])", r"_\1", name).lower()


def _key(node: yaml.Node, name: str) -> tuple[yaml.Node, yaml.Node] | None:
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode) and key.value in (name, _camel(name)):
                return key, value
    return None


def _follow(node: yaml.Node, steps: list[tuple[str, list[int]]]) -> int | None:
    """The line of the last key along an exact path such as load_assignment.endpoints[0]."""
    line = None
    for name, indices in steps:
        found = _key(node, name)
        if found is None:
            return line
        key, node = found
        line = key.start_mark.line + 1
        for i in indices:
            if not isinstance(node, yaml.SequenceNode) or i >= len(node.value):
                return line
            node = node.value[i]
            line = node.start_mark.line + 1
    return line


def _search(node: yaml.Node, names: list[str]) -> int | None:
    """The line of the first key chain ``names`` (lists in between are searched item by item)."""
    if not names:
        return None
    if isinstance(node, yaml.SequenceNode):
        for item in node.value:
            hit = _search(item, names)
            if hit is not None:
                return hit
        return None
    found = _key(node, names[0])
    if found is None:
        return None
    key, value = found
    deeper = _search(value, names[1:])
    return deeper if deeper is not None else key.start_mark.line + 1


def _scalar_line(node: yaml.Node, wanted: Callable[[str], bool]) -> int | None:
    stack = [node]
    while stack:
        n = stack.pop(0)
        if isinstance(n, yaml.ScalarNode) and isinstance(n.value, str) and wanted(n.value):
            return n.start_mark.line + 1
        if isinstance(n, yaml.MappingNode):
            for k, v in n.value:
                stack.extend((k, v))
        elif isinstance(n, yaml.SequenceNode):
            stack.extend(n.value)
    return None


def _problem_line(node: yaml.Node | None, problem: str) -> int | None:
    """Where in the resource ``node`` json_format's complaint points, best effort."""
    if node is None:
        return None
    first = problem.splitlines()[0] if problem else ""
    unknown_type = re.search(r"unknown message type '([^']+)'", first)
    if unknown_type:
        short = unknown_type.group(1)
        return _scalar_line(node, lambda v: v == short or v.endswith("/" + short))
    at = re.search(r' at "?([A-Za-z_][\w.\[\]]*?)"?\.?$', first)
    if at:
        parts = at.group(1).split(".")[1:]  # the first part is the resource's message name
        steps = []
        for part in parts:
            m = _INDEXED.match(part)
            if m is None:
                break
            steps.append((m.group(1), [int(i) for i in re.findall(r"\d+", m.group(2))]))
        missing = re.search(r'has no field named "([^"]+)"', first)
        if missing:
            steps.append((missing.group(1), []))
        line = _follow(node, steps)
        if line is not None:
            return line
    chain = re.findall(r"Failed to parse (\w+) field", first)
    missing = re.search(r'has no field named "([^"]+)"', first)
    names = chain + ([missing.group(1)] if missing else [])
    return _search(node, names) if names else None


def _tidy(problem: str) -> str:
    """json_format's text, shortened: the field's path first, a 'did you mean' for the field list."""
    head, sep, rest = problem.partition("\n")
    head = head.rstrip(".")
    at = re.search(r'\.? at "?([A-Za-z_][\w.\[\]]*?)"?$', head)
    if at is None:
        return problem.rstrip(".")
    path = at.group(1).partition(".")[2]  # without the resource's message name
    inner = re.sub(r"^(Failed to parse \w+ field: )+", "", head[: at.start()])
    missing = re.search(r'^type "([^"]+)" has no field named "([^"]+)"$', inner)
    if missing:
        text = f"unknown field {missing.group(2)!r}" + (f" in {path}" if path else "") + f" ({missing.group(1)}"
        fields = [_snake(f) for f in re.findall(r"'(\w+)'", rest)] if sep else []
        close = difflib.get_close_matches(_snake(missing.group(2)), fields, n=1)
        return text + (f"; did you mean {close[0]!r}?)" if close else ")")
    return f"field {path}: {inner}" if path else inner


def _wrap_resource_error(doc: _File, exc: ResourceError) -> SnapshotFileError:
    index = re.match(r"resource #(\d+)", exc.where or "")
    problem = exc.problem
    line = None
    if index is not None:
        i = int(index.group(1))
        line = _problem_line(doc.resource_node(i), problem) or doc.resource_line(i)
    return SnapshotFileError(doc.path, _tidy(problem), line=line, resource=exc.where)


# --------------------------------------------------------------------------- several files


def _snapshot_files(directory: Path) -> list[Path]:
    """Snapshot files directly in ``directory``, in name order (hidden and editor files skipped)."""
    listing = _listing(directory)
    if listing is None:
        raise SnapshotFileError(directory, "is not a directory")
    return listing[0]


def _listing(directory: Path) -> tuple[list[Path], bool] | None:
    """``directory``'s snapshot files and whether it has a ``nodes/`` directory, from one listing;
    None if it is not a directory."""
    names = []
    nodes = False
    try:
        with os.scandir(directory) as entries:
            for e in entries:
                name = e.name
                if name.startswith("."):
                    continue
                if name == NODES_DIR:
                    nodes = e.is_dir()
                elif os.path.splitext(name)[1].lower() in SNAPSHOT_SUFFIXES and e.is_file():
                    names.append(name)
    except NotADirectoryError:
        return None
    except FileNotFoundError:
        raise SnapshotFileError(directory, "no such file or directory") from None
    except OSError as exc:
        raise SnapshotFileError(directory, f"cannot list it: {exc.strerror or exc}") from None
    return [directory / name for name in sorted(names)], nodes


_KIND_OF_PROBLEM = {"EDS cluster": CLUSTER, "listener": LISTENER, "route configuration": ROUTE}
_PROBLEM_OWNER = re.compile(r"^(EDS cluster|listener|route configuration) (['\"])(.*?)\2")
_PROBLEM_TARGET = re.compile(r"(?:configuration|cluster) (['\"])([^'\"]*)\1, which|named (['\"])([^'\"]*)\3$")
# snapshot.py's hint is for Python callers; files skip the check with serve's --no-check
_PYTHON_HINT = re.compile(r"\(a cluster defined in Envoy's bootstrap needs check=False\)")
_FILES_HINT = "(a cluster defined in Envoy's bootstrap: serve with --no-check, or load with check=False)"


def _load_files(files: Sequence[Path], where: Path, memo: _ParseMemo, check: bool = True) -> Snapshot:
    """One snapshot from ``files`` (``where`` names them as a whole in errors)."""
    docs = [_read_file(p, memo) for p in files]
    seen: dict[tuple[str, str], _Resource] = {}
    for doc in docs:
        for r in doc.resources:
            before = seen.get((r.type_url, r.name))
            if before is not None:
                short = resource_types.short_name(r.type_url)
                first = f"{before.path}:{before.line}" if before.line else str(before.path)
                raise SnapshotFileError(
                    r.path, f"duplicate {short} resource named {r.name!r}, already defined at {first}",
                    line=r.line, resource=r.label,
                )
            seen[(r.type_url, r.name)] = r
    versions = {d.version for d in docs if d.version is not None}
    version = versions.pop() if len(versions) == 1 else None
    if len(versions) > 1:
        log.info(
            "version_info differs between the files of %s (%s): each type is versioned by a hash of its content",
            where, ", ".join(f"{d.path.name}: {d.version}" for d in docs if d.version is not None),
        )
    resources = [r.message for d in docs for r in d.resources]
    ttl = {(r.type_url, r.name): r.ttl for d in docs for r in d.resources if r.ttl is not None}
    try:
        snapshot = Snapshot(resources, version=version, check=False, ttl=ttl or None)
    except ResourceError as exc:  # the checks above should have caught it; still name the files
        raise SnapshotFileError(where, str(exc)) from None
    try:
        if check:
            snapshot.check()
    except ConsistencyError as exc:
        raise _wrap_consistency_error(exc, seen, where) from None
    return snapshot


def _wrap_consistency_error(
    exc: ConsistencyError, seen: Mapping[tuple[str, str], _Resource], where: Path
) -> SnapshotFileError:
    located: list[tuple[Path, int | None, str]] = []
    for problem in exc.problems:
        problem = _PYTHON_HINT.sub(_FILES_HINT, problem)
        m = _PROBLEM_OWNER.match(problem)
        owner = seen.get((_KIND_OF_PROBLEM[m.group(1)], m.group(3))) if m else None
        if owner is None:
            located.append((where, None, problem))
            continue
        line = owner.line
        target = _PROBLEM_TARGET.search(problem)
        if target is not None and owner.node is not None:  # the line of the dangling reference
            name = target.group(2) if target.group(2) is not None else target.group(4)
            line = _scalar_line(owner.node, lambda v: v == name) or line
        located.append((owner.path, line, problem))
    path, line, first = located[0]
    parts = [first] + [
        f"{p}:{n}: {problem}" if n else (f"{p}: {problem}" if p != path else problem)
        for p, n, problem in located[1:]
    ]
    return SnapshotFileError(path, "inconsistent snapshot: " + "; ".join(parts), line=line)


def load_path(path: PathLike, *, check: bool = True) -> Snapshot:
    """The snapshot in one file, or in every snapshot file directly in a directory (not ``nodes/``).

    ``version_info``: when every file that sets one agrees, that is the snapshot's version for
    every type; otherwise each type's version is a hash of its content. Raises SnapshotFileError.
    ``check=False`` skips the consistency check (routes to clusters Envoy's bootstrap defines).
    """
    p = Path(path)
    if p.is_dir():
        return _load_files(_snapshot_files(p), p, _ParseMemo(), check)
    if not p.exists():
        raise SnapshotFileError(p, "no such file or directory")
    return _load_files([p], p, _ParseMemo(), check)


@dataclass(frozen=True)
class SnapshotSet:
    """What a set of PATHs serves: the default snapshot and the nodes that have their own."""

    default: Snapshot | None
    nodes: Mapping[str, Snapshot] = field(default_factory=dict)

    def describe(self) -> str:
        parts = [f"default {describe(self.default)}"] if self.default is not None else ["no default snapshot"]
        parts += [f"node {node!r} {describe(snap)}" for node, snap in sorted(self.nodes.items())]
        return "; ".join(parts)


def load_snapshots(paths: PathLike | Iterable[PathLike], *, check: bool = True) -> SnapshotSet:
    """The default snapshot and per-node snapshots of ``paths`` (files or directories).

    Every PATH's default files merge into one default snapshot (None if there are none). In a
    directory, ``nodes/<node-id>/`` or ``nodes/<node-id>.yaml`` is that node's own complete
    snapshot, not merged with the default; a node directory without snapshot files is ignored.
    ``check=False`` skips the consistency check of each snapshot.
    """
    return _load_snapshots(paths, _ParseMemo(), check)


def _load_snapshots(paths: PathLike | Iterable[PathLike], memo: _ParseMemo, check: bool = True) -> SnapshotSet:
    try:
        loaded = _load_sets(paths, memo, check)
    except BaseException:
        memo.done(ok=False)
        raise
    memo.done(ok=True)
    return loaded


def _load_sets(paths: PathLike | Iterable[PathLike], memo: _ParseMemo, check: bool) -> SnapshotSet:
    path_list = [Path(paths)] if isinstance(paths, (str, os.PathLike)) else [Path(p) for p in paths]
    default_files: list[Path] = []
    node_files: dict[str, list[Path]] = {}
    for p in path_list:
        listing = _listing(p)
        if listing is None:  # a file
            default_files.append(p)
            continue
        files, has_nodes = listing
        default_files += files
        if has_nodes:
            nodes_dir = p / NODES_DIR
            here: dict[str, Path] = {}
            try:
                children = sorted(nodes_dir.iterdir())
            except FileNotFoundError:  # removed while we looked
                children = []
            for child in children:
                if child.name.startswith("."):
                    continue
                if child.is_dir():
                    node, files = child.name, _snapshot_files(child)
                elif child.suffix.lower() in SNAPSHOT_SUFFIXES and child.is_file():
                    node, files = child.stem, [child]
                else:
                    continue
                if node in here:
                    raise SnapshotFileError(
                        child, f"node {node!r} is also defined by {here[node]}: keep one of the two"
                    )
                here[node] = child
                if files:
                    node_files.setdefault(node, []).extend(files)
    if len(path_list) > 1:  # the same file may be named twice (a file and its directory, a link)
        default_files = _unique(default_files)
        node_files = {node: _unique(files) for node, files in node_files.items()}
    where = path_list[0] if len(path_list) == 1 else Path(os.path.commonpath([str(p.absolute()) for p in path_list]))
    default = _load_files(default_files, where, memo, check) if default_files else None
    nodes = {node: _load_files(files, files[0].parent, memo, check) for node, files in sorted(node_files.items())}
    return SnapshotSet(default, nodes)


def _unique(files: list[Path]) -> list[Path]:
    out: list[Path] = []
    seen: set[Path] = set()
    for f in files:
        key = f.resolve()
        if key not in seen:
            seen.add(key)
            out.append(f)
    return out


# --------------------------------------------------------------------------- describing

_NOUNS = {
    CLUSTER: ("cluster", "clusters"),
    ENDPOINT: ("load assignment", "load assignments"),
    LISTENER: ("listener", "listeners"),
    ROUTE: ("route configuration", "route configurations"),
    resource_types.SCOPED_ROUTE: ("scoped route configuration", "scoped route configurations"),
    resource_types.SECRET: ("secret", "secrets"),
    resource_types.RUNTIME: ("runtime layer", "runtime layers"),
    resource_types.EXTENSION_CONFIG: ("extension config", "extension configs"),
}


def _count(url: str, n: int) -> str:
    one, many = _NOUNS.get(url, (url.rsplit(".", 1)[-1],) * 2)
    return f"{n} {one if n == 1 else many}"


def describe(snapshot: Snapshot) -> str:
    """``version 1: 1 cluster, 1 listener, 1 route configuration`` (per type if versions differ)."""
    types = snapshot.types
    if not types:
        return "(empty)"
    versions = {snapshot.version(u) for u in types}
    if len(versions) == 1:
        return f"version {versions.pop()}: " + ", ".join(_count(u, len(snapshot.entries(u))) for u in types)
    return ", ".join(f"{_count(u, len(snapshot.entries(u)))} (version {snapshot.version(u)})" for u in types)


def _changed_types(old: Snapshot | None, new: Snapshot) -> list[str]:
    if old is None:
        return [resource_types.short_name(u) for u in new.types]
    urls = sorted(set(old.types) | set(new.types), key=resource_types.order_key)
    return [
        resource_types.short_name(u)
        for u in urls
        if {n: e.version for n, e in old.entries(u).items()} != {n: e.version for n, e in new.entries(u).items()}
        or (u in old.types and u in new.types and old.version(u) != new.version(u))
    ]


def _same_version_warning(old: Snapshot | None, new: Snapshot) -> str | None:
    if old is None:
        return None
    for u in new.types:
        if u in old.types and old.version(u) == new.version(u) and old.entries(u).keys() == new.entries(u).keys():
            if any(old.entries(u)[n].version != e.version for n, e in new.entries(u).items()):
                return (
                    f"resources changed but version_info is still {new.version(u)!r}; Envoy is sent the "
                    "change, but never again a version it once rejected: change version_info on every edit, "
                    "or drop it and let labxds hash the content"
                )
    return None


# --------------------------------------------------------------------------- watching

ErrorCallback = Callable[[SnapshotFileError], Any]
PushCallback = Callable[[list[Union[str, None]], SnapshotSet], Any]


class SnapshotWatcher:
    """Reload ``paths`` whenever a file changes and push what changed to ``control_plane``.

    On Linux the watcher reads inotify itself, in a background thread, and reloads as soon as a
    file is complete: a write closed, a rename (how editors and ``os.replace`` save). A file still
    being written (modified, not yet closed) waits until it is closed, and a removal until the
    files have been quiet for ``debounce_ms``. Elsewhere ``watchfiles`` watches, and every change waits
    for a few quiet milliseconds. The default and each node's snapshot is set only if it changed;
    a node whose ``nodes/`` entry disappears falls back to the default.

    A file that cannot be served (bad YAML, unknown ``@type``, a wrong field, an inconsistent
    snapshot) is reported to the ``labxds.snapshot_files`` logger, in ``last_error`` and to
    ``on_error``, once the files have been quiet for ``debounce_ms`` (a save of several files
    may pass through a state that the next file mends); the last good snapshots stay served.
    Editors that save by writing a temporary file and renaming it over the original are fine: the
    parent directory is what is watched.
    """

    def __init__(
        self,
        paths: PathLike | Iterable[PathLike],
        control_plane: Any,
        *,
        on_error: ErrorCallback | None = None,
        on_push: PushCallback | None = None,
        debounce_ms: int = 20,
        check: bool = True,
    ) -> None:
        self.paths = [Path(paths)] if isinstance(paths, (str, os.PathLike)) else [Path(p) for p in paths]
        self.control_plane = control_plane
        self.on_error = on_error
        self.on_push = on_push
        self.debounce_ms = max(1, int(debounce_ms))
        self.check = check
        #: The reason the last reload failed (None once the files load again).
        self.last_error: SnapshotFileError | None = None
        #: The snapshots being served: the last set that loaded.
        self.current: SnapshotSet | None = None
        #: How many reloads pushed something (0 after start's first push).
        self.pushes = 0
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._inotify: list[Any] = []  # the watching threads' Inotify objects, woken by stop()
        self._memo = _ParseMemo()
        self._dirs = [os.path.abspath(p) for p in self.paths if p.is_dir()]
        self._files = [os.path.abspath(p) for p in self.paths if not p.is_dir()]

    def __repr__(self) -> str:
        state = "watching" if self.running else "stopped"
        error = f", last error: {self.last_error}" if self.last_error else ""
        return f"<SnapshotWatcher {state} {', '.join(map(str, self.paths))}{error}>"

    @property
    def running(self) -> bool:
        return any(t.is_alive() for t in self._threads)

    # -- lifecycle -------------------------------------------------------------------------

    def start(self, initial: SnapshotSet | None = None) -> SnapshotWatcher:
        """Serve ``initial`` (else load the paths: raises SnapshotFileError) and start watching."""
        if self.running:
            return self
        snapshots = initial if initial is not None else _load_snapshots(self.paths, self._memo, self.check)
        with self._lock:
            self._apply(snapshots, initial=True)
        self._stop.clear()
        groups: list[tuple[list[str], bool]] = []
        if self._dirs:
            groups.append((self._dirs, True))
        parents = sorted({os.path.dirname(f) for f in self._files})
        if parents:
            groups.append((parents, False))
        readies = []
        for roots, recursive in groups:
            ready = threading.Event()
            thread = threading.Thread(
                target=self._watch, args=(roots, recursive, ready), name="labxds-snapshot-watcher", daemon=True
            )
            thread.start()
            self._threads.append(thread)
            readies.append(ready)
        for ready in readies:
            ready.wait(10)
        self._reload(quiet=True)  # whatever changed between the first load and the watch being in place
        return self

    def stop(self) -> None:
        """Stop watching (what is served stays served). Safe to call twice."""
        self._stop.set()
        for ino in list(self._inotify):
            ino.wake()
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(timeout=5)
        self._threads = []

    def __enter__(self) -> SnapshotWatcher:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _watch(self, roots: list[str], recursive: bool, ready: threading.Event) -> None:
        from . import inotify

        if inotify.AVAILABLE:
            try:
                with inotify.Inotify() as ino:
                    self._inotify.append(ino)
                    try:
                        self._watch_inotify(ino, roots, recursive, ready)
                        return
                    finally:
                        self._inotify.remove(ino)
            except OSError as exc:  # the per-user limits of inotify instances or watches
                log.warning("cannot watch %s with inotify (%s); polling instead", ", ".join(roots), exc)
        self._watch_polling(roots, recursive, ready)

    def _watch_inotify(self, ino: Any, roots: list[str], recursive: bool, ready: threading.Event) -> None:
        retry = False
        while not self._stop.is_set():
            if all(os.path.isdir(r) for r in roots):
                try:
                    for root in roots:
                        ino.add(root, recursive=recursive)
                except OSError as exc:
                    if exc.errno not in (errno.ENOENT, errno.ENOTDIR):
                        raise  # out of inotify watches (ENOSPC), permissions: _watch polls instead
                    log.debug("watching %s failed (%s); retrying", ", ".join(roots), exc)  # removed again
                else:
                    ready.set()
                    if retry:  # events were lost while the watch was down
                        retry = False
                        self.reload()
                    if not self._follow(ino, roots):
                        return  # stopped
                ino.clear()
            # a watched directory is gone (the reload reported it): watch again once it is back
            retry = True
            ready.set()
            self._stop.wait(0.2)

    def _follow(self, ino: Any, roots: list[str]) -> bool:
        """Reload on every complete change until stopped (False) or a root is gone (True).

        A closed write or a rename is loaded at once. A removal waits until the files are quiet:
        it is usually one step of more (``rm -r``, a directory moved away, a checkout).
        """
        quiet = self.debounce_ms / 1000
        dirty = False  # a relevant change not loaded yet (or whose load failed)
        removing = False  # something was removed since the last load
        writing: set[str] = set()  # files modified and not closed yet
        while True:
            events = ino.read(quiet if dirty else None)
            if events is None or self._stop.is_set():
                return False
            if not events:  # quiet: a write left open, a removal, or a failed load nothing mended
                dirty = removing = False
                writing.clear()
                self._reload(quiet=False)
                continue
            gone = False
            for event in events:
                if event.overflow:  # events were lost, maybe a root's own
                    dirty = True
                    writing.clear()
                    gone = gone or not all(os.path.isdir(r) for r in roots)
                elif event.watch_gone and event.path in roots:
                    gone = True
                elif self._relevant(event.path, event.is_dir):
                    dirty = True
                    if event.unfinished:
                        writing.add(event.path)
                    elif event.finished:
                        writing.discard(event.path)
                        removing = removing or event.removed
            if gone:
                self._reload(quiet=False)
                return True
            if dirty and not writing and not removing and self._reload(quiet=False, report=False) is not None:
                dirty = False

    def _relevant(self, path: str, is_dir: bool | None = None) -> bool:
        name = os.path.basename(path)
        if name.startswith(".") or name.endswith("~"):
            return False
        if path in self._files:
            return True
        if is_dir is False and os.path.splitext(name)[1].lower() not in SNAPSHOT_SUFFIXES:
            return False  # an editor's or a script's temporary file: its rename is what counts
        return any(path == d or path.startswith(d + os.sep) for d in self._dirs)

    def _watch_polling(self, roots: list[str], recursive: bool, ready: threading.Event) -> None:
        """Without inotify: ``watchfiles`` (FSEvents, kqueue, ...), which waits for a quiet step."""
        import watchfiles

        retry = False
        while not self._stop.is_set():
            if not all(os.path.isdir(r) for r in roots):
                # a watched directory is gone (the reload reported it): watch again once it is back
                retry = True
                ready.set()
                self._stop.wait(0.2)
                continue
            try:
                for changes in watchfiles.watch(
                    *roots,
                    watch_filter=lambda change, path: self._relevant(path),
                    debounce=max(1000, self.debounce_ms),
                    step=min(self.debounce_ms, 2),
                    stop_event=self._stop,
                    rust_timeout=100,
                    yield_on_timeout=True,  # the first (empty) yield says the watch is in place
                    recursive=recursive,
                    raise_interrupt=False,
                    ignore_permission_denied=True,
                ):
                    ready.set()
                    if retry:  # events were lost while the watch was down
                        retry = False
                        self.reload()
                    if changes:
                        self.reload()
                        if not all(os.path.isdir(r) for r in roots):
                            retry = True
                            break
            except Exception as exc:  # e.g. a watched directory does not exist (yet)
                if not retry:
                    log.debug("watching %s failed (%s); retrying", ", ".join(roots), exc)
                retry = True
                ready.set()
            if retry:
                self._stop.wait(0.2)

    # -- reloading -------------------------------------------------------------------------

    def reload(self) -> bool:
        """Load the paths now and push what changed; False if nothing changed or they are bad."""
        return self._reload(quiet=False) is True

    def _reload(self, *, quiet: bool, report: bool = True) -> bool | None:
        """True if something was pushed, False if nothing changed, None if the files cannot be
        served (reported only with ``report``)."""
        with self._lock:
            try:
                snapshots = _load_snapshots(self.paths, self._memo, self.check)
            except SnapshotFileError as exc:
                if report:
                    self._report(exc)
                return None
            except Exception as exc:  # a bug, not the user's file: still keep serving
                log.exception("reloading %s failed", ", ".join(map(str, self.paths)))
                self._report(SnapshotFileError(self.paths[0], f"{type(exc).__name__}: {exc}"))
                return None
            if self.last_error is not None:
                log.info("snapshot files load again (%s was fixed)", self.last_error.path)
                self.last_error = None
            return self._apply(snapshots, quiet=quiet)

    def _report(self, exc: SnapshotFileError) -> None:
        if self.last_error is not None and str(self.last_error) == str(exc):
            return  # the same mistake, seen again on the next save of another file
        self.last_error = exc
        served = self.current.describe() if self.current is not None else "nothing"
        log.error("%s -- still serving the last good snapshot (%s)", exc, served)
        if self.on_error is not None:
            try:
                self.on_error(exc)
            except Exception:
                log.exception("on_error callback failed")

    def _apply(self, new: SnapshotSet, *, initial: bool = False, quiet: bool = False) -> bool:
        old = self.current
        cp = self.control_plane
        pushed: list[str | None] = []
        old_default = old.default if old is not None else None
        if new.default is None and old_default is not None:
            # the default's files are gone: serve that (nothing), as the files now say
            new = replace(new, default=Snapshot([]))
            log.warning("no default snapshot files left: serving an empty default snapshot")
        if new.default is not None and (old is None or old_default != new.default):
            cp.set_snapshot(new.default)
            pushed.append(None)
            self._log_push("", old_default, new.default, initial)
        old_nodes = old.nodes if old is not None else {}
        for node, snap in new.nodes.items():
            if old_nodes.get(node) != snap:
                cp.set_snapshot(snap, node)
                pushed.append(node)
                self._log_push(f"to node {node!r}", old_nodes.get(node), snap, initial)
        for node in sorted(set(old_nodes) - set(new.nodes)):
            cp.cache.clear(node)
            pushed.append(node)
            log.info("node %r has no snapshot files any more: it gets the default snapshot", node)
        self.current = new
        if not pushed:
            log.log(logging.DEBUG if quiet or initial else logging.INFO, "reloaded %s: nothing changed",
                    ", ".join(map(str, self.paths)))
            return False
        if not initial:
            self.pushes += 1
        if self.on_push is not None:
            try:
                self.on_push(pushed, new)
            except Exception:
                log.exception("on_push callback failed")
        return True

    @staticmethod
    def _log_push(what: str, old: Snapshot | None, new: Snapshot, initial: bool) -> None:
        text = describe(new)
        text = f"{what} {text}" if text.startswith("version ") else f"{what}: {text}" if what else text
        changed = _changed_types(old, new)
        suffix = f" (changed: {', '.join(changed)})" if old is not None and changed else ""
        log.log(logging.DEBUG if initial else logging.INFO, "%s %s%s", "serving" if initial else "pushed",
                text.lstrip(), suffix)
        warning = _same_version_warning(old, new)
        if warning:
            log.warning(warning)


# --------------------------------------------------------------------------- serve


def serve(
    paths: Sequence[PathLike],
    host: str = "127.0.0.1",
    port: int = 18000,
    *,
    check: bool = True,
    tls: PathLike | None = None,
    tie_node_ids: bool = False,
) -> int:
    """``python -m labxds serve``: serve snapshot files over ADS until SIGTERM or SIGINT.

    ``tls``: a directory with ``ca.pem``, ``server.pem`` and ``server-key.pem`` (as
    ``labxds.security.write_tls_files`` writes them): mutual TLS, files re-read when renewed.
    ``tie_node_ids``: a client's node id must be named by its certificate.
    Returns 0 after a clean stop, 2 if the files cannot be served at startup.
    """
    path_list = [Path(p) for p in paths]
    stop = threading.Event()
    previous: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, lambda *_: stop.set())
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s labxds: %(message)s", "%H:%M:%S"))
    labxds_log = logging.getLogger("labxds")
    saved_level = labxds_log.level
    labxds_log.addHandler(handler)
    labxds_log.setLevel(logging.INFO)
    control_plane = None
    watcher = None
    try:
        try:
            snapshots = load_snapshots(path_list, check=check)
        except SnapshotFileError as exc:
            print(f"labxds: cannot serve {exc}", file=sys.stderr, flush=True)
            return 2
        if snapshots.default is None and not snapshots.nodes:
            log.warning(
                "no snapshot files (%s) in %s yet: serving nothing until some appear",
                ", ".join("*" + s for s in SNAPSHOT_SUFFIXES), ", ".join(map(str, path_list)),
            )
        from .control_plane import ControlPlane

        credentials, authorize, secured = None, None, ""
        if tls is not None:
            from .security import (
                CertificateAuthorizer,
                TlsFileError,
                server_credentials,
                tls_files_in,
            )

            try:
                credentials = server_credentials(tls_files_in(tls))
            except TlsFileError as exc:
                print(f"labxds: cannot serve over TLS: {exc}", file=sys.stderr, flush=True)
                return 2
            authorize = CertificateAuthorizer() if tie_node_ids else None
            secured = "; mutual TLS" + (", node ids tied to client certificates" if tie_node_ids else "")
        elif tie_node_ids:
            print("labxds: --tie-node-ids needs --tls: the node ids are tied to client certificates",
                  file=sys.stderr, flush=True)
            return 2
        control_plane = ControlPlane(port=port, host=host, server_credentials=credentials, authorize=authorize).start()
        watcher = SnapshotWatcher(path_list, control_plane, check=check).start(initial=snapshots)
        print(
            f"labxds: serving ADS (SotW and Delta) on {control_plane.address} from "
            f"{', '.join(map(str, path_list))}: {snapshots.describe()}; watching for changes{secured} "
            "(Ctrl-C or SIGTERM stops)",
            flush=True,
        )
        while not stop.wait(1.0):
            pass
        log.info("stopping")
        return 0
    finally:
        if watcher is not None:
            watcher.stop()
        if control_plane is not None:
            control_plane.stop()
        labxds_log.removeHandler(handler)
        labxds_log.setLevel(saved_level)
        for sig, old in previous.items():
            signal.signal(sig, old)
