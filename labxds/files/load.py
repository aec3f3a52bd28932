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

import logging
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..xds import resource_types
from ..xds.messages import ResourceError
from ..xds.resource_types import CLUSTER, LISTENER, ROUTE
from ..xds.snapshot import ConsistencyError, Snapshot
from .describe import describe
from .lines import scalar_line
from .parse import (
    NODES_DIR,
    SNAPSHOT_SUFFIXES,
    FileResource,
    ParseMemo,
    PathLike,
    SnapshotFileError,
    read_file,
)

__all__ = ["SnapshotSet", "load_path", "load_snapshots", "load_snapshots_with"]

log = logging.getLogger("labxds.snapshot_files")


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


def _load_files(files: Sequence[Path], where: Path, memo: ParseMemo, check: bool = True) -> Snapshot:
    """One snapshot from ``files`` (``where`` names them as a whole in errors)."""
    docs = [read_file(p, memo) for p in files]
    seen: dict[tuple[str, str], FileResource] = {}
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
    ttl: dict[str | tuple[str, str], float | None] = {(r.type_url, r.name): r.ttl for d in docs for r in d.resources if r.ttl is not None}
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
    exc: ConsistencyError, seen: Mapping[tuple[str, str], FileResource], where: Path
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
            line = scalar_line(owner.node, lambda v: v == name) or line
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
        return _load_files(_snapshot_files(p), p, ParseMemo(), check)
    if not p.exists():
        raise SnapshotFileError(p, "no such file or directory")
    return _load_files([p], p, ParseMemo(), check)


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
    return load_snapshots_with(paths, ParseMemo(), check)


def load_snapshots_with(paths: PathLike | Iterable[PathLike], memo: ParseMemo, check: bool = True) -> SnapshotSet:
    try:
        loaded = _load_sets(paths, memo, check)
    except BaseException:
        memo.done(ok=False)
        raise
    memo.done(ok=True)
    return loaded


def _load_sets(paths: PathLike | Iterable[PathLike], memo: ParseMemo, check: bool) -> SnapshotSet:
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
