"""Lesson 5, load balancing: endpoints over EDS for three instances, then weights."""

from __future__ import annotations

from collections import Counter
from typing import Any

from ...envoy.config_dump import endpoint_rows
from ...i18n import N_, _
from ...lab.traffic import send
from ...xds.builders import cluster, http_listener, route_configuration
from ...xds.resource_types import ENDPOINT
from ..exercises import Exercise, Fail, Target
from .checks import push, resource

__all__ = ["EXERCISES", "UPSTREAM_HEADER", "lesson_resources"]

DOCS = "https://www.envoyproxy.io/docs/envoy/v1.40.0"

#: The response header the lesson's route adds: the address of the endpoint that answered.
UPSTREAM_HEADER = "x-upstream"
LAB_OPTIONS = {"services": {"service1": 3, "service2": 1}}

GIVEN = '''\
endpoints = lab.endpoints("service1")
'''


def lesson_resources(lab: Any, assignment: Any, policy: str = "ROUND_ROBIN") -> list[Any]:
    """The EDS cluster service1, ``assignment`` as its endpoints, a route that says which endpoint
    answered, and the sandbox's listener."""
    return [
        cluster("service1", type="EDS", lb_policy=policy),
        assignment,
        route_configuration("local_route", "service1", response_headers={UPSTREAM_HEADER: "%UPSTREAM_REMOTE_ADDRESS%"}),
        http_listener("listener_0", lab.listener_port, "local_route", address=lab.mode.listen_host),
    ]


def _addresses(cla: Any) -> list[tuple[str, int, int]]:
    """(host, port, weight) of each endpoint of a ClusterLoadAssignment, weight 1 when unset."""
    return [(e.endpoint.address.socket_address.address, e.endpoint.address.socket_address.port_value,
             e.load_balancing_weight.value if e.HasField("load_balancing_weight") else 1)
            for group in cla.endpoints for e in group.lb_endpoints]  # fmt: skip


def _assignment(t: Target, answer: Any, name: str, hint: str) -> tuple[Any, list[tuple[str, int, int]]]:
    """The learner's ClusterLoadAssignment for service1, its endpoints checked against the lab's."""
    cla = resource(answer, ENDPOINT, name, hint)
    if cla.cluster_name != "service1":
        raise Fail(_("your load assignment is for '{name}'").format(name=cla.cluster_name),
                   _("the EDS cluster is named service1, and it asks Envoy for the endpoints of 'service1'"))
    lab = t.own_lab()
    wanted = {f"{h}:{p}" for h, p in lab.endpoints("service1")}
    given = _addresses(cla)
    found = {f"{h}:{p}" for h, p, _w in given}
    if not found:
        raise Fail(_("your load assignment lists no endpoint"), hint)
    strangers = sorted(found - wanted)
    if strangers:
        raise Fail(_("{where} is not an instance of service1").format(where=", ".join(strangers)),
                   _('the instances of service1 are lab.endpoints("service1")'))
    return cla, given


def _spread(t: Target, n: int) -> Counter[str]:
    """Who answered ``n`` requests, by endpoint address (failures by their error)."""
    rows = send(t.listener_url, n, response_headers=[UPSTREAM_HEADER])
    return Counter(str(r[UPSTREAM_HEADER] or r["error"] or r["status"]) for r in rows)


def _envoy_endpoints(t: Target) -> dict[str, int]:
    """The endpoints of service1 as Envoy holds them: "host:port" -> weight."""
    lab = t.own_lab()
    return {f"{r['address']}:{r['port']}": int(r["weight"]) for r in endpoint_rows(lab.admin, "service1")}


def _check_three(t: Target, assignment: Any) -> str:
    hint = _('labxds.load_assignment("service1", endpoints): the cluster\'s name, and the addresses of the three '
             'instances (endpoints = lab.endpoints("service1"))')
    cla, given = _assignment(t, assignment, "assignment", hint)
    lab = t.own_lab()
    missing = sorted({f"{h}:{p}" for h, p in lab.endpoints("service1")} - {f"{h}:{p}" for h, p, _w in given})
    if missing:
        raise Fail(_("your load assignment leaves out {where}").format(where=", ".join(missing)),
                   _("list all three instances: traffic goes only to the endpoints Envoy knows"))
    push(t, lesson_resources(lab, cla), what=_("your load assignment"))
    held = _envoy_endpoints(t)
    if set(held) != {f"{h}:{p}" for h, p, _w in given}:
        raise Fail(_("Envoy holds {held} for service1").format(held=", ".join(sorted(held)) or _("no endpoint")), hint)
    spread = _spread(t, 30)
    if set(spread) != set(held):
        raise Fail(_("30 requests were answered by: {who}").format(who=", ".join(f"{k} ({v})" for k, v in sorted(spread.items()))),
                   _("every instance should answer some: are they all running?"))
    if max(spread.values()) - min(spread.values()) > 1:
        raise Fail(_("round robin should share 30 requests 10/10/10, not {split}").format(
            split="/".join(str(v) for v in spread.values())),
            _("give every endpoint the same weight (or none): round robin then takes them in turn"))
    return _("Envoy got your 3 endpoints over EDS, and round robin shared 30 requests {split}").format(
        split="/".join(str(v) for v in spread.values()))


def _check_weights(t: Target, weighted: Any) -> str:
    hint = _("labxds.load_assignment(\"service1\", [(host, port, weight), ...]): a weight per endpoint; "
             "Envoy shares traffic in proportion to the weights")
    cla, given = _assignment(t, weighted, "weighted", hint)
    lab = t.own_lab()
    third = "{}:{}".format(*lab.endpoints("service1")[2])
    weights = {f"{h}:{p}": w for h, p, w in given}
    if len(weights) != 3:
        raise Fail(_("your load assignment has {n} endpoint(s), not the three instances").format(n=len(weights)), hint)
    push(t, lesson_resources(lab, cla), what=_("your weighted load assignment"))
    held = _envoy_endpoints(t)
    spread = _spread(t, 100)
    got = spread.get(third, 0)
    if not 44 <= got <= 56:
        shares = ", ".join(_("{where}: weight {weight}, {n} requests").format(where=k, weight=held.get(k, "?"), n=v)
                           for k, v in sorted(spread.items()))
        raise Fail(_("instance #3 ({where}) answered {n} of 100 requests ({shares})").format(
            where=third, n=got, shares=shares),
            _("weights are relative: #3's weight must equal the other two together (for example 1, 1 and 2)"))
    return _("Envoy holds the weights {weights}; instance #3 answered {n} of 100 requests").format(
        weights=", ".join(str(held[k]) for k in sorted(held)), n=got)


EXERCISES = [
    Exercise(
        "5.1", N_("Endpoints for three instances"),
        N_("Write the ClusterLoadAssignment of the EDS cluster service1, with all three instances. The check pushes "
           "it with the cluster, a route and the listener, looks at the endpoints Envoy holds and sends 30 requests."),
        _check_three,
        placeholder="assignment = None  # the ClusterLoadAssignment of service1",
        solution='assignment = labxds.load_assignment("service1", endpoints)',
        answers=("assignment",),
        mistakes=(
            'assignment = labxds.load_assignment("service1", endpoints[:1])',  # one instance
            'assignment = labxds.load_assignment("example_proxy_cluster", endpoints)',  # another cluster's name
            'assignment = labxds.load_assignment("service1", lab.endpoints("service2"))',  # another service
            'assignment = labxds.cluster("service1", type="EDS")',  # a cluster, not its endpoints
        ),
        given=GIVEN,
        lab_options=LAB_OPTIONS,
        docs=(f"{DOCS}/api-v3/config/endpoint/v3/endpoint.proto",
              f"{DOCS}/intro/arch_overview/upstream/service_discovery#endpoint-discovery-service-eds"),
    ),
    Exercise(
        "5.2", N_("Half of the traffic to instance #3"),
        N_("Give the endpoints weights so that instance #3 (endpoints[2]) answers half of the requests and the "
           "other two a quarter each. The check pushes your load assignment and sends 100 requests."),
        _check_weights,
        placeholder="weighted = None  # service1's endpoints, with weights",
        solution='weighted = labxds.load_assignment("service1", [(*endpoints[0], 1), (*endpoints[1], 1), (*endpoints[2], 2)])',
        answers=("weighted",),
        mistakes=(
            'weighted = labxds.load_assignment("service1", endpoints)',  # no weights: a third each
            'weighted = labxds.load_assignment("service1", [(*endpoints[0], 1), (*endpoints[1], 1), (*endpoints[2], 4)])',
            'weighted = labxds.load_assignment("service1", [(*endpoints[2], 2)])',  # one endpoint
        ),
        given=GIVEN,
        lab_options=LAB_OPTIONS,
        docs=(f"{DOCS}/intro/arch_overview/upstream/load_balancing/load_balancers#weighted-round-robin",
              f"{DOCS}/api-v3/config/endpoint/v3/endpoint_components.proto"),
    ),
]
