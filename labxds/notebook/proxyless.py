"""A picture of proxyless gRPC: the kernel's gRPC client, the control plane that configures it,
and the backends it calls directly, drawn from what is running and what the client was sent."""

from __future__ import annotations

import time
from typing import Any

from ..i18n import _
from ..xds.resource_types import ENDPOINT
from .diagrams import COLORS, Arrow, Box, Diagram, _draw_box, _figure, _fonts, _png

__all__ = ["grpc_topology", "grpc_topology_model"]


def grpc_topology_model(lab: Any, client: Any) -> tuple[list[Box], list[Arrow]]:
    """Boxes and arrows: the client's ADS stream (connected or not) and which backends the
    endpoints the control plane serves its node point at."""
    cp = lab.cp
    node = client.node_id
    connected = node in cp.nodes()
    served: set[str] = set()
    snap = cp.snapshot(node)
    if snap is not None:
        for assignment in snap.resources(ENDPOINT).values():
            for group in assignment.endpoints:
                for lb in group.lb_endpoints:
                    sock = lb.endpoint.address.socket_address
                    served.add(f"{sock.address}:{sock.port_value}")
    boxes = [
        Box("client", _("gRPC client"), _("{uri} · node {node}").format(uri=client.uri, node=node), 0.3, 2.6, w=3.4),
        Box("cp", _("control plane (ADS)"), _("this kernel · {address}").format(address=cp.address), 0.3, 0.4, w=3.4),
    ]
    arrows = [Arrow("client", "cp", _("ADS stream (gRPC): LDS, RDS, CDS, EDS") if connected else _("ADS: not connected"),
                    active=connected, color=COLORS["edge"] if connected else COLORS["NACK"])]  # fmt: skip
    backends = list(getattr(lab.grpc, "backends", {}).values()) if getattr(lab, "grpc", None) else []
    step = min(1.2, 3.6 / max(1, len(backends)))
    y = 2.2 + step * (len(backends) - 1) / 2
    for backend in backends:
        address = f"{backend.host}:{backend.port}"
        boxes.append(Box(f"backend:{backend.name}", backend.name,
                         _("{address} · {calls} calls").format(address=address, calls=backend.calls), 7.0, y,
                         w=2.8, h=0.8, active=backend.running))  # fmt: skip
        arrows.append(Arrow("client", f"backend:{backend.name}", _("calls, no proxy") if address in served else "",
                            active=address in served))  # fmt: skip
        y -= step
    return boxes, arrows


def grpc_topology(lab: Any, client: Any) -> Diagram:
    """Proxyless gRPC as it runs now (a PNG image): solid = in use, dashed = not (yet)."""
    with _fonts():  # Chinese labels need a font with Han characters, as in the lab's own diagrams
        return _grpc_topology(lab, client)


def _grpc_topology(lab: Any, client: Any) -> Diagram:
    from matplotlib.patches import FancyArrowPatch

    boxes, arrows = grpc_topology_model(lab, client)
    fig, ax = _figure(10.5, 4.4)
    ax.set_xlim(0, 10.5)
    ax.set_ylim(0, 4.4)
    by_key = {b.key: b for b in boxes}
    for box in boxes:
        _draw_box(ax, box)
    for arrow in arrows:
        src, dst = by_key[arrow.src], by_key[arrow.dst]
        if arrow.dst == "cp":
            start, end = (src.x + src.w / 2, src.y), (dst.x + dst.w / 2, dst.y + dst.h)
        else:
            start, end = (src.x + src.w, src.y + src.h / 2), (dst.x, dst.y + dst.h / 2)
        color = arrow.color if arrow.active else COLORS["off"]
        ax.add_patch(FancyArrowPatch(start, end, arrowstyle="-|>", mutation_scale=14, color=color, linewidth=1.4,
                                     linestyle="-" if arrow.active else (0, (4, 3))))  # fmt: skip
        if arrow.label:
            mx, my = (start[0] + end[0]) / 2, (start[1] + end[1]) / 2
            ax.text(mx, my + 0.06, arrow.label, ha="center", va="bottom", fontsize=8, color=color,
                    bbox={"facecolor": "white", "edgecolor": "none", "pad": 1, "alpha": 0.9})  # fmt: skip
    ax.text(0.3, 4.15, _("Proxyless gRPC at {time}: solid = in use now, dashed = not").format(time=time.strftime("%H:%M:%S")),
            fontsize=9, color=COLORS["request"])  # fmt: skip
    return Diagram(_png(fig), "proxyless gRPC", boxes=boxes, arrows=arrows)
