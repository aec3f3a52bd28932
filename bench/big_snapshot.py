"""A big snapshot: 10,000 EDS clusters with 10,000 load assignments.

1. Build cost: the builders (``cluster``, ``load_assignment``) and ``Snapshot(...)``, which
   checks consistency and serializes every resource once (SotW and Delta bytes).
2. Bytes on the wire for a one-cluster change, SotW vs Delta, seen by a test-side xDS client
   that subscribes as Envoy does (CDS wildcard, EDS by name) and ACKs everything: the sum of the
   serialized responses that follow the change. Also a one-endpoint (EDS-only) change.
3. The real Envoy: time from the push of the 10,000-cluster snapshot to
   ``cluster_manager.active_clusters`` reaching 10,000 (a figure about Envoy).
"""

from __future__ import annotations

import queue
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import grpc  # noqa: E402
from _common import (  # noqa: E402
    arg_parser,
    machine_info,
    proc_rss,
    regenerate_docs,
    summary,
    write_result,
)
from envoy.config.core.v3 import base_pb2  # noqa: E402
from envoy.service.discovery.v3 import discovery_pb2  # noqa: E402

from labxds import CLUSTER, ENDPOINT, ControlPlane, Snapshot, cluster, load_assignment  # noqa: E402
from labxds.envoy import Envoy, render_bootstrap  # noqa: E402
from labxds.xds import snapshot as snapshot_module  # noqa: E402

ADS = "/envoy.service.discovery.v3.AggregatedDiscoveryService/"


def resources(n: int, *, timeout_of_first: float = 5.0, port_of_first: int = 10000) -> list[Any]:
    out: list[Any] = []
    for i in range(n):
        out.append(cluster(f"c{i:05d}", connect_timeout=timeout_of_first if i == 0 else 5.0))
    for i in range(n):
        out.append(load_assignment(f"c{i:05d}", [("127.0.0.1", port_of_first if i == 0 else 10000 + i)]))
    return out


def time_build(n: int, repeats: int) -> dict[str, Any]:
    """Each ``Snapshot()`` here starts with nothing to reuse (labxds keeps the framing of
    resources of recent snapshots): the first build of a snapshot. ``rebuild_one_changed_s`` is
    the common case after that: the next snapshot, equal but for one cluster."""
    builders, snaps, unchecked, rebuilds = [], [], [], []
    for i in range(repeats):
        t0 = time.perf_counter()
        res = resources(n)
        t1 = time.perf_counter()
        snapshot_module._FRAMED.clear()
        Snapshot(res)
        t2 = time.perf_counter()
        snapshot_module._FRAMED.clear()
        Snapshot(res, check=False)
        t3 = time.perf_counter()
        changed = resources(n, timeout_of_first=6.0 + i)
        t4 = time.perf_counter()
        Snapshot(changed)
        t5 = time.perf_counter()
        builders.append(t1 - t0)
        snaps.append(t2 - t1)
        unchecked.append(t3 - t2)
        rebuilds.append(t5 - t4)
    return {
        "builders_s": summary(builders),
        "snapshot_s": summary(snaps),  # serialize + check
        "snapshot_unchecked_s": summary(unchecked),  # serialize only
        "rebuild_one_changed_s": summary(rebuilds),  # serialize + check, all but one resource framed already
    }


# -- a test-side client that counts bytes ---------------------------------------------------


class CountingClient:
    """SotW or Delta ADS with raw-bytes responses: sizes are exactly what crossed the wire."""

    def __init__(self, address: str, delta: bool, node: str) -> None:
        self.delta = delta
        self.channel = grpc.insecure_channel(address, options=[("grpc.max_receive_message_length", 256 << 20)])
        method = ADS + ("DeltaAggregatedResources" if delta else "StreamAggregatedResources")
        req_cls = discovery_pb2.DeltaDiscoveryRequest if delta else discovery_pb2.DiscoveryRequest
        self.resp_cls = discovery_pb2.DeltaDiscoveryResponse if delta else discovery_pb2.DiscoveryResponse
        rpc = self.channel.stream_stream(method, request_serializer=req_cls.SerializeToString,
                                         response_deserializer=lambda b: b)
        self.node = base_pb2.Node(id=node, cluster="bench")
        self.requests: queue.Queue = queue.Queue()
        self.log: list[tuple[float, str, int, int, int]] = []  # (time, type, bytes, resources, removed)
        self.lock = threading.Lock()
        self.eds_names: set[str] = set()
        self.call = rpc(iter(self.requests.get, None))
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        self._send(CLUSTER, first=True)

    def _send(self, url: str, *, first: bool = False, version: str = "", nonce: str = "",
              names: list[str] | None = None) -> None:
        if self.delta:
            req = discovery_pb2.DeltaDiscoveryRequest(type_url=url, response_nonce=nonce)
            if names:
                req.resource_names_subscribe.extend(names)
        else:
            req = discovery_pb2.DiscoveryRequest(type_url=url, version_info=version, response_nonce=nonce)
            if names:
                req.resource_names.extend(names)
        if first:
            req.node.CopyFrom(self.node)
        self.requests.put(req)

    def _run(self) -> None:
        try:
            for raw in self.call:
                resp = self.resp_cls.FromString(raw)
                removed = len(resp.removed_resources) if self.delta else 0
                with self.lock:
                    self.log.append((time.monotonic(), resp.type_url, len(raw), len(resp.resources), removed))
                version = "" if self.delta else resp.version_info
                if resp.type_url == CLUSTER:
                    # Envoy asks for the load assignments of the EDS clusters it was given.
                    from envoy.config.cluster.v3 import cluster_pb2

                    names = set()
                    for r in resp.resources:
                        c = cluster_pb2.Cluster()
                        (r.resource if self.delta else r).Unpack(c)
                        names.add(c.eds_cluster_config.service_name or c.name)
                    new = sorted(names - self.eds_names) if self.delta else sorted(names | self.eds_names)
                    grow = bool(names - self.eds_names)
                    self.eds_names |= names
                    self._send(CLUSTER, version=version, nonce=resp.nonce)
                    if grow:
                        self._send(ENDPOINT, names=new if self.delta else sorted(self.eds_names))
                else:
                    self._send(resp.type_url, version=version, nonce=resp.nonce,
                               names=None if self.delta else sorted(self.eds_names))
        except grpc.RpcError:
            pass

    def quiet_for(self, seconds: float, mark: int = 0, timeout: float = 60) -> None:
        """Wait for a response after ``mark``, then until nothing arrived for ``seconds``
        (or ``seconds`` * 4 with nothing at all: nothing was sent)."""
        start = time.monotonic()
        while time.monotonic() < start + timeout:
            with self.lock:
                last = self.log[-1][0] if len(self.log) > mark else None
            now = time.monotonic()
            if last is None and now - start >= 4 * seconds:
                return
            if last is not None and now - last >= seconds:
                return
            time.sleep(0.02)
        raise TimeoutError("the stream never went quiet")

    def mark(self) -> int:
        with self.lock:
            return len(self.log)

    def since(self, mark: int) -> list[tuple[float, str, int, int, int]]:
        with self.lock:
            return self.log[mark:]

    def close(self) -> None:
        self.requests.put(None)
        self.call.cancel()
        self.channel.close()


def wire_bytes(n: int) -> dict[str, Any]:
    base = Snapshot(resources(n))
    one_cluster = Snapshot(resources(n, timeout_of_first=7.0))
    one_endpoint = Snapshot(resources(n, port_of_first=10001 + n))
    cp = ControlPlane(port=0).start()
    out: dict[str, Any] = {}
    try:
        cp.set_snapshot(base)
        for delta in (False, True):
            name = "Delta" if delta else "SotW"
            client = CountingClient(f"127.0.0.1:{cp.port}", delta, f"bench-big-{name}")
            try:
                client.quiet_for(0.5)
                initial = client.since(0)
                res: dict[str, Any] = {"initial_bytes": sum(x[2] for x in initial),
                                       "initial_responses": len(initial)}
                # each change is made from the base snapshot, and undone before the next
                for label, snap in (("one_cluster_change", one_cluster), ("undo_cluster", base),
                                    ("one_endpoint_change", one_endpoint), ("undo_endpoint", base)):
                    m = client.mark()
                    t0 = time.monotonic()
                    cp.set_snapshot(snap)
                    client.quiet_for(0.5, m)
                    got = client.since(m)
                    res[label] = {
                        "bytes": sum(x[2] for x in got),
                        "responses": [{"type": x[1].rsplit(".", 1)[-1], "bytes": x[2], "resources": x[3],
                                       "removed": x[4]} for x in got],
                        "resources_sent": sum(x[3] for x in got),
                        "last_response_after_s": (got[-1][0] - t0) if got else None,
                    }
                out[name] = res
            finally:
                client.close()
    finally:
        cp.stop()
    return out


# -- the real Envoy ---------------------------------------------------------------------


def envoy_activation(n: int, delta: bool) -> dict[str, Any]:
    big = Snapshot(resources(n))
    small = Snapshot([cluster("warmup", [("127.0.0.1", 9)], type="STATIC")])
    cp = ControlPlane(port=0).start()
    node = f"bench-big-envoy-{'delta' if delta else 'sotw'}"
    envoy = None
    out: dict[str, Any] = {"mode": "Delta" if delta else "SotW", "clusters": n}
    try:
        cp.set_snapshot(small)
        envoy = Envoy(render_bootstrap(xds_port=cp.port, admin_port=0, node_id=node, delta=delta),
                      admin_port=0, component_log_level=None).start()
        cp.wait_for_node(node, timeout=10)
        admin = envoy.admin
        deadline = time.monotonic() + 30
        while admin.stats(filter=r"^cluster_manager\.active_clusters$").get("cluster_manager.active_clusters", 0) < 2:
            if time.monotonic() > deadline:
                raise TimeoutError("Envoy never took the warm-up cluster")
            time.sleep(0.05)
        acks: dict[str, float] = {}
        t0 = time.monotonic()

        def on_request(node_id: str, request: Any) -> None:
            if node_id == node and request.response_nonce and not request.HasField("error_detail"):
                acks[request.type_url.rsplit(".", 1)[-1]] = time.monotonic() - t0

        sent: dict[str, float] = {}

        def on_response(node_id: str, url: str, *rest: Any) -> None:
            if node_id == node:
                sent.setdefault(url.rsplit(".", 1)[-1], time.monotonic() - t0)

        unhook = cp.on("request", on_request)
        unhook2 = cp.on("response", on_response)
        cp.push(big, wait=False)
        samples = []
        target = n + 1  # + the static xds_cluster
        active = 0
        deadline = t0 + 300
        while active < target:
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {active} clusters active after 300 s")
            time.sleep(0.1)
            try:
                st = admin.stats(filter=r"^cluster_manager\.(active|warming)_clusters$")
            except Exception:
                continue
            active = st.get("cluster_manager.active_clusters", 0)
            samples.append((time.monotonic() - t0, active, st.get("cluster_manager.warming_clusters", 0)))
        out["all_active_s"] = time.monotonic() - t0
        out["acks_s"] = dict(acks)
        out["responses_sent_s"] = dict(sent)
        out["samples"] = samples
        out["envoy_rss_mb"] = proc_rss(envoy.pid) / 2**20
        unhook()
        unhook2()
    finally:
        if envoy is not None:
            envoy.stop()
        cp.stop()
    return out


def main() -> int:
    parser = arg_parser(__doc__.splitlines()[0])
    parser.add_argument("--clusters", type=int, default=None, help="default 10000 (quick 2000)")
    parser.add_argument("--skip-envoy", action="store_true")
    args = parser.parse_args()
    n = args.clusters or (2000 if args.quick else 10000)
    info = machine_info()
    started = time.monotonic()
    result: dict[str, Any] = {"machine": info, "clusters": n}
    print(f"build: {n} clusters + {n} load assignments", flush=True)
    result["build"] = build = time_build(n, 3 if args.quick else 5)
    print(f"  builders p50 {build['builders_s']['p50']:.3f}s, Snapshot() p50 {build['snapshot_s']['p50']:.3f}s "
          f"(unchecked {build['snapshot_unchecked_s']['p50']:.3f}s; next snapshot with one cluster changed "
          f"{build['rebuild_one_changed_s']['p50']:.3f}s)", flush=True)
    print("bytes on the wire", flush=True)
    result["wire"] = wire = wire_bytes(n)
    for name, r in wire.items():
        print(f"  {name}: initial {r['initial_bytes']:,} B; one cluster changed -> {r['one_cluster_change']['bytes']:,} B "
              f"({r['one_cluster_change']['resources_sent']} resources); one endpoint changed -> "
              f"{r['one_endpoint_change']['bytes']:,} B ({r['one_endpoint_change']['resources_sent']} resources)", flush=True)
    if not args.skip_envoy:
        result["envoy"] = []
        for delta in (False, True):
            r = envoy_activation(n, delta)
            result["envoy"].append(r)
            print(f"  Envoy {r['mode']}: {n} clusters active after {r['all_active_s']:.2f}s, ACKs {r['acks_s']}, "
                  f"Envoy RSS {r['envoy_rss_mb']:.0f} MB", flush=True)
    result["wall_s"] = time.monotonic() - started
    write_result("big_snapshot", result, args.quick)
    if not args.no_report:
        regenerate_docs()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
