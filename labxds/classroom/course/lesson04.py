"""Lesson 4, an upstream toggle: a function that switches Envoy's upstream, then a widget that calls it."""

from __future__ import annotations

from typing import Any

from ...i18n import N_, _
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
    return served[0] if served else _("(nothing)")


def _expect_switched(t: Target, upstream: str, before: str | None, how: str) -> str:
    """Envoy now runs ``upstream`` at a version newer than ``before``."""
    now = acked(t, CLUSTER)
    if now == before:
        raise Fail(_("after {how}, Envoy's clusters are still at version {version}").format(how=how, version=before),
                   _("push a new version each time (next_version(lab) gives one): the version tells you, and "
                     "Envoy's config_dump, which configuration runs"))  # fmt: skip
    entry = dynamic_clusters(t).get(SANDBOX_CLUSTER)
    where = socket_address(entry["cluster"]) if entry else None
    if where != address_of(t, upstream):
        raise Fail(_("after {how}, Envoy's example_proxy_cluster points at {service}").format(
            how=how, service=service_at(t, where)),
            _("push lab.sandbox_snapshot(upstream, version=...): the upstream is the argument"))  # fmt: skip
    expect_served(t, upstream, n=2)
    return str(now)


def _check_switch(t: Target, switch: Any) -> str:
    hint = _("def switch(upstream): push lab.sandbox_snapshot(upstream, version=next_version(lab)) and return the "
             "version")
    need(switch, "switch", hint)
    if not callable(switch):
        raise Fail(_("switch is a {kind}, not a function").format(kind=type(switch).__name__), hint)
    versions = []
    for upstream in ("service2", "service1"):
        before = acked(t, CLUSTER)
        try:
            returned = switch(upstream)
        except Exception as exc:  # the learner's function: its error is the answer
            raise Fail(_("{call} raised {error}: {message}").format(
                call=f"switch({upstream!r})", error=type(exc).__name__, message=exc), hint) from None
        now = _expect_switched(t, upstream, before, f"switch({upstream!r})")
        if returned is not None and str(returned) != now:
            raise Fail(_("{call} returned {value}, but Envoy ACKed version {version}").format(
                call=f"switch({upstream!r})", value=repr(returned), version=now),
                _("return the version you pushed"))  # fmt: skip
        versions.append(now)
    return _("switch('service2') -> version {first}, switch('service1') -> version {second}, both ACKed").format(
        first=versions[0], second=versions[1])


def _check_toggle(t: Target, my_toggle: Any) -> str:
    hint = _("for example: {code}").format(
        code='my_toggle = widgets.ToggleButtons(options=["service1", "service2"]); '
             'my_toggle.observe(lambda change: switch(change["new"]), names="value")')
    need(my_toggle, "my_toggle", hint)
    options = list(getattr(my_toggle, "options", None) or [])
    if not hasattr(my_toggle, "value") or not hasattr(my_toggle, "observe"):
        raise Fail(_("my_toggle is a {kind}, not a widget with a value").format(kind=type(my_toggle).__name__), hint)
    labels = [o[0] if isinstance(o, tuple) else o for o in options]
    if not {"service1", "service2"} <= set(labels):
        raise Fail(_("my_toggle offers {labels}, not service1 and service2").format(labels=labels), hint)
    current = str(my_toggle.value)
    other = "service2" if current != "service2" else "service1"
    for upstream in (other, current if current in ("service1", "service2") else "service1"):
        before = acked(t, CLUSTER)
        try:
            my_toggle.value = upstream  # what a click does: the widget's observers run now
        except Exception as exc:
            raise Fail(_("{call} raised {error}: {message}").format(
                call=_("choosing {upstream}").format(upstream=upstream), error=type(exc).__name__, message=exc),
                hint) from None
        if acked(t, CLUSTER) == before and _served_now(t) != upstream:
            raise Fail(_("choosing {upstream} on my_toggle pushed nothing: Envoy still serves {served}").format(
                upstream=upstream, served=_served_now(t)),
                _('observe the value: my_toggle.observe(lambda change: switch(change["new"]), names="value")'))
        _expect_switched(t, upstream, before, _("choosing {upstream}").format(upstream=upstream))
    return _("clicking {other} and back switched Envoy each time (now version {version})").format(
        other=other, version=acked(t, CLUSTER))


EXERCISES = [
    Exercise(
        "4.1", N_("A switch function"),
        N_('Write switch(upstream): it pushes the sandbox pointing at upstream with a new version, and returns that '
           "version. The check calls switch(\"service2\") and switch(\"service1\")."),
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
        "4.2", N_("Your own toggle"),
        N_("Make ToggleButtons with service1 and service2 whose choice calls your switch. The check clicks it "
           "(sets its value) and looks at Envoy."),
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
