"""Lesson 9, ordering and warming: push one type at a time in an order that never fails a request,
then give a warming cluster and a warming listener what they wait for."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from ...envoy.config_dump import cluster_rows, listener_rows, warming_clusters
from ...i18n import N_, _
from ...lab.traffic import send
from ...xds.builders import cluster, http_listener, load_assignment, route_configuration
from ...xds.resource_types import ENDPOINT, ROUTE, short_name
from ...xds.snapshot import ConsistencyError, Snapshot, staged
from ...xds.tracking import PushRejected, PushTimeout
from ..exercises import Exercise, Fail, Target
from .checks import envoy_hint, envoy_words, need, resource

__all__ = ["EXERCISES", "after_snapshot", "before_snapshot"]

DOCS = "https://www.envoyproxy.io/docs/envoy/v1.40.0"

#: What the lesson's first cells build: the sandbox on service1 ("before"), and the same with a
#: new EDS cluster service2 that local_route moves to ("after").
GIVEN = '''\
old_cluster = labxds.cluster("example_proxy_cluster", [lab.upstream("service1")], type="LOGICAL_DNS")
listener = labxds.http_listener("listener_0", lab.listener_port, "local_route",
                                address=lab.mode.listen_host, response_flags=True)
new_cluster = labxds.cluster("service2", type="EDS")
new_endpoints = labxds.load_assignment("service2", lab.endpoints("service2"))
before = labxds.Snapshot([old_cluster, labxds.route_configuration("local_route", "example_proxy_cluster"), listener],
                         version="before")
after = labxds.Snapshot([old_cluster, new_cluster, new_endpoints,
                         labxds.route_configuration("local_route", "service2"), listener], version="after")
lab.push(after)   # on a re-run, "after" first gives a cluster still warming from exercise 9.2 its endpoints
lab.push(before)
'''

#: Exercise 9.2 starts with service2 warming: an EDS cluster whose endpoints never came.
GIVEN_WARMING = GIVEN + '''\
waiting_cluster = labxds.cluster("service2", type="EDS", initial_fetch_timeout=0)  # 0: wait forever
stuck = labxds.Snapshot([old_cluster, waiting_cluster,
                         labxds.route_configuration("local_route", "example_proxy_cluster"), listener],
                        version="stuck", check=False)
lab.push(stuck, wait=False)
lab.wait_until(lambda: "warming" in set(lab.clusters(warming=True)["state"]), what="service2 warming")
'''

#: Exercise 9.3 starts with listener_1 warming: it names route_1, which never came.
GIVEN_LISTENER = GIVEN + '''\
lab.push(after)  # without listener_1 or listener_2: a re-run starts from here
lab.wait_until(lambda: not {"listener_1", "listener_2"} & set(lab.listeners()["name"]), what="old listeners gone")
spare = lab.spare_port(1)
listener_1 = labxds.http_listener("listener_1", spare, "route_1", address=lab.mode.listen_host,
                                  initial_fetch_timeout=0, response_flags=True)
lonely = labxds.Snapshot([*after.resources(labxds.CLUSTER).values(), *after.resources(labxds.ENDPOINT).values(),
                          *after.resources(labxds.ROUTE).values(), listener, listener_1],
                         version="lonely", check=False)
lab.push(lonely, wait=False)
lab.wait_until(lambda: "warming" in set(lab.listeners()["state"]), what="listener_1 warming")
'''


def before_snapshot(lab: Any) -> Snapshot:
    """The sandbox on service1, its listener showing Envoy's response flags (the lesson's "before")."""
    return Snapshot([_old_cluster(lab), route_configuration("local_route", "example_proxy_cluster"), _listener(lab)],
                    version="before")


def after_snapshot(lab: Any) -> Snapshot:
    """"before" plus the EDS cluster service2, local_route moved to it (the lesson's "after")."""
    return Snapshot([
        _old_cluster(lab), cluster("service2", type="EDS"), load_assignment("service2", lab.endpoints("service2")),
        route_configuration("local_route", "service2"), _listener(lab),
    ], version="after")


def _old_cluster(lab: Any) -> Any:
    return cluster("example_proxy_cluster", [lab.upstream("service1")], type="LOGICAL_DNS")


def _listener(lab: Any) -> Any:
    return http_listener("listener_0", lab.listener_port, "local_route", address=lab.mode.listen_host,
                         response_flags=True)


def _settle(lab: Any, snapshot: Snapshot, timeout: float = 5.0) -> None:
    """Wait until Envoy runs ``snapshot`` (everything sent is ACKed) or holds a cluster warming
    (whose CDS it ACKs only once warm)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if lab.cp.tracker.applied(lab.node_id, snapshot):
            return
        try:
            if warming_clusters(lab.admin):
                return
        except Exception:  # Envoy busy: look again
            pass
        time.sleep(0.05)


def _restore(lab: Any) -> None:
    """Back to "before", made before broken: service1 answers.

    Through "after" first: a cluster left warming (its endpoints never sent) holds its CDS
    response un-ACKed, and no new CDS can go out until it has warmed; "after" has its endpoints.
    """
    for snapshot in (after_snapshot(lab), before_snapshot(lab)):
        try:
            lab.push(snapshot, timeout=8)
        except (PushRejected, PushTimeout):
            pass


def _failures(url: str, n: int = 4) -> list[dict[str, Any]]:
    return [r for r in send(url, n) if r["status"] != 200]


def _why(row: dict[str, Any]) -> str:
    """A failed request in Envoy's terms: status and response flag."""
    if row["status"] is None:
        return str(row["error"])
    return f"{row['status']} {row['flags'] or ''}".strip()


def _flag_hint(flag: str | None, step: str) -> str:
    if flag == "NC":
        return _("503 with flag NC means the route named a cluster Envoy does not have, or has only "
                 "warming: after your {step} step local_route pointed at service2 before service2 was ready. "
                 "Which must come first: the route, or what the route points at?").format(step=step)
    if flag == "UH":
        return _("503 with flag UH: service2 exists but has no endpoints yet. A cluster needs its "
                 "load assignment (EDS) before traffic goes to it")
    return _("look at the failed answer's status and its x-lab-response-flags header: Envoy says why it failed")


def _check_order(t: Target, order: Any) -> str:
    hint = _('a list of the types to send one at a time, for example ["LDS", "RDS"]. The change adds the '
             'cluster service2 (CDS), its endpoints (EDS) and moves local_route to it (RDS): in which '
             'order can Envoy take them without failing a request?')
    need(order, "order", hint)
    if isinstance(order, (str, bytes)) or not isinstance(order, Iterable):
        raise Fail(_("order is a {kind}, not a list of types").format(kind=type(order).__name__), hint)
    names = [str(name).upper() for name in order]
    lab = t.own_lab()
    try:
        steps = staged(before_snapshot(lab), after_snapshot(lab), names)
    except ValueError as exc:
        raise Fail(_("this order cannot make the change: {problem}").format(problem=exc), hint) from None
    _restore(lab)
    try:
        for name, step in zip(names, steps):
            lab.push(step, wait=False)
            _settle(lab, step)
            failed = _failures(lab.listener_url)
            if failed:
                raise Fail(_("after your {step} step, {n} of 4 requests failed: {why}").format(
                    step=name, n=len(failed), why=_why(failed[0])), _flag_hint(failed[0]["flags"], name))
        served = t.served(3)
        if set(served) != {"service2"}:
            raise Fail(_("after your last step, requests are answered by {who}").format(who=", ".join(sorted(set(served)))),
                       _("the change is done when local_route sends traffic to service2: is RDS in your order?"))
    finally:
        _restore(lab)
    return _("one type at a time, {order}: every request was answered at every step, and service2 "
             "served at the end").format(order=" → ".join(names))


def _current(lab: Any) -> Snapshot:
    snap = lab.cp.snapshot(lab.node_id) if lab.node_id else lab.cp.snapshot()
    if snap is None:
        raise Fail(_("your control plane serves no snapshot"), _("run the lesson's cells from the start of this part"))
    return snap


def _with(snap: Snapshot, extra: Any, *, route: Any = None) -> list[Any]:
    """``snap``'s resources, with ``extra`` (and ``route``) replacing those of the same type and name."""
    replaced = {(_type(extra), _name(extra))}
    if route is not None:
        replaced.add((ROUTE, route.name))
    out = [r for url in snap.types for name, r in snap.resources(url).items() if (url, name) not in replaced]
    return [*out, extra, *([route] if route is not None else [])]


def _type(msg: Any) -> str:
    return "type.googleapis.com/" + msg.DESCRIPTOR.full_name


def _name(msg: Any) -> str:
    return str(getattr(msg, "cluster_name", "") or getattr(msg, "name", ""))


def _push(lab: Any, resources: list[Any], what: str) -> Snapshot:
    try:
        snap = Snapshot(resources, version=lab.next_version())
    except ConsistencyError as exc:
        raise Fail(_("{what} does not fit the snapshot: {problems}").format(what=what, problems="; ".join(exc.problems)),
                   _("a route names clusters the snapshot has: check the names")) from None
    try:
        lab.push(snap, timeout=8)
    except PushRejected as exc:
        (_node, url), text = next(iter(exc.errors.items()))
        raise Fail(_("Envoy rejected {what} (a NACK for {type}): {words}").format(
            what=what, type=short_name(url), words=envoy_words(text)),
            envoy_hint(text, _("read Envoy's words: they name the field it could not accept"))) from None
    except PushTimeout:
        raise Fail(_("Envoy did not take {what} within 8 s").format(what=what),
                   _("is something else still warming? lab.clusters(warming=True) and lab.listeners() show it")) from None
    return snap


def _check_endpoints(t: Target, endpoints: Any) -> str:
    hint = _('labxds.load_assignment(cluster_name, addresses): the name Envoy asked for, and where service2 '
             'runs (lab.endpoints("service2"))')
    cla = resource(endpoints, ENDPOINT, "endpoints", hint)
    if cla.cluster_name != "service2":
        raise Fail(_("your load assignment is for '{name}'").format(name=cla.cluster_name),
                   _("Envoy asked for the endpoints of 'service2' (its EDS request names it, see the trace): "
                     "the cluster_name must match"))
    lab = t.own_lab()
    found = {(e.endpoint.address.socket_address.address, e.endpoint.address.socket_address.port_value)
             for group in cla.endpoints for e in group.lb_endpoints}  # fmt: skip
    if not found:
        raise Fail(_("your load assignment lists no endpoint"),
                   _("service2 would leave warming with nowhere to send traffic (503, flag UH): list its address"))
    wanted = set(lab.endpoints("service2"))
    if found != wanted:
        others = {name: set(lab.endpoints(name)) for name in getattr(lab, "service_counts", {})}
        whose = next((name for name, eps in others.items() if found <= eps), None)
        where = ", ".join(f"{h}:{p}" for h, p in sorted(found))
        raise Fail(_("your endpoints are {where}, which is {who}").format(where=where, who=whose or _("no service of the lab")),
                   _('service2 runs at lab.endpoints("service2")'))
    if not _waited(lambda: "service2" in warming_clusters(lab.admin) or "service2" in {r["name"] for r in cluster_rows(lab.admin)},
                   timeout=3):
        raise Fail(_("Envoy has no cluster service2, warming or not"), _("run the cell before the exercise: it pushes the waiting cluster"))
    snap = _current(lab)
    _push(lab, _with(snap, cla, route=route_configuration("local_route", "service2")), _("your load assignment"))
    if not _waited(lambda: "service2" not in warming_clusters(lab.admin)):
        raise Fail(_("service2 is still warming"), hint)
    active = {r["name"] for r in cluster_rows(lab.admin)}
    if "service2" not in active:
        raise Fail(_("service2 is not among Envoy's active clusters"), hint)
    served = t.served(3)
    if set(served) != {"service2"}:
        raise Fail(_("with local_route on service2, requests were answered by {who}").format(who=", ".join(sorted(set(served)))),
                   hint)
    return _("service2 left dynamic_warming_clusters: Envoy ACKed the cluster once its endpoints came, and "
             "service2 answers")


def _waited(condition: Any, timeout: float = 5.0) -> bool:
    """Whether ``condition()`` came true within ``timeout`` seconds (Envoy applies a moment after it ACKs)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if condition():
                return True
        except Exception:  # Envoy busy: look again
            pass
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)


def _listener_port(lab: Any, name: str) -> int | None:
    for row in listener_rows(lab.admin):
        if row["name"] == name and row["port"]:
            return int(row["port"])
    return None


def _check_route_1(t: Target, route_1: Any) -> str:
    hint = _('labxds.route_configuration(name, cluster): the name listener_1 waits for, and the cluster '
             'that runs service2')
    route = resource(route_1, ROUTE, "route_1", hint)
    if route.name != "route_1":
        raise Fail(_("your route configuration is named '{name}'").format(name=route.name),
                   _("listener_1 asks for 'route_1' over RDS (see its rds.route_config_name, or the trace): name it so"))
    lab = t.own_lab()
    port = _listener_port(lab, "listener_1")
    if port is None and _waited(lambda: _listener_port(lab, "listener_1"), timeout=3):
        port = _listener_port(lab, "listener_1")
    if port is None:
        raise Fail(_("Envoy has no listener_1, warming or not"), _("run the cell before the exercise: it pushes listener_1"))
    _push(lab, _with(_current(lab), route), _("your route configuration"))
    url = f"http://{lab.mode.envoy_host}:{port}"
    if not _waited(lambda: any(r["name"] == "listener_1" and r["state"] == "active" for r in listener_rows(lab.admin))):
        raise Fail(_("listener_1 is still warming"), hint)
    rows = send(url, 3)
    served = {str(r["served_by"]) if r["served_by"] else _why(r) for r in rows}
    if served != {"service2"}:
        raise Fail(_("listener_1 is active, but its requests were answered by {who}").format(who=", ".join(sorted(served))),
                   _("route_1 should send traffic to the cluster service2"))
    return _("listener_1 stopped warming once route_1 came, and answers on port {port}: service2").format(port=port)


EXERCISES = [
    Exercise(
        "9.1", N_("An order that never fails a request"),
        N_("Write the order in which to send the three changes (CDS, EDS, RDS) one type at a time. The check "
        "pushes them on your Envoy in that order, without the control plane's make-before-break, and sends "
        "requests after each step."),
        _check_order,
        placeholder="order = None  # a list such as [\"LDS\", \"RDS\"]",
        solution='order = ["CDS", "EDS", "RDS"]',
        answers=("order",),
        mistakes=(
            'order = ["RDS", "CDS", "EDS"]',  # the route first: 503 NC
            'order = ["CDS", "RDS", "EDS"]',  # the route while service2 warms: 503 NC
            'order = ["CDS", "RDS"]',  # the endpoints left out
            'order = "CDS, EDS, RDS"',  # a string
        ),
        given=GIVEN,
        docs=(f"{DOCS}/api-docs/xds_protocol#eventual-consistency-considerations",
              f"{DOCS}/intro/arch_overview/upstream/cluster_manager#cluster-warming"),
    ),
    Exercise(
        "9.2", N_("Give the warming cluster what it waits for"),
        N_("service2 sits in dynamic_warming_clusters: Envoy asked for its endpoints and got none. Write its "
        "ClusterLoadAssignment. The check adds it to your snapshot, moves local_route to service2, pushes, "
        "and sends requests."),
        _check_endpoints,
        placeholder="endpoints = None  # the ClusterLoadAssignment service2 waits for",
        solution='endpoints = labxds.load_assignment("service2", lab.endpoints("service2"))',
        answers=("endpoints",),
        mistakes=(
            'endpoints = labxds.load_assignment("example_proxy_cluster", lab.endpoints("service2"))',
            'endpoints = labxds.load_assignment("service2", lab.endpoints("service1"))',
            'endpoints = labxds.load_assignment("service2", [])',
            'endpoints = labxds.cluster("service2", type="EDS")',
        ),
        given=GIVEN_WARMING,
        docs=(f"{DOCS}/api-v3/config/endpoint/v3/endpoint.proto",
              f"{DOCS}/intro/arch_overview/upstream/cluster_manager#cluster-warming"),
    ),
    Exercise(
        "9.3", N_("Give the warming listener its routes"),
        N_("listener_1 is warming: it names the route configuration route_1, which nobody sent. Write route_1, "
        "sending everything to service2. The check adds it to your snapshot, pushes, and sends requests to "
        "listener_1's port."),
        _check_route_1,
        placeholder="route_1 = None  # the RouteConfiguration listener_1 waits for",
        solution='route_1 = labxds.route_configuration("route_1", "service2")',
        answers=("route_1",),
        mistakes=(
            'route_1 = labxds.route_configuration("local_route", "service2")',
            'route_1 = labxds.route_configuration("route_1", "example_proxy_cluster")',
            'route_1 = labxds.route_configuration("route_1", "servce2")',
        ),
        given=GIVEN_LISTENER,
        docs=(f"{DOCS}/configuration/listeners/lds#config-listeners-lds",
              f"{DOCS}/api-v3/config/route/v3/route.proto"),
    ),
]
