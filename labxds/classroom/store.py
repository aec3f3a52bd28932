"""The instructor's state in SQLite, so that a restart of the workshop loses nothing.

Kept: the roster and tokens, what each learner's Envoy announced, groups, the class default and
each learner's own snapshot spec (as a recipe when it is one of the ready templates), the very
snapshots each learner is served (resources and versions, so a restarted control plane serves
the same versions and a reconnecting Envoy that holds them is sent nothing), and exercise
results. Every change is written when it is made (one small transaction); :meth:`load` reads it
all back on start.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..xds.snapshot import Snapshot

__all__ = ["Saved", "Store", "decode_snapshot", "encode_snapshot"]

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS learners (
    name TEXT PRIMARY KEY, position INTEGER NOT NULL, on_roster INTEGER NOT NULL DEFAULT 0,
    token TEXT, metadata TEXT, added_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS groups (name TEXT PRIMARY KEY, members TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS specs (
    name TEXT PRIMARY KEY,        -- a learner's own spec; '' is the class default
    recipe TEXT,                  -- JSON recipe, NULL when the spec cannot be written down
    description TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS served (
    name TEXT PRIMARY KEY,        -- what the control plane serves a learner; '' is the default
    snapshot TEXT NOT NULL,       -- resources and versions
    templated INTEGER NOT NULL,   -- rendered from a template for this learner
    rendered INTEGER NOT NULL);   -- rendered from the class template (not their own)
CREATE TABLE IF NOT EXISTS results (
    learner TEXT NOT NULL, exercise TEXT NOT NULL, result TEXT NOT NULL,
    PRIMARY KEY (learner, exercise));
"""


def encode_snapshot(snap: Snapshot) -> dict[str, Any]:
    """A snapshot as JSON: each resource's type URL and serialized bytes (base64), and versions."""
    import base64

    resources = [
        {"type_url": url, "value": base64.b64encode(msg.SerializeToString(deterministic=True)).decode()}
        for url in snap.types for msg in snap.resources(url).values()
    ]  # fmt: skip
    return {"resources": resources, "version": dict(snap.versions)}


def decode_snapshot(data: Mapping[str, Any]) -> Snapshot:
    """The inverse of :func:`encode_snapshot`; a bad resource is named by its position."""
    import base64

    from ..xds.messages import ResourceError
    from ..xds.resource_types import message_class

    messages = []
    items = data.get("resources") or []
    if not isinstance(items, list):
        raise ResourceError(f"resources must be a list, not {type(items).__name__}", where="the body")
    for i, item in enumerate(items):
        try:
            cls = message_class(str(item["type_url"]))
            messages.append(cls.FromString(base64.b64decode(item["value"])))
        except Exception as exc:
            raise ResourceError(f"cannot decode: {exc}", where=f"resource #{i}") from None
    version = data.get("version")
    if version is not None and not isinstance(version, (str, dict)):
        raise ResourceError(f"version must be a string or an object of type URL -> version, not {version!r}",
                            where="the body")
    return Snapshot(messages, version=version)


@dataclass
class Saved:
    """Everything :meth:`Store.load` read back."""

    #: (name, on the roster, token, what their Envoy announced), in order of arrival
    learners: list[tuple[str, bool, str | None, dict[str, Any] | None]] = field(default_factory=list)
    groups: dict[str, list[str]] = field(default_factory=dict)
    specs: dict[str, tuple[dict[str, Any] | None, str]] = field(default_factory=dict)
    served: dict[str, tuple[Snapshot, bool, bool]] = field(default_factory=dict)
    results: list[dict[str, Any]] = field(default_factory=list)


class Store:
    """A workshop's state in one SQLite file (WAL; safe from the control plane's and desk's threads)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # It holds every learner's token: the owner's only (SQLite gives its -wal and -shm files
        # the database file's permissions).
        self.path.touch(mode=0o600, exist_ok=True)
        self.path.chmod(0o600)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        with self._lock:
            self._db.executescript(_SCHEMA)
            row = self._db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
            if row is None:
                self._db.execute("INSERT INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
            elif int(row[0]) != SCHEMA_VERSION:
                raise ValueError(f"{self.path}: workshop store schema {row[0]}, this labxds reads {SCHEMA_VERSION}")

    def __repr__(self) -> str:
        return f"<Store {self.path}>"

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _write(self, statements: Iterable[tuple[str, tuple[Any, ...]]]) -> None:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for sql, args in statements:
                    self._db.execute(sql, args)
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    # -- writes ------------------------------------------------------------------------------

    def save_learner(self, name: str, token: str | None) -> None:
        self._write([(
            "INSERT INTO learners (name, position, on_roster, token, added_at) VALUES "
            "(?, (SELECT COALESCE(MAX(position), 0) + 1 FROM learners), 1, ?, ?) "
            "ON CONFLICT(name) DO UPDATE SET on_roster=1, token=excluded.token",
            (name, token, time.time()),
        )])

    def save_metadata(self, name: str, metadata: Mapping[str, Any]) -> None:
        self._write([(
            "INSERT INTO learners (name, position, metadata, added_at) VALUES "
            "(?, (SELECT COALESCE(MAX(position), 0) + 1 FROM learners), ?, ?) "
            "ON CONFLICT(name) DO UPDATE SET metadata=excluded.metadata",
            (name, json.dumps(metadata), time.time()),
        )])

    def save_group(self, name: str, members: list[str]) -> None:
        self._write([("INSERT OR REPLACE INTO groups VALUES (?, ?)", (name, json.dumps(members)))])

    def save_spec(self, name: str, recipe: Mapping[str, Any] | None, description: str) -> None:
        self._write([("INSERT OR REPLACE INTO specs VALUES (?, ?, ?)",
                      (name, json.dumps(recipe) if recipe is not None else None, description))])  # fmt: skip

    def drop_spec(self, name: str) -> None:
        self._write([("DELETE FROM specs WHERE name=?", (name,))])

    def save_served(self, entries: Mapping[str, tuple[Snapshot, bool, bool]], dropped: Iterable[str] = ()) -> None:
        """What the control plane serves now: name ('' = default) -> (snapshot, templated, rendered)."""
        encoded: dict[int, str] = {}
        statements: list[tuple[str, tuple[Any, ...]]] = [("DELETE FROM served WHERE name=?", (name,))
                                                         for name in dropped]
        for name, (snap, templated, rendered) in entries.items():
            text = encoded.get(id(snap))
            if text is None:
                text = encoded[id(snap)] = json.dumps(encode_snapshot(snap))
            statements.append(("INSERT OR REPLACE INTO served VALUES (?, ?, ?, ?)",
                               (name, text, int(templated), int(rendered))))  # fmt: skip
        self._write(statements)

    def save_result(self, result: Mapping[str, Any]) -> None:
        self._write([("INSERT OR REPLACE INTO results VALUES (?, ?, ?)",
                      (result["learner"], result["exercise"], json.dumps(dict(result))))])  # fmt: skip

    # -- reading back --------------------------------------------------------------------------

    def load(self) -> Saved:
        with self._lock:
            learners = self._db.execute(
                "SELECT name, on_roster, token, metadata FROM learners ORDER BY position").fetchall()
            groups = self._db.execute("SELECT name, members FROM groups").fetchall()
            specs = self._db.execute("SELECT name, recipe, description FROM specs").fetchall()
            served = self._db.execute("SELECT name, snapshot, templated, rendered FROM served").fetchall()
            results = self._db.execute("SELECT result FROM results").fetchall()
        saved = Saved()
        saved.learners = [(n, bool(r), t, json.loads(m) if m else None) for n, r, t, m in learners]
        saved.groups = {n: json.loads(m) for n, m in groups}
        saved.specs = {n: (json.loads(r) if r else None, d) for n, r, d in specs}
        snapshots: dict[str, Snapshot] = {}
        for name, text, templated, rendered in served:
            snap = snapshots.get(text)
            if snap is None:
                snap = snapshots[text] = decode_snapshot(json.loads(text))
            saved.served[name] = (snap, bool(templated), bool(rendered))
        saved.results = [json.loads(r) for (r,) in results]
        return saved
