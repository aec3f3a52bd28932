"""Linux inotify, read directly: a file event reaches the snapshot watcher as the kernel reports it.

Envoy's own filesystem subscription acts on the inotify event in-process. ``watchfiles`` (used
before, and still the fallback off Linux) polls its queue in steps from a Rust thread and then
hands the batch to Python: about 3 ms per change, which is most of what separated a watched
snapshot file from Envoy reading its own files (bench/findings.md, F3).
"""

from __future__ import annotations

import ctypes
import errno
import os
import select
import struct
import sys
from dataclasses import dataclass

__all__ = ["AVAILABLE", "Event", "Inotify"]

IN_MODIFY = 0x00000002
IN_CLOSE_WRITE = 0x00000008
IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_DELETE_SELF = 0x00000400
IN_MOVE_SELF = 0x00000800
IN_Q_OVERFLOW = 0x00004000
IN_IGNORED = 0x00008000
IN_ONLYDIR = 0x01000000
IN_ISDIR = 0x40000000

_WATCHED = (
    IN_MODIFY | IN_CLOSE_WRITE | IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE | IN_DELETE | IN_DELETE_SELF | IN_MOVE_SELF
)
_HEADER = struct.Struct("iIII")  # struct inotify_event: wd, mask, cookie, len (then the name)


def _libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.inotify_init1.argtypes = [ctypes.c_int]
        libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        libc.inotify_rm_watch.argtypes = [ctypes.c_int, ctypes.c_int]
        return libc
    except (OSError, AttributeError):
        return None


_LIBC = _libc()
#: Whether this platform has inotify (else callers fall back on polling libraries).
AVAILABLE = _LIBC is not None


@dataclass(frozen=True, slots=True)
class Event:
    """One change: ``path`` (a file or directory inside a watched directory) and inotify's mask."""

    path: str
    mask: int

    @property
    def is_dir(self) -> bool:
        return bool(self.mask & IN_ISDIR)

    @property
    def unfinished(self) -> bool:
        """The file is being written: more is coming, and then IN_CLOSE_WRITE."""
        return bool(self.mask & (IN_MODIFY | IN_CREATE)) and not self.is_dir

    @property
    def finished(self) -> bool:
        """A write closed, or a rename or removal: the path is in its final state."""
        return bool(self.mask & (IN_CLOSE_WRITE | IN_MOVED_TO | IN_MOVED_FROM | IN_DELETE))

    @property
    def removed(self) -> bool:
        """The path was deleted or moved away (often one step of a larger removal or move)."""
        return bool(self.mask & (IN_DELETE | IN_MOVED_FROM))

    @property
    def overflow(self) -> bool:
        """The kernel's queue overflowed: events were lost, anything may have changed."""
        return bool(self.mask & IN_Q_OVERFLOW)

    @property
    def watch_gone(self) -> bool:
        """A watched directory itself was removed or moved away."""
        return bool(self.mask & (IN_DELETE_SELF | IN_MOVE_SELF))


class Inotify:
    """Watches on directories (optionally their whole tree, following new subdirectories) and a
    blocking :meth:`read` that :meth:`wake` interrupts from another thread."""

    def __init__(self) -> None:
        if _LIBC is None:
            raise OSError(errno.ENOSYS, "inotify is not available on this platform")
        fd = _LIBC.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"inotify_init1: {os.strerror(err)}")
        self._fd = fd
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._poll = select.poll()
        self._poll.register(self._fd, select.POLLIN)
        self._poll.register(self._wake_r, select.POLLIN)
        self._dirs: dict[int, str] = {}  # watch descriptor -> directory
        self._recursive: set[int] = set()  # watch descriptors whose new subdirectories are watched too

    def __enter__(self) -> Inotify:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for fd in (self._fd, self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass
        self._fd = self._wake_r = self._wake_w = -1
        self._dirs.clear()

    def add(self, directory: str, *, recursive: bool = False) -> None:
        """Watch ``directory`` (and with ``recursive`` every directory below it, now and later)."""
        wd = self._add_one(directory)
        if recursive:
            self._recursive.add(wd)
            for sub in self._subdirectories(directory):
                self._recursive.add(self._add_one(sub))

    def clear(self) -> None:
        """Remove every watch (the directories are gone, or about to be watched again)."""
        for wd in list(self._dirs):
            _LIBC.inotify_rm_watch(self._fd, wd)  # type: ignore[union-attr]  # EINVAL if already gone
        self._dirs.clear()
        self._recursive.clear()

    def wake(self) -> None:
        """Make a blocked :meth:`read` return None (thread-safe)."""
        try:
            os.write(self._wake_w, b"!")
        except OSError:
            pass  # closed, or the pipe is full: read wakes anyway

    def read(self, timeout: float | None) -> list[Event] | None:
        """Every event queued now, waiting up to ``timeout`` seconds (None: for ever) for the first.

        Returns [] when the time ran out and None when :meth:`wake` was called.
        """
        ready = self._poll.poll(None if timeout is None else max(0, int(timeout * 1000 + 0.999)))
        if any(fd == self._wake_r for fd, _ in ready):
            try:
                while os.read(self._wake_r, 64):
                    pass
            except BlockingIOError:
                pass
            return None
        events: list[Event] = []
        while True:
            try:
                data = os.read(self._fd, 65536)
            except BlockingIOError:
                return events
            except OSError as exc:
                if exc.errno == errno.EINTR:
                    continue
                raise
            self._parse(data, events)

    def _parse(self, data: bytes, events: list[Event]) -> None:
        offset = 0
        while offset + _HEADER.size <= len(data):
            wd, mask, _cookie, length = _HEADER.unpack_from(data, offset)
            offset += _HEADER.size
            name = os.fsdecode(data[offset : offset + length].rstrip(b"\0"))
            offset += length
            if mask & IN_Q_OVERFLOW:
                events.append(Event("", mask))
                continue
            directory = self._dirs.get(wd)
            if directory is None:
                continue
            if mask & IN_IGNORED:  # the watch went with its directory
                self._dirs.pop(wd, None)
                self._recursive.discard(wd)
                continue
            path = os.path.join(directory, name) if name else directory
            if mask & IN_ISDIR and mask & (IN_CREATE | IN_MOVED_TO) and wd in self._recursive:
                try:
                    self.add(path, recursive=True)
                except OSError:
                    pass  # already gone again: its removal is queued
            events.append(Event(path, mask))

    def _add_one(self, directory: str) -> int:
        wd = _LIBC.inotify_add_watch(  # type: ignore[union-attr]
            self._fd, os.fsencode(directory), _WATCHED | IN_ONLYDIR
        )
        if wd < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"cannot watch {directory}: {os.strerror(err)}", directory)
        self._dirs[wd] = directory
        return wd

    @staticmethod
    def _subdirectories(directory: str) -> list[str]:
        found = []
        for root, dirs, _files in os.walk(directory):
            dirs[:] = [d for d in dirs if not os.path.islink(os.path.join(root, d))]
            found += [os.path.join(root, d) for d in dirs]
        return found
