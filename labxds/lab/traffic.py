"""Requests through Envoy's listener, as ``curl`` would send them, each answer one plain record.

Failures are records too ("connection refused" before Envoy has a listener is part of the
lesson), in the words curl uses. The notebook layer turns the records into tables.
"""

from __future__ import annotations

import errno
import http.client
import socket
import time
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

from ..xds.builders import RESPONSE_FLAGS_HEADER
from .echo import ADDRESS_HEADER, INSTANCE_HEADER

__all__ = ["exchange", "send"]


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
) -> list[dict[str, Any]]:
    """Send `n` requests (like `curl` n times) and return one record per request.

    Failures are rows, not exceptions: "connection refused" before Envoy has a
    listener is part of the lesson. ``flags`` holds Envoy's response flags for the replies
    it made itself (503 NC, 404 NR, ...) when the listener was built with
    ``response_flags=True``. ``response_headers`` names response headers to add to each
    record (None when absent), e.g. one a route adds. Requests share one keep-alive
    connection, so with one Envoy worker round robin alternates strictly.
    """
    import httpx

    target = _target(url, path)
    rows: list[dict[str, Any]] = []
    with httpx.Client(timeout=timeout, trust_env=False) as client:
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
