"""The compose topology's run: services up, health checks, the notebooks, the sandbox's bootstrap.

``launch()`` (called by the tests) picks the isolation (isolation.py), starts this module in a
child process (inside ``unshare`` for a network namespace), and returns the child's JSON report.
The child (``python -m compose_topology``) does the work and always tears down what it started.

What a run does, as a learner's ``docker compose up`` would:

1. starts every service in depends_on order, each as its command (compose's, else its Dockerfile's
   CMD), and waits until each answers on one of its ports;
2. runs each service's health check (exit 0 = healthy), with no lesson running;
3. runs each notebook top to bottom in a fresh kernel with the environment of the service that
   runs the lab (LABXDS_MODE=docker ...), one after another, while the same Envoy (``proxy``)
   stays up: it must still be the same process after every notebook;
4. restarts ``proxy`` with the sandbox's own bootstrap (envoy.yaml naming the control plane
   ``go-control-plane``) mounted instead of ours, serves it the sandbox's snapshot from a control
   plane with the lab's environment, and checks a request through Envoy and the control plane's
   health check while ADS is served;
5. stops everything (``docker compose down``) and writes the report.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import traceback
from pathlib import Path
from typing import Any

import yaml

from . import isolation
from .spec import ROOT, load_services
from .topology import Topology, port_holder

__all__ = ["SKIP_EXCEPTIONS", "launch", "main", "sandbox_bootstrap"]

#: A notebook that stops on one of these (raised by labxds when a lesson needs what only the
#: local lab has) is reported as skipped, with the exception's message as the reason.
SKIP_EXCEPTIONS = {"LocalLabOnly"}
#: The proxy's bootstrap as mounted in its container (the compose file's volume).
ENVOY_BOOTSTRAP = "/etc/envoy/envoy.yaml"
#: The name the sandbox's own envoy.yaml gives the control plane.
SANDBOX_CONTROL_PLANE = "go-control-plane"


def sandbox_bootstrap(ours: Path) -> dict[str, Any]:
    """The sandbox's envoy.yaml, as data: ours with the control plane's address the sandbox's.

    tests/test_compose.py checks that this is exactly the sandbox's file (a digest of its
    parsed content), so the difference between the two files is this one name and nothing else.
    """
    bootstrap = yaml.safe_load(ours.read_text())
    for cluster in bootstrap["static_resources"]["clusters"]:
        if cluster["name"] == "xds_cluster":
            for group in cluster["load_assignment"]["endpoints"]:
                for lb in group["lb_endpoints"]:
                    lb["endpoint"]["address"]["socket_address"]["address"] = SANDBOX_CONTROL_PLANE
    return bootstrap


# -- the child ----------------------------------------------------------------------------------


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _run_notebook(path: Path, env: dict[str, str], cell_timeout: float) -> dict[str, Any]:
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError, CellTimeoutError

    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=cell_timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}})  # fmt: skip
    started = time.monotonic()
    result: dict[str, Any] = {"status": "passed", "error": None}
    try:
        client.execute(env=env)
    except CellExecutionError as exc:
        ename = getattr(exc, "ename", "")
        if ename in SKIP_EXCEPTIONS:
            result = {"status": "skipped", "error": f"{ename}: {getattr(exc, 'evalue', '')}"}
        else:
            result = {"status": "failed", "error": _ANSI.sub("", str(exc))[-6000:]}
    except CellTimeoutError as exc:
        result = {"status": "failed", "error": f"a cell ran longer than {cell_timeout:g}s: {exc}"[-6000:]}
    except Exception as exc:  # a kernel that died, ...
        result = {"status": "failed", "error": "".join(traceback.format_exception(exc))[-6000:]}
    result["seconds"] = round(time.monotonic() - started, 1)
    return result


_SANDBOX_SCRIPT = textwrap.dedent(
    """
    # The lab's side of the sandbox check: a control plane with the lab's environment serves the
    # sandbox's snapshot; the runner checks a request through Envoy and the health check.
    import json, os, sys
    import httpx
    from labxds import ControlPlane, sandbox_snapshot

    xds_port, listener_port, proxy, upstream, upstream_port = sys.argv[1:6]
    cp = ControlPlane(int(xds_port), os.environ.get("LABXDS_XDS_HOST", "127.0.0.1")).start()
    try:
        node = cp.wait_for_node(None, timeout=90)
        snap = sandbox_snapshot(upstream, int(upstream_port), version="1", listener_port=int(listener_port),
                                listener_address="0.0.0.0")
        cp.push(snap, nodes=[node], timeout=30)
        r = httpx.get(f"http://{proxy}:{listener_port}/", timeout=10)
        print(json.dumps({"node": node, "status": r.status_code, "body": r.text.splitlines()[0]}), flush=True)
        sys.stdin.readline()  # the runner probes the health check while ADS is served
    finally:
        cp.stop()
    """
)


def _sandbox_check(topo: Topology, report: dict[str, Any]) -> None:
    """Phase 4: the sandbox's own bootstrap against our compose file."""
    workdir = topo.workdir
    ours = topo.of("proxy")[0].service.paths[ENVOY_BOOTSTRAP]
    theirs = workdir / "sandbox-envoy.yaml"
    theirs.write_text(yaml.safe_dump(sandbox_bootstrap(ours), sort_keys=False))
    topo.restart("proxy", overrides={ENVOY_BOOTSTRAP: theirs})
    xds = yaml.safe_load(ours.read_text())["static_resources"]["clusters"][0]["load_assignment"]
    xds_port = xds["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]["port_value"]
    listener_port = 10000  # the listener the sandbox's control plane adds (published by proxy)
    assert listener_port in topo.services["proxy"].container_ports()
    lab = topo.of(topo.lab_service().name)[0]
    script = workdir / "sandbox_check.py"
    script.write_text(_SANDBOX_SCRIPT)
    echo_port = topo.services["service1"].container_ports() or [8080]
    proc = subprocess.Popen(
        [sys.executable, str(script), str(xds_port), str(listener_port), "proxy", "service1", str(echo_port[0])],
        env=topo.environment(lab), cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    out: dict[str, Any] = {"bootstrap_control_plane": SANDBOX_CONTROL_PLANE}
    try:
        assert proc.stdout is not None and proc.stdin is not None
        line = proc.stdout.readline()
        if line:
            out.update(json.loads(line))
            out["health_while_serving"] = _health(topo, lab.service.name)
            proc.stdin.write("\n")
            proc.stdin.flush()
        _, err = proc.communicate(timeout=30)
        if proc.returncode:
            out["error"] = err[-3000:]
    except Exception:
        proc.kill()
        out["error"] = traceback.format_exc()[-3000:]
    report["sandbox_bootstrap"] = out


def _health(topo: Topology, name: str) -> list[dict[str, Any]]:
    results = []
    for replica in topo.of(name):
        if replica.service.healthcheck:
            done = topo.healthcheck(replica)
            results.append({"replica": replica.label, "rc": done.returncode,
                            "output": (done.stdout + done.stderr).strip()[-500:]})  # fmt: skip
    return results


def _busy_ports(topo: Topology) -> list[str]:
    """hosts mode: the fixed ports must be free on every interface (Envoy binds 0.0.0.0)."""
    import socket

    busy = []
    for port in sorted({p for s in topo.services.values() for p in s.container_ports()}):
        with socket.socket() as sock:
            try:
                sock.bind(("0.0.0.0", port))
            except OSError:
                busy.append(f"{port} ({port_holder(port) or 'in use'})")
    return busy


def _child(args: argparse.Namespace) -> int:
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"isolation": args.isolation, "notebooks": {}, "health": {}}
    started = time.monotonic()
    topo = Topology(load_services(), workdir)
    report["addresses"] = {r.label: r.address for r in topo.replicas}
    hosts_added = False

    def on_signal(signum: int, _frame: Any) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        if args.isolation == "netns":
            isolation.enter_netns_inside(topo.hosts_entries(), workdir, args.outside_netns)
        else:
            busy = _busy_ports(topo)
            if busy:
                report["skip"] = f"ports the compose file uses are busy: {', '.join(busy)}"
                return 0
            isolation.add_hosts_block(topo.hosts_entries())
            hosts_added = True
        topo.start()
        report["started_s"] = round(time.monotonic() - started, 1)
        report["health"] = {name: _health(topo, name) for name in topo.services}
        proxy = topo.of("proxy")[0]
        assert proxy.process is not None
        proxy_pid = proxy.process.pid
        lab = topo.of(topo.lab_service().name)[0]
        kernel_env = topo.environment(lab)
        report["kernel_env"] = {k: v for k, v in kernel_env.items() if k.startswith("LABXDS_")}
        for name in args.notebooks:
            path = ROOT / name
            result = _run_notebook(path, kernel_env, args.cell_timeout)
            alive = proxy.process is not None and proxy.process.poll() is None
            result["proxy_same_process"] = alive and proxy.process.pid == proxy_pid
            if not alive:
                result["proxy_log"] = proxy.log_tail()
            report["notebooks"][path.name] = result
            print(f"{path.name}: {result['status']} in {result['seconds']}s", file=sys.stderr, flush=True)
            if not alive:
                break
        for script in args.script:
            done = subprocess.run([sys.executable, script], env=kernel_env, cwd=ROOT, capture_output=True,
                                  text=True, timeout=args.cell_timeout)  # fmt: skip
            report.setdefault("scripts", {})[script] = {"rc": done.returncode, "output": (done.stdout + done.stderr)[-8000:]}
        if args.sandbox:
            _sandbox_check(topo, report)
    except BaseException as exc:  # noqa: BLE001 - reported, then everything is torn down
        report["error"] = "".join(traceback.format_exception(exc))[-6000:]
        report["logs"] = {r.label: r.log_tail(40) for r in topo.replicas}
    finally:
        topo.stop()
        if hosts_added:
            isolation.remove_hosts_blocks(pid=os.getpid())
        report["seconds"] = round(time.monotonic() - started, 1)
        Path(args.report).write_text(json.dumps(report, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m compose_topology", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--isolation", choices=["netns", "hosts"], required=True)
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--outside-netns", default="", help="the launcher's network namespace (netns mode)")
    parser.add_argument("--report", required=True)
    parser.add_argument("--cell-timeout", type=float, default=180)
    parser.add_argument("--sandbox", action="store_true", help="also run the sandbox-bootstrap phase")
    parser.add_argument("--script", action="append", default=[],
                        help="also run this Python file with the lab's environment (debugging)")
    parser.add_argument("notebooks", nargs="*", help="paths relative to the repository")
    return _child(parser.parse_args(argv))


# -- the parent ---------------------------------------------------------------------------------


def launch(notebooks: list[str], *, sandbox: bool = True, timeout: float = 1500, cell_timeout: float = 180,
           isolation_mode: str | None = None, log: Path | None = None, scripts: tuple[str, ...] = ()
           ) -> dict[str, Any]:
    """Run the topology in a child (in its own namespaces where possible); its report, or
    {"skip": reason} when this machine cannot run it."""
    mode, detail = isolation.choose(isolation_mode)
    if mode == "skip":
        return {"skip": detail}
    workdir = Path(tempfile.mkdtemp(prefix="labxds-compose-"))
    report = workdir / "report.json"
    cmd = [sys.executable, "-m", "compose_topology", "--isolation", mode, "--workdir", str(workdir),
           "--report", str(report), "--cell-timeout", str(cell_timeout), *(["--sandbox"] if sandbox else []),
           *[a for s in scripts for a in ("--script", s)], *notebooks]  # fmt: skip
    if mode == "netns":
        cmd = [*detail.split(), *cmd, "--outside-netns", isolation.netns_id()]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parents[1]), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    log = log or workdir / "runner.log"
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGTERM)  # the child tears down and writes its report
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        except BaseException:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(30)
            raise
    if not report.exists():
        return {"error": f"the runner wrote no report (exit {proc.returncode}); its output:\n{log.read_text()[-4000:]}",
                "workdir": str(workdir)}  # fmt: skip
    result = json.loads(report.read_text())
    result["workdir"] = str(workdir)
    result["runner_log"] = log.read_text()[-4000:]
    if "error" not in result and "skip" not in result:
        shutil.rmtree(workdir, ignore_errors=True)
        result.pop("workdir")
    return result


if __name__ == "__main__":
    raise SystemExit(main())
