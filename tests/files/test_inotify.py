"""labxds.inotify: the kernel's file events, read directly (Linux)."""

from __future__ import annotations

import os
import shutil
import threading
import time

import pytest

from labxds.files import inotify
from labxds.files.inotify import (
    IN_CLOSE_WRITE,
    IN_CREATE,
    IN_DELETE,
    IN_MODIFY,
    IN_MOVED_TO,
    Inotify,
)

pytestmark = pytest.mark.skipif(not inotify.AVAILABLE, reason="inotify is Linux-only")


def read_until(ino: Inotify, predicate, timeout: float = 2.0) -> list:
    """Events until one satisfies ``predicate`` (all of them, in order)."""
    seen: list = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        events = ino.read(0.05)
        assert events is not None
        seen += events
        if any(predicate(e) for e in events):
            return seen
    raise AssertionError(f"no matching event within {timeout}s; saw {seen}")


def test_a_write_is_unfinished_until_closed(tmp_path):
    with Inotify() as ino:
        ino.add(str(tmp_path))
        path = str(tmp_path / "cds.yaml")
        f = open(path, "w")
        f.write("resources: []\n")
        f.flush()
        events = read_until(ino, lambda e: e.path == path)
        assert all(e.path == path for e in events)
        assert any(e.unfinished for e in events) and not any(e.finished for e in events)
        assert ino.read(0.05) == []  # nothing more while the file stays open
        f.close()
        closed = read_until(ino, lambda e: e.finished)
        assert closed[-1].mask & IN_CLOSE_WRITE and closed[-1].path == path


def test_a_rename_is_one_finished_event(tmp_path):
    (tmp_path / "watched").mkdir()
    staged = tmp_path / "staged.json"
    staged.write_text("{}")
    with Inotify() as ino:
        ino.add(str(tmp_path / "watched"))
        os.rename(staged, tmp_path / "watched" / "cds.json")
        events = read_until(ino, lambda e: e.finished)
        assert [(e.path, bool(e.mask & IN_MOVED_TO)) for e in events] == [(str(tmp_path / "watched" / "cds.json"), True)]
        assert not events[0].unfinished


def test_recursive_follows_new_subdirectories(tmp_path):
    with Inotify() as ino:
        ino.add(str(tmp_path), recursive=True)
        (tmp_path / "nodes" / "a").mkdir(parents=True)
        read_until(ino, lambda e: e.is_dir and e.mask & IN_CREATE and e.path == str(tmp_path / "nodes"))
        time.sleep(0.05)  # "a" may have been created before "nodes" was watched: it is watched now anyway
        ino.read(0)
        (tmp_path / "nodes" / "a" / "cds.yaml").write_text("x")
        events = read_until(ino, lambda e: e.finished and e.path == str(tmp_path / "nodes" / "a" / "cds.yaml"))
        assert any(e.mask & (IN_CREATE | IN_MODIFY) for e in events)


def test_not_recursive_ignores_subdirectories(tmp_path):
    (tmp_path / "sub").mkdir()
    with Inotify() as ino:
        ino.add(str(tmp_path))
        (tmp_path / "sub" / "x.yaml").write_text("x")
        assert ino.read(0.1) == []


def test_removing_a_watched_directory_says_so(tmp_path):
    watched = tmp_path / "snap"
    watched.mkdir()
    (watched / "cds.yaml").write_text("x")
    with Inotify() as ino:
        ino.add(str(watched))
        shutil.rmtree(watched)
        events = read_until(ino, lambda e: e.watch_gone)
        assert any(e.mask & IN_DELETE and e.path == str(watched / "cds.yaml") for e in events)
        assert events[-1].watch_gone and events[-1].path == str(watched)
        assert ino.read(0.05) == []  # the watch went with it (IN_IGNORED is not passed on)


def test_wake_interrupts_a_blocked_read(tmp_path):
    with Inotify() as ino:
        ino.add(str(tmp_path))
        result: list = []
        reader = threading.Thread(target=lambda: result.append(ino.read(None)))
        reader.start()
        time.sleep(0.05)
        assert reader.is_alive()
        ino.wake()
        reader.join(2)
        assert not reader.is_alive() and result == [None]


def test_missing_directory_is_an_oserror_naming_it(tmp_path):
    with Inotify() as ino, pytest.raises(OSError, match="nope"):
        ino.add(str(tmp_path / "nope"))


def test_an_overflowing_queue_is_reported_as_such(tmp_path):
    limit = int(open("/proc/sys/fs/inotify/max_queued_events").read())
    if limit > 100_000:
        pytest.skip(f"max_queued_events is {limit}: too many files to write")
    with Inotify() as ino:
        ino.add(str(tmp_path))
        for i in range(limit // 2 + 10):  # a create and a close each; nobody reads meanwhile
            os.close(os.open(tmp_path / f"{i}.yaml", os.O_WRONLY | os.O_CREAT))
        events = ino.read(1)
        assert events and events[-1].overflow and events[-1].path == ""
