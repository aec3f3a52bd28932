"""Lesson 10, zero downtime: switch upstreams, add a route and replace a listener's filter chain
while traffic runs, and lose no request."""

from __future__ import annotations

import itertools
from typing import Any

from ...envoy import EnvoyAdmin
from ...i18n import N_, _
from ...envoy.config_dump import listener_rows
from ...xds.builders import SANDBOX_CLUSTER, SANDBOX_LISTENER, SANDBOX_ROUTE, cluster, route_configuration
from ...xds.resource_types import LISTENER, ROUTE
from ..exercises import Exercise, Fail, Target
from .checks import push, resource, sandbox_cluster, sandbox_listener, snapshot
from .live import no_failures, under_traffic

__all__ = ["EXERCISES"]

DOCS = "https://www.envoyproxy.io/docs/envoy/v1.40.0"
_RUNS = itertools.count(1)


def _baseline(t: Target, *extra: Any) -> None:
    """The sandbox on service1 (and ``extra`` resources), pushed with a version of its own: where
    every exercise of this lesson starts, however often its check runs."""
    push(t, [sandbox_cluster(t), route_configuration(SANDBOX_ROUTE, SANDBOX_CLUSTER), sandbox_listener(t), *extra],
         version=f"before-{next(_RUNS)}", what=_("the lesson's starting snapshot"))  # fmt: skip


def _served_after(run: Any) -> set[str]:
    """Who answered once the push had landed (from a quarter second after it)."""
    when = run.marks[-1][0] + 0.25
    return {str(r["served_by"]) for r in run.records(when) if not r["failure"]}


def _why_failed(snap: Any) -> Any:
    def hint(failures: dict[str, int]) -> str:
        if SANDBOX_LISTENER not in snap.names(LISTENER):
            return _("your snapshot has no listener_0. A snapshot is the whole state of the world: what it "
                     "leaves out, Envoy removes, and with the listener go its clients' connections")
        if any("refused" in reason for reason in failures):
            return _("the listener went away for a moment: keep listener_0, with the same name and port")
        return _("Envoy answered errors: does every route lead to a cluster that has endpoints?")
    return hint


# -- 10.1 ---------------------------------------------------------------------------------------

#: Hints in code, with the words around it in the learner's language (translated where used).
_SWITCH_HINT = N_('labxds.Snapshot([labxds.cluster("service2", lab.endpoints("service2"), type="STRICT_DNS"), '
                  'labxds.route_configuration("local_route", "service2"), listener_0 as before], version="2")')


def _check_switch(t: Target, switch: Any) -> str:
    snap = snapshot(switch, "switch", _(_SWITCH_HINT))
    _baseline(t)
    runs = under_traffic(t, lambda: push(t, snap, what=_("your snapshot")),
                         label=_("check {key}").format(key="10.1"))
    sent = no_failures(runs, _why_failed(snap))
    served = _served_after(runs[0])
    if served != {"service2"}:
        raise Fail(_("after your push, requests were answered by {who}").format(who=", ".join(sorted(served))),
                   _("route local_route to a cluster whose endpoints are service2's: lab.endpoints('service2')"))
    if SANDBOX_CLUSTER in snap.names("type.googleapis.com/envoy.config.cluster.v3.Cluster"):
        route: Any = snap.resources(ROUTE).get(SANDBOX_ROUTE)
        target = route.virtual_hosts[0].routes[0].route.cluster if route is not None else ""
        if target == SANDBOX_CLUSTER:
            raise Fail(_("service2 answers, but through example_proxy_cluster with a new endpoint"),
                       _("this exercise moves the route to a new cluster named service2 (make before break)"))
    return _("{sent} requests at 40/s, none failed; after your push every one was answered by service2").format(
        sent=sent)


# -- 10.2 ---------------------------------------------------------------------------------------

_ROUTES_HINT = N_('both routes, /api first (Envoy takes the first that matches): labxds.route_configuration('
                  '"local_route", routes={"/api": "service2", "/": "example_proxy_cluster"})')


def _service2_cluster(t: Target) -> Any:
    return cluster("service2", t.own_lab().endpoints("service2"), type="STRICT_DNS")


def _check_routes(t: Target, routes: Any) -> str:
    route = resource(routes, ROUTE, "routes", _(_ROUTES_HINT))
    if route.name != SANDBOX_ROUTE:
        raise Fail(_("your route configuration is named '{name}'").format(name=route.name),
                   _("listener_0 asks for '{route}' over RDS: give yours that name").format(route=SANDBOX_ROUTE))
    _baseline(t, _service2_cluster(t))
    resources = [sandbox_cluster(t), _service2_cluster(t), route, sandbox_listener(t)]
    runs = under_traffic(t, lambda: push(t, resources, what=_("your routes")), paths=("/", "/api"),
                         label=_("check {key}").format(key="10.2"))
    sent = no_failures(runs, lambda failures: (
        _("a 404 is Envoy finding no route: keep a route for '/' so everything else still has a way")
        if any(r.startswith("404") for r in failures)
        else _("every route must lead to a cluster that exists: example_proxy_cluster or service2")))
    root, api = (_served_after(run) for run in runs)
    if api != {"service2"}:
        raise Fail(_("after your push, GET /api was answered by {who}").format(who=", ".join(sorted(api))),
                   _("Envoy takes the first route that matches, and '/' matches everything: put /api first"))
    if root != {"service1"}:
        raise Fail(_("after your push, GET / was answered by {who}").format(who=", ".join(sorted(root))),
                   _("everything that is not /api stays on service1: a route for '/' to example_proxy_cluster"))
    return _("{sent} requests to / and /api, none failed; now /api -> service2, / -> service1").format(sent=sent)


# -- 10.3 ---------------------------------------------------------------------------------------

_LISTENER_HINT = N_('listener_0 as it is, with only a new stat_prefix: labxds.http_listener("listener_0", '
                    'lab.listener_port, "local_route", address=lab.mode.listen_host, stat_prefix="ingress")')
_REPLACED = "listener_manager.listener_in_place_updated|listener_manager.listener_modified"


def _replaced(admin: EnvoyAdmin) -> int:
    stats = admin.stats(_REPLACED)
    return stats.get("listener_manager.listener_in_place_updated", 0) + stats.get("listener_manager.listener_modified", 0)


def _check_listener(t: Target, listener_v2: Any) -> str:
    listener = resource(listener_v2, LISTENER, "listener_v2", _(_LISTENER_HINT))
    _baseline(t)
    lab = t.own_lab()
    with EnvoyAdmin(t.admin_url) as admin:
        before = _replaced(admin)
        snap_resources = [sandbox_cluster(t), route_configuration(SANDBOX_ROUTE, SANDBOX_CLUSTER), listener]
        runs = under_traffic(t, lambda: push(t, snap_resources, what=_("your listener")),
                             label=_("check {key}").format(key="10.3"))

        def hint(failures: dict[str, int]) -> str:
            if listener.name != SANDBOX_LISTENER:
                return _("your listener is named '{name}': a new name is a new listener, and listener_0 (with "
                         "its clients) goes away. Change listener_0 itself").format(name=listener.name)
            port = listener.address.socket_address.port_value
            if port != lab.listener_port:
                return _("your listener listens on port {port}, the clients on {theirs}: keep the port, change "
                         "only the filter chain").format(port=port, theirs=lab.listener_port)
            return _("keep listener_0's name, address and port; change only its stat_prefix")

        sent = no_failures(runs, hint)
        t.served(2)  # new connections, which the new filter chain takes (old ones may still drain)
        after = _replaced(admin)
        ingress = admin.stats(r"^http\.ingress\.downstream_rq_total$").get("http.ingress.downstream_rq_total", 0)
        active = [r for r in listener_rows(admin) if r["state"] == "active"]
    if after == before:
        raise Fail(_("Envoy kept its listener as it was: your listener_0 is the same as the running one"),
                   _('give it stat_prefix="ingress": a different filter chain, which Envoy swaps by draining the old'))
    if not ingress:
        raise Fail(_("Envoy replaced the listener, but no request was counted under http.ingress"),
                   _('the stat_prefix names the statistics: stat_prefix="ingress"'))
    names = sorted(f"{r['name']} :{r['port']}" for r in active)
    return _("{sent} requests, none failed; Envoy swapped listener_0's filter chain and drained the old one "
             "(listeners now: {listeners}; {ingress} requests counted as http.ingress)").format(
        sent=sent, listeners=", ".join(names), ingress=ingress)


EXERCISES = [
    Exercise(
        "10.1", N_("Switch upstreams under load"),
        N_("Write a snapshot that sends the sandbox's traffic to service2 through a new cluster named service2 "
           "(STRICT_DNS, its endpoints lab.endpoints('service2')), with local_route pointing at it and listener_0 "
           "as before. The check sends 40 requests a second, pushes your snapshot in the middle and counts "
           "the failures: the goal is none."),
        _check_switch,
        placeholder="switch = None  # a Snapshot: the cluster service2, local_route to it, listener_0",
        solution='''\
switch = labxds.Snapshot([
    labxds.cluster("service2", lab.endpoints("service2"), type="STRICT_DNS"),
    labxds.route_configuration("local_route", "service2"),
    labxds.http_listener("listener_0", lab.listener_port, "local_route", address=lab.mode.listen_host),
], version="2")''',
        answers=("switch",),
        mistakes=(
            # the listener left out: a snapshot is the whole state, Envoy removes it
            'switch = labxds.Snapshot([labxds.cluster("service2", lab.endpoints("service2"), type="STRICT_DNS"), '
            'labxds.route_configuration("local_route", "service2")], version="2")',
            # a new cluster with service1's endpoints
            'switch = labxds.Snapshot([labxds.cluster("service2", lab.endpoints("service1"), type="STRICT_DNS"), '
            'labxds.route_configuration("local_route", "service2"), labxds.http_listener("listener_0", '
            'lab.listener_port, "local_route", address=lab.mode.listen_host)], version="2")',
        ),
        docs=(f"{DOCS}/intro/arch_overview/operations/dynamic_configuration",
              f"{DOCS}/api-docs/xds_protocol#eventual-consistency-considerations"),
    ),
    Exercise(
        "10.2", N_("Add a route under load"),
        N_("Add a route: GET /api goes to the cluster service2, everything else stays on example_proxy_cluster "
           "(service1). Write local_route with both routes. The check pushes it with both clusters and "
           "listener_0 while requests go to / and /api, and counts the failures."),
        _check_routes,
        placeholder="routes = None  # local_route: /api to service2, / to example_proxy_cluster",
        solution='routes = labxds.route_configuration("local_route", routes={"/api": "service2", "/": '
                 '"example_proxy_cluster"})',
        answers=("routes",),
        mistakes=(
            'routes = labxds.route_configuration("local_route", routes={"/": "example_proxy_cluster", '
            '"/api": "service2"})',  # "/" first: it matches /api too
            'routes = labxds.route_configuration("local_route", routes={"/api": "service2"})',  # 404 for /
        ),
        docs=(f"{DOCS}/intro/arch_overview/http/http_routing", f"{DOCS}/api-v3/config/route/v3/route_components.proto"),
    ),
    Exercise(
        "10.3", N_("Replace listener_0's filter chain, drain the old one"),
        N_("Change listener_0 so that its HTTP statistics are named ingress (stat_prefix=\"ingress\"). Envoy "
           "applies a changed filter chain with a new one for new connections while the old one drains. "
           "The check pushes your listener under load, counts failures and reads Envoy's statistics."),
        _check_listener,
        placeholder='listener_v2 = None  # listener_0 again, with stat_prefix "ingress"',
        solution='listener_v2 = labxds.http_listener("listener_0", lab.listener_port, "local_route", '
                 'address=lab.mode.listen_host, stat_prefix="ingress")',
        answers=("listener_v2",),
        mistakes=(
            'listener_v2 = labxds.http_listener("listener_0", lab.listener_port, "local_route", '
            'address=lab.mode.listen_host)',  # unchanged
            'listener_v2 = labxds.http_listener("listener_0", lab.listener_port + 1, "local_route", '
            'address=lab.mode.listen_host, stat_prefix="ingress")',  # another port: the clients lose it
        ),
        docs=(f"{DOCS}/intro/arch_overview/operations/draining", f"{DOCS}/configuration/listeners/lds"),
    ),
]
