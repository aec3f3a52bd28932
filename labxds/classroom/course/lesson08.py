"""Lesson 8, traffic shifting: a 90/10 canary route, then a route that sends testers to the canary."""

from __future__ import annotations

from typing import Any

from ...envoy.config_dump import route_rows
from ...i18n import N_, _
from ...lab.traffic import send
from ...xds.builders import cluster, http_listener
from ...xds.resource_types import ROUTE
from ..exercises import Exercise, Fail, Target
from .checks import push, resource

__all__ = ["EXERCISES", "lesson_clusters"]

DOCS = "https://www.envoyproxy.io/docs/envoy/v1.40.0"

GIVEN = '''\
stable = labxds.cluster("service1", lab.endpoints("service1"), type="STRICT_DNS")
canary = labxds.cluster("service2", lab.endpoints("service2"), type="STRICT_DNS")
listener = labxds.http_listener("listener_0", lab.listener_port, "local_route", address=lab.mode.listen_host)
'''

HEADER_SOLUTION = '''\
header_route = {
    "@type": "type.googleapis.com/envoy.config.route.v3.RouteConfiguration",
    "name": "local_route",
    "virtual_hosts": [{
        "name": "local_service",
        "domains": ["*"],
        "routes": [
            {"match": {"prefix": "/", "headers": [{"name": "x-canary", "string_match": {"exact": "always"}}]},
             "route": {"cluster": "service2"}},
            {"match": {"prefix": "/"},
             "route": {"weighted_clusters": {"clusters": [{"name": "service1", "weight": 90},
                                                          {"name": "service2", "weight": 10}]}}},
        ],
    }],
}'''


def lesson_clusters(lab: Any) -> list[Any]:
    """The stable (service1) and canary (service2) clusters, every instance of each, and the listener."""
    return [
        cluster("service1", lab.endpoints("service1"), type="STRICT_DNS"),
        cluster("service2", lab.endpoints("service2"), type="STRICT_DNS"),
        http_listener("listener_0", lab.listener_port, "local_route", address=lab.mode.listen_host),
    ]


def _route(answer: Any, name: str, hint: str) -> Any:
    route = resource(answer, ROUTE, name, hint)
    if route.name != "local_route":
        raise Fail(_("your route configuration is named '{name}'").format(name=route.name),
                   _("listener_0 asks for 'local_route' over RDS: name it so"))
    return route


def _share(t: Target, n: int, headers: dict[str, str] | None = None) -> tuple[float, list[str]]:
    """The share of ``n`` requests service2 answered, and who else answered (failures included)."""
    rows = send(t.listener_url, n, headers=headers)
    served = [str(r["served_by"]) if r["served_by"] else f"({r['error'] or r['status']})" for r in rows]
    others = sorted(set(served) - {"service1", "service2"})
    return served.count("service2") / n, others


def _check_canary(t: Target, canary_route: Any) -> str:
    hint = _('labxds.route_configuration("local_route", weights={"service1": ..., "service2": ...}): the weights '
             "are shares of the traffic")
    route = _route(canary_route, "canary_route", hint)
    lab = t.own_lab()
    push(t, [*lesson_clusters(lab), route], what=_("your route"))
    splits = [str(r["cluster"]) for r in route_rows(lab.admin) if r["route_config"] == "local_route"]
    if not any("%" in s for s in splits):
        raise Fail(_("Envoy's local_route does not split: it sends / to {where}").format(where=", ".join(splits)), hint)
    share, others = _share(t, 200)
    if others:
        raise Fail(_("some requests were not answered by service1 or service2: {who}").format(who=", ".join(others)),
                   _("both clusters must be in the snapshot, with their endpoints"))
    if not 0.03 <= share <= 0.22:
        raise Fail(_("service2 answered {pct} of 200 requests; Envoy's route says: {split}").format(
            pct=f"{share:.0%}", split=splits[0]),
            _("the canary gets 10 %: weights 90 for service1 and 10 for service2"))
    return _("Envoy's route says {split}; of 200 requests service2 answered {pct}").format(split=splits[0], pct=f"{share:.0%}")


def _check_header(t: Target, header_route: Any) -> str:
    hint = _("two routes in local_route's virtual host, in this order: one that matches the header x-canary: "
             "always and goes to service2, then the 90/10 split for everybody else")
    route = _route(header_route, "header_route", hint)
    lab = t.own_lab()
    push(t, [*lesson_clusters(lab), route], what=_("your route"))
    testers, others = _share(t, 20, {"x-canary": "always"})
    if others:
        raise Fail(_("some requests were not answered by service1 or service2: {who}").format(who=", ".join(others)), hint)
    if testers != 1.0:
        raise Fail(_("with the header x-canary: always, service2 answered {pct} of 20 requests").format(pct=f"{testers:.0%}"),
                   _("Envoy takes the first route that matches: put the header route before the catch-all "
                     "split, and match the header's exact value, always"))
    everybody, others = _share(t, 200)
    if others or not 0.03 <= everybody <= 0.22:
        raise Fail(_("without the header, service2 answered {pct} of 200 requests").format(pct=f"{everybody:.0%}"),
                   _("everybody else keeps the 90/10 split: a second route, for the prefix /, with the weights"))
    return _("testers (x-canary: always) reach service2 20 times out of 20; everybody else: {pct} to "
             "service2").format(pct=f"{everybody:.0%}")


EXERCISES = [
    Exercise(
        "8.1", N_("A 90/10 canary"),
        N_("Write local_route so that 90 % of the requests go to service1 and 10 % to service2. The check pushes it "
           "with both clusters and the listener, and sends 200 requests."),
        _check_canary,
        placeholder="canary_route = None  # local_route, split 90/10",
        solution='canary_route = labxds.route_configuration("local_route", weights={"service1": 90, "service2": 10})',
        answers=("canary_route",),
        mistakes=(
            'canary_route = labxds.route_configuration("local_route", weights={"service1": 10, "service2": 90})',
            'canary_route = labxds.route_configuration("local_route", "service2")',
            'canary_route = labxds.route_configuration("canary", weights={"service1": 90, "service2": 10})',
        ),
        given=GIVEN,
        docs=(f"{DOCS}/configuration/http/http_conn_man/traffic_splitting",
              f"{DOCS}/api-v3/config/route/v3/route_components.proto#envoy-v3-api-msg-config-route-v3-weightedcluster"),
    ),
    Exercise(
        "8.2", N_("Testers always reach the canary"),
        N_("Write local_route (in Envoy's JSON form, as a dict) so that requests with the header x-canary: always "
           "always reach service2, and all other requests keep the 90/10 split. The check pushes it and sends "
           "requests with and without the header."),
        _check_header,
        placeholder="header_route = None  # local_route: x-canary: always -> service2, the rest 90/10",
        solution=HEADER_SOLUTION,
        answers=("header_route",),
        mistakes=(
            # the header route after the catch-all: it never matches
            HEADER_SOLUTION.replace('''            {"match": {"prefix": "/", "headers": [{"name": "x-canary", "string_match": {"exact": "always"}}]},
             "route": {"cluster": "service2"}},
            {"match": {"prefix": "/"},
             "route": {"weighted_clusters": {"clusters": [{"name": "service1", "weight": 90},
                                                          {"name": "service2", "weight": 10}]}}},''',
                                    '''            {"match": {"prefix": "/"},
             "route": {"weighted_clusters": {"clusters": [{"name": "service1", "weight": 90},
                                                          {"name": "service2", "weight": 10}]}}},
            {"match": {"prefix": "/", "headers": [{"name": "x-canary", "string_match": {"exact": "always"}}]},
             "route": {"cluster": "service2"}},'''),
            # everybody to service2
            'header_route = labxds.route_configuration("local_route", "service2")',
        ),
        given=GIVEN,
        docs=(f"{DOCS}/api-v3/config/route/v3/route_components.proto#envoy-v3-api-msg-config-route-v3-headermatcher",
              f"{DOCS}/intro/arch_overview/http/http_routing"),
    ),
]
