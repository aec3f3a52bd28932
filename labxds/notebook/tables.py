"""Tables a learner reads instead of raw JSON: requests through Envoy, and Envoy's own view.

The records come from ``labxds.lab.traffic`` (requests) and ``labxds.envoy.config_dump`` (what
Envoy holds); here they become pandas frames with proper types, and ``styled`` makes them
notebook-ready. pandas is imported inside the functions so importing the package stays quick.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ..envoy import as_admin
from ..envoy.config_dump import (
    COLUMNS,
    certificate_rows,
    cluster_rows,
    endpoint_rows,
    host_rows,
    listener_rows,
    route_rows,
    sandbox_endpoint,
)
from ..i18n import N_, _, explain, language
from ..lab.traffic import Traffic, send

if TYPE_CHECKING:
    import pandas as pd
    from pandas.io.formats.style import Styler

__all__ = [
    "LAB_TABLE",
    "certificates_table",
    "clusters_table",
    "column_label",
    "lab_table",
    "lab_table_html",
    "phases_table",
    "curl",
    "endpoints_table",
    "hosts_table",
    "listeners_table",
    "progress_table",
    "requests_frame",
    "routes_table",
    "sandbox_endpoint",
    "stats_table",
    "status_table",
    "styled",
    "translate_lab_tables",
    "trace_table",
]


def _frame(rows: list[dict], columns: list[str], *, times: tuple[str, ...] = (), ints: tuple[str, ...] = (),
           epoch: tuple[str, ...] = ()) -> pd.DataFrame:
    """A frame of ``rows``: ``times`` are Envoy's ISO timestamps, ``epoch`` ours (seconds; 0/None: none)."""
    import pandas as pd

    df = pd.DataFrame(rows, columns=columns)
    for column in epoch:  # naive, as the engine's clock is time.time()
        df[column] = pd.to_datetime(df[column].where(df[column].astype(bool), None), unit="s")
    for column in times:
        df[column] = pd.to_datetime(df[column], utc=True, errors="coerce")
    for column in ints:
        df[column] = df[column].astype("Int64")
    return df


def curl(
    url: str | int,
    n: int = 1,
    *,
    path: str = "/",
    headers: Mapping[str, str] | None = None,
    include_headers: bool = False,
    method: str = "GET",
    timeout: float = 2.0,
    response_headers: Sequence[str] = (),
    verify: Any = True,
) -> pd.DataFrame:
    """Send `n` requests (like `curl` n times) and return one row per request.

    Failures are rows, not exceptions: "connection refused" before Envoy has a listener is part
    of the lesson. Requests share one keep-alive connection, so with one Envoy worker round
    robin alternates strictly. ``response_headers``: response headers to show as columns.
    ``verify``: for HTTPS, an ``ssl.SSLContext`` trusting the lab's CA.
    """
    rows = send(url, n, path=path, headers=headers, include_headers=include_headers, method=method, timeout=timeout,
                response_headers=response_headers, verify=verify)  # fmt: skip
    return lab_table(requests_frame(rows))


def phases_table(traffic: Traffic) -> pd.DataFrame:
    """``traffic.phases()`` as a lab table: one row per stretch between marks, what each change
    cost (requests, failures and why, latency). The ``phase`` column keeps the marks' labels as
    the code wrote them; a notebook shows them in the learner's language."""
    import pandas as pd

    return lab_table(pd.DataFrame(traffic.phases()))


def requests_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """``send``'s records as curl's table."""
    import pandas as pd

    df = pd.DataFrame(rows)
    df["status"] = df["status"].astype("Int64")
    df["latency_ms"] = df["latency_ms"].astype(float)
    df["instance"] = pd.to_numeric(df["instance"], errors="coerce").astype("Int64")
    return df


def clusters_table(admin: Any, *, include_static: bool = False, include_warming: bool = False) -> pd.DataFrame:
    """Clusters Envoy has accepted over CDS (plus bootstrap ones with include_static).

    ``include_warming`` adds the clusters still warming (waiting for their endpoints) and a
    ``state`` column: active or warming."""
    columns = COLUMNS["clusters"] if include_static else COLUMNS["clusters"][:-1]
    if include_warming:
        columns = [*columns, "state"]
    rows = cluster_rows(admin, include_static=include_static, include_warming=include_warming)
    return _frame(rows, columns, times=("last_updated",))


def endpoints_table(admin: Any, cluster: str | None = None, *, include_static: bool = False) -> pd.DataFrame:
    """Endpoints as Envoy's cluster manager holds them: EDS ones and DNS/inline ones alike."""
    rows = endpoint_rows(admin, cluster, include_static=include_static)
    return _frame(rows, COLUMNS["endpoints"], ints=("port",))


def listeners_table(admin: Any) -> pd.DataFrame:
    """One row per listener state (active, warming, draining) and per rejected update (error)."""
    return _frame(listener_rows(admin), COLUMNS["listeners"], times=("last_updated",), ints=("port",))


def routes_table(admin: Any) -> pd.DataFrame:
    """Every route in order of evaluation: RDS route configs, then ones inline in listeners."""
    return _frame(route_rows(admin), COLUMNS["routes"], times=("last_updated",))


def hosts_table(admin: Any, cluster: str | None = None) -> pd.DataFrame:
    """Each upstream host now (``/clusters``): health in words, requests, successes, errors."""
    return _frame(host_rows(as_admin(admin), cluster), COLUMNS["hosts"],
                  ints=("requests", "succeeded", "failed", "connect_failures"))  # fmt: skip


def certificates_table(admin: Any) -> pd.DataFrame:
    """The certificates Envoy holds (``/certs``): serial, names, validity, days left."""
    return _frame(certificate_rows(as_admin(admin)), COLUMNS["certificates"], times=("valid_from", "expires"),
                  ints=("days_left",))  # fmt: skip


def status_table(control_plane: Any) -> pd.DataFrame:
    """Per node and type: versions sent, ACKed and NACKed, with Envoy's last error."""
    columns = ["node", "connected_since", "last_seen", "type", "sent", "acked", "nacked", "nack_error"]
    return _frame(control_plane.status(), columns, epoch=("connected_since", "last_seen"))


def trace_table(control_plane: Any, node: str | None = None, last: int | None = None) -> pd.DataFrame:
    """The xDS conversation, oldest first: requests, responses, versions, nonces, ACKs and NACKs."""
    columns = ["time", "node", "stream", "direction", "type", "kind", "version", "nonce", "resources", "removed", "error"]
    return _frame(control_plane.trace(node, last), columns, epoch=("time",))


def progress_table(workshop: Any) -> pd.DataFrame:
    """A workshop's exercise results, one row per learner and exercise."""
    columns = ["learner", "exercise", "passed", "confirmed", "detail", "evidence", "hint", "at"]
    return _frame(workshop.progress_rows(), columns, epoch=("at",))


def stats_table(admin: Any, filter: str | None = None, *, nonzero: bool = False) -> pd.DataFrame:
    """Counters and gauges matching Envoy's regex `filter` (e.g. "cluster.service1.upstream_rq")."""
    stats = as_admin(admin).stats(filter)
    rows = [{"name": k, "value": v} for k, v in sorted(stats.items()) if v or not nonzero]
    df = _frame(rows, ["name", "value"])
    df["value"] = df["value"].astype("int64")
    return df


# --------------------------------------------------------------------------- display

_UNITS = {"_ms": "ms", "_s": "s", "_bytes": "bytes", "_pct": "%"}

#: Columns of the lessons' own tables (lab.where(), configs_index, the toggle's history, lesson 5's
#: split), shown as words like those of _LABELS below.
_LESSON_LABELS = {
    "component": N_("component"), "index": N_("index"), "holds": N_("holds"), "lists": N_("lists"),
    "upstream": N_("upstream"), "requests": N_("requests"), "policy": N_("policy"),
}  # fmt: skip


#: Column names shown as words in the learner's language (the frames keep their names for code).
_LABELS = {
    "request": N_("request"), "status": N_("status"), "served_by": N_("served by"), "instance": N_("instance"),
    "latency": N_("latency"), "error": N_("error"), "name": N_("name"), "version_info": N_("version"),
    "last_updated": N_("last updated"), "type": N_("type"), "lb_policy": N_("load balancing"),
    "source": N_("source"), "cluster": N_("cluster"), "address": N_("address"), "port": N_("port"),
    "health": N_("health"), "weight": N_("weight"), "priority": N_("priority"), "hostname": N_("hostname"),
    "state": N_("state"), "error_state": N_("error"), "route_config": N_("route configuration"),
    "virtual_host": N_("virtual host"), "domains": N_("domains"), "match": N_("match"), "node": N_("node"),
    "connected_since": N_("connected since"), "last_seen": N_("last seen"), "sent": N_("sent"),
    "acked": N_("ACKed"), "nacked": N_("NACKed"), "nack_error": N_("NACK error"), "time": N_("time"),
    "stream": N_("stream"), "direction": N_("direction"), "kind": N_("kind"), "version": N_("version"),
    "nonce": N_("nonce"), "resources": N_("resources"), "removed": N_("removed"), "value": N_("value"),
    "learner": N_("learner"), "exercise": N_("exercise"), "passed": N_("passed"), "detail": N_("detail"),
    "hint": N_("hint"), "at": N_("at"), "flags": N_("response flags"), "confirmed": N_("confirmed"),
    "evidence": N_("control plane's evidence"), "connected": N_("connected"), "snapshot": N_("snapshot"),
    "last_nack": N_("last NACK"), "nack_open": N_("NACK open"), "nack_at": N_("NACKed at"),
    "progress": N_("progress"), "listener": N_("listener"), "admin": N_("admin"), "token": N_("token"),
    "command": N_("command"),
    # the columns of lessons 6-9's own tables
    "count": N_("count"), "protocol": N_("protocol"), "control plane": N_("control plane"),
    "Envoy admin": N_("Envoy admin"), "bootstrap api_type": N_("bootstrap api_type"),
    "resource": N_("resource"), "push": N_("push"), "resources carried": N_("resources carried"),
    "clusters Envoy holds": N_("clusters Envoy holds"), "canary": N_("canary"), "failed": N_("failed"),
    # lessons 10-14: hosts, certificates, the request id
    "succeeded": N_("succeeded"), "connect_failures": N_("connect failures"), "serial": N_("serial"),
    "names": N_("names"), "valid_from": N_("valid from"), "expires": N_("expires"), "days_left": N_("days left"),
    "x_request_id": N_("x-request-id"),
    # traffic.phases(): what each change cost
    "from": N_("from"), "phase": N_("phase"), "retried": N_("retried"), "success_rate": N_("success rate"),
    "p50": N_("p50"), "p95": N_("p95"), "why": N_("why"),
}  # fmt: skip

#: Columns whose values are labels a lesson wrote (traffic marks) or words labxds wrote (a host's
#: health, several joined by ", "): shown in the learner's language, kept as they are for code.
_LABEL_VALUES = {"phase": None, "health": ", "}

#: Columns whose values may be Envoy's own words: ``styled`` adds what the common ones mean.
_ENVOY_WORDS = ("flags", "error_state", "nack_error", "last_nack")


def column_label(column: str) -> str:
    """latency_ms -> "latency (ms)", x_request_id -> "x request id", in the learner's language."""
    for suffix, unit in _UNITS.items():
        if column.endswith(suffix):
            base = column.removesuffix(suffix)
            return f"{_(_LABELS[base]) if base in _LABELS else base.replace('_', ' ')} ({unit})"
    label = _LABELS.get(column) or _LESSON_LABELS.get(column)
    return _(label) if label else column.replace("_", " ")


def _time_of_day(value: Any) -> str:
    import pandas as pd

    if pd.isna(value):
        return ""
    if value.tzinfo is not None:
        value = value.tz_convert("UTC")
    return value.strftime("%H:%M:%S.%f")[:-3]


def styled(df: pd.DataFrame, caption: str | None = None, *, precision: int = 1, nowrap: bool = False,
           **values: Any) -> Styler:
    """A notebook-ready view: no index, units in headers, blanks instead of NaN.

    Timestamps (all UTC in labxds's tables) show as the time of day to the millisecond, with
    "(UTC)" in their header. The caption is shown in the learner's language; ``values`` fill its
    {placeholders} after translation (``styled(df, "the conversation for version {version}",
    version=v)``), so a lesson's code stays the same in every language. ``nowrap=True`` keeps each
    cell on one line (a long command to copy): the output area scrolls sideways instead.
    """
    import pandas as pd

    if caption:  # the lessons' captions are in the catalogue (labxds/i18n/notebooks.py): shown translated
        caption = _(caption)
        if values:
            caption = caption.format(**values)

    times = [c for c in df.columns if pd.api.types.is_datetime64_any_dtype(df[c])]
    headers = {c: column_label(str(c)) + (" (UTC)" if c in times else "") for c in df.columns}
    labelled = [c for c in _LABEL_VALUES if c in df.columns]
    if labelled:
        df = df.assign(**{c: df[c].map(lambda v, sep=_LABEL_VALUES[c]: _label_value(v, sep)) for c in labelled})
    view = df.rename(columns=headers)
    styler = view.style.hide(axis="index").format(precision=precision, na_rep="")
    if times:
        styler = styler.format(_time_of_day, subset=[headers[c] for c in times])
    notes = _explanations(df)
    if notes:
        caption = (html.escape(caption) + "<br>" if caption else "") + "<br>".join(
            f'<span style="font-size:smaller;font-weight:normal">{html.escape(note)}</span>' for note in notes)
    if caption:
        styler = styler.set_caption(caption)
    if nowrap:
        styler = styler.set_table_styles([{"selector": "td, th", "props": "white-space: nowrap;"}], overwrite=False)
    return styler


def _label_value(value: Any, separator: str | None) -> Any:
    if not isinstance(value, str) or not value:
        return value
    return separator.join(_(part) for part in value.split(separator)) if separator else _(value)


def _explanations(df: pd.DataFrame) -> list[str]:
    """What Envoy's words in the table mean (response flags, NACK texts), in the learner's
    language: Envoy's own texts stay in the cells as Envoy wrote them."""
    notes: list[str] = []
    for column in _ENVOY_WORDS:
        if column not in df.columns:
            continue
        for value in df[column].dropna().unique():
            meaning = explain(str(value))
            if meaning and meaning not in notes:
                notes.append(meaning)
    return notes


# --------------------------------------------------------------------------- the lab's tables in the learner's language

#: Set in ``DataFrame.attrs`` of the frames ``Lab``'s table methods return (pandas carries it
#: through selections, filters and sorts), so a notebook can show their headers as words.
LAB_TABLE = "labxds.table"


def lab_table(df: pd.DataFrame) -> pd.DataFrame:
    """Mark ``df`` as one of the lab's tables (see :func:`lab_table_html`); returns it."""
    df.attrs[LAB_TABLE] = True
    return df


def lab_table_html(df: pd.DataFrame) -> str | None:
    """The HTML a notebook shows for ``df``.

    In a language other than English, a lab table whose index is only row numbers shows as
    ``styled`` shows it: headers in words of the learner's language ("served_by" becomes 响应服务),
    units in the headers. Any other frame (the learner's own, a ``describe()`` whose index
    carries meaning) shows as pandas shows it, and code keeps using the columns' own names.
    """
    import pandas as pd

    index = df.index
    plain_rows = index.nlevels == 1 and index.name is None and pd.api.types.is_integer_dtype(index)
    if df.attrs.get(LAB_TABLE) and plain_rows and language() != "en":
        return styled(df).to_html()
    shown: str | None = df._repr_html_()
    return shown


def translate_lab_tables() -> bool:
    """In IPython, show DataFrames through :func:`lab_table_html`; False outside IPython.

    Called when :mod:`labxds.notebook` is imported: the Chinese lessons run the English code
    cells, so ``lab.curl(6)`` on its own line must show Chinese headers without a call to ``styled``.
    """
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    if shell is None:
        return False
    import pandas as pd

    shell.display_formatter.formatters["text/html"].for_type(pd.DataFrame, lab_table_html)
    return True
