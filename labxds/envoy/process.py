"""Run a real Envoy process next to the lab, and talk to its admin interface.

The lab reproduces a docker sandbox without docker, so Envoy here is an ordinary
child process: it must find its binary, boot from the sandbox's bootstrap (with
loopback addresses instead of compose service names), never outlive the Python
process that started it, and report failures in words a learner can act on.
"""


from __future__ import annotations

import atexit
import copy
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any, Iterable

import httpx

# --------------------------------------------------------------------------- process
#: Run in a short-lived Python between spawn and exec: the kernel is to SIGKILL Envoy when its parent
#: dies (PR_SET_PDEATHSIG survives exec). Done there, not in a preexec_fn, so that this process
#: never fork()s: subprocess then uses vfork, which runs no fork handlers, so gRPC's threads need no
#: GRPC_ENABLE_FORK_SUPPORT setting, whatever imported grpc first.
from ..net.addresses import port_is_free, reachable
from .admin import EnvoyAdmin
from .binary import find_envoy
from .bootstrap import admin_address, write_bootstrap
from .errors import EnvoyError, EnvoyExited, EnvoyPortBusy

_DIE_WITH_PARENT = (
    "import ctypes, os, signal, sys\n"
    "ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL), 0, 0, 0)\n"
    "if os.getppid() != int(sys.argv[1]):\n"
    "    os._exit(70)  # the parent died before prctl took effect\n"
    "os.execv(sys.argv[2], sys.argv[2:])\n"
)


def _dying_with_parent(args: list[str]) -> list[str]:
    """``args`` started so that Envoy dies with this process (Linux; elsewhere atexit and stop())."""
    if not sys.platform.startswith("linux"):
        return args
    return [sys.executable, "-I", "-S", "-c", _DIE_WITH_PARENT, str(os.getpid()), *args]


class _Spawner:
    """One long-lived daemon thread that forks every Envoy.

    PR_SET_PDEATHSIG fires when the *thread* that forked the child exits, not the
    process; forking from a short-lived worker thread (a notebook helper, an
    executor) would kill Envoy as soon as that thread finished.
    """

    _lock = threading.Lock()
    _queue: queue.Queue | None = None

    @classmethod
    def popen(cls, args: list[str], **kwargs: Any) -> subprocess.Popen:
        with cls._lock:
            if cls._queue is None:
                cls._queue = queue.Queue()
                threading.Thread(target=cls._run, args=(cls._queue,), name="labxds-envoy-spawner", daemon=True).start()
        reply: queue.Queue = queue.Queue(maxsize=1)
        cls._queue.put((args, kwargs, reply))
        ok, value = reply.get()
        if not ok:
            raise value
        return value

    @staticmethod
    def _run(requests: queue.Queue) -> None:
        while True:
            args, kwargs, reply = requests.get()
            try:
                reply.put((True, subprocess.Popen(args, **kwargs)))
            except BaseException as exc:  # handed back to the caller's thread
                reply.put((False, exc))




_RUNNING: set[Envoy] = set()


__all__ = ["Envoy"]

_TEMP_DIRS: list[Path] = []


@atexit.register
def _stop_all() -> None:
    """At interpreter exit: stop every Envoy still running, then drop their temp work dirs."""
    for envoy in list(_RUNNING):
        envoy.stop()
    for path in _TEMP_DIRS:
        shutil.rmtree(path, ignore_errors=True)


class Envoy:
    """One Envoy process: start it, wait until its admin answers, stop it cleanly.

    Several may run on one machine: each uses --disable-hot-restart (no shared
    memory) and its own admin port. `admin_port=0` lets the kernel pick one; the
    bound address is read back through --admin-address-path.
    """

    def __init__(
        self,
        bootstrap: dict,
        *,
        admin_port: int | None = None,
        log_level: str = "warning",
        component_log_level: str | None = "upstream:info",
        drain_time_s: int = 1,
        concurrency: int | None = 1,
        workdir: Path | str | None = None,
        extra_args: Iterable[str] = (),
    ) -> None:
        """`concurrency=1` by default: one worker keeps round robin visibly alternating."""
        self.bootstrap = copy.deepcopy(bootstrap)
        host, port = admin_address(self.bootstrap)
        if admin_port is not None:
            port = int(admin_port)
            self.bootstrap["admin"]["address"]["socket_address"]["port_value"] = port
        # A wildcard admin address (as under compose) is reached here through loopback.
        self.admin_host = reachable(host)
        self.admin_port = port
        self.log_level = log_level
        self.component_log_level = component_log_level
        self.drain_time_s = drain_time_s
        self.concurrency = concurrency
        self.extra_args = list(extra_args)
        self._workdir_arg = Path(workdir) if workdir is not None else None
        self.workdir: Path | None = None
        self._proc: subprocess.Popen | None = None
        self._admin: EnvoyAdmin | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        status = f"pid={self.pid}" if self.running else "stopped"
        return f"<Envoy {status} admin={self.admin_url}>"

    # -- properties
    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def returncode(self) -> int | None:
        return self._proc.poll() if self._proc else None

    @property
    def admin_url(self) -> str:
        host = f"[{self.admin_host}]" if ":" in self.admin_host else self.admin_host
        return f"http://{host}:{self.admin_port}"

    @property
    def admin(self) -> EnvoyAdmin:
        if self._admin is None or self._admin.url != self.admin_url:
            self._admin = EnvoyAdmin(self.admin_url)
        return self._admin

    @property
    def log_path(self) -> Path | None:
        return self.workdir / "envoy.log" if self.workdir else None

    def logs(self, n: int = 50) -> list[str]:
        """Last `n` lines Envoy wrote to stderr/stdout."""
        path = self.log_path
        if path is None or not path.exists():
            return []
        with path.open(errors="replace") as fh:
            return [line.rstrip("\n") for line in deque(fh, maxlen=n)]

    def state(self) -> str:
        """/ready text (PRE_INITIALIZING, INITIALIZING, LIVE...), or STOPPED if not running."""
        if not self.running:
            return "STOPPED"
        try:
            return self.admin.state()
        except httpx.TransportError:
            return "UNREACHABLE"

    # -- lifecycle
    def command(self, config_path: Path) -> list[str]:
        args = [
            str(find_envoy()),
            "-c", str(config_path),
            "--disable-hot-restart",
            "--drain-time-s", str(self.drain_time_s),
            "--parent-shutdown-time-s", str(self.drain_time_s + 1),
            "--log-level", self.log_level,
            "--admin-address-path", str(config_path.parent / "admin-address"),
        ]  # fmt: skip
        if self.component_log_level:
            args += ["--component-log-level", self.component_log_level]
        if self.concurrency:
            args += ["--concurrency", str(self.concurrency)]
        return args + self.extra_args

    def start(self, timeout: float = 10) -> Envoy:
        """Launch Envoy and return once its admin interface answers (any status)."""
        with self._lock:
            if self.running:
                return self
            wanted = admin_address(self.bootstrap)[1]  # 0: the kernel picks, nothing to check
            if wanted and not port_is_free(self.admin_host, wanted):
                raise EnvoyPortBusy(self.admin_host, wanted)
            if self._workdir_arg is not None:
                self._workdir_arg.mkdir(parents=True, exist_ok=True)
                self.workdir = self._workdir_arg
            else:
                self.workdir = Path(tempfile.mkdtemp(prefix="labxds-envoy-"))
                _TEMP_DIRS.append(self.workdir)
            config_path = write_bootstrap(self.bootstrap, self.workdir / "bootstrap.yaml")
            address_file = self.workdir / "admin-address"
            address_file.unlink(missing_ok=True)
            args = self.command(config_path)
            assert self.log_path is not None  # set with the work dir above
            with self.log_path.open("wb") as log:
                self._proc = _Spawner.popen(
                    _dying_with_parent(args),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=self.workdir,
                    start_new_session=True,
                )
            _RUNNING.add(self)
        try:
            self._wait_admin(address_file, timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_admin(self, address_file: Path, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        assert self._proc is not None
        while True:
            code = self._proc.poll()
            if code is not None:
                self._raise_exited(code)
            if address_file.exists() and address_file.read_text().strip():
                self._adopt_address(address_file.read_text().strip())
                try:
                    self.admin.get("/ready")
                    return
                except httpx.TransportError:
                    pass
            if time.monotonic() > deadline:
                raise EnvoyError(
                    f"Envoy (pid {self.pid}) did not answer on {self.admin_url} within {timeout}s; "
                    "last log lines:\n" + "\n".join(self.logs(20))
                )
            time.sleep(0.02)

    def _adopt_address(self, text: str) -> None:
        """Read back 'host:port' from --admin-address-path (matters when admin_port was 0)."""
        host, _, port = text.rpartition(":")
        self.admin_port = int(port)
        self.admin_host = reachable(host.strip("[]") or self.admin_host)

    def _raise_exited(self, code: int) -> None:
        lines = self.logs(20)
        text = "\n".join(lines)
        if "Address already in use" in text and f":{self.admin_port}" in text:
            raise EnvoyPortBusy(self.admin_host, self.admin_port, text)
        raise EnvoyExited(code, lines)

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM Envoy's process group, SIGKILL after `grace` seconds. Safe to call twice."""
        with self._lock:
            proc = self._proc
            if proc is None:
                return
            if proc.poll() is None:
                for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
                    try:
                        os.killpg(proc.pid, sig)
                    except ProcessLookupError:
                        break
                    try:
                        proc.wait(wait)
                        break
                    except subprocess.TimeoutExpired:
                        continue
            _RUNNING.discard(self)
            if self._admin is not None:
                self._admin.close()
                self._admin = None

    def __enter__(self) -> Envoy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

