"""Echo upstreams standing in for the sandbox's jmalloc/echo-server containers.

The sandbox's services answer every request with who served it and the request
as they received it, which is how a learner sees Envoy's routing, load balancing
and the headers Envoy adds. These answer in the same text format:

    Request served by service1

    HTTP/1.1 GET /path

    Host: localhost:10000
    Accept: */*
    X-Request-Id: ...

Several instances of one service (same name, own ports) make round robin visible;
each also says which instance it is in the `x-echo-instance` response header.

An instance can be told to misbehave while it runs (:class:`Behaviour`: a delay, a share of
failing answers, their status), from Python (``service.set_behaviour(error_rate=0.5)``) or over
HTTP (``PUT /_echo/behaviour`` with JSON, which is how a notebook reaches the containers under
docker compose). ``/healthz`` answers ``ok`` and is subject to the same faults, so Envoy's active
health checks see what its traffic sees.
"""

from __future__ import annotations

import json
import random
import threading
import time
from dataclasses import asdict, dataclass, replace
from http.server import BaseHTTPRequestHandler
from typing import Any, Iterable, Mapping

from ..i18n import _
from ..net.http_server import HttpServer

__all__ = ["BEHAVIOUR_PATH", "HEALTH_PATH", "Behaviour", "EchoFleet", "EchoService", "format_echo", "start_services"]

SERVED_BY_HEADER = "x-served-by"
INSTANCE_HEADER = "x-echo-instance"
# The address (host:port) the request reached: which replica, when replicas share one command.
ADDRESS_HEADER = "x-echo-address"
#: Where an echo instance is told how to behave (GET shows it, PUT or POST sets it).
BEHAVIOUR_PATH = "/_echo/behaviour"
#: What active health checks ask for: "ok", or the configured fault.
HEALTH_PATH = "/healthz"


@dataclass(frozen=True)
class Behaviour:
    """How an echo instance answers: ``delay`` seconds late, and ``error_rate`` (0 to 1) of its
    answers with ``status`` instead of the echo. The default is a healthy, fast instance."""

    delay: float = 0.0
    error_rate: float = 0.0
    status: int = 503

    def __post_init__(self) -> None:
        if not (isinstance(self.delay, (int, float)) and 0 <= self.delay <= 60):
            raise ValueError(_("delay {value} must be a number of seconds from 0 to 60").format(value=repr(self.delay)))
        if not (isinstance(self.error_rate, (int, float)) and 0 <= self.error_rate <= 1):
            raise ValueError(_("error_rate {value} must be from 0 (never fail) to 1 (always fail)").format(
                value=repr(self.error_rate)))
        if not (isinstance(self.status, int) and 200 <= self.status <= 599):
            raise ValueError(_("status {value} must be an HTTP status code (200-599)").format(value=repr(self.status)))

    @property
    def normal(self) -> bool:
        return self.delay == 0 and self.error_rate == 0

    def describe(self) -> str:
        """In words: 'normal', 'slow (0.5 s)', 'failing 50 % with 503', ..."""
        if self.normal:
            return _("normal")
        parts = []
        if self.delay:
            parts.append(_("slow ({seconds} s)").format(seconds=f"{self.delay:g}"))
        if self.error_rate:
            parts.append(_("failing {share} with {status}").format(share=f"{self.error_rate:.0%}", status=self.status))
        return ", ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Behaviour:
        unknown = set(data) - {"delay", "error_rate", "status"}
        if unknown:
            raise ValueError(_("unknown behaviour field(s) {fields}: use delay, error_rate, status").format(
                fields=sorted(unknown)))
        return cls(**dict(data))


def _canonical(name: str) -> str:
    """Header names as Go's net/http prints them (x-request-id -> X-Request-Id)."""
    return "-".join(part[:1].upper() + part[1:].lower() for part in name.split("-"))


def format_echo(
    served_by: str,
    method: str,
    target: str,
    headers: Iterable[tuple[str, str]],
    body: bytes = b"",
    protocol: str = "HTTP/1.1",
) -> bytes:
    """The echo-server body: who served it, the request line, Host, the other headers sorted."""
    pairs = list(headers)
    host = next((v for k, v in pairs if k.lower() == "host"), "")
    others = sorted(((_canonical(k), v) for k, v in pairs if k.lower() != "host"), key=lambda kv: kv[0])
    lines = [f"Request served by {served_by}", "", f"{protocol} {method} {target}", "", f"Host: {host}"]
    lines += [f"{k}: {v}" for k, v in others]
    text = ("\n".join(lines) + "\n").encode("utf-8", "replace")
    return text + (b"\n" + body if body else b"")


class _Server(HttpServer):
    """The shared server, knowing which service it answers for."""

    def __init__(self, address: tuple[str, int], service: EchoService) -> None:
        self.service = service
        super().__init__(address, _Handler, name=f"echo-{service.name}")

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that gave up first (Envoy's route timeout, shorter than this instance's delay)
        # is part of the lesson, not an error to print.
        import sys

        if isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            return
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as Envoy's upstream pools expect
    server_version = "labxds-echo"
    sys_version = ""
    timeout = 60  # idle keep-alive connections do not pin a thread forever
    disable_nagle_algorithm = True  # headers and body go out in two writes: no 40 ms delayed-ACK stall
    server: _Server

    def log_message(self, format: str, *args: object) -> None:  # quiet: notebooks show stderr
        pass

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _answer(self, status: int, body: bytes, content_type: str = "text/plain") -> None:
        service = self.server.service
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header(SERVED_BY_HEADER, service.name)
        if service.instance is not None:
            self.send_header(INSTANCE_HEADER, str(service.instance))
        host, port = self.connection.getsockname()[:2]
        self.send_header(ADDRESS_HEADER, f"{host}:{port}")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _echo(self) -> None:
        service = self.server.service
        path = self.path.split("?", 1)[0]
        if path == BEHAVIOUR_PATH:
            return self._behaviour()
        request_body = self._read_body()
        health = path == HEALTH_PATH
        fail = service._fault()
        if fail is not None:
            status, text = fail
            service._count(health, failed=True)
            return self._answer(status, text.encode())
        service._count(health, failed=False)
        if health:
            return self._answer(200, b"ok\n")
        body = format_echo(service.name, self.command, self.path, self.headers.items(), request_body,
                           self.request_version)  # fmt: skip
        self._answer(200, body)

    def _behaviour(self) -> None:
        """GET: the behaviour as JSON; PUT/POST with JSON fields: change them (the rest stays)."""
        service = self.server.service
        if self.command in ("PUT", "POST"):
            try:
                data = json.loads(self._read_body() or b"{}")
                if not isinstance(data, dict):
                    raise ValueError(_('send a JSON object such as {example}').format(example='{"error_rate": 0.5}'))
                Behaviour.from_dict({**service.behaviour.to_dict(), **data})  # names the wrong field
                service.set_behaviour(**data)
            except (ValueError, TypeError) as exc:
                return self._answer(400, f"{exc}\n".encode())
        elif self.command not in ("GET", "HEAD"):
            return self._answer(405, b"GET, PUT or POST\n")
        self._answer(200, (json.dumps(service.behaviour.to_dict()) + "\n").encode(), "application/json")

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_HEAD = _echo


class EchoService:
    """One echo upstream on its own port (port=0: the kernel picks a free one)."""

    def __init__(self, name: str, host: str = "127.0.0.1", port: int = 0, *, instance: int | None = None) -> None:
        self.name = name
        self.host = host
        self.instance = instance
        self._requested_port = port
        self._server: _Server | None = None
        self._lock = threading.Lock()
        self._random = random.Random()
        self.behaviour = Behaviour()
        self.requests = 0  # answered, the health checks aside
        self.failed = 0  # of those, answered with the behaviour's error status
        self.health_checks = 0

    def __repr__(self) -> str:
        where = self.url if self.running else "stopped"
        tag = f"#{self.instance}" if self.instance is not None else ""
        return f"<EchoService {self.name}{tag} {where}>"

    def _count(self, health: bool = False, *, failed: bool = False) -> None:
        with self._lock:
            if health:
                self.health_checks += 1
            else:
                self.requests += 1
                self.failed += failed

    def set_behaviour(
        self, *, delay: float | None = None, error_rate: float | None = None, status: int | None = None
    ) -> Behaviour:
        """Change how this instance answers from the next request on; unnamed fields stay."""
        changes: dict[str, Any] = {
            k: v for k, v in (("delay", delay), ("error_rate", error_rate), ("status", status)) if v is not None
        }
        with self._lock:
            self.behaviour = replace(self.behaviour, **changes)
            return self.behaviour

    def reset_behaviour(self) -> Behaviour:
        """Back to normal: no delay, no failures."""
        with self._lock:
            self.behaviour = Behaviour()
            return self.behaviour

    def _fault(self) -> tuple[int, str] | None:
        """Sleep the delay; then (status, body) if this answer is to fail, else None."""
        with self._lock:
            b = self.behaviour
            fail = b.error_rate >= 1 or (b.error_rate > 0 and self._random.random() < b.error_rate)
        if b.delay:
            time.sleep(b.delay)
        if not fail:
            return None
        return b.status, _("{service} fails on purpose ({behaviour})").format(service=self.name, behaviour=b.describe()) + "\n"

    @property
    def running(self) -> bool:
        return self._server is not None

    @property
    def port(self) -> int:
        if self._server is None:
            if self._requested_port:
                return self._requested_port
            raise RuntimeError(f"echo service {self.name!r} is not started: its port is not chosen yet")
        return self._server.server_address[1]

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> EchoService:
        if self._server is not None:
            return self
        try:
            server = _Server((self.host, self._requested_port), self)
        except OSError as exc:
            raise OSError(
                exc.errno, f"echo service {self.name!r} cannot listen on {self.host}:{self._requested_port}: {exc.strerror}"
            ) from exc
        self._server = server.start()
        # Keep the port on restart: endpoints already sent to Envoy stay valid.
        self._requested_port = server.server_address[1]
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.stop(timeout=2)

    def __enter__(self) -> EchoService:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class EchoFleet:
    """Named services, each with one or more instances: fleet["service1"] -> [EchoService, ...]."""

    def __init__(self, counts: Mapping[str, int], host: str = "127.0.0.1",
                 ports: Mapping[str, int] | None = None) -> None:
        """``ports`` fixes the first instance's port of some services (absent or 0: a free one)."""
        self.host = host
        fixed = dict(ports or {})
        self.services: dict[str, list[EchoService]] = {
            name: [EchoService(name, host, fixed.get(name, 0) if i == 1 else 0, instance=i if n > 1 else None)
                   for i in range(1, n + 1)]
            for name, n in counts.items()
        }

    def __repr__(self) -> str:
        body = ", ".join(f"{name}: {[s.port if s.running else None for s in inst]}" for name, inst in self.services.items())
        return f"<EchoFleet {body}>"

    def __getitem__(self, name: str) -> list[EchoService]:
        return self.services[name]

    def __iter__(self):
        return (svc for instances in self.services.values() for svc in instances)

    def endpoints(self, name: str) -> list[tuple[str, int]]:
        """(host, port) of every instance of `name`: what a control plane puts in EDS."""
        return [svc.address for svc in self.services[name]]

    def start(self) -> EchoFleet:
        try:
            for svc in self:
                svc.start()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for svc in self:
            svc.stop()

    def __enter__(self) -> EchoFleet:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_services(counts: Mapping[str, int] | None = None, host: str = "127.0.0.1") -> EchoFleet:
    """Start the sandbox's upstreams; default one service1 and one service2."""
    return EchoFleet(counts or {"service1": 1, "service2": 1}, host).start()
