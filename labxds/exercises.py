"""Workshop exercises and their checks, which look at a learner's real Envoy.

A check reads the learner's ``/config_dump`` (through :class:`~labxds.envoy.EnvoyAdmin`) and
sends requests through its listener (:func:`~labxds.tables.curl`); it answers pass or fail with
a hint, never by trusting what the learner says.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .learners import Learner, SnapshotSpec, broken_listener, canary, routes, sandbox
from .resources import SANDBOX_LISTENER

if TYPE_CHECKING:
    import pandas as pd


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
    from .envoy import EnvoyAdmin
    from .tables import curl

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
    from .envoy import EnvoyAdmin
    from .tables import curl

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
    from .envoy import EnvoyAdmin
    from .tables import curl, listeners_table

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
