"""Learners of a workshop: who they are, where their Envoy lives, and snapshots made for each.

A learner's Envoy announces, in its bootstrap's node metadata, where its listener, admin and
echo services are; a *template* is a function of the :class:`Learner` that builds that
learner's snapshot, so several learners can share one machine.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

from .envoy import reachable
from .resources import (
    SANDBOX_CLUSTER,
    SANDBOX_LISTENER,
    SANDBOX_ROUTE,
    cluster,
    http_listener,
    route_configuration,
)
from .security import TOKEN_HEADER  # the header name and the token check live there
from .snapshot import Snapshot

if TYPE_CHECKING:
    pass

log = logging.getLogger("labxds")

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
        return f"http://{reachable(self.listener_host)}:{self.listener_port}"


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
    keepalive: tuple[float, float] | None = (30.0, 10.0),
) -> dict:
    """A learner's Envoy bootstrap: node id ``node``, ADS at ``control_plane`` (HOST:PORT).

    ``token`` is sent as gRPC initial metadata (``x-labxds-token``) on the ADS stream; the TLS
    files turn on TLS to the control plane (mutual TLS with a client certificate and key).
    ``learner`` adds node metadata telling the control plane where the listener, the admin
    interface and the echo services are. ``keepalive`` (interval, timeout in seconds) has Envoy
    ping the instructor's control plane and reconnect if a ping goes unanswered: across a
    network, a connection can die without either side being told.
    """
    from .envoy import render_bootstrap

    if not node:
        raise ValueError("a learner's bootstrap needs a node id (the learner's name)")
    host, port = parse_address(control_plane)
    tls_given = [p for p in (tls_ca, tls_cert, tls_key) if p is not None]
    if tls_given and len(tls_given) != 3:
        raise ValueError("TLS needs all three of --tls-ca, --tls-cert and --tls-key")
    render = dict(xds_host=host, xds_port=port, admin_host=admin_host, admin_port=admin_port,
                  node_id=node, node_cluster="workshop", delta=delta, keepalive=keepalive)  # fmt: skip
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


def describe_spec(spec: SnapshotSpec) -> str:
    if isinstance(spec, Snapshot):
        return repr(spec)
    return getattr(spec, "__name__", None) or type(spec).__name__
