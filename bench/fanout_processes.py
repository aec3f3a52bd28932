"""Fan-out over K server processes sharing one port (SO_REUSEPORT): does it reach 0.5 s / 1 s?

Issue 17 asks one cluster change to reach 5,000 ADS streams within 0.5 s and 10,000 within 1 s;
one process spends about 200 µs of CPU per stream per push (F10). This benchmark measures the
design F10 proposed, as a benchmark and not an engine feature:

* K worker processes (``multiprocessing``, spawn), each a labxds ``ControlPlane`` bound to the same
  127.0.0.1 port with ``grpc_options=[("grpc.so_reuseport", 1)]`` (off by default in the package).
  The kernel hashes each new TCP connection to one worker; the load client (``bench/fanout.py
  --client``, imported here) puts 100 streams on each connection, so streams land on workers in
  blocks of 100.
* The main process holds the snapshots and feeds every worker the SAME snapshot: each resource
  serialized (``SerializeToString``), the lot pickled once and written to every worker's pipe; the
  worker parses them, builds a ``Snapshot`` (same content, so the same content-hash version) and
  calls ``cp.push(snapshot, wait=False)``. The clock starts in the main process before the
  serialization, so the hand-off is part of every figure.
* ``K = 0`` is the reference in the same run: the ``ControlPlane`` on a thread of the main process,
  as ``bench/fanout.py`` runs it, no hand-off.

Per (N, K): streams per worker (how evenly the kernel spread them), then per push: time from the
push to the new version's arrival on every stream (p50 and max over streams; median over pushes),
the hand-off (serialization, and when each worker had the snapshot in its cache), CPU seconds of
the workers (summed), the main process and the load client (it shares the same 2 cores), both up
to the last arrival and 0.5 s later (the ACKs' processing included), the whole machine's busy
fraction during the push (/proc/stat: what other processes took), and the load average.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import pickle
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    arg_parser,
    machine_info,
    percentile,
    proc_cpu_seconds,
    proc_rss,
    raise_nofile,
    regenerate_docs,
    write_result,
)
from fanout import CLUSTER_URL, CLUSTERS, STREAMS_PER_CHANNEL, Client, _snapshots  # noqa: E402

SETTLE = 0.5  # seconds after the last arrival before the CPU is read again (the ACKs' share)


# ---------------------------------------------------------------------------------- hand-off


def encode(snapshot: Any) -> bytes:
    """The snapshot's resources as bytes for a pipe: {type URL: [serialized resource, ...]}."""
    return pickle.dumps(
        {url: [m.SerializeToString() for m in snapshot.resources(url).values()] for url in snapshot.types},
        protocol=pickle.HIGHEST_PROTOCOL,
    )


def decode(payload: bytes) -> Any:
    """The same snapshot rebuilt in a worker (same content, so the same versions)."""
    from labxds import Snapshot
    from labxds.xds import resource_types

    raw = pickle.loads(payload)
    return Snapshot({url: [resource_types.resource_type(url).cls.FromString(b) for b in bodies]
                     for url, bodies in raw.items()})


# ---------------------------------------------------------------------------------- workers


def worker_main(conn: Any, port: int) -> None:
    """One server process: bind the shared port, then apply what the main process sends."""
    raise_nofile()
    from labxds import ControlPlane

    cp = ControlPlane(port=port, grpc_options=[("grpc.so_reuseport", 1)]).start()
    conn.send(("bound", cp.port))
    while True:
        kind, payload = conn.recv()
        if kind == "snapshot":
            t_recv = time.monotonic()
            snap = decode(payload)
            t_built = time.monotonic()
            cp.push(snap, wait=False)
            conn.send(("pushed", snap.version(CLUSTER_URL), t_recv, t_built, time.monotonic()))
        elif kind == "count":
            conn.send(("count", cp.stream_count, len(cp.tracker.connected()), _connections(os.getpid(), cp.port),
                       proc_rss()))
        else:
            cp.stop()
            conn.send(("stopped",))
            return


def _connections(pid: int, port: int) -> int:
    """Established TCP connections this process accepted on ``port``."""
    import psutil

    return sum(1 for c in psutil.Process(pid).net_connections(kind="tcp")
               if c.laddr and c.laddr.port == port and c.status == psutil.CONN_ESTABLISHED)


class Workers:
    """K processes serving one port; ``push`` is the hand-off (serialize once, write K pipes)."""

    def __init__(self, k: int) -> None:
        ctx = mp.get_context("spawn")  # a fresh interpreter: no gRPC state inherited through fork
        self.procs: list[Any] = []
        self.conns: list[Any] = []
        port = 0
        for _ in range(k):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=worker_main, args=(child, port), daemon=True)
            proc.start()
            kind, bound = parent.recv()
            assert kind == "bound", kind
            port = port or bound
            if bound != port:
                raise RuntimeError(f"worker bound {bound}, not the shared port {port}")
            self.procs.append(proc)
            self.conns.append(parent)
        self.port = port
        self.pids = [p.pid for p in self.procs]

    def push(self, snapshot: Any) -> dict[str, Any]:
        t0 = time.monotonic()
        payload = encode(snapshot)
        t_encoded = time.monotonic()
        for c in self.conns:
            c.send(("snapshot", payload))
        return {"encode_s": t_encoded - t0, "payload_bytes": len(payload), "sent_s": time.monotonic() - t0}

    def applied(self) -> list[tuple[Any, ...]]:
        return [c.recv() for c in self.conns]

    def counts(self) -> list[tuple[Any, ...]]:
        for c in self.conns:
            c.send(("count", None))
        return [c.recv() for c in self.conns]

    def stop(self) -> None:
        for c, p in zip(self.conns, self.procs):
            try:
                c.send(("stop", None))
                c.recv()
            except (EOFError, OSError):
                pass
            p.join(10)
            if p.is_alive():
                p.terminate()
                p.join(5)


class InProcess:
    """K = 0: the ControlPlane on a thread of this process (as bench/fanout.py), no hand-off."""

    def __init__(self) -> None:
        from labxds import ControlPlane

        self.cp = ControlPlane(port=0).start()
        self.port = self.cp.port
        self.pids = [os.getpid()]

    def push(self, snapshot: Any) -> dict[str, Any]:
        t0 = time.monotonic()
        self.cp.push(snapshot, wait=False)
        self._done = ("pushed", snapshot.version(CLUSTER_URL), t0, t0, time.monotonic())
        return {"encode_s": 0.0, "payload_bytes": 0, "sent_s": 0.0}

    def applied(self) -> list[tuple[Any, ...]]:
        return [self._done]

    def counts(self) -> list[tuple[Any, ...]]:
        return [("count", self.cp.stream_count, len(self.cp.tracker.connected()),
                 _connections(os.getpid(), self.port), proc_rss())]

    def stop(self) -> None:
        try:
            self.cp.stop()
        except TimeoutError:  # 10,000 streams on a busy machine may take longer than stop()'s 5.5 s
            print("  (the in-process ControlPlane took more than 5.5 s to stop)", flush=True)


# ---------------------------------------------------------------------------------- measuring


def _machine_jiffies() -> tuple[int, int]:
    """(busy, total) CPU jiffies of the whole machine, all cores (/proc/stat)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    total = sum(fields[:8])  # guest time is already in user
    return total - idle, total


def _cpu(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            total += proc_cpu_seconds(pid)
        except (FileNotFoundError, ProcessLookupError):
            pass
    return total


def run(n: int, k: int, pushes: int) -> dict[str, Any]:
    snap_a, snap_b = _snapshots()
    la_start = os.getloadavg()
    t_start = time.monotonic()
    servers: Workers | InProcess = InProcess() if k == 0 else Workers(k)
    out: dict[str, Any] = {"n": n, "k": k, "streams_per_channel": STREAMS_PER_CHANNEL,
                           "start_s": time.monotonic() - t_start, "loadavg_before": [round(x, 2) for x in la_start]}
    client = None
    try:
        servers.push(snap_a)
        servers.applied()
        t0 = time.monotonic()
        client = Client(servers.port, n, "distinct")
        ready = client.read()
        out["connect_s"] = time.monotonic() - t0
        out["client_errors"] = ready.get("errors")
        out["open_retries"] = ready.get("open_retries")
        deadline = time.monotonic() + 60
        while True:
            counts = servers.counts()
            if sum(c[1] for c in counts) >= n or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        out["streams_per_worker"] = [c[1] for c in counts]
        out["nodes_per_worker"] = [c[2] for c in counts]
        out["connections_per_worker"] = [c[3] for c in counts]
        out["rss_per_worker"] = [c[4] for c in counts]
        out["server_streams"] = sum(c[1] for c in counts)
        time.sleep(1.0)

        snaps = [snap_b, snap_a]
        trials = []
        for i in range(pushes):
            snap = snaps[i % 2]
            version = snap.version(CLUSTER_URL)
            client.send(f"expect {version}")
            client.read()  # armed
            cpu_w0, cpu_m0, cpu_c0 = _cpu(servers.pids), proc_cpu_seconds(), proc_cpu_seconds(client.proc.pid)
            busy0, total0 = _machine_jiffies()
            t_push = time.monotonic()
            handoff = servers.push(snap)
            res = client.read()
            cpu_w1, cpu_m1, cpu_c1 = _cpu(servers.pids), proc_cpu_seconds(), proc_cpu_seconds(client.proc.pid)
            busy1, total1 = _machine_jiffies()
            time.sleep(SETTLE)
            cpu_w2, cpu_c2 = _cpu(servers.pids), proc_cpu_seconds(client.proc.pid)
            applied = servers.applied()
            if any(a[1] != version for a in applied):
                raise RuntimeError(f"a worker built version {[a[1] for a in applied]}, not {version}")
            lat = [t - t_push for t in res["arrivals"]]
            trial = {
                "received": res["n"],
                "p50": percentile(lat, 50), "p99": percentile(lat, 99), "max": max(lat) if lat else None,
                "encode_s": handoff["encode_s"], "payload_bytes": handoff["payload_bytes"],
                "sent_s": handoff["sent_s"],
                # when each worker had the bytes, had rebuilt the snapshot, and its push(wait=False) returned
                # (the last includes waking every stream while its loop already answers: they share the GIL)
                "worker_recv_s": [a[2] - t_push for a in applied],
                "worker_built_s": [a[3] - t_push for a in applied],
                "worker_set_s": [a[4] - t_push for a in applied],
                "workers_cpu_s": cpu_w1 - cpu_w0, "workers_cpu_settled_s": cpu_w2 - cpu_w0,
                "main_cpu_s": cpu_m1 - cpu_m0 if k else 0.0,  # K = 0: the main process is the server
                "client_cpu_s": cpu_c1 - cpu_c0, "client_cpu_settled_s": cpu_c2 - cpu_c0,
                "machine_busy_fraction": (busy1 - busy0) / (total1 - total0) if total1 > total0 else None,
                "loadavg": [round(x, 2) for x in os.getloadavg()],
            }
            trial["server_cpu_s"] = trial["workers_cpu_s"] + trial["main_cpu_s"]  # hand-off included
            trials.append(trial)
            print(f"  N={n} K={k} push {i + 1}: {res['n']}/{n}, p50 {trial['p50']:.3f}s max {trial['max']:.3f}s; "
                  f"all workers have it after {max(trial['worker_recv_s']) * 1000:.1f} ms; CPU workers "
                  f"{trial['workers_cpu_s']:.2f}s client {trial['client_cpu_s']:.2f}s; machine busy "
                  f"{trial['machine_busy_fraction']:.0%}; load {trial['loadavg'][0]}", flush=True)
            time.sleep(0.3)
        out["pushes"] = trials
        med = lambda key: percentile([t[key] for t in trials], 50)  # noqa: E731
        out["p50_s"] = med("p50")
        out["max_s"] = med("max")
        out["worst_max_s"] = max(t["max"] for t in trials)
        out["best_max_s"] = min(t["max"] for t in trials)
        out["all_received"] = all(t["received"] == n for t in trials)
        out["handoff_received_s"] = percentile([max(t["worker_recv_s"]) for t in trials], 50)
        out["push_call_returned_s"] = percentile([max(t["worker_set_s"]) for t in trials], 50)
        for key in ("server_cpu_s", "workers_cpu_s", "workers_cpu_settled_s", "main_cpu_s", "client_cpu_s", "client_cpu_settled_s",
                    "machine_busy_fraction", "encode_s"):
            out[key] = med(key)
        out["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
        out["wall_s"] = time.monotonic() - t_start
    finally:
        if client is not None:
            client.close()
        servers.stop()
    return out


def main() -> int:
    parser = arg_parser(__doc__.splitlines()[0])
    parser.add_argument("--sizes", default=None, help="comma-separated N (default 5000,10000; quick 1000)")
    parser.add_argument("--ks", default=None, help="comma-separated K, 0 = in-process reference (default 0,1,2,3)")
    parser.add_argument("--pushes", type=int, default=None, help="pushes per (N, K) (default 7; quick 3)")
    parser.add_argument("--rounds", type=int, default=2, help="passes over (N, K), every other one in reverse K order")
    parser.add_argument("--tag", default="", help="results file bench/results/fanout_processes[.TAG].json")
    args = parser.parse_args()
    limits = raise_nofile()
    sizes = [int(x) for x in (args.sizes or ("1000" if args.quick else "5000,10000")).split(",")]
    ks = [int(x) for x in (args.ks or ("0,1,2" if args.quick else "0,1,2,3")).split(",")]
    pushes = args.pushes or (3 if args.quick else 7)
    info = machine_info()
    info["nofile_limit"] = list(limits)
    runs: list[dict[str, Any]] = []
    started = time.monotonic()
    name = "fanout_processes" + (f"_{args.tag}" if args.tag else "")
    for rnd in range(args.rounds):
        for n in sizes:
            # every other round runs the K in reverse, so a drift in the machine's load favours none
            for k in (ks if rnd % 2 == 0 else ks[::-1]):
                print(f"round {rnd + 1}: N = {n}, K = {k}  (load average {os.getloadavg()[0]:.2f})", flush=True)
                r = run(n, k, pushes)
                r["round"] = rnd + 1
                runs.append(r)
                print(f"N={n} K={k}: streams per worker {r['streams_per_worker']}, p50 {r['p50_s']:.3f}s, "
                      f"max {r['max_s']:.3f}s (worst {r['worst_max_s']:.3f}s), server CPU {r['server_cpu_s']:.2f}s, "
                      f"client CPU {r['client_cpu_s']:.2f}s", flush=True)
                _write(name, info, runs, started, args.quick)  # a later failure keeps what was measured
    if not args.no_report:
        regenerate_docs()
    return 0


def _write(name: str, info: dict[str, Any], runs: list[dict[str, Any]], started: float, quick: bool) -> None:
    write_result(name, {
        "machine": info,
        "design": "K spawned processes, each a ControlPlane on one 127.0.0.1 port with grpc.so_reuseport=1; "
                  "the main process pickles each resource's serialized bytes once and writes them to every "
                  "worker's pipe; each worker rebuilds the Snapshot and pushes it (wait=False). K=0: the "
                  "ControlPlane on a thread of the main process, no hand-off (as bench/fanout.py).",
        "clusters_in_snapshot": CLUSTERS,
        "settle_s": SETTLE,
        "wall_s": time.monotonic() - started,
        "runs": runs,
    }, quick)


if __name__ == "__main__":
    raise SystemExit(main())
