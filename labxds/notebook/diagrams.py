"""Pictures of the running lab: who connects to whom, and the xDS conversation as it happened.

``topology(lab)`` draws the processes and ports the lab runs and the connections between them,
read from the running lab: whether Envoy holds its ADS stream to the control plane, which
listener Envoy has bound, which services its clusters send traffic to (from its /config_dump).
``sequence(lab, since=...)`` draws the lab's real trace as a sequence diagram: Envoy's requests,
ACKs and NACKs, the control plane's responses, each with its type, version and nonce.

Both return a :class:`Diagram`, which a notebook shows as a PNG image (any notebook viewer shows
it, GitHub's included) and which keeps what it drew (``.boxes``, ``.arrows``, ``.rows``), so
tests can hold the drawing to the lab. matplotlib draws off-screen (no pyplot, no GUI).

Labels are in the learner's language (:mod:`labxds.i18n`). Chinese needs a font with Han
characters: the Noto Sans CJK font that requirements.txt installs (``noto-cjk-sans-otc``), or one
the system has (Noto CJK, WenQuanYi, Source Han); without any, the labels stay in English rather
than draw empty boxes.
"""

from __future__ import annotations

import functools
import io
import logging
import textwrap
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from ..envoy.config_dump import endpoint_rows, listener_rows
from ..i18n import N_, language
from ..i18n import _ as translate

__all__ = ["Arrow", "Box", "Diagram", "Message", "sequence", "sequence_model", "topology", "topology_model"]

COLORS = {
    "request": "#57606a",
    "ACK": "#1a7f37",
    "NACK": "#cf222e",
    "response": "#0969da",
    "stale": "#9a6700",
    "box": "#f6f8fa",
    "edge": "#24292f",
    "off": "#8c959f",
}


@dataclass(frozen=True)
class Box:
    """A process or port in the topology."""

    key: str
    title: str
    detail: str
    x: float
    y: float
    w: float = 2.6
    h: float = 0.9
    active: bool = True


@dataclass(frozen=True)
class Arrow:
    """A connection: ``src`` to ``dst`` (box keys), with what it carries."""

    src: str
    dst: str
    label: str
    active: bool = True
    color: str = COLORS["edge"]


@dataclass(frozen=True)
class Message:
    """One row of the sequence diagram: one request or response of the trace."""

    time: float
    stream: int
    direction: str  # "received" (Envoy -> control plane) or "sent"
    kind: str
    type: str
    version: str
    nonce: str
    resources: str
    removed: str
    error: str

    @property
    def label(self) -> str:
        parts = [_("{type} {kind}").format(type=self.type, kind=_(_KINDS.get(self.kind, self.kind)))]
        if self.version:
            parts.append(_("version {version}").format(version=self.version))
        elif self.kind == "request":
            parts.append(_("no version yet"))
        if self.nonce:
            parts.append(_("nonce {nonce}").format(nonce=self.nonce))
        text = " · ".join(parts)
        if self.resources and self.direction == "sent":
            text += f"  [{_short(self.resources, 48)}]"
        elif self.resources and self.kind == "request":
            text += "  " + _("(asks for {names})").format(names=_short(self.resources, 40))
        if self.removed:
            text += "  " + _("removed: {names}").format(names=_short(self.removed, 30))
        return text


#: The kinds of trace rows, as a label says them.
_KINDS = {"request": N_("request"), "response": N_("response"), "ACK": N_("ACK"), "NACK": N_("NACK")}


@dataclass
class Diagram:
    """A drawing as PNG bytes, with what it shows."""

    png: bytes
    title: str
    boxes: list[Box] = field(default_factory=list)
    arrows: list[Arrow] = field(default_factory=list)
    rows: list[Message] = field(default_factory=list)
    skipped: int = 0  # trace rows left out (older than the ones drawn)

    def _repr_png_(self) -> bytes:
        return self.png

    def __repr__(self) -> str:
        what = f"{len(self.rows)} messages" if self.rows or not self.boxes else f"{len(self.boxes)} boxes"
        return f"<Diagram {self.title!r}: {what}, PNG {len(self.png)} bytes>"

    def save(self, path: str) -> None:
        with open(path, "wb") as out:
            out.write(self.png)


def _short(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


#: Font families with Han characters, as fontconfig or the fonts' packages name them.
_HAN_FAMILIES = ("Noto Sans CJK SC", "Noto Sans SC", "Source Han Sans SC", "WenQuanYi Micro Hei", "WenQuanYi Zen Hei",
                 "Noto Sans CJK JP", "Droid Sans Fallback")


@functools.cache
def han_font() -> str | None:
    """The family of a font with Han characters that matplotlib can use, or None.

    The ``noto-cjk-sans-otc`` package's font is added to matplotlib's list first (it is not in
    the system's fonts); otherwise a system font fontconfig knows.
    """
    from matplotlib import font_manager

    try:
        import noto_cjk_sans_otc  # type: ignore[import-not-found,unused-ignore]

        font_manager.fontManager.addfont(str(noto_cjk_sans_otc.FONT_PATH))
    except (ImportError, OSError, RuntimeError):
        pass
    have = {f.name for f in font_manager.fontManager.ttflist}
    return next((family for family in _HAN_FAMILIES if family in have), None)


def use_han_font() -> str | None:
    """Let matplotlib fall back on the Han font when the learner's language needs it: the lessons'
    own pyplot charts (05, 07, 08) write Chinese titles and labels (``tr()``) that DejaVu Sans would
    draw as empty boxes. Latin text keeps matplotlib's own font (the Han one comes after it). Set
    once, when labxds.notebook is imported, before any chart thread runs; the traffic chart and the
    diagrams also name the Han font on their own texts. Returns the family, or None."""
    family = han_font() if language() != "en" else None
    if family is None:
        return None
    import matplotlib

    families = list(matplotlib.rcParams["font.family"])
    if family not in families:
        matplotlib.rcParams["font.family"] = [*families, family]
    return family


def _(message: str) -> str:
    """``message`` in the learner's language, if the drawing can show it: English when the
    language needs Han characters and no font has them."""
    if language() != "en" and han_font() is None:
        return message
    return translate(message)


@contextmanager
def _fonts() -> Iterator[None]:
    """matplotlib's fonts for the drawing: its usual one, then a Han font for Chinese labels.

    The Han font has no bold face: matplotlib would log that it draws bold labels in its regular
    weight (on stderr, in the notebook); that is expected, so it is not logged.
    """
    family = han_font() if language() != "en" else None
    if family is None:
        yield
        return
    import matplotlib

    log = logging.getLogger("matplotlib.font_manager")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        with matplotlib.rc_context({"font.family": ["DejaVu Sans", family]}):
            yield
    finally:
        log.setLevel(level)


def _figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_axis_off()
    return fig, ax


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, facecolor="white")
    return buf.getvalue()


# --------------------------------------------------------------------------- topology


def _services_of(lab: Any) -> dict[str, str]:
    """"host:port" -> service name, for every instance the lab runs."""
    found = {}
    for name in getattr(lab, "service_counts", {}):
        try:
            for i, (host, port) in enumerate(lab.endpoints(name)):
                found[f"{host}:{port}"] = name if len(lab.endpoints(name)) == 1 else f"{name} #{i + 1}"
        except RuntimeError:  # not running
            pass
    return found


def topology_model(lab: Any) -> tuple[list[Box], list[Arrow]]:
    """The boxes and arrows ``topology`` draws, read from the running lab and its Envoy."""
    node = getattr(lab, "node_id", None) or "?"
    remote = getattr(lab, "remote", None)
    control_plane = getattr(lab, "control_plane", None)
    cp_address = remote or (control_plane.address if control_plane is not None else f"127.0.0.1:{lab.xds_port}")
    running = False  # Envoy answers on its admin interface
    connected = False
    listeners: list[dict[str, Any]] = []
    endpoints: list[dict[str, Any]] = []
    try:
        connected = lab.admin.stats("^control_plane.connected_state$").get("control_plane.connected_state") == 1
        running = True
        listeners = [r for r in listener_rows(lab.admin) if r["state"] == "active"]
        endpoints = endpoint_rows(lab.admin)
    except Exception:  # Envoy gone, or not started: draw what is known
        pass
    boxes = [
        Box("you", _("you (this notebook)"), "curl, /config_dump", 0.3, 3.2),
        Box("cp", _("control plane (ADS)"), (_("the instructor") if remote else _("this kernel")) + f" · {cp_address}",
            0.3, 0.3, active=bool(remote) or (control_plane is not None and control_plane.running)),
        Box("envoy", "Envoy", _("node {node}").format(node=node), 4.1, 0.8, w=3.2, h=3.8, active=running),
        Box("admin", _("admin interface"), lab.admin_url.split("//", 1)[-1], 4.4, 3.05, active=running),
    ]
    if listeners:
        text = ", ".join(f"{r['name']} :{r['port']}" for r in listeners)
        boxes.append(Box("listener", _("listeners"), _short(text, 34), 4.4, 1.6))
    else:
        boxes.append(Box("listener", _("listener"), _("none yet (port {port} closed)").format(port=lab.listener_port),
                         4.4, 1.6, active=False))
    arrows = [
        Arrow("you", "admin", _("HTTP: admin API"), active=running),
        Arrow("you", "listener", _("HTTP requests"), active=bool(listeners)),
        Arrow("envoy", "cp", _("ADS stream (gRPC): Envoy connects") if connected else _("ADS: not connected"),
              active=connected, color=COLORS["edge"] if connected else COLORS["NACK"]),
    ]
    services = _services_of(lab)
    services_up = getattr(lab, "services", None) is not None or bool(getattr(getattr(lab, "mode", None), "docker", False))
    by_address: dict[str, list[str]] = {}
    for row in endpoints:
        by_address.setdefault(f"{row['address']}:{row['port']}", []).append(str(row["cluster"]))
    step = min(1.1, 3.8 / max(1, len(services)))
    y = 2.05 + step * (len(services) - 1) / 2 - 0.35
    for address, name in services.items():
        clusters = sorted(set(by_address.get(address, [])))
        boxes.append(Box(f"svc:{name}", name, address, 8.4, y, w=2.3, h=0.7, active=services_up))
        arrows.append(Arrow("listener", f"svc:{name}", _short(", ".join(clusters), 30) if clusters else "",
                            active=bool(clusters)))
        y -= step
    return boxes, arrows


def _draw_box(ax: Any, box: Box) -> None:
    from matplotlib.patches import FancyBboxPatch

    edge = COLORS["edge"] if box.active else COLORS["off"]
    ax.add_patch(FancyBboxPatch((box.x, box.y), box.w, box.h, boxstyle="round,pad=0.05,rounding_size=0.12",
                                facecolor=COLORS["box"], edgecolor=edge, linewidth=1.4,
                                linestyle="-" if box.active else "--"))  # fmt: skip
    ax.text(box.x + box.w / 2, box.y + box.h * 0.64, box.title, ha="center", va="center", fontsize=10,
            fontweight="bold", color=edge)
    ax.text(box.x + box.w / 2, box.y + box.h * 0.28, box.detail, ha="center", va="center", fontsize=8, color=edge)


def _ends(arrow: Arrow, by_key: dict[str, Box]) -> tuple[tuple[float, float], tuple[float, float]]:
    """Where an arrow starts and ends in the fixed layout (left to right: you, Envoy, services)."""
    src, dst = by_key[arrow.src], by_key[arrow.dst]
    if arrow.src == "you":
        y0 = src.y + src.h * (0.78 if arrow.dst == "admin" else 0.22)
        return (src.x + src.w, y0), (dst.x, dst.y + dst.h / 2)
    if arrow.src == "envoy":  # the ADS stream leaves Envoy's frame low on its left side
        return (src.x, src.y + 0.3), (dst.x + dst.w, dst.y + dst.h / 2)
    return (src.x + src.w, src.y + src.h / 2), (dst.x, dst.y + dst.h / 2)


def topology(lab: Any) -> Diagram:
    """The lab's processes, ports and connections, drawn from the running lab (a PNG image)."""
    with _fonts():
        return _topology(lab)


def _topology(lab: Any) -> Diagram:
    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

    boxes, arrows = topology_model(lab)
    fig, ax = _figure(11, 5)
    ax.set_xlim(0, 11)
    ax.set_ylim(0, 5)
    by_key = {b.key: b for b in boxes}
    for box in boxes:
        if box.key == "envoy":
            edge = "#54aeff" if box.active else COLORS["off"]
            ax.add_patch(FancyBboxPatch((box.x, box.y), box.w, box.h, boxstyle="round,pad=0.05,rounding_size=0.2",
                                        facecolor="#ddf4ff", edgecolor=edge, linewidth=1.2))
            ax.text(box.x + box.w / 2, box.y + box.h - 0.3, f"{box.title} · {box.detail}", ha="center",
                    fontsize=10, fontweight="bold")
        else:
            _draw_box(ax, box)
    for arrow in arrows:
        start, end = _ends(arrow, by_key)
        color = arrow.color if arrow.active else COLORS["off"]
        ax.add_patch(FancyArrowPatch(start, end, arrowstyle="-|>", mutation_scale=14, color=color, linewidth=1.4,
                                     linestyle="-" if arrow.active else (0, (4, 3))))  # fmt: skip
        if arrow.label:
            at = 0.5 if arrow.src != "listener" else 0.62
            mx, my = start[0] + (end[0] - start[0]) * at, start[1] + (end[1] - start[1]) * at
            ax.text(mx, my + 0.06, arrow.label, ha="center", va="bottom", fontsize=8, color=color,
                    bbox={"facecolor": "white", "edgecolor": "none", "pad": 1, "alpha": 0.9})
    title = _("The lab at {time}: solid = working now, dashed = not (yet)").format(time=time.strftime("%H:%M:%S"))
    ax.text(0.3, 4.75, title, fontsize=9, color=COLORS["request"])
    return Diagram(_png(fig), "topology", boxes=boxes, arrows=arrows)


# --------------------------------------------------------------------------- sequence


def sequence_model(lab: Any, since: float | None = None, *, last: int = 30,
                   node: str | None = None) -> tuple[list[Message], int]:
    """The trace rows ``sequence`` draws (at most ``last``, the newest) and how many it leaves out.

    ``since`` is a time (``lab.mark()``, seconds since the epoch) or a number of rows to skip
    (``len(lab.cp.trace(node))`` taken before a step).
    """
    node = node or getattr(lab, "node_id", None)
    records = lab.cp.trace(node)
    if isinstance(since, bool):
        raise TypeError("since is a time (lab.mark()) or a row count, not a bool")
    if isinstance(since, int):
        records = records[since:]
    elif isinstance(since, float):
        records = [r for r in records if r["time"] >= since]
    rows = [Message(r["time"], r["stream"], r["direction"], r["kind"], r["type"], r["version"], r["nonce"],
                    r["resources"], r["removed"], r["error"]) for r in records]  # fmt: skip
    skipped = max(0, len(rows) - last)
    return rows[skipped:], skipped


def sequence(lab: Any, since: float | None = None, *, last: int = 30, node: str | None = None,
             title: str | None = None) -> Diagram:
    """The lab's xDS conversation as a sequence diagram, from its real trace (a PNG image).

    Arrows right: Envoy's requests (grey), ACKs (green), NACKs (red, with Envoy's reason);
    arrows left: the control plane's responses (blue). A dashed line marks a new ADS stream.
    ``title`` is shown in the learner's language when the catalogue has it (the lessons' titles).
    """
    with _fonts():
        return _sequence(lab, since, last=last, node=node, title=title)


def _sequence(lab: Any, since: float | None, *, last: int, node: str | None, title: str | None) -> Diagram:
    rows, skipped = sequence_model(lab, since, last=last, node=node)
    node = node or getattr(lab, "node_id", None) or "?"
    height = 1.7 + 0.42 * max(1, len(rows)) + 0.25 * sum(1 for r in rows if r.kind == "NACK")
    fig, ax = _figure(11, height)
    ax.set_xlim(0, 11)
    ax.set_ylim(0, height)
    left, right = 2.2, 8.8
    top = height - 0.85
    for x, name in ((left, _("{client} (node {node})").format(client=_client_kind(lab, node), node=node)),
                    (right, _("control plane (ADS)"))):
        ax.text(x, top + 0.2, name, ha="center", va="bottom", fontsize=11, fontweight="bold",
                bbox={"facecolor": COLORS["box"], "edgecolor": COLORS["edge"], "boxstyle": "round,pad=0.3"})
        ax.plot([x, x], [0.2, top], color=COLORS["off"], linewidth=1, linestyle=(0, (2, 2)))
    y = top - 0.45
    start = rows[0].time if rows else 0.0
    stream = None
    if skipped:
        ax.text(5.5, y + 0.15, _("... {n} earlier messages not shown").format(n=skipped), ha="center", fontsize=8,
                color=COLORS["off"])
        y -= 0.3
    if not rows:
        ax.text(5.5, y, _("no xDS messages in this part of the trace"), ha="center", fontsize=10, color=COLORS["off"])
    for row in rows:
        if row.stream != stream:
            if stream is not None:
                ax.plot([0.3, 10.7], [y + 0.22, y + 0.22], color=COLORS["stale"], linewidth=0.8, linestyle="--")
            ax.text(10.75, y + 0.24, _("stream {n}").format(n=row.stream), ha="right", va="bottom", fontsize=7,
                    color=COLORS["stale"])
            stream = row.stream
        color = COLORS.get(row.kind, COLORS["request"])
        x0, x1 = (left, right) if row.direction == "received" else (right, left)
        ax.annotate("", xy=(x1, y), xytext=(x0, y),
                    arrowprops={"arrowstyle": "-|>", "color": color, "linewidth": 2 if row.kind == "NACK" else 1.3})
        ax.text((left + right) / 2, y + 0.05, row.label, ha="center", va="bottom", fontsize=8.5, color=color)
        ax.text(0.15, y, f"+{row.time - start:.3f} s", ha="left", va="center", fontsize=7, color=COLORS["off"])
        if row.kind == "NACK" and row.error:
            reason = _short(_reason(row.error), 150)
            ax.text((left + right) / 2, y - 0.2, reason, ha="center", va="top", fontsize=7.5, color=color,
                    style="italic")
            y -= 0.25
        y -= 0.42
    shown = _(title) if title else _("The xDS conversation (from the control plane's trace)")
    ax.text(0.15, height - 0.15, shown, fontsize=9, va="top", color=COLORS["request"])
    return Diagram(_png(fig), shown if title else "sequence", rows=rows, skipped=skipped)


def _client_kind(lab: Any, node: str) -> str:
    """What speaks xDS as ``node``: Envoy, or gRPC's own xDS client (proxyless gRPC), by the user
    agent its stream announced."""
    try:
        status = lab.cp.node_status(node)
    except Exception:  # noqa: BLE001 - a lab without a control plane of its own
        status = None
    agent = (getattr(status, "user_agent", "") or "").lower()
    return _("gRPC client") if agent.startswith("grpc") else "Envoy"


def _reason(error: str) -> str:
    lines = [line.strip(" :") for line in error.strip().splitlines() if line.strip(" :")]
    return textwrap.shorten(lines[-1] if lines else error, 200)
