"""What the hub's spawner hook gives a learner's server: ports of their own, enrollment, env."""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

import pytest

from labxds.classroom.spawn import (
    ENV,
    PortBlock,
    enroll,
    learner_ports,
    make_pre_spawn_hook,
    server_proxy_servers,
    tls_files_from_env,
)


def test_port_blocks_never_overlap_and_stay_with_the_user():
    block = PortBlock(base=30000)
    seen: set[int] = set()
    for user_id in range(1, 200):
        ports = set(block.ports(user_id).values())
        assert len(ports) == 4 and not ports & seen
        seen |= ports
    assert block.ports(7) == block.ports(7) == {"admin": 30028, "listener": 30029, "service1": 30030, "service2": 30031}
    with pytest.raises(ValueError, match="beyond 65535"):
        block.ports(9000)
    with pytest.raises(ValueError, match="cannot hold"):
        PortBlock(size=2).ports(1)


def test_a_port_in_use_is_named_with_the_learner():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        block = PortBlock(base=port - 4 * 3 - 1)  # user 3's listener is the busy port
        with pytest.raises(RuntimeError, match=rf"port {port} \(listener of learner 'carol', hub user id 3\)"):
            learner_ports(block, 3, "carol")


def test_the_environment_names_the_lab_reads(monkeypatch):
    env = learner_ports(PortBlock(base=31000), 2, "bob")
    assert env == {"LABXDS_ADMIN_PORT": "31008", "LABXDS_LISTENER_PORT": "31009",
                   "LABXDS_SERVICE_PORTS": "service1=31010,service2=31011"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    from labxds.lab import LabRuntime

    lab = LabRuntime(control_plane="127.0.0.1:18000", node_id="bob")
    assert (lab.admin_port, lab.listener_port) == (31008, 31009)
    assert lab.service_ports == {"service1": 31010, "service2": 31011}
    servers = server_proxy_servers()
    assert servers["envoy-admin"]["port"] == 31008 and servers["envoy"]["port"] == 31009


class _Workshop(BaseHTTPRequestHandler):
    calls: list[tuple[str, str]] = []

    def log_message(self, *args: object) -> None:
        pass

    def do_POST(self) -> None:  # noqa: N802
        self.calls.append((self.path, self.headers.get("Authorization", "")))
        if self.headers.get("Authorization") != "token hub-secret":
            self.send_response(403)
            self.end_headers()
            self.wfile.write(b'{"error": "enrollment is for the hub"}')
            return
        body = b'{"token": "t-1", "control_plane": "127.0.0.1:18000", "desk": "http://127.0.0.1:1/d"}'
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def workshop_url():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Workshop)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/services/workshop"
    server.shutdown()
    server.server_close()


def spawner(name: str, user_id: int) -> SimpleNamespace:
    return SimpleNamespace(user=SimpleNamespace(name=name, id=user_id), environment={},
                           log=logging.getLogger("test"))  # fmt: skip


def test_the_hook_enrolls_and_sets_the_environment(workshop_url):
    hook = make_pre_spawn_hook(workshop_url, lambda: "hub-secret", ports=PortBlock(base=32000),
                               instructors=["teacher"])  # fmt: skip
    alice = spawner("alice", 1)
    asyncio.run(hook(alice))
    assert _Workshop.calls[-1] == ("/services/workshop/v1/enroll/alice", "token hub-secret")
    env = alice.environment
    assert env[ENV["node_id"]] == "alice" and env[ENV["token"]] == "t-1"
    assert env[ENV["control_plane"]] == "127.0.0.1:18000" and env[ENV["admin_port"]] == "32004"
    teacher = spawner("teacher", 2)
    asyncio.run(hook(teacher))
    assert teacher.environment == {ENV["workshop"]: workshop_url}  # an instructor is not enrolled
    assert _Workshop.calls[-1][0].endswith("/alice")


def test_a_refused_or_absent_workshop_is_said_plainly(workshop_url):
    with pytest.raises(RuntimeError, match="refused to enroll 'alice'.*HTTP 403"):
        enroll(workshop_url, "alice", "wrong")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}/services/workshop"
    with pytest.raises(RuntimeError, match="did not answer .* within 0.5s"):
        enroll(dead, "alice", "hub-secret", timeout=0.5)


def test_tls_files_from_the_environment(tmp_path):
    assert tls_files_from_env(tmp_path, {}) is None
    env = {ENV["tls_ca_pem"]: "CA", ENV["tls_cert_pem"]: "CERT", ENV["tls_key_pem"]: "KEY"}
    ca, cert, key = tls_files_from_env(tmp_path / "tls", env)
    assert [open(p).read() for p in (ca, cert, key)] == ["CA", "CERT", "KEY"]
    assert (tmp_path / "tls" / "learner-key.pem").stat().st_mode & 0o077 == 0
