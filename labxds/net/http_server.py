"""One threaded HTTP server for everything labxds serves over HTTP (echo services, the workshop desk).

It binds where it is told (loopback unless the caller asks otherwise), speaks IPv4 or IPv6 by the
address, runs in a daemon thread, and on ``stop`` also cuts keep-alive connections: a stopped
service must stop answering, not linger on a pooled connection.
"""

from __future__ import annotations

import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self

__all__ = ["HttpServer"]


class HttpServer(ThreadingHTTPServer):
    """``HttpServer((host, port), Handler, name="...").start()``; ``.stop()`` closes everything."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], *, name: str = "labxds-http",
                 context: Any = None) -> None:
        host = address[0].strip("[]")
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()
        self.thread_name = name
        self._thread: threading.Thread | None = None
        super().__init__((host, address[1]), handler)
        if context is not None:  # an ssl.SSLContext: HTTPS
            self.socket = context.wrap_socket(self.socket, server_side=True)

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def process_request(self, request: Any, client_address: Any) -> None:
        with self.connections_lock:
            self.connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self.connections_lock:
            self.connections.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        """Cut open (keep-alive) connections."""
        with self.connections_lock:
            open_now = list(self.connections)
        for conn in open_now:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def start(self) -> Self:
        self._thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.2},
                                        name=self.thread_name, daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop serving, close the listening socket and every open connection. Safe to call twice."""
        if self._thread is not None:
            self.shutdown()
        self.server_close()
        self.close_connections()
        if self._thread is not None:
            self._thread.join(timeout=timeout)
            self._thread = None
