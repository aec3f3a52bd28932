"""Reconnect storm: N ADS streams over C connections, all opened at once, never retried.

What a control-plane restart looks like to a fleet: every Envoy reconnects in the same second.
The server (``ControlPlane`` with a 10-cluster snapshot) runs in a process of its own; the client
opens N SotW ADS streams, N / C per channel (each channel its own TCP connection), all at once,
and waits for each stream's first response without retrying. Per stream: the time to its first
response, or the gRPC status it ended with. The server counts the streams its handler saw.

``--server-options`` passes gRPC server options as JSON (to try the limits by hand), e.g.
``'{"grpc.max_concurrent_streams": 100}'``; ``--raw`` runs a bare grpc.aio server instead of
labxds (it answers each stream's first request with a fixed response): which side fails.
"""

from __future__ import annotations

import asyncio
import collections
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
    ROOT,
    arg_parser,
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


# ---------------------------------------------------------------------------------- server


def server_main(options: dict[str, Any], raw: bool) -> int:
    """Serve until stdin closes; print the port, then on "count" the streams the handler saw."""
    raise_nofile()
    if raw:
        return _raw_server(options)
    from labxds import ControlPlane, Snapshot, cluster

    cp = ControlPlane(port=0, grpc_options=list(options.items())).start()
    opened = [0]

    def count(*_: Any) -> None:
        opened[0] += 1

    cp.on("stream_open", count)
    if os.environ.get("LABXDS_BENCH_PROFILE"):  # py-spy the server for the whole run
        subprocess.Popen([str(Path(PYTHON).parent / "py-spy"), "record", "-p", str(os.getpid()), "-r", "100",
                          "-f", "raw", "-o", os.environ["LABXDS_BENCH_PROFILE"], "--nonblocking"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1.0)
    cp.set_snapshot(Snapshot([cluster(f"svc-{i}", [("127.0.0.1", 20000 + i)], type="STATIC") for i in range(10)]))
    cpu0 = proc_cpu_seconds()
    print(json.dumps({"port": cp.port}), flush=True)
    for line in sys.stdin:
        if line.strip() == "count":
            print(json.dumps({"streams": opened[0], "nodes": len(cp.tracker.connected()),
                              "rss": proc_rss(), "cpu_s": proc_cpu_seconds() - cpu0}), flush=True)
        else:
            break
    cp.stop()
    return 0


def _raw_server(options: dict[str, Any]) -> int:
    """A bare grpc.aio server: no labxds code between gRPC and the first response."""
    import grpc
    from envoy.service.discovery.v3 import discovery_pb2

    seen = 0
    reply = discovery_pb2.DiscoveryResponse(version_info="1", type_url=CLUSTER_URL, nonce="1").SerializeToString()

    async def handle(requests: Any, context: Any) -> None:
        nonlocal seen
        seen += 1
        async for _ in requests:
            await context.write(reply)

    async def main() -> None:
        server = grpc.aio.server(options=list(options.items()))
        server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(
            "envoy.service.discovery.v3.AggregatedDiscoveryService",
            {"StreamAggregatedResources": grpc.stream_stream_rpc_method_handler(
                handle, request_deserializer=discovery_pb2.DiscoveryRequest.FromString,
                response_serializer=lambda b: b)})])
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        cpu0 = proc_cpu_seconds()
        print(json.dumps({"port": port}), flush=True)
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        while True:
            line = (await reader.readline()).decode().strip()
            if line != "count":
                break
            print(json.dumps({"streams": seen, "nodes": seen, "rss": proc_rss(), "cpu_s": proc_cpu_seconds() - cpu0}),
                  flush=True)
        await server.stop(0.5)

    asyncio.run(main())
    return 0


# ---------------------------------------------------------------------------------- client


async def _storm(port: int, n: int, connections: int, timeout: float) -> dict[str, Any]:
    import grpc
    from envoy.config.core.v3 import base_pb2
    from envoy.service.discovery.v3 import discovery_pb2

    channels = [grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.labxds_storm_channel", c)])
                for c in range(connections)]
    for ch in channels:  # connect first: the storm is of streams, as after a restart with warm connections
        await asyncio.wait_for(ch.channel_ready(), 30)
    firsts: list[float] = []
    failures: collections.Counter[str] = collections.Counter()
    calls: list[Any] = []
    t0 = time.monotonic()

    async def one(i: int) -> None:
        call = channels[i % connections].stream_stream(
            ADS_METHOD, request_serializer=discovery_pb2.DiscoveryRequest.SerializeToString,
            response_deserializer=discovery_pb2.DiscoveryResponse.FromString)()
        calls.append(call)
        node = base_pb2.Node(id=f"storm-{i}", cluster="bench", user_agent_name="labxds-bench")
        try:
            await call.write(discovery_pb2.DiscoveryRequest(node=node, type_url=CLUSTER_URL))
            resp = await call.read()
            if resp is grpc.aio.EOF:
                failures[f"{await call.code()}: {await call.details()}"] += 1
                return
            firsts.append(time.monotonic() - t0)
            await call.write(discovery_pb2.DiscoveryRequest(type_url=CLUSTER_URL, version_info=resp.version_info,
                                                            response_nonce=resp.nonce))
        except grpc.aio.AioRpcError as exc:
            # grpc.aio masks the call's status behind "INTERNAL: Internal error from Core" when a
            # write fails on a call that has already ended (grpc/grpc#36066): ask the call itself.
            code, details = exc.code(), exc.details()
            if details == "Internal error from Core":
                try:
                    code, details = await asyncio.wait_for(call.code(), 5), await call.details()
                    details = f"{details} (a write failed: the call had ended)"
                except (asyncio.TimeoutError, grpc.aio.AioRpcError):
                    pass
            failures[f"{code}: {details}"] += 1
        except asyncio.CancelledError:
            failures["no first response within the timeout"] += 1
            raise

    tasks = [asyncio.create_task(one(i)) for i in range(n)]
    done, pending = await asyncio.wait(tasks, timeout=timeout)
    for t in pending:
        t.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    out = {
        "n": n, "connections": connections, "ok": len(firsts),
        "failures": dict(failures.most_common()),
        "first_response_s": {"p50": percentile(firsts, 50), "p99": percentile(firsts, 99),
                             "max": max(firsts) if firsts else None},
    }
    for call in calls:
        call.cancel()
    for ch in channels:
        await ch.close(None)
    return out


def client_main(port: int, n: int, connections: int, timeout: float) -> int:
    raise_nofile()
    print(json.dumps(asyncio.run(_storm(port, n, connections, timeout))), flush=True)
    return 0


# ---------------------------------------------------------------------------------- driver


def run(n: int, connections: int, timeout: float, options: dict[str, Any], raw: bool) -> dict[str, Any]:
    server = subprocess.Popen(
        [PYTHON, __file__, "--server", "--server-options", json.dumps(options)] + (["--raw"] if raw else []),
        cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
    try:
        assert server.stdout is not None and server.stdin is not None
        port = json.loads(server.stdout.readline())["port"]
        t0 = time.monotonic()
        client = subprocess.run([PYTHON, __file__, "--client", str(n), "--connections", str(connections),
                                 "--port", str(port), "--timeout", str(timeout)],
                                cwd=ROOT, capture_output=True, text=True, timeout=timeout + 120)
        if client.returncode != 0:
            raise RuntimeError(f"storm client failed: {client.stderr[-2000:]}")
        result = json.loads(client.stdout.strip().splitlines()[-1])
        result["wall_s"] = time.monotonic() - t0
        server.stdin.write("count\n")
        server.stdin.flush()
        result["server_saw"] = json.loads(server.stdout.readline())
        result["server"] = "bare grpc.aio" if raw else "labxds ControlPlane"
        result["server_options"] = options
        return result
    finally:
        if server.stdin is not None:
            try:
                server.stdin.write("quit\n")
                server.stdin.flush()
            except OSError:
                pass
        try:
            server.wait(15)
        except subprocess.TimeoutExpired:
            server.kill()


def main() -> int:
    parser = arg_parser(__doc__.splitlines()[0])
    parser.add_argument("--server", action="store_true")
    parser.add_argument("--client", type=int)
    parser.add_argument("--raw", action="store_true", help="a bare grpc.aio server instead of labxds")
    parser.add_argument("--server-options", default="{}")
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--port", type=int)
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds the client waits for all first responses")
    parser.add_argument("--sizes", default=None, help="comma-separated N (default 5000; quick 1000)")
    parser.add_argument("--repeat", type=int, default=None, help="runs per N (default 3; quick 1)")
    args = parser.parse_args()
    options = json.loads(args.server_options)
    if args.server:
        return server_main(options, args.raw)
    if args.client:
        return client_main(args.port, args.client, args.connections, args.timeout)
    sizes = [int(x) for x in (args.sizes or ("1000" if args.quick else "5000")).split(",")]
    repeat = args.repeat or (1 if args.quick else 3)
    info = machine_info()
    runs = []
    for n in sizes:
        for k in range(repeat):
            r = run(n, args.connections, args.timeout, options, args.raw)
            runs.append(r)
            print(f"N={n} over {args.connections} connections, run {k + 1}: {r['ok']} ok, failures {r['failures']}, "
                  f"first response p50 {r['first_response_s']['p50']:.2f}s max {r['first_response_s']['max']}s; "
                  f"server saw {r['server_saw']['streams']}, server CPU {r['server_saw']['cpu_s']:.1f}s", flush=True)
    name = "storm" if not args.raw and not options else "storm_variant"
    write_result(name, {"machine": info, "runs": runs, "raw": args.raw, "server_options": options}, args.quick)
    if not args.no_report and name == "storm":
        regenerate_docs()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
