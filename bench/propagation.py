"""Propagation: from a change to the first request served by the new upstream, through real Envoys.

The change is the sandbox's lesson: ``example_proxy_cluster`` (LOGICAL_DNS, one endpoint) moves
from service1 to service2 and back. Each mode has its own Envoy and listener; all share the two
echo services (separate processes, like the sandbox's containers):

* ``labxds SotW`` / ``labxds Delta``: ``cp.push(snapshot, wait=False)`` from this process, the
  control plane serving on its own thread here. Snapshot versions are content hashes, so only
  CDS changes (as in the floor).
* ``floor (Envoy filesystem)``: the same change through Envoy's own filesystem subscription: the
  bootstrap's ``cds_config``/``lds_config`` are ``path_config_source`` with ``watched_directory``;
  a new ``cds.json`` is written in a staging directory and renamed into the watched one.
* ``labxds serve --snapshot``: snapshot files watched by ``python -m labxds serve`` (only if
  labxds/snapshot_files.py exists): a new ``cds.json`` renamed in beside ``lds.json``, as for the
  floor, and, as ``(one file)``, one file with all three resources replaced whole.

``--what-if`` adds ``labxds serve`` rows with parts of the work removed (bench/serve_whatif.py:
no parse, no thread hop, no log line): lower bounds, written apart to propagation_whatif.json.

After each change a keep-alive raw-socket client, in a process of its own, GETs the listener in a
tight loop until the body says the new service. Modes are interleaved in blocks so that machine noise hits them alike.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    PYTHON,
    ROOT,
    EchoProcess,
    RawHttp,
    arg_parser,
    free_port,
    machine_info,
    regenerate_docs,
    sandbox_file_text,
    served_by,
    summary,
    wait_until,
    write_result,
)
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,  # noqa: E402
)
from envoy.service.discovery.v3 import discovery_pb2  # noqa: E402
from google.protobuf import any_pb2, json_format  # noqa: E402

from labxds import CLUSTER, ControlPlane, Snapshot  # noqa: E402
from labxds.envoy import Envoy, render_bootstrap  # noqa: E402
from labxds.xds import cluster, http_listener, route_configuration, sandbox_resources  # noqa: E402
from labxds.xds.builders import SANDBOX_CLUSTER, SANDBOX_LISTENER, SANDBOX_ROUTE  # noqa: E402

GAP = 0.05  # pause after each switch (the old cluster drains; the ACK goes back)
# Watched directories live on tmpfs: on this machine's disk a rename alone takes ~1.2 ms, which
# would be charged to the file-based modes. tmpfs gives Envoy's floor its best case.
_FAST_DIR = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None


class Mode:
    name: str
    envoy: Envoy
    listener_port: int

    def setup(self) -> None: ...
    def switch(self, target: str) -> None: ...
    def settle(self, target: str) -> None: ...
    def close(self) -> None:
        if getattr(self, "envoy", None) is not None:
            self.envoy.stop()


class LabxdsMode(Mode):
    """``build``: what a user's ``lab.push(resources)`` does, inside the timed region: the snapshot is
    built from the resources, pushed, and the call returns once Envoy ACKed it (``wait=True``, the
    default); only then does the user look. Otherwise the snapshot is built beforehand and the push
    does not wait (the control plane's own part, the figure the older tables give)."""

    def __init__(self, delta: bool, ports: dict[str, int], cp: ControlPlane, build: bool = False) -> None:
        self.name = f"labxds {'Delta' if delta else 'SotW'}" + (" (as lab.push: build, push, wait)" if build else "")
        self.delta = delta
        self.build = build
        self.cp = cp
        self.node = f"bench-prop-{'delta' if delta else 'sotw'}{'-build' if build else ''}"
        self.listener_port = free_port()
        self.ports = ports
        self.snaps = {
            svc: Snapshot(sandbox_resources("127.0.0.1", port, listener_port=self.listener_port))
            for svc, port in ports.items()
        }
        self.sent_at: float | None = None
        self.marks: dict[str, float] = {}  # this switch: response / ack, seconds after the push
        self._since = 0.0

    def setup(self) -> None:
        self.cp.set_snapshot(self.snaps["service1"], node=self.node)
        bootstrap = render_bootstrap(xds_port=self.cp.port, admin_port=0, node_id=self.node, delta=self.delta)
        self.envoy = Envoy(bootstrap, admin_port=0).start()
        self.cp.wait_for_node(self.node, timeout=10)
        self.cp.on("response", self._on_response)
        self.cp.on("request", self._on_request)

    # Hooks run on the server's thread.
    def _on_response(self, node: str, url: str, *rest: Any) -> None:
        if node == self.node and self.sent_at is not None and url == CLUSTER and "response" not in self.marks:
            self.marks["response"] = time.perf_counter() - self.sent_at

    def _on_request(self, node: str, request: Any) -> None:
        if (node == self.node and self.sent_at is not None and request.type_url == CLUSTER
                and request.response_nonce and "response" in self.marks and "ack" not in self.marks):
            self.marks["ack"] = time.perf_counter() - self.sent_at

    def switch(self, target: str) -> None:
        self.marks = {}
        self._since = time.time()
        self.sent_at = time.perf_counter()
        if self.build:  # the user's push: resources in, a snapshot built, pushed, the ACK awaited
            self.snaps[target] = Snapshot(sandbox_resources("127.0.0.1", self.ports[target], listener_port=self.listener_port))
            self.cp.push(self.snaps[target], node=self.node, wait=True, timeout=10)
            return
        self.cp.push(self.snaps[target], node=self.node, wait=False)

    def settle(self, target: str) -> None:
        snap = self.snaps[target]
        self.cp.tracker.wait_applied(snap, [self.node], 10.0, self._since, self.cp.cache.get)


class FloorMode(Mode):
    """Envoy's filesystem subscription: the rename is the push."""

    def __init__(self, ports: dict[str, int]) -> None:
        self.name = "floor (Envoy filesystem)"
        self.listener_port = free_port()
        self.tmp = Path(tempfile.mkdtemp(prefix="labxds-bench-floor-", dir=_FAST_DIR))
        self.watched = self.tmp / "xds"
        self.staging = self.tmp / "staging"
        self.watched.mkdir()
        self.staging.mkdir()
        # Rendered once, as labxds's snapshots are built once: the timed change is write + rename.
        self.texts = {
            svc: _discovery_json(svc, [cluster(SANDBOX_CLUSTER, [("127.0.0.1", port)], type="LOGICAL_DNS")])
            for svc, port in ports.items()
        }

    def setup(self) -> None:
        listener = http_listener(SANDBOX_LISTENER, self.listener_port, SANDBOX_ROUTE)
        hcm = hcm_pb2.HttpConnectionManager()
        listener.filter_chains[0].filters[0].typed_config.Unpack(hcm)
        hcm.ClearField("rds")
        hcm.route_config.CopyFrom(route_configuration(SANDBOX_ROUTE, SANDBOX_CLUSTER))
        listener.filter_chains[0].filters[0].typed_config.Pack(hcm)
        (self.watched / "lds.json").write_text(_discovery_json("1", [listener]))
        (self.watched / "cds.json").write_text(self.texts["service1"])

        def source(name: str) -> dict:
            return {"resource_api_version": "V3", "path_config_source": {
                "path": str(self.watched / name), "watched_directory": {"path": str(self.watched)}}}

        bootstrap = {
            "node": {"id": "bench-floor", "cluster": "bench"},
            "dynamic_resources": {"cds_config": source("cds.json"), "lds_config": source("lds.json")},
            "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        }
        self.envoy = Envoy(bootstrap, admin_port=0).start()

    def switch(self, target: str) -> None:
        staged = self.staging / "cds.json"
        staged.write_text(self.texts[target])
        os.rename(staged, self.watched / "cds.json")

    def settle(self, target: str) -> None:
        pass

    def close(self) -> None:
        super().close()
        shutil.rmtree(self.tmp, ignore_errors=True)


class SnapshotFileMode(Mode):
    """``python -m labxds serve --snapshot DIR``: the file is the push, labxds turns it into ADS.

    ``split``: the directory holds ``cds.json`` (the cluster) and ``lds.json`` (listener and
    route), like the floor's, and the change renames a new ``cds.json`` into it; otherwise one
    ``snapshot.json`` holds all three and is replaced whole. Either is rendered beforehand, as the
    floor's files are.
    """

    def __init__(self, ports: dict[str, int], split: bool, what_if: str = "") -> None:
        self.name = "labxds serve --snapshot" + ("" if split else " (one file)") + (f" [what if: {what_if}]" if what_if else "")
        self.split = split
        self.what_if = what_if  # switches of bench/serve_whatif.py: a lower bound, not labxds as shipped
        self.listener_port = free_port()
        self.xds_port = free_port()
        self.tmp = Path(tempfile.mkdtemp(prefix="labxds-bench-snapfile-", dir=_FAST_DIR))
        self.dir = self.tmp / "snapshot"
        self.staging = self.tmp / "staging"
        self.dir.mkdir()
        self.staging.mkdir()
        self.proc: subprocess.Popen | None = None
        self._log: Any = None
        self.texts = {
            svc: sandbox_file_text(port, listener_port=self.listener_port, others=not split)
            for svc, port in ports.items()
        }
        self.final = self.dir / ("cds.json" if split else "snapshot.json")

    def _write(self, target: str) -> None:
        staged = self.staging / self.final.name
        staged.write_text(self.texts[target])
        os.rename(staged, self.final)

    def setup(self) -> None:
        if self.split:
            (self.dir / "lds.json").write_text(sandbox_file_text(1, listener_port=self.listener_port, clusters=False))
        self._write("service1")
        self._log = open(self.tmp / "serve.log", "wb")
        command = ["serve", "--snapshot", str(self.dir), "--port", str(self.xds_port)]
        launcher = [str(ROOT / "bench" / "serve_whatif.py"), self.what_if] if self.what_if else ["-m", "labxds"]
        self.proc = subprocess.Popen(
            [PYTHON, *launcher, *command],
            # its log goes to a file: a pipe nobody reads fills up and then blocks the server
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=self._log,
        )
        wait_until(lambda: _port_open(self.xds_port), 15, 0.02, "labxds serve port")
        bootstrap = render_bootstrap(xds_port=self.xds_port, admin_port=0, node_id="bench-snapfile")
        self.envoy = Envoy(bootstrap, admin_port=0).start()

    def switch(self, target: str) -> None:
        self._write(target)

    def settle(self, target: str) -> None:
        pass

    def close(self) -> None:
        super().close()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        if self._log is not None:
            self._log.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


def _port_open(port: int) -> bool:
    import socket

    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        return True
    except OSError:
        return False


def _pack(msg: Any) -> any_pb2.Any:
    a = any_pb2.Any()
    a.Pack(msg)
    return a


def _discovery_json(version: str, resources: list[Any]) -> str:
    resp = discovery_pb2.DiscoveryResponse(version_info=version, resources=[_pack(r) for r in resources])
    return json_format.MessageToJson(resp, indent=None)


class Probe:
    """The GET loop, in a process of its own as curl would be.

    In this process it would share the GIL with the control plane of the ``labxds`` rows (their
    server thread runs here) and slow them down, which the floor (Envoy alone) does not suffer.
    Times are ``time.perf_counter()``, CLOCK_MONOTONIC on Linux: the same clock in both processes.
    """

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [PYTHON, __file__, "--probe-process"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=ROOT,
        )

    def _ask(self, **command: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(command).encode() + b"\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the probe process died")
        return json.loads(line)

    def until(self, port: int, target: str, timeout: float) -> dict[str, Any]:
        return self._ask(op="until", port=port, target=target, timeout=timeout)

    def steady(self, port: int, n: int) -> list[float]:
        return self._ask(op="steady", port=port, n=n)["times"]

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self._ask(op="quit")
            except (OSError, RuntimeError, ValueError):
                pass
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def probe_process() -> int:
    """``--probe-process``: answer the Probe's commands, one JSON line each, on stdin/stdout."""
    clients: dict[int, RawHttp] = {}
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["op"] == "quit":
            sys.stdout.write("{}\n")
            sys.stdout.flush()
            return 0
        client = clients.get(cmd["port"])
        if client is None:
            client = clients[cmd["port"]] = RawHttp("127.0.0.1", cmd["port"])
        if cmd["op"] == "steady":
            times = []
            for _ in range(cmd["n"]):
                g0 = time.perf_counter()
                client.get()
                times.append(time.perf_counter() - g0)
            reply: dict[str, Any] = {"times": times}
        else:
            gets = []
            deadline = time.perf_counter() + cmd["timeout"]
            while True:
                g0 = time.perf_counter()
                status, body = client.get()
                g1 = time.perf_counter()
                hit = served_by(body) == cmd["target"]
                gets.append((g0, g1, hit))
                if hit or g1 > deadline:
                    break
            reply = {"gets": gets, "last": f"{status} {body[:60]!r}"}
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()
    return 0


def measure_switch(mode: Mode, probe: Probe, target: str, timeout: float = 10.0) -> tuple[float, list[tuple[float, float, bool]]]:
    """Seconds from the change to the first response from ``target``, and each GET as
    (start, end, served by target) in seconds after the change."""
    t0 = time.perf_counter()
    mode.switch(target)
    reply = probe.until(mode.listener_port, target, timeout)
    gets = [(g0 - t0, g1 - t0, hit) for g0, g1, hit in reply["gets"]]
    if not gets[-1][2]:
        raise TimeoutError(f"{mode.name}: {target} not served within {timeout}s (last {reply['last']})")
    return gets[-1][1], gets


def main() -> int:
    if sys.argv[1:] == ["--probe-process"]:
        return probe_process()
    parser = arg_parser(__doc__.splitlines()[0])
    parser.add_argument("--switches", type=int, default=None, help="switches per mode (default 200, quick 30)")
    parser.add_argument(
        "--what-if", default="", metavar="SETS",
        help="also run serve rows with parts of the work removed (bench/serve_whatif.py), e.g. "
        "'bound;loop,nolog;bound,loop,nolog'; written to propagation_whatif.json",
    )
    parser.add_argument("--gap", type=float, default=GAP, help=f"seconds of pause after each switch (default {GAP})")
    parser.add_argument("--user-view", action="store_true",
                        help="also rows that time what lab.push(resources) does: build, push, wait for the ACK")
    parser.add_argument("--tag", default="", help="results go to propagation_TAG.json, kept out of the report")
    args = parser.parse_args()
    gap = args.gap
    switches = args.switches or (30 if args.quick else 200)
    block = 10

    info = machine_info()
    services = {name: EchoProcess(name) for name in ("service1", "service2")}
    ports = {name: svc.port for name, svc in services.items()}
    cp = ControlPlane(port=0).start()
    modes: list[Mode] = [LabxdsMode(False, ports, cp), LabxdsMode(True, ports, cp), FloorMode(ports)]
    if args.user_view:
        modes[2:2] = [LabxdsMode(False, ports, cp, build=True), LabxdsMode(True, ports, cp, build=True)]
    snapshot_files = (ROOT / "labxds" / "files").is_dir()
    if snapshot_files:
        modes += [SnapshotFileMode(ports, split=True), SnapshotFileMode(ports, split=False)]
        modes += [SnapshotFileMode(ports, split=True, what_if=w) for w in args.what_if.split(";") if w]
    probe = Probe()
    records: dict[str, list[dict[str, Any]]] = {m.name: [] for m in modes}
    steady: dict[str, list[float]] = {}
    errors: dict[str, str] = {}
    started = time.monotonic()
    try:
        for m in list(modes):
            try:
                m.setup()
                client = RawHttp("127.0.0.1", m.listener_port)
                try:
                    wait_until(lambda: served_by(client.get()[1]) == "service1", 15, 0.01, f"{m.name} serving service1")
                finally:
                    client.close()
            except Exception as exc:  # a mode that cannot run is reported, not fatal
                errors[m.name] = f"{type(exc).__name__}: {exc}"
                print(f"{m.name}: setup failed: {errors[m.name]}", file=sys.stderr)
                modes.remove(m)
                m.close()
        # The probe's resolution: a GET through each Envoy to an upstream it already talks to.
        for m in modes:
            steady[m.name] = probe.steady(m.listener_port, 50)
        current = {m.name: "service1" for m in modes}
        for _ in range(3):  # warm-up switches, not recorded
            for m in modes:
                target = "service2" if current[m.name] == "service1" else "service1"
                measure_switch(m, probe, target)
                m.settle(target)
                current[m.name] = target
                time.sleep(gap)
        done = 0
        while done < switches:
            n = min(block, switches - done)
            for m in modes:
                for _ in range(n):
                    target = "service2" if current[m.name] == "service1" else "service1"
                    dt, gets = measure_switch(m, probe, target)
                    m.settle(target)
                    rec: dict[str, Any] = {"total": dt, "gets": gets}
                    if isinstance(m, LabxdsMode):
                        rec.update(m.marks)
                    records[m.name].append(rec)
                    current[m.name] = target
                    time.sleep(gap)
            done += n
            print(f"  {done}/{switches} switches per mode", flush=True)
    finally:
        probe.close()
        for m in modes:
            m.close()
        cp.stop()
        for svc in services.values():
            svc.stop()

    results: dict[str, Any] = {}
    for m in modes:
        recs = records[m.name]
        s = summary([r["total"] for r in recs])
        entry: dict[str, Any] = {
            "seconds": s,
            "samples": [r["total"] for r in recs],
            "gets_per_switch": summary([len(r["gets"]) for r in recs]),
            "first_get_missed_fraction": sum(not r["gets"][0][2] for r in recs) / len(recs),
            # the GET that saw the new upstream: its start (the change had reached Envoy's worker
            # by then) and its own duration (a new upstream connection to a Python echo server)
            "hit_get_start": summary([r["gets"][-1][0] for r in recs]),
            "hit_get_duration": summary([r["gets"][-1][1] - r["gets"][-1][0] for r in recs]),
            "missed_get_duration": summary([g[1] - g[0] for r in recs for g in r["gets"][:-1]]),
            "steady_get": summary(steady[m.name]),
            # per switch: total, push marks, and the first and last GET (start, end, saw new) only
            "records": [{**r, "gets": r["gets"][:1] + r["gets"][1:][-1:], "n_gets": len(r["gets"])} for r in recs],
        }
        if isinstance(m, LabxdsMode):
            entry["push_to_response"] = summary([r["response"] for r in recs if "response" in r])
            entry["push_to_ack"] = summary([r["ack"] for r in recs if "ack" in r])
        results[m.name] = entry
        print(f"{m.name:28s} p50 {s['p50'] * 1000:7.2f} ms  p99 {s['p99'] * 1000:7.2f} ms  max {s['max'] * 1000:7.2f} ms"
              f"  first GET missed {entry['first_get_missed_fraction']:.0%}")
    floor = results.get("floor (Envoy filesystem)", {}).get("seconds", {}).get("p50")
    ratios = {}
    for name, entry in results.items():
        if floor and name != "floor (Envoy filesystem)":
            ratios[name] = {"p50": entry["seconds"]["p50"] / floor,
                            "p99": entry["seconds"]["p99"] / results["floor (Envoy filesystem)"]["seconds"]["p99"]}
            print(f"{name:28s} / floor: p50 x{ratios[name]['p50']:.2f}  p99 x{ratios[name]['p99']:.2f}")
    name = "propagation_whatif" if args.what_if else "propagation" + (f"_{args.tag}" if args.tag else "")
    write_result(name, {
        "machine": info,
        "switches_per_mode": switches,
        "gap_s": gap,
        "user_view": args.user_view,
        "wall_s": time.monotonic() - started,
        "modes": results,
        "ratio_to_floor": ratios,
        "errors": errors,
        "snapshot_files_available": snapshot_files,
        "probe": "process",
    }, args.quick)
    if not args.no_report and not args.what_if and not args.tag:
        regenerate_docs()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
