"""The class as the instructor sees it: one row per learner, from the control plane's tracker
and the workshop's results. The hub service's page and JSON and the notebook's dashboard show
the same rows, each in its own way."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..xds.resource_types import short_name

if TYPE_CHECKING:
    from .workshop import Workshop

__all__ = ["TYPES", "class_status"]

TYPES = ("CDS", "EDS", "LDS", "RDS")


def class_status(ws: Workshop) -> list[dict[str, Any]]:
    """One row per learner: connection, ACKed versions per type, snapshot source, the latest
    NACK (its text, whether it is still open, when), exercises passed and each one's mark."""
    tracker = ws.control_plane.tracker
    connected = set(tracker.connected())
    rows = []
    for name in ws.learners():
        node = tracker.node(name)
        row: dict[str, Any] = {"learner": name, "connected": name in connected,
                               "connected_since": node.connected_since if node else None,
                               "last_seen": node.last_seen if node else None,
                               "snapshot": ws.source_of(name), "last_nack": None, "nack_open": False,
                               "nack_at": None}  # fmt: skip
        row.update({t: None for t in TYPES})
        latest = None
        for url, st in (node.types.items() if node else ()):
            short = short_name(url)
            if short in TYPES:
                row[short] = st.acked_version
            if st.nacked_at is not None and (latest is None or st.nacked_at > (latest[1].nacked_at or 0)):
                latest = (short, st)
        if latest is not None:
            short, st = latest
            row["last_nack"] = f"{short} v{st.nacked_version}: {st.nack_error or ''}"
            row["nack_open"] = st.acked_at is None or (st.nacked_at or 0) > st.acked_at
            row["nack_at"] = st.nacked_at
        results = ws.progress.get(name, {})
        row["passed"] = sum(1 for r in results.values() if r.passed and not r.contradicted)
        row["progress"] = {key: results[key].mark for key in ws.exercises if key in results}
        rows.append(row)
    return rows
