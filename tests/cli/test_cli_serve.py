"""``python -m labxds serve --snapshot DIR`` as a process: serves Envoy, follows edits, stops cleanly."""

from __future__ import annotations

import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml
from envoy_helpers import free_port, presented_certificate, serial_hex
from snapshot_files_helpers import (
    atomic_write,
    cluster_version,
    curl,
    wait_cluster_version,
    write_sandbox,
)

from labxds import CLUSTER
from labxds.envoy import Envoy, render_bootstrap
from labxds.files import load_path
from labxds.lab import EchoService

REPO = Path(__file__).resolve().parents[2]
SERVING = re.compile(r"serving ADS \(SotW and Delta\) on 127\.0\.0\.1:(\d+) from ")


class Serve:
    """The CLI in a subprocess, its stdout and stderr collected line by line."""

    def __init__(self, *paths: Path, port: int = 0, extra: tuple[str, ...] = ()) -> None:
        args = [sys.executable, "-m", "labxds", "serve", "--snapshot", *map(str, paths), "--port", str(port), *extra]
        self.proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.out: queue.Queue[str] = queue.Queue()
        self.stderr: list[str] = []
        self._err_lock = threading.Lock()
        threading.Thread(target=self._pump, args=(self.proc.stdout, self.out.put), daemon=True).start()
        threading.Thread(target=self._pump, args=(self.proc.stderr, self._add_err), daemon=True).start()

    @staticmethod
    def _pump(stream, sink) -> None:
        for line in stream:
            sink(line.rstrip("\n"))

    def _add_err(self, line: str) -> None:
        with self._err_lock:
            self.stderr.append(line)

    def serving_port(self, timeout: float = 20.0) -> int:
        """Wait for the one line saying what is served where; return the ADS port."""
        try:
            line = self.out.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no 'serving' line; stderr: {self.stderr}") from None
        m = SERVING.search(line)
        assert m, line
        self.line = line
        return int(m.group(1))

    def wait_stderr(self, pattern: str, timeout: float = 10.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._err_lock:
                hit = next((line for line in self.stderr if re.search(pattern, line)), None)
            if hit is not None:
                return hit
            assert self.proc.poll() is None, f"serve exited with {self.proc.returncode}: {self.stderr}"
            time.sleep(0.02)
        raise AssertionError(f"nothing matching {pattern!r} on stderr: {self.stderr}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        finally:
            self.kill()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


@pytest.fixture
def serve_proc():
    started: list[Serve] = []

    def start(*paths: Path, port: int = 0, extra: tuple[str, ...] = ()) -> Serve:
        started.append(Serve(*paths, port=port, extra=extra))
        return started[-1]

    yield start
    for s in started:
        s.kill()


@pytest.mark.envoy
def test_serve_drives_envoy_follows_edits_survives_a_bad_file_and_stops_on_sigterm(tmp_path, serve_proc):
    with EchoService("service1") as one, EchoService("service2") as two:
        listener = free_port()
        write_sandbox(tmp_path, "127.0.0.1", one.port, listener_port=listener, version=None)
        serve = serve_proc(tmp_path)
        xds_port = serve.serving_port()
        assert "default version" not in serve.line  # no version_info: content hashes, per type
        assert "1 cluster (version " in serve.line and "1 listener" in serve.line and "1 route configuration" in serve.line
        with Envoy(render_bootstrap(xds_port=xds_port, admin_port=0)) as envoy:
            assert "Request served by service1" in curl(listener, expect="service1")
            assert cluster_version(envoy) == load_path(tmp_path).version(CLUSTER)

            cds = tmp_path / "cds.yaml"
            atomic_write(cds, cds.read_text().replace(f"port_value: {one.port}", f"port_value: {two.port}"))
            new_version = load_path(tmp_path).version(CLUSTER)
            took = wait_cluster_version(envoy, new_version)
            print(f"\nfile change -> Envoy config_dump through the CLI: {took * 1000:.0f} ms")
            assert "Request served by service2" in curl(listener, expect="service2")
            serve.wait_stderr(r"pushed 1 cluster \(version .*\(changed: CDS\)")

            lds = tmp_path / "lds.yaml"
            lds.write_text(lds.read_text().replace("stat_prefix: http", "stat_prefx: http"))
            reported = serve.wait_stderr(re.escape(str(lds)))
            assert "unknown field 'stat_prefx'" in reported and "still serving" in reported
            time.sleep(0.3)
            assert serve.proc.poll() is None
            assert cluster_version(envoy) == new_version
            assert "Request served by service2" in curl(listener, expect="service2")

            assert serve.stop(signal.SIGTERM) == 0
        assert not any("Traceback" in line for line in serve.stderr), serve.stderr


def test_serve_stops_cleanly_on_sigint(tmp_path, serve_proc):
    write_sandbox(tmp_path, version="1")
    serve = serve_proc(tmp_path)
    serve.serving_port()
    assert "default version 1: 1 cluster, 1 listener, 1 route configuration" in serve.line
    assert serve.stop(signal.SIGINT) == 0
    assert not any("Traceback" in line for line in serve.stderr), serve.stderr


def test_bad_file_at_startup_exits_2_naming_file_line_and_reason(tmp_path, serve_proc):
    write_sandbox(tmp_path)
    cds = tmp_path / "cds.yaml"
    cds.write_text(cds.read_text().replace("type: LOGICAL_DNS", "type: LOGICAL"))
    serve = serve_proc(tmp_path)
    assert serve.proc.wait(20) == 2
    time.sleep(0.1)  # let the pump threads drain
    text = "\n".join(serve.stderr)
    line = next(i for i, s in enumerate(cds.read_text().splitlines(), 1) if "type: LOGICAL" in s)
    assert f"{cds}:{line}: resource #0 (example_proxy_cluster): field type: unknown value 'LOGICAL'" in text
    assert "Traceback" not in text
    assert serve.out.empty()


def test_missing_path_exits_2(tmp_path, serve_proc):
    serve = serve_proc(tmp_path / "nowhere")
    assert serve.proc.wait(20) == 2
    time.sleep(0.1)
    assert f"{tmp_path / 'nowhere'}: no such file or directory" in "\n".join(serve.stderr)


def test_serve_over_mutual_tls_ties_node_ids_and_picks_up_a_renewed_certificate(tmp_path, serve_proc):
    """``serve --tls DIR --tie-node-ids``: plaintext and foreign certificates are refused at the
    handshake, a certificate serves only the node it names, and a renewed server certificate is
    presented from the next connection on, with no restart."""
    import grpc
    from xds_client import ads_once, tls_channel

    from labxds.tls import (
        channel_credentials,
        make_ca,
        renew_server_certificate,
        write_tls_files,
    )

    ca = make_ca()
    files = write_tls_files(tmp_path / "tls", client_name="edge-1", ca=ca)
    other = write_tls_files(tmp_path / "other", client_name="edge-1")  # the same name from another CA
    write_sandbox(tmp_path / "snap", version="1")
    serve = serve_proc(tmp_path / "snap", extra=("--tls", str(tmp_path / "tls"), "--tie-node-ids"))
    port = serve.serving_port()
    assert "watching for changes; mutual TLS, node ids tied to client certificates (Ctrl-C" in serve.line
    with tls_channel(port, channel_credentials(files)) as channel:
        assert ads_once(channel, "edge-1").type_url == CLUSTER
        with pytest.raises(grpc.RpcError) as info:
            ads_once(channel, "edge-2")  # edge-1's certificate, another node id
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    for credentials in (channel_credentials(other), channel_credentials(files, client_certificate=False)):
        with tls_channel(port, credentials) as channel, pytest.raises(grpc.RpcError) as info:
            ads_once(channel, "edge-1")
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    with grpc.insecure_channel(f"127.0.0.1:{port}") as plain, pytest.raises(grpc.RpcError):
        ads_once(plain, "edge-1")

    renewed = renew_server_certificate(files, ca).certificate.serial_number
    assert presented_certificate(port, files.client_cert, files.client_key).serial_number == renewed
    serve.wait_stderr(f"new connections to the ADS port get server.pem serial {serial_hex(renewed)}")
    with tls_channel(port, channel_credentials(files)) as channel:
        assert ads_once(channel, "edge-1").type_url == CLUSTER
    assert serve.stop() == 0


def test_serve_refuses_to_start_on_bad_tls_files(tmp_path):
    write_sandbox(tmp_path / "snap", version="1")
    (tmp_path / "tls").mkdir()
    run = subprocess.run([sys.executable, "-m", "labxds", "serve", "--snapshot", str(tmp_path / "snap"),
                          "--port", "0", "--tls", str(tmp_path / "tls")],
                         cwd=REPO, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert run.returncode == 2
    assert f"labxds: cannot serve over TLS: {tmp_path / 'tls' / 'server-key.pem'}: cannot read it" in run.stderr
    run = subprocess.run([sys.executable, "-m", "labxds", "serve", "--snapshot", str(tmp_path / "snap"),
                          "--port", "0", "--tie-node-ids"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and "--tie-node-ids needs --tls" in run.stderr


def _alias_bomb(depth: int = 8, width: int = 9) -> str:
    """About 1 KB of YAML: each anchor a list of ``width`` aliases of the one before (9^8 values)."""
    lines = ['a0: &a0 ["lol"]']
    for i in range(1, depth + 1):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]")
    lines += [
        "resources:",
        '- "@type": type.googleapis.com/envoy.config.cluster.v3.Cluster',
        "  name: bomb",
        "  metadata: {filter_metadata: {x: {v: *a%d}}}" % depth,
    ]
    return "\n".join(lines) + "\n"


def test_an_alias_bomb_is_refused_at_once_the_last_good_snapshot_stays_and_sigterm_stops(tmp_path, serve_proc):
    """Issue 17: anchors and aliases 8 deep x 9 made serve spin at 100 % CPU, grow past 700 MB and
    ignore SIGTERM. Now the expansion is measured before it happens and refused."""
    import grpc
    from xds_client import ads_once

    write_sandbox(tmp_path, version="1")
    serve = serve_proc(tmp_path)
    port = serve.serving_port()
    bomb = _alias_bomb()
    assert len(bomb) < 1024
    t0 = time.monotonic()
    atomic_write(tmp_path / "zz-bomb.yaml", bomb)
    reported = serve.wait_stderr(r"zz-bomb\.yaml", timeout=10)
    took = time.monotonic() - t0
    print(f"\nalias bomb refused {took * 1000:.0f} ms after it was saved")
    assert "refused: it expands to more than 5,000,000 values" in reported and "still serving" in reported
    assert re.search(r"zz-bomb\.yaml:\d+: ", reported)  # file and line
    assert took < 5
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        response = ads_once(channel, "after-the-bomb")
    assert response.version_info == "1"  # the last good snapshot
    t0 = time.monotonic()
    assert serve.stop(signal.SIGTERM, timeout=15) == 0
    assert time.monotonic() - t0 < 5


def test_an_alias_bomb_at_startup_exits_2_at_once(tmp_path, serve_proc):
    (tmp_path / "bomb.yaml").write_text(_alias_bomb())
    t0 = time.monotonic()
    serve = serve_proc(tmp_path)
    assert serve.proc.wait(20) == 2
    assert time.monotonic() - t0 < 10
    time.sleep(0.1)
    text = "\n".join(serve.stderr)
    assert f"{tmp_path / 'bomb.yaml'}:" in text and "expands to more than" in text


DYNAMIC_CONFIG_FS = REPO / "examples" / "dynamic-config-fs"


def _dynamic_config_fs(tmp: Path, upstream_port: int, listener_port: int) -> Path:
    """examples/dynamic-config-fs/configs in ``tmp``: only the addresses changed (the echo
    service on loopback for service1:8080, the listener on loopback, a free port)."""
    configs = tmp / "configs"
    configs.mkdir()
    for name in ("cds.yaml", "lds.yaml"):
        text = (DYNAMIC_CONFIG_FS / "configs" / name).read_text()
        for old, new in (
            ("address: service1", "address: 127.0.0.1"), ("port_value: 8080", f"port_value: {upstream_port}"),
            ("address: 0.0.0.0", "address: 127.0.0.1"), ("port_value: 10000", f"port_value: {listener_port}"),
        ):
            text = text.replace(old, new)
        (configs / name).write_text(text)
    return configs


def _dynamic_config(envoy: Envoy) -> dict[str, dict]:
    """The cluster and listener Envoy runs, as /config_dump shows them (versions and times aside)."""
    found = {}
    for config in envoy.admin.config_dump()["configs"]:
        for entry in config.get("dynamic_active_clusters", []):
            found["cluster " + entry["cluster"]["name"]] = entry["cluster"]
        for entry in config.get("dynamic_listeners", []):
            if "active_state" in entry:
                found["listener " + entry["name"]] = entry["active_state"]["listener"]
    return found


@pytest.mark.envoy
def test_dynamic_config_fs_files_serve_unchanged_over_ads(tmp_path):
    """Envoy's "Dynamic configuration (filesystem)" layout, read first by Envoy itself (a
    path_config_source per file, as in envoy-fs.yaml), then served by ``labxds serve`` to an
    Envoy over ADS: the same cluster and listener, the listener's ``filters`` a single mapping as
    the sandbox writes it; then an edit of cds.yaml moves the traffic to service2."""
    with EchoService("service1") as one, EchoService("service2") as two:
        listener = free_port()
        configs = _dynamic_config_fs(tmp_path, one.port, listener)
        lds = (configs / "lds.yaml").read_text()
        assert "  - filters:\n      name: envoy.filters.network.http_connection_manager\n" in lds  # one mapping

        fs_bootstrap = yaml.safe_load((DYNAMIC_CONFIG_FS / "envoy-fs.yaml").read_text())
        for kind in ("cds_config", "lds_config"):
            source = fs_bootstrap["dynamic_resources"][kind]["path_config_source"]
            source["path"] = str(configs / Path(source["path"]).name)
        with Envoy(fs_bootstrap, admin_port=0) as reading_files:
            assert "Request served by service1" in curl(listener, expect="service1")
            from_files = _dynamic_config(reading_files)
        assert sorted(from_files) == ["cluster example_proxy_cluster", "listener listener_0"]

        serve = Serve(configs, port=0)
        try:
            xds_port = serve.serving_port()
            assert "1 cluster" in serve.line and "1 listener" in serve.line
            with Envoy(render_bootstrap(xds_port=xds_port, admin_port=0)) as over_ads:
                assert "Request served by service1" in curl(listener, expect="service1")
                assert _dynamic_config(over_ads) == from_files

                cds = configs / "cds.yaml"  # as the sandbox does it: sed -i
                atomic_write(cds, cds.read_text().replace(f"port_value: {one.port}", f"port_value: {two.port}"))
                assert "Request served by service2" in curl(listener, expect="service2")
            assert serve.stop() == 0
        finally:
            serve.kill()
        assert not any("Traceback" in line for line in serve.stderr), serve.stderr
