"""The compose harness's own rules (tests/compose_topology), on files and specs made here."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from compose_topology import isolation
from compose_topology.spec import ROOT, load_services
from compose_topology.topology import Topology

COMPOSE = """
services:
  web:
    build: {{context: ., dockerfile: web.Dockerfile}}
    command: ["python", "-m", "http.server", "--bind", "0.0.0.0", "80"]
    environment: {{BIND: "0.0.0.0", HOME_URL: "http://localhost:80/", NAME: web}}
    deploy: {{replicas: 2}}
  api:
    build: {{context: ., dockerfile: web.Dockerfile}}
    networks: {{default: {{aliases: [backend]}}}}
    depends_on: [web]
    volumes: ["./conf.yaml:/etc/api/conf.yaml:ro"]
"""
DOCKERFILE = """FROM python:3.11.14-slim-bookworm
ENV A=1 \\
    PYTHONPATH=/app
WORKDIR /app
COPY conf.yaml ./
COPY pkg/ pkg/
USER nobody
EXPOSE 80
HEALTHCHECK --interval=5s CMD ["python", "/app/pkg/check.py", "http://127.0.0.1:80/"]
CMD ["python", "-c", "open('/etc/api/conf.yaml')", "/app/pkg"]
"""


@pytest.fixture
def topo(tmp_path: Path) -> Topology:
    (tmp_path / "docker-compose.yaml").write_text(COMPOSE.format())
    (tmp_path / "web.Dockerfile").write_text(DOCKERFILE)
    (tmp_path / "conf.yaml").write_text("a: 1\n")
    (tmp_path / "pkg").mkdir()
    return Topology(load_services(tmp_path / "docker-compose.yaml"), tmp_path / "run")


def test_replicas_and_aliases_resolve_to_their_own_addresses(topo):
    assert topo.hosts_entries() == [
        ("127.0.0.101", ["web"]), ("127.0.0.102", ["web"]), ("127.0.0.103", ["api", "backend"]),
    ]  # fmt: skip
    assert topo.start_order() == ["web", "api"]


def test_every_interface_and_loopback_are_the_containers_own(topo):
    web1, web2 = topo.of("web")
    assert topo.argv(web2, web2.service.command)[-2:] == ["127.0.0.102", "80"]
    env = topo.environment(web1)
    assert (env["BIND"], env["HOME_URL"], env["NAME"]) == ("127.0.0.101", "http://127.0.0.101:80/", "web")
    assert env["HOSTNAME"] != topo.environment(web2)["HOSTNAME"]
    assert not any(k.startswith("PYTEST") for k in env), "the container must not see this process's environment"


def test_container_paths_are_the_repository_files(topo, tmp_path):
    api = topo.of("api")[0]
    argv = topo.argv(api, api.service.command)
    assert argv[0] == os.path.normpath(sys.executable)
    assert argv[2] == f"open('{tmp_path / 'conf.yaml'}')"  # the volume
    assert argv[3] == str(tmp_path / "pkg")  # COPY pkg/ into WORKDIR
    assert topo.environment(api)["PYTHONPATH"] == str(tmp_path)  # WORKDIR: the build context
    check = topo.argv(api, api.service.healthcheck)
    assert check[1:] == [str(tmp_path / "pkg" / "check.py"), "http://127.0.0.103:80/"]
    assert api.service.user == "nobody"


def test_the_compose_file_of_the_repository_loads():
    services = load_services()
    assert {"proxy", "control-plane", "service1", "service2"} <= set(services)
    topo = Topology(services, Path("/nonexistent"))
    assert topo.lab_service().name == "control-plane"
    assert "go-control-plane" in dict((n, a) for a, names in topo.hosts_entries() for n in names)


# --- /etc/hosts mode: marker blocks ------------------------------------------------------------


def test_hosts_block_is_added_and_removed(tmp_path):
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1 localhost\n::1 localhost")  # no newline at the end
    isolation.add_hosts_block([("127.0.0.101", ["proxy"]), ("127.0.0.102", ["control-plane", "go-control-plane"])],
                              hosts, pid=os.getpid())  # fmt: skip
    text = hosts.read_text()
    assert "127.0.0.102\tcontrol-plane go-control-plane\n" in text and text.startswith("127.0.0.1 localhost\n::1 localhost\n")
    assert isolation.remove_hosts_blocks(hosts, pid=os.getpid()) == 1
    assert hosts.read_text() == "127.0.0.1 localhost\n::1 localhost\n"


def test_a_killed_runners_block_is_removed_by_the_next(tmp_path):
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1 localhost\n")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    isolation.add_hosts_block([("127.0.0.101", ["proxy"])], hosts, pid=dead_pid)
    isolation.add_hosts_block([("127.0.0.101", ["proxy"])], hosts, pid=os.getpid())  # removes the dead one first
    text = hosts.read_text()
    assert f"pid {dead_pid}" not in text and text.count("proxy") == 1
    isolation.remove_hosts_blocks(hosts, pid=os.getpid())
    assert hosts.read_text() == "127.0.0.1 localhost\n"


def test_names_the_machine_already_maps_are_not_shadowed(tmp_path):
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1 localhost\n10.0.0.5 proxy  # someone's\n")
    with pytest.raises(RuntimeError, match="proxy"):
        isolation.add_hosts_block([("127.0.0.101", ["proxy"])], hosts)
    assert hosts.read_text() == "127.0.0.1 localhost\n10.0.0.5 proxy  # someone's\n"


def test_isolation_choice_is_explained():
    mode, detail = isolation.choose("bogus")
    assert mode == "skip" and "bogus" in detail
    mode, detail = isolation.choose()
    assert mode in ("netns", "hosts", "skip") and detail
    assert ROOT.is_dir()
