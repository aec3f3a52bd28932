"""Lesson 4, an upstream toggle: a function that switches Envoy's upstream, then a widget that calls it."""

from __future__ import annotations

from typing import Any

from ...xds.builders import SANDBOX_CLUSTER
from ...xds.resource_types import CLUSTER
from ..exercises import Exercise, Fail, Target
from .checks import acked, address_of, dynamic_clusters, expect_served, need, service_at, socket_address

__all__ = ["EXERCISES"]

DOCS = "https://www.envoyproxy.io/docs/envoy/v1.40.0"

SWITCH = '''\
def switch(upstream):
    """Point the sandbox at upstream ("service1" or "service2") with a new version; return that version."""
    version = next_version(lab)
    lab.push(lab.sandbox_snapshot(upstream, version=version))
    return version'''

GIVEN = "from labxds.notebook import next_version\n"


def _served_now(t: Target) -> str:
    served = t.served(1)
    return served[0] if served else "(nothing)"


def _expect_switched(t: Target, upstream: str, before: str | None, how: str) -> str:
    """Envoy now runs ``upstream`` at a version newer than ``before``."""
    now = acked(t, CLUSTER)
    if now == before:
        raise Fail(f"after {how}, Envoy's clusters are still at version {before}",
                   "push a new version each time (next_version(lab) gives one): the version tells you, and "
                   "Envoy's config_dump, which configuration runs")  # fmt: skip
    entry = dynamic_clusters(t).get(SANDBOX_CLUSTER)
    where = socket_address(entry["cluster"]) if entry else None
    if where != address_of(t, upstream):
        raise Fail(f"after {how}, Envoy's example_proxy_cluster points at {service_at(t, where)}",
                   "push lab.sandbox_snapshot(upstream, version=...): the upstream is the argument")  # fmt: skip
    expect_served(t, upstream, n=2)
    return str(now)


def _check_switch(t: Target, switch: Any) -> str:
    hint = "def switch(upstream): push lab.sandbox_snapshot(upstream, version=next_version(lab)) and return the version"
    need(switch, "switch", hint)
    if not callable(switch):
        raise Fail(f"switch is a {type(switch).__name__}, not a function", hint)
    versions = []
    for upstream in ("service2", "service1"):
        before = acked(t, CLUSTER)
        try:
            returned = switch(upstream)
        except Exception as exc:  # the learner's function: its error is the answer
            raise Fail(f"switch({upstream!r}) raised {type(exc).__name__}: {exc}", hint) from None
        now = _expect_switched(t, upstream, before, f"switch({upstream!r})")
        if returned is not None and str(returned) != now:
            raise Fail(f"switch({upstream!r}) returned {returned!r}, but Envoy ACKed version {now}",
                       "return the version you pushed")  # fmt: skip
        versions.append(now)
    return f"switch('service2') -> version {versions[0]}, switch('service1') -> version {versions[1]}, both ACKed"


def _check_toggle(t: Target, my_toggle: Any) -> str:
    hint = ('my_toggle = widgets.ToggleButtons(options=["service1", "service2"]); '
            'my_toggle.observe(lambda change: switch(change["new"]), names="value")')
    need(my_toggle, "my_toggle", hint)
    options = list(getattr(my_toggle, "options", None) or [])
    if not hasattr(my_toggle, "value") or not hasattr(my_toggle, "observe"):
        raise Fail(f"my_toggle is a {type(my_toggle).__name__}, not a widget with a value", hint)
    labels = [o[0] if isinstance(o, tuple) else o for o in options]
    if not {"service1", "service2"} <= set(labels):
        raise Fail(f"my_toggle offers {labels}, not service1 and service2", hint)
    current = str(my_toggle.value)
    other = "service2" if current != "service2" else "service1"
    for upstream in (other, current if current in ("service1", "service2") else "service1"):
        before = acked(t, CLUSTER)
        try:
            my_toggle.value = upstream  # what a click does: the widget's observers run now
        except Exception as exc:
            raise Fail(f"choosing {upstream} raised {type(exc).__name__}: {exc}", hint) from None
        if acked(t, CLUSTER) == before and _served_now(t) != upstream:
            raise Fail(f"choosing {upstream} on my_toggle pushed nothing: Envoy still serves {_served_now(t)}",
                       'observe the value: my_toggle.observe(lambda change: switch(change["new"]), names="value")')
        _expect_switched(t, upstream, before, f"choosing {upstream}")
    return f"clicking {other} and back switched Envoy each time (now version {acked(t, CLUSTER)})"


EXERCISES = [
    Exercise(
        "4.1", "A switch function",
        'Write switch(upstream): it pushes the sandbox pointing at upstream with a new version, and returns that '
        "version. The check calls switch(\"service2\") and switch(\"service1\").",
        _check_switch,
        placeholder="switch = None  # a function: switch(\"service2\") points Envoy at service2",
        solution=SWITCH,
        answers=("switch",),
        mistakes=(
            'def switch(upstream):\n    lab.push(lab.sandbox_snapshot(upstream, version="1"))',  # same version
            "def switch(upstream):\n    return next_version(lab)",  # pushes nothing
        ),
        given=GIVEN,
        docs=(f"{DOCS}/intro/arch_overview/operations/dynamic_configuration",),
    ),
    Exercise(
        "4.2", "Your own toggle",
        "Make ToggleButtons with service1 and service2 whose choice calls your switch. The check clicks it "
        "(sets its value) and looks at Envoy.",
        _check_toggle,
        placeholder="my_toggle = None  # ToggleButtons that call switch(...) when their value changes",
        solution='''\
import ipywidgets as widgets

my_toggle = widgets.ToggleButtons(options=["service1", "service2"], description="upstream")
my_toggle.observe(lambda change: switch(change["new"]), names="value")''',
        answers=("my_toggle",),
        mistakes=(
            'import ipywidgets as widgets\nmy_toggle = widgets.ToggleButtons(options=["service1", "service2"])',
            'import ipywidgets as widgets\nmy_toggle = widgets.Dropdown(options=["a", "b"])',
        ),
        given=GIVEN + SWITCH + "\n",
        docs=(f"{DOCS}/intro/arch_overview/operations/dynamic_configuration",),
    ),
]
