"""10,000 ADS stream connect/disconnect cycles: do threads, tasks, descriptors and memory come back?

    .venv/bin/python bench/reliability_churn.py            # 10,000 cycles, writes docs/reliability.md
    .venv/bin/python bench/reliability_churn.py --quick    # 1,000 cycles, prints only

The control plane runs in this process (as in a notebook) with a real Envoy connected to it; a
child process opens streams in batches of 50 over a new connection per batch, sends a request,
reads the response, and ends half of the streams cleanly (half-close) and half abruptly
(cancel). After every 1,000 cycles the server's threads, event-loop tasks, open streams, cache
watchers, settled marks, file descriptors and RSS are sampled. A second phase uses a new node id
for every stream, to show what the tracker keeps per node. Tests run 1,000 cycles
(tests/test_reliability.py); this is the long run.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from labxds import ControlPlane, sandbox_snapshot  # noqa: E402
from labxds.envoy import Envoy, render_bootstrap  # noqa: E402
from labxds.lab import EchoFleet  # noqa: E402

DOC = ROOT / "docs" / "reliability.md"
BEGIN, END = "<!-- churn:begin -->", "<!-- churn:end -->"

CLIENT = r"""
import asyncio, json, sys, time
import grpc
from envoy.service.discovery.v3 import discovery_pb2

ADS = "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources"
CLUSTER = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
address, batch = sys.argv[1], int(sys.argv[2])
errors = 0

async def cycle(channel, i, node):
    global errors
    try:
        call = channel.stream_stream(ADS, request_serializer=discovery_pb2.DiscoveryRequest.SerializeToString,
                                     response_deserializer=discovery_pb2.DiscoveryResponse.FromString)()
        request = discovery_pb2.DiscoveryRequest(type_url=CLUSTER)
        request.node.id = node
        await call.write(request)
        await call.read()
        if i % 2:
            call.cancel()
        else:
            await call.done_writing()
            await call.read()
            await call.code()
    except Exception:
        errors += 1

async def run(start, cycles, nodes):
    for first in range(start, start + cycles, batch):
        async with grpc.aio.insecure_channel(address) as channel:
            ids = range(first, min(first + batch, start + cycles))
            await asyncio.gather(*(cycle(channel, i, f"churn-{i % nodes if nodes else i}") for i in ids))

for line in sys.stdin:
    start, cycles, nodes = map(int, line.split())
    began = time.monotonic()
    asyncio.run(run(start, cycles, nodes))
    print(json.dumps({"seconds": time.monotonic() - began, "errors": errors}), flush=True)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def sample(cp: ControlPlane) -> dict[str, int]:
    async def tasks() -> int:
        return len(asyncio.all_tasks())

    gc.collect()
    assert cp._loop is not None
    return {
        "threads": threading.active_count(),
        "tasks": asyncio.run_coroutine_threadsafe(tasks(), cp._loop).result(5),
        "streams": cp.stream_count,
        "watchers": sum(len(w) for w in cp.cache._watchers.values()),
        "settled": len(cp.tracker._settled),
        "fds": len(os.listdir("/proc/self/fd")),
        "nodes_tracked": len(cp.tracker._nodes),
        "trace_events": sum(len(q) for q in cp.tracker._trace.values()),
        "rss_mib": round(rss() / 2**20, 1),
    }


def wait_until(predicate, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.02)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cycles", type=int, default=10_000)
    parser.add_argument("--step", type=int, default=1_000)
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--nodes", type=int, default=16, help="node ids reused by the streams")
    parser.add_argument("--trace-size", type=int, default=2000, help="trace events kept per node")
    parser.add_argument("--quick", action="store_true", help="1,000 cycles, nothing written")
    parser.add_argument("--no-docs", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.cycles, args.step, args.no_docs = 1_000, 250, True

    cp = ControlPlane(0, trace_size=args.trace_size).start()
    services = EchoFleet({"service1": 1, "service2": 1}).start()
    listener = free_port()

    def snap(name: str, version: str):  # type: ignore[no-untyped-def]
        host, port = services.endpoints(name)[0]
        return sandbox_snapshot(host, port, version=version, listener_port=listener)

    cp.set_snapshot(snap("service1", "1"))
    envoy = Envoy(render_bootstrap(xds_port=cp.port, admin_port=0)).start()
    client = subprocess.Popen([sys.executable, "-c", CLIENT, cp.address, str(args.batch)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    offset = 0

    def churn(cycles: int, nodes: int) -> dict:
        nonlocal offset
        assert client.stdin is not None and client.stdout is not None
        client.stdin.write(f"{offset} {cycles} {nodes}\n")
        client.stdin.flush()
        offset += cycles
        result = json.loads(client.stdout.readline())
        wait_until(lambda: cp.stream_count == 1, 30, "streams to end")
        return result

    rows: list[dict] = []
    try:
        cp.wait_for_node("test-id")
        churn(500, args.nodes)  # warm-up
        base = sample(cp)
        rows.append({"phase": "reused ids", "cycles": 0, "seconds": 0.0, "errors": 0, **base})
        done = 0
        while done < args.cycles:
            result = churn(args.step, args.nodes)
            done += args.step
            rows.append({"phase": "reused ids", "cycles": done, **result, **sample(cp)})
            print(rows[-1], flush=True)
        unique_base = sample(cp)
        done = 0
        while done < args.cycles:
            result = churn(args.step, 0)
            done += args.step
            rows.append({"phase": "new id per stream", "cycles": done, **result, **sample(cp)})
            print(rows[-1], flush=True)
        cp.push(snap("service2", "2"), nodes=["test-id"])
        answer = httpx.get(f"http://127.0.0.1:{listener}/", trust_env=False).headers.get("x-served-by")
        envoy_ok = answer == "service2"
    finally:
        if client.stdin:
            client.stdin.close()
        client.wait(10)
        envoy.stop()
        services.stop()
        cp.stop()

    reused = [r for r in rows if r["phase"] == "reused ids"]
    unique = [r for r in rows if r["phase"] == "new id per stream"]
    seconds = sum(r["seconds"] for r in rows)
    total = args.cycles * 2
    per_node = (unique[-1]["rss_mib"] - unique_base["rss_mib"]) * 2**20 / max(1, args.cycles)
    summary = (
        f"{total:,} cycles ({args.cycles:,} reusing {args.nodes} node ids, {args.cycles:,} with a new node id "
        f"each) in {seconds:.1f} s ({total / seconds:,.0f} cycles/s), {rows[-1]['errors']} client "
        f"errors; Envoy {'still applied' if envoy_ok else 'did NOT apply'} a push afterwards."
    )
    print(summary)
    if args.no_docs:
        return 0 if envoy_ok else 1
    keys = ["cycles", "threads", "tasks", "streams", "watchers", "settled", "fds", "nodes_tracked", "trace_events",
            "rss_mib"]
    lines = [
        f"Run of `bench/reliability_churn.py{'' if args.trace_size == 2000 else f' --trace-size {args.trace_size}'}` on {time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}: {summary}",
        "",
        "| phase | " + " | ".join(keys) + " |",
        "|---" * (len(keys) + 1) + "|",
    ]
    for r in rows:
        lines.append(f"| {r['phase']} | " + " | ".join(str(r[k]) for k in keys) + " |")
    lines += [
        "",
        f"With reused node ids RSS goes from {reused[0]['rss_mib']} to {reused[-1]['rss_mib']} MiB; "
        f"with a new node id per stream the tracker keeps every node it has seen "
        f"({unique[-1]['nodes_tracked']:,} at the end): about {per_node / 1024:.1f} KiB per node id.",
    ]
    text = DOC.read_text() if DOC.exists() else f"{BEGIN}\n{END}\n"
    block = f"{BEGIN}\n" + "\n".join(lines) + f"\n{END}"
    text, n = re.subn(re.escape(BEGIN) + r".*?" + re.escape(END), lambda _: block, text, flags=re.S)
    if not n:
        text += "\n" + block + "\n"
    DOC.write_text(text)
    print(f"wrote {DOC}")
    return 0 if envoy_ok else 1


if __name__ == "__main__":
    sys.exit(main())
