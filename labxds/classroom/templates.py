"""Snapshot templates: functions of a :class:`Learner` that build that learner's own snapshot.

The workshop pushes a template to many learners; each gets the snapshot made for its own ports
and echo services, so several learners can share one machine.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, Union

from ..xds.builders import (
    SANDBOX_CLUSTER,
    SANDBOX_LISTENER,
    SANDBOX_ROUTE,
    cluster,
    http_listener,
    route_configuration,
)
from ..xds.snapshot import Snapshot
from .learners import Learner

__all__ = ["SnapshotSpec", "Template", "broken_listener", "canary", "describe_spec", "render", "routes", "sandbox"]

Template = Callable[[Learner], Snapshot]
#: What can be pushed: a snapshot, a template (a function of the learner), or resources.
SnapshotSpec = Union[Snapshot, Template, Iterable[Any]]


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
    build.recipe = {"template": "sandbox", "upstream": upstream, "version": version}  # type: ignore[attr-defined]  # labxds.classroom.recipes
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
    build.recipe = {"template": "routes", "table": table, "version": version}  # type: ignore[attr-defined]  # labxds.classroom.recipes
    return build


def canary(weights: Mapping[str, int] | None = None, version: str | None = None) -> Template:
    """Everything split by ``weights`` (default 90 to service1, 10 to service2)."""
    weights = dict(weights or {"service1": 90, "service2": 10})
    build = routes({"/": weights}, version)
    build.__name__ = f"canary({weights!r})"
    build.recipe = {"template": "canary", "weights": weights, "version": version}  # type: ignore[attr-defined]  # labxds.classroom.recipes
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
    build.recipe = {"template": "broken_listener", "version": version}  # type: ignore[attr-defined]  # labxds.classroom.recipes
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
