"""Proxyless gRPC: gRPC echo backends and a gRPC client whose channel the control plane steers.

gRPC has an xDS client of its own: a channel to ``xds:///greeter`` asks the control plane for
the Listener ``greeter`` (an ``api_listener``), then its RouteConfiguration, Cluster and
ClusterLoadAssignment, and balances calls over the endpoints itself. No Envoy sits in between.
It reads its bootstrap (where the control plane is, its node id) from the environment variable
``GRPC_XDS_BOOTSTRAP_CONFIG`` (JSON) or the file ``GRPC_XDS_BOOTSTRAP`` names.

The backends answer the method ``/labxds.Echo/Who`` with their name, with raw bytes instead of
protobuf messages, so no generated code is needed.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ..i18n import _

__all__ = ["ECHO_METHOD", "GrpcEcho", "GrpcFleet", "XdsGrpcClient", "xds_bootstrap"]

#: The one method the backends serve: answers the backend's name.
ECHO_METHOD = "/labxds.Echo/Who"
BOOTSTRAP_ENV = "GRPC_XDS_BOOTSTRAP_CONFIG"


class GrpcEcho:
    """One gRPC backend on its own port (port=0: the kernel picks), answering with its name."""

    def __init__(self, name: str, host: str = "127.0.0.1", port: int = 0) -> None:
        self.name = name
        self.host = host
        self._requested_port = port
        self._server: Any = None
        self._lock = threading.Lock()
        self.calls = 0

    def __repr__(self) -> str:
        return f"<GrpcEcho {self.name} {self.host}:{self._requested_port if self.running else 'stopped'}>"

    @property
    def running(self) -> bool:
        return self._server is not None

    @property
    def port(self) -> int:
        return self._requested_port

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port

    def _who(self, request: bytes, context: Any) -> bytes:
        with self._lock:
            self.calls += 1
        return self.name.encode()

    def start(self) -> GrpcEcho:
        import grpc

        if self._server is not None:
            return self
        handler = grpc.method_handlers_generic_handler(
            "labxds.Echo", {"Who": grpc.unary_unary_rpc_method_handler(self._who)}
        )
        server = grpc.server(ThreadPoolExecutor(4, thread_name_prefix=f"grpc-echo-{self.name}"), handlers=[handler])
        host = f"[{self.host}]" if ":" in self.host else self.host
        port = server.add_insecure_port(f"{host}:{self._requested_port}")
        if not port:
            raise OSError(f"gRPC backend {self.name!r} cannot listen on {self.host}:{self._requested_port}")
        server.start()
        self._requested_port = port  # keep the port on restart: the endpoints sent stay valid
        self._server = server
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.stop(0).wait(5)


class GrpcFleet:
    """Named gRPC backends: ``fleet["alpha"]`` -> GrpcEcho."""

    def __init__(self, names: Iterable[str], host: str = "127.0.0.1") -> None:
        self.backends = {name: GrpcEcho(name, host) for name in names}

    def __getitem__(self, name: str) -> GrpcEcho:
        return self.backends[name]

    def __iter__(self):
        return iter(self.backends.values())

    def endpoints(self, name: str) -> list[tuple[str, int]]:
        return [self.backends[name].address]

    def start(self) -> GrpcFleet:
        try:
            for backend in self:
                backend.start()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for backend in self:
            backend.stop()


def xds_bootstrap(server_uri: str, node_id: str, *, cluster: str = "labxds") -> dict[str, Any]:
    """gRPC's xDS bootstrap: one control plane (plaintext, xDS v3) and the node it speaks as.

    gRPC speaks State of the World only and needs ``xds_v3`` in ``server_features``."""
    return {
        "xds_servers": [{
            "server_uri": server_uri,
            "channel_creds": [{"type": "insecure"}],
            "server_features": ["xds_v3"],
        }],
        "node": {"id": node_id, "cluster": cluster},
    }  # fmt: skip


# One xDS client per process: gRPC keeps one per bootstrap while any channel uses it, so a new
# client (a re-run cell) first closes the channels of the old one.
_CLIENTS: dict[str, XdsGrpcClient] = {}
_CLIENTS_LOCK = threading.Lock()


class XdsGrpcClient:
    """A gRPC channel to ``xds:///target`` in this process, its bootstrap in the environment.

    ``call(n)`` makes ``n`` calls to the echo method and returns one record each (who answered,
    latency, error in gRPC's words). gRPC reads the bootstrap when its xDS client starts, which is
    when the first ``xds:`` channel opens: all channels of a process share one bootstrap, so this
    closes any earlier client's channel before opening its own.
    """

    def __init__(self, target: str, bootstrap: Mapping[str, Any]) -> None:
        self.target = target
        self.bootstrap = dict(bootstrap)
        self.node_id = str(self.bootstrap.get("node", {}).get("id", ""))
        self._channel: Any = None
        self._stub: Any = None

    def __repr__(self) -> str:
        return f"<XdsGrpcClient xds:///{self.target} node {self.node_id!r} {'open' if self._channel else 'closed'}>"

    @property
    def uri(self) -> str:
        return f"xds:///{self.target}"

    def start(self) -> XdsGrpcClient:
        import grpc

        if self._channel is not None:
            return self
        with _CLIENTS_LOCK:
            for other in list(_CLIENTS.values()):
                other.close()
            os.environ.pop("GRPC_XDS_BOOTSTRAP", None)  # a bootstrap file would win over ours
            os.environ[BOOTSTRAP_ENV] = json.dumps(self.bootstrap)
            self._channel = grpc.insecure_channel(self.uri)
            self._stub = self._channel.unary_unary(ECHO_METHOD)
            _CLIENTS[self.uri] = self
        return self

    def connect(self) -> XdsGrpcClient:
        """Open the xDS stream now (gRPC opens it when the channel is first used, or asked to)."""
        self.start()
        self._channel.subscribe(lambda _state: None, try_to_connect=True)
        return self

    def close(self) -> None:
        channel, self._channel = self._channel, None
        if channel is not None:
            channel.close()
        with _CLIENTS_LOCK:
            if _CLIENTS.get(self.uri) is self:
                del _CLIENTS[self.uri]

    def __enter__(self) -> XdsGrpcClient:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def call(self, n: int = 1, *, timeout: float = 2.0, wait_for_ready: bool = True) -> list[dict[str, Any]]:
        """``n`` calls, one after another; failures are records too (``error``: the status and
        gRPC's text). ``wait_for_ready`` waits for the channel's first configuration."""
        import grpc

        if self._channel is None:
            self.start()
        rows = []
        for i in range(1, n + 1):
            row: dict[str, Any] = {"call": i, "served_by": None, "latency_ms": None, "error": None}
            start = time.perf_counter()
            try:
                row["served_by"] = self._stub(b"", timeout=timeout, wait_for_ready=wait_for_ready).decode()
            except grpc.RpcError as exc:
                row["error"] = f"{exc.code().name}: {exc.details()}"
            row["latency_ms"] = (time.perf_counter() - start) * 1000
            rows.append(row)
        return rows

    def wait_for(self, backend: str, *, timeout: float = 5.0) -> list[dict[str, Any]]:
        """Call until ``backend`` answers (a push reaches gRPC's picker a moment after its ACK);
        returns the calls made. Raises TimeoutError saying who answered instead."""
        deadline = time.monotonic() + timeout
        made: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            row = self.call(1, timeout=max(0.1, min(2.0, deadline - time.monotonic())))[0]
            made.append(row)
            if row["served_by"] == backend:
                return made
            time.sleep(0.02)
        seen = sorted({str(r["served_by"] or r["error"]) for r in made})
        raise TimeoutError(_("{backend} did not answer within {seconds} s; answers: {answers}").format(
            backend=backend, seconds=f"{timeout:g}", answers=", ".join(seen)))
