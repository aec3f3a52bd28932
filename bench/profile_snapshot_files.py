"""Where the time goes when a snapshot file changes (the ``labxds serve --snapshot`` rows).

In-process breakdown, no Envoy: a ``SnapshotWatcher`` feeds a ``ControlPlane`` that one SotW
test client (CDS) is subscribed to. For each switch (rename of a new file into the watched
directory, on tmpfs, rendered beforehand) it stamps, after the rename: the watcher's thread has
the inotify event, ``SnapshotWatcher._reload`` entered, the files loaded (read + parse +
``Snapshot``), ``set_snapshot`` called, and the CDS response written by the server. Both layouts
of bench/propagation.py: ``cds.json`` beside ``lds.json`` (split) and one ``snapshot.json``.

    python bench/profile_snapshot_files.py [SWITCHES]

Prints p50s and writes ``bench/results/profile_snapshot_files.json``.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, sandbox_file_text, summary  # noqa: E402
from big_snapshot import CountingClient  # noqa: E402

from labxds import CLUSTER, ControlPlane  # noqa: E402
from labxds.files import inotify  # noqa: E402
from labxds.files import watch as files_watch  # noqa: E402

STAGES = ("event", "reload", "loaded", "set", "response")


def run(split: bool, switches: int) -> dict[str, Any]:
    base = Path(tempfile.mkdtemp(dir="/dev/shm" if os.path.isdir("/dev/shm") else None))
    watched, staging = base / "snap", base / "staging"
    watched.mkdir()
    staging.mkdir()
    name = "cds.json" if split else "snapshot.json"
    texts = {p: sandbox_file_text(p, others=not split) for p in (18081, 18082)}
    if split:
        (watched / "lds.json").write_text(sandbox_file_text(1, clusters=False))
    (watched / name).write_text(texts[18081])
    stamps: dict[str, float] = {}
    saved = (inotify.Inotify.read, files_watch.SnapshotWatcher._reload, files_watch.load_snapshots_with,
             ControlPlane.set_snapshot)

    def read(self: Any, timeout: float | None) -> Any:
        events = saved[0](self, timeout)
        if events:
            stamps.setdefault("event", time.perf_counter())
        return events

    def reload(self: Any, *a: Any, **k: Any) -> Any:
        stamps.setdefault("reload", time.perf_counter())
        return saved[1](self, *a, **k)

    def load(*a: Any, **k: Any) -> Any:
        r = saved[2](*a, **k)
        stamps.setdefault("loaded", time.perf_counter())
        return r

    def set_snapshot(self: Any, *a: Any, **k: Any) -> Any:
        stamps.setdefault("set", time.perf_counter())
        return saved[3](self, *a, **k)

    inotify.Inotify.read = read  # type: ignore[method-assign]
    files_watch.SnapshotWatcher._reload = reload  # type: ignore[method-assign]
    files_watch.load_snapshots_with = load  # type: ignore[assignment]
    ControlPlane.set_snapshot = set_snapshot  # type: ignore[method-assign]
    cp = ControlPlane(port=0).start()
    watcher = files_watch.SnapshotWatcher([watched], cp).start()
    client = CountingClient(f"127.0.0.1:{cp.port}", False, "bench-snapfile-profile")
    client.quiet_for(0.3)

    def on_response(node: str, url: str, *rest: Any) -> None:
        if url == CLUSTER:
            stamps.setdefault("response", time.perf_counter())

    cp.on("response", on_response)
    rows = []
    try:
        for i in range(switches):
            port = 18082 if i % 2 == 0 else 18081
            stamps.clear()
            staged = staging / name
            staged.write_text(texts[port])
            t0 = time.perf_counter()
            os.rename(staged, watched / name)
            deadline = t0 + 5
            while "response" not in stamps and time.perf_counter() < deadline:
                time.sleep(0.002)
            if all(k in stamps for k in STAGES):
                rows.append({k: stamps[k] - t0 for k in STAGES})
            time.sleep(0.03)
    finally:
        watcher.stop()
        client.close()
        cp.stop()
        (inotify.Inotify.read, files_watch.SnapshotWatcher._reload, files_watch.load_snapshots_with,
         ControlPlane.set_snapshot) = saved
        shutil.rmtree(base, ignore_errors=True)
    return {"switches": len(rows), "stamps": {k: summary([r[k] for r in rows]) for k in STAGES}}


def main() -> int:
    switches = int(sys.argv[1]) if len(sys.argv) > 1 else 100
    out = {}
    for split in (True, False):
        layout = "cds.json beside lds.json" if split else "one file"
        out[layout] = result = run(split, switches)
        print(f"{layout}:")
        for k, s in result["stamps"].items():
            print(f"  rename -> {k:8s} p50 {s['p50'] * 1000:6.3f} ms  p90 {s['p90'] * 1000:6.3f} ms")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "profile_snapshot_files.json").write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
