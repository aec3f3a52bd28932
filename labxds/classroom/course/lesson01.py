"""Lesson 1, setting up: read who Envoy is and what it knows, from its admin interface."""

from __future__ import annotations

from typing import Any

from ...i18n import N_, _
from ..exercises import Exercise, Fail, Target
from .checks import need

__all__ = ["EXERCISES"]

DOCS_ADMIN = "https://www.envoyproxy.io/docs/envoy/v1.40.0/operations/admin"


def _check_node_id(t: Target, node_id: Any) -> str:
    hint = _('ask Envoy: lab.admin.server_info() is /server_info as a dict; the id is under ["node"]["id"]')
    need(node_id, "node_id", hint)
    with t.admin() as admin:
        node = admin.server_info()["node"]
    if not isinstance(node_id, str):
        raise Fail(_("node_id is a {kind}, not a string").format(kind=type(node_id).__name__), hint)
    if node_id == node.get("cluster"):
        raise Fail(_("{value} is the node's cluster, not its id").format(value=repr(node_id)),
                   _('both are under ["node"]: take ["node"]["id"]'))  # fmt: skip
    if node_id != node.get("id"):
        raise Fail(_("your Envoy says its node id is not {value}").format(value=repr(node_id)), hint)
    lab = t.own_lab()
    if node_id not in lab.cp.nodes():
        raise Fail(_("no Envoy with node id {value} is connected to your control plane").format(value=repr(node_id)),
                   _("is the lab running? lab.start() starts it again"))  # fmt: skip
    return _("your Envoy is node {value}, and your control plane sees it connected").format(value=repr(node_id))


def _check_cluster_names(t: Target, cluster_names: Any) -> str:
    hint = _('read lab.admin.config_dump(): configs[1] holds the clusters; each entry of its '
             '"static_clusters" (and "dynamic_active_clusters", once there are some) has a cluster with a "name"')
    need(cluster_names, "cluster_names", hint)
    if isinstance(cluster_names, str) or not hasattr(cluster_names, "__iter__"):
        raise Fail(_("cluster_names is a {kind}, not a list of names").format(kind=type(cluster_names).__name__), hint)
    given = list(cluster_names)
    if not all(isinstance(n, str) for n in given):
        raise Fail(_("cluster_names holds things that are not names (strings): {kinds}").format(kinds=", ".join(
            sorted({type(n).__name__ for n in given if not isinstance(n, str)}))),
            _('take each entry\'s ["cluster"]["name"]'))
    with t.admin() as admin:
        dump = admin.config_dump(resource=None)
    real: list[str] = []
    for section in dump.get("configs", []):
        if section.get("@type", "").endswith("ClustersConfigDump"):
            for key in ("static_clusters", "dynamic_active_clusters", "dynamic_warming_clusters"):
                real.extend(entry["cluster"]["name"] for entry in section.get(key, []))
    extra = sorted(set(given) - set(real))
    missing = sorted(set(real) - set(given))
    if extra:
        raise Fail(_("Envoy knows no cluster named {names}").format(names=", ".join(extra)),
                   _("list what Envoy's /config_dump says now, not what the sandbox will have later"))
    if missing:
        raise Fail(_("Envoy also knows {names}").format(names=", ".join(missing)), hint)
    return _("Envoy knows {n} cluster(s): {names}").format(n=len(real), names=", ".join(real))


EXERCISES = [
    Exercise(
        "1.1", N_("Who is this Envoy?"),
        N_("Read your Envoy's node id from its admin interface (/server_info)."),
        _check_node_id,
        placeholder="node_id = None  # the node id your Envoy presents to the control plane",
        solution='node_id = lab.admin.server_info()["node"]["id"]',
        answers=("node_id",),
        mistakes=('node_id = lab.admin.server_info()["node"]["cluster"]', 'node_id = "my-envoy"'),
        docs=(f"{DOCS_ADMIN}#get--server_info",),
    ),
    Exercise(
        "1.2", N_("Which clusters does Envoy know?"),
        N_("From the raw /config_dump, list the names of every cluster Envoy knows right now."),
        _check_cluster_names,
        placeholder="cluster_names = None  # a list of the names of the clusters in /config_dump",
        solution=(
            'dump = lab.admin.config_dump()\n'
            'clusters = dump["configs"][1]\n'
            'cluster_names = [entry["cluster"]["name"] for entry in clusters.get("static_clusters", [])]\n'
            'cluster_names += [entry["cluster"]["name"] for entry in clusters.get("dynamic_active_clusters", [])]'
        ),
        answers=("cluster_names",),
        mistakes=('cluster_names = ["example_proxy_cluster"]', 'cluster_names = "xds_cluster"'),
        docs=(f"{DOCS_ADMIN}#get--config_dump",),
    ),
]
