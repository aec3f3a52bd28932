"""ipywidgets for the lessons: pick the sandbox's upstream, weight a canary, watch the protocol.

Each class holds its ipywidgets in ``.widget`` (and displays as it), and is driven from code the
same way a click drives it: ``toggle.value = "service2"``, ``slider.value = 10``,
``panel.click()``. A change pushes a snapshot and waits for Envoy's ACK on the kernel's own thread,
then shows the outcome in place as HTML, so a notebook run top to bottom (in CI, say) sees the
same state a learner sees.

Each widget's outer box carries a CSS class of its own (``labxds-upstream-toggle``,
``labxds-canary-slider``, ``labxds-status-panel``): what a page, a style sheet or the browser
tests (tests/browser) find it by, whatever the lesson around it.

Nothing here writes into a widget from the control plane's thread: ``StatusPanel(live=True)``
hooks the engine's events and hands each refresh to the kernel's asyncio loop with
``loop.call_soon_threadsafe``; the refresh then runs between cells, on the kernel's thread.
"""

from __future__ import annotations

import asyncio
import html
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import ipywidgets as widgets

from ..i18n import _, explain
from ..xds.builders import (
    SANDBOX_CLUSTER,
    SANDBOX_LISTENER,
    SANDBOX_ROUTE,
    cluster,
    http_listener,
    route_configuration,
)
from ..xds.resource_types import CLUSTER, order_key, short_name
from ..xds.snapshot import Snapshot
from ..xds.tracking import PushRejected, PushTimeout
from .widget_base import Displayed, LoopRefresher, message_html, table_html

if TYPE_CHECKING:
    import pandas as pd

    from ..xds.control_plane import ControlPlane
    from .lab import Lab

__all__ = [
    "CanarySlider",
    "StatusPanel",
    "UpstreamToggle",
    "acked_versions",
    "canary_snapshot",
    "newest_acked",
    "next_version",
]

_CURL_COLUMNS = ["request", "status", "served_by", "instance", "latency_ms", "error"]


# --------------------------------------------------------------------------- helpers


def next_version(lab: Lab) -> str:
    """The version after the highest numeric one the control plane has served or Envoy ACKed.

    Widgets push "3", "4", ... after a lesson's "1" and "2", so a version never repeats (Envoy
    would see nothing new) and the ACKed version in the widget matches the story.
    """
    return lab.next_version()


def acked_versions(lab: Lab) -> dict[str, str | None]:
    """Envoy's ACKed version per resource type ({"CDS": "3", "LDS": "3", "RDS": "1"})."""
    node = lab.cp.node_status(lab.node_id) if lab.node_id else None
    if node is None:
        return {}
    return {short_name(url): st.acked_version for url, st in sorted(node.types.items(), key=lambda kv: order_key(kv[0]))}


def newest_acked(lab: Lab) -> str | None:
    """The newest version Envoy ACKed for any type: what it runs since the last push."""
    versions = [v for v in acked_versions(lab).values() if v]
    numeric = [v for v in versions if v.split("+")[0].isdigit()]
    if numeric:
        return max(numeric, key=lambda v: int(v.split("+")[0]))
    return versions[-1] if versions else None


def _not_applied(version: str, exc: Exception) -> str:
    """A refused or unanswered push: Envoy's words, and what the common ones mean."""
    text = _("version {version} not applied: {error}").format(version=version, error=exc)
    meaning = explain(str(exc)) if isinstance(exc, PushRejected) else None
    return f"{text}\n{meaning}" if meaning else text


def _counts_html(counts: Mapping[str, int], total: int) -> str:
    """Horizontal CSS bars: readable without matplotlib and without a widget frontend."""
    rows = []
    for name, count in counts.items():
        pct = 100 * count / total if total else 0
        rows.append(
            f'<tr><td style="padding-right:8px">{html.escape(str(name))}</td>'
            f'<td style="width:300px"><div style="background:#4c72b0;height:12px;width:{pct:.1f}%"></div></td>'
            f'<td style="padding-left:8px;text-align:right">{count} ({pct:.0f} %)</td></tr>'
        )
    caption = html.escape(_("observed split over {n} requests").format(n=total))
    return f'<table><caption>{caption}</caption>{"".join(rows)}</table>'


# --------------------------------------------------------------------------- upstream toggle


class UpstreamToggle(Displayed):
    """ToggleButtons choosing the sandbox's upstream; each change pushes and waits for the ACK.

    Shows the version Envoy ACKed and a fresh curl table underneath. A push Envoy rejects (or
    does not answer in time) is shown in red and kept in ``last_error``; the buttons stay usable.
    """

    css_class = "labxds-upstream-toggle"

    def __init__(self, lab: Lab, choices: Sequence[str] = ("service1", "service2"), *, requests: int = 4) -> None:
        self.lab = lab
        self.requests = requests
        self.last_error: Exception | None = None
        self.acked_version: str | None = None
        self.served: pd.DataFrame | None = None
        self.history: list[dict[str, Any]] = []
        self.buttons = widgets.ToggleButtons(
            options=list(choices), value=self._current(choices), description=_("upstream"),
            tooltips=[_("send the sandbox's traffic to {upstream}").format(upstream=c) for c in choices],
        )  # fmt: skip
        self.status = widgets.HTML()
        self.table = widgets.HTML()
        self.widget = widgets.VBox([self.buttons, self.status, self.table])
        self.widget.add_class(self.css_class)
        self.buttons.observe(self._on_change, names="value")
        if self.buttons.value is None:
            self.status.value = message_html(_("Envoy has no sandbox snapshot from this lab yet: pick an upstream."))
        else:
            self.status.value = message_html(_("serving {upstream} (pick the other one to push)").format(
                upstream=self.buttons.value))

    @property
    def value(self) -> str | None:
        return self.buttons.value

    @value.setter
    def value(self, upstream: str) -> None:
        self.buttons.value = upstream

    def _current(self, choices: Sequence[str]) -> str | None:
        """Which choice the served sandbox snapshot points at, if any."""
        cp = self.lab.cp
        snap = (cp.snapshot(self.lab.node_id) if self.lab.node_id else None) or cp.snapshot()
        if snap is None:
            return None
        served = snap.resources(CLUSTER).get(SANDBOX_CLUSTER)
        if served is None:
            return None
        try:
            sock = served.load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.socket_address  # type: ignore[attr-defined]
        except IndexError:
            return None
        for choice in choices:
            try:
                if (sock.address, sock.port_value) == tuple(self.lab.upstream(choice)):
                    return choice
            except KeyError:
                continue
        return None

    def _on_change(self, change: Mapping[str, Any]) -> None:
        if change["new"] is not None:
            self.push(change["new"])

    def push(self, upstream: str) -> bool:
        """Push the sandbox snapshot for ``upstream``, wait for the ACK, show the result."""
        version = next_version(self.lab)
        self.status.value = message_html(_("pushing version {version} ({upstream}) ...").format(version=version, upstream=upstream))
        started = time.perf_counter()
        try:
            self.lab.push(self.lab.sandbox_snapshot(upstream, version=version))
        except (PushRejected, PushTimeout) as exc:
            self.last_error = exc
            self.history.append({"upstream": upstream, "version": version, "acked": False, "error": str(exc)})
            self.status.value = message_html(_not_applied(version, exc), error=True)
            return False
        took_ms = (time.perf_counter() - started) * 1000
        self.last_error = None
        self.acked_version = newest_acked(self.lab)
        self.served = self.lab.curl(self.requests)
        self.history.append({"upstream": upstream, "version": version, "acked": True, "error": None})
        per_type = ", ".join(f"{t} {v}" for t, v in acked_versions(self.lab).items())
        self.status.value = message_html(_("Envoy ACKed version {version} in {ms} ms ({per_type})").format(
            version=self.acked_version, ms=f"{took_ms:.0f}", per_type=per_type))
        self.table.value = table_html(
            self.served[[c for c in _CURL_COLUMNS if c in self.served]],
            _("{n} requests to {url} after version {version}").format(
                n=self.requests, url=self.lab.listener_url, version=version),
        )
        return True


# --------------------------------------------------------------------------- canary slider


def canary_snapshot(
    lab: Lab, stable: str, canary: str, weight: int, version: str, *, cluster_type: str = "STRICT_DNS"
) -> Snapshot:
    """The sandbox's listener and route, split ``100 - weight`` / ``weight`` between two clusters.

    Each cluster holds every instance of its service. STRICT_DNS takes both IP addresses (local
    lab) and the compose service names.
    """
    if not 0 <= weight <= 100:
        raise ValueError(_("canary weight {weight} is not a percentage (0-100)").format(weight=weight))
    return Snapshot(
        [
            cluster(stable, lab.endpoints(stable), type=cluster_type),
            cluster(canary, lab.endpoints(canary), type=cluster_type),
            route_configuration(SANDBOX_ROUTE, weights={stable: 100 - weight, canary: weight}),
            http_listener(SANDBOX_LISTENER, lab.listener_port, SANDBOX_ROUTE, address=lab.mode.listen_host),
        ],
        version=version,
    )


class CanarySlider(Displayed):
    """IntSlider for the canary's share of traffic (%); releasing it pushes and measures the split.

    Each change pushes a snapshot whose route sends ``value`` % to ``canary`` and the rest to
    ``stable``, waits for Envoy's ACK, then sends ``requests`` requests and shows who served them.
    """

    css_class = "labxds-canary-slider"

    def __init__(self, lab: Lab, stable: str, canary: str, *, value: int = 0, requests: int = 200) -> None:
        self.lab = lab
        self.stable, self.canary = stable, canary
        self.requests = requests
        self.last_error: Exception | None = None
        self.acked_version: str | None = None
        self.counts: dict[str, int] = {}
        self.history: list[dict[str, Any]] = []
        self.slider = widgets.IntSlider(
            value=value, min=0, max=100, step=5, description=f"{canary} %",
            continuous_update=False,  # push on release, not on every pixel
            style={"description_width": "initial"},
        )  # fmt: skip
        self.status = widgets.HTML()
        self.chart = widgets.HTML()
        self.widget = widgets.VBox([self.slider, self.status, self.chart])
        self.widget.add_class(self.css_class)
        self.slider.observe(self._on_change, names="value")
        self.push(value)

    @property
    def value(self) -> int:
        return self.slider.value

    @value.setter
    def value(self, weight: int) -> None:
        self.slider.value = weight

    def _on_change(self, change: Mapping[str, Any]) -> None:
        self.push(change["new"])

    def push(self, weight: int) -> bool:
        version = next_version(self.lab)
        self.status.value = message_html(_("pushing version {version}: {canary} {weight} % ...").format(
            version=version, canary=self.canary, weight=weight))
        try:
            self.lab.push(canary_snapshot(self.lab, self.stable, self.canary, weight, version))
        except (PushRejected, PushTimeout) as exc:
            self.last_error = exc
            self.status.value = message_html(_not_applied(version, exc), error=True)
            return False
        self.last_error = None
        self.acked_version = newest_acked(self.lab)
        served = self.lab.curl(self.requests)
        counts = {name: int((served["served_by"] == name).sum()) for name in (self.stable, self.canary)}
        failed = int(served["served_by"].isna().sum())
        if failed:
            counts["failed"] = failed
        self.counts = counts
        self.history.append({"weight": weight, "version": version, **counts})
        self.status.value = message_html(
            _("Envoy ACKed version {version}: route {stable} {stable_weight} % / {canary} {weight} %").format(
                version=self.acked_version, stable=self.stable, stable_weight=100 - weight, canary=self.canary,
                weight=weight)
        )
        self.chart.value = _counts_html(counts, self.requests)
        return True

    def observed(self) -> pd.DataFrame:
        """One row per push: the weight asked for and the split measured."""
        import pandas as pd

        return pd.DataFrame(self.history)


# --------------------------------------------------------------------------- status panel


class StatusPanel(Displayed):
    """What the control plane knows of each node: connection, ACKed versions, the last NACK.

    ``refresh()`` (or ``click()``) redraws it. ``live=True`` redraws after each protocol event:
    the engine's hooks (on the control plane's thread) only schedule a refresh onto the kernel's
    asyncio loop, which runs it between cells, never from the server's thread.
    """

    css_class = "labxds-status-panel"

    def __init__(
        self, control_plane: ControlPlane | Lab, *, live: bool = False, loop: asyncio.AbstractEventLoop | None = None
    ) -> None:
        cp = getattr(control_plane, "control_plane", None) or control_plane
        self.control_plane: ControlPlane = cp  # type: ignore[assignment]
        self.refreshes = 0
        self.button = widgets.Button(description=_("refresh"), icon="refresh", layout=widgets.Layout(width="110px"))
        self.header = widgets.HTML()
        self.table = widgets.HTML()
        self.widget = widgets.VBox([widgets.HBox([self.button, self.header]), self.table])
        self.widget.add_class(self.css_class)
        self.button.on_click(lambda _: self.refresh())
        self._refresher = LoopRefresher(lambda: self.refresh())  # late-bound: overridable
        self._unhook: list[Any] = []
        if live:
            self.start_live(loop)
        self.refresh()

    # -- reading

    def _nodes(self) -> list[str]:
        status = self.control_plane.status()
        return sorted({r["node"] for r in status} | set(self.control_plane.tracker.connected()))

    def frame(self) -> pd.DataFrame:
        """Per node and type: connected, versions sent / ACKed / NACKed, Envoy's last error."""
        import pandas as pd

        tracker = self.control_plane.tracker
        connected = set(tracker.connected())
        rows = []
        for node_id in self._nodes():
            node = tracker.node(node_id)
            if node is None:
                continue
            for url, st in sorted(node.types.items(), key=lambda kv: order_key(kv[0])):
                rows.append({
                    "node": node_id,
                    "connected": node_id in connected,
                    "type": short_name(url),
                    "sent": st.sent_version,
                    "acked": st.acked_version,
                    "last_nack": st.nacked_version,
                    "nack_error": st.nack_error,
                })  # fmt: skip
        return pd.DataFrame(rows, columns=["node", "connected", "type", "sent", "acked", "last_nack", "nack_error"])

    @property
    def last_nack(self) -> dict[str, str] | None:
        """The most recent NACK: node, type, version and Envoy's error; None if none ever."""
        latest = None
        tracker = self.control_plane.tracker
        for node_id in self._nodes():
            node = tracker.node(node_id)
            for url, st in (node.types.items() if node else ()):
                if st.nacked_at is not None and (latest is None or st.nacked_at > latest[0]):
                    latest = (st.nacked_at, node_id, url, st)
        if latest is None:
            return None
        _, node_id, url, st = latest
        return {"node": node_id, "type": short_name(url), "version": st.nacked_version or "", "error": st.nack_error or ""}

    # -- drawing

    def refresh(self) -> None:
        cp = self.control_plane
        nodes = cp.tracker.connected()
        state = _("serving {address}").format(address=cp.address) if cp.running else _("STOPPED")
        self.header.value = message_html(
            _("control plane {state} | {n} node(s) connected: {nodes}").format(
                state=state, n=len(nodes), nodes=", ".join(nodes) or "-"), error=not cp.running
        )
        frame = self.frame()
        html_table = table_html(frame, _("per node and type: versions sent, ACKed and NACKed"))
        nack = self.last_nack
        if nack is not None:
            html_table += message_html(_("last NACK: {node} {type} v{version}: {error}").format(**nack), error=True)
        self.table.value = html_table
        self.refreshes += 1

    def click(self) -> None:
        """What the refresh button does."""
        self.button.click()

    # -- live refresh

    @property
    def live(self) -> bool:
        return bool(self._unhook)

    def start_live(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """Redraw after every stream and protocol event, on ``loop`` (default: the running one)."""
        if self.live:
            return
        self._refresher.attach(loop, _("create the panel in a notebook cell (or pass loop=)"))
        for event in ("stream_open", "stream_close", "request", "response"):
            self._unhook.append(self.control_plane.on(event, self._refresher.poke))

    def stop_live(self) -> None:
        for unhook in self._unhook:
            unhook()
        self._unhook.clear()

    def close(self) -> None:
        self.stop_live()
        super().close()
