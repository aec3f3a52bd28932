"""Where the time goes when a snapshot file changes (the ``labxds serve --snapshot`` row).

In-process breakdown, no Envoy: a ``SnapshotWatcher`` feeds a ``ControlPlane`` that one SotW
test client (CDS) is subscribed to. For each switch (rename of a new sandbox snapshot file into
the watched directory, on tmpfs) it stamps: the rename, ``SnapshotWatcher.reload`` entered
(inotify + watchfiles' debounce/step), ``load_snapshots`` returned (read + parse + Snapshot),
and the CDS response leaving the server. Prints p50s and writes
``bench/results/profile_snapshot_files.json``.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, summary  # noqa: E402
from big_snapshot import CountingClient  # noqa: E402
from google.protobuf import any_pb2, json_format  # noqa: E402

from labxds import (  # noqa: E402
    CLUSTER,
    ControlPlane,
    snapshot_files,  # noqa: E402
)
from labxds.resources import sandbox_resources  # noqa: E402


def main() -> int:
    switches = int(sys.argv[1]) if len(sys.argv) > 1 else 100
    base = Path(tempfile.mkdtemp(dir="/dev/shm" if os.path.isdir("/dev/shm") else None))
    watched, staging = base / "snap", base / "staging"
    watched.mkdir()
    staging.mkdir()

    def text(port: int) -> str:
        docs = []
        for r in sandbox_resources("127.0.0.1", port):
            a = any_pb2.Any()
            a.Pack(r)
            docs.append(json.loads(json_format.MessageToJson(a)))
        return json.dumps({"resources": docs})

    texts = {p: text(p) for p in (18081, 18082)}
    (watched / "snapshot.json").write_text(texts[18081])
    stamps: dict[str, float] = {}
    orig_reload, orig_load = snapshot_files.SnapshotWatcher._reload, snapshot_files._load_snapshots

    def reload(self: Any, *a: Any, **k: Any) -> Any:
        stamps.setdefault("reload", time.perf_counter())
        return orig_reload(self, *a, **k)

    def load(*a: Any, **k: Any) -> Any:
        r = orig_load(*a, **k)
        stamps.setdefault("loaded", time.perf_counter())
        return r

    snapshot_files.SnapshotWatcher._reload = reload  # type: ignore[method-assign]
    snapshot_files._load_snapshots = load  # type: ignore[assignment]
    cp = ControlPlane(port=0).start()
    watcher = snapshot_files.SnapshotWatcher([watched], cp).start()
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
            staged = staging / "snapshot.json"
            staged.write_text(texts[port])
            t0 = time.perf_counter()
            os.rename(staged, watched / "snapshot.json")
            deadline = t0 + 5
            while "response" not in stamps and time.perf_counter() < deadline:
                time.sleep(0.0005)
            if "response" in stamps and "reload" in stamps:
                rows.append({k: v - t0 for k, v in stamps.items()})
            time.sleep(0.03)
    finally:
        watcher.stop()
        client.close()
        cp.stop()
    out = {k: summary([r[k] for r in rows if k in r]) for k in ("reload", "loaded", "response")}
    for k, s in out.items():
        print(f"rename -> {k:8s} p50 {s['p50'] * 1000:6.2f} ms  p90 {s['p90'] * 1000:6.2f} ms")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "profile_snapshot_files.json").write_text(json.dumps({"switches": len(rows), "stamps": out}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
