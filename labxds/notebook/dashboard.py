"""The instructor's dashboard: one row per learner, refreshing live, and a push selector.

Each row: connected since, the version of each resource type the learner's Envoy ACKed, the last
NACK with Envoy's own message, when the control plane last heard from it, where its snapshot comes
from (its own or the class default) and its exercise progress (✓ passed and confirmed by the
control plane, ✓? passed but not confirmable, ⚠ a reported pass the control plane contradicts,
✗ failed; ⚠ does not count). A dropdown sorts the rows; a
multiple selection of learners, a dropdown of prepared snapshots and a button push one to them.

Everything a click does, code can do: ``dash.sort.value = "last NACK"``, ``dash.learners.value =
("alice",)``, ``dash.snapshots.value = "canary: solution"``, ``dash.click()``; ``dash.frame()`` is
the pandas table shown.

Thread safety: the control plane reports from its own thread and the workshop's desk from its
HTTP threads. Those only *schedule* a refresh on the kernel's asyncio loop with
``loop.call_soon_threadsafe`` (at most one pending); the refresh itself, which writes the widgets,
runs on the kernel's thread between cells.
"""

from __future__ import annotations

import asyncio
import html
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import ipywidgets as widgets

from ..i18n import N_, _
from ..classroom.status import TYPES, class_status
from ..xds.tracking import PushRejected, PushTimeout
from .tables import column_label
from .widget_base import LoopRefresher

if TYPE_CHECKING:
    import pandas as pd

    from ..classroom.workshop import Workshop

__all__ = ["SORTS", "Dashboard"]

COLUMNS = [
    "learner", "connected", "connected_since", "last_seen", *TYPES, "snapshot",
    "last_nack", "nack_open", "nack_at", "passed", "progress",
]  # fmt: skip


def _by(column: str, ascending: bool = True) -> Callable[[pd.DataFrame], pd.DataFrame]:
    def sort(df: pd.DataFrame) -> pd.DataFrame:
        return df.sort_values([column, "learner"], ascending=[ascending, True], na_position="last", kind="stable")

    return sort


#: Sort choices: label (English; the dropdown shows it in the learner's language) -> function of the frame.
SORTS: dict[str, Callable[[pd.DataFrame], pd.DataFrame]] = {
    N_("learner"): _by("learner"),
    N_("connected since"): _by("connected_since"),
    N_("last seen"): _by("last_seen", ascending=False),
    N_("last NACK"): lambda df: df.sort_values(["nack_open", "nack_at", "learner"], ascending=[False, False, True],
                                           na_position="last", kind="stable"),
    N_("progress"): lambda df: df.sort_values(["passed", "learner"], ascending=[False, True], kind="stable"),
}


def _ts(t: float | None) -> Any:
    import pandas as pd

    return pd.Timestamp(t, unit="s") if t else pd.NaT


def _clip(value: Any, n: int) -> str:
    if not isinstance(value, str):
        return ""
    return value[:n] + ("…" if len(value) > n else "")


def _clip_middle(value: Any, head: int, tail: int) -> str:
    """Envoy puts the reason of a NACK last, after a dump of the refused proto: keep both ends."""
    if not isinstance(value, str):
        return ""
    return value if len(value) <= head + tail + 3 else f"{value[:head]} … {value[-tail:]}"


def _one_line(value: Any) -> Any:
    """Envoy's NACK texts quote protos with escaped newlines ("rds {\\n  config_source ..."): in a
    table cell those read better as spaces."""
    if not isinstance(value, str):
        return value
    return " ".join(value.replace("\\n", " ").split())


#: Where a learner's snapshot comes from (Workshop.source_of's prefixes), as the table says it.
_SOURCES = {"own: ": N_("own: {spec}"), "class: ": N_("class: {spec}")}


def _source(value: Any) -> Any:
    for prefix, said in _SOURCES.items():
        if isinstance(value, str) and value.startswith(prefix):
            return _(said).format(spec=value.removeprefix(prefix))
    return value


class Dashboard:
    """``Dashboard(workshop)``: display it in a cell; ``live=True`` (default) redraws on events.

    Its box carries the CSS class ``labxds-dashboard-widget`` (its table: ``labxds-dashboard``).
    """

    css_class = "labxds-dashboard-widget"

    def __init__(self, workshop: Workshop, *, live: bool = True, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.workshop = workshop
        self.refreshes = 0
        self.refresh_threads: set[int] = set()  # which threads redrew (tests check: only the kernel's)
        self.last_push: dict[str, Any] | None = None
        self.header = widgets.HTML()
        self.sort = widgets.Dropdown(options=[(_(label), label) for label in SORTS], value="learner",
                                     description=_("sort by"))
        self.refresh_button = widgets.Button(description=_("refresh"), icon="refresh", layout=widgets.Layout(width="110px"))
        self.table = widgets.HTML()
        self.learners = widgets.SelectMultiple(options=[], description=_("learners"), rows=6)
        self.snapshots = widgets.Dropdown(options=[], description=_("snapshot"))
        self.push_button = widgets.Button(description=_("push to selected"), button_style="primary", icon="upload")
        self.message = widgets.HTML()
        self.widget = widgets.VBox([
            widgets.HBox([self.refresh_button, self.sort, self.header]),
            self.table,
            widgets.HBox([self.learners, widgets.VBox([self.snapshots, self.push_button])]),
            self.message,
        ])  # fmt: skip
        self.widget.add_class(self.css_class)
        self.sort.observe(lambda _: self.refresh(), names="value")
        self.refresh_button.on_click(lambda _: self.refresh())
        self.push_button.on_click(lambda _: self.push_selected())
        self._refresher = LoopRefresher(lambda: self.refresh())  # late-bound: overridable
        self._unhook: Callable[[], None] | None = None
        self._owner = threading.get_ident()  # the kernel's thread: the one that made the widgets
        if live:
            self.start_live(loop)
        self.refresh()

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)

    # -- the table -----------------------------------------------------------------------------

    def frame(self) -> pd.DataFrame:
        """One row per learner, sorted as the dropdown says: what the table shows."""
        import pandas as pd

        ws = self.workshop
        rows = []
        for row in class_status(ws):
            for col in ("connected_since", "last_seen", "nack_at"):
                row[col] = _ts(row[col])
            row["progress"] = ", ".join(f"{key} {mark}" for key, mark in row["progress"].items())
            rows.append(row)
        df = pd.DataFrame(rows, columns=COLUMNS)
        df["passed"] = df["passed"].astype("int64")
        df["nack_open"] = df["nack_open"].astype(bool)
        return SORTS[self.sort.value](df).reset_index(drop=True)

    def _table_html(self, df: pd.DataFrame) -> str:
        view = df.copy()
        for col in ("connected_since", "last_seen", "nack_at"):
            view[col] = view[col].map(lambda t: "" if t is None or t != t else t.strftime("%H:%M:%S"))
        for t in TYPES:
            view[t] = view[t].map(lambda v: _clip(v, 8))
        view["last_nack"] = view["last_nack"].map(lambda v: _clip_middle(_one_line(v), 40, 110))
        view["snapshot"] = view["snapshot"].map(_source)
        view = view.rename(columns={c: column_label(str(c)) for c in view.columns})
        body = view.to_html(index=False, escape=True, na_rep="", classes="labxds-dashboard", border=0)
        # one line per learner, however narrow the output area (JupyterLab's is): scroll sideways
        style = ("<style>.labxds-dashboard td,.labxds-dashboard th{padding:2px 8px;text-align:left;"
                 "font-size:12px;white-space:nowrap}</style>")  # fmt: skip
        return f'{style}<div style="overflow-x:auto">{body}</div>'

    # -- drawing (on the kernel's thread) --------------------------------------------------------

    def refresh(self) -> None:
        """Redraw everything from the workshop's current state."""
        self.refresh_threads.add(threading.get_ident())
        ws = self.workshop
        cp = ws.control_plane
        df = self.frame()
        names = ws.learners()
        keep = tuple(n for n in self.learners.value if n in names)
        if list(self.learners.options) != names:
            self.learners.options = names
            self.learners.value = keep
        prepared = list(ws.prepared)
        if list(self.snapshots.options) != prepared:
            current = self.snapshots.value
            self.snapshots.options = prepared
            if current in prepared:
                self.snapshots.value = current
        stopped = html.escape(_("STOPPED"))
        state = (html.escape(_("serving {address}").format(address=cp.address)) if cp.running
                 else f"<b style='color:#cf222e'>{stopped}</b>")
        open_nacks = int(df["nack_open"].sum()) if not df.empty else 0
        self.header.value = _("control plane {state} | {connected}/{n} learners connected | {nacks} open NACK(s)").format(
            state=state, connected=int(df["connected"].sum()) if not df.empty else 0, n=len(df), nacks=open_nacks)
        self.table.value = self._table_html(df)
        self.refreshes += 1

    def push_selected(self) -> dict[str, Any]:
        """What the push button does: the chosen snapshot to the chosen learners, waiting for ACKs."""
        names = list(self.learners.value)
        choice = self.snapshots.value
        outcome: dict[str, Any] = {"snapshot": choice, "learners": names, "ok": False, "error": None}
        if not names or choice is None:
            outcome["error"] = _("choose learners and a snapshot first")
        else:
            try:
                self.workshop.push(choice, names)
                outcome["ok"] = True
            except PushRejected as exc:
                outcome["error"] = f"NACK: {exc}"
            except PushTimeout as exc:
                outcome["error"] = str(exc)
            except (KeyError, ValueError) as exc:
                outcome["error"] = str(exc)
        self.last_push = outcome
        if outcome["ok"]:
            text = html.escape(_("pushed {snapshot} to {learners}: ACKed").format(snapshot=choice, learners=", ".join(names)))
            self.message.value = f"<span style='color:#1a7f37'>{text}</span>"
        else:
            self.message.value = f"<span style='color:#cf222e'>{html.escape(str(outcome['error']))}</span>"
        self.refresh()
        return outcome

    def click(self) -> None:
        """Press the push button."""
        self.push_button.click()

    # -- live ---------------------------------------------------------------------------------

    @property
    def live(self) -> bool:
        return self._unhook is not None

    def start_live(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """Redraw after every workshop event, on ``loop`` (default: the kernel's running loop)."""
        if self.live:
            return
        self._refresher.attach(loop, _("create the dashboard in a notebook cell, pass loop=, or live=False and call "
                                       "refresh()"))
        self._unhook = self.workshop.on_change(self._poke)

    def stop_live(self) -> None:
        if self._unhook is not None:
            self._unhook()
            self._unhook = None

    def _poke(self, kind: str = "", *_: Any) -> None:
        if kind in ("prepared", "group") and threading.get_ident() == self._owner:
            # A change made from the kernel's own thread (ws.prepare in a cell): the selector must
            # offer it at once, so the same cell can choose it.
            self.refresh()
            return
        # Any other thread: touch no widget, only schedule one refresh on the kernel's loop.
        self._refresher.poke()

    def close(self) -> None:
        self.stop_live()
        self.widget.close()
