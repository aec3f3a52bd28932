"""What a notebook shows: the learner's Lab with tables, widgets, the workshop dashboard.

``lab`` is the :class:`Lab` learners hold (``labxds.Lab``): the runtime plus tables; ``tables``
turns records into pandas frames; ``widgets`` are the upstream toggle, canary slider and status
panel; ``dashboard`` is the instructor's live view of a class. Needs ``labxds[notebook]``.
"""

from .dashboard import Dashboard
from .lab import Lab
from .tables import (
    clusters_table,
    curl,
    endpoints_table,
    listeners_table,
    progress_table,
    routes_table,
    sandbox_endpoint,
    stats_table,
    status_table,
    styled,
    trace_table,
)
from .widgets import (
    CanarySlider,
    StatusPanel,
    UpstreamToggle,
    canary_snapshot,
    next_version,
)

__all__ = [
    "CanarySlider",
    "Dashboard",
    "Lab",
    "StatusPanel",
    "UpstreamToggle",
    "canary_snapshot",
    "clusters_table",
    "curl",
    "endpoints_table",
    "listeners_table",
    "next_version",
    "progress_table",
    "routes_table",
    "sandbox_endpoint",
    "stats_table",
    "status_table",
    "styled",
    "trace_table",
]
