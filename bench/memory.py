"""Memory under pushes: 1,000 pushes to a connected real Envoy; does the server's RSS stay flat?

The control plane runs in this process (as in a notebook) and serves one real Envoy (SotW, then
Delta). Each push is a real change (the sandbox cluster's endpoint alternates between two echo
services and the snapshot version counts up, so every type is resent) and waits for Envoy's ACK
(``push(wait=True)``). RSS of this process is sampled every 100 pushes; the slope is a
least-squares fit over the samples after the first (which includes warm-up allocations).
"""

from __future__ import annotations

import gc
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    RESULTS,
    EchoProcess,
    PySpy,
    arg_parser,
    fold_profile,
    free_port,
    machine_info,
    proc_cpu_seconds,
    proc_rss,
    regenerate_docs,
    slope,
    summary,
    write_result,
)

from labxds import ControlPlane, sandbox_snapshot  # noqa: E402
from labxds.envoy import Envoy, render_bootstrap  # noqa: E402


def run(delta: bool, pushes: int, every: int, ports: dict[str, int], profile: Path | None) -> dict[str, Any]:
    cp = ControlPlane(port=0).start()
    node = f"bench-memory-{'delta' if delta else 'sotw'}"
    listener = free_port()
    envoy = None
    try:
        cp.set_snapshot(sandbox_snapshot("127.0.0.1", ports["service1"], version=0, listener_port=listener))
        envoy = Envoy(render_bootstrap(xds_port=cp.port, admin_port=0, node_id=node, delta=delta),
                      admin_port=0).start()
        cp.wait_for_node(node, timeout=10)
        gc.collect()
        samples = [(0, proc_rss())]
        push_times = []
        cpu0 = proc_cpu_seconds()
        spy = PySpy(profile) if profile else None
        if spy:
            spy.__enter__()
        try:
            for i in range(1, pushes + 1):
                upstream = "service2" if i % 2 else "service1"
                snap = sandbox_snapshot("127.0.0.1", ports[upstream], version=i, listener_port=listener)
                t0 = time.perf_counter()
                cp.push(snap, node=node, timeout=10)
                push_times.append(time.perf_counter() - t0)
                if i % every == 0:
                    samples.append((i, proc_rss()))
        finally:
            if spy:
                spy.__exit__()
        cpu = proc_cpu_seconds() - cpu0
        gc.collect()
        after_gc = proc_rss()
        xs = [i for i, _ in samples[1:]]
        ys = [r for _, r in samples[1:]]
        return {
            "mode": "Delta" if delta else "SotW",
            "pushes": pushes,
            "rss_samples": samples,
            "rss_after_gc": after_gc,
            "slope_bytes_per_push": slope(xs, ys),
            # the trace keeps the last 2,000 events per node: once it is full, growth should stop
            "slope_second_half_bytes_per_push": slope(xs[len(xs) // 2:], ys[len(ys) // 2:]),
            "growth_bytes": samples[-1][1] - samples[1][1],
            "push_wait_s": summary(push_times),
            "cpu_s_per_push": cpu / pushes,
            "envoy_rss_mb": proc_rss(envoy.pid) / 2**20,
            "trace_events_kept": len(cp.tracker.events(node)),
        }
    finally:
        if envoy is not None:
            envoy.stop()
        cp.stop()


def main() -> int:
    parser = arg_parser(__doc__.splitlines()[0])
    parser.add_argument("--pushes", type=int, default=None, help="default 1000 (quick 200)")
    parser.add_argument("--profile", action="store_true", help="py-spy the SotW run (bench/results/profiles/)")
    args = parser.parse_args()
    pushes = args.pushes or (200 if args.quick else 1000)
    every = 100 if pushes >= 500 else max(10, pushes // 10)
    info = machine_info()
    started = time.monotonic()
    services = {n: EchoProcess(n) for n in ("service1", "service2")}
    ports = {n: s.port for n, s in services.items()}
    runs = []
    try:
        for delta in (False, True):
            prof = RESULTS / "profiles" / "memory_sotw_pushes.txt" if (args.profile and not delta) else None
            r = run(delta, pushes, every, ports, prof)
            runs.append(r)
            print(f"{r['mode']}: RSS {r['rss_samples'][1][1] / 2**20:.1f} -> {r['rss_samples'][-1][1] / 2**20:.1f} MB "
                  f"over {pushes} pushes; slope {r['slope_bytes_per_push']:.0f} B/push; "
                  f"push(wait=True) p50 {r['push_wait_s']['p50'] * 1000:.2f} ms", flush=True)
            if prof:
                folded = fold_profile(prof, top=30)
                r["profile"] = {"file": str(prof.relative_to(RESULTS.parent.parent)), **folded}
    finally:
        for s in services.values():
            s.stop()
    write_result("memory", {"machine": info, "every": every, "runs": runs,
                            "wall_s": time.monotonic() - started}, args.quick)
    if not args.no_report:
        regenerate_docs()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
