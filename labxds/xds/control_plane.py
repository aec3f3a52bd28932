"""The control plane a notebook runs: a gRPC xDS server on an event loop of its own.

A Jupyter kernel already runs an asyncio loop in its main thread, so the server gets a daemon
thread with a fresh loop; the notebook talks to it through thread-safe calls. With grpc.aio a
thousand open streams are a thousand coroutines, not a thousand threads.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Iterable, Sequence
from typing import Any

import grpc

from ..i18n import _
from ..net.addresses import is_loopback
from .cache import SnapshotCache  # noqa: E402
from .server import Authorizer, XdsServer
from .snapshot import Snapshot
from .tracking import NodeStatus, Tracker

__all__ = ["MAX_REQUEST_BYTES", "MAX_STREAMS", "ControlPlane", "PortInUseError"]

log = logging.getLogger("labxds")

_RUNNING: dict[tuple[str, int], ControlPlane] = {}
_RUNNING_LOCK = threading.Lock()


#: Streams a control plane holds at most by default (about 32 KB each: 20,000 are ~640 MB).
MAX_STREAMS = 20_000
#: A DiscoveryRequest's share of the input budget (labxds.net.budget): bytes (gRPC refuses a larger
#: message with RESOURCE_EXHAUSTED; 100,000 resource names of 40 characters are 4.4 MB). Its depth
#: is bounded by protobuf's own limit of 100 (DecodeError: INVALID_ARGUMENT), its values by bytes.
MAX_REQUEST_BYTES = 16 << 20


class PortInUseError(OSError):
    """The port is taken by another process."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        super().__init__(
            _("port {port} on {host} is already in use by another process; stop it, or choose another port "
              "(for example ControlPlane(port={next}) or --port {next})").format(port=port, host=host, next=port + 1)
        )


class ControlPlane:
    """An ADS server (SotW and Delta) serving snapshots from a cache.

    Resources with a TTL (``Snapshot(..., ttl=...)``) get heartbeats every ``heartbeat_interval``
    seconds, or every half of the shortest TTL a client holds when it is None, and only on
    streams whose node advertises ``xds.config.supports-resource-ttl`` (rule 14). A Delta
    heartbeat is the protocol's: each resource without its body. A SotW one is, by default
    (``sotw_heartbeat="resend"``), the resources again with their bodies, at the same version:
    Envoy deletes the listeners or clusters a bare SotW LDS/CDS heartbeat beats for and refreshes
    no TTL from bare ones; ``sotw_heartbeat="bare"`` sends the protocol's form to clients that
    implement it.

    Every ``keepalive[0]`` seconds the server pings each client's connection and drops it when
    the answer takes longer than ``keepalive[1]``, so a client that vanished without closing its
    connection stops counting as connected (None: TCP's own, hours-long, timeouts). The timeout
    is generous because Envoy answers pings on its main thread, which applying 10,000 clusters
    keeps busy for about 6 s.

    Disconnected nodes keep their status and trace (``trace_size`` events each) until more than
    ``keep_disconnected`` of them are gone; then the longest gone are forgotten.

    At most ``max_streams`` streams are held at once; one more is refused with RESOURCE_EXHAUSTED
    and the reason, and so is a burst of new streams larger than that. ``grpc_options`` are added
    to gRPC's server options and replace the control plane's own for the same key (gRPC itself
    would keep the first of two). Among them ``("grpc.so_reuseport", 1)`` lets several processes
    serve one port, the kernel spreading connections over them (off by default, so a second
    server cannot bind a port silently; ``bench/fanout_processes.py`` measures it).

    ``start()`` returns once the port is bound. Starting a second ControlPlane on a host and port
    this process already serves returns the running one, so re-running a notebook cell is safe.
    """

    def __init__(
        self,
        port: int = 18000,
        host: str = "127.0.0.1",
        *,
        cache: SnapshotCache | None = None,
        trace_size: int = 2000,
        keep_disconnected: int = 1000,
        authorize: Authorizer | None = None,
        server_credentials: grpc.ServerCredentials | None = None,
        identifier: str = "labxds",
        heartbeat_interval: float | None = None,
        sotw_heartbeat: str = "resend",
        keepalive: tuple[float, float] | None = (30.0, 20.0),
        trust_reconnect_versions: bool = True,
        max_streams: int = MAX_STREAMS,
        grpc_options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        self.host = host
        self.port = port
        self.cache = cache or SnapshotCache()
        self.tracker = Tracker(trace_size, keep_disconnected)
        #: ``cp.on(event, callback)``: hook ``stream_open``, ``stream_close``, ``request`` or ``response``
        #: (typed in ``labxds.xds.hooks``); runs on the server thread; returns a function removing it.
        self.on = self.tracker.on
        self._xds = XdsServer(self.cache, self.tracker, identifier=identifier, authorize=authorize,
                              heartbeat_interval=heartbeat_interval, sotw_heartbeat=sotw_heartbeat,
                              trust_reconnect_versions=trust_reconnect_versions)
        self._credentials = server_credentials
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: grpc.aio.Server | None = None
        self._requested_port = port
        if keepalive is not None and not (keepalive[0] > 0 and keepalive[1] > 0):
            raise ValueError(f"keepalive is (interval, timeout) in positive seconds, not {keepalive!r}")
        self._keepalive = keepalive
        if max_streams < 1:
            raise ValueError(f"max_streams must be 1 or more, not {max_streams!r}")
        self._xds.max_streams = max_streams
        self._grpc_options = list(grpc_options)

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._server is not None

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def start(self) -> ControlPlane:
        """Bind and serve; returns the ControlPlane that now serves this host and port."""
        if self.running:
            return self
        with _RUNNING_LOCK:
            existing = _RUNNING.get((self.host, self._requested_port)) if self._requested_port else None
            if existing is not None and existing.running:
                return existing
            if not is_loopback(self.host) and self._credentials is None:
                log.warning(
                    "labxds: the control plane listens on %s, beyond this machine. Anyone who can "
                    "reach it can read every snapshot (secrets included) and pose as any node; "
                    "use TLS and node tokens, or bind 127.0.0.1.",
                    self.host,
                )
            elif not is_loopback(self.host) and self._xds.authorize is None:
                log.warning(
                    "labxds: the control plane listens on %s with TLS but no node authorization: a "
                    "client with a certificate it accepts can pose as any node and read its snapshot; "
                    "tie node ids to certificates (CertificateAuthorizer) or use node tokens.",
                    self.host,
                )
            started = threading.Event()
            failure: list[BaseException] = []
            self._thread = threading.Thread(
                target=self._run_loop, args=(started, failure), name=f"labxds-xds-{self._requested_port}", daemon=True
            )
            self._thread.start()
            started.wait()
            if failure:
                self._thread.join(timeout=5)
                self._thread = None
                raise failure[0]
            _RUNNING[(self.host, self.port)] = self
            if self._requested_port != self.port:
                _RUNNING[(self.host, self._requested_port)] = self
        return self

    def _run_loop(self, started: threading.Event, failure: list[BaseException]) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        self._loop = loop
        try:
            loop.run_until_complete(self._bind())
        except BaseException as exc:
            failure.append(exc)
            started.set()
            loop.close()
            self._loop = None
            return
        started.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def _bind(self) -> None:
        # so_reuseport would let a second server bind the same port silently.
        options = [
            ("grpc.so_reuseport", 0),
            ("grpc.max_receive_message_length", MAX_REQUEST_BYTES),
            ("grpc.max_send_message_length", 256 * 1024 * 1024),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
            # A fleet reconnecting at once (a control-plane restart) opens thousands of streams in
            # a second. gRPC queues the calls the server has not picked up yet and refuses them
            # (RESOURCE_EXHAUSTED "Too many pending requests") past 1,000 at random and past 3,000
            # always; grpc.aio clients see that as "INTERNAL: Internal error from Core". The
            # queue may hold as many streams as the server takes; beyond, the handler refuses.
            ("grpc.server.max_pending_requests", self._xds.max_streams),
            ("grpc.server.max_pending_requests_hard_limit", self._xds.max_streams),
        ]
        if self._keepalive is not None:
            # Ping every client and drop its connection when a ping goes unanswered: a client that
            # vanished without a word (a sleeping laptop) must not look connected for hours.
            interval, timeout = self._keepalive
            options += [
                ("grpc.keepalive_time_ms", max(1, int(interval * 1000))),
                ("grpc.keepalive_timeout_ms", max(1, int(timeout * 1000))),
                ("grpc.http2.max_pings_without_data", 0),  # idle ADS streams carry no data for long
                ("grpc.http2.ping_timeout_ms", max(1, int(timeout * 1000))),
            ]
        # gRPC keeps the FIRST of two args with one key (grpcio 1.85): drop ours that the caller sets.
        mine = {key for key, _ in self._grpc_options}
        options = [(key, value) for key, value in options if key not in mine]
        server = grpc.aio.server(options=options + self._grpc_options)
        server.add_generic_rpc_handlers(self._xds.handlers())
        target = f"{self.host}:{self._requested_port}" if ":" not in self.host else f"[{self.host}]:{self._requested_port}"
        try:
            if self._credentials is not None:
                port = server.add_secure_port(target, self._credentials)
            else:
                port = server.add_insecure_port(target)
        except RuntimeError:
            port = 0
        if not port:
            raise PortInUseError(self.host, self._requested_port)
        await server.start()
        self.port = port
        self._server = server

    def stop(self, grace: float = 0.5) -> None:
        """End every stream, free the port and the thread. Safe to call twice.

        ``start()`` afterwards binds the same port again (its clients retry there), with the
        same snapshots, status and trace: a control plane that was away and came back."""
        loop, server, thread = self._loop, self._server, self._thread
        if server is None or loop is None:
            return
        self._server = None
        self._requested_port = self.port
        with _RUNNING_LOCK:
            for key in [k for k, v in _RUNNING.items() if v is self]:
                del _RUNNING[key]
        future = asyncio.run_coroutine_threadsafe(server.stop(grace), loop)
        try:
            future.result(timeout=grace + 5)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            if thread is not None and thread is not threading.current_thread():
                thread.join(timeout=5)
            self._loop = None
            self._thread = None

    def __enter__(self) -> ControlPlane:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"serving {self.address}" if self.running else "stopped"
        return f"<ControlPlane {state}, {len(self.tracker.connected())} node(s) connected>"

    # -- snapshots ---------------------------------------------------------------------------

    def set_snapshot(self, snapshot: Snapshot | Iterable[Any], node: str | Iterable[str] | None = None) -> Snapshot:
        """Serve ``snapshot`` to ``node`` (a node id, several, or None for the default)."""
        snap = snapshot if isinstance(snapshot, Snapshot) else Snapshot(snapshot)
        self.cache.set(snap, node)
        return snap

    def push(
        self,
        snapshot: Snapshot | Iterable[Any],
        node: str | Iterable[str] | None = None,
        *,
        wait: bool = True,
        nodes: Iterable[str] | None = None,
        timeout: float = 10.0,
    ) -> Snapshot:
        """Serve ``snapshot`` and, with ``wait``, return once the nodes have applied it.

        The nodes waited for are ``nodes`` if given, else the connected nodes the push affects.
        Raises PushRejected with Envoy's own error text if one of them NACKs, PushTimeout naming
        the nodes that did not answer in time. The snapshot stays served either way: fix it and
        push again.
        """
        snap = snapshot if isinstance(snapshot, Snapshot) else Snapshot(snapshot)
        if self._thread is threading.current_thread():
            raise RuntimeError("push(wait=True) from the server's own thread would deadlock; use set_snapshot")
        since = time.time()
        if nodes is None:
            connected = self.tracker.connected()
            if node is None:
                own = set(self.cache.node_ids())
                targets = [n for n in connected if n not in own]
            else:
                wanted = {node} if isinstance(node, str) else set(node)
                targets = [n for n in connected if n in wanted]
        else:
            targets = list(nodes)
        self.cache.set(snap, node)
        if wait and targets:
            self.tracker.wait_applied(snap, targets, timeout, since, self.cache.get)
        return snap

    def snapshot(self, node: str | None = None) -> Snapshot | None:
        """The snapshot ``node`` runs (the default with no node)."""
        return self.cache.get(node) if node is not None else self.cache.default

    # -- observing ---------------------------------------------------------------------------

    def nodes(self) -> list[str]:
        """Ids of the nodes connected now."""
        return self.tracker.connected()

    def node_status(self, node_id: str) -> NodeStatus | None:
        return self.tracker.node(node_id)

    def status(self) -> list[dict[str, Any]]:
        """Per node and type: versions sent, ACKed and NACKed, with Envoy's last error.

        Records (``pandas.DataFrame(cp.status())`` makes a table; ``labxds.notebook`` has one
        with proper time columns)."""
        return self.tracker.status_rows()

    def trace(self, node: str | None = None, last: int | None = None) -> list[dict[str, Any]]:
        """Requests and responses, oldest first: the protocol as records."""
        return self.tracker.trace_rows(node, last)

    @property
    def stream_count(self) -> int:
        return self._xds.stream_count

    def wait_for_node(self, node_id: str | None = None, timeout: float = 10.0) -> str:
        """Block until ``node_id`` (or any node) connects; returns its id."""
        return self.tracker.wait_connected(node_id, timeout)



def running(port: int, host: str = "127.0.0.1") -> ControlPlane | None:
    """The ControlPlane this process serves on ``host:port``, if any."""
    return _RUNNING.get((host, port))
