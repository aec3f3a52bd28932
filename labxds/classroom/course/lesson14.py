"""Lesson 14, Delta in depth and resource TTLs: a removal sent as a removal, only what changed on
the wire, and a listener that lives only as long as the control plane keeps it alive."""

from __future__ import annotations

import itertools
from typing import Any

from ...i18n import N_, _
from ...xds.builders import SANDBOX_CLUSTER, SANDBOX_ROUTE, cluster, route_configuration
from ...xds.resource_types import CLUSTER, LISTENER
from ..exercises import Exercise, Fail, Target
from .checks import dynamic_clusters, expect_served, push, sandbox_cluster, sandbox_listener, snapshot
from .live import wait_until

__all__ = ["EXERCISES", "LAB_OPTIONS", "TTL_FEATURE"]

DOCS = "https://www.envoyproxy.io/docs/envoy/v1.40.0"
TTL_FEATURE = "xds.config.supports-resource-ttl"
#: The lesson's lab: Envoy on Delta xDS, announcing that it supports resource TTLs.
LAB_OPTIONS = {"delta": True, "client_features": [TTL_FEATURE]}
_RUNS = itertools.count(1)

GIVEN = '''\
from labxds.net.addresses import free_port

stable = labxds.cluster("example_proxy_cluster", [lab.upstream("service1")], type="LOGICAL_DNS")
canary = labxds.cluster("canary", [lab.upstream("service2")], type="STATIC")
listener = labxds.http_listener("listener_0", lab.listener_port, "local_route", address=lab.mode.listen_host)
with_canary = labxds.Snapshot([
    stable, canary, listener,
    labxds.route_configuration("local_route", routes={"/canary": "canary", "/": "example_proxy_cluster"}),
])
promo_port = free_port(lab.mode.listen_host)
'''


def _delta_lab(t: Target) -> Any:
    lab = t.own_lab()
    if not getattr(lab, "delta", False):
        raise Fail(_("your lab speaks State of the World: this exercise watches Delta xDS"),
                   _("start the lesson's lab: labxds.Lab(delta=True, client_features=[TTL_FEATURE]).start()"))
    return lab


def _with_canary(t: Target) -> list[Any]:
    lab = t.own_lab()
    return [sandbox_cluster(t), cluster("canary", [lab.upstream("service2")], type="STATIC"), sandbox_listener(t),
            route_configuration(SANDBOX_ROUTE, routes={"/canary": "canary", "/": SANDBOX_CLUSTER})]  # fmt: skip


# -- 14.1 ---------------------------------------------------------------------------------------

_REMOVE_HINT = ('labxds.Snapshot([stable, listener, labxds.route_configuration("local_route", '
                '"example_proxy_cluster")])')


def _check_removal(t: Target, without_canary: Any) -> str:
    lab = _delta_lab(t)
    snap = snapshot(without_canary, "without_canary", _("for example: {code}").format(code=_REMOVE_HINT))
    if "canary" in snap.names(CLUSTER):
        raise Fail(_("your snapshot still has the cluster canary"), _("leave it out: that is how a resource is removed"))
    push(t, _with_canary(t), version=f"canary-{next(_RUNS)}", what="the lesson's starting snapshot")
    mark = len(lab.cp.trace(lab.node_id))
    push(t, snap, what="your snapshot")
    later = lab.cp.trace(lab.node_id)[mark:]
    cds = [e for e in later if e["direction"] == "sent" and e["type"] == "CDS"]
    removal = [e for e in cds if "canary" in e["removed"].split(", ")]
    if not removal:
        raise Fail(_("the control plane sent Envoy no removal of canary"),
                   _("push the snapshot without the cluster canary: Delta then says removed_resources: [canary]"))
    resent = sorted({n for e in cds for n in e["resources"].split(", ") if n})
    if not wait_until(lambda: "canary" not in dynamic_clusters(t), 2.0):
        raise Fail(_("Envoy still holds the cluster canary"), _("push your snapshot (the check does it) and look again"))
    expect_served(t, "service1", hint=_("everything else still goes to example_proxy_cluster (service1)"))
    sent = (_("it sent {clusters} again").format(clusters=", ".join(resent)) if resent
            else _("no cluster was sent again"))
    return _("Envoy got a CDS response with removed_resources: [canary] and dropped the cluster; {sent}; GET / is "
             "still served by service1").format(sent=sent)


# -- 14.2 ---------------------------------------------------------------------------------------

_TTL_HINT = ('labxds.Snapshot([*without_canary resources, labxds.http_listener("promo", promo_port, "local_route", '
             'address=lab.mode.listen_host)], ttl={(labxds.LISTENER, "promo"): 2})')


def _check_ttl(t: Target, with_ttl: Any) -> str:
    lab = _delta_lab(t)
    example = _("for example: {code}").format(code=_TTL_HINT)
    snap = snapshot(with_ttl, "with_ttl", example)
    if "promo" not in snap.names(LISTENER):
        raise Fail(_("your snapshot has no listener named promo"), example)
    ttl = snap.ttl(LISTENER, "promo")
    if ttl is None:
        raise Fail(_("the listener promo has no TTL"),
                   _("for example: {code}").format(code='Snapshot([...], ttl={(labxds.LISTENER, "promo"): 2})'))
    if not 0.5 <= ttl <= 10:
        raise Fail(_("the listener promo lives {seconds} s").format(seconds=f"{ttl:g}"),
                   _("give it a TTL of a few seconds, e.g. 2"))
    forever = [f"{kind} {name}" for url, kind in ((LISTENER, "listener"), (CLUSTER, "cluster"))
               for name in sorted(snap.names(url)) if name != "promo" and snap.ttl(url, name) is not None]  # fmt: skip
    if forever:
        raise Fail(_("{resources} would expire too").format(resources=", ".join(forever)),
                   _("only promo gets a TTL: a TTL on everything means Envoy drops everything when the control "
                     "plane is away (a TTL for the listener promo alone, not ttl=2)"))
    mark = len(lab.cp.trace(lab.node_id))
    push(t, snap, what="your snapshot")
    promo: Any = snap.resources(LISTENER)["promo"]
    port = promo.address.socket_address.port_value
    url = f"http://{lab.mode.envoy_host}:{port}"
    if not wait_until(lambda: t.served(1, "/")[0] == "service1" and _served(url) == "service1", 3.0):
        raise Fail(_("the listener promo (port {port}) does not answer").format(port=port),
                   _("route it with local_route, like listener_0"))
    beats = wait_until(lambda: [e for e in lab.cp.trace(lab.node_id)[mark:] if e["kind"] == "heartbeat"],
                       ttl + 1.0)  # fmt: skip
    if not beats:
        raise Fail(_("no heartbeat within {seconds} s").format(seconds=f"{ttl + 1:g}"),
                   _("heartbeats go only to an Envoy whose bootstrap lists {feature}: use the lesson's lab").format(
                       feature=TTL_FEATURE))
    named = sorted({n for e in beats for n in e["resources"].split(", ") if n})
    return _("Envoy serves promo on port {port} with a {seconds} s TTL; the control plane keeps it alive with "
             "heartbeats ({beats} so far, naming {names}); listener_0 has no TTL").format(
        port=port, seconds=f"{ttl:g}", beats=len(beats), names=", ".join(named))


def _served(url: str) -> str | None:
    from ...lab.traffic import send

    return send(url, 1)[0]["served_by"]


EXERCISES = [
    Exercise(
        "14.1", N_("A removal, Delta style"),
        N_("Write the snapshot without the cluster canary (and without the route that uses it). With Delta the "
           "control plane tells Envoy only what changed: the check pushes the lesson's snapshot, then yours, "
           "and reads the trace."),
        _check_removal,
        placeholder="without_canary = None  # a Snapshot: stable, listener and a local_route without /canary",
        solution='''\
without_canary = labxds.Snapshot([
    stable,
    listener,
    labxds.route_configuration("local_route", "example_proxy_cluster"),
])''',
        answers=("without_canary",),
        mistakes=(
            "without_canary = with_canary",  # nothing removed
            # the cluster gone, the route still naming it: the consistency check refuses it
            'without_canary = [stable, listener, labxds.route_configuration("local_route", '
            'routes={"/canary": "canary", "/": "example_proxy_cluster"})]',
        ),
        given=GIVEN,
        lab_options=LAB_OPTIONS,
        docs=(f"{DOCS}/api-docs/xds_protocol#incremental-xds", f"{DOCS}/api-docs/xds_protocol#deleting-resources"),
    ),
    Exercise(
        "14.2", N_("A listener with a TTL"),
        N_("Write a snapshot with a second listener, promo, on promo_port (routes from local_route), that lives "
           "2 s unless the control plane keeps it alive; nothing else gets a TTL. The check pushes it, calls promo "
           "and watches the heartbeats."),
        _check_ttl,
        placeholder='with_ttl = None  # a Snapshot: as without_canary, plus listener "promo" with a TTL of 2 s',
        solution='''\
promo = labxds.http_listener("promo", promo_port, "local_route", address=lab.mode.listen_host)
with_ttl = labxds.Snapshot(
    [stable, listener, promo, labxds.route_configuration("local_route", "example_proxy_cluster")],
    ttl={(labxds.LISTENER, "promo"): 2},
)''',
        answers=("with_ttl",),
        mistakes=(
            # a TTL on every resource
            'with_ttl = labxds.Snapshot([stable, listener, labxds.http_listener("promo", promo_port, "local_route", '
            'address=lab.mode.listen_host), labxds.route_configuration("local_route", "example_proxy_cluster")], '
            'ttl=2)',
            # the listener without a TTL
            'with_ttl = labxds.Snapshot([stable, listener, labxds.http_listener("promo", promo_port, "local_route", '
            'address=lab.mode.listen_host), labxds.route_configuration("local_route", "example_proxy_cluster")])',
        ),
        given=GIVEN,
        lab_options=LAB_OPTIONS,
        docs=(f"{DOCS}/api-docs/xds_protocol#ttl",),
    ),
]
