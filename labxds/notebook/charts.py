"""Charts of traffic through Envoy: requests per second, failures and latency, live or static.

A :class:`LiveChart` redraws itself while its :class:`~labxds.lab.traffic.Traffic` runs, so a
learner sees a push land (or a failure appear) as it happens. It draws PNG images with
matplotlib's object interface (no pyplot state, safe from its own thread) and updates them by
display id, which every Jupyter frontend supports without JavaScript widgets: the last image
stays in the saved notebook. ``stop()`` draws the final static chart.
"""

from __future__ import annotations

import io
import threading
import uuid
from pathlib import Path
from typing import Any

from ..i18n import _, language
from ..lab.traffic import Traffic
from .diagrams import han_font

__all__ = ["LiveChart", "traffic_figure", "traffic_png"]

_OK = "#4c72b0"
_FAILED = "#c44e52"
_MARK = "#555555"


def traffic_figure(traffic: Traffic, *, bucket: float = 0.5, latency: bool = False, title: str | None = None) -> Any:
    """A matplotlib Figure: requests per second (succeeded, failed) and, with ``latency``, the
    p50/p95 latency of the successful ones; each ``traffic.mark`` is a labelled line. The title
    and the marks' labels are shown in the learner's language (a lesson's literal ones are in
    the catalogue); ``traffic.marks`` keeps them as the code wrote them, for code to look up."""
    from matplotlib.figure import Figure

    rows = traffic.per_second(bucket)
    if len(rows) > 1 and rows[-1]["seconds"] < bucket / 2:
        rows = rows[:-1]  # a sliver of a bucket at the end would show a rate from a handful of requests
    summary = traffic.summary()
    panels = 2 if latency else 1
    height = 2.4 * panels + 0.7
    fig = Figure(figsize=(7.5, height), dpi=80)
    axes = fig.subplots(panels, 1, sharex=True, squeeze=False)[:, 0]
    # Fixed margins: tight_layout would measure every text on every redraw.
    fig.subplots_adjust(left=0.09, right=0.98, bottom=0.45 / height, top=1 - 0.62 / height, hspace=0.12)
    t = [r["t"] for r in rows]
    widths = [r["seconds"] for r in rows]
    ok = [r["ok"] / r["seconds"] for r in rows]
    failed = [r["failed"] / r["seconds"] for r in rows]
    ax = axes[0]
    ax.bar(t, ok, width=widths, align="edge", color=_OK, label=_("succeeded"))
    ax.bar(t, failed, width=widths, align="edge", bottom=ok, color=_FAILED, label=_("failed"))
    ax.set_ylabel(_("requests / s"))
    ax.legend(loc="lower left", fontsize=8)
    head = _(title) if title else _("traffic to {target}").format(target=traffic.target)
    rate = summary["success_rate"]
    counts = (_("{requests} requests, {failed} failed ({rate} succeeded)") if rate is not None
              else _("{requests} requests, {failed} failed"))
    fig.suptitle(
        head + "\n" + counts.format(requests=summary["requests"], failed=summary["failed"],
                                    rate=f"{rate:.1%}" if rate is not None else ""),
        fontsize=10,
        color=_FAILED if summary["failed"] else "black",
    )
    if latency:
        lat = axes[1]
        lat.plot([x + bucket / 2 for x in t], [r["p50_ms"] for r in rows], "o-", color=_OK, markersize=3, label="p50")
        lat.plot([x + bucket / 2 for x in t], [r["p95_ms"] for r in rows], "o-", color="#dd8452", markersize=3,
                 label="p95")  # fmt: skip
        lat.set_ylabel(_("latency (ms)"))
        lat.legend(loc="upper left", fontsize=8)
    axes[-1].set_xlabel(_("seconds"))
    end = max(traffic.elapsed, bucket)
    for axis in axes:
        axis.set_xlim(0, end)
        for when, label in traffic.marks:
            axis.axvline(when, color=_MARK, linestyle="--", linewidth=1)
    top = axes[0].get_ylim()[1]
    for when, label in traffic.marks:
        axes[0].text(when, top * 0.97, f" {_(label)}", rotation=90, va="top", ha="left", fontsize=8, color=_MARK,
                     bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.7, "pad": 1})  # fmt: skip
    _han_fonts(fig)
    return fig


def _han_fonts(fig: Any) -> None:
    """Chinese labels need a font with Han characters: each text of ``fig`` names one after
    matplotlib's usual font. Set on the texts, not in matplotlib's rcParams, which are global:
    a live chart redraws in its own thread while the lesson draws a diagram in the notebook's."""
    family = han_font() if language() != "en" else None
    if family is None:
        return
    from matplotlib.text import Text

    for text in fig.findobj(Text):
        text.set_fontfamily(["DejaVu Sans", family])


def traffic_png(traffic: Traffic, **options: Any) -> bytes:
    """The chart as PNG bytes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    fig = traffic_figure(traffic, **options)
    FigureCanvasAgg(fig)
    out = io.BytesIO()
    fig.savefig(out, format="png")
    return out.getvalue()


class LiveChart:
    """Shows ``traffic`` as a chart that redraws every ``every`` seconds (default 1) while it runs.

    Create it in a cell: the chart appears there and keeps updating while later cells run.
    ``show()`` adds another live copy (in the cell you are at); ``stop()`` stops the traffic if
    it still runs, draws the final chart and returns it as an image; ``save(path)`` writes it.
    """

    def __init__(
        self, traffic: Traffic, *, every: float = 1.0, bucket: float = 0.5, latency: bool = False,
        title: str | None = None, display: bool = True,
    ) -> None:  # fmt: skip
        self.traffic = traffic
        self.every = every
        self.options = {"bucket": bucket, "latency": latency, "title": title}
        self.display_id = f"labxds-chart-{uuid.uuid4().hex}"
        self.redraws = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._final: bytes | None = None  # the chart once the traffic has stopped: it no longer changes
        if display:
            self.show()
        self._thread = threading.Thread(target=self._run, name="labxds-live-chart", daemon=True)
        self._thread.start()

    def __repr__(self) -> str:
        return f"<LiveChart of {self.traffic!r}, {self.redraws} redraws>"

    def png(self) -> bytes:
        with self._lock:
            if self._final is not None:
                return self._final
            stopped = not self.traffic.running
            png = traffic_png(self.traffic, **self.options)
            if stopped:
                self._final = png
            return png

    def _image(self) -> Any:
        from IPython.display import Image

        return Image(data=self.png(), format="png")

    def show(self) -> None:
        """Display the chart (live) in the current cell."""
        from IPython.display import display

        display(self._image(), display_id=self.display_id)

    def redraw(self) -> None:
        from IPython.display import update_display

        update_display(self._image(), display_id=self.display_id)
        self.redraws += 1

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            running = self.traffic.running
            try:
                self.redraw()
            except Exception:  # noqa: BLE001 - a closed kernel or frontend: stop drawing
                return
            if not running:
                return

    def stop(self) -> Any:
        """Stop the traffic (if running) and the redrawing; returns the final chart as an image
        (shown where the live chart was, and as this cell's value)."""
        if self.traffic.running:
            self.traffic.stop()
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        try:
            self.redraw()
        except Exception:  # noqa: BLE001 - outside a kernel there is nothing to update
            pass
        return self._image()

    def save(self, path: str | Path) -> Path:
        """Write the chart as a PNG file (folders made as needed); returns the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(self.png())
        return path
