"""Lesson 7, State of the World vs Delta: one changed cluster and one removed cluster, as Delta sends them."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ...envoy.config_dump import cluster_rows
from ...i18n import N_, _
from ...xds.builders import cluster
from ...xds.resource_types import CLUSTER
from ...xds.snapshot import Snapshot
from ...xds.tracking import PushRejected, PushTimeout
from ..exercises import Exercise, Fail, Target
from .checks import envoy_hint, envoy_words, need

__all__ = ["EXERCISES", "thousand_clusters"]

DOCS = "https://www.envoyproxy.io/docs/envoy/v1.40.0"
LAB_OPTIONS = {"delta": True}

#: The lesson's helper, as its first cells define it.
GIVEN = '''\
endpoint = lab.upstream("service1")


def thousand_clusters(version, timeouts=None, without=()):
    """cluster_0000 ... cluster_0999, STATIC, service1 as their endpoint; connect timeouts 5 s unless
    `timeouts` says otherwise; the clusters named in `without` left out."""
    timeouts = timeouts or {}
    names = [f"cluster_{i:04d}" for i in range(1000)]
    return labxds.Snapshot([labxds.cluster(name, [endpoint], type="STATIC", connect_timeout=timeouts.get(name, 5.0))
                            for name in names if name not in without], version=version)
'''


def thousand_clusters(lab: Any, version: str | None = None, timeouts: Mapping[str, float] | None = None,
                      without: tuple[str, ...] = ()) -> Snapshot:
    """What the lesson's ``thousand_clusters`` builds, on ``lab``'s service1."""
    endpoint = lab.upstream("service1")
    timeouts = timeouts or {}
    names = [f"cluster_{i:04d}" for i in range(1000)]
    return Snapshot([cluster(name, [endpoint], type="STATIC", connect_timeout=timeouts.get(name, 5.0))
                     for name in names if name not in without], version=version)


def _version_2(lab: Any) -> Snapshot:
    """Where both exercises start: version 2 of the lesson, cluster_0500 at 2 s (hashed versions)."""
    return thousand_clusters(lab, timeouts={"cluster_0500": 2.0})


def _delta_lab(t: Target) -> Any:
    lab = t.own_lab()
    if not getattr(lab, "delta", False):
        raise Fail(_("this lab speaks State of the World: its Envoy's bootstrap says api_type GRPC"),
                   _("check with the Delta lab: check(\"7.1\", lab, ...) where lab = labxds.Lab(delta=True)"))
    return lab


def _replay(t: Target, answer: Any, name: str, hint: str) -> tuple[list[str], list[str]]:
    """Put version 2 back on the Delta lab, push the learner's snapshot, and return the names the
    CDS response carried and the names it removed."""
    need(answer, name, hint)
    if not isinstance(answer, Snapshot):
        raise Fail(_("{name} is a {kind}, not a snapshot").format(name=name, kind=type(answer).__name__), hint)
    if CLUSTER not in answer.types:
        raise Fail(_("{name} has no cluster").format(name=name), hint)
    lab = _delta_lab(t)
    try:
        lab.push(_version_2(lab), timeout=30)
        start = len(lab.cp.trace(lab.node_id))
        lab.push(answer, timeout=30)
    except PushRejected as exc:
        text = next(iter(exc.errors.values()))
        raise Fail(_("Envoy rejected your snapshot: {words}").format(words=envoy_words(text)),
                   envoy_hint(text, hint)) from None
    except PushTimeout:
        raise Fail(_("Envoy did not ACK your snapshot within 30 s"), _("is the Delta lab running? lab.cp.nodes()")) from None
    sent = [e for e in lab.cp.trace(lab.node_id)[start:] if e["kind"] == "response" and e["type"] == "CDS"]
    carried = [n for e in sent for n in e["resources"].split(", ") if n]
    removed = [n for e in sent for n in e["removed"].split(", ") if n]
    return carried, removed


def _names(names: list[str]) -> str:
    shown = ", ".join(names[:4])
    return shown + (_(" and {n} more").format(n=len(names) - 4) if len(names) > 4 else "")


def _check_changed(t: Target, changed: Any) -> str:
    hint = _('thousand_clusters(version, timeouts={"cluster_0500": 2.0, "cluster_0042": 2.0}): version 2 as it '
             "was, and cluster_0042's connect timeout 2 s")
    carried, removed = _replay(t, changed, "changed", hint)
    if removed:
        raise Fail(_("your snapshot removes {names}").format(names=_names(removed)),
                   _("keep all 1,000 clusters: change one, remove none"))
    if carried != ["cluster_0042"]:
        if not carried:
            raise Fail(_("nothing went on the wire: your snapshot's clusters are version 2's"), hint)
        raise Fail(_("the Delta response carried {n} cluster(s): {names}").format(n=len(carried), names=_names(carried)),
                   _("change cluster_0042 only; everything else exactly as in version 2 (cluster_0500 at 2 s too)"))
    lab = t.own_lab()
    timeout = next((r for r in _dump_clusters(lab) if r["name"] == "cluster_0042"), {}).get("connect_timeout")
    if timeout != "2s":
        raise Fail(_("Envoy runs cluster_0042 with connect_timeout {value}").format(value=timeout), hint)
    size = len(changed.entries(CLUSTER)["cluster_0042"].delta)
    return _("Delta sent 1 cluster of 1,000 ({size} bytes of resource), and Envoy runs cluster_0042 with a 2 s "
             "connect timeout").format(size=size)


def _dump_clusters(lab: Any) -> list[dict[str, Any]]:
    """Envoy's dynamic clusters with their connect timeouts, from /config_dump."""
    dump = lab.admin.config_dump(resource="dynamic_active_clusters")
    return [{"name": e["cluster"]["name"], "connect_timeout": e["cluster"].get("connect_timeout")}
            for e in dump.get("configs", [])]


def _check_removed(t: Target, smaller: Any) -> str:
    hint = _('thousand_clusters(version, timeouts={"cluster_0500": 2.0}, without=["cluster_0999"]): version 2 '
             "without cluster_0999")
    carried, removed = _replay(t, smaller, "smaller", hint)
    if removed != ["cluster_0999"]:
        raise Fail(_("the Delta response removed {names}").format(names=_names(removed) or _("nothing")),
                   _("remove cluster_0999 only: leave it out of the snapshot, keep the other 999"))
    if carried:
        raise Fail(_("the Delta response also carried {names}").format(names=_names(carried)),
                   _("everything else exactly as in version 2 (cluster_0500 at 2 s too)"))
    lab = t.own_lab()
    names = {r["name"] for r in cluster_rows(lab.admin)}
    if "cluster_0999" in names or len(names) != 999:
        raise Fail(_("Envoy holds {n} clusters").format(n=len(names)), hint)
    return _("the Delta response carried no cluster and removed cluster_0999 by name; Envoy holds 999 clusters")


EXERCISES = [
    Exercise(
        "7.1", N_("One cluster changed, one cluster sent"),
        N_("Starting from version 2 (cluster_0500 at 2 s), write the snapshot in which cluster_0042's connect "
           "timeout is 2 s as well. The check puts version 2 back on your Delta Envoy, pushes your snapshot and "
           "reads what the CDS response carried."),
        _check_changed,
        placeholder="changed = None  # version 2, with cluster_0042 at 2 s",
        solution='changed = thousand_clusters(lab.next_version(), timeouts={"cluster_0500": 2.0, "cluster_0042": 2.0})',
        answers=("changed",),
        mistakes=(
            'changed = thousand_clusters(lab.next_version(), timeouts={"cluster_0042": 2.0})',  # 0500 back to 5 s
            'changed = thousand_clusters(lab.next_version(), timeouts={"cluster_0500": 2.0})',  # nothing changed
            'changed = thousand_clusters(lab.next_version(), timeouts={"cluster_0500": 2.0, "cluster_0042": 2.0},\n'
            '                            without=["cluster_0001"])',
        ),
        given=GIVEN,
        lab_options=LAB_OPTIONS,
        docs=(f"{DOCS}/api-docs/xds_protocol#incremental-xds",),
    ),
    Exercise(
        "7.2", N_("A removal, by name"),
        N_("Starting from version 2, write the snapshot without cluster_0999. The check puts version 2 back on "
           "your Delta Envoy, pushes your snapshot and reads what the CDS response carried and removed."),
        _check_removed,
        placeholder="smaller = None  # version 2 without cluster_0999",
        solution='smaller = thousand_clusters(lab.next_version(), timeouts={"cluster_0500": 2.0}, without=["cluster_0999"])',
        answers=("smaller",),
        mistakes=(
            'smaller = thousand_clusters(lab.next_version(), timeouts={"cluster_0500": 2.0},\n'
            '                            without=["cluster_0998", "cluster_0999"])',
            'smaller = thousand_clusters(lab.next_version(), without=["cluster_0999"])',  # 0500 back to 5 s
        ),
        given=GIVEN,
        lab_options=LAB_OPTIONS,
        docs=(f"{DOCS}/api-docs/xds_protocol#deleting-resources",),
    ),
]
