"""What every lesson widget shares: it displays as its box, reports in small HTML messages, and
redraws on the kernel's loop when the engine's thread pokes it.

Split from :mod:`labxds.notebook.widgets` so the widgets of later lessons
(:mod:`labxds.notebook.service_widgets`) build on the same parts without reaching into another
module's private names.
"""

from __future__ import annotations

import asyncio
import html
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import ipywidgets as widgets

from ..i18n import _
from .tables import styled

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["Displayed", "LoopRefresher", "message_html", "table_html"]


def table_html(df: pd.DataFrame, caption: str) -> str:
    """A DataFrame as the styled HTML table a widget shows in place."""
    return styled(df, caption).to_html()


def message_html(text: str, *, error: bool = False) -> str:
    """One line of outcome: green when it went well, red when not."""
    color = "#b00020" if error else "#1b5e20"
    return f'<div style="color:{color};font-family:monospace;white-space:pre-wrap">{html.escape(text)}</div>'


class Displayed:
    """Displays as its ``.widget``, whose box carries the CSS class ``css_class``."""

    widget: widgets.Widget
    css_class: str = ""

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return self.widget._repr_mimebundle_(**kwargs)

    def close(self) -> None:
        self.widget.close()


class LoopRefresher:
    """Runs ``refresh`` on the kernel's asyncio loop when poked from any thread.

    Widgets belong to the kernel's thread, while the engine's hooks run on the control plane's:
    a poke touches no widget, it schedules one refresh on the loop (at most one pending, so a
    burst of protocol events costs one redraw).
    """

    def __init__(self, refresh: Callable[[], None]) -> None:
        self._refresh = refresh
        self._lock = threading.Lock()
        self._scheduled = False
        self.loop: asyncio.AbstractEventLoop | None = None

    def attach(self, loop: asyncio.AbstractEventLoop | None, hint: str) -> None:
        if loop is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                raise RuntimeError(_("live refresh needs the kernel's asyncio loop: {hint}").format(hint=hint)) from None
        self.loop = loop

    def poke(self, *_: Any) -> None:
        with self._lock:
            if self._scheduled or self.loop is None:
                return
            self._scheduled = True
        try:
            self.loop.call_soon_threadsafe(self._run)
        except RuntimeError:  # the loop is closed: the kernel is going away
            with self._lock:
                self._scheduled = False

    def _run(self) -> None:
        with self._lock:
            self._scheduled = False
        self._refresh()
