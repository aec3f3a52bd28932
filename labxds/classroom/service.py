"""The instructor's workshop as a JupyterHub service: enrollment, the desk, the dashboard.

``python -m labxds classroom`` runs a :class:`~labxds.classroom.workshop.Workshop` (its control
plane, tokens, per-learner snapshots, SQLite store) behind one small web application, mounted by
the hub's proxy at ``/services/workshop/``:

* ``POST v1/enroll/NAME``: the hub's spawner hook enrolls a learner before their server starts
  (credential: this service's own hub API token). Answers the learner's workshop token, the
  control plane's address, the desk's URL and, with TLS, the CA and the learner's certificate.
* ``v1/learners/NAME/...``, ``v1/exercises``: the desk (:mod:`labxds.classroom.desk`), for the
  learners' kernels, with their workshop token.
* ``/`` (the dashboard, HTML) and ``v1/class...`` (JSON: status, push, broadcast, reset, assign,
  group): instructors only, authenticated by the hub (OAuth in a browser, or a hub API token in
  an ``Authorization: token`` header from the instructor's own notebook).
* ``health``: for the hub's start-up and Kubernetes probes.

Tornado and JupyterHub's service authentication are imported here only: the rest of the
package does not need JupyterHub.
"""

from __future__ import annotations

import html
import json
import logging
import os
import time
from collections.abc import Iterable, Mapping
from typing import Any

from .desk import handle_desk_request
from .recipes import spec_from_recipe
from .spawn import token_matches
from .status import TYPES, class_status
from ..xds.tracking import PushRejected, PushTimeout
from .workshop import Workshop

__all__ = ["WorkshopClient", "WorkshopService", "class_status"]

log = logging.getLogger("labxds")

def _clock(t: float | None) -> str:
    return time.strftime("%H:%M:%S", time.localtime(t)) if t else ""


def dashboard_html(ws: Workshop, rows: list[dict[str, Any]], refresh: int = 5) -> str:
    """The dashboard as a page that reloads itself every ``refresh`` seconds."""
    head = ["learner", "connected", "since", "last seen", *TYPES, "snapshot", "last NACK", "passed", "progress"]
    body = []
    for r in rows:
        cells = [r["learner"], "yes" if r["connected"] else "no", _clock(r["connected_since"]),
                 _clock(r["last_seen"]), *[(r[t] or "")[:10] for t in TYPES], r["snapshot"],
                 ("open: " if r["nack_open"] else "") + (r["last_nack"] or ""), str(r["passed"]),
                 ", ".join(f"{k} {m}" for k, m in r["progress"].items())]  # fmt: skip
        body.append("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>")
    connected = sum(1 for r in rows if r["connected"])
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<meta http-equiv='refresh' content='{refresh}'><title>labxds workshop</title>"
        "<style>body{font-family:sans-serif;margin:1em}td,th{padding:2px 8px;text-align:left;"
        "white-space:nowrap;font-size:13px}tr:nth-child(even){background:#f4f4f4}</style></head><body>"
        f"<h2>labxds workshop</h2><p>{len(rows)} learner(s), {connected} connected; control plane "
        f"{html.escape(ws.address)}; refreshed {_clock(time.time())}</p>"
        "<div style='overflow-x:auto'><table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head)
        + "</tr>" + "".join(body) + "</table></div></body></html>"
    )


class WorkshopService:
    """The web application of the workshop service (tornado), in front of one Workshop."""

    def __init__(
        self,
        workshop: Workshop,
        *,
        prefix: str = "/services/workshop/",
        instructors: Iterable[str] = (),
        api_token: str | None = None,
        advertise: str | None = None,
        desk_url: str | None = None,
    ) -> None:
        self.workshop = workshop
        self.prefix = "/" + prefix.strip("/") + "/"
        self.instructors = set(instructors)
        self.api_token = api_token if api_token is not None else os.environ.get("JUPYTERHUB_API_TOKEN")
        self.advertise = advertise
        self.desk_url = desk_url

    # -- what the hook gets ------------------------------------------------------------------

    def enroll(self, name: str) -> dict[str, Any]:
        """Put ``name`` on the roster (idempotent: the same token on every spawn) and say how to join."""
        ws = self.workshop
        token = ws.add_learner(name)
        answer: dict[str, Any] = {
            "name": name,
            "token": token,
            "control_plane": self.advertise or ws.address,
            "desk": self.desk_url,
        }
        if ws.tls_files is not None:
            ca, cert, key = ws.learner_tls(name, reuse=True)
            answer.update(tls_ca_pem=ca.read_text(), tls_cert_pem=cert.read_text(), tls_key_pem=key.read_text())
        return answer

    # -- the application ---------------------------------------------------------------------

    def application(self) -> Any:
        from jupyterhub.services.auth import HubOAuth, HubOAuthCallbackHandler, HubOAuthenticated
        from tornado import web

        service = self
        hub_auth = HubOAuth(api_token=self.api_token, cache_max_age=60)

        class Base(web.RequestHandler):
            def set_default_headers(self) -> None:
                self.set_header("Cache-Control", "no-store")

            def reply(self, status: int, body: Mapping[str, Any]) -> None:
                self.set_status(status)
                self.set_header("Content-Type", "application/json")
                self.finish(json.dumps(body))

            def check_xsrf_cookie(self) -> None:  # JSON APIs with their own credentials
                pass

        class Health(Base):
            def get(self) -> None:
                self.reply(200, {"ok": True, "learners": len(service.workshop.learners()),
                                 "connected": len(service.workshop.control_plane.nodes())})  # fmt: skip

        class Enroll(Base):
            def post(self, name: str) -> None:
                given = (self.request.headers.get("Authorization") or "").removeprefix("token ").strip()
                if not token_matches(given, service.api_token):
                    return self.reply(403, {"error": "enrollment is for the hub (its spawner hook) only"})
                try:
                    self.reply(200, service.enroll(name))
                except ValueError as exc:
                    self.reply(400, {"error": str(exc)})

        class Desk(Base):
            def _handle(self, method: str) -> None:
                path = "/" + self.request.path[len(service.prefix):].lstrip("/")
                status, body = handle_desk_request(service.workshop, method, path,
                                                   self.request.headers, self.request.body)  # fmt: skip
                self.reply(status, body)

            def get(self, *_: str) -> None:
                self._handle("GET")

            def post(self, *_: str) -> None:
                self._handle("POST")

        class Instructor(HubOAuthenticated, Base):
            def initialize(self) -> None:
                self.hub_auth = hub_auth

            def instructor(self) -> str:
                user = self.current_user
                name = str((user or {}).get("name") or "") or None
                if name is None or (service.instructors and name not in service.instructors):
                    raise web.HTTPError(403, f"{name!r} is not an instructor of this workshop")
                return name

        class Callback(HubOAuthCallbackHandler):
            def initialize(self) -> None:
                self.hub_auth = hub_auth  # the OAuth state (PKCE verifier) lives on this instance

        class Dashboard(Instructor):
            @web.authenticated
            def get(self) -> None:
                self.instructor()
                self.set_header("Content-Type", "text/html; charset=utf-8")
                self.finish(dashboard_html(service.workshop, class_status(service.workshop)))

        class Class(Instructor):
            @web.authenticated
            def get(self) -> None:
                self.instructor()
                ws = service.workshop
                self.reply(200, {"control_plane": ws.address, "learners": class_status(ws),
                                 "groups": ws.groups, "prepared": list(ws.prepared)})  # fmt: skip

            @web.authenticated
            def post(self, action: str) -> None:
                who = self.instructor()
                try:
                    data = json.loads(self.request.body or b"{}")
                    result = service.act(action, data)
                except PushRejected as exc:  # Envoy's own words, per learner and type
                    return self.reply(409, {"rejected": {f"{n} {url}": text for (n, url), text in exc.errors.items()}})
                except PushTimeout as exc:
                    return self.reply(504, {"error": str(exc), "missing": exc.missing})
                except (KeyError, ValueError, TypeError) as exc:
                    return self.reply(400, {"error": str(exc.args[0] if exc.args else exc)})
                log.info("labxds workshop: %s by %s: %s", action, who, data)
                self.reply(200, result)

        p = self.prefix
        handlers = [
            (p + "health", Health),
            (p + r"v1/enroll/([^/]+)", Enroll),
            (p + r"v1/(learners/[^/]+/(?:snapshot|result)|exercises)/?", Desk),
            (p + r"v1/class/?", Class),
            (p + r"v1/class/(push|broadcast|reset|assign|group)", Class),
            (p + "oauth_callback", Callback),
            (p + "?", Dashboard),
        ]
        return web.Application(handlers, hub_auth=hub_auth, cookie_secret=os.urandom(32),
                               login_url=hub_auth.login_url)  # fmt: skip

    def act(self, action: str, data: Mapping[str, Any]) -> dict[str, Any]:
        """An instructor's action, from JSON: push, broadcast, reset, assign or group."""
        ws = self.workshop
        timeout = float(data.get("timeout", 10))

        def spec() -> Any:
            value = data["spec"]
            return value if isinstance(value, str) else spec_from_recipe(value)

        if action == "push":
            applied = ws.push(spec(), data["to"], timeout=timeout)
            return {"versions": {n: s.versions for n, s in applied.items()}}
        if action == "broadcast":
            ws.broadcast(spec(), timeout=timeout)
            return {"ok": True}
        if action == "reset":
            ws.reset(data["to"], timeout=timeout)
            return {"ok": True}
        if action == "assign":
            ws.assign(data["exercise"], data.get("to"), timeout=timeout)
            return {"ok": True}
        if action == "group":
            return {"members": ws.group(data["name"], data["members"])}
        raise ValueError(f"unknown action {action!r}")


class WorkshopClient:
    """The instructor's side of the service, from a notebook on the hub (their own server).

    ``WorkshopClient()`` reads ``LABXDS_WORKSHOP_URL`` (the hub's spawner hook sets it for
    instructors) and the server's own ``JUPYTERHUB_API_TOKEN``: the service asks the hub who
    that is. Specs are the workshop's templates: ``client.push(routes({...}), "bob")``.
    """

    def __init__(self, url: str | None = None, token: str | None = None, *, timeout: float = 30.0) -> None:
        import httpx

        url = url or os.environ.get("LABXDS_WORKSHOP_URL")
        token = token or os.environ.get("JUPYTERHUB_API_TOKEN")
        if not url or not token:
            raise ValueError("WorkshopClient needs the workshop's URL and a hub API token "
                             "(LABXDS_WORKSHOP_URL and JUPYTERHUB_API_TOKEN on the hub)")  # fmt: skip
        self.url = url.rstrip("/")
        self._http = httpx.Client(base_url=self.url, timeout=timeout, trust_env=False,
                                  headers={"Authorization": f"token {token}"})  # fmt: skip

    def close(self) -> None:
        self._http.close()

    def _call(self, action: str, body: Mapping[str, Any]) -> dict[str, Any]:
        r = self._http.post(f"/v1/class/{action}", json=body)
        data: dict[str, Any] = r.json() if r.headers.get("content-type", "").startswith("application/json") \
            else {"error": r.text}
        if r.status_code == 409:
            rejected: dict[str, str] = data["rejected"]
            raise PushRejected({(k.partition(" ")[0], k.partition(" ")[2]): v for k, v in rejected.items()})
        if r.status_code == 504:
            raise PushTimeout(list(data.get("missing") or []), float(body.get("timeout", 10)))
        if r.status_code != 200:
            raise RuntimeError(f"workshop {action}: HTTP {r.status_code}: {data.get('error', data)}")
        return data

    @staticmethod
    def _spec(spec: Any) -> Any:
        from .recipes import recipe_of

        if isinstance(spec, str):
            return spec  # a prepared snapshot's name
        recipe = recipe_of(spec)
        if recipe is None:
            raise ValueError(f"{getattr(spec, '__name__', spec)!r} is a function of your own: the service "
                             "takes the ready templates (sandbox, routes, canary, broken_listener) or a Snapshot")
        return recipe

    def status(self) -> list[dict[str, Any]]:
        """One row per learner (as the dashboard shows them)."""
        r = self._http.get("/v1/class")
        r.raise_for_status()
        rows: list[dict[str, Any]] = r.json()["learners"]
        return rows

    def frame(self) -> Any:
        import pandas as pd

        return pd.DataFrame(self.status())

    def push(self, spec: Any, to: str | list[str], *, timeout: float = 10.0) -> dict[str, Any]:
        return self._call("push", {"spec": self._spec(spec), "to": to, "timeout": timeout})

    def broadcast(self, spec: Any, *, timeout: float = 10.0) -> dict[str, Any]:
        return self._call("broadcast", {"spec": self._spec(spec), "timeout": timeout})

    def reset(self, to: str | list[str], *, timeout: float = 10.0) -> dict[str, Any]:
        return self._call("reset", {"to": to, "timeout": timeout})

    def assign(self, exercise: str, to: str | list[str] | None = None, *, timeout: float = 10.0) -> dict[str, Any]:
        return self._call("assign", {"exercise": exercise, "to": to, "timeout": timeout})

    def group(self, name: str, members: list[str]) -> dict[str, Any]:
        return self._call("group", {"name": name, "members": members})
