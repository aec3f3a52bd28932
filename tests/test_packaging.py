"""How labxds installs, and the rule that keeps its layers apart.

* `pip install .` with no extras gives a control plane that serves ADS, without pandas, Jupyter,
  an HTTP client or Envoy's binary; each extra then brings its layer.
* import-linter's contracts pass, and they do catch an import that runs upward.

The install tests build a virtual environment of their own (pip's cache makes the second run
quick); they need the package index, like `make venv`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

#: Run in the clean environment: a real ADS exchange, and what must not be there.
ENGINE_ONLY = textwrap.dedent("""
    import importlib.util, shutil, sys
    import grpc
    from envoy.service.discovery.v3 import discovery_pb2
    from labxds import CLUSTER, ControlPlane, Snapshot, cluster
    absent = [m for m in ("pandas", "httpx", "ipywidgets", "jupyterlab", "tqdm", "cryptography")
              if importlib.util.find_spec(m) is not None]
    assert not absent, f"installed without being asked for: {absent}"
    assert shutil.which("envoy", path=sys.prefix + "/bin") is None, "Envoy's binary came with the core"
    with ControlPlane(port=0) as cp:
        cp.set_snapshot(Snapshot([cluster("web", [("127.0.0.1", 8080)], type="STATIC")], version="7"))
        with grpc.insecure_channel(f"127.0.0.1:{cp.port}") as channel:
            rpc = channel.stream_stream(
                "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources",
                request_serializer=discovery_pb2.DiscoveryRequest.SerializeToString,
                response_deserializer=discovery_pb2.DiscoveryResponse.FromString)
            request = discovery_pb2.DiscoveryRequest(type_url=CLUSTER)
            request.node.id = "engine-only"
            call = rpc(iter([request]), timeout=10)
            response = next(call)
            call.cancel()
    assert response.version_info == "7" and len(response.resources) == 1, response
    print("ADS OK", response.version_info)
""")


def _run(args: list[str], **kw) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return subprocess.run(args, capture_output=True, text=True, env=env, timeout=600, **kw)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """labxds built once, as a wheel, from the repository's tracked files."""
    out = tmp_path_factory.mktemp("wheel")
    built = _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), str(REPO)])
    assert built.returncode == 0, built.stderr[-2000:]
    shutil.rmtree(REPO / "build", ignore_errors=True)
    (found,) = out.glob("labxds-*.whl")
    return found


def _venv(where: Path) -> Path:
    venv = where / "venv"
    made = _run([sys.executable, "-m", "venv", str(venv)])
    if made.returncode != 0:
        pytest.skip(f"cannot make a virtual environment here: {made.stderr.strip()[-300:]}")
    return venv


def _pip(venv: Path, *args: str) -> None:
    done = _run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", *args])
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]


def _python(venv: Path, code: str) -> subprocess.CompletedProcess[str]:
    return _run([str(venv / "bin" / "python"), "-c", code], cwd=venv)  # not the repo: the installed copy


@pytest.mark.install
@pytest.mark.timeout(600)
def test_no_extras_is_a_working_control_plane_and_lab_and_classroom_add_their_layers(
    wheel: Path, tmp_path: Path
) -> None:
    venv = _venv(tmp_path)
    _pip(venv, str(wheel))
    engine = _python(venv, ENGINE_ONLY)
    assert engine.returncode == 0 and "ADS OK 7" in engine.stdout, engine.stderr[-2000:]
    served = _run([str(venv / "bin" / "labxds"), "serve", "--help"])
    assert served.returncode == 0 and "--snapshot" in served.stdout
    up = _run([str(venv / "bin" / "labxds"), "up"])  # needs labxds[lab]: says so, no traceback
    assert up.returncode == 2 and "pip install 'labxds[lab]'" in up.stderr and "Traceback" not in up.stderr
    lab = _python(venv, "import labxds; labxds.Lab")
    assert lab.returncode != 0 and "ModuleNotFoundError" in lab.stderr

    _pip(venv, f"{wheel}[lab]")  # Envoy's binary, the HTTP client: the lab's processes
    done = _python(venv, "from labxds.envoy import find_envoy; from labxds.lab import LabRuntime; print(find_envoy())")
    assert done.returncode == 0 and done.stdout.strip().endswith("envoy"), done.stderr[-2000:]
    missing_certs = _python(venv, "import labxds.tls; labxds.tls.make_ca")
    assert "pip install 'labxds[classroom]'" in missing_certs.stderr
    _pip(venv, f"{wheel}[classroom]")  # certificates: the workshop
    done = _python(venv, "import labxds.classroom, labxds.tls; labxds.tls.make_ca()")
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.mark.install
@pytest.mark.timeout(1200)
@pytest.mark.skipif(not os.environ.get("LABXDS_TEST_NOTEBOOK_EXTRA"),
                    reason="the notebook extra installs JupyterLab (about 3 min): make test-install runs it")
def test_the_notebook_extra_brings_the_notebook_layer(wheel: Path, tmp_path: Path) -> None:
    venv = _venv(tmp_path)
    _pip(venv, f"{wheel}[notebook]")
    done = _python(venv, "import labxds; from labxds.notebook import Dashboard, UpstreamToggle; "
                         "print(labxds.Lab.__module__)")
    assert done.returncode == 0 and "labxds.notebook.lab" in done.stdout, done.stderr[-2000:]


def test_the_layer_contracts_hold() -> None:
    done = _run([str(Path(sys.executable).parent / "lint-imports"), "--no-cache"], cwd=REPO)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 broken" in done.stdout


def test_an_import_that_runs_upward_breaks_the_contract(tmp_path: Path) -> None:
    """The check is real: the engine importing the notebook layer, or files importing tls, fails it."""
    shutil.copytree(REPO / "labxds", tmp_path / "labxds", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    lint = str(Path(sys.executable).parent / "lint-imports")
    env_path = {"PYTHONPATH": str(tmp_path)}
    for module, line, culprit in [
        ("xds/snapshot.py", "from ..notebook import tables as _up", "labxds.xds.snapshot -> labxds.notebook"),
        ("files/describe.py", "from ..tls import names as _side", "labxds.files.describe -> labxds.tls"),
        ("xds/wire.py", "import pandas as _pandas", "labxds.xds.wire -> pandas"),
    ]:
        target = tmp_path / "labxds" / module
        original = target.read_text()
        target.write_text(original + f"\n{line}\n")
        done = subprocess.run([lint, "--no-cache"], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                              env={**os.environ, **env_path})
        target.write_text(original)
        assert done.returncode != 0 and "BROKEN" in done.stdout, done.stdout
        assert culprit in done.stdout, done.stdout
