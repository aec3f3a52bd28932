"""End to end with gRPC's own xDS client (inside grpcio) as the real client, no Envoy.

The client runs in a subprocess so that GRPC_XDS_BOOTSTRAP is set before its grpc initializes
and nothing of it leaks into the test process. It resolves ``xds:///greeter`` through the
control plane (LDS -> RDS -> CDS -> EDS over one ADS stream) and calls ``/labxds.Echo/Who`` on
two backends served here, taking commands on stdin and answering one JSON line each.

grpcio's xDS client speaks only State of the World: its library has the
``StreamAggregatedResources`` method path but not ``DeltaAggregatedResources``, and no
bootstrap option selects Delta. So there is no Delta variant of this test.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from labxds import (
    CLUSTER,
    ENDPOINT,
    LISTENER,
    ROUTE,
    ConsistencyError,
    ControlPlane,
    Snapshot,
    api_listener,
    cluster,
    load_assignment,
    route_configuration,
)
from labxds.notebook.tables import status_table, trace_table

TARGET = "greeter"
ROUTE_NAME = "greeter-route"
CLUSTER_NAME = "greeter-cluster"
NODE = "grpc-xds-client"
METHOD = "/labxds.Echo/Who"
SHORT = {LISTENER: "LDS", ROUTE: "RDS", CLUSTER: "CDS", ENDPOINT: "EDS"}

# The client: "call N" makes N calls one after another and prints their answers as a JSON list
# (an error is printed as "ERR <code> <details>"); "quit" ends it.
CLIENT = r"""
import json, sys
import grpc

channel = grpc.insecure_channel("xds:///%(target)s")
who = channel.unary_unary("%(method)s", request_serializer=None, response_deserializer=None)
print(json.dumps("ready"), flush=True)
for line in sys.stdin:
    cmd = line.split()
    if not cmd or cmd[0] == "quit":
        break
    answers = []
    for _ in range(int(cmd[1])):
        try:
            answers.append(who(b"", timeout=5, wait_for_ready=True).decode())
        except grpc.RpcError as exc:
            answers.append(f"ERR {exc.code().name} {exc.details()}")
    print(json.dumps(answers), flush=True)
channel.close()
""" % {"target": TARGET, "method": METHOD}


def _backend(name: str) -> tuple[grpc.Server, int]:
    """A gRPC server answering /labxds.Echo/Who with its name (raw bytes, no protos)."""
    handler = grpc.method_handlers_generic_handler("labxds.Echo", {
        "Who": grpc.unary_unary_rpc_method_handler(lambda request, context: name.encode()),
    })
    server = grpc.server(ThreadPoolExecutor(4), handlers=[handler])
    port = server.add_insecure_port("127.0.0.1:0")
    assert port
    server.start()
    return server, port


def _snapshot(endpoints: list[tuple[str, int]]) -> Snapshot:
    # Versions are content hashes, so a type whose resources did not change keeps its version.
    return Snapshot([
        api_listener(TARGET, ROUTE_NAME),
        route_configuration(ROUTE_NAME, CLUSTER_NAME),
        cluster(CLUSTER_NAME, lb_policy="ROUND_ROBIN"),
        load_assignment(CLUSTER_NAME, endpoints, locality_weight=1),
    ])


def _short(versions: dict[str, str]) -> dict[str, str]:
    return {SHORT[url]: v for url, v in versions.items()}


def _acked(cp: ControlPlane) -> dict[str, str]:
    status = status_table(cp)
    mine = status[status.node == NODE]
    return dict(zip(mine.type, mine.acked))


class _Client:
    """The subprocess, with its stdout read by a thread so every read has a timeout."""

    def __init__(self, bootstrap: str, stderr_path: str) -> None:
        env = dict(os.environ, GRPC_XDS_BOOTSTRAP=bootstrap)
        env.pop("GRPC_XDS_BOOTSTRAP_CONFIG", None)
        self._stderr = open(stderr_path, "w+")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", CLIENT], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=self._stderr, text=True, env=env,
        )
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        assert self._next(15) == "ready"

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def stderr(self) -> str:
        self._stderr.flush()
        self._stderr.seek(0)
        return self._stderr.read()[-3000:]

    def _next(self, timeout: float):
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"the gRPC client did not answer in {timeout}s; stderr:\n{self.stderr()}") from None
        if line is None:
            raise AssertionError(f"the gRPC client exited ({self.proc.poll()}); stderr:\n{self.stderr()}")
        return json.loads(line)

    def call(self, n: int, timeout: float = 15) -> list[str]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"call {n}\n")
        self.proc.stdin.flush()
        answers = self._next(timeout)
        errors = [a for a in answers if a.startswith("ERR")]
        assert not errors, f"{errors[:3]}; stderr:\n{self.stderr()}"
        return answers

    def close(self) -> None:
        try:
            if self.proc.poll() is None:
                assert self.proc.stdin is not None
                self.proc.stdin.write("quit\n")
                self.proc.stdin.close()
                self.proc.wait(timeout=5)
        except Exception:
            pass
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(timeout=5)
            self._stderr.close()


@pytest.fixture
def backends():
    servers = {name: _backend(name) for name in ("alpha", "beta")}
    yield {name: port for name, (_, port) in servers.items()}
    for server, _ in servers.values():
        server.stop(0)


@pytest.mark.timeout(60)
def test_grpc_xds_client_round_robin_then_push_moves_traffic(tmp_path, backends):
    start = time.monotonic()
    cp = ControlPlane(port=0).start()
    client = None
    try:
        both = [("127.0.0.1", backends["alpha"]), ("127.0.0.1", backends["beta"])]
        first = cp.set_snapshot(_snapshot(both))
        bootstrap = tmp_path / "bootstrap.json"
        bootstrap.write_text(json.dumps({
            "xds_servers": [{
                "server_uri": cp.address,
                "channel_creds": [{"type": "insecure"}],
                "server_features": ["xds_v3"],
            }],
            "node": {"id": NODE, "cluster": "labxds-tests"},
        }))
        client = _Client(str(bootstrap), str(tmp_path / "client.stderr"))

        # The first calls may all land on whichever backend became ready first; once both have
        # answered, round robin alternates between them.
        deadline = time.monotonic() + 10
        seen: set[str] = set()
        while seen != {"alpha", "beta"}:
            assert time.monotonic() < deadline, f"only {seen} answered; stderr:\n{client.stderr()}"
            seen.update(client.call(4))
        answers = client.call(20)
        assert answers.count("alpha") == answers.count("beta") == 10, answers
        assert all(a != b for a, b in zip(answers, answers[1:])), f"not round robin: {answers}"

        # Rule 8: gRPC's client names its LDS and CDS resources, it never subscribes by wildcard.
        trace = trace_table(cp, NODE)
        requests = trace[(trace.direction == "received") & (trace.kind.isin(["request", "ACK"]))]
        asked = {t: set(requests[requests.type == t].resources) for t in ("LDS", "RDS", "CDS", "EDS")}
        assert asked == {
            "LDS": {TARGET}, "RDS": {ROUTE_NAME}, "CDS": {CLUSTER_NAME}, "EDS": {CLUSTER_NAME},
        }, asked
        assert set(trace[trace.direction == "received"].resources) <= {TARGET, ROUTE_NAME, CLUSTER_NAME}
        assert not (trace.kind == "NACK").any(), trace[trace.kind == "NACK"].error.tolist()
        assert _acked(cp) == _short(first.versions)
        before = len(trace)

        # Move every call to beta: push waits for the client's ACK of the new EDS version; its
        # picker follows right after, so poll briefly, then every later call must go to beta.
        second = cp.push(_snapshot([("127.0.0.1", backends["beta"])]), timeout=10)
        deadline = time.monotonic() + 10
        while set(client.call(4)) != {"beta"}:
            assert time.monotonic() < deadline, f"traffic did not move to beta; stderr:\n{client.stderr()}"
        assert client.call(20) == ["beta"] * 20

        # Rule 6: only the load assignment changed, so only EDS went out again (and was ACKed).
        trace = trace_table(cp, NODE)
        later = trace.iloc[before:]
        assert list(later[later.direction == "sent"].type) == ["EDS"], later.to_string()
        assert _acked(cp) == _short(second.versions)
        assert second.version(ENDPOINT) != first.version(ENDPOINT)
        assert time.monotonic() - start < 20, f"took {time.monotonic() - start:.1f}s"
    finally:
        if client is not None:
            client.close()
        cp.stop()


def test_api_listener_passes_the_consistency_check():
    ok = _snapshot([("127.0.0.1", 1)])
    assert ok.rds_names() == {ROUTE_NAME}
    assert set(ok.versions) == {CLUSTER, ENDPOINT, LISTENER, ROUTE}
    with pytest.raises(ConsistencyError, match=f"listener '{TARGET}' uses route configuration 'missing'"):
        Snapshot([api_listener(TARGET, "missing")])
