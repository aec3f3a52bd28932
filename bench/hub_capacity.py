"""Capacity of one machine for a class on JupyterHub: memory and CPU per learner, idle and busy.

A real JupyterHub (deploy/jupyterhub/jupyterhub_config.py, its configurable-http-proxy, the
workshop as its service) with N learners. Each learner logs in through the REST API, starts a
server, and runs the learner notebook's first steps in a kernel of that server: their Envoy and
echo services join the workshop, and a request goes through their listener. Then:

* idle: every process of every learner (single-user server, kernel, Envoy) is sampled for
  memory (PSS: shared pages such as Envoy's binary divided among the processes sharing them;
  and RSS) and for CPU over a quiet window;
* exercise: every learner, at once, does exercise "route-api" (a push through the desk, the
  check against their Envoy, 100 requests through their listener); CPU-seconds per learner and
  the wall time are recorded, and memory again afterwards.

The hub, its proxy and the workshop service are measured apart (they are per class, not per
learner). ``MemAvailable`` before and after gives the machine's own view.

    .venv/bin/python bench/hub_capacity.py --learners 20
"""

from __future__ import annotations

import os
import re
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, arg_parser, machine_info, write_result  # noqa: E402

sys.path.insert(0, str(ROOT / "tests"))
from hub_harness import Hub, missing_parts  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")

JOIN = """
import os
from labxds import Lab
from labxds.classroom import LearnerSession
lab = Lab(control_plane=os.environ["LABXDS_CONTROL_PLANE"], node_id=os.environ["LABXDS_NODE_ID"],
          token=os.environ["LABXDS_TOKEN"]).start(progress=False)
me = LearnerSession(os.environ["LABXDS_DESK"], lab, token=os.environ["LABXDS_TOKEN"])
print(list(lab.curl(2)["served_by"]))
"""

EXERCISE = """
from labxds.classroom import routes
me.push(routes({"/api": "service2", "/": "service1"}))
result = me.check("route-api")
answers = lab.curl(100)
print(result.passed, int((answers["status"] == 200).sum()))
"""


# -- /proc ----------------------------------------------------------------------------------


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return b""


def processes(hub: Hub) -> list[dict[str, Any]]:
    """The hub and every process it started, with what each is: a learner's (by LABXDS_NODE_ID)
    or the class's (hub, proxy, workshop). Other processes on the machine are left out."""
    out = []
    assert hub.proc is not None
    for pid in {hub.proc.pid} | hub.descendants():
        cmdline = _read(f"/proc/{pid}/cmdline").replace(b"\0", b" ").decode(errors="replace")
        if not cmdline:
            continue
        environ = _read(f"/proc/{pid}/environ").split(b"\0")
        node = next((e.split(b"=", 1)[1].decode() for e in environ if e.startswith(b"LABXDS_NODE_ID=")), None)
        if "jupyterhub-singleuser" in cmdline:
            kind = "server"
        elif "ipykernel_launcher" in cmdline:
            kind = "kernel"
        elif re.search(r"(^|/)envoy\b", cmdline.split(" ")[0]):
            kind = "envoy"
        elif "labxds classroom" in cmdline:
            kind, node = "workshop", None
        elif "configurable-http-proxy" in cmdline:
            kind, node = "proxy", None
        elif pid == hub.proc.pid:
            kind, node = "hub", None
        else:
            continue
        out.append({"pid": pid, "kind": kind, "node": node, **usage(pid)})
    return out


def usage(pid: int) -> dict[str, float]:
    stat = _read(f"/proc/{pid}/stat").decode(errors="replace")
    fields = stat[stat.rfind(")") + 2:].split() if stat else []
    cpu = (int(fields[11]) + int(fields[12])) / TICK if len(fields) > 12 else 0.0
    rollup = _read(f"/proc/{pid}/smaps_rollup").decode(errors="replace")
    pss = re.search(r"^Pss:\s+(\d+) kB", rollup, re.M)
    rss = re.search(r"^Rss:\s+(\d+) kB", rollup, re.M)
    return {"cpu_s": cpu, "pss_mib": int(pss.group(1)) / 1024 if pss else 0.0,
            "rss_mib": int(rss.group(1)) / 1024 if rss else 0.0}  # fmt: skip


def mem_available_mib() -> float:
    text = _read("/proc/meminfo").decode()
    return int(re.search(r"^MemAvailable:\s+(\d+) kB", text, re.M).group(1)) / 1024  # type: ignore[union-attr]


def per_learner(snapshot: list[dict[str, Any]], names: list[str]) -> dict[str, dict[str, dict[str, float]]]:
    """learner -> kind -> {cpu_s, pss_mib, rss_mib} (summed over that kind's processes)."""
    out: dict[str, dict[str, dict[str, float]]] = {n: {} for n in names}
    for p in snapshot:
        if p["node"] in out:
            agg = out[p["node"]].setdefault(p["kind"], {"cpu_s": 0.0, "pss_mib": 0.0, "rss_mib": 0.0, "n": 0})
            for k in ("cpu_s", "pss_mib", "rss_mib"):
                agg[k] += p[k]
            agg["n"] += 1
    return out


def class_side(snapshot: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for p in snapshot:
        if p["node"] is None:
            agg = out.setdefault(p["kind"], {"cpu_s": 0.0, "pss_mib": 0.0, "rss_mib": 0.0})
            for k in ("cpu_s", "pss_mib", "rss_mib"):
                agg[k] += p[k]
    return out


def mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def summarize(before: dict, after: dict, seconds: float, names: list[str]) -> dict[str, Any]:
    kinds = ("server", "kernel", "envoy")
    rows: dict[str, Any] = {}
    for kind in kinds:
        pss = [after[n].get(kind, {}).get("pss_mib", 0.0) for n in names]
        rss = [after[n].get(kind, {}).get("rss_mib", 0.0) for n in names]
        cpu = [after[n].get(kind, {}).get("cpu_s", 0.0) - before[n].get(kind, {}).get("cpu_s", 0.0) for n in names]
        rows[kind] = {"pss_mib": mean(pss), "pss_mib_max": max(pss), "rss_mib": mean(rss),
                      "cpu_s": mean(cpu), "cpu_pct": 100 * mean(cpu) / seconds}  # fmt: skip
    totals_pss = [sum(after[n].get(k, {}).get("pss_mib", 0.0) for k in kinds) for n in names]
    totals_cpu = [sum(after[n].get(k, {}).get("cpu_s", 0.0) - before[n].get(k, {}).get("cpu_s", 0.0) for k in kinds)
                  for n in names]  # fmt: skip
    rows["learner"] = {"pss_mib": mean(totals_pss), "pss_mib_max": max(totals_pss), "cpu_s": mean(totals_cpu),
                       "cpu_pct": 100 * mean(totals_cpu) / seconds}  # fmt: skip
    return rows


def run(n: int, idle_seconds: float, workdir: Path) -> dict[str, Any]:
    names = [f"learner{i:03d}" for i in range(1, n + 1)]
    free_before = mem_available_mib()
    hub = Hub(workdir, names).start()
    kernels = {}
    try:
        t0 = time.monotonic()
        for name in names:
            hub.login(name)
            hub.start_server(name)
        for name in names:
            hub.wait_ready(name, timeout=60 + 5 * n)
        servers_up = time.monotonic() - t0
        t0 = time.monotonic()
        for name in names:
            kernels[name] = hub.kernel(name)
            kernels[name].execute(JOIN, timeout=120)
        joined = time.monotonic() - t0
        time.sleep(5)  # settle: imports done, first snapshots ACKed
        before = per_learner(processes(hub), names)
        # everything each learner's processes used since they started: server, kernel, imports, Envoy
        startup = [sum(k["cpu_s"] for k in before[n].values()) for n in names]
        start = time.monotonic()
        time.sleep(idle_seconds)
        idle_snapshot = processes(hub)
        idle_window = time.monotonic() - start
        idle_after = per_learner(idle_snapshot, names)
        free_idle = mem_available_mib()
        idle = summarize(before, idle_after, idle_window, names)
        idle["class"] = class_side(idle_snapshot)

        errors: list[str] = []
        def exercise(name: str) -> None:
            try:
                out = kernels[name].execute(EXERCISE, timeout=300)
                if not out.startswith("True 100"):
                    errors.append(f"{name}: {out.strip()}")
            except Exception as exc:  # noqa: BLE001 (recorded, the run goes on)
                errors.append(f"{name}: {exc}")

        threads = [threading.Thread(target=exercise, args=(name,)) for name in names]
        start = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        busy_window = time.monotonic() - start
        busy_snapshot = processes(hub)
        busy = summarize(idle_after, per_learner(busy_snapshot, names), busy_window, names)
        busy["class"] = class_side(busy_snapshot)
        return {
            "learners": n, "servers_up_s": servers_up, "joined_s": joined,
            "startup_cpu_s": mean(startup), "startup_cpu_s_max": max(startup),
            "idle_window_s": idle_window, "idle": idle,
            "exercise_wall_s": busy_window, "exercise": busy, "exercise_errors": errors,
            "mem_available_mib": {"before": free_before, "idle": free_idle},
            "mem_per_learner_from_meminfo_mib": (free_before - free_idle) / n,
        }  # fmt: skip
    finally:
        hub.stop()


def main() -> int:
    p = arg_parser(__doc__.splitlines()[0])
    p.add_argument("--learners", type=int, nargs="+", default=[5, 20])
    p.add_argument("--idle-seconds", type=float, default=30.0)
    args = p.parse_args()
    reason = missing_parts()
    if reason:
        print(f"cannot run: {reason}", file=sys.stderr)
        return 2
    import tempfile

    runs = []
    for n in ([3] if args.quick else args.learners):
        with tempfile.TemporaryDirectory(prefix="labxds-hub-bench-") as tmp:
            print(f"{n} learners ...", flush=True)
            result = run(n, 10.0 if args.quick else args.idle_seconds, Path(tmp))
            runs.append(result)
            i, b = result["idle"]["learner"], result["exercise"]["learner"]
            print(f"  {n} learners: start-up {result['startup_cpu_s']:.1f} CPU-s each; "
                  f"idle {i['pss_mib']:.0f} MiB PSS and {i['cpu_pct']:.2f}% of a core each; "
                  f"exercise {b['cpu_s']:.2f} CPU-s each, {result['exercise_wall_s']:.1f}s wall for all; "
                  f"errors {len(result['exercise_errors'])}", flush=True)  # fmt: skip
    write_result("hub_capacity", {"machine": machine_info(), "runs": runs}, args.quick)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
