"""How the cost grows: snapshot build time against the number of resources (1,000 to 100,000).

Resources are half EDS clusters, half their load assignments (the big-snapshot shape). Per size:
the builders, a first ``Snapshot()`` (serialization, versions, framing, consistency check), and
the next ``Snapshot()`` with one cluster changed (the framing of the others reused); the median
of ``--repeat`` runs, min and max beside it. The growth is fitted as time = a * N^b (least squares
on log-log): b near 1 is linear. Fan-out time and memory against streams come from fanout.json
(``python bench/fanout.py --sizes 1000,2000,5000,10000``); bench/report.py fits and draws both.
"""

from __future__ import annotations

import gc
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import arg_parser, machine_info, regenerate_docs, write_result  # noqa: E402


def power_fit(xs: list[float], ys: list[float]) -> dict[str, float]:
    """y = a * x^b by least squares on logs; r2 of that fit."""
    lx = [math.log(x) for x in xs]
    ly = [math.log(y) for y in ys]
    mx, my = statistics.fmean(lx), statistics.fmean(ly)
    sxx = sum((x - mx) ** 2 for x in lx)
    b = sum((x - mx) * (y - my) for x, y in zip(lx, ly)) / sxx
    a = math.exp(my - b * mx)
    ss_res = sum((y - (math.log(a) + b * x)) ** 2 for x, y in zip(lx, ly))
    ss_tot = sum((y - my) ** 2 for y in ly)
    return {"a": a, "b": b, "r2": 1 - ss_res / ss_tot if ss_tot else 1.0}


def build_once(n: int) -> dict[str, float]:
    from labxds import Snapshot
    from labxds.xds import cluster, load_assignment

    half = n // 2
    gc.collect()
    t0 = time.perf_counter()
    resources: list[Any] = []
    for i in range(half):
        resources.append(cluster(f"svc-{i}", type="EDS", connect_timeout=1.0))
        resources.append(load_assignment(f"svc-{i}", [("10.0.%d.%d" % (i // 250 % 250, i % 250 + 1), 8080)]))
    t1 = time.perf_counter()
    Snapshot(resources)
    t2 = time.perf_counter()
    resources[0] = cluster("svc-0", type="EDS", connect_timeout=2.0)
    Snapshot(resources)
    t3 = time.perf_counter()
    return {"builders": t1 - t0, "snapshot": t2 - t1, "next_snapshot": t3 - t2}


def main() -> int:
    parser = arg_parser(__doc__.splitlines()[0])
    parser.add_argument("--sizes", default=None, help="resources per snapshot (default 1000..100000)")
    parser.add_argument("--repeat", type=int, default=None)
    args = parser.parse_args()
    sizes = [int(x) for x in (args.sizes or ("1000,10000" if args.quick else
                                             "1000,2000,5000,10000,20000,50000,100000")).split(",")]
    repeat = args.repeat or (1 if args.quick else 3)
    info = machine_info()
    started = time.monotonic()
    rows = []
    for n in sizes:
        runs = [build_once(n) for _ in range(repeat)]
        row: dict[str, Any] = {"n": n}
        for key in ("builders", "snapshot", "next_snapshot"):
            values = [r[key] for r in runs]
            row[key] = {"p50": statistics.median(values), "min": min(values), "max": max(values)}
        rows.append(row)
        print(f"N={n}: builders {row['builders']['p50']:.3f}s, Snapshot() {row['snapshot']['p50']:.3f}s, "
              f"next {row['next_snapshot']['p50']:.3f}s", flush=True)
    fits = {key: power_fit([r["n"] for r in rows], [r[key]["p50"] for r in rows])
            for key in ("builders", "snapshot", "next_snapshot")}
    for key, f in fits.items():
        print(f"{key}: time = {f['a']:.3g} * N^{f['b']:.2f} (r2 {f['r2']:.3f})")
    write_result("growth", {"machine": info, "repeat": repeat, "rows": rows, "fits": fits,
                            "wall_s": time.monotonic() - started}, args.quick)
    if not args.no_report:
        regenerate_docs()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
