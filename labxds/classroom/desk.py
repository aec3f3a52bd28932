"""The workshop's desk: a small HTTP API beside the control plane, and the learners' client.

Learners change their own node's snapshot and report check results here; a learner may act
only for their own node (with their token, when the workshop uses tokens).
"""

from __future__ import annotations

import json
import logging
import math
import ssl
from collections.abc import Mapping
from dataclasses import replace
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import unquote

from ..i18n import _
from ..net.budget import DEFAULT_BUDGET, BudgetExceeded, InputBudget, check_data
from ..net.http_server import HttpServer
from ..tls import TOKEN_HEADER
from ..xds.snapshot import Snapshot
from ..xds.tracking import PushRejected, PushTimeout
from .exercises import CheckResult, Exercise
from .exercises import exercise as exercise_named
from .learners import Learner
from .store import decode_snapshot, encode_snapshot
from .templates import (
    SnapshotSpec,
    render,
)


class DeskWorkshop(Protocol):
    """What the desk needs of a workshop (``Workshop`` is one): no more, so each can change alone."""

    @property
    def exercises(self) -> Mapping[str, Exercise]: ...

    @property
    def token_required(self) -> bool: ...

    @property
    def tls_files(self) -> Any: ...  # labxds.tls.TlsFiles when the desk serves HTTPS

    def authorize(self, node_id: str, metadata: Mapping[str, str]) -> bool: ...

    def record(self, result: CheckResult) -> CheckResult: ...

    def push(self, spec: Any, to: Any, *, wait: bool = True, timeout: float = 10.0) -> Any: ...

__all__ = ["DESK_BUDGET", "Desk", "DeskWorkshop", "LearnerSession", "MAX_PUSH_TIMEOUT", "handle_desk_request"]

log = logging.getLogger("labxds")

#: What one request to the desk may hold: the engine's budget of values and depth, and a body of
#: at most 4 MiB (a learner's snapshot is a few kilobytes).
DESK_BUDGET = InputBudget(max_bytes=4 << 20, max_values=DEFAULT_BUDGET.max_values, max_depth=DEFAULT_BUDGET.max_depth)
#: The longest a learner's push may wait for their Envoy, in seconds: a desk thread waits that long.
MAX_PUSH_TIMEOUT = 120.0


class _BadRequest(Exception):
    def __init__(self, status: int, reason: str) -> None:
        self.status = status
        super().__init__(reason)


# --------------------------------------------------------------------------- the desk (HTTP)


class Desk:
    """POST /v1/learners/NAME/snapshot and /v1/learners/NAME/result; GET /v1/exercises."""

    def __init__(self, workshop: DeskWorkshop, host: str, port: int) -> None:
        self.workshop = workshop
        self.host = host.strip("[]")
        handler = type("_Handler", (_DeskHandler,), {"workshop": workshop})
        self.tls = workshop.tls_files is not None
        context = None
        if workshop.tls_files is not None:
            from ..tls import server_ssl_context

            context = server_ssl_context(workshop.tls_files)  # renewed certificates apply at the next handshake
        self.server = HttpServer((self.host, port), handler, name="labxds-workshop-desk", context=context)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.tls else 'http'}://{host}:{self.server.server_address[1]}"

    def start(self) -> Desk:
        self.server.start()
        return self

    def stop(self) -> None:
        self.server.stop()


class _DeskHandler(BaseHTTPRequestHandler):
    workshop: DeskWorkshop
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _reply(self, status: int, body: Mapping[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802
        self._reply(*handle_desk_request(self.workshop, "GET", self.path, self.headers, b""))

    def do_POST(self) -> None:  # noqa: N802
        try:
            raw = self._body()
        except _BadRequest as exc:
            self.close_connection = True  # what is left of a refused body is not a next request
            return self._reply(exc.status, {"error": str(exc)})
        except OSError as exc:  # the body never came (the socket's timeout)
            self.close_connection = True
            return self._reply(400, {"error": f"the body did not arrive: {exc}"})
        try:
            self._reply(*handle_desk_request(self.workshop, "POST", self.path, self.headers, raw))
        except Exception as exc:  # a bug: answer in words rather than drop the connection
            log.exception("the workshop desk failed on POST %s", self.path)
            self.close_connection = True
            self._reply(500, {"error": f"the desk failed: {type(exc).__name__}: {exc}"})

    def _body(self) -> bytes:
        """The request's body, read only if its announced length is a length within DESK_BUDGET."""
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            raise _BadRequest(411, "send the body with a Content-Length, not chunked")
        text = (self.headers.get("Content-Length") or "0").strip()
        if not text.isdigit():  # negative, not a number, several values
            raise _BadRequest(400, f"Content-Length must be a whole number of bytes, not {text[:40]!r}")
        length = int(text)
        if length > DESK_BUDGET.max_bytes:
            raise _BadRequest(413, f"the body is {length:,} bytes; the desk takes at most {DESK_BUDGET.max_bytes:,}")
        self.connection.settimeout(30)  # a body announced but never sent does not hold a thread for ever
        raw = self.rfile.read(length) if length else b""
        if len(raw) < length:
            raise _BadRequest(400, f"the body ended after {len(raw):,} of the {length:,} bytes announced")
        return raw


def handle_desk_request(ws: DeskWorkshop, method: str, path: str, headers: Any,
                        raw: bytes) -> tuple[int, dict[str, Any]]:
    """One desk request as (status, JSON body): the desk's own HTTP server and the workshop's hub
    service (:mod:`labxds.classroom.service`) answer alike."""
    parts = [unquote(p) for p in path.split("?", 1)[0].strip("/").split("/")]
    if method == "GET":
        if parts == ["v1", "exercises"]:
            ex = ws.exercises
            return 200, {"exercises": [{"key": e.key, "title": e.title, "task": e.task} for e in ex.values()]}
        return 404, {"error": f"no such path {path}"}
    if len(parts) != 4 or parts[:2] != ["v1", "learners"] or parts[3] not in ("snapshot", "result"):
        return 404, {"error": f"no such path {path}"}
    name, action = parts[2], parts[3]
    if ws.token_required and not ws.authorize(name, {TOKEN_HEADER: headers.get(TOKEN_HEADER) or ""}):
        return 403, {"error": f"not authorized as {name!r}: send your own {TOKEN_HEADER}"}
    try:
        data = _json_body(raw)
    except _BadRequest as exc:
        return exc.status, {"error": str(exc)}
    if action == "result":
        try:
            result = ws.record(CheckResult.from_dict(data, learner=name))
        except (KeyError, TypeError, ValueError) as exc:
            return 400, {"error": f"not a check result: {exc}"}
        return 200, result.to_dict()
    wait = data.get("wait", True)
    if not isinstance(wait, bool):
        return 400, {"error": f"wait must be true or false, not {wait!r}"}
    timeout = data.get("timeout", 10)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not math.isfinite(timeout) \
            or not 0 < timeout <= MAX_PUSH_TIMEOUT:
        return 400, {"error": f"timeout must be a number of seconds above 0 and at most {MAX_PUSH_TIMEOUT:g}, "
                              f"not {str(timeout)[:40]}"}
    try:
        snap = decode_snapshot(data)
        ws.push(snap, name, wait=wait, timeout=float(timeout))
    except PushRejected as exc:
        return 409, {"rejected": {f"{n} {url}": text for (n, url), text in exc.errors.items()}}
    except PushTimeout as exc:
        return 504, {"error": str(exc)}
    except ValueError as exc:  # ResourceError, ConsistencyError
        return 400, {"error": str(exc)}
    return 200, {"versions": snap.versions}


def _json_body(raw: bytes) -> dict[str, Any]:
    """A request body as a JSON object within DESK_BUDGET; _BadRequest says what is wrong."""
    if len(raw) > DESK_BUDGET.max_bytes:
        raise _BadRequest(413, f"the body is {len(raw):,} bytes; the desk takes at most {DESK_BUDGET.max_bytes:,}")
    try:
        data = json.loads(raw or b"{}")
    except RecursionError:
        raise _BadRequest(400, f"the body nests deeper than {DESK_BUDGET.max_depth} levels") from None
    except ValueError:
        raise _BadRequest(400, "the body is not JSON") from None
    try:
        check_data(data, DESK_BUDGET)
    except BudgetExceeded as exc:
        raise _BadRequest(400, f"the body is refused: {exc}") from None
    if not isinstance(data, dict):
        raise _BadRequest(400, f"the body must be a JSON object, not {type(data).__name__}")
    return data


class LearnerSession:
    """A learner's side of the desk: push to your own Envoy, run checks, report them.

    ``me = LearnerSession(desk_url, lab)`` (with ``token=`` when the workshop uses tokens, and
    ``tls=(ca, cert, key)`` when it uses TLS). ``me.push(routes({...}))`` reaches only your own
    Envoy and raises PushRejected with Envoy's words on a NACK; ``me.check("route-api")`` runs the
    check against your Envoy and reports the result to the instructor's dashboard.
    """

    def __init__(self, desk_url: str, lab: Any, *, name: str | None = None, token: str | None = None,
                 tls: tuple[str | Path, str | Path, str | Path] | None = None, timeout: float = 30.0) -> None:
        import httpx

        self.lab = lab
        self.name = name or lab.node_id
        if not self.name:
            raise ValueError(_("LearnerSession needs your name (the lab's node id)"))
        self.token = token if token is not None else getattr(lab, "token", None)
        verify: Any = True
        if tls is not None:
            ca, cert, key = (str(p) for p in tls)
            ctx = ssl.create_default_context(cafile=ca)
            ctx.check_hostname = False  # the lab's own CA signs the desk's certificate; any address
            ctx.load_cert_chain(cert, key)
            verify = ctx
        headers = {TOKEN_HEADER: self.token} if self.token else {}
        self._client = httpx.Client(base_url=desk_url.rstrip("/"), timeout=timeout, headers=headers,
                                    verify=verify, trust_env=False)  # fmt: skip

    def close(self) -> None:
        self._client.close()

    def learner(self) -> Learner:
        return Learner.from_lab(self.lab, self.name)

    def _post(self, what: str, body: Mapping[str, Any]) -> Any:
        response = self._client.post(f"/v1/learners/{self.name}/{what}", json=body)
        data = response.json()
        if response.status_code == 409:
            raise PushRejected({tuple(k.split(" ", 1)): v for k, v in data["rejected"].items()})
        if response.status_code == 504:
            raise PushTimeout([self.name], float(body.get("timeout", 10)))
        if response.status_code == 403:
            raise PermissionError(data.get("error"))
        if response.status_code != 200:
            raise ValueError(data.get("error") or response.text)
        return data

    def push(self, spec: SnapshotSpec, *, timeout: float = 10.0) -> Snapshot:
        """Send a snapshot for your own node; returns once your Envoy ACKed it."""
        snap = render(spec, self.learner())
        self._post("snapshot", {**encode_snapshot(snap), "timeout": timeout})
        return snap

    def check(self, exercise: str, *, report: bool = True) -> CheckResult:
        """Check ``exercise`` on your Envoy; report the result to the instructor (the result
        then also says what the control plane confirms of your configuration)."""
        result = exercise_named(exercise).check(self.lab, learner=self.name)
        return self.report(result) if report else result

    def report(self, result: CheckResult) -> CheckResult:
        """Send ``result`` to the desk; returns it as recorded, with the control plane's verdict."""
        recorded = self._post("result", result.to_dict())
        confirmed = recorded.get("confirmed")
        return replace(result, confirmed=confirmed if isinstance(confirmed, bool) else None,
                       evidence=str(recorded.get("evidence") or ""))

    def exercises(self) -> list[dict[str, str]]:
        return self._client.get("/v1/exercises").json()["exercises"]
