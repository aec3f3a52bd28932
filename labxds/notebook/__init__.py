"""What a notebook shows: the learner's Lab with tables, widgets, the workshop dashboard.

``lab`` is the :class:`Lab` learners hold (``labxds.Lab``): the runtime plus tables; ``tables``
turns records into pandas frames; ``widgets`` are the upstream toggle, canary slider and status
panel; ``dashboard`` is the instructor's live view of a class; ``course`` checks and solves the
lessons' exercises; ``diagrams`` draws the lab's topology and its xDS conversation (PNG); ``raw``
gives the sandbox's own views (``curl -i``, /config_dump JSON, jq paths); ``tr("...")`` is a
sentence a lesson's code cell prints, in the notebook's language (the Chinese lessons run the
English code cells). Needs ``labxds[notebook]``.
"""

from ..i18n import _ as tr  # tr("..."): a sentence a lesson prints, in the notebook's language
from .charts import LiveChart, traffic_figure, traffic_png
from .course import Checked, ExerciseFailed, check, exercises, solve
from .dashboard import Dashboard
from .diagrams import Diagram, sequence, topology, use_han_font
from .lab import Lab
from .raw import SANDBOX_JQ, config_dump, configs_index, curl_i, jq, run_jq, show_json
from .service_widgets import BehaviourPanel, GrpcBackendToggle
from .tables import (
    certificates_table,
    clusters_table,
    curl,
    endpoints_table,
    hosts_table,
    listeners_table,
    phases_table,
    progress_table,
    routes_table,
    sandbox_endpoint,
    stats_table,
    status_table,
    styled,
    trace_table,
    translate_lab_tables,
)
from .widgets import (
    CanarySlider,
    StatusPanel,
    UpstreamToggle,
    canary_snapshot,
    next_version,
)

# Chinese titles and labels on charts (the lessons' pyplot charts, LiveChart) need a font with Han characters.
use_han_font()
# The lab's tables (lab.curl(), lab.clusters(), ...) show their headers in the notebook's language.
translate_lab_tables()

__all__ = [
    "SANDBOX_JQ",
    "BehaviourPanel",
    "CanarySlider",
    "Checked",
    "Dashboard",
    "Diagram",
    "ExerciseFailed",
    "GrpcBackendToggle",
    "Lab",
    "LiveChart",
    "StatusPanel",
    "UpstreamToggle",
    "canary_snapshot",
    "certificates_table",
    "check",
    "clusters_table",
    "config_dump",
    "configs_index",
    "curl",
    "curl_i",
    "endpoints_table",
    "exercises",
    "hosts_table",
    "jq",
    "listeners_table",
    "phases_table",
    "next_version",
    "progress_table",
    "routes_table",
    "run_jq",
    "sandbox_endpoint",
    "sequence",
    "show_json",
    "solve",
    "stats_table",
    "status_table",
    "styled",
    "topology",
    "tr",
    "trace_table",
    "traffic_figure",
    "traffic_png",
]
