"""Faults, bad input and load, measured against the real Envoy (docs/reliability.md).

Each test injects one fault next to a real Envoy fed by the control plane and measures what
happened: requests that failed, how long until Envoy had its configuration again, what the
protocol trace shows. The figures are printed (``pytest -s``) and, when LABXDS_FIGURES names a
JSON file, written there; docs/reliability.md records a run.

Ports are always chosen by the kernel: other test sessions share this machine.
"""

from __future__ import annotations

import asyncio
import collections
import copy
import gc
import json
import os
import queue
import random
import re
import signal
import socket
import statistics
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")  # Envoy and child processes fork: no notices

import grpc  # noqa: E402
import httpx
import pytest
import yaml
from envoy.service.discovery.v3 import discovery_pb2
from envoy_helpers import free_port
from google.protobuf import struct_pb2
from xds_client import DeltaClient, SotwClient, StreamEnded

from labxds import (
    CLUSTER,
    ENDPOINT,
    LISTENER,
    ROUTE,
    ControlPlane,
    PushRejected,
    PushTimeout,
    Snapshot,
    cluster,
    load_assignment,
    sandbox_resources,
    sandbox_snapshot,
)
from labxds.envoy import Envoy, EnvoyAdmin, render_bootstrap
from labxds.lab import EchoFleet
from labxds.xds import to_dict

pytestmark = pytest.mark.envoy

NODE = "test-id"
ADS_SOTW = "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources"
ADS_DELTA = "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources"

# -- figures ----------------------------------------------------------------------------------

FIGURES: dict[str, dict[str, Any]] = {}


def record(section: str, **values: Any) -> None:
    """Keep a test's measured figures (printed, and saved if LABXDS_FIGURES is set)."""
    rounded = {k: round(v, 4) if isinstance(v, float) else v for k, v in values.items()}
    FIGURES.setdefault(section, {}).update(rounded)
    print(f"\n[figures] {section}: {json.dumps(rounded)}")


@pytest.fixture(scope="module", autouse=True)
def _save_figures() -> Iterator[None]:
    yield
    path = os.environ.get("LABXDS_FIGURES")
    if path and FIGURES:
        target = Path(path)
        old = json.loads(target.read_text()) if target.exists() else {}
        old.update(FIGURES)
        target.write_text(json.dumps(old, indent=2, sort_keys=True) + "\n")


# -- helpers ----------------------------------------------------------------------------------


def wait_until(predicate: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = predicate()
        except (httpx.HTTPError, OSError):
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


def served_by(port: int) -> str | None:
    """Who answered a request through Envoy's listener (None if it failed)."""
    try:
        response = httpx.get(f"http://127.0.0.1:{port}/", trust_env=False, timeout=2)
    except httpx.HTTPError:
        return None
    return response.headers.get("x-served-by") if response.status_code == 200 else None


class Traffic:
    """Steady requests through Envoy's listener from a thread; every outcome is counted."""

    def __init__(self, port: int, interval: float = 0.005) -> None:
        self.url = f"http://127.0.0.1:{port}/"
        self.interval = interval
        self.ok = 0
        self.failed = 0
        self.errors: list[str] = []
        self.served: Counter[str] = Counter()
        self.last: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="traffic", daemon=True)

    def _run(self) -> None:
        with httpx.Client(trust_env=False, timeout=2.0) as client:
            while not self._stop.is_set():
                try:
                    response = client.get(self.url)
                except httpx.HTTPError as exc:
                    self.failed += 1
                    self.errors.append(repr(exc))
                else:
                    if response.status_code == 200:
                        self.ok += 1
                        self.last = response.headers.get("x-served-by")
                        self.served[self.last or "?"] += 1
                    else:
                        self.failed += 1
                        self.errors.append(f"{response.status_code} {response.text[:120]!r}")
                self._stop.wait(self.interval)

    def start(self) -> Traffic:
        self._thread.start()
        return self

    def stop(self) -> Traffic:
        self._stop.set()
        self._thread.join(timeout=5)
        return self

    def wait_for(self, ok: int, timeout: float = 10.0) -> None:
        target = self.ok + ok
        wait_until(lambda: self.ok >= target, timeout, f"{ok} more successful requests")

    def __enter__(self) -> Traffic:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass
class Rig:
    """A control plane, echo services service1 and service2, and one real Envoy."""

    cp: ControlPlane
    services: EchoFleet
    listener_port: int
    delta: bool = False
    envoy: Envoy | None = None
    envoys: list[Envoy] = field(default_factory=list)

    def upstream(self, name: str) -> tuple[str, int]:
        return self.services.endpoints(name)[0]

    def resources(self, upstream: str = "service1") -> list[Any]:
        host, port = self.upstream(upstream)
        return sandbox_resources(host, port, listener_port=self.listener_port)

    def snapshot(self, upstream: str = "service1", version: str = "1") -> Snapshot:
        host, port = self.upstream(upstream)
        return sandbox_snapshot(host, port, version=version, listener_port=self.listener_port)

    def bootstrap(self, node: str = NODE) -> dict:
        return render_bootstrap(xds_port=self.cp.port, admin_port=0, node_id=node, delta=self.delta)

    def start_envoy(self, node: str = NODE) -> Envoy:
        envoy = Envoy(self.bootstrap(node)).start()
        self.envoys.append(envoy)
        self.envoy = envoy
        return envoy

    def push(self, snapshot: Snapshot, timeout: float = 10.0) -> Snapshot:
        return self.cp.push(snapshot, nodes=[NODE], timeout=timeout)

    def served_by(self) -> str | None:
        return served_by(self.listener_port)

    def close(self) -> None:
        for envoy in self.envoys:
            envoy.stop()
        self.services.stop()
        self.cp.stop()


@pytest.fixture
def make_rig() -> Iterator[Callable[..., Rig]]:
    rigs: list[Rig] = []

    def make(*, delta: bool = False, envoy: bool = True, version: str | None = "1") -> Rig:
        cp = ControlPlane(0).start()
        services = EchoFleet({"service1": 1, "service2": 1}).start()
        rig = Rig(cp, services, free_port(), delta=delta)
        rigs.append(rig)
        if version is not None:
            cp.set_snapshot(rig.snapshot("service1", version))
        if envoy:
            rig.start_envoy()
            cp.wait_for_node(NODE)
            wait_until(lambda: rig.served_by() == "service1", 10, "Envoy serving service1")
        return rig

    yield make
    for rig in rigs:
        rig.close()


def sent_events(cp: ControlPlane, node: str = NODE, stream: int | None = None) -> list[Any]:
    return [e for e in cp.tracker.events(node) if e.direction == "sent" and (stream is None or e.stream == stream)]


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def server_tasks(cp: ControlPlane) -> int:
    """asyncio tasks alive on the control plane's own event loop."""

    async def count() -> int:
        return len(asyncio.all_tasks())

    assert cp._loop is not None
    return asyncio.run_coroutine_threadsafe(count(), cp._loop).result(timeout=5)


# == 1. the control plane killed (SIGKILL) and restarted under steady traffic =================

CHILD = textwrap.dedent(
    """
    import json, sys, threading, time
    from labxds import ControlPlane, sandbox_snapshot

    def snap(cmd):
        return sandbox_snapshot(cmd["host"], cmd["port"], version=cmd["version"],
                                listener_port=cmd["listener_port"])

    def say(**event):
        event["t"] = time.time()
        print(json.dumps(event), flush=True)

    def responses():
        return sum(1 for e in cp.tracker.events() if e.direction == "sent")

    port, first = int(sys.argv[1]), json.loads(sys.argv[2])
    cp = ControlPlane(port)
    cp.set_snapshot(snap(first))
    cp.start()
    say(event="listening", port=cp.port)

    def connected():
        cp.wait_for_node("test-id", 120)
        say(event="connected")

    threading.Thread(target=connected, daemon=True).start()
    for line in sys.stdin:
        cmd = json.loads(line)
        before = responses()
        started = time.time()
        try:
            cp.push(snap(cmd), nodes=["test-id"], timeout=10)
        except Exception as exc:
            say(event="error", error=repr(exc))
        else:
            say(event="applied", version=cmd["version"], took=time.time() - started,
                responses_before=before)
    """
)


class Child:
    """A control plane in a child process, driven through stdin, reporting JSON events."""

    def __init__(self, script: Path, port: int, first: dict) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(script), str(port), json.dumps(first)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        self.events: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.events.put(json.loads(line))
        self.events.put(None)

    def wait(self, event: str, timeout: float = 30.0) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            try:
                item = self.events.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"child control plane: no {event!r} within {timeout}s") from None
            if item is None:
                err = self.proc.stderr.read() if self.proc.stderr else ""
                raise AssertionError(f"child control plane exited ({self.proc.poll()}): {err[-2000:]}")
            if item["event"] == "error":
                raise AssertionError(f"child control plane: {item['error']}")
            if item["event"] == event:
                return item

    def send(self, command: dict) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)


def test_control_plane_sigkilled_and_restarted_under_traffic(tmp_path):
    script = tmp_path / "child_control_plane.py"
    script.write_text(CHILD)
    services = EchoFleet({"service1": 1, "service2": 1}).start()
    listener_port = free_port()

    def command(upstream: str, version: str) -> dict:
        host, port = services.endpoints(upstream)[0]
        return {"host": host, "port": port, "version": version, "listener_port": listener_port}

    children: list[Child] = []
    envoy = None
    try:
        first = Child(script, 0, command("service1", "1"))
        children.append(first)
        port = first.wait("listening")["port"]
        envoy = Envoy(render_bootstrap(xds_port=port, admin_port=0)).start()
        first.wait("connected")
        wait_until(lambda: served_by(listener_port) == "service1", 10, "Envoy serving service1")

        with Traffic(listener_port) as traffic:
            traffic.wait_for(30)
            killed_at = time.time()
            first.kill()
            time.sleep(1.0)  # the control plane is gone; Envoy keeps what it has
            during_outage = traffic.ok
            second = Child(script, port, command("service1", "1"))
            children.append(second)
            listening = second.wait("listening")
            connected = second.wait("connected", timeout=60)
            second.send(command("service2", "2"))
            applied = second.wait("applied")
            wait_until(lambda: traffic.last == "service2", 10, "traffic to reach service2")
            traffic.wait_for(30)
        record(
            "1. control plane SIGKILL + restart",
            requests=traffic.ok + traffic.failed,
            failed=traffic.failed,
            outage_s=listening["t"] - killed_at,
            envoy_reconnect_after_restart_s=connected["t"] - listening["t"],
            responses_resent_on_reconnect=applied["responses_before"],
            change_applied_s=applied["took"],
        )
        assert traffic.failed == 0, traffic.errors[:5]
        assert during_outage > 30, "no traffic flowed while the control plane was down"
        assert traffic.served["service1"] > 0 and traffic.served["service2"] > 0
        # Envoy came back with version 1, which the new control plane serves: nothing is resent.
        assert applied["responses_before"] == 0
    finally:
        for child in children:
            child.kill()
        if envoy is not None:
            envoy.stop()
        services.stop()


class ServeProcess:
    """``python -m labxds serve --snapshot DIR --port P``: the command-line control plane."""

    def __init__(self, directory: Path, port: int) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "labxds", "serve", "--snapshot", str(directory), "--port", str(port)],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        self.lines: list[str] = []
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)
            found = re.search(r"serving ADS .* on 127\.0\.0\.1:(\d+)", line)
            if found:
                self.port = int(found.group(1))
                self.at = time.time()
                break
        else:
            raise AssertionError(f"labxds serve exited ({self.proc.wait()}): {''.join(self.lines)[-2000:]}")
        threading.Thread(target=lambda: self.lines.extend(self.proc.stdout), daemon=True).start()  # type: ignore[arg-type]

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)


def _write_snapshot_file(directory: Path, resources: list[Any], version: str) -> None:
    """One snapshot file, replaced atomically (the watcher never sees half a file)."""
    plain = json.loads(json.dumps([to_dict(r) for r in resources]))  # OrderedDicts from Any fields
    text = yaml.safe_dump({"version_info": version, "resources": plain}, sort_keys=False)
    tmp = directory / ".sandbox.yaml.tmp"
    tmp.write_text(text)
    os.replace(tmp, directory / "sandbox.yaml")


def test_labxds_serve_sigkilled_and_restarted_under_traffic(tmp_path):
    """The same fault with the command-line control plane: the change is an edited file."""
    services = EchoFleet({"service1": 1, "service2": 1}).start()
    listener_port = free_port()
    directory = tmp_path / "snapshot"
    directory.mkdir()

    def resources(upstream: str) -> list[Any]:
        host, port = services.endpoints(upstream)[0]
        return sandbox_resources(host, port, listener_port=listener_port)

    _write_snapshot_file(directory, resources("service1"), "1")
    servers: list[ServeProcess] = []
    envoy = None
    try:
        servers.append(ServeProcess(directory, 0))
        port = servers[0].port
        envoy = Envoy(render_bootstrap(xds_port=port, admin_port=0)).start()
        connected = lambda: envoy.admin.stats("control_plane.connected_state").get("control_plane.connected_state")  # noqa: E731
        wait_until(lambda: served_by(listener_port) == "service1", 10, "Envoy serving service1")
        with Traffic(listener_port) as traffic:
            traffic.wait_for(30)
            killed_at = time.time()
            servers[0].kill()
            wait_until(lambda: connected() == 0, 10, "Envoy to notice the control plane is gone")
            time.sleep(1.0)
            servers.append(ServeProcess(directory, port))
            wait_until(lambda: connected() == 1, 30, "Envoy to reconnect")
            reconnected_at = time.time()
            _write_snapshot_file(directory, resources("service2"), "2")
            edited = time.monotonic()
            wait_until(lambda: traffic.last == "service2", 15, "the edited file to reach Envoy")
            applied = time.monotonic() - edited
            traffic.wait_for(30)
        record(
            "1. labxds serve SIGKILL + restart",
            requests=traffic.ok + traffic.failed,
            failed=traffic.failed,
            outage_s=servers[1].at - killed_at,
            envoy_reconnect_after_restart_s=reconnected_at - servers[1].at,
            file_edit_to_traffic_s=applied,
        )
        assert traffic.failed == 0, traffic.errors[:5]
        assert traffic.served["service1"] > 0 and traffic.served["service2"] > 0
    finally:
        for server in servers:
            server.kill()
        if envoy is not None:
            envoy.stop()
        services.stop()


# == 2. Envoy restarted: it gets the current snapshot at once ==================================


class FaultyLink:
    """A TCP proxy between a client and the control plane that can be made slow, lossy or dead.

    ``delay`` adds one-way latency to every chunk, both ways. With probability ``stalls`` a chunk
    is held ``stall`` seconds more: what a lost packet looks like above TCP, which retransmits it
    while everything after it waits (nothing is lost or reordered). ``drop()`` loses every byte
    both ways and every close, until ``heal()``: the network failing silently (a laptop asleep,
    Wi-Fi gone), where neither end is told the connection is dead.
    """

    def __init__(self, target_port: int, *, delay: float = 0.0, stalls: float = 0.0, stall: float = 0.0,
                 seed: int = 0) -> None:
        self.target_port = target_port
        self.delay, self.stalls, self.stall = delay, stalls, stall
        self.random = random.Random(seed)
        self.chunks = 0
        self.stalled = 0
        self.dropping = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.sockets: list[socket.socket] = [self.listener]
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def drop(self) -> None:
        self.dropping.set()

    def heal(self) -> None:
        self.dropping.clear()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            self.sockets.append(client)
            if self.dropping.is_set():
                continue  # accepted, then nothing ever gets through
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            self.sockets.append(upstream)
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _release_time(self, last: float) -> float:
        with self._lock:
            self.chunks += 1
            held = self.delay
            if self.stalls and self.random.random() < self.stalls:
                self.stalled += 1
                held += self.stall
        return max(time.monotonic() + held, last)  # in order, like TCP

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        slow = self.delay > 0 or self.stalls > 0
        due: collections.deque[tuple[float, bytes]] = collections.deque()
        ready = threading.Condition()
        if slow:
            threading.Thread(target=self._deliver, args=(due, ready, dst), daemon=True).start()
        last = 0.0
        while True:
            try:
                data = src.recv(65536)
            except OSError:
                data = b""
            if self.dropping.is_set():
                if not data:
                    return  # the close is lost too
                continue
            if slow:
                last = self._release_time(last)
                with ready:
                    due.append((last, data))
                    ready.notify()
            elif data:
                try:
                    dst.sendall(data)
                except OSError:
                    return
            else:
                _shutdown(dst)
            if not data:
                return

    @staticmethod
    def _deliver(due: collections.deque[tuple[float, bytes]], ready: threading.Condition, dst: socket.socket) -> None:
        while True:
            with ready:
                while not due:
                    ready.wait()
                when, data = due[0]
            time.sleep(max(0.0, when - time.monotonic()))
            with ready:
                due.popleft()
            if not data:
                _shutdown(dst)
                return
            try:
                dst.sendall(data)
            except OSError:
                return

    def close(self) -> None:
        for sock in self.sockets:
            try:
                sock.close()
            except OSError:
                pass


def _shutdown(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        pass


def test_a_client_that_vanished_silently_is_dropped_by_keepalive():
    """Network fault: the path to a client goes dead without a FIN or RST. The server's
    keepalive pings go unanswered and it drops the stream, so the node stops counting as
    connected (without keepalive it would, for as long as TCP takes: many minutes)."""
    with ControlPlane(0, keepalive=(0.3, 1.0)) as cp:  # a generous timeout: CI machines stall
        cp.set_snapshot(Snapshot([cluster("c", [("127.0.0.1", 1)], type="STATIC")], version="1"))
        hole = FaultyLink(cp.port)
        client = SotwClient(f"127.0.0.1:{hole.port}", "vanishing")
        try:
            client.ack(client.subscribe(CLUSTER))
            time.sleep(1.0)  # several keepalive rounds while the network is fine: still connected
            assert cp.tracker.connected() == ["vanishing"]
            hole.drop()
            dropped = time.monotonic()
            wait_until(lambda: cp.tracker.connected() == [], 10, "the server to drop the dead stream")
            record("network: a client vanishes silently", dropped_after_s=time.monotonic() - dropped)
        finally:
            client.close()
            hole.close()


def test_envoy_behind_a_dead_network_reconnects_by_keepalive_and_gets_the_news(make_rig):
    """Network fault, Envoy's side: the control plane's path goes dead silently, Envoy's own
    keepalive (``render_bootstrap(keepalive=...)``, on in learners' bootstraps) notices and
    reconnects once the network heals; the change pushed meanwhile then reaches it."""
    rig = make_rig(envoy=False)
    rig.cp.stop()
    rig.cp = ControlPlane(0, keepalive=(0.5, 1.0)).start()
    rig.cp.set_snapshot(rig.snapshot("service1", "1"))
    hole = FaultyLink(rig.cp.port)
    try:
        bootstrap = render_bootstrap(xds_port=hole.port, admin_port=0, node_id=NODE, keepalive=(0.5, 1.0))
        envoy = Envoy(bootstrap).start()
        rig.envoys.append(envoy)
        rig.cp.wait_for_node(NODE)
        wait_until(lambda: rig.served_by() == "service1", 10, "Envoy serving service1")
        connected = lambda: envoy.admin.stats("control_plane.").get("control_plane.connected_state")  # noqa: E731
        assert connected() == 1
        hole.drop()
        dropped = time.monotonic()
        wait_until(lambda: connected() == 0, 10, "Envoy to notice the dead connection")
        noticed = time.monotonic() - dropped
        wait_until(lambda: rig.cp.tracker.connected() == [], 10, "the server to drop it too")
        rig.cp.set_snapshot(rig.snapshot("service2", "2"))  # pushed while Envoy cannot hear
        assert rig.served_by() == "service1"  # and traffic is unhurt meanwhile
        hole.heal()
        healed = time.monotonic()
        wait_until(lambda: rig.served_by() == "service2", 15, "the change to reach Envoy after the heal")
        record("network: the control plane's path dies silently", envoy_noticed_after_s=noticed,
               change_served_after_heal_s=time.monotonic() - healed)
    finally:
        hole.close()


@pytest.mark.parametrize("delta", [False, True], ids=["sotw", "delta"])
def test_envoy_over_a_slow_lossy_link_ends_on_the_last_of_rapid_pushes(make_rig, delta):
    """Network fault: 100 ms each way, and one chunk in five held 300 ms more (a lost packet,
    retransmitted). Ten pushes 20 ms apart, several per round trip. A type has one unanswered
    response at a time, so the versions pushed while Envoy's answer is on its way coalesce: a slow
    client gets the latest, not every step. Envoy ends on the last snapshot, nothing is NACKed or
    sent twice, and keepalive pings, answered within their timeout however slowly, never cost a
    reconnect."""
    rig = make_rig(envoy=False, delta=delta)
    rig.cp.stop()
    rig.cp = ControlPlane(0, keepalive=(0.5, 2.0)).start()
    rig.cp.set_snapshot(rig.snapshot("service1", "1"))
    link = FaultyLink(rig.cp.port, delay=0.1, stalls=0.2, stall=0.3, seed=7)
    try:
        bootstrap = render_bootstrap(xds_port=link.port, admin_port=0, node_id=NODE, delta=delta, keepalive=(0.5, 2.0))
        envoy = Envoy(bootstrap).start()
        rig.envoys.append(envoy)
        rig.cp.wait_for_node(NODE, timeout=15)
        wait_until(lambda: rig.served_by() == "service1", 15, "Envoy serving service1 over the slow link")
        started = time.monotonic()
        for version in range(2, 11):
            rig.cp.set_snapshot(rig.snapshot("service2" if version % 2 else "service1", str(version)))
            time.sleep(0.02)
        rig.push(rig.snapshot("service2", "11"), timeout=30)  # returns once Envoy has applied it
        converged = time.monotonic() - started
        assert rig.served_by() == "service2"
        events = rig.cp.tracker.events(NODE)
        assert [e for e in events if e.kind == "NACK"] == []
        sent = Counter((e.type_url, e.version) for e in events if e.direction == "sent" and e.kind == "response")
        assert sent and max(sent.values()) == 1, sent  # no version sent twice
        cds_sent = sum(n for (url, _), n in sent.items() if url == CLUSTER)
        assert cds_sent < 10, sent  # the initial version and far fewer than the ten pushes
        stats = envoy.admin.stats("cluster.xds_cluster.upstream_cx_total")
        assert stats["cluster.xds_cluster.upstream_cx_total"] == 1  # the one connection throughout
        assert envoy.admin.stats("control_plane.")["control_plane.connected_state"] == 1
        assert link.stalled > 0
        record(f"network: slow and lossy link ({'Delta' if delta else 'SotW'})", converged_s=converged,
               cds_responses=cds_sent, chunks=link.chunks, chunks_stalled=link.stalled)
    finally:
        link.close()


def test_envoy_restarted_receives_current_snapshot_at_once(make_rig):
    rig = make_rig()
    assert rig.envoy is not None
    rig.envoy.stop()
    wait_until(lambda: NODE not in rig.cp.nodes(), 10, "Envoy's stream to close")
    # The snapshot changes while Envoy is down: the new Envoy must start with it.
    rig.cp.push(rig.snapshot("service2", "2"))
    started = time.monotonic()
    opened: list[float] = []
    rig.cp.on("stream_open", lambda node, stream: opened.append(time.monotonic()))
    envoy = rig.start_envoy()
    admin_up = time.monotonic()
    wait_until(lambda: rig.served_by() == "service2", 10, "the new Envoy serving service2")
    serving = time.monotonic()
    stream = max(e.stream for e in rig.cp.tracker.events(NODE))
    events = [e for e in rig.cp.tracker.events(NODE) if e.stream == stream]
    acks = [e for e in events if e.kind == "ACK"]
    sent = [e for e in events if e.direction == "sent"]
    record(
        "2. Envoy restart",
        envoy_start_to_admin_s=admin_up - started,
        envoy_start_to_stream_s=opened[0] - started,
        stream_to_all_acked_s=max(e.time for e in acks) - events[0].time,
        envoy_start_to_serving_s=serving - started,
        responses=len(sent),
    )
    assert envoy.running
    assert {e.version for e in sent} == {"2"}, "the new Envoy got something else than the current snapshot"
    assert {e.type_url for e in acks} == {CLUSTER, LISTENER, ROUTE}
    assert not [e for e in events if e.kind == "NACK"]
    assert serving - started < 5.0


# == 3. the server resets the streams: Envoy reconnects, resends its state, nothing is resent ==


@pytest.mark.parametrize("delta", [False, True], ids=["sotw", "delta"])
def test_stream_reset_reconnects_with_versions_and_nothing_is_pushed_twice(make_rig, delta):
    rig = make_rig(delta=delta)
    snap = rig.cp.snapshot()
    port = rig.cp.port
    rig.cp.stop()  # every stream ends, as a crash or a redeploy of the control plane would
    stopped = time.monotonic()
    cp = ControlPlane(port)
    rig.cp = cp  # the rig stops it
    cp.set_snapshot(snap)
    requests: list[Any] = []
    opened: list[float] = []
    cp.on("request", lambda node, request: requests.append(request))
    cp.on("stream_open", lambda node, stream: opened.append(time.monotonic()))
    cp.start()
    cp.wait_for_node(NODE, timeout=30)
    wait_until(lambda: {r.type_url for r in requests} >= {CLUSTER, LISTENER, ROUTE}, 10, "Envoy's requests")
    time.sleep(0.5)  # room for a (wrong) push to go out
    record(
        f"3. stream reset ({'delta' if delta else 'sotw'})",
        reconnect_s=opened[0] - stopped,
        requests=len(requests),
        responses_after_reconnect=len(sent_events(cp)),
    )
    first = {}
    for request in requests:
        first.setdefault(request.type_url, request)
    assert requests[0].node.id == NODE  # the node again, on the new stream's first request
    for url in (CLUSTER, LISTENER, ROUTE):
        request = first[url]
        if delta:
            held = {name: entry.version for name, entry in snap.entries(url).items()}
            assert dict(request.initial_resource_versions) == held, url
        else:
            assert request.version_info == "1", url
    assert sent_events(cp) == [], "a version Envoy already held was pushed again"
    # The reconnected stream is fully usable.
    rig.push(rig.snapshot("service2", "2"))
    wait_until(lambda: rig.served_by() == "service2", 10, "service2 after the reset")


# == 4. bad configuration only Envoy can reject ===============================================

HCM_URL = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"


@dataclass
class BadCase:
    name: str
    type_url: str
    expected: str  # a piece of Envoy's own error text
    build: Callable[[Any], list[dict]]


class BadRig:
    def __init__(self, rig: Rig) -> None:
        self.rig = rig
        self.base = [to_dict(m) for m in rig.resources("service1")]
        self.taken = socket.socket()
        self.taken.bind(("127.0.0.1", 0))
        self.taken.listen()

    @property
    def cluster(self) -> dict:
        return copy.deepcopy(self.base[0])

    @property
    def route(self) -> dict:
        return copy.deepcopy(self.base[1])

    @property
    def listener(self) -> dict:
        return copy.deepcopy(self.base[2])

    def with_listener(self, name: str, port: int | None = None, hcm: Callable[[dict], None] | None = None,
                      **fields: Any) -> list[dict]:
        extra = self.listener
        extra["name"] = name
        extra["address"]["socket_address"]["port_value"] = port if port is not None else free_port()
        if hcm is not None:
            hcm(extra["filter_chains"][0]["filters"][0]["typed_config"])
        extra.update(fields)
        return [*self.base, extra]

    def with_cluster(self, name: str, **fields: Any) -> list[dict]:
        extra = self.cluster
        extra["name"] = name
        extra["load_assignment"]["cluster_name"] = name
        extra.update(fields)
        return [*self.base, extra]

    def with_route(self, change: Callable[[dict], None]) -> list[dict]:
        route = self.route
        change(route)
        return [self.base[0], route, self.base[2]]

    def endpoint(self, host: str, port: int) -> dict:
        return {"endpoint": {"address": {"socket_address": {"address": host, "port_value": port}}}}


def _first_route(route: dict) -> dict:
    return route["virtual_hosts"][0]["routes"][0]


def _bad_regex(route: dict) -> None:
    route["virtual_hosts"][0]["routes"].insert(0, {
        "match": {"safe_regex": {"regex": "([a-z"}}, "route": {"cluster": "example_proxy_cluster"},
    })


def _two_wildcard_hosts(route: dict) -> None:
    route["virtual_hosts"].append({**copy.deepcopy(route["virtual_hosts"][0]), "name": "again"})


def _two_rewrites(route: dict) -> None:
    _first_route(route)["route"].update(
        {"prefix_rewrite": "/x", "regex_rewrite": {"pattern": {"regex": "^/a"}, "substitution": "/b"}}
    )


def _validated_unknown_cluster(route: dict) -> None:
    route["validate_clusters"] = True
    _first_route(route)["route"]["cluster"] = "ghost"


def _unknown_http_filter(hcm: dict) -> None:
    hcm["http_filters"].insert(0, {"name": "mystery", "typed_config": {"@type": "type.googleapis.com/google.protobuf.Empty"}})


def _router_not_last(hcm: dict) -> None:
    hcm["http_filters"].append({
        "name": "envoy.filters.http.buffer",
        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.buffer.v3.Buffer", "max_request_bytes": 1024},
    })


def _tls_without_files() -> dict:
    return {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
            "common_tls_context": {"tls_certificates": [{
                "certificate_chain": {"filename": "/nonexistent/labxds/cert.pem"},
                "private_key": {"filename": "/nonexistent/labxds/key.pem"},
            }]},
        },
    }  # fmt: skip


BAD_CASES = [
    BadCase("listener_on_taken_port", LISTENER, "Address already in use",
            lambda b: b.with_listener("taken", b.taken.getsockname()[1])),
    BadCase("duplicate_listener_address", LISTENER, "duplicate address",
            lambda b: b.with_listener("twin", b.rig.listener_port)),
    BadCase("unknown_http_filter_type", LISTENER, "Didn't find a registered implementation",
            lambda b: b.with_listener("mystery", hcm=_unknown_http_filter)),
    BadCase("router_not_last_filter", LISTENER, "must be the last filter",
            lambda b: b.with_listener("buffered", hcm=_router_not_last)),
    BadCase("duplicate_filter_chains", LISTENER, "same matching rules",
            lambda b: b.with_listener("doubled", filter_chains=b.listener["filter_chains"] * 2)),
    BadCase("listener_without_filter_chains", LISTENER, "no filter chains",
            lambda b: b.with_listener("empty", filter_chains=[])),
    BadCase("logical_dns_with_two_endpoints", CLUSTER, "LOGICAL_DNS clusters must have a single",
            lambda b: b.with_cluster("two", load_assignment={"cluster_name": "two", "endpoints": [
                {"lb_endpoints": [b.endpoint("127.0.0.1", 1), b.endpoint("127.0.0.1", 2)]}]})),
    BadCase("static_cluster_with_hostname", CLUSTER, "malformed IP address",
            lambda b: b.with_cluster("named", type="STATIC", load_assignment={"cluster_name": "named", "endpoints": [
                {"lb_endpoints": [b.endpoint("service1.invalid", 80)]}]})),
    BadCase("zero_connect_timeout", CLUSTER, "value must be greater than 0s",
            lambda b: b.with_cluster("hasty", connect_timeout="0s")),
    BadCase("maglev_table_not_prime", CLUSTER, "must be prime",
            lambda b: b.with_cluster("maglev", lb_policy="MAGLEV", maglev_lb_config={"table_size": 1000})),
    BadCase("ring_hash_min_above_max", CLUSTER, "minimum_ring_size",
            lambda b: b.with_cluster("ring", lb_policy="RING_HASH",
                                     ring_hash_lb_config={"minimum_ring_size": "4096", "maximum_ring_size": "1024"})),
    BadCase("tls_key_file_missing", CLUSTER, "/nonexistent/labxds/key.pem",
            lambda b: b.with_cluster("tls", transport_socket=_tls_without_files())),
    BadCase("invalid_route_regex", ROUTE, "missing ]", lambda b: b.with_route(_bad_regex)),
    BadCase("two_wildcard_virtual_hosts", ROUTE, "Only a single wildcard domain", lambda b: b.with_route(_two_wildcard_hosts)),
    BadCase("two_path_rewrites", ROUTE, "Specify only one of", lambda b: b.with_route(_two_rewrites)),
    BadCase("validated_route_to_unknown_cluster", ROUTE, "unknown cluster 'ghost'",
            lambda b: b.with_route(_validated_unknown_cluster)),
]  # fmt: skip


@pytest.fixture(scope="module")
def bad_rig() -> Iterator[BadRig]:
    cp = ControlPlane(0).start()
    services = EchoFleet({"service1": 1, "service2": 1}).start()
    rig = Rig(cp, services, free_port())
    try:
        bad = BadRig(rig)
        cp.set_snapshot(Snapshot(bad.base, version="good-0"))
        rig.start_envoy()
        cp.wait_for_node(NODE)
        wait_until(lambda: rig.served_by() == "service1", 10, "Envoy serving service1")
        yield bad
        bad.taken.close()
    finally:
        rig.close()


@pytest.mark.parametrize("case", BAD_CASES, ids=[c.name for c in BAD_CASES])
def test_config_only_envoy_rejects_is_reported_never_resent_and_traffic_unhurt(bad_rig, case):
    rig, cp = bad_rig.rig, bad_rig.rig.cp
    bad = Snapshot(case.build(bad_rig), version=f"bad-{case.name}", check=False)
    with Traffic(rig.listener_port) as traffic:
        traffic.wait_for(5)
        started = time.monotonic()
        with pytest.raises(PushRejected) as info:
            rig.push(bad)
        reported = time.monotonic() - started
        errors = info.value.errors
        assert list(errors) == [(NODE, case.type_url)], errors
        assert case.expected in errors[(NODE, case.type_url)], errors
        # Wake the stream with the same snapshot again: the refused version must never go out again.
        cp.set_snapshot(bad)
        time.sleep(0.1)
        traffic.wait_for(5)
        sent = Counter(e.type_url for e in sent_events(cp) if e.version == bad.versions[e.type_url])
        assert sent[case.type_url] == 1 and set(sent.values()) == {1}, sent
        # The next good version is applied as usual.
        good = Snapshot(bad_rig.base, version=f"good-{case.name}")
        rig.push(good)
        traffic.wait_for(5)
    assert traffic.failed == 0, traffic.errors[:5]
    admin = rig.envoy.admin
    # push() returned: every stream of the node settled on `good`. CDS and LDS carry the full
    # state, so Envoy ACKed the new version itself (RDS is only resent when its content changes).
    status = rig.cp.node_status(NODE).types
    assert status[CLUSTER].acked_version == status[LISTENER].acked_version == f"good-{case.name}"
    clusters = admin.config_dump(resource="dynamic_active_clusters")["configs"]
    assert [c["cluster"]["name"] for c in clusters] == ["example_proxy_cluster"]
    listeners = running_listeners(admin)
    assert [n for n, state in listeners.items() if state.startswith("active")] == ["listener_0"], listeners
    record("4. bad config NACKed (ms)", **{case.name: round(reported * 1000, 1)})
    words = errors[(NODE, case.type_url)]
    record("4. Envoy's words", **{case.name: words if len(words) < 200 else f"{words[:80]} … {words[-110:]}"})


def running_listeners(admin: EnvoyAdmin) -> dict[str, str]:
    """What Envoy really runs, from /config_dump: "active <version>", "warming ...", "error: ..."."""
    out: dict[str, str] = {}
    for entry in admin.config_dump(resource="dynamic_listeners")["configs"]:
        name = entry.get("name")
        for state in ("active_state", "warming_state", "draining_state"):
            if state in entry:
                out[name] = f"{state.split('_')[0]} {entry[state].get('version_info', '')}"
                break
        else:
            if "error_state" in entry:
                out[name] = "error: " + entry["error_state"].get("details", "")
    return out


@pytest.mark.parametrize("delta", [False, True], ids=["sotw", "delta"])
def test_partly_applied_lds_update_is_reported_from_config_dump_and_rolled_back(make_rig, delta):
    """Rule 15: Envoy applies the valid listeners of a NACKed update; the next push must fix them."""
    rig = make_rig(delta=delta)
    base = [to_dict(m) for m in rig.resources("service1")]
    v1 = Snapshot(base, version="1")
    rig.push(v1)

    def listener(name: str, port: int) -> dict:
        extra = copy.deepcopy(base[2])
        extra["name"] = name
        extra["address"]["socket_address"]["port_value"] = port
        return extra

    extra_port = free_port()
    bad = Snapshot([*base, listener("extra", extra_port), listener("twin", rig.listener_port)], version="2")
    with pytest.raises(PushRejected) as info:
        rig.push(bad)
    assert "twin" in str(info.value) and "duplicate address" in str(info.value)
    really = running_listeners(rig.envoy.admin)
    # The control plane's view is the last ACKed version; Envoy runs more than that.
    assert rig.cp.node_status(NODE).types[LISTENER].acked_version == v1.version(LISTENER)
    assert really["extra"].startswith("active")
    assert really["twin"].startswith("error: ") and "duplicate address" in really["twin"]
    assert served_by(extra_port) == "service1"
    # Rolling back to the last good snapshot must take the half-applied listener away again.
    rig.push(v1)
    wait_until(lambda: not running_listeners(rig.envoy.admin).get("extra", "").startswith("active"), 5,
               "the half-applied listener to go away")
    wait_until(lambda: served_by(extra_port) is None, 5, "the extra port to close")
    assert rig.served_by() == "service1"
    record(f"4b. partial LDS NACK ({'delta' if delta else 'sotw'})", extra_listener_running_after_nack=True,
           removed_by_rollback=True)


# == 5. a client that never ACKs or never reads does not delay the others ======================


def _big_snapshot(node: str, size: int) -> Snapshot:
    """One cluster carrying ``size`` bytes of metadata: a response far beyond a flow-control window."""
    c = cluster(f"{node}-cluster", [("127.0.0.1", 9)], type="STATIC")
    blob = struct_pb2.Struct()
    blob.update({"blob": "x" * size})
    c.metadata.filter_metadata["labxds"].CopyFrom(blob)
    return Snapshot([c], version="big")


def _push_latencies(rig: Rig, count: int, tag: str) -> list[float]:
    out = []
    for i in range(count):
        snap = rig.snapshot("service2" if i % 2 == 0 else "service1", f"{tag}-{i}")
        started = time.perf_counter()
        rig.push(snap)
        out.append(time.perf_counter() - started)
    return out


def test_clients_that_never_ack_or_never_read_do_not_delay_envoy(make_rig):
    rig = make_rig()
    count = 15
    baseline = _push_latencies(rig, count, "base")
    address = rig.cp.address
    lazy = []
    for i in range(5):  # take every response, acknowledge none
        client = SotwClient(address, f"lazy-{i}")
        lazy.append(client)
        client.send(CLUSTER)
        client.send(LISTENER)
        client.recv()
        client.recv()
    stuck_channels, stuck_calls = [], []
    requests_open = threading.Event()
    for i in range(5):  # never read a byte: the server's write stalls on flow control
        node = f"stuck-{i}"
        rig.cp.set_snapshot(_big_snapshot(node, 2_000_000), node=node)
        channel = grpc.insecure_channel(address, options=[("grpc.http2.bdp_probe", 0),
                                                          ("grpc.max_receive_message_length", -1)])
        rpc = channel.stream_stream(ADS_SOTW, request_serializer=discovery_pb2.DiscoveryRequest.SerializeToString,
                                    response_deserializer=discovery_pb2.DiscoveryResponse.FromString)

        def requests(node: str = node) -> Iterator[discovery_pb2.DiscoveryRequest]:
            request = discovery_pb2.DiscoveryRequest(type_url=CLUSTER)
            request.node.id = node
            yield request
            requests_open.wait()

        stuck_channels.append(channel)
        stuck_calls.append(rpc(requests()))
    try:
        wait_until(lambda: rig.cp.stream_count == 11, 10, "the ten bad clients to connect")
        wait_until(lambda: all(sent_events(rig.cp, f"stuck-{i}") for i in range(5)), 10, "responses to the stuck clients")
        with_bad = _push_latencies(rig, count, "bad")
        # By default a push waits for every connected node: the silent ones make it time out, by name.
        with pytest.raises(PushTimeout) as info:
            rig.cp.push(rig.snapshot("service1", "final"), timeout=0.5)
        assert {f"lazy-{i}" for i in range(5)} <= set(info.value.missing)
        assert NODE not in info.value.missing
        base_median, bad_median = statistics.median(baseline), statistics.median(with_bad)
        record(
            "5. slow clients",
            push_ms_median_alone=base_median * 1000,
            push_ms_p90_alone=sorted(baseline)[int(count * 0.9)] * 1000,
            push_ms_median_with_10_bad_clients=bad_median * 1000,
            push_ms_p90_with_10_bad_clients=sorted(with_bad)[int(count * 0.9)] * 1000,
            stuck_response_bytes=2_000_000,
        )
        assert bad_median <= max(3 * base_median, base_median + 0.05), (baseline, with_bad)
        assert rig.cp.stream_count == 11  # and nobody was dropped
    finally:
        requests_open.set()
        for call in stuck_calls:
            call.cancel()
        for channel in stuck_channels:
            channel.close()
        for client in lazy:
            client.close()


# == 6. eight threads pushing 250 snapshots each ===============================================


class Reader:
    """Reads and ACKs every response of a test client, keeping the versions in arrival order."""

    def __init__(self, client: SotwClient | DeltaClient) -> None:
        self.client = client
        self.versions: list[str] = []
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                response = self.client.recv(timeout=0.2)
            except StreamEnded as exc:
                self.error = exc
                return
            except AssertionError:  # nothing within the timeout
                continue
            delta = isinstance(response, discovery_pb2.DeltaDiscoveryResponse)
            self.versions.append(response.system_version_info if delta else response.version_info)
            self.client.ack(response)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.client.close()


def test_eight_threads_push_250_snapshots_each_monotonic_and_converged(make_rig):
    threads_n, pushes = 8, 250
    rig = make_rig(version=None, envoy=False)
    host, port = rig.upstream("service1")

    def snap(name: str, version: int) -> Snapshot:
        c = cluster(name, [(host, port)], type="STATIC", connect_timeout=1 + version / 100_000)
        return Snapshot([c], version=str(version))

    rig.cp.set_snapshot(snap("shared", 0))
    for t in range(threads_n):
        rig.cp.set_snapshot(snap(f"own-{t}", 0), node=f"n{t}")
    rig.start_envoy()
    rig.cp.wait_for_node(NODE)
    address = rig.cp.address
    readers: dict[str, Reader] = {}
    for t in range(threads_n):
        readers[f"n{t} sotw"] = Reader(SotwClient(address, f"n{t}"))
    for t in (0, 1):
        readers[f"n{t} delta"] = Reader(DeltaClient(address, f"n{t}"))
    readers["default sotw"] = Reader(SotwClient(address, "somebody"))
    readers["default delta"] = Reader(DeltaClient(address, "somebody-else"))
    for reader in readers.values():
        reader.client.send(CLUSTER)

    lock = threading.Lock()
    counter = [0]
    barrier = threading.Barrier(threads_n)
    failures: list[BaseException] = []

    def pusher(t: int) -> None:
        try:
            barrier.wait()
            for i in range(1, pushes + 1):
                rig.cp.set_snapshot(snap(f"own-{t}", i), node=f"n{t}")
                with lock:  # the default snapshot's versions follow the order of the pushes
                    counter[0] += 1
                    rig.cp.set_snapshot(snap("shared", counter[0]))
        except BaseException as exc:  # noqa: BLE001 - reported below
            failures.append(exc)

    workers = [threading.Thread(target=pusher, args=(t,)) for t in range(threads_n)]
    started = time.monotonic()
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=60)
    pushed = time.monotonic() - started
    total = threads_n * pushes
    assert not failures, failures

    def final(key: str) -> str:
        return str(total) if key.startswith("default") else str(pushes)

    try:
        wait_until(lambda: all(r.versions and r.versions[-1] == final(k) for k, r in readers.items()), 20,
                   "every client to reach the last push")
        wait_until(lambda: (rig.cp.node_status(NODE).types[CLUSTER].acked_version == str(total)), 20,
                   "Envoy to ACK the last push")
        converged = time.monotonic() - started
        for key, reader in readers.items():
            assert reader.error is None, (key, reader.error)
            numbers = [int(v) for v in reader.versions]
            assert numbers == sorted(set(numbers)), f"{key} saw versions out of order: {numbers}"
        envoy_versions = [int(e.version) for e in sent_events(rig.cp) if e.type_url == CLUSTER]
        assert envoy_versions == sorted(set(envoy_versions)), envoy_versions
        dump = rig.envoy.admin.config_dump(resource="dynamic_active_clusters")["configs"]
        assert [(c["cluster"]["name"], c["version_info"]) for c in dump] == [("shared", str(total))]
        for t in range(threads_n):
            assert rig.cp.snapshot(f"n{t}").version(CLUSTER) == str(pushes)
        assert rig.cp.snapshot().version(CLUSTER) == str(total)
        record(
            "6. 8 threads x 250 pushes",
            pushes=total * 2,
            push_seconds=pushed,
            converged_s=converged,
            envoy_updates_received=len(envoy_versions),
            client_updates_received=sum(len(r.versions) for r in readers.values()),
        )
    finally:
        for reader in readers.values():
            reader.stop()


# == 7. stream connect/disconnect cycles: nothing leaks =======================================

CHURN_CLIENT = textwrap.dedent(
    """
    import asyncio, json, sys, time
    import grpc
    from envoy.service.discovery.v3 import discovery_pb2

    ADS = "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources"
    CLUSTER = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
    address, nodes, batch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])

    async def cycle(channel, i):
        call = channel.stream_stream(ADS, request_serializer=discovery_pb2.DiscoveryRequest.SerializeToString,
                                     response_deserializer=discovery_pb2.DiscoveryResponse.FromString)()
        request = discovery_pb2.DiscoveryRequest(type_url=CLUSTER)
        request.node.id = f"churn-{i % nodes}"
        await call.write(request)
        response = await call.read()
        assert response.version_info, response
        if i % 2:
            call.cancel()  # an abrupt end (RST_STREAM)
        else:
            await call.done_writing()  # a clean end: the server finishes the stream
            assert await call.read() is grpc.aio.EOF
            assert await call.code() == grpc.StatusCode.OK

    async def run(cycles):
        for start in range(0, cycles, batch):
            async with grpc.aio.insecure_channel(address) as channel:  # a new connection per batch
                await asyncio.gather(*(cycle(channel, i) for i in range(start, min(start + batch, cycles))))

    for line in sys.stdin:
        cycles = int(line)
        started = time.monotonic()
        asyncio.run(run(cycles))
        print(json.dumps({"cycles": cycles, "seconds": time.monotonic() - started}), flush=True)
    """
)


def churn_client(address: str, nodes: int = 16, batch: int = 50) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", CHURN_CLIENT, address, str(nodes), str(batch)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def churn(client: subprocess.Popen, cycles: int) -> dict:
    assert client.stdin is not None and client.stdout is not None
    client.stdin.write(f"{cycles}\n")
    client.stdin.flush()
    line = client.stdout.readline()
    assert line, f"the churn client died (exit {client.wait(5)})"
    return json.loads(line)


def server_state(cp: ControlPlane) -> dict[str, int]:
    gc.collect()
    return {
        "threads": threading.active_count(),
        "tasks": server_tasks(cp),
        "streams": cp.stream_count,
        "watchers": sum(len(w) for w in cp.cache._watchers.values()),
        "settled": len(cp.tracker._settled),
        "fds": len(os.listdir("/proc/self/fd")),
        "rss": rss_bytes(),
    }


def test_stream_churn_returns_threads_tasks_and_memory_to_their_level(make_rig):
    cycles = 1000
    rig = make_rig()
    client = churn_client(rig.cp.address)
    try:
        churn(client, 300)  # warm up: allocator arenas, gRPC's pools, the trace deques
        wait_until(lambda: rig.cp.stream_count == 1, 10, "warm-up streams to end")
        before = server_state(rig.cp)
        result = churn(client, cycles)
        wait_until(lambda: rig.cp.stream_count == 1, 10, "the churned streams to end")
        after = server_state(rig.cp)
    finally:
        client.stdin.close()
        client.wait(10)
    grown = after["rss"] - before["rss"]
    record(
        "7. stream churn (test)",
        cycles=cycles,
        cycles_per_s=cycles / result["seconds"],
        rss_growth_kib=grown // 1024,
        **{f"{k}_before": before[k] for k in before if k != "rss"},
        **{f"{k}_after": after[k] for k in after if k != "rss"},
    )
    # Exact: every stream's task, watcher and settled mark is gone; no thread was left behind.
    for key in ("threads", "tasks", "streams", "watchers", "settled"):
        assert after[key] == before[key], (key, before, after)
    assert after["fds"] <= before["fds"] + 2, (before, after)  # one pending accept/epoll at most
    # Memory: 1,000 streams' garbage must not stay. 8 MiB leaves room for allocator noise and the
    # (bounded, 2,000-event) trace deques of the 16 node ids; a leak of ~8 KiB per stream fails.
    assert grown < 8 * 1024 * 1024, f"RSS grew {grown / 1e6:.1f} MB over {cycles} streams"
    rig.push(rig.snapshot("service2", "after-churn"))
    wait_until(lambda: rig.served_by() == "service2", 10, "Envoy still updated after the churn")


# == 8. malformed requests =====================================================================


def still_serving(rig: Rig, tag: str) -> None:
    """Everyone else is still served: Envoy takes and applies a new version."""
    rig.push(rig.snapshot("service2", f"after-{tag}"))
    wait_until(lambda: rig.served_by() == "service2", 10, f"Envoy served after {tag}")


def test_unknown_type_urls_are_ignored_and_the_stream_goes_on(make_rig):
    rig = make_rig()
    for client in (SotwClient(rig.cp.address, "odd-sotw"), DeltaClient(rig.cp.address, "odd-delta")):
        with client:
            client.send("type.googleapis.com/no.such.Type")
            client.send("type.googleapis.com/google.protobuf.Empty")
            client.expect_nothing(0.3)
            client.send(CLUSTER)
            response = client.recv()
            assert response.type_url == CLUSTER
    still_serving(rig, "unknown-types")


@pytest.mark.parametrize("node", [None, ""], ids=["no-node", "empty-id"])
def test_first_request_without_a_node_is_refused_with_invalid_argument(make_rig, node):
    rig = make_rig()
    for cls in (SotwClient, DeltaClient):
        with cls(rig.cp.address, node) as client:
            client.send(CLUSTER)
            ended = client.ended()
            assert ended.code == grpc.StatusCode.INVALID_ARGUMENT
            assert "node" in ended.details
    still_serving(rig, "no-node")


def test_nonces_never_sent_are_ignored(make_rig):
    rig = make_rig()
    with SotwClient(rig.cp.address, "forger") as client:
        # Before the stream answered a type, a nonce can only be another stream's: the request
        # counts as an initial one (a reconnecting client echoing its old stream's nonce).
        client.send(CLUSTER, version="7", nonce="424242")
        response = client.recv()
        # Once answered, a nonce this stream never sent is stale: ignored, NACK or not.
        client.send(CLUSTER, version=response.version_info, nonce="nope", error="fake NACK")
        client.send(CLUSTER, version=response.version_info, nonce="99")
        client.expect_nothing(0.3)
        kinds = [e.kind for e in rig.cp.tracker.events("forger") if e.direction == "received"]
        assert kinds == ["request", "stale", "stale"]
        assert rig.cp.node_status("forger").types[CLUSTER].nacked_version is None
        assert rig.cp.node_status("forger").types[CLUSTER].acked_version is None
    with DeltaClient(rig.cp.address, "forger-delta") as client:
        # Delta honours the subscription even with a stale nonce (rule 13), nothing else.
        client.send(CLUSTER, nonce="424242")
        response = client.recv()
        client.send(CLUSTER, nonce="not-mine", error="fake NACK")
        client.expect_nothing(0.3)
        assert rig.cp.node_status("forger-delta").types[CLUSTER].nacked_version is None
        client.ack(response)
    still_serving(rig, "nonces")


def test_twenty_thousand_resource_names(make_rig):
    rig = make_rig()
    snap = Snapshot([load_assignment("real", ["127.0.0.1:1"])], version="1")
    rig.cp.set_snapshot(snap, node="greedy")
    rig.cp.set_snapshot(snap, node="greedy-delta")
    names = [f"name-{i:05d}" for i in range(20_000)] + ["real"]
    timings = {}
    for cls, node in ((SotwClient, "greedy"), (DeltaClient, "greedy-delta")):
        with cls(rig.cp.address, node) as client:
            started = time.perf_counter()
            client.send(ENDPOINT, names)
            response = client.recv()
            timings[cls.__name__] = time.perf_counter() - started
            assert [r for r in _names(response)] == ["real"]
    record("8. malformed: 20,000 names", **{f"{k}_ms": v * 1000 for k, v in timings.items()})
    still_serving(rig, "20k-names")


def _names(response: Any) -> list[str]:
    if isinstance(response, discovery_pb2.DeltaDiscoveryResponse):
        return [r.name for r in response.resources]
    from xds_client import names

    return names(response)


@pytest.mark.parametrize("payload", [b"\x00" * 64, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "random"],
                         ids=["zeros", "http1", "random"])
def test_garbage_bytes_on_the_port_close_that_connection_only(make_rig, payload):
    rig = make_rig()
    data = os.urandom(8192) if payload == "random" else payload
    with socket.create_connection(("127.0.0.1", rig.cp.port), timeout=5) as sock:
        sock.sendall(data)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            chunk = sock.recv(65536)  # raises socket.timeout if the server never closes
            if not chunk:
                break
        else:
            raise AssertionError("the server kept a garbage connection open")
    assert rig.cp.stream_count == 1
    still_serving(rig, "garbage")


@pytest.mark.parametrize("method", [ADS_SOTW, ADS_DELTA], ids=["sotw", "delta"])
def test_unparseable_request_ends_that_stream_with_invalid_argument(make_rig, method):
    rig = make_rig()
    with grpc.insecure_channel(rig.cp.address) as channel:
        rpc = channel.stream_stream(method, request_serializer=lambda b: b, response_deserializer=lambda b: b)
        call = rpc(iter([b"\x0a\xff\xff\xff\xff\xff\xff"]), timeout=5)
        with pytest.raises(grpc.RpcError):
            for _ in call:
                pass
        assert call.code() == grpc.StatusCode.INVALID_ARGUMENT, (call.code(), call.details())
        assert "parse" in call.details()
        unknown = channel.stream_stream("/envoy.service.discovery.v3.AggregatedDiscoveryService/Nope",
                                        request_serializer=lambda b: b, response_deserializer=lambda b: b)
        with pytest.raises(grpc.RpcError) as info:
            next(unknown(iter([b""]), timeout=5))
        assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
    with SotwClient(rig.cp.address, "confused", service=ENDPOINT) as client:
        client.send(CLUSTER)  # a cluster request on the endpoint service
        ended = client.ended()
        assert ended.code == grpc.StatusCode.INVALID_ARGUMENT and "serves" in ended.details
    still_serving(rig, "unparseable")
