"""Exercises and their checks, which look at a learner's real Envoy: the course's and the workshop's.

An :class:`Exercise` is a task, a check and a solution. The check reads the learner's
``/config_dump`` and stats (through :class:`~labxds.envoy.EnvoyAdmin`) and sends requests through
its listener (:func:`~labxds.lab.traffic.send`); it answers with a :class:`CheckResult`: passed, or
failed with a hint in the learner's terms (a check raises :class:`Fail` for that, never lets a
traceback reach the learner). Course exercises (keys "N.M", lesson N; :mod:`labxds.classroom.course`)
also carry the code a notebook shows: the ``placeholder`` line and the ``solution`` that nbgrader's
``### BEGIN SOLUTION`` / ``### END SOLUTION`` markers enclose, and the check gets the learner's
answers. Workshop exercises (:data:`EXERCISES`) carry snapshots: where they start, one that solves
them, a typical mistake.

A workshop check runs where the learner's Envoy is, usually the learner's machine, so the workshop
cannot take a reported pass on trust: :meth:`Exercise.confirm` sets it against what the control
plane itself knows, the snapshot it serves the learner's node and the versions Envoy ACKed.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from ..envoy import EnvoyAdmin
from ..envoy.config_dump import listener_rows, route_rows
from ..i18n import N_, _
from ..lab.traffic import send
from ..xds.builders import SANDBOX_LISTENER, SANDBOX_ROUTE
from ..xds.resource_types import CLUSTER, ENDPOINT, LISTENER, ROUTE, short_name
from .learners import Learner
from .templates import (
    SnapshotSpec,
    broken_listener,
    canary,
    routes,
    sandbox,
)

__all__ = ["EXERCISES", "CheckResult", "Exercise", "Fail", "Target", "course_exercises", "exercise", "register"]

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
    #: What the control plane says of the learner's configuration (set by the workshop, never
    #: taken from a report): True it confirms, False it contradicts, None it cannot tell.
    confirmed: bool | None = None
    evidence: str = ""

    def __bool__(self) -> bool:
        return self.passed

    @property
    def mark(self) -> str:
        """✓ passed and confirmed, ✓? passed but not confirmable, ⚠ a pass the control plane
        contradicts, ✗ failed."""
        if not self.passed:
            return "✗"
        return {True: "✓", None: "✓?", False: "⚠"}[self.confirmed]

    @property
    def contradicted(self) -> bool:
        """A pass the control plane knows to be false (the configuration Envoy runs does not do it)."""
        return self.passed and self.confirmed is False

    def __str__(self) -> str:
        mark = _("PASS") if self.passed else _("FAIL")
        text = f"{mark} {self.exercise} ({self.learner})"
        if self.detail:
            text += f": {self.detail}"
        if self.hint and not self.passed:
            text += "\n" + _("hint: {hint}").format(hint=self.hint)
        if self.evidence:
            text += "\n" + _("control plane: {evidence}").format(evidence=self.evidence)
        return text

    def _repr_html_(self) -> str:
        import html

        color = "#1a7f37" if self.passed else "#cf222e"
        # (messages are looked up outside the f-strings: Babel does not extract _() inside one)
        label, mark = _("Hint:"), _("PASS") if self.passed else _("FAIL")
        hint = f"<br><b>{html.escape(label)}</b> {html.escape(self.hint)}" if self.hint and not self.passed else ""
        if self.evidence:
            said = _("control plane {mark}:").format(mark=self.mark)
            hint += f"<br><b>{html.escape(said)}</b> {html.escape(self.evidence)}"
        return (f'<div style="border-left:4px solid {color};padding-left:8px"><b style="color:{color}">'
                f'{html.escape(mark)}</b> {html.escape(self.exercise)} '
                f"({html.escape(self.learner)}): {html.escape(self.detail)}{hint}</div>")  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        return {"exercise": self.exercise, "learner": self.learner, "passed": self.passed,
                "hint": self.hint, "detail": self.detail, "at": self.at,
                "confirmed": self.confirmed, "evidence": self.evidence}  # fmt: skip

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], learner: str | None = None) -> CheckResult:
        """A reported result: ``confirmed`` and ``evidence`` are the workshop's to set, not read."""
        return cls(str(data["exercise"]), learner or str(data.get("learner", "")), bool(data["passed"]),
                   str(data.get("hint") or ""), str(data.get("detail") or ""), float(data.get("at") or time.time()))


class Fail(Exception):
    """Raised by a check: what is wrong (``detail``) and what to do about it (``hint``), both in
    the learner's terms. The check's caller turns it into a failed :class:`CheckResult`."""

    def __init__(self, detail: str, hint: str = "") -> None:
        super().__init__(detail)
        self.detail, self.hint = detail, hint



@dataclass(frozen=True)
class Target:
    """Where a check looks: the learner's Envoy (its admin interface and listener) and, when the
    check runs in the learner's own lab, that lab (its control plane, its echo services)."""

    learner: str
    admin_url: str
    listener_url: str
    lab: Any = None  # a LabRuntime (or anything with its interface), None for a workshop's Learner

    @contextmanager
    def admin(self) -> Iterator[EnvoyAdmin]:
        """A client of the learner's Envoy's admin interface, closed afterwards."""
        with EnvoyAdmin(self.admin_url) as client:
            yield client

    def served(self, n: int = 1, path: str = "/") -> list[str]:
        """Who answered each of ``n`` requests through the learner's listener (failures in
        parentheses, in curl's words: "(connection refused)")."""
        return _served(self.listener_url, n, path)

    def own_lab(self) -> Any:
        """The learner's lab with a control plane of its own: what a course check pushes to."""
        lab = self.lab
        if lab is None or getattr(lab, "remote", None) is not None or getattr(lab, "control_plane", None) is None:
            raise Fail(_("this check needs your own lab (labxds.Lab().start()), with its control plane"),
                       _("run the lesson's first cell: lab = labxds.Lab().start()"))
        return lab


def _target(where: Any, learner: str | None = None) -> Target:
    """A Lab, a Learner (with an admin URL), or (admin_url, listener_url)."""
    if isinstance(where, Target):
        return where
    if isinstance(where, Learner):
        if not where.admin_url:
            raise ValueError(_("learner '{name}' announced no admin URL: run the check on their machine").format(
                name=where.name))
        return Target(learner or where.name, where.admin_url, where.listener_url)
    if isinstance(where, tuple) and len(where) == 2:
        return Target(learner or "learner", str(where[0]), str(where[1]))
    if hasattr(where, "admin_url") and hasattr(where, "listener_url"):
        return Target(learner or getattr(where, "node_id", None) or "learner", where.admin_url, where.listener_url,
                      lab=where)
    raise TypeError(_("cannot check {where}: pass a Lab, a Learner or (admin_url, listener_url)").format(where=repr(where)))


def _served(url: str, n: int, path: str) -> list[str]:
    """Who answered each of ``n`` requests through the learner's listener."""
    nobody = _("no answer")  # outside the f-string: Babel does not extract _() inside one
    return [str(r["served_by"]) if r["served_by"] else f"({r['error'] or nobody})"
            for r in send(url, n, path=path)]


def _routes_or_fail(admin: Any) -> list[dict[str, Any]]:
    rows = route_rows(admin)
    if not rows:
        raise Fail(_("Envoy has no routes"), _("push a snapshot whose listener_0 uses a route configuration (local_route)"))
    return rows


def _check_route_api(t: Target) -> str:
    with EnvoyAdmin(t.admin_url) as admin:
        table = _routes_or_fail(admin)
    if not any("prefix /api" in str(r["match"]) for r in table):
        raise Fail(_("Envoy has no route matching the prefix /api"),
                   _("add a route for the prefix /api to service2, e.g. routes({'/api': 'service2', '/': 'service1'})"))
    api = _served(t.listener_url, 4, "/api")
    if set(api) != {"service2"}:
        raise Fail(_("GET {path} was served by {who}").format(path="/api", who=", ".join(sorted(set(api)))),
                   _("Envoy takes the first route that matches: put the /api route before the catch-all '/' "
                     "route, and point it at the cluster of service2"))
    root = _served(t.listener_url, 2, "/")
    if set(root) != {"service1"}:
        raise Fail(_("GET {path} was served by {who}").format(path="/", who=", ".join(sorted(set(root)))),
                   _("everything that is not /api should still go to service1 (a '/' route after /api)"))
    return _("GET /api -> service2, GET / -> service1")


def _check_canary(t: Target) -> str:
    with EnvoyAdmin(t.admin_url) as admin:
        table = _routes_or_fail(admin)
    splits = [str(r["cluster"]) for r in table if "%" in str(r["cluster"])]
    if not splits:
        raise Fail(_("no route splits traffic (routes go to {where})").format(
            where=", ".join(str(r["cluster"]) for r in table)),
            _("a canary is one route with weighted clusters: canary({'service1': 90, 'service2': 10})"))
    wanted = {"service1": 90.0, "service2": 10.0}
    parsed = [dict((part.rsplit(" ", 1)[0], float(part.rsplit(" ", 1)[1].rstrip("%"))) for part in s.split(", "))
              for s in splits]  # fmt: skip
    if not any(p.keys() == wanted.keys() and all(abs(p[k] - v) < 0.5 for k, v in wanted.items()) for p in parsed):
        raise Fail(_("the route splits {split}").format(split=splits[0]),
                   _("send 90% to service1 and 10% to service2: weights={'service1': 90, 'service2': 10}"))
    served = _served(t.listener_url, 200, "/")
    share = served.count("service2") / len(served)
    others = sorted(set(served) - {"service1", "service2"})
    if others or not 0.03 <= share <= 0.22:
        detail = _("of 200 requests {pct} reached service2").format(pct=f"{share:.0%}")
        if others:
            detail += _(", others: {others}").format(others=", ".join(others))
        raise Fail(detail, _("the configuration says 90/10 but traffic does not follow it: is the split on the route "
                             "that matches '/', and do both clusters have endpoints?"))
    return _("route splits 90/10; 200 requests: {pct} to service2").format(pct=f"{share:.0%}")


def _check_fix_nack(t: Target) -> str:
    with EnvoyAdmin(t.admin_url) as admin:
        mine = [r for r in listener_rows(admin) if r["name"] == SANDBOX_LISTENER]
    errors = [r for r in mine if r["state"] == "error"]
    if errors:
        text = str(errors[0]["error_state"]).strip().splitlines()
        raise Fail(_("Envoy rejected the last {name}: {words}").format(
            name=SANDBOX_LISTENER, words=text[-1].lstrip(": ") if text else ""),
            _("read Envoy's error (in the dashboard or lab.listeners()): the HTTP connection manager "
              "needs a non-empty stat_prefix; push a fixed listener_0"))
    if not any(r["state"] == "active" for r in mine):
        raise Fail(_("Envoy has no active {name}").format(name=SANDBOX_LISTENER),
                   _("push a snapshot with a valid listener_0"))
    served = _served(t.listener_url, 2, "/")
    if not set(served) <= {"service1", "service2"}:
        raise Fail(_("GET / answered {who}").format(who=", ".join(sorted(set(served)))),
                   _("listener_0 is accepted but requests fail: check its route configuration and clusters"))
    return _("{name} accepted and serving ({who})").format(name=SANDBOX_LISTENER, who=served[0])


# -- what the control plane can confirm -----------------------------------------------------
#
# A check of the learner's Envoy runs on the learner's machine and is reported to the desk. The
# control plane cannot see the learner's traffic, but it knows the snapshot it serves the node and
# whether Envoy ACKed it: these functions say whether that configuration does what the exercise
# asks (a description of it), raise Fail when it does not, and _CannotTell for a form they do not
# read (a regex route, say).


class _CannotTell(Exception):
    pass


def _route_target(config: Any, path: str) -> str | dict[str, float]:
    """The cluster (or weighted clusters) Envoy's first matching route sends ``path`` to."""
    for vhost in config.virtual_hosts:
        if "*" not in vhost.domains:
            continue
        for route in vhost.routes:
            kind = route.match.WhichOneof("path_specifier")
            if kind == "prefix":
                hit = path.startswith(route.match.prefix)
            elif kind == "path":
                hit = path == route.match.path
            else:
                raise _CannotTell(_("a route matches by {kind}, which the control plane does not evaluate").format(
                    kind=kind))
            if route.match.headers or route.match.query_parameters:
                raise _CannotTell(_("a route matches on headers or query parameters"))
            if not hit:
                continue
            action = route.route
            if action.WhichOneof("cluster_specifier") == "cluster":
                return action.cluster
            if action.WhichOneof("cluster_specifier") == "weighted_clusters":
                total = sum(c.weight.value for c in action.weighted_clusters.clusters) or 1
                return {c.name: 100.0 * c.weight.value / total for c in action.weighted_clusters.clusters}
            raise _CannotTell(_("the route for {path} is not a route to a cluster").format(path=path))
        raise Fail(_("no route matches {path}").format(path=path), "")
    raise Fail(_("the route configuration has no virtual host for every domain ('*')"), "")


def _service_of(snapshot: Any, learner: Learner, cluster_name: str) -> str:
    """The learner's service a cluster reaches: by name, else by its endpoints."""
    if cluster_name in learner.services:
        return cluster_name
    cluster = snapshot.resources(CLUSTER).get(cluster_name)
    assignment = cluster.load_assignment if cluster is not None and cluster.HasField("load_assignment") else (
        snapshot.resources(ENDPOINT).get(cluster_name))
    if assignment is not None:
        found = {(e.endpoint.address.socket_address.address, e.endpoint.address.socket_address.port_value)
                 for group in assignment.endpoints for e in group.lb_endpoints}  # fmt: skip
        for service, endpoints in learner.services.items():
            if found and found <= set(endpoints):
                return service
    return cluster_name


def _routes_config(snapshot: Any) -> Any:
    config = snapshot.resources(ROUTE).get(SANDBOX_ROUTE)
    if config is None:
        raise Fail(_("there is no route configuration {name}").format(name=SANDBOX_ROUTE), "")
    return config


def _config_route_api(snapshot: Any, learner: Learner) -> str:
    config = _routes_config(snapshot)
    for path, wanted in (("/api", "service2"), ("/", "service1")):
        target = _route_target(config, path)
        went = _describe_target(snapshot, learner, target)
        if went != wanted:
            raise Fail(_("{path} goes to {where}").format(path=path, where=went), "")
    return _("sends /api to service2 and / to service1")


def _describe_target(snapshot: Any, learner: Learner, target: str | dict[str, float]) -> str:
    if isinstance(target, str):
        return _service_of(snapshot, learner, target)
    return _("a split: {shares}").format(
        shares=", ".join(f"{_service_of(snapshot, learner, n)} {w:g}%" for n, w in target.items()))


def _config_canary(snapshot: Any, learner: Learner) -> str:
    target = _route_target(_routes_config(snapshot), "/")
    if not isinstance(target, dict):
        raise Fail(_("/ goes to {where} alone, not split").format(where=_describe_target(snapshot, learner, target)), "")
    shares: dict[str, float] = {}
    for name, share in target.items():
        service = _service_of(snapshot, learner, name)
        shares[service] = shares.get(service, 0.0) + share
    if not (abs(shares.get("service1", 0) - 90) < 0.5 and abs(shares.get("service2", 0) - 10) < 0.5):
        split = ", ".join(f"{k} {v:g}%" for k, v in sorted(shares.items()))
        raise Fail(_("/ is split {split}").format(split=split), "")
    return _("splits / 90% to service1, 10% to service2")


def _config_fix_nack(snapshot: Any, learner: Learner) -> str:
    if SANDBOX_LISTENER not in snapshot.resources(LISTENER):
        raise Fail(_("there is no {name}").format(name=SANDBOX_LISTENER), "")
    return _("has a {name} (the refusal is over)").format(name=SANDBOX_LISTENER)


@dataclass(frozen=True)
class Exercise:
    """A task, a check of the learner's real Envoy, and its solution.

    ``check_fn(target, *answers)`` returns what it saw when the task is done and raises
    :class:`Fail` (detail, hint) when not; ``answers`` are the values of the names in
    ``answers`` after the learner's cell ran. Course exercises give the code of that cell:
    ``placeholder`` (what the learner starts from; the check must fail on it), ``solution``
    (between nbgrader's markers), ``mistakes`` (typical wrong answers the check must also fail
    on, with a hint), and ``given``: code that brings a fresh lab to where the exercise starts
    and defines the names the solution uses from earlier cells (tests and ``solve`` outside a
    notebook run it first). ``lab_options`` are what the exercise's ``Lab(...)`` needs.

    Workshop exercises give snapshots: ``start`` (what ``Workshop.assign`` pushes), ``solved``
    (one that solves it) and ``wrong`` (a typical mistake); ``config_fn`` judges the snapshot
    the control plane serves the learner (see :meth:`confirm`).
    """

    key: str
    title: str
    task: str
    check_fn: Callable[..., str]
    # the course: the code of the learner's cell
    placeholder: str = ""
    solution: str = ""
    answers: tuple[str, ...] = ()
    mistakes: tuple[str, ...] = ()
    given: str = ""
    lab_options: Mapping[str, Any] = field(default_factory=dict)
    docs: tuple[str, ...] = ()  # links to Envoy's documentation
    # the workshop: snapshots, and what the control plane can confirm
    start: SnapshotSpec | None = None
    solved: SnapshotSpec | None = None
    wrong: SnapshotSpec | None = None  # a typical mistake (for demos and tests)
    config_fn: Callable[[Any, Learner], str] | None = None
    config_types: tuple[str, ...] = ()  # the types config_fn reads: Envoy must hold them

    @property
    def lesson(self) -> int | None:
        """The lesson of a course exercise ("2.1" -> 2), None for a workshop exercise."""
        head = self.key.split(".", 1)[0]
        return int(head) if "." in self.key and head.isdigit() else None

    def confirm(self, control_plane: Any, learner: Learner) -> tuple[bool | None, str]:
        """What the control plane knows of ``learner``'s configuration: (True, why) when Envoy has
        ACKed a snapshot that does what the exercise asks, (False, why) when the snapshot does
        not or Envoy refused it, (None, why) when it cannot tell (Envoy away, not ACKed yet)."""
        if self.config_fn is None:
            return None, _("this exercise has no configuration the control plane can judge")
        tracker = control_plane.tracker
        status = tracker.node(learner.name)
        if status is None or status.streams == 0:
            return None, _("the learner's Envoy is not connected to the control plane")
        snapshot = control_plane.snapshot(learner.name)
        if snapshot is None:
            return None, _("the control plane serves this learner no snapshot")
        refused = tracker.refused(learner.name, snapshot)
        if refused:
            url, error = sorted(refused.items())[0]
            lines = [line.strip().lstrip(": ") for line in error.strip().splitlines() if line.strip().lstrip(": ")]
            return False, _("Envoy refused the {type} it was sent: {words}").format(
                type=short_name(url), words=lines[-1] if lines else "NACK")
        if not tracker.applied(learner.name, snapshot):
            return None, _("the learner's Envoy has not ACKed its current snapshot yet")
        for url in self.config_types:  # applied covers what Envoy asked for: did it ask for these?
            if status is None or url not in status.types or status.types[url].acked_version is None:
                return None, _("the learner's Envoy never ACKed any {type}: it does not use one").format(
                    type=short_name(url))
        try:
            return True, _("Envoy ACKed a configuration that {does}").format(does=self.config_fn(snapshot, learner))
        except Fail as fail:
            return False, _("in the configuration Envoy ACKed, {detail}").format(detail=fail.detail)
        except _CannotTell as exc:
            return None, str(exc)

    def check(self, where: Any, *answers: Any, learner: str | None = None) -> CheckResult:
        """Run the check against a Lab, a Learner or (admin_url, listener_url), with the
        learner's ``answers``. Never raises: whatever goes wrong is a failed result with a hint."""
        try:
            target = _target(where, learner)
        except (TypeError, ValueError) as exc:
            return CheckResult(self.key, learner or "learner", False, _("check your own lab: check(key, lab, ...)"), str(exc))
        try:
            detail = self.check_fn(target, *answers)
        except Fail as fail:
            return CheckResult(self.key, target.learner, False, fail.hint, fail.detail)
        except Exception as exc:  # Envoy unreachable, an answer the check did not foresee, ...
            return CheckResult(self.key, target.learner, False,
                               _("is your Envoy running, and its admin interface reachable? If it is, compare "
                                 "your answer's type and fields with the task."),
                               _("could not check: {error}").format(error=f"{type(exc).__name__}: {exc}"))  # fmt: skip
        return CheckResult(self.key, target.learner, True, "", str(detail))


EXERCISES: dict[str, Exercise] = {
    e.key: e
    for e in (
        Exercise(
            "route-api", N_("Send /api to service2"),
            N_("Requests to /api (and below) must be served by service2; everything else by service1."),
            _check_route_api, start=sandbox("service1"),
            placeholder="pushed = None  # your routes, pushed to your Envoy: me.push(routes({...}))",
            solution='pushed = me.push(routes({"/api": "service2", "/": "service1"}))',
            solved=routes({"/api": "service2", "/": "service1"}),
            wrong=routes({"/": "service1", "/api": "service2"}),
            config_fn=_config_route_api, config_types=(ROUTE,),
        ),
        Exercise(
            "canary", N_("A 90/10 canary"),
            N_("Send 90% of the traffic to service1 and 10% to service2."),
            _check_canary, start=routes({"/": "service1"}),
            placeholder="pushed = None  # a 90/10 split, pushed to your Envoy: me.push(canary({...}))",
            solution='pushed = me.push(canary({"service1": 90, "service2": 10}))',
            solved=canary({"service1": 90, "service2": 10}),
            wrong=canary({"service1": 10, "service2": 90}),
            config_fn=_config_canary, config_types=(ROUTE,),
        ),
        Exercise(
            "fix-nack", N_("Fix this NACKed listener"),
            N_("The instructor pushed a listener_0 that Envoy refused (a NACK). Read Envoy's error and push a "
               "listener_0 it accepts."),
            _check_fix_nack, start=broken_listener(),
            placeholder="pushed = None  # a listener_0 Envoy accepts, pushed with me.push(...)",
            solution='pushed = me.push(sandbox("service1"))',
            solved=sandbox("service1"), wrong=broken_listener(),
            config_fn=_config_fix_nack, config_types=(LISTENER,),
        ),
    )
}


# --------------------------------------------------------------------------- the registry

_REGISTRY: dict[str, Exercise] = dict(EXERCISES)
_REGISTRY_LOCK = threading.Lock()


def register(*items: Exercise) -> None:
    """Make exercises findable by key (the course's lesson modules register theirs on import).
    Registering the same key again replaces it (a reloaded module)."""
    with _REGISTRY_LOCK:
        for item in items:
            _REGISTRY[item.key] = item


def _load_course() -> None:
    from . import course  # noqa: F401  (registers every lesson's exercises)


def exercise(key: str) -> Exercise:
    """The exercise ``key``: a course exercise ("2.1") or a workshop one ("route-api")."""
    _load_course()
    try:
        return _REGISTRY[key]
    except KeyError:
        lesson = key.split(".", 1)[0]
        near = [k for k in _REGISTRY if k.split(".", 1)[0] == lesson] or sorted(_REGISTRY, key=_order)
        raise KeyError(_("no exercise '{key}'; there are: {keys}").format(
            key=key, keys=", ".join(sorted(near, key=_order)))) from None


def course_exercises(lesson: int | None = None) -> list[Exercise]:
    """The course's exercises in order (those of one lesson with ``lesson``); the workshop's are
    :data:`EXERCISES`."""
    _load_course()
    found = [e for e in _REGISTRY.values() if e.lesson is not None and (lesson is None or e.lesson == lesson)]
    return sorted(found, key=lambda e: _order(e.key))


def _order(key: str) -> tuple[int, ...] | tuple[float, str]:
    parts = key.split(".")
    if all(p.isdigit() for p in parts):
        return tuple(int(p) for p in parts)
    return (float("inf"), key)
