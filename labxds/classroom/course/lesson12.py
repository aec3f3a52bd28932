"""Lesson 12, proxyless gRPC: the lab's control plane configures gRPC's own xDS client (a channel
to ``xds:///greeter`` in the notebook's kernel), with no Envoy in between."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from ...i18n import N_, _
from ...xds.builders import api_listener, cluster, load_assignment
from ...xds.messages import ResourceError, to_message
from ...xds.resource_types import LISTENER, ROUTE, short_name, type_url_of
from ...xds.snapshot import ConsistencyError, Snapshot
from ...xds.tracking import PushRejected, PushTimeout
from ..exercises import Exercise, Fail, Target
from .checks import envoy_words, resource

__all__ = ["EXERCISES", "GRPC_NODE", "GRPC_TARGET", "connect", "push_to_grpc", "wait_every_type"]

DOCS = "https://www.envoyproxy.io/docs/envoy/v1.40.0"
GRPC_TARGET = "greeter"
GRPC_NODE = "grpc-client"
ROUTE_NAME = "greeter-route"

GIVEN = '''\
backends = lab.grpc_backends(["alpha", "beta"])
client = lab.grpc_client("greeter", node_id="grpc-client")
'''


def connect(lab: Any) -> Any:
    """The lesson's gRPC client, its xDS stream open (gRPC opens it on the channel's first use)."""
    client = lab.grpc_client(GRPC_TARGET, GRPC_NODE)
    if GRPC_NODE not in lab.cp.nodes():
        client.connect()
        lab.cp.wait_for_node(GRPC_NODE, timeout=10)
    return client


def push_to_grpc(t: Target, resources: Iterable[Any], what: str) -> Snapshot:
    """Push to the gRPC client's node and wait for its ACK; its NACK is a Fail in gRPC's words."""
    lab = t.own_lab()
    try:
        snap = Snapshot(list(resources))
    except ConsistencyError as exc:
        raise Fail(_("{what} does not fit together: {problems}").format(what=what, problems="; ".join(exc.problems)),
                   _("the listener names its route configuration, the route its cluster, the endpoints their "
                     "cluster: check the names match"))  # fmt: skip
    # Served before the client's stream opens, so its first request finds its resources.
    lab.cp.set_snapshot(snap, node=GRPC_NODE)
    connect(lab)
    try:
        lab.cp.push(snap, node=GRPC_NODE, nodes=[GRPC_NODE], timeout=4)
        wait_every_type(lab, snap, timeout=4)
    except PushRejected as exc:
        (_node, url), text = next(iter(exc.errors.items()))
        raise Fail(_("gRPC's xDS client rejected {what} (a NACK for {type}): {words}").format(
            what=what, type=short_name(url), words=envoy_words(text)),
            _("gRPC implements part of Envoy's API: a client listener is an api_listener; load balancing is "
              "round robin, ring hash, least request, ... (no MAGLEV, no RANDOM)")) from None  # fmt: skip
    except PushTimeout:
        # gRPC ACKs a resource it can parse but not use, asks for nothing more, and fails its calls:
        # its own error says why.
        call = lab.grpc_client(GRPC_TARGET, GRPC_NODE).call(1, timeout=1, wait_for_ready=False)[0]
        detail = (_("the gRPC client did not take {what} in full within 4 s: its calls fail with {error}").format(
            what=what, error=call["error"]) if call["error"]
            else _("the gRPC client did not take {what} in full within 4 s").format(what=what))
        raise Fail(detail, _("a client's Listener is an api_listener (labxds.api_listener), which names the route "
                             "configuration; gRPC asks for what that names, step by step")) from None  # fmt: skip
    return snap


def wait_every_type(lab: Any, snap: Snapshot, *, timeout: float) -> None:
    """Until the gRPC client has answered every type of ``snap``: it asks for clusters only after
    it has the routes naming them, so an ACK of the routes does not mean it has them all. A NACK
    raises PushRejected, as a push does; silence, PushTimeout."""
    deadline = time.monotonic() + timeout
    while True:
        node = lab.cp.node_status(GRPC_NODE)
        types = node.types if node is not None else {}
        for url, version in snap.versions.items():
            st = types.get(url)
            if st is not None and st.nacked_version == version:
                raise PushRejected({(GRPC_NODE, url): st.nack_error or ""})
        if all(url in types and types[url].acked_version == v for url, v in snap.versions.items()):
            return
        if time.monotonic() > deadline:
            raise PushTimeout([GRPC_NODE], timeout)
        time.sleep(0.02)


def _calls(t: Target, n: int) -> list[str]:
    client = t.own_lab().grpc_client(GRPC_TARGET, GRPC_NODE)
    return [str(r["served_by"] or r["error"]) for r in client.call(n, timeout=3)]


# -- 12.1 ---------------------------------------------------------------------------------------

#: Hints: the answer in code, with the words around it in the learner's language (translated where used).
_RESOURCES_HINT = N_('a list of the four, each naming the next: [labxds.api_listener("greeter", "greeter-route"), '
                     'labxds.route_configuration("greeter-route", "greeter-cluster"), labxds.cluster("greeter-cluster"), '
                     'labxds.load_assignment("greeter-cluster", backends.endpoints("alpha"))]')


def _check_resources(t: Target, grpc_resources: Any) -> str:
    if grpc_resources is None:
        raise Fail(_("grpc_resources is still None: the exercise is not done yet"), _(_RESOURCES_HINT))
    if isinstance(grpc_resources, Snapshot):
        items = [m for url in grpc_resources.versions for m in grpc_resources.resources(url).values()]
    elif isinstance(grpc_resources, (list, tuple)):
        items = list(grpc_resources)
    else:
        raise Fail(_("grpc_resources is a {kind}: give a list of the four resources").format(
            kind=type(grpc_resources).__name__), _(_RESOURCES_HINT))
    listeners = [m for m in items if _type(m) == LISTENER]
    if not any(getattr(m, "name", None) == GRPC_TARGET for m in listeners):
        raise Fail(_("there is no Listener named 'greeter'"),
                   _("the channel's target is xds:///greeter: gRPC asks the control plane for the Listener "
                     "'greeter'"))
    snap = push_to_grpc(t, items, _("your resources"))
    lab = t.own_lab()
    alpha = f"{lab.grpc.endpoints('alpha')[0][0]}:{lab.grpc.endpoints('alpha')[0][1]}" if lab.grpc else "alpha"
    try:
        lab.grpc_client(GRPC_TARGET, GRPC_NODE).wait_for("alpha", timeout=5)
    except TimeoutError as exc:
        raise Fail(_("gRPC ACKed your resources, but calls are not answered by alpha: {error}").format(error=exc),
                   _("the endpoints must be alpha's ({address}): backends.endpoints('alpha')").format(
                       address=alpha)) from None
    answers = _calls(t, 6)
    if set(answers) != {"alpha"}:
        raise Fail(_("6 calls were answered by {who}").format(who=", ".join(sorted(set(answers)))),
                   _("send every call to alpha"))
    asked: dict[tuple[str, str], None] = {}  # in the order gRPC first asked
    for e in lab.cp.trace(GRPC_NODE):
        if e["direction"] == "received" and e["kind"] == "request" and e["resources"]:
            asked.setdefault((e["type"], e["resources"]), None)
    chain = " -> ".join(f"{kind} {names}" for kind, names in asked)
    return _("gRPC ACKed version {version}... of your routes and 6 of 6 calls reached alpha directly; it asked "
             "for: {chain}").format(version=snap.version(ROUTE)[:8], chain=chain)


def _type(item: Any) -> str:
    try:
        return type_url_of(to_message(item))
    except (ResourceError, ValueError, TypeError):
        return ""


# -- 12.2 ---------------------------------------------------------------------------------------

_CANARY_HINT = N_('a route configuration with weighted clusters, named as the Listener asks: '
                  'labxds.route_configuration("greeter-route", weights={"alpha": 75, "beta": 25})')


def _clusters(lab: Any) -> list[Any]:
    fleet = lab.grpc_backends(["alpha", "beta"])
    return [m for name in ("alpha", "beta")
            for m in (cluster(name), load_assignment(name, fleet.endpoints(name)))]  # fmt: skip


def _check_canary(t: Target, canary_route: Any) -> str:
    route = resource(canary_route, ROUTE, "canary_route", _(_CANARY_HINT))
    if route.name != ROUTE_NAME:
        raise Fail(_("your route configuration is named '{name}'").format(name=route.name),
                   _("the Listener 'greeter' asks for '{route}': give yours that name").format(route=ROUTE_NAME))
    lab = t.own_lab()
    push_to_grpc(t, [api_listener(GRPC_TARGET, ROUTE_NAME), route, *_clusters(lab)], _("your route"))
    client = lab.grpc_client(GRPC_TARGET, GRPC_NODE)
    for backend in ("alpha", "beta"):
        # Before counting: the first call picked for a backend waits for its new connection, which
        # on a busy machine can outlast a call's deadline. A route that never reaches it is judged
        # by the count below.
        try:
            client.wait_for(backend, timeout=2)
        except TimeoutError:
            pass
    answers = _calls(t, 200)
    errors = [a for a in answers if a not in ("alpha", "beta")]
    if errors:
        raise Fail(_("{failed} of 200 calls failed: {first}").format(failed=len(errors), first=errors[0]),
                   _("every cluster your route names must exist: alpha and beta"))
    beta = answers.count("beta") / len(answers)
    if not 0.13 <= beta <= 0.38:
        raise Fail(_("of 200 calls {share} went to beta").format(share=f"{beta:.0%}"),
                   _("weights are shares: alpha 75 and beta 25 sends about a quarter of the calls to beta"))
    return _("gRPC split 200 calls itself: {alpha} to alpha, {beta} to beta (asked 75/25)").format(
        alpha=f"{1 - beta:.0%}", beta=f"{beta:.0%}")


EXERCISES = [
    Exercise(
        "12.1", N_("What gRPC's xDS client asks for"),
        N_("Write the four resources that make xds:///greeter reach the backend alpha: the Listener greeter (an "
           "api_listener naming greeter-route), the route configuration greeter-route to the cluster "
           "greeter-cluster, that cluster (EDS) and its endpoints. The check pushes them to the gRPC client's "
           "node and calls it."),
        _check_resources,
        placeholder="grpc_resources = None  # a list: Listener greeter, its route, its cluster, the endpoints (alpha)",
        solution='''\
grpc_resources = [
    labxds.api_listener("greeter", "greeter-route"),
    labxds.route_configuration("greeter-route", "greeter-cluster"),
    labxds.cluster("greeter-cluster"),
    labxds.load_assignment("greeter-cluster", backends.endpoints("alpha")),
]''',
        answers=("grpc_resources",),
        mistakes=(
            # Envoy's kind of listener: an address and a filter chain, no api_listener
            'grpc_resources = [labxds.http_listener("greeter", 50051, "greeter-route"), '
            'labxds.route_configuration("greeter-route", "greeter-cluster"), labxds.cluster("greeter-cluster"), '
            'labxds.load_assignment("greeter-cluster", backends.endpoints("alpha"))]',
            # the channel names greeter, not greeter-listener
            'grpc_resources = [labxds.api_listener("greeter-listener", "greeter-route"), '
            'labxds.route_configuration("greeter-route", "greeter-cluster"), labxds.cluster("greeter-cluster"), '
            'labxds.load_assignment("greeter-cluster", backends.endpoints("alpha"))]',
            # a load balancing policy gRPC does not implement: it NACKs the cluster
            'grpc_resources = [labxds.api_listener("greeter", "greeter-route"), '
            'labxds.route_configuration("greeter-route", "greeter-cluster"), '
            'labxds.cluster("greeter-cluster", lb_policy="MAGLEV"), '
            'labxds.load_assignment("greeter-cluster", backends.endpoints("alpha"))]',
        ),
        given=GIVEN,
        docs=(f"{DOCS}/api-v3/config/listener/v3/api_listener.proto", f"{DOCS}/api-docs/xds_protocol"),
    ),
    Exercise(
        "12.2", N_("A canary, without a proxy"),
        N_("Write greeter-route so that 75 % of the calls go to the cluster alpha and 25 % to the cluster beta "
           "(both clusters and their endpoints are pushed for you). gRPC picks the cluster per call itself."),
        _check_canary,
        placeholder="canary_route = None  # greeter-route: weights alpha 75, beta 25",
        solution='canary_route = labxds.route_configuration("greeter-route", weights={"alpha": 75, "beta": 25})',
        answers=("canary_route",),
        mistakes=(
            'canary_route = labxds.route_configuration("greeter-route", weights={"alpha": 25, "beta": 75})',
            'canary_route = labxds.route_configuration("greeter-route", "alpha")',
        ),
        given=GIVEN,
        docs=(f"{DOCS}/api-v3/config/route/v3/route_components.proto#envoy-v3-api-msg-config-route-v3-weightedcluster",),
    ),
]
