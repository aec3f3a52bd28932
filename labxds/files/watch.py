"""Watch snapshot files and push every complete, valid change (inotify, else polling)."""

from __future__ import annotations

import errno
import logging
import os
import threading
from collections.abc import Callable, Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any, Union

from ..xds.snapshot import Snapshot
from .describe import changed_types, describe, same_version_warning
from .load import SnapshotSet, load_snapshots_with
from .parse import SNAPSHOT_SUFFIXES, ParseMemo, PathLike, SnapshotFileError

__all__ = ["ErrorCallback", "PushCallback", "SnapshotWatcher"]

log = logging.getLogger("labxds.snapshot_files")


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
        self._memo = ParseMemo()
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
        snapshots = initial if initial is not None else load_snapshots_with(self.paths, self._memo, self.check)
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
                snapshots = load_snapshots_with(self.paths, self._memo, self.check)
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
        changed = changed_types(old, new)
        suffix = f" (changed: {', '.join(changed)})" if old is not None and changed else ""
        log.log(logging.DEBUG if initial else logging.INFO, "%s %s%s", "serving" if initial else "pushed",
                text.lstrip(), suffix)
        warning = same_version_warning(old, new)
        if warning:
            log.warning(warning)
