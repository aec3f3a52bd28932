"""One control plane for a whole class: per-learner snapshots, groups, exercises and their checks.

The instructor runs one :class:`Workshop`; every learner runs a real Envoy (and the echo
services) on their own machine, bootstrapped with ``python -m labxds bootstrap --node NAME
--control-plane HOST:PORT`` or ``Lab(control_plane="HOST:PORT", node_id=NAME)``. The node id
is the learner's name.

* ``broadcast(snapshot)`` sets the class default; ``push(snapshot, to=...)`` gives one learner, a
  named group or a list of them their own snapshot, which overrides the default until
  ``reset(...)``. Setting a learner's snapshot wakes that learner's streams only.
* A snapshot may be a *template*, a function of the :class:`Learner`: learners' echo services
  and listeners live on their own ports (several learners on one machine, as in the tests),
  and each learner's Envoy tells the control plane where, in its bootstrap's node metadata.
* :data:`EXERCISES` are tasks with checks that look at the learner's REAL Envoy: its
  ``/config_dump`` (through :class:`~labxds.envoy.EnvoyAdmin`) and requests through its
  listener (:func:`~labxds.tables.curl`). A check returns pass or fail with a hint.
* Learners change their own configuration and report check results through the workshop's
  *desk*, a small HTTP API next to the control plane (:class:`LearnerSession` is its client):
  a learner may only push to, and report for, their own node (their token, when the workshop
  uses tokens). On one machine the instructor can also run the checks directly
  (``Workshop.check``), using the admin URL each learner's Envoy announced.

See docs/workshop.md for a class run through step by step.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import secrets
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union
from urllib.parse import unquote

from .control_plane import ControlPlane
from .resources import SANDBOX_CLUSTER, SANDBOX_LISTENER, SANDBOX_ROUTE, cluster, http_listener, route_configuration
from .snapshot import Snapshot
from .tracking import PushRejected, PushTimeout

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "EXERCISES",
    "TOKEN_HEADER",
    "CheckResult",
    "Exercise",
    "Learner",
    "LearnerSession",
    "Workshop",
    "broken_listener",
    "canary",
    "learner_bootstrap",
    "parse_address",
    "routes",
    "sandbox",
]

log = logging.getLogger("labxds")

from .security import TOKEN_HEADER  # the header name and the token check live there

#: Node metadata key under which a learner's Envoy says where its listener and services are.
METADATA_KEY = "labxds"
DEFAULT_LISTENER_PORT = 10000

Template = Callable[["Learner"], Snapshot]
#: What can be pushed: a snapshot, a template (a function of the learner), or resources.
SnapshotSpec = Union[Snapshot, Template, Iterable[Any]]


# --------------------------------------------------------------------------- addresses


def parse_address(address: str, default_port: int = 18000) -> tuple[str, int]:
    """``"HOST:PORT"``, ``"[::1]:PORT"`` or ``"HOST"`` as (host, port)."""
    text = address.strip()
    if "://" in text:
        text = text.split("://", 1)[1].rstrip("/")
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest.lstrip(":")
    elif text.count(":") == 1:
        host, _, port = text.partition(":")
    else:
        host, port = text, ""
    if not host:
        raise ValueError(f"control plane address {address!r} has no host; write HOST:PORT")
    if port and not port.isdigit():
        raise ValueError(f"control plane address {address!r}: {port!r} is not a port number")
    value = int(port) if port else default_port
    if not 0 < value < 65536:
        raise ValueError(f"control plane address {address!r}: port {value} is out of range")
    return host, value


# --------------------------------------------------------------------------- learners


@dataclass
class Learner:
    """One learner: a node id, and where their Envoy's listener, admin and services are.

    The locations come from the node metadata their bootstrap carries (``learner_bootstrap``
    writes it); without any, the sandbox's conventions apply (listener on 10000).
    """

    name: str
    listener_port: int = DEFAULT_LISTENER_PORT
    listener_host: str = "127.0.0.1"
    admin_url: str | None = None
    services: dict[str, list[tuple[str, int]]] = field(default_factory=dict)

    @classmethod
    def from_metadata(cls, name: str, metadata: Mapping[str, Any] | None) -> Learner:
        data = dict((metadata or {}).get(METADATA_KEY) or {})
        services: dict[str, list[tuple[str, int]]] = {}
        for svc, eps in (data.get("services") or {}).items():
            services[str(svc)] = [parse_address(str(ep)) for ep in (eps if isinstance(eps, list) else [eps])]
        return cls(
            name=name,
            listener_port=int(data.get("listener_port") or DEFAULT_LISTENER_PORT),
            listener_host=str(data.get("listener_host") or "127.0.0.1"),
            admin_url=data.get("admin_url") or None,
            services=services,
        )

    @classmethod
    def from_lab(cls, lab: Any, name: str | None = None) -> Learner:
        """The learner a running :class:`~labxds.lab.Lab` is (its own ports and services)."""
        return cls(
            name=name or lab.node_id or "learner",
            listener_port=lab.listener_port,
            listener_host=lab.mode.listen_host,
            admin_url=lab.admin_url,
            services={svc: lab.endpoints(svc) for svc in lab.service_counts},
        )

    def metadata(self) -> dict[str, Any]:
        """This learner as node metadata (the inverse of from_metadata)."""
        out: dict[str, Any] = {"listener_port": self.listener_port, "listener_host": self.listener_host}
        if self.admin_url:
            out["admin_url"] = self.admin_url
        if self.services:
            out["services"] = {s: [f"{h}:{p}" for h, p in eps] for s, eps in self.services.items()}
        return {METADATA_KEY: out}

    def endpoints(self, service: str) -> list[tuple[str, int]]:
        try:
            return list(self.services[service])
        except KeyError:
            known = ", ".join(self.services) or "none (its Envoy announced no services)"
            raise KeyError(f"learner {self.name!r} has no service {service!r}; known: {known}") from None

    @property
    def listener_url(self) -> str:
        host = "127.0.0.1" if self.listener_host in ("0.0.0.0", "") else self.listener_host
        return f"http://{host}:{self.listener_port}"


def learner_bootstrap(
    node: str,
    control_plane: str = "127.0.0.1:18000",
    *,
    token: str | None = None,
    tls_ca: str | Path | None = None,
    tls_cert: str | Path | None = None,
    tls_key: str | Path | None = None,
    server_name: str | None = None,
    admin_port: int = 19000,
    admin_host: str = "127.0.0.1",
    delta: bool = False,
    learner: Learner | None = None,
) -> dict:
    """A learner's Envoy bootstrap: node id ``node``, ADS at ``control_plane`` (HOST:PORT).

    ``token`` is sent as gRPC initial metadata (``x-labxds-token``) on the ADS stream; the TLS
    files turn on TLS to the control plane (mutual TLS with a client certificate and key).
    ``learner`` adds node metadata telling the control plane where the listener, the admin
    interface and the echo services are.
    """
    from .envoy import render_bootstrap

    if not node:
        raise ValueError("a learner's bootstrap needs a node id (the learner's name)")
    host, port = parse_address(control_plane)
    tls_given = [p for p in (tls_ca, tls_cert, tls_key) if p is not None]
    if tls_given and len(tls_given) != 3:
        raise ValueError("TLS needs all three of --tls-ca, --tls-cert and --tls-key")
    render = dict(xds_host=host, xds_port=port, admin_host=admin_host, admin_port=admin_port,
                  node_id=node, node_cluster="workshop", delta=delta)  # fmt: skip
    if tls_given:
        from .security import SERVER_NAME, TlsFiles, render_tls_bootstrap

        paths = [Path(p).resolve() for p in (tls_ca, tls_cert, tls_key)]
        for p in paths:
            if not p.is_file():
                raise FileNotFoundError(f"TLS file not found: {p}")
        files = TlsFiles(ca=paths[0], server_cert=Path(), server_key=Path(), client_cert=paths[1],
                         client_key=paths[2], server_name=server_name or SERVER_NAME)  # fmt: skip
        bootstrap = render_tls_bootstrap(files, token=token, **render)
    else:
        bootstrap = render_bootstrap(**render)
        if token is not None:
            _add_token(bootstrap, token)
    if token is None:  # the TLS template carries a placeholder token
        for service in _grpc_services(bootstrap):
            kept = [m for m in service.get("initial_metadata") or [] if m.get("key") != TOKEN_HEADER]
            if kept:
                service["initial_metadata"] = kept
            else:
                service.pop("initial_metadata", None)
    if learner is not None:
        bootstrap.setdefault("node", {}).setdefault("metadata", {}).update(learner.metadata())
    return bootstrap


def _grpc_services(bootstrap: dict) -> list[dict]:
    ads = ((bootstrap.get("dynamic_resources") or {}).get("ads_config")) or {}
    return list(ads.get("grpc_services") or [])


def _add_token(bootstrap: dict, token: str) -> None:
    from .security import add_token

    add_token(bootstrap, token)


# --------------------------------------------------------------------------- snapshot templates


def _clusters(learner: Learner, names: Iterable[str]) -> list[Any]:
    return [cluster(n, learner.endpoints(n), type="STATIC") for n in names]


def _listener(learner: Learner, *, stat_prefix: str = "http") -> Any:
    return http_listener(SANDBOX_LISTENER, learner.listener_port, SANDBOX_ROUTE,
                         address=learner.listener_host, stat_prefix=stat_prefix)  # fmt: skip


def sandbox(upstream: str = "service1", version: str | None = None) -> Template:
    """The sandbox's snapshot for each learner: listener_0 sends everything to ``upstream``."""

    def build(learner: Learner) -> Snapshot:
        host, port = learner.endpoints(upstream)[0]
        return Snapshot([
            cluster(SANDBOX_CLUSTER, [(host, port)], type="LOGICAL_DNS"),
            route_configuration(SANDBOX_ROUTE, SANDBOX_CLUSTER),
            _listener(learner),
        ], version=version)  # fmt: skip

    build.__name__ = f"sandbox({upstream!r})"
    return build


def routes(table: Mapping[str, str | Mapping[str, int]], version: str | None = None) -> Template:
    """Clusters service1 and service2 and a route per prefix, in the order given (first match wins).

    ``routes({"/api": "service2", "/": "service1"})``; a value may be weights for a split.
    """
    table = dict(table)
    names = sorted({c for t in table.values() for c in ([t] if isinstance(t, str) else t)} | {"service1", "service2"})

    def build(learner: Learner) -> Snapshot:
        return Snapshot([
            *_clusters(learner, names),
            route_configuration(SANDBOX_ROUTE, routes=table),
            _listener(learner),
        ], version=version)  # fmt: skip

    build.__name__ = f"routes({table!r})"
    return build


def canary(weights: Mapping[str, int] | None = None, version: str | None = None) -> Template:
    """Everything split by ``weights`` (default 90 to service1, 10 to service2)."""
    weights = dict(weights or {"service1": 90, "service2": 10})
    build = routes({"/": weights}, version)
    build.__name__ = f"canary({weights!r})"
    return build


def broken_listener(version: str | None = None) -> Template:
    """listener_0 with an empty ``stat_prefix``: Envoy refuses it (a NACK) and keeps what it had."""

    def build(learner: Learner) -> Snapshot:
        return Snapshot([
            *_clusters(learner, ["service1", "service2"]),
            route_configuration(SANDBOX_ROUTE, "service1"),
            _listener(learner, stat_prefix=""),
        ], version=version)  # fmt: skip

    build.__name__ = "broken_listener()"
    return build


def render(spec: SnapshotSpec, learner: Learner) -> Snapshot:
    """The snapshot ``spec`` means for ``learner``."""
    if isinstance(spec, Snapshot):
        return spec
    if callable(spec):
        snap = spec(learner)
        if not isinstance(snap, Snapshot):
            snap = Snapshot(snap)
        return snap
    return Snapshot(spec)


def _describe(spec: SnapshotSpec) -> str:
    if isinstance(spec, Snapshot):
        return repr(spec)
    return getattr(spec, "__name__", None) or type(spec).__name__


# --------------------------------------------------------------------------- exercises


@dataclass(frozen=True)
class CheckResult:
    """The outcome of one exercise check on one learner's Envoy."""

    exercise: str
    learner: str
    passed: bool
    hint: str = ""
    detail: str = ""
    at: float = field(default_factory=time.time)

    def __bool__(self) -> bool:
        return self.passed

    def __str__(self) -> str:
        mark = "PASS" if self.passed else "FAIL"
        text = f"{mark} {self.exercise} ({self.learner})"
        if self.detail:
            text += f": {self.detail}"
        if self.hint and not self.passed:
            text += f"\nhint: {self.hint}"
        return text

    def _repr_html_(self) -> str:
        import html

        color = "#1a7f37" if self.passed else "#cf222e"
        hint = f"<br><b>hint:</b> {html.escape(self.hint)}" if self.hint and not self.passed else ""
        return (f'<div style="border-left:4px solid {color};padding-left:8px"><b style="color:{color}">'
                f'{"PASS" if self.passed else "FAIL"}</b> {html.escape(self.exercise)} '
                f"({html.escape(self.learner)}): {html.escape(self.detail)}{hint}</div>")  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        return {"exercise": self.exercise, "learner": self.learner, "passed": self.passed,
                "hint": self.hint, "detail": self.detail, "at": self.at}  # fmt: skip

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], learner: str | None = None) -> CheckResult:
        return cls(str(data["exercise"]), learner or str(data.get("learner", "")), bool(data["passed"]),
                   str(data.get("hint") or ""), str(data.get("detail") or ""), float(data.get("at") or time.time()))


class _Fail(Exception):
    def __init__(self, detail: str, hint: str) -> None:
        super().__init__(detail)
        self.detail, self.hint = detail, hint


@dataclass(frozen=True)
class _Target:
    learner: str
    admin_url: str
    listener_url: str


def _target(where: Any, learner: str | None = None) -> _Target:
    """A Lab, a Learner (with an admin URL), or (admin_url, listener_url)."""
    if isinstance(where, Learner):
        if not where.admin_url:
            raise ValueError(f"learner {where.name!r} announced no admin URL: run the check on their machine")
        return _Target(learner or where.name, where.admin_url, where.listener_url)
    if isinstance(where, tuple) and len(where) == 2:
        return _Target(learner or "learner", str(where[0]), str(where[1]))
    if hasattr(where, "admin_url") and hasattr(where, "listener_url"):
        return _Target(learner or getattr(where, "node_id", None) or "learner", where.admin_url, where.listener_url)
    raise TypeError(f"cannot check {where!r}: pass a Lab, a Learner or (admin_url, listener_url)")


def _served(df: pd.DataFrame) -> list[str]:
    return [str(s) if s is not None and s == s else f"({e or 'no answer'})" for s, e in zip(df["served_by"], df["error"])]


def _routes_or_fail(admin: Any) -> pd.DataFrame:
    from .tables import routes_table

    table = routes_table(admin)
    if table.empty:
        raise _Fail("Envoy has no routes", "push a snapshot whose listener_0 uses a route configuration (local_route)")
    return table


def _check_route_api(t: _Target) -> str:
    from .tables import curl

    from .envoy import EnvoyAdmin

    with EnvoyAdmin(t.admin_url) as admin:
        table = _routes_or_fail(admin)
    if not table["match"].astype(str).str.contains("prefix /api").any():
        raise _Fail("Envoy has no route matching the prefix /api",
                    "add a route for the prefix /api to service2, e.g. routes({'/api': 'service2', '/': 'service1'})")
    api = _served(curl(t.listener_url, 4, path="/api"))
    if set(api) != {"service2"}:
        raise _Fail(f"GET /api was served by {', '.join(sorted(set(api)))}",
                    "Envoy takes the first route that matches: put the /api route before the catch-all '/' "
                    "route, and point it at the cluster of service2")
    root = _served(curl(t.listener_url, 2, path="/"))
    if set(root) != {"service1"}:
        raise _Fail(f"GET / was served by {', '.join(sorted(set(root)))}",
                    "everything that is not /api should still go to service1 (a '/' route after /api)")
    return "GET /api -> service2, GET / -> service1"


def _check_canary(t: _Target) -> str:
    from .tables import curl

    from .envoy import EnvoyAdmin

    with EnvoyAdmin(t.admin_url) as admin:
        table = _routes_or_fail(admin)
    splits = [c for c in table["cluster"].astype(str) if "%" in c]
    if not splits:
        raise _Fail(f"no route splits traffic (routes go to {', '.join(table['cluster'].astype(str))})",
                    "a canary is one route with weighted clusters: canary({'service1': 90, 'service2': 10})")
    wanted = {"service1": 90.0, "service2": 10.0}
    parsed = [dict((part.rsplit(" ", 1)[0], float(part.rsplit(" ", 1)[1].rstrip("%"))) for part in s.split(", "))
              for s in splits]  # fmt: skip
    if not any(p.keys() == wanted.keys() and all(abs(p[k] - v) < 0.5 for k, v in wanted.items()) for p in parsed):
        raise _Fail(f"the route splits {splits[0]}",
                    "send 90% to service1 and 10% to service2: weights={'service1': 90, 'service2': 10}")
    served = _served(curl(t.listener_url, 200, path="/"))
    share = served.count("service2") / len(served)
    others = sorted(set(served) - {"service1", "service2"})
    if others or not 0.03 <= share <= 0.22:
        raise _Fail(f"of 200 requests {share:.0%} reached service2" + (f", others: {others}" if others else ""),
                    "the configuration says 90/10 but traffic does not follow it: is the split on the route "
                    "that matches '/', and do both clusters have endpoints?")
    return f"route splits 90/10; 200 requests: {share:.0%} to service2"


def _check_fix_nack(t: _Target) -> str:
    from .tables import curl, listeners_table

    from .envoy import EnvoyAdmin

    with EnvoyAdmin(t.admin_url) as admin:
        listeners = listeners_table(admin)
    mine = listeners[listeners["name"] == SANDBOX_LISTENER]
    errors = mine[mine["state"] == "error"]
    if not errors.empty:
        text = str(errors.iloc[0]["error_state"]).strip().splitlines()
        raise _Fail(f"Envoy rejected the last {SANDBOX_LISTENER}: {text[-1].lstrip(': ') if text else ''}",
                    "read Envoy's error (in the dashboard or lab.listeners()): the HTTP connection manager "
                    "needs a non-empty stat_prefix; push a fixed listener_0")
    if not (mine["state"] == "active").any():
        raise _Fail(f"Envoy has no active {SANDBOX_LISTENER}", "push a snapshot with a valid listener_0")
    served = _served(curl(t.listener_url, 2, path="/"))
    if not set(served) <= {"service1", "service2"}:
        raise _Fail(f"GET / answered {', '.join(sorted(set(served)))}",
                    "listener_0 is accepted but requests fail: check its route configuration and clusters")
    return f"{SANDBOX_LISTENER} accepted and serving ({served[0]})"


@dataclass(frozen=True)
class Exercise:
    """A task, the snapshot it starts from, a check of the learner's real Envoy, and a solution."""

    key: str
    title: str
    task: str
    check_fn: Callable[[_Target], str]
    start: SnapshotSpec | None = None
    solution: SnapshotSpec | None = None
    wrong: SnapshotSpec | None = None  # a typical mistake (for demos and tests)

    def check(self, where: Any, learner: str | None = None) -> CheckResult:
        """Run the check against a Lab, a Learner or (admin_url, listener_url)."""
        target = _target(where, learner)
        try:
            detail = self.check_fn(target)
        except _Fail as fail:
            return CheckResult(self.key, target.learner, False, fail.hint, fail.detail)
        except Exception as exc:  # Envoy unreachable, ...: a failed check, with what happened
            return CheckResult(self.key, target.learner, False,
                               "is the learner's Envoy running, and is its admin interface reachable?",
                               f"could not check: {type(exc).__name__}: {exc}")  # fmt: skip
        return CheckResult(self.key, target.learner, True, "", detail)


EXERCISES: dict[str, Exercise] = {
    e.key: e
    for e in (
        Exercise(
            "route-api", "Send /api to service2",
            "Requests to /api (and below) must be served by service2; everything else by service1.",
            _check_route_api, start=sandbox("service1"),
            solution=routes({"/api": "service2", "/": "service1"}),
            wrong=routes({"/": "service1", "/api": "service2"}),
        ),
        Exercise(
            "canary", "A 90/10 canary",
            "Send 90% of the traffic to service1 and 10% to service2.",
            _check_canary, start=routes({"/": "service1"}),
            solution=canary({"service1": 90, "service2": 10}),
            wrong=canary({"service1": 10, "service2": 90}),
        ),
        Exercise(
            "fix-nack", "Fix this NACKed listener",
            "The instructor pushed a listener_0 that Envoy refused (a NACK). Read Envoy's error and push a "
            "listener_0 it accepts.",
            _check_fix_nack, start=broken_listener(),
            solution=sandbox("service1"), wrong=broken_listener(),
        ),
    )
}


# --------------------------------------------------------------------------- the workshop


class Workshop:
    """The instructor's side: one control plane, per-learner snapshots, groups, progress.

    ``Workshop(port=18000)`` starts its own control plane (``host`` beyond 127.0.0.1 only when
    you say so; ``tokens=True`` for per-learner tokens, ``tls=DIR`` for TLS with a CA made in
    DIR); ``Workshop(control_plane)`` drives one you already run (without tokens or TLS).
    """

    def __init__(
        self,
        control_plane: ControlPlane | None = None,
        *,
        port: int = 18000,
        host: str = "127.0.0.1",
        tokens: bool | Mapping[str, str] = False,
        tls: str | Path | None = None,
        desk_port: int | None = 0,
        exercises: Mapping[str, Exercise] | None = None,
    ) -> None:
        self._lock = threading.RLock()
        self._tokens: dict[str, str] = {}
        self.token_required = bool(tokens)
        self._authorizer: Callable[[str, Mapping[str, str]], bool] | None = None
        self.tls_dir: Path | None = None
        self.tls_files: Any = None
        self._ca: Any = None
        if control_plane is not None:
            if tokens or tls is not None:
                raise ValueError("tokens and TLS need the workshop to create its control plane: "
                                 "Workshop(port=..., tokens=True, tls=DIR)")  # fmt: skip
            self.control_plane = control_plane
        else:
            credentials = self._setup_tls(Path(tls)) if tls is not None else None
            if isinstance(tokens, Mapping):
                self._tokens.update(tokens)
            self._rebuild_authorizer()
            self.control_plane = ControlPlane(
                port, host, authorize=self._authorize if self.token_required else None,
                server_credentials=credentials,
            )
        self.exercises: dict[str, Exercise] = dict(exercises if exercises is not None else EXERCISES)
        self.groups: dict[str, list[str]] = {}
        self.prepared: dict[str, SnapshotSpec] = {}
        self._roster: list[str] = list(self._tokens)
        self._learners: dict[str, Learner] = {}
        self._pending_meta: set[str] = set()
        self._class: SnapshotSpec | None = None  # the class default (a Snapshot or a template)
        self._own: dict[str, SnapshotSpec] = {}  # learners with a snapshot of their own
        self._rendered: set[str] = set()  # learners whose cache entry is the class template's
        self._templated: set[str] = set()  # learners whose cache entry a template rendered for them
        self.progress: dict[str, dict[str, CheckResult]] = {}
        self._listeners: list[Callable[[str, str | None], None]] = []
        self._unhook: list[Callable[[], None]] = []
        self._desk_port = desk_port
        self._desk: _Desk | None = None
        for key, ex in self.exercises.items():
            if ex.start is not None:
                self.prepared[f"{key}: start"] = ex.start
            if ex.solution is not None:
                self.prepared[f"{key}: solution"] = ex.solution

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> Workshop:
        cp = self.control_plane.start()
        self.control_plane = cp
        if not self._unhook:
            self._unhook = [cp.on("stream_open", self._on_open), cp.on("request", self._on_request),
                            cp.on("stream_close", self._on_close)]  # fmt: skip
        if self._desk_port is not None and self._desk is None:
            self._desk = _Desk(self, cp.host, self._desk_port).start()
        return self

    def stop(self) -> None:
        for unhook in self._unhook:
            try:
                unhook()
            except ValueError:
                pass
        self._unhook = []
        if self._desk is not None:
            self._desk.stop()
            self._desk = None
        self.control_plane.stop()

    def __enter__(self) -> Workshop:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return (f"<Workshop {self.control_plane.address}: {len(self.learners())} learner(s), "
                f"{len(self.control_plane.nodes())} connected>")  # fmt: skip

    @property
    def address(self) -> str:
        """HOST:PORT of the control plane, what learners pass to ``--control-plane``."""
        return self.control_plane.address

    @property
    def desk_url(self) -> str | None:
        """Where learners push their own snapshots and report checks (None without a desk)."""
        return self._desk.url if self._desk is not None else None

    # -- access ------------------------------------------------------------------------------

    def _setup_tls(self, directory: Path) -> Any:
        from .security import make_ca, server_credentials, write_tls_files

        self._ca = make_ca("labxds workshop CA")
        self.tls_dir = directory
        self.tls_files = write_tls_files(directory, ca=self._ca, client_name="instructor")
        return server_credentials(self.tls_files)

    def _rebuild_authorizer(self) -> None:
        if not self.token_required:
            return
        from .security import TokenAuthorizer

        self._authorizer = TokenAuthorizer(dict(self._tokens))

    def _authorize(self, node_id: str, metadata: Mapping[str, str]) -> bool:
        authorizer = self._authorizer
        return authorizer is not None and authorizer(node_id, metadata)

    def add_learner(self, name: str, token: str | None = None) -> str | None:
        """Put ``name`` on the roster; with tokens, returns the learner's token (made if not given)."""
        if not name:
            raise ValueError("a learner needs a name (their node id)")
        with self._lock:
            if name in self.groups:
                raise ValueError(f"{name!r} is already a group's name")
            if name not in self._roster:
                self._roster.append(name)
            if self.token_required:
                self._tokens[name] = token or self._tokens.get(name) or secrets.token_urlsafe(16)
                self._rebuild_authorizer()
                return self._tokens[name]
        return None

    def token(self, name: str) -> str | None:
        return self._tokens.get(name)

    def learner_tls(self, name: str, directory: str | Path | None = None) -> tuple[Path, Path, Path]:
        """Issue ``name`` a client certificate from the workshop's CA: (ca, cert, key) paths."""
        if self._ca is None or self.tls_files is None:
            raise RuntimeError("this workshop has no TLS: Workshop(tls=DIR)")
        from .security import issue

        out = Path(directory) if directory is not None else (self.tls_dir or Path("."))
        out.mkdir(parents=True, exist_ok=True)
        cert, key = issue(self._ca, name, client=True).write(out / f"{name}.pem", out / f"{name}-key.pem")
        return Path(self.tls_files.ca), cert, key

    def bootstrap_command(self, name: str, host: str | None = None) -> str:
        """The command line a learner runs to write their bootstrap."""
        address = f"{host}:{self.control_plane.port}" if host else self.address
        parts = ["python -m labxds bootstrap", f"--node {name}", f"--control-plane {address}"]
        if self._tokens.get(name):
            parts.append(f"--token {self._tokens[name]}")
        if self.tls_files is not None:
            parts += ["--tls-ca ca.pem", f"--tls-cert {name}.pem", f"--tls-key {name}-key.pem"]
        return " ".join(parts) + " -o envoy.yaml"

    # -- who is there ------------------------------------------------------------------------

    def learners(self) -> list[str]:
        """The roster, then every other node that ever connected, in order of arrival."""
        with self._lock:
            names = list(self._roster)
            names += [n for n in self._learners if n not in names]
        seen = set(names)
        status = self.control_plane.tracker
        names += [n for n in status.connected() if n not in seen]
        return names

    def learner(self, name: str) -> Learner:
        """What the learner's Envoy announced (defaults if it has not connected yet)."""
        with self._lock:
            return self._learners.get(name) or Learner(name)

    def group(self, name: str, members: Iterable[str]) -> list[str]:
        """Name a group of learners (``push(..., to=name)`` then reaches them all)."""
        with self._lock:
            if name in self._roster or name in self._learners:
                raise ValueError(f"{name!r} is a learner's name; choose another group name")
            self.groups[name] = list(dict.fromkeys(members))
        self._changed("group", None)
        return self.groups[name]

    def resolve(self, to: str | Iterable[str]) -> list[str]:
        """Learner names for a learner, a group, or a list of both."""
        items = [to] if isinstance(to, str) else list(to)
        out: list[str] = []
        for item in items:
            out.extend(self.groups.get(item, [item]))
        return list(dict.fromkeys(out))

    # -- snapshots ---------------------------------------------------------------------------

    def prepare(self, name: str, spec: SnapshotSpec) -> None:
        """Keep a snapshot (or template) under ``name`` for the dashboard's selector."""
        self.prepared[name] = spec
        self._changed("prepared", None)

    def _spec(self, spec: SnapshotSpec | str) -> SnapshotSpec:
        if isinstance(spec, str):
            try:
                return self.prepared[spec]
            except KeyError:
                raise KeyError(f"no prepared snapshot {spec!r}; prepared: {', '.join(self.prepared)}") from None
        return spec

    def broadcast(self, spec: SnapshotSpec | str, *, wait: bool = True, timeout: float = 10.0) -> None:
        """Make ``spec`` the class default: every learner without a snapshot of their own gets it."""
        spec = self._spec(spec)
        cp = self.control_plane
        since = time.time()
        with self._lock:
            self._class = spec
            if isinstance(spec, Snapshot):
                cp.cache.set(spec, None)
                stale, self._rendered = self._rendered, set()
                for name in stale:
                    cp.cache.clear(name)
                self._templated -= stale
                applied = {n: spec for n in cp.nodes() if n not in self._own}
            else:
                if not callable(spec):  # resources: one snapshot for all
                    return self.broadcast(Snapshot(spec), wait=wait, timeout=timeout)
                targets = [n for n in self._known() if n not in self._own]
                applied = self._set_each(spec, targets, rendered=True)
        self._changed("snapshot", None)
        if wait:
            self._wait(applied, since, timeout)

    def push(self, spec: SnapshotSpec | str, to: str | Iterable[str], *, wait: bool = True,
             timeout: float = 10.0) -> dict[str, Snapshot]:
        """Give the learners ``to`` names (learners, groups) their own snapshot; returns them."""
        spec = self._spec(spec)
        names = self.resolve(to)
        if not names:
            raise ValueError("push to whom? name learners or a group")
        since = time.time()
        with self._lock:
            for name in names:
                self._own[name] = spec
            applied = self._set_each(spec, names, rendered=False)
        for name in names:
            self._changed("snapshot", name)
        if wait:
            self._wait(applied, since, timeout)
        return applied

    def reset(self, to: str | Iterable[str], *, wait: bool = True, timeout: float = 10.0) -> None:
        """Drop the learners' own snapshots: they follow the class default again."""
        names = self.resolve(to)
        since = time.time()
        cp = self.control_plane
        with self._lock:
            for name in names:
                self._own.pop(name, None)
            if self._class is not None and not isinstance(self._class, Snapshot):
                applied = self._set_each(self._class, names, rendered=True)
            else:
                for name in names:
                    cp.cache.clear(name)
                    self._rendered.discard(name)
                applied = {n: cp.cache.default for n in names if cp.cache.default is not None}
        for name in names:
            self._changed("snapshot", name)
        if wait:
            self._wait(applied, since, timeout)

    def snapshot_of(self, name: str) -> Snapshot | None:
        """The snapshot ``name`` is served now."""
        return self.control_plane.cache.get(name)

    def source_of(self, name: str) -> str:
        """"own: ..." or "class: ..." or "-": where the learner's snapshot comes from."""
        with self._lock:
            if name in self._own:
                return f"own: {_describe(self._own[name])}"
            if self._class is not None:
                return f"class: {_describe(self._class)}"
        return "-"

    def _known(self) -> list[str]:
        return list(dict.fromkeys([*self._roster, *self._learners, *self.control_plane.nodes()]))

    def _set_each(self, spec: SnapshotSpec, names: Sequence[str], *, rendered: bool) -> dict[str, Snapshot]:
        """Render ``spec`` for each learner and set it; returns what was set.

        A template waits for learners whose Envoy has not announced itself yet: it is rendered
        when they connect (``_on_request``).
        """
        cp = self.control_plane
        template = not isinstance(spec, Snapshot)
        out: dict[str, Snapshot] = {}
        for name in names:
            if rendered:
                self._rendered.add(name)
            else:
                self._rendered.discard(name)
            if template and name not in self._learners:
                self._templated.discard(name)
                continue
            try:
                out[name] = render(spec, self.learner(name))
            except (KeyError, ValueError) as exc:
                text = exc.args[0] if exc.args else exc
                raise ValueError(f"cannot build {_describe(spec)} for learner {name!r}: {text}") from exc
        for name, snap in out.items():
            cp.cache.set(snap, name)
            if template:
                self._templated.add(name)
            else:
                self._templated.discard(name)
        return out

    def _wait(self, applied: Mapping[str, Snapshot], since: float, timeout: float) -> None:
        cp = self.control_plane
        connected = set(cp.nodes())
        groups: dict[int, tuple[Snapshot, list[str]]] = {}
        for name, snap in applied.items():
            if name in connected:
                groups.setdefault(id(snap), (snap, []))[1].append(name)
        errors: dict[tuple[str, str], str] = {}
        missing: list[str] = []
        deadline = time.monotonic() + timeout
        for snap, names in groups.values():
            left = max(0.1, deadline - time.monotonic())
            try:
                cp.tracker.wait_applied(snap, names, left, since, cp.cache.get)
            except PushRejected as exc:
                errors.update(exc.errors)
            except PushTimeout as exc:
                missing.extend(exc.missing)
        # A version the learner refused before is not sent again (rule 4): waiting sees nothing
        # new, so say it was refused rather than applied.
        for snap, names in groups.values():
            for name in names:
                status = cp.tracker.node(name)
                for url, version in snap.versions.items():
                    st = status.types.get(url) if status else None
                    if st is not None and st.nacked_version == version and (
                        st.acked_at is None or (st.nacked_at or 0) > st.acked_at
                    ):
                        errors.setdefault((name, url), st.nack_error or "")
        if errors:
            raise PushRejected(errors)
        if missing:
            raise PushTimeout(missing, timeout)

    # -- the control plane's events (on its thread) -----------------------------------------

    def _on_open(self, node_id: str, stream: int) -> None:
        with self._lock:
            self._pending_meta.add(node_id)
        self._changed("connect", node_id)

    def _on_close(self, node_id: str, stream: int) -> None:
        self._changed("disconnect", node_id)

    def _on_request(self, node_id: str, request: Any) -> None:
        if node_id not in self._pending_meta:
            self._changed("request", node_id)
            return
        from google.protobuf import json_format

        meta = json_format.MessageToDict(request.node.metadata) if request.HasField("node") else {}
        learner = Learner.from_metadata(node_id, meta)
        with self._lock:
            self._pending_meta.discard(node_id)
            changed = self._learners.get(node_id) != learner
            self._learners[node_id] = learner
            spec = self._own.get(node_id)
            rendered = False
            if spec is None and self._class is not None and not isinstance(self._class, Snapshot):
                spec, rendered = self._class, True
            if spec is not None and not isinstance(spec, Snapshot) and (changed or node_id not in self._templated):
                try:  # the stream reads its snapshot after this hook: it starts with the right one
                    self._set_each(spec, [node_id], rendered=rendered)
                except Exception:
                    log.exception("labxds workshop: cannot render %s for learner %r", _describe(spec), node_id)
        self._changed("learner", node_id)

    # -- progress ----------------------------------------------------------------------------

    def record(self, result: CheckResult) -> CheckResult:
        """Keep a check result (a learner's report, or a check the instructor ran)."""
        with self._lock:
            self.progress.setdefault(result.learner, {})[result.exercise] = result
        self._changed("progress", result.learner)
        return result

    def check(self, exercise: str, learner: str) -> CheckResult:
        """Run ``exercise``'s check on ``learner``'s Envoy from here (needs its admin URL reachable)."""
        ex = self.exercises[exercise]
        try:
            target = self.learner(learner)
            result = ex.check(target, learner)
        except ValueError as exc:
            result = CheckResult(exercise, learner, False, "run the check on the learner's machine", str(exc))
        return self.record(result)

    def check_all(self, exercise: str, to: str | Iterable[str] | None = None) -> list[CheckResult]:
        names = self.resolve(to) if to is not None else [n for n in self.learners() if n in self.control_plane.nodes()]
        return [self.check(exercise, n) for n in names]

    def assign(self, exercise: str, to: str | Iterable[str] | None = None, *, wait: bool = True,
               timeout: float = 10.0) -> None:
        """Push ``exercise``'s starting snapshot to ``to`` (default: the whole class)."""
        ex = self.exercises[exercise]
        if ex.start is None:
            return
        try:
            if to is None:
                self.broadcast(ex.start, wait=wait, timeout=timeout)
            else:
                self.push(ex.start, to, wait=wait, timeout=timeout)
        except PushRejected:
            if exercise != "fix-nack":  # that one starts with a NACK on purpose
                raise

    def progress_frame(self) -> pd.DataFrame:
        import pandas as pd

        rows = [
            {"learner": r.learner, "exercise": r.exercise, "passed": r.passed, "detail": r.detail, "hint": r.hint,
             "at": pd.Timestamp(r.at, unit="s")}
            for results in self.progress.values() for r in results.values()
        ]  # fmt: skip
        return pd.DataFrame(rows, columns=["learner", "exercise", "passed", "detail", "hint", "at"])

    # -- change notifications ----------------------------------------------------------------

    def on_change(self, callback: Callable[[str, str | None], None]) -> Callable[[], None]:
        """Call ``callback(kind, learner)`` after any change, from whichever thread made it."""
        self._listeners.append(callback)
        return lambda: self._listeners.remove(callback)

    def _changed(self, kind: str, learner: str | None) -> None:
        for callback in list(self._listeners):
            try:
                callback(kind, learner)
            except Exception:
                log.exception("labxds workshop listener %r failed", callback)


# --------------------------------------------------------------------------- the desk (HTTP)


def _encode_snapshot(snap: Snapshot) -> dict[str, Any]:
    from .resource_types import TYPE_PREFIX

    resources = [
        {"type_url": url, "value": base64.b64encode(msg.SerializeToString(deterministic=True)).decode()}
        for url in snap.types for msg in snap.resources(url).values()
    ]  # fmt: skip
    assert all(r["type_url"].startswith(TYPE_PREFIX) for r in resources)
    return {"resources": resources, "version": snap.versions}


def _decode_snapshot(data: Mapping[str, Any]) -> Snapshot:
    from .messages import ResourceError
    from .resource_types import message_class

    messages = []
    for i, item in enumerate(data.get("resources") or []):
        try:
            cls = message_class(str(item["type_url"]))
            messages.append(cls.FromString(base64.b64decode(item["value"])))
        except Exception as exc:
            raise ResourceError(f"cannot decode: {exc}", where=f"resource #{i}") from None
    return Snapshot(messages, version=data.get("version"))


class _Desk:
    """POST /v1/learners/NAME/snapshot and /v1/learners/NAME/result; GET /v1/exercises."""

    def __init__(self, workshop: Workshop, host: str, port: int) -> None:
        self.workshop = workshop
        self.host = host.strip("[]")
        handler = type("_Handler", (_DeskHandler,), {"workshop": workshop})
        server_cls = type("_Server", (ThreadingHTTPServer,), {"daemon_threads": True, "allow_reuse_address": True})
        if ":" in self.host:
            import socket

            server_cls.address_family = socket.AF_INET6
        self.server = server_cls((self.host, port), handler)
        self.tls = workshop.tls_files is not None
        if self.tls:
            files = workshop.tls_files
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(str(files.server_cert), str(files.server_key))
            ctx.load_verify_locations(str(files.ca))
            ctx.verify_mode = ssl.CERT_REQUIRED
            self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.tls else 'http'}://{host}:{self.server.server_address[1]}"

    def start(self) -> _Desk:
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="labxds-workshop-desk", daemon=True)  # fmt: skip
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)


class _DeskHandler(BaseHTTPRequestHandler):
    workshop: Workshop
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _reply(self, status: int, body: Mapping[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802
        if self.path.rstrip("/") == "/v1/exercises":
            ex = self.workshop.exercises
            self._reply(200, {"exercises": [{"key": e.key, "title": e.title, "task": e.task} for e in ex.values()]})
        else:
            self._reply(404, {"error": f"no such path {self.path}"})

    def do_POST(self) -> None:  # noqa: N802
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        parts = [unquote(p) for p in self.path.strip("/").split("/")]
        if len(parts) != 4 or parts[:2] != ["v1", "learners"] or parts[3] not in ("snapshot", "result"):
            return self._reply(404, {"error": f"no such path {self.path}"})
        name, action = parts[2], parts[3]
        ws = self.workshop
        if ws.token_required and not ws._authorize(name, {TOKEN_HEADER: self.headers.get(TOKEN_HEADER, "")}):
            return self._reply(403, {"error": f"not authorized as {name!r}: send your own {TOKEN_HEADER}"})
        try:
            data = json.loads(raw or b"{}")
        except ValueError:
            return self._reply(400, {"error": "the body is not JSON"})
        if action == "result":
            try:
                result = ws.record(CheckResult.from_dict(data, learner=name))
            except (KeyError, TypeError, ValueError) as exc:
                return self._reply(400, {"error": f"not a check result: {exc}"})
            return self._reply(200, result.to_dict())
        try:
            snap = _decode_snapshot(data)
            ws.push(snap, name, wait=bool(data.get("wait", True)), timeout=float(data.get("timeout", 10)))
        except PushRejected as exc:
            return self._reply(409, {"rejected": {f"{n} {url}": text for (n, url), text in exc.errors.items()}})
        except PushTimeout as exc:
            return self._reply(504, {"error": str(exc)})
        except ValueError as exc:  # ResourceError, ConsistencyError
            return self._reply(400, {"error": str(exc)})
        self._reply(200, {"versions": snap.versions})


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
            raise ValueError("LearnerSession needs your name (the lab's node id)")
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
            raise PushRejected({tuple(k.split(" ", 1)): v for k, v in data["rejected"].items()})  # type: ignore[misc]
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
        self._post("snapshot", {**_encode_snapshot(snap), "timeout": timeout})
        return snap

    def check(self, exercise: str, *, report: bool = True) -> CheckResult:
        """Check ``exercise`` on your Envoy; report the result to the instructor."""
        result = EXERCISES[exercise].check(self.lab, self.name)
        if report:
            self.report(result)
        return result

    def report(self, result: CheckResult) -> None:
        self._post("result", result.to_dict())

    def exercises(self) -> list[dict[str, str]]:
        return self._client.get("/v1/exercises").json()["exercises"]


def env_control_plane() -> str | None:
    """LABXDS_CONTROL_PLANE: the instructor's control plane, as a learner's notebook reads it."""
    return os.environ.get("LABXDS_CONTROL_PLANE") or None
