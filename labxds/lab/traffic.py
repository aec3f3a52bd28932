"""Requests through Envoy's listener, as ``curl`` would send them, each answer one plain record;
and :class:`Traffic`, a steady stream of them in the background while a lesson changes things.

Failures are records too ("connection refused" before Envoy has a listener is part of the
lesson), in the words curl uses. The notebook layer turns the records into tables.
"""

from __future__ import annotations

import errno
import http.client
import socket
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

from ..i18n import N_, _
from ..xds.builders import RESPONSE_FLAGS_HEADER
from .echo import ADDRESS_HEADER, INSTANCE_HEADER

__all__ = ["Traffic", "exchange", "send", "server_certificate"]


def _parse_echo(text: str) -> tuple[str | None, dict[str, str]]:
    """(served_by, echoed request headers) from an echo-server body, or (None, {})."""
    lines = text.split("\n")
    first = lines[0] if lines else ""
    if not first.startswith("Request served by "):
        return None, {}
    served_by = first.removeprefix("Request served by ").strip()
    headers: dict[str, str] = {}
    # layout: served-by, blank, request line, blank, headers..., [blank, body]
    for line in lines[4:]:
        if not line.strip():
            break
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip()] = value.strip()
    return served_by, headers


def _describe_error(exc: Exception) -> str:
    """The words curl would use, so the lesson reads like the sandbox."""
    import httpx

    chain: list[BaseException] = []
    cur: BaseException | None = exc
    while cur is not None and cur not in chain:
        chain.append(cur)
        cur = cur.__cause__ or cur.__context__
    codes = {getattr(e, "errno", None) for e in chain}
    text = " ".join(str(e) for e in chain).lower()
    if errno.ECONNREFUSED in codes or "refused" in text:
        return "connection refused"
    if errno.ECONNRESET in codes or "reset" in text:
        return "connection reset by peer"
    if isinstance(exc, httpx.TimeoutException):
        return "timeout"
    if isinstance(exc, httpx.RemoteProtocolError):
        return "empty reply from server"
    return f"{type(exc).__name__}: {exc}"


def _target(url: str | int, path: str) -> str:
    if isinstance(url, int):
        url = f"http://127.0.0.1:{url}"
    if "://" not in url:
        url = f"http://{url}"
    if urlsplit(url).path not in ("", "/"):
        return url  # the caller already named a path
    return url.rstrip("/") + (path if path.startswith("/") else f"/{path}")


def send(
    url: str | int,
    n: int = 1,
    *,
    path: str = "/",
    headers: Mapping[str, str] | None = None,
    include_headers: bool = False,
    method: str = "GET",
    timeout: float = 2.0,
    response_headers: Sequence[str] = (),
    verify: Any = True,
) -> list[dict[str, Any]]:
    """Send `n` requests (like `curl` n times) and return one record per request.

    Failures are rows, not exceptions: "connection refused" before Envoy has a
    listener is part of the lesson. ``flags`` holds Envoy's response flags for the replies
    it made itself (503 NC, 404 NR, ...) when the listener was built with
    ``response_flags=True``. ``response_headers`` names response headers to add to each
    record (None when absent), e.g. one a route adds. Requests share one keep-alive
    connection, so with one Envoy worker round robin alternates strictly. ``verify``: httpx's,
    for HTTPS (an ``ssl.SSLContext`` trusting the lab's CA).
    """
    import httpx

    target = _target(url, path)
    rows: list[dict[str, Any]] = []
    with httpx.Client(timeout=timeout, trust_env=False, verify=verify) as client:
        for i in range(1, n + 1):
            row: dict[str, Any] = {"request": i, "status": None, "served_by": None, "instance": None,
                                   "upstream": None, "latency_ms": None, "x_request_id": None, "error": None,
                                   "flags": None}  # fmt: skip
            echoed: dict[str, str] = {}
            start = time.perf_counter()
            try:
                response = client.request(method, target, headers=dict(headers or {}))
            except httpx.HTTPError as exc:
                row["latency_ms"] = (time.perf_counter() - start) * 1000
                row["error"] = _describe_error(exc)
                row.update(dict.fromkeys(response_headers))
            else:
                row["latency_ms"] = (time.perf_counter() - start) * 1000
                row["status"] = response.status_code
                served_by, echoed = _parse_echo(response.text)
                row["served_by"] = served_by or response.headers.get("x-served-by")
                row["instance"] = response.headers.get(INSTANCE_HEADER)
                row["upstream"] = response.headers.get(ADDRESS_HEADER)
                row["x_request_id"] = echoed.get("X-Request-Id") or response.headers.get("x-request-id")
                # Envoy's response flags (NC, UH, NR, ...), from a listener built with response_flags=True
                row["flags"] = response.headers.get(RESPONSE_FLAGS_HEADER)
                for name in response_headers:
                    row[name] = response.headers.get(name)
                if served_by is None and response.status_code >= 400:
                    # Envoy's own answers: "no healthy upstream", "upstream connect error ..."
                    row["error"] = response.text.strip().split("\n", 1)[0][:120] or response.reason_phrase
            if include_headers:
                row.update(echoed)
            rows.append(row)
    return rows


# --------------------------------------------------------------------------- background traffic


def _failure_reason(row: Mapping[str, Any]) -> str | None:
    """Why a request counts as failed, in curl's or Envoy's words; None when it succeeded."""
    if row.get("error") and row.get("status") is None:
        return str(row["error"])
    status = row.get("status")
    if status is not None and status >= 400:
        return f"{status} {row.get('error') or ''}".strip()
    return None


class Traffic:
    """Requests to ``url`` at a steady ``rate`` per second from background threads, each recorded.

    What a load balancer in front of Envoy would send while you change its configuration:
    ``workers`` threads, each with its own keep-alive connection (so a draining listener's
    ``Connection: close`` is seen), each request one record: ``t`` (seconds since start), status,
    who served it, latency, and why it failed. A request fails when it gets no answer or a 4xx/5xx
    status. ``mark("switch")`` notes a moment, which charts draw as a line.

    ``verify`` is httpx's (an ``ssl.SSLContext`` trusting the lab's CA, for HTTPS listeners).

    With ``retry_closed`` (the default) a request whose keep-alive connection was closed under it,
    before any answer ("empty reply from server", "connection reset by peer"), is sent once more on
    a new connection, as browsers and Go's HTTP client do for a GET: the record says so in
    ``retried`` and counts as the second attempt's outcome; ``summary()["retried"]`` counts them.
    A refused connection is never retried: that is a listener gone.
    """

    def __init__(
        self,
        url: str | int,
        *,
        rate: float = 40.0,
        workers: int = 2,
        path: str = "/",
        headers: Mapping[str, str] | None = None,
        timeout: float = 2.0,
        verify: Any = True,
        retry_closed: bool = True,
    ) -> None:
        if not rate > 0:
            raise ValueError(_("rate {rate} must be more than 0 requests per second").format(rate=repr(rate)))
        if workers < 1:
            raise ValueError(_("workers {workers} must be 1 or more").format(workers=repr(workers)))
        self.url = url
        self.target = _target(url, path)
        self.rate = float(rate)
        self.workers = int(workers)
        self.headers = dict(headers or {})
        self.timeout = timeout
        self.verify = verify
        self.retry_closed = retry_closed
        self._records: list[dict[str, Any]] = []
        self._marks: list[tuple[float, str]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._started: float | None = None
        self._stopped: float | None = None

    def __repr__(self) -> str:
        s = self.summary()
        state = "running" if self.running else "stopped"
        return (f"<Traffic {state} {self.target} {self.rate:g}/s: {s['requests']} requests, "
                f"{s['failed']} failed>")  # fmt: skip

    # -- running

    @property
    def running(self) -> bool:
        return any(t.is_alive() for t in self._threads)

    def start(self) -> Traffic:
        """Start sending (again, after a stop: the records go on)."""
        if self.running:
            return self
        import httpx  # noqa: F401 - imported here, not in the workers' first request

        self._stop.clear()
        now = time.monotonic()
        if self._started is None:
            self._started = now
        self._stopped = None
        self._threads = [
            threading.Thread(target=self._work, args=(i,), name=f"labxds-traffic-{i}", daemon=True)
            for i in range(self.workers)
        ]
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> dict[str, Any]:
        """Stop sending, wait for the requests in flight; returns the summary."""
        self._stop.set()
        for t in self._threads:
            t.join(timeout=self.timeout + 1)
        if self._stopped is None:
            self._stopped = time.monotonic()
        return self.summary()

    def __enter__(self) -> Traffic:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _work(self, index: int) -> None:
        import httpx

        interval = self.workers / self.rate
        assert self._started is not None
        # Spread the workers over one interval so the load is even, not in bursts.
        due = time.monotonic() + interval * index / self.workers
        with httpx.Client(timeout=self.timeout, trust_env=False, verify=self.verify) as client:
            while not self._stop.is_set():
                pause = due - time.monotonic()
                if pause > 0 and self._stop.wait(pause):
                    break
                due = max(due + interval, time.monotonic() - interval)  # a slow answer does not cause a burst
                self._send(client, index)

    def _send(self, client: Any, worker: int) -> None:
        import httpx

        assert self._started is not None
        start = time.monotonic()
        row: dict[str, Any] = {"t": start - self._started, "worker": worker, "status": None, "served_by": None,
                               "latency_ms": None, "error": None, "retried": None}  # fmt: skip
        for attempt in (1, 2):
            try:
                response = client.get(self.target, headers=self.headers)
            except httpx.HTTPError as exc:
                row["error"] = _describe_error(exc)
                if attempt == 1 and self.retry_closed and row["error"] in _CLOSED_UNDER_US:
                    # The connection was closed as we sent on it (Envoy closes the connections of a
                    # drained listener or filter chain when its drain time ends): no byte of an
                    # answer came, so a GET is safe to send again, on a new connection, as browsers
                    # and Go's HTTP client do. Counted, so that a lesson can show it.
                    row["retried"] = row["error"]
                    row["error"] = None
                    continue
            except Exception as exc:  # noqa: BLE001 - a record, never a dead worker thread
                row["error"] = f"{type(exc).__name__}: {exc}"
            else:
                row["status"] = response.status_code
                served_by, _ = _parse_echo(response.text)
                row["served_by"] = served_by or response.headers.get("x-served-by")
                if served_by is None and response.status_code >= 400:
                    row["error"] = response.text.strip().split("\n", 1)[0][:120] or response.reason_phrase
            break
        row["latency_ms"] = (time.monotonic() - start) * 1000
        row["failure"] = _failure_reason(row)
        with self._lock:
            self._records.append(row)

    # -- reading

    def mark(self, label: str) -> None:
        """Note that something happened now (a push, a switch): ``marks`` holds (t, label)."""
        t = self.elapsed
        with self._lock:
            self._marks.append((t, label))

    @property
    def marks(self) -> list[tuple[float, str]]:
        with self._lock:
            return list(self._marks)

    @property
    def elapsed(self) -> float:
        """Seconds since the first start (to the stop, once stopped)."""
        if self._started is None:
            return 0.0
        end = self._stopped if self._stopped is not None and not self.running else time.monotonic()
        return end - self._started

    def records(self, since: float = 0.0) -> list[dict[str, Any]]:
        """Every request so far (from ``t >= since``), oldest first."""
        with self._lock:
            rows = list(self._records)
        return sorted((r for r in rows if r["t"] >= since), key=lambda r: r["t"])

    def failures(self, since: float = 0.0) -> list[dict[str, Any]]:
        return [r for r in self.records(since) if r["failure"]]

    def per_second(self, bucket: float = 1.0, since: float = 0.0) -> list[dict[str, Any]]:
        """Per ``bucket`` seconds: requests sent, succeeded, failed, the rate, latency p50/p95
        (``seconds``: the bucket's length, shorter for the last one)."""
        rows = self.records(since)
        end = self.elapsed
        out: list[dict[str, Any]] = []
        n = int(end // bucket) + 1 if end else 0
        buckets: list[list[dict[str, Any]]] = [[] for _ in range(n)]
        for r in rows:
            i = min(int(r["t"] // bucket), n - 1)
            buckets[i].append(r)
        for i, group in enumerate(buckets):
            latencies = sorted(r["latency_ms"] for r in group if not r["failure"])
            failed = sum(1 for r in group if r["failure"])
            span = max(min(bucket, end - i * bucket), 1e-9)  # the last bucket may be cut short
            out.append({
                "t": i * bucket,
                "seconds": span,
                "requests": len(group),
                "ok": len(group) - failed,
                "failed": failed,
                "rps": len(group) / span,
                "p50_ms": _percentile(latencies, 0.50),
                "p95_ms": _percentile(latencies, 0.95),
            })  # fmt: skip
        return out

    def phases(self) -> list[dict[str, Any]]:
        """One row per stretch between marks ("start" before the first): what each change cost,
        requests, failures and why, latency p50/p95."""
        bounds = [(0.0, N_("start")), *sorted(self.marks)]
        rows = self.records()
        out = []
        for i, (begin, label) in enumerate(bounds):
            end = bounds[i + 1][0] if i + 1 < len(bounds) else float("inf")
            group = [r for r in rows if begin <= r["t"] < end]
            failures: dict[str, int] = {}
            for r in group:
                if r["failure"]:
                    failures[r["failure"]] = failures.get(r["failure"], 0) + 1
            latencies = sorted(r["latency_ms"] for r in group if not r["failure"])
            out.append({
                "from_s": round(begin, 2),
                "phase": label,
                "requests": len(group),
                "failed": sum(failures.values()),
                "retried": sum(1 for r in group if r.get("retried")),
                "success_rate": (len(group) - sum(failures.values())) / len(group) if group else None,
                "p50_ms": _percentile(latencies, 0.50),
                "p95_ms": _percentile(latencies, 0.95),
                "why": ", ".join(f"{n} {reason}" for reason, n in failures.items()),
            })  # fmt: skip
        return out

    def summary(self, since: float = 0.0) -> dict[str, Any]:
        """Totals: requests, ok, failed, why they failed, who served them, latency p50/p95."""
        rows = self.records(since)
        reasons: dict[str, int] = {}
        served: dict[str, int] = {}
        for r in rows:
            if r["failure"]:
                reasons[r["failure"]] = reasons.get(r["failure"], 0) + 1
            elif r["served_by"]:
                served[r["served_by"]] = served.get(r["served_by"], 0) + 1
        latencies = sorted(r["latency_ms"] for r in rows if not r["failure"])
        failed = sum(reasons.values())
        return {
            "requests": len(rows),
            "ok": len(rows) - failed,
            "failed": failed,
            "retried": sum(1 for r in rows if r.get("retried")),
            "success_rate": (len(rows) - failed) / len(rows) if rows else None,
            "seconds": round(self.elapsed - since, 2),
            "failures": reasons,
            "served_by": served,
            "p50_ms": _percentile(latencies, 0.50),
            "p95_ms": _percentile(latencies, 0.95),
        }


#: How a keep-alive connection closed by the server as a request went out reads (curl's words).
_CLOSED_UNDER_US = frozenset({"empty reply from server", "connection reset by peer"})


def _percentile(sorted_values: list[float], q: float) -> float | None:
    if not sorted_values:
        return None
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def server_certificate(url: str, cadata: str | bytes | None = None, *, timeout: float = 2.0) -> dict[str, Any]:
    """The certificate an HTTPS listener presents to a new connection: serial (hex, as Envoy's
    ``/certs`` prints it), names, expiry. With ``cadata`` (PEM) it must verify against that CA;
    a failed handshake raises ``ssl.SSLError`` with OpenSSL's reason."""
    import socket
    import ssl

    parts = urlsplit(url if "://" in url else f"https://{url}")
    host, port = parts.hostname or "127.0.0.1", parts.port or 443
    if cadata is not None:
        context = ssl.create_default_context(cadata=cadata.decode() if isinstance(cadata, bytes) else cadata)
    else:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    with socket.create_connection((host, port), timeout=timeout) as raw:
        with context.wrap_socket(raw, server_hostname=host) as tls:
            der = tls.getpeercert(binary_form=True)
            info: Any = (tls.getpeercert() if cadata is not None else None) or {}
            version = tls.version()
    serial = _der_serial(der) if der else ""
    names = [str(value) for _, value in info.get("subjectAltName", ())]
    return {"serial": serial, "names": ", ".join(names), "expires": info.get("notAfter"), "tls_version": version}


def _der_serial(der: bytes) -> str:
    """The serial number of a DER certificate, hex whole bytes, without a parsing library:
    Certificate ::= SEQUENCE { tbsCertificate SEQUENCE { [0] version, serialNumber INTEGER ..."""

    def header(pos: int) -> tuple[int, int]:  # (start of content, length)
        length = der[pos + 1]
        if length < 0x80:
            return pos + 2, length
        count = length & 0x7F
        return pos + 2 + count, int.from_bytes(der[pos + 2:pos + 2 + count], "big")

    pos, _ = header(0)  # Certificate
    pos, _ = header(pos)  # tbsCertificate
    if der[pos] == 0xA0:  # explicit version
        start, length = header(pos)
        pos = start + length
    start, length = header(pos)  # serialNumber INTEGER
    value = der[start:start + length].lstrip(b"\x00") or b"\x00"
    return value.hex()


def exchange(
    url: str | int,
    path: str = "/",
    *,
    headers: Mapping[str, str] | None = None,
    method: str = "GET",
    timeout: float = 2.0,
) -> dict[str, Any]:
    """One request as ``curl -i`` sends it, and the answer as it came: status line, headers in
    Envoy's order and spelling, body. A failure is a record too: ``error`` in curl's words."""
    target = urlsplit(_target(url, path))
    host, port = target.hostname or "127.0.0.1", target.port or 80
    request_path = target.path or "/"
    if target.query:
        request_path += f"?{target.query}"
    record: dict[str, Any] = {"method": method, "url": f"{host}:{port}{request_path}", "http_version": None,
                              "status": None, "reason": None, "headers": [], "body": "", "error": None}  # fmt: skip
    sent = {"Host": f"{host}:{port}", "User-Agent": "labxds", "Accept": "*/*", **dict(headers or {})}
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.putrequest(method, request_path, skip_host=True, skip_accept_encoding=True)
        for name, value in sent.items():
            conn.putheader(name, value)
        conn.endheaders()
        response = conn.getresponse()
        record["body"] = response.read().decode("utf-8", "replace")
    except ConnectionRefusedError:
        record["error"] = f"Failed to connect to {host} port {port}: Connection refused"
    except ConnectionResetError:
        record["error"] = "Recv failure: Connection reset by peer"
    except (socket.timeout, TimeoutError):
        record["error"] = f"Operation timed out after {timeout * 1000:.0f} milliseconds"
    except http.client.RemoteDisconnected:
        record["error"] = "Empty reply from server"
    except OSError as exc:
        record["error"] = f"{type(exc).__name__}: {exc}"
    else:
        record["http_version"] = {10: "HTTP/1.0", 11: "HTTP/1.1"}.get(response.version, f"HTTP/{response.version}")
        record["status"], record["reason"] = response.status, response.reason
        record["headers"] = list(response.getheaders())
    finally:
        conn.close()
    return record
