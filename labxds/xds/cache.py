"""The snapshot cache: which snapshot each node should run.

A node with a snapshot of its own gets that one; every other node gets the default. Streams
register a wake-up callback for their node, and setting a snapshot wakes exactly the streams
whose answer changed, so one learner's update never reaches another.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import Protocol

from .snapshot import Snapshot

__all__ = ["ConfigWatcher", "SnapshotCache", "Waker"]

Waker = Callable[[], None]


class ConfigWatcher(Protocol):
    """What the server needs of a cache: the snapshot a node should run, and a wake-up when it
    changes. ``SnapshotCache`` is one; another (a database, several processes) can stand in
    without the server changing."""

    def get(self, node_id: str) -> Snapshot | None: ...

    def watch(self, node_id: str, wake: Waker) -> Callable[[], None]:
        """Call ``wake`` (from any thread) when ``node_id``'s snapshot changes; returns unwatch."""
        ...


class SnapshotCache:
    """Thread-safe: notebooks set snapshots from their thread, streams read from the server's."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._default: Snapshot | None = None
        self._nodes: dict[str, Snapshot] = {}
        self._watchers: dict[str, set[Waker]] = {}

    def get(self, node_id: str) -> Snapshot | None:
        """The snapshot ``node_id`` should run (its own, else the default)."""
        # Without the lock: two reference reads, each atomic in CPython; every stream asks on
        # every round. A reader that sees the old snapshot is woken again by set().
        return self._nodes.get(node_id, self._default)

    def own(self, node_id: str) -> Snapshot | None:
        """``node_id``'s own snapshot; None when it follows the default."""
        with self._lock:
            return self._nodes.get(node_id)

    @property
    def default(self) -> Snapshot | None:
        return self._default

    def node_ids(self) -> list[str]:
        """Nodes that have a snapshot of their own."""
        with self._lock:
            return sorted(self._nodes)

    def set(self, snapshot: Snapshot, node: str | Iterable[str] | None = None) -> list[str]:
        """Set the default (``node=None``) or the given nodes' snapshot; returns the nodes woken."""
        with self._lock:
            if node is None:
                self._default = snapshot
                affected = [n for n in self._watchers if n not in self._nodes]
            else:
                ids = [node] if isinstance(node, str) else list(node)
                for n in ids:
                    self._nodes[n] = snapshot
                affected = [n for n in ids if n in self._watchers]
            wakers = [w for n in affected for w in self._watchers[n]]
        for wake in wakers:
            wake()
        return affected

    def clear(self, node: str) -> None:
        """Drop a node's own snapshot; it falls back to the default."""
        with self._lock:
            had = self._nodes.pop(node, None) is not None
            wakers = list(self._watchers.get(node, ())) if had else []
        for wake in wakers:
            wake()

    def watch(self, node_id: str, wake: Waker) -> Callable[[], None]:
        """Call ``wake`` (from any thread) when ``node_id``'s snapshot changes; returns an unwatch."""
        with self._lock:
            self._watchers.setdefault(node_id, set()).add(wake)

        def unwatch() -> None:
            with self._lock:
                ws = self._watchers.get(node_id)
                if ws is not None:
                    ws.discard(wake)
                    if not ws:
                        del self._watchers[node_id]

        return unwatch
