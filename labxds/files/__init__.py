"""Snapshots that live in files, in Envoy's filesystem-config form: parse, load, describe, watch.

``parse`` reads one file, ``lines`` finds the line a mistake is on, ``load`` merges a directory
(``nodes/<id>/`` for one node's own snapshot), ``describe`` sums a snapshot up in words, and
``watch`` pushes every complete, valid change to a control plane (inotify, else polling).
"""

from .describe import describe
from .load import SnapshotSet, load_path, load_snapshots
from .parse import SNAPSHOT_SUFFIXES, SnapshotFileError
from .watch import SnapshotWatcher

__all__ = [
    "SNAPSHOT_SUFFIXES",
    "SnapshotFileError",
    "SnapshotSet",
    "SnapshotWatcher",
    "describe",
    "load_path",
    "load_snapshots",
]
