"""The JupyterHub deployment files, checked without a cluster (deploy/jupyterhub/).

No Kubernetes runs here. What is checked: the manifests parse and pass Kubernetes' own schemas
(kubernetes-validate, strict, for the oldest version Zero to JupyterHub supports); the Helm
values, the workshop's Deployment and Service, the network policies and the image agree with
the package's names, ports and environment; the hub's extra configuration runs against a stand-in
of the chart's ``z2jh`` module with the spawner hook loaded from its own file, as the chart
mounts it; and the image's commands run here as processes (the course copied and the single-user
server's entry point started; the workshop's command with its TLS and store, answering its
health check and an enrollment, and a real Envoy joining it over mutual TLS with what the
enrollment handed out). The one-machine configuration runs for real in tests/classroom/test_hub.py.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
import types
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from envoy_helpers import free_port
from labxds.classroom import spawn
from labxds.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "jupyterhub" / "k8s"
VALUES = K8S / "values.yaml"
WORKSHOP = K8S / "workshop.yaml"
DOCKERFILE = K8S / "Dockerfile"
SPAWN = ROOT / "labxds" / "classroom" / "spawn.py"
KUBERNETES = "1.32"  # the oldest version the Zero to JupyterHub chart supports (its kubeVersion)


@pytest.fixture(scope="module")
def values() -> dict[str, Any]:
    return yaml.safe_load(VALUES.read_text())


@pytest.fixture(scope="module")
def manifests() -> dict[str, dict[str, Any]]:
    return {doc["kind"]: doc for doc in yaml.safe_load_all(WORKSHOP.read_text()) if doc}


def container(manifests: dict) -> dict[str, Any]:
    [c] = manifests["Deployment"]["spec"]["template"]["spec"]["containers"]
    return c


def env_of(manifests: dict) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container(manifests)["env"]}


def service_port(manifests: dict, name: str) -> int:
    return next(p["port"] for p in manifests["Service"]["spec"]["ports"] if p["name"] == name)


def classroom_args(manifests: dict) -> Any:
    command = container(manifests)["command"]
    assert command[:4] == ["python", "-m", "labxds", "classroom"]
    return build_parser().parse_args(command[3:])


# --- Kubernetes' own schemas -------------------------------------------------------------------


def test_the_workshop_manifests_pass_kubernetes_schemas(manifests):
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    assert set(manifests) == {"PersistentVolumeClaim", "Deployment", "Service", "NetworkPolicy"}
    for doc in manifests.values():
        kubernetes_validate.validate(doc, KUBERNETES, strict=True)  # raises on any unknown or wrong field


# --- names, ports and environment agree -------------------------------------------------------


def test_the_hub_registers_the_workshop_service_where_the_service_listens(values, manifests):
    name = manifests["Service"]["metadata"]["name"]
    http = service_port(manifests, "http")
    assert values["hub"]["services"]["workshop"]["url"] == f"http://{name}:{http}"
    env = env_of(manifests)
    assert env["JUPYTERHUB_SERVICE_NAME"] == "workshop"
    assert env["JUPYTERHUB_SERVICE_PREFIX"] == "/services/workshop/"
    assert env["JUPYTERHUB_CLIENT_ID"] == "service-workshop"
    assert env["JUPYTERHUB_OAUTH_CALLBACK_URL"] == "/services/workshop/oauth_callback"
    # the token the chart makes for the service, from the chart's Secret "hub"
    assert env["JUPYTERHUB_API_TOKEN"] == {"secretKeyRef": {"name": "hub", "key": "hub.services.workshop.apiToken"}}
    ports = {p["name"]: p["containerPort"] for p in container(manifests)["ports"]}
    assert env["JUPYTERHUB_SERVICE_URL"].endswith(f":{ports['http']}")
    for probe in ("readinessProbe", "livenessProbe"):
        assert container(manifests)[probe]["httpGet"]["path"] == env["JUPYTERHUB_SERVICE_PREFIX"] + "health"
    assert {p["targetPort"] for p in manifests["Service"]["spec"]["ports"]} == set(ports)


def test_the_workshop_command_is_the_package_s_own(manifests):
    args = classroom_args(manifests)
    name = manifests["Service"]["metadata"]["name"]
    assert args.func.__module__ == "labxds.cli.classroom"
    assert args.advertise == f"{name}:{service_port(manifests, 'grpc-ads')}"
    assert args.xds_port == service_port(manifests, "grpc-ads")
    assert args.desk_url == f"http://{name}:{service_port(manifests, 'http')}/services/workshop"
    assert args.tls and args.tls.startswith("/data/") and args.store.startswith("/data/")
    mounts = {m["mountPath"] for m in container(manifests)["volumeMounts"]}
    assert mounts == {"/data"}
    assert manifests["Deployment"]["spec"]["replicas"] == 1
    assert manifests["Deployment"]["spec"]["strategy"]["type"] == "Recreate"


def test_network_policies_open_exactly_the_workshop_s_ports(values, manifests):
    ads, http = service_port(manifests, "grpc-ads"), service_port(manifests, "http")
    label = manifests["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert manifests["Service"]["spec"]["selector"] == label

    def egress_ports(rules: list[dict]) -> set[int]:
        out = set()
        for rule in rules:
            assert rule["to"][0]["podSelector"]["matchLabels"] == label
            out |= {p["port"] for p in rule["ports"]}
        return out

    assert egress_ports(values["singleuser"]["networkPolicy"]["egress"]) == {ads, http}
    assert egress_ports(values["hub"]["networkPolicy"]["egress"]) == {http}
    assert egress_ports(values["proxy"]["chp"]["networkPolicy"]["egress"]) == {http}
    ingress = manifests["NetworkPolicy"]["spec"]["ingress"]
    assert {p["port"] for rule in ingress for p in rule["ports"]} == {ads, http}


def test_the_image_sets_the_environment_the_package_reads():
    text = DOCKERFILE.read_text()
    env_block = text[text.index("ENV LABXDS_"):].split("\n\n")[0]
    names = dict(item.split("=", 1) for item in shlex.split(env_block.replace("\\\n", " "))[1:])
    assert set(names) <= {*spawn.ENV.values(), "LABXDS_LISTEN_HOST", "LABXDS_COURSE"}
    assert names[spawn.ENV["admin_port"]] == "19000" and names[spawn.ENV["listener_port"]] == "10000"
    assert names["LABXDS_LISTEN_HOST"] == "127.0.0.1"
    for line in text.splitlines():
        if line.startswith("COPY ") and "--from" not in line:
            for source in shlex.split(line)[1:-1]:
                if not source.startswith("--"):
                    assert (ROOT / source).exists(), f"the Dockerfile copies {source}, which is not in the repository"


def test_the_single_user_command_and_default_url(values):
    text = DOCKERFILE.read_text()
    cmd = json.loads(text[text.index("CMD ") + 4:].splitlines()[0])
    assert values["singleuser"]["cmd"] == cmd[0] == "/usr/local/bin/start-singleuser.sh"
    script = K8S / "start-singleuser.sh"
    assert os.access(script, os.X_OK)
    assert f"COPY deploy/jupyterhub/k8s/start-singleuser.sh {cmd[0]}" in text
    notebook = values["singleuser"]["defaultUrl"].removeprefix("/lab/tree/")
    assert (ROOT / "notebooks" / notebook).is_file()


# --- the hub's extra configuration, as the chart runs it ----------------------------------------


def test_the_spawn_hook_file_needs_the_standard_library_only(tmp_path):
    # -S: no site-packages (the chart's hub image has no labxds), -I: nothing from the environment
    code = f"import runpy; ns = runpy.run_path({str(SPAWN)!r}); print(sorted(ns['ENV'].values())[0])"
    out = subprocess.run([sys.executable, "-I", "-S", "-c", code], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().startswith("LABXDS_")


def test_the_hub_extra_config_sets_the_spawn_hook(values, tmp_path, monkeypatch):
    from traitlets.config import Config

    files = values["hub"]["extraFiles"]["labxds-spawn"]
    mount = Path(files["mountPath"])
    assert "stringData" not in files  # given with --set-file ...=labxds/classroom/spawn.py
    code = values["hub"]["extraConfig"]["labxds"]
    assert f'sys.path.insert(0, "{mount.parent}")' in code and f"from {mount.stem} import" in code
    (tmp_path / mount.name).write_text(SPAWN.read_text())  # what the chart mounts
    z2jh = types.ModuleType("z2jh")
    asked: list[str] = []
    z2jh.get_secret_value = lambda key: asked.append(key) or "service-token"  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "z2jh", z2jh)
    monkeypatch.setattr(sys, "path", list(sys.path))
    c = Config()
    exec(code.replace(str(mount.parent), str(tmp_path)), {"c": c})  # noqa: S102
    hook = c.Spawner.pre_spawn_hook
    assert callable(hook)
    assert sys.modules[mount.stem].__file__ == str(tmp_path / mount.name)
    assert "http://labxds-workshop:18080/services/workshop" in code
    monkeypatch.delitem(sys.modules, mount.stem)


def test_the_single_user_server_config_puts_envoy_behind_the_proxy(monkeypatch):
    from traitlets.config import Config

    text = (ROOT / "deploy" / "jupyterhub" / "singleuser" / "jupyter_server_config.py").read_text()
    monkeypatch.setenv("LABXDS_ADMIN_PORT", "19000")
    monkeypatch.setenv("LABXDS_LISTENER_PORT", "10000")
    c = Config()
    exec(text, {"get_config": lambda: c})  # noqa: S102
    servers = c.ServerProxy.servers
    assert servers[spawn.PROXY_ADMIN]["port"] == 19000 and servers[spawn.PROXY_LISTENER]["port"] == 10000
    assert "command" not in servers[spawn.PROXY_ADMIN]  # a port of Envoy's, nothing to start


# --- the image's commands, run here as processes ------------------------------------------------


def test_the_single_user_entry_point_copies_the_course_and_starts_the_server(tmp_path):
    env = {**os.environ, "HOME": str(tmp_path), "LABXDS_COURSE": str(ROOT / "notebooks"),
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}  # fmt: skip
    out = subprocess.run([str(K8S / "start-singleuser.sh"), "--help-all"], env=env, capture_output=True, text=True,
                         timeout=60)  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    assert "JupyterHubSingleUser" in out.stdout  # JupyterHub's single-user server, not a plain Jupyter
    copied = sorted(p.name for p in tmp_path.glob("*.ipynb"))
    assert copied == sorted(p.name for p in (ROOT / "notebooks").glob("*.ipynb"))
    (tmp_path / "workshop_learner.ipynb").write_text("{}")  # a learner's edits stay on the next start
    stub = tmp_path / "bin"
    stub.mkdir()
    (stub / "jupyterhub-singleuser").write_text("#!/bin/sh\nexit 0\n")
    (stub / "jupyterhub-singleuser").chmod(0o755)
    again = subprocess.run([str(K8S / "start-singleuser.sh")], env={**env, "PATH": f"{stub}:{env['PATH']}"},
                           capture_output=True, text=True, timeout=60)  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert (tmp_path / "workshop_learner.ipynb").read_text() == "{}"


@pytest.mark.envoy
@pytest.mark.timeout(120)
def test_the_workshop_command_runs_with_tls_and_a_learner_joins_over_mutual_tls(manifests, tmp_path):
    """The Deployment's command and environment, with three substitutions for this machine:
    /data is a temporary folder, the ports are free ones, and it binds 127.0.0.1 (not 0.0.0.0)."""
    from labxds.classroom.spawn import tls_files_from_env
    from labxds.notebook import Lab

    xds, http = free_port(), free_port()
    command = [sys.executable if a == "python" else a for a in container(manifests)["command"]]
    command = [a.replace("/data", str(tmp_path)) for a in command]
    command[command.index("--xds-port") + 1] = str(xds)
    command[command.index("--host") + 1] = "127.0.0.1"
    env = {k: v for k, v in env_of(manifests).items() if isinstance(v, str)}
    env.update(JUPYTERHUB_API_TOKEN="test-service-token", JUPYTERHUB_API_URL="http://127.0.0.1:9/hub/api",
               JUPYTERHUB_SERVICE_URL=f"http://127.0.0.1:{http}", PATH=os.environ["PATH"])  # fmt: skip
    log = (tmp_path / "workshop.log").open("wb")
    proc = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    lab = None
    try:
        base = f"http://127.0.0.1:{http}/services/workshop"
        with httpx.Client(trust_env=False, timeout=10) as client:
            deadline = time.monotonic() + 30
            while True:
                assert proc.poll() is None, (tmp_path / "workshop.log").read_text()
                try:
                    if client.get(f"{base}/health").status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert time.monotonic() < deadline, (tmp_path / "workshop.log").read_text()
                time.sleep(0.2)
            refused = client.post(f"{base}/v1/enroll/alice", headers={"Authorization": "token nope"})
            assert refused.status_code == 403
            r = client.post(f"{base}/v1/enroll/alice", headers={"Authorization": "token test-service-token"})
            assert r.status_code == 200, r.text
            answer = r.json()
        name = manifests["Service"]["metadata"]["name"]
        assert answer["control_plane"] == f"{name}:{service_port(manifests, 'grpc-ads')}"
        assert answer["desk"] == f"http://{name}:{service_port(manifests, 'http')}/services/workshop"
        assert (tmp_path / "tls" / "ca-key.pem").stat().st_mode & 0o077 == 0
        assert (tmp_path / "workshop.sqlite").exists()
        # A learner's pod: the hook's environment, turned into files, and a real Envoy over mutual TLS.
        hook_env = {spawn.ENV[k]: answer[k] for k in ("tls_ca_pem", "tls_cert_pem", "tls_key_pem")}
        tls = tls_files_from_env(tmp_path / "learner-tls", hook_env)
        assert tls is not None
        lab = Lab(control_plane=f"127.0.0.1:{xds}", node_id="alice", token=answer["token"], tls=tls,
                  admin_port=0, listener_port=free_port()).start(progress=False)  # fmt: skip
        assert list(lab.curl(1)["served_by"]) == ["service1"]  # the class default of a new workshop
    finally:
        if lab is not None:
            lab.stop()
        proc.terminate()
        proc.wait(timeout=20)
    assert proc.returncode == 0, (tmp_path / "workshop.log").read_text()
