"""The course under docker compose, without Docker: the compose topology as processes.

tests/compose_topology reads docker-compose.yaml (and the Dockerfiles) and runs each service's
command as a process at a loopback address of its own, its name and aliases resolving there;
Envoy runs envoy.yaml unchanged. In that topology every notebook runs top to bottom in a kernel
with the control-plane service's environment (LABXDS_MODE=docker), one after another, while the
same Envoy stays up; then Envoy is restarted on the sandbox's own envoy.yaml (control plane
``go-control-plane``) and must be configured through our compose file all the same.

One run serves every test here (a module fixture; its time is the first test's). It runs in a
network namespace of its own where the machine allows (root, or user namespaces), so the compose
file's fixed ports never meet another test's; otherwise through /etc/hosts with the ports checked
first. Without either it is skipped, except in CI (CI=true, or LABXDS_COMPOSE_REQUIRED=1), where
that is a failure.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from compose_topology import ROOT, launch, load_services

NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
BUDGET = 900  # seconds for the whole run: services, every notebook, the sandbox check
CELL_TIMEOUT = 180  # a lab may wait out Envoy's reconnect backoff (up to 30 s) and more

pytestmark = [pytest.mark.envoy, pytest.mark.notebooks, pytest.mark.compose, pytest.mark.timeout(BUDGET + 120)]


@pytest.fixture(scope="module")
def run(request: pytest.FixtureRequest) -> dict:
    report = launch([str(p.relative_to(ROOT)) for p in NOTEBOOKS], sandbox=True, timeout=BUDGET,
                    cell_timeout=CELL_TIMEOUT)  # fmt: skip
    if "skip" in report:
        if os.environ.get("LABXDS_COMPOSE_REQUIRED") or os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"the compose topology could not run: {report['skip']}")
        pytest.skip(f"the compose topology could not run: {report['skip']}")
    if "error" in report:
        logs = "\n".join(f"--- {name}\n{tail}" for name, tail in report.get("logs", {}).items())
        pytest.fail(f"the compose run broke (files in {report.get('workdir')}):\n{report['error']}\n{logs}")
    times = ", ".join(f"{Path(n).stem} {r['status']} {r['seconds']}s" for n, r in report["notebooks"].items())
    line = (f"compose topology ({report['isolation']}): {report['seconds']}s in all; services up in "
            f"{report['started_s']}s; {times}")  # fmt: skip
    print(line)
    summary = getattr(request.config, "labxds_summary", [])
    request.config.labxds_summary = [*summary, line]  # type: ignore[attr-defined]
    return report


def test_every_service_starts_healthy(run):
    """Each service answers on its port and its health check passes with no lesson running."""
    services = load_services()
    for name, spec in services.items():
        replicas = [name] if spec.replicas == 1 else [f"{name}-{i}" for i in range(1, spec.replicas + 1)]
        assert set(replicas) <= set(run["addresses"]), (name, run["addresses"])
        if spec.healthcheck:
            results = run["health"][name]
            assert results and all(r["rc"] == 0 for r in results), (name, results)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_under_compose(run, path: Path):
    result = run["notebooks"].get(path.name)
    assert result is not None, f"{path.name} did not run (the proxy died before it?)"
    if result["status"] == "skipped":
        pytest.skip(f"{path.name} says it needs the local lab: {result['error']}")
    assert result["status"] == "passed", f"{path.name} failed under compose:\n{result['error']}"
    assert result["proxy_same_process"], f"Envoy did not survive {path.name}:\n{result.get('proxy_log')}"


def test_the_kernel_had_the_control_plane_environment(run):
    env = run["kernel_env"]
    assert env["LABXDS_MODE"] == "docker"
    # 0.0.0.0 in the compose file: the container's own address, here the control-plane's.
    assert env["LABXDS_XDS_HOST"] == run["addresses"]["control-plane"]


def test_the_sandbox_bootstrap_works_unchanged(run):
    """Envoy on the sandbox's envoy.yaml finds our control plane as go-control-plane, takes the
    sandbox's snapshot from it, and serves a request from service1."""
    out = run["sandbox_bootstrap"]
    assert "error" not in out, out.get("error")
    assert out["bootstrap_control_plane"] == "go-control-plane"
    assert out["node"] == "test-id"
    assert (out["status"], out["body"]) == (200, "Request served by service1")


def test_control_plane_is_healthy_while_serving_ads(run):
    """The health check speaks HTTP/2 to the live ADS port and finds a gRPC server there."""
    results = run["sandbox_bootstrap"]["health_while_serving"]
    assert results and all(r["rc"] == 0 for r in results), results
