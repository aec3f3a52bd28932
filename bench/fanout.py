"""Fan-out: N concurrent ADS streams, one push of a one-cluster change; how fast do all N have it?

The control plane runs in this (the benchmark) process, on its own thread as in a notebook. The
load client is a separate process (``bench/fanout.py --client``) speaking SotW ADS with grpc.aio:
N streams, 100 per channel (each channel its own TCP connection), each stream a distinct node id
(``bench-fanout-<i>``), subscribed to CDS as a wildcard and ACKing every response at once. Both
sides stamp times with CLOCK_MONOTONIC, which is system-wide on Linux, so a push here and an
arrival there compare directly.

Per N: time from ``cp.push(wait=False)`` to the arrival of the new version on each stream (p50,
max over streams; median over pushes), server-process CPU seconds per push, and server RSS per
idle stream ((RSS with N streams held - RSS before) / N). One extra push per N uses
``cp.push(wait=True)`` to time the server's own view of "all applied".
"""

from __future__ import annotations

import asyncio
import collections
import gc
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    PYTHON,
    RESULTS,
    ROOT,
    PySpy,
    arg_parser,
    fold_profile,
    machine_info,
    percentile,
    proc_cpu_seconds,
    proc_rss,
    raise_nofile,
    regenerate_docs,
    write_result,
)

CLUSTER_URL = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
ADS_METHOD = "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources"
STREAMS_PER_CHANNEL = int(os.environ.get("LABXDS_BENCH_PER_CHANNEL", "100"))
CLUSTERS = 10
OPEN_TIMEOUT = float(os.environ.get("LABXDS_BENCH_OPEN_TIMEOUT", "120"))  # seconds a new stream waits for its first response before the client retries it (Envoy waits; a short timeout makes a retry storm of its own)
RAMP_PAUSE = float(os.environ.get("LABXDS_BENCH_RAMP", "0.05"))  # seconds between channels while the client opens its streams


# ---------------------------------------------------------------------------------- client


async def _client(port: int, n: int, node_mode: str) -> None:
    import grpc
    from envoy.config.core.v3 import base_pb2
    from envoy.service.discovery.v3 import discovery_pb2

    loop = asyncio.get_running_loop()
    arrivals: dict[str, list[float]] = {}
    expect: dict[str, Any] = {"version": None, "event": asyncio.Event()}
    connected = 0
    all_connected = asyncio.Event()
    errors: list[str] = []

    def note(version: str, t: float) -> None:
        lst = arrivals.setdefault(version, [])
        lst.append(t)
        if version == expect["version"] and len(lst) >= n:
            expect["event"].set()

    channels = []
    for c in range((n + STREAMS_PER_CHANNEL - 1) // STREAMS_PER_CHANNEL):
        ch = grpc.aio.insecure_channel(
            f"127.0.0.1:{port}",
            options=[("grpc.labxds_bench_channel", c), ("grpc.max_receive_message_length", 64 << 20)],
        )
        channels.append(ch)

    retries: list[str] = []
    stalled: list[int] = []
    state: dict[int, str] = {}
    ended: list[str] = []  # streams the server closed (OK or not) while the client still wanted them

    async def _open(call: Any, request: Any) -> Any:
        await call.write(request)
        return await call.read()

    async def stream(i: int) -> None:
        """One ADS stream; a stream refused while opening is retried after a back-off, as Envoy does."""
        nonlocal connected
        node_id = f"bench-fanout-{i}" if node_mode == "distinct" else "bench-fanout"
        node = base_pb2.Node(id=node_id, cluster="bench", user_agent_name="labxds-bench")
        first = True
        attempt = 0
        state[i] = "created"
        while True:
            call = channels[i // STREAMS_PER_CHANNEL].stream_stream(
                ADS_METHOD,
                request_serializer=discovery_pb2.DiscoveryRequest.SerializeToString,
                response_deserializer=discovery_pb2.DiscoveryResponse.FromString,
            )(wait_for_ready=True)
            try:
                request = discovery_pb2.DiscoveryRequest(node=node, type_url=CLUSTER_URL)
                state[i] = "opening"
                while True:
                    if first:
                        opening = asyncio.ensure_future(_open(call, request))
                        done, _ = await asyncio.wait([opening], timeout=OPEN_TIMEOUT)
                        if done:
                            resp = opening.result()
                        else:
                            # asyncio.wait_for would hang here: the stuck write ignores cancellation.
                            # No answer at all: the call never started, or never reached the handler
                            # (seen with a bare grpc.aio server too, under a burst of new streams).
                            call.cancel()
                            stalled.append(i)
                            attempt += 1
                            if attempt > 5:
                                errors.append("no first response after 5 tries")
                                return
                            break
                    else:
                        resp = await call.read()
                    if resp is grpc.aio.EOF:
                        code = await call.code()
                        ended.append(f"{code}: {await call.details()}")
                        if first and attempt < 5:  # the server ended a stream it never answered
                            attempt += 1
                            await asyncio.sleep(0.25 * attempt)
                            break
                        return
                    t = time.monotonic()
                    note(resp.version_info, t)
                    if first:
                        state[i] = "first ACK"
                    await call.write(discovery_pb2.DiscoveryRequest(
                        type_url=CLUSTER_URL, version_info=resp.version_info, response_nonce=resp.nonce))
                    if first:
                        first = False
                        state[i] = "held"
                        connected += 1
                        if connected == n:
                            all_connected.set()
                continue  # a stalled open: try again
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.CANCELLED and not first:
                    return  # the benchmark is over
                what = f"{exc.code()}: {exc.details()}"
                if first and attempt < 5:
                    attempt += 1
                    retries.append(what)
                    await asyncio.sleep(0.25 * attempt)
                    continue
                errors.append(what)
                print(f"client: stream {i}: {what}", file=sys.stderr, flush=True)
                return

    async def progress() -> None:
        while True:
            await asyncio.sleep(5)
            print(f"client: {connected}/{n} streams have their first response, {len(retries)} retries, "
                  f"{len(stalled)} stalled opens, {len(ended)} ended by the server ({sorted(set(ended))[:2]}), "
                  f"{len(errors)} errors; states {collections.Counter(state.values())}",
                  file=sys.stderr, flush=True)
            stuck = [i for i, st in state.items() if st == "opening"]
            if stuck and os.environ.get("LABXDS_BENCH_DEBUG"):
                tasks[stuck[0]].print_stack(file=sys.stderr)

    t0 = time.monotonic()
    tasks = []
    for i in range(n):  # open the streams a channel at a time, as a fleet of Envoys would trickle in
        tasks.append(asyncio.create_task(stream(i)))
        if i % STREAMS_PER_CHANNEL == STREAMS_PER_CHANNEL - 1:
            await asyncio.sleep(RAMP_PAUSE)
    reporter = asyncio.create_task(progress())
    await asyncio.wait_for(all_connected.wait(), timeout=300)
    reporter.cancel()
    print(json.dumps({"ready": True, "connect_s": time.monotonic() - t0, "errors": errors[:5],
                      "open_retries": len(retries), "stalled_opens": len(stalled),
                      "ended_by_server": len(ended), "ended_reasons": sorted(set(ended))[:5], "retry_reasons": sorted(set(retries))[:5]}), flush=True)

    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while True:
        line = (await reader.readline()).decode().strip()
        if not line or line == "quit":
            break
        cmd, _, version = line.partition(" ")
        if cmd == "expect":
            expect["version"], expect["event"] = version, asyncio.Event()
            arrivals[version] = []  # only arrivals after this point count
            print(json.dumps({"armed": version}), flush=True)
            try:
                await asyncio.wait_for(expect["event"].wait(), timeout=120)
                got = arrivals[version]
            except asyncio.TimeoutError:
                got = arrivals.get(version, [])
            print(json.dumps({"version": version, "arrivals": got, "n": len(got), "errors": errors[:5]}), flush=True)
    for t in tasks:
        t.cancel()
    for ch in channels:
        await ch.close()


def client_main(port: int, n: int, node_mode: str) -> int:
    raise_nofile()
    asyncio.run(_client(port, n, node_mode))
    return 0


# ---------------------------------------------------------------------------------- server


def _snapshots() -> tuple[Any, Any]:
    from labxds import Snapshot, cluster

    base = [cluster(f"svc-{i}", [("127.0.0.1", 20000 + i)], type="STATIC") for i in range(CLUSTERS)]
    changed = list(base)
    changed[0] = cluster("svc-0", [("127.0.0.1", 30000)], type="STATIC")  # one cluster's endpoint moves
    return Snapshot(base), Snapshot(changed)


class Client:
    def __init__(self, port: int, n: int, node_mode: str) -> None:
        self.proc = subprocess.Popen(
            [PYTHON, __file__, "--client", str(n), "--port", str(port), "--node-mode", node_mode],
            cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1,
        )

    def read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"load client exited with {self.proc.wait()}")
        return json.loads(line)

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def close(self) -> None:
        try:
            self.send("quit")
            self.proc.wait(30)
        except Exception:
            self.proc.kill()
            self.proc.wait()


def run_n(n: int, pushes: int, node_mode: str, profile: bool = False) -> dict[str, Any]:
    from labxds import ControlPlane, PushTimeout

    gc.collect()
    snap_a, snap_b = _snapshots()
    cp = ControlPlane(port=0).start()
    cp.set_snapshot(snap_a)
    time.sleep(0.2)
    rss0 = proc_rss()
    cpu0 = proc_cpu_seconds()
    t0 = time.monotonic()
    client = Client(cp.port, n, node_mode)
    out: dict[str, Any] = {"n": n, "node_mode": node_mode, "streams_per_channel": STREAMS_PER_CHANNEL}
    try:
        ready = client.read()
        out["connect_s"] = time.monotonic() - t0
        out["client_errors"] = ready.get("errors")
        out["open_retries"] = ready.get("open_retries")
        out["stalled_opens"] = ready.get("stalled_opens")
        out["ended_by_server"] = ready.get("ended_by_server")
        out["ended_reasons"] = ready.get("ended_reasons")
        out["retry_reasons"] = ready.get("retry_reasons")
        # wait until the server saw every stream settle on snapshot A, then let it go idle
        deadline = time.monotonic() + 60
        while cp.stream_count < n and time.monotonic() < deadline:
            time.sleep(0.05)
        out["server_streams"] = cp.stream_count
        out["connect_cpu_s"] = proc_cpu_seconds() - cpu0
        time.sleep(1.0)
        gc.collect()
        time.sleep(0.5)
        rss1 = proc_rss()
        out["rss_before"] = rss0
        out["rss_held"] = rss1
        out["rss_per_stream"] = (rss1 - rss0) / n
        cpu_idle0 = proc_cpu_seconds()
        time.sleep(2.0)
        out["idle_cpu_fraction"] = (proc_cpu_seconds() - cpu_idle0) / 2.0
        gc_mode = os.environ.get("LABXDS_BENCH_GC", "")
        if gc_mode == "freeze":  # what-if: the streams' objects out of the cyclic collector's sight
            gc.freeze()
        elif gc_mode == "off":
            gc.disable()
        out["gc"] = gc_mode or "default"

        trials = []
        snaps = [snap_b, snap_a]
        spy = PySpy(RESULTS / "profiles" / f"fanout_{n}_push.txt") if profile else None
        if spy:
            spy.__enter__()
        for k in range(pushes):
            snap = snaps[k % 2]
            version = snap.version(CLUSTER_URL)
            client.send(f"expect {version}")
            client.read()  # armed
            c0 = proc_cpu_seconds()
            t_push = time.monotonic()
            cp.push(snap, wait=False)
            t_returned = time.monotonic()
            res = client.read()
            cpu = proc_cpu_seconds() - c0  # includes the idle main thread: ~0
            lat = [t - t_push for t in res["arrivals"]]
            trials.append({
                "received": res["n"],
                "push_call_s": t_returned - t_push,
                "p50": percentile(lat, 50), "p99": percentile(lat, 99), "max": max(lat) if lat else None,
                "server_cpu_s": cpu,
            })
            print(f"  N={n} push {k + 1}: {res['n']}/{n} streams, p50 {trials[-1]['p50']:.3f}s "
                  f"max {trials[-1]['max']:.3f}s, server CPU {cpu:.2f}s", flush=True)
            time.sleep(0.5)
        if spy:
            spy.__exit__()
            out["profile_push"] = {"file": f"bench/results/profiles/fanout_{n}_push.txt", **fold_profile(spy.out)}
        out["pushes"] = trials
        out["p50_s"] = percentile([t["p50"] for t in trials], 50)
        out["max_s"] = percentile([t["max"] for t in trials], 50)  # median over pushes of the slowest stream
        out["worst_max_s"] = max(t["max"] for t in trials)
        out["server_cpu_per_push_s"] = percentile([t["server_cpu_s"] for t in trials], 50)

        # The server's own view: push(wait=True) returns when the tracker says all applied.
        wait_timeout = 30.0
        snap = snaps[pushes % 2]
        client.send(f"expect {snap.version(CLUSTER_URL)}")
        client.read()
        spy = PySpy(RESULTS / "profiles" / f"fanout_{n}_wait.txt") if profile else None
        if spy:
            spy.__enter__()
        t_push = time.monotonic()
        try:
            cp.push(snap, wait=True, timeout=wait_timeout)
            out["push_wait_true_s"] = time.monotonic() - t_push
        except PushTimeout as exc:
            out["push_wait_true_s"] = None
            out["push_wait_true_error"] = f"PushTimeout after {wait_timeout:g} s ({len(exc.missing)} nodes missing)"
        res = client.read()
        if spy:
            spy.__exit__()
            out["profile_wait"] = {"file": f"bench/results/profiles/fanout_{n}_wait.txt", **fold_profile(spy.out)}
        out["push_wait_true_client_max_s"] = max(t - t_push for t in res["arrivals"]) if res["arrivals"] else None
    finally:
        client.close()
        cp.stop()
        gc.enable()
        gc.unfreeze()
    return out


def main() -> int:
    parser = arg_parser(__doc__.splitlines()[0])
    parser.add_argument("--client", type=int, help=argparse_hidden())
    parser.add_argument("--port", type=int)
    parser.add_argument("--node-mode", default="distinct", choices=["distinct", "same"])
    parser.add_argument("--sizes", default=None, help="comma-separated N (default 100,1000,5000; quick 100,1000)")
    parser.add_argument("--pushes", type=int, default=None)
    parser.add_argument("--profile", action="store_true", help="py-spy the server during the pushes (bench/results/profiles/)")
    args = parser.parse_args()
    if args.client:
        return client_main(args.port, args.client, args.node_mode)
    limits = raise_nofile()
    sizes = [int(x) for x in (args.sizes or ("100,1000" if args.quick else "100,1000,5000")).split(",")]
    pushes = args.pushes or (2 if args.quick else 5)
    info = machine_info()
    info["nofile_limit"] = list(limits)
    runs = []
    started = time.monotonic()
    for n in sizes:
        print(f"N = {n}", flush=True)
        runs.append(run_n(n, pushes, args.node_mode, args.profile))
        r = runs[-1]
        print(f"N={n}: connect {r['connect_s']:.1f}s, p50 {r['p50_s']:.3f}s, max {r['max_s']:.3f}s, "
              f"RSS/stream {r['rss_per_stream'] / 1024:.1f} KB, wait=True {r.get('push_wait_true_s')}", flush=True)
    write_result("fanout", {
        "machine": info,
        "server": "in the benchmark process (ControlPlane thread); load client in a separate process",
        "node_mode": args.node_mode,
        "clusters_in_snapshot": CLUSTERS,
        "wall_s": time.monotonic() - started,
        "runs": runs,
    }, args.quick)
    if not args.no_report:
        regenerate_docs()
    return 0


def argparse_hidden() -> str:
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    raise SystemExit(main())
