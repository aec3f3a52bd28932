"""Widgets that change what stands behind Envoy: a service made slow or failing (lesson 11) and
the backend a proxyless gRPC client calls (lesson 12)."""

from __future__ import annotations

import html
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import ipywidgets as widgets

from ..i18n import _
from ..xds.snapshot import Snapshot
from ..xds.tracking import PushRejected, PushTimeout
from .widget_base import Displayed, message_html, table_html

if TYPE_CHECKING:
    from .lab import Lab

__all__ = ["BehaviourPanel", "GrpcBackendToggle"]


# --------------------------------------------------------------------------- service behaviour


class BehaviourPanel(Displayed):
    """Sliders that make one echo instance slow or failing while it runs (lesson 11).

    ``delay`` (seconds before it answers), ``error rate`` (the share of answers that fail) and
    the failing answers' ``status``; "normal" puts it back. Each change applies at once, to the
    next request. From code: ``panel.set(error_rate=0.5)`` does what moving the slider does.
    """

    STATUSES = (500, 502, 503, 504)

    def __init__(self, lab: Lab, service: str = "service1", instance: int = 0) -> None:
        self.lab, self.service, self.instance = lab, service, instance
        current = lab.behaviour(service, instance)
        self.delay = widgets.FloatSlider(value=current.delay, min=0, max=2, step=0.05, description=_("delay (s)"),
                                         continuous_update=False, style={"description_width": "initial"})  # fmt: skip
        self.error_rate = widgets.IntSlider(value=round(current.error_rate * 100), min=0, max=100, step=5,
                                            description=_("errors (%)"), continuous_update=False,
                                            style={"description_width": "initial"})  # fmt: skip
        self.status = widgets.Dropdown(options=list(self.STATUSES), value=current.status if current.status in
                                       self.STATUSES else 503, description=_("status"), layout=widgets.Layout(width="160px"))  # fmt: skip
        self.reset = widgets.Button(description=_("normal"), icon="undo", layout=widgets.Layout(width="100px"))
        self.state = widgets.HTML()
        self.widget = widgets.VBox([
            widgets.HTML(_("<b>{service}</b> (instance {number})").format(service=html.escape(service), number=instance + 1)),
            widgets.HBox([self.delay, self.error_rate]),
            widgets.HBox([self.status, self.reset]),
            self.state,
        ])  # fmt: skip
        self._quiet = False
        for control in (self.delay, self.error_rate, self.status):
            control.observe(self._on_change, names="value")
        self.reset.on_click(lambda _: self.set(delay=0, error_rate=0))
        self._show(current)

    def _show(self, behaviour: Any) -> None:
        self.state.value = message_html(_("{service} answers: {behaviour}").format(
            service=self.service, behaviour=behaviour.describe()), error=not behaviour.normal)

    def _on_change(self, _change: Mapping[str, Any]) -> None:
        if self._quiet:
            return
        self._apply(delay=self.delay.value, error_rate=self.error_rate.value / 100, status=self.status.value)

    def _apply(self, **changes: Any) -> Any:
        try:
            behaviour = self.lab.set_behaviour(self.service, self.instance, **changes)
        except (ValueError, KeyError, IndexError) as exc:
            self.state.value = message_html(str(exc), error=True)
            raise
        self._show(behaviour)
        return behaviour

    def set(self, *, delay: float | None = None, error_rate: float | None = None, status: int | None = None) -> Any:
        """Change the instance's behaviour and move the controls to match; returns it."""
        behaviour = self._apply(delay=delay, error_rate=error_rate, status=status)
        self._quiet = True
        try:
            self.delay.value = behaviour.delay
            self.error_rate.value = round(behaviour.error_rate * 100)
            if behaviour.status in self.STATUSES:
                self.status.value = behaviour.status
        finally:
            self._quiet = False
        return behaviour


# --------------------------------------------------------------------------- proxyless gRPC


class GrpcBackendToggle(Displayed):
    """ToggleButtons choosing which gRPC backend a proxyless gRPC client calls (lesson 12).

    Each click pushes ``snapshot(backend, version)`` to the client's node, waits for its ACK,
    then calls until that backend answers and shows ``calls`` answers. Same as the upstream
    toggle, with gRPC's own xDS client in Envoy's place.
    """

    def __init__(
        self,
        lab: Lab,
        client: Any,
        snapshot: Callable[[str, str], Snapshot],
        choices: Sequence[str],
        *,
        calls: int = 6,
        value: str | None = None,
    ) -> None:
        self.lab, self.client, self.make = lab, client, snapshot
        self.calls = calls
        self.last_error: Exception | None = None
        self.answers: list[str] = []
        self.history: list[dict[str, Any]] = []
        self._version = 0
        self.buttons = widgets.ToggleButtons(options=list(choices), value=value, description=_("backend"))
        self.status = widgets.HTML()
        self.table = widgets.HTML()
        self.widget = widgets.VBox([self.buttons, self.status, self.table])
        self.buttons.observe(self._on_change, names="value")
        self.status.value = message_html(_("pick a backend: the control plane pushes it to the gRPC client"))

    @property
    def value(self) -> str | None:
        return self.buttons.value

    @value.setter
    def value(self, backend: str) -> None:
        self.buttons.value = backend

    def _on_change(self, change: Mapping[str, Any]) -> None:
        if change["new"] is not None:
            self.push(change["new"])

    def push(self, backend: str) -> bool:
        import pandas as pd

        node = self.client.node_id
        self._version += 1
        version = f"grpc-{self._version}"
        self.status.value = message_html(_("pushing {version} ({backend}) to node {node} ...").format(
            version=version, backend=backend, node=node))
        try:
            snap = self.make(backend, version)
            if node in self.lab.cp.nodes():
                self.lab.cp.push(snap, node=node, timeout=10)
            else:  # its first configuration: the client connects on its first call
                self.lab.cp.set_snapshot(snap, node=node)
            self.client.wait_for(backend, timeout=10)
        except (PushRejected, PushTimeout, TimeoutError) as exc:
            self.last_error = exc
            self.history.append({"backend": backend, "version": version, "acked": False, "error": str(exc)})
            self.status.value = message_html(_("{version} not applied: {error}").format(version=version, error=exc),
                                         error=True)
            return False
        rows = self.client.call(self.calls)
        self.answers = [r["served_by"] or r["error"] for r in rows]
        self.last_error = None
        self.history.append({"backend": backend, "version": version, "acked": True, "error": None})
        self.status.value = message_html(_("node {node} ACKed {version}: its calls go to {backend}, no proxy in "
                                       "between").format(node=node, version=version, backend=backend))
        self.table.value = table_html(pd.DataFrame(rows)[["call", "served_by", "latency_ms", "error"]],
                                       _("{calls} calls to {uri}").format(calls=self.calls, uri=self.client.uri))
        return True
