"""``labxds serve`` with parts of its work taken away: lower bounds for the snapshot-file rows.

Not a product and not a fix. Each switch removes one part of what ``labxds serve --snapshot``
does between the inotify event and the response, so that bench/propagation.py (``--what-if``)
can show how close to Envoy's filesystem floor a file row could get without it:

* ``bound``: a reload looks the files' texts up among contents parsed before and reuses that
  snapshot set; only listing and reading the files is left. It is a cache hit in a benchmark that
  alternates two contents, which is exactly why labxds does not ship it: it measures what a free
  parse would give, not what a new file costs.
* ``loop``: inotify is read on the control plane's event loop and the reload runs there (no hop
  from the watcher's thread to the server's).
* ``nolog``: no "pushed ..." line per push.
* ``json_format``: resources are parsed by protobuf's ``json_format.ParseDict`` alone, without
  labxds's fast path (``labxds/xds/json_form.py``): the comparison that decides whether the fast
  path is worth its code (docs/benchmarks.md).

    python bench/serve_whatif.py bound,loop,nolog serve --snapshot DIR --port N
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from labxds.cli import main  # noqa: E402
from labxds.files import load as files_load  # noqa: E402
from labxds.files import parse as files_parse  # noqa: E402
from labxds.files import watch as files_watch  # noqa: E402

SWITCHES = ("bound", "loop", "nolog", "json_format")


def _bound() -> None:
    load = files_watch.load_snapshots_with
    parsed: dict[tuple[str, ...], Any] = {}

    def lookup(paths: Any, memo: Any, check: bool = True) -> Any:
        texts = tuple(files_parse._read_text(p) for d in paths for p in files_load._snapshot_files(d))
        hit = parsed.get(texts)
        if hit is None:
            hit = parsed[texts] = load(paths, memo, check)
        return hit

    files_watch.load_snapshots_with = lookup  # type: ignore[assignment]


def _loop() -> None:
    def follow(self: Any, ino: Any, roots: list[str]) -> bool:
        loop = self.control_plane._loop

        def readable() -> None:
            events = ino.read(0) or []
            if any(e.finished and self._relevant(e.path, e.is_dir) for e in events):
                self._reload(quiet=False, report=False)

        loop.call_soon_threadsafe(loop.add_reader, ino._fd, readable)
        self._stop.wait()
        return False

    files_watch.SnapshotWatcher._follow = follow  # type: ignore[method-assign]


def _nolog() -> None:
    files_watch.SnapshotWatcher._log_push = staticmethod(lambda *a: None)  # type: ignore[method-assign]


def _json_format() -> None:
    from google.protobuf import json_format

    from labxds.xds import json_form, messages

    def parse(data: Any, msg: Any) -> None:
        json_form._import_nested_types(data)  # what json_form's fallback does before json_format
        json_format.ParseDict(data, msg)

    messages.parse_dict = parse  # type: ignore[assignment]


if __name__ == "__main__":
    chosen = [s for s in sys.argv[1].split(",") if s]
    unknown = sorted(set(chosen) - set(SWITCHES))
    if unknown:
        raise SystemExit(f"unknown what-if switch {unknown[0]!r} (choose from {', '.join(SWITCHES)})")
    for name in chosen:
        {"bound": _bound, "loop": _loop, "nolog": _nolog, "json_format": _json_format}[name]()
    raise SystemExit(main(sys.argv[2:]))
