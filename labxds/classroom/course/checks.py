"""What the course's checks share: reading a learner's answer, pushing it, reading what Envoy runs.

A check looks at the learner's real Envoy: its ``/config_dump`` and stats through the admin
interface, and requests through its listener. These helpers raise :class:`Fail` with a hint in
the learner's terms whenever something is not as the task asks, so a check reads as a list of
expectations::

    def _check(t: Target, answer: Any) -> str:
        route = resource(answer, ROUTE, "your route configuration", "labxds.route_configuration(...)")
        push(t, [sandbox_cluster(t), route, sandbox_listener(t)])
        expect_served(t, "service1")
        return "Envoy runs your local_route and service1 answers"
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from ...envoy import EnvoyAdmin
from ...i18n import N_, _, explain
from ...xds.builders import SANDBOX_CLUSTER, SANDBOX_LISTENER, SANDBOX_ROUTE, cluster, http_listener
from ...xds.messages import ResourceError, to_message
from ...xds.resource_types import CLUSTER, ENDPOINT, LISTENER, ROUTE, short_name, type_url_of
from ...xds.snapshot import ConsistencyError, Snapshot
from ...xds.tracking import PushRejected, PushTimeout
from ..exercises import Fail, Target

__all__ = [
    "KINDS",
    "acked",
    "address_of",
    "config",
    "dynamic_clusters",
    "envoy_hint",
    "envoy_words",
    "expect_served",
    "kind_of",
    "need",
    "push",
    "resource",
    "sandbox_cluster",
    "sandbox_listener",
    "service_at",
    "snapshot",
    "socket_address",
    "tried",
    "unchanged_versions",
]

#: What each resource type is called in a hint (translated where shown: :func:`kind_of`).
KINDS = {
    CLUSTER: N_("a cluster (Cluster)"),
    ENDPOINT: N_("endpoints (ClusterLoadAssignment)"),
    LISTENER: N_("a listener (Listener)"),
    ROUTE: N_("a route configuration (RouteConfiguration)"),
}


def kind_of(type_url: str) -> str:
    """What a resource of ``type_url`` is called, in the learner's language."""
    return _(KINDS[type_url]) if type_url in KINDS else short_name(type_url)


def need(answer: Any, name: str, hint: str) -> Any:
    """``answer`` itself, unless it is still the placeholder's None."""
    if answer is None:
        raise Fail(_("{name} is still None: the exercise is not done yet").format(name=name), hint)
    return answer


def resource(answer: Any, type_url: str, name: str, hint: str) -> Any:
    """The learner's resource as an Envoy API message of ``type_url``.

    Accepts what labxds accepts: a message from the builders, a dict or YAML text in Envoy's
    JSON form (with ``"@type"``), an envoy-data-plane object.
    """
    need(answer, name, hint)
    try:
        msg = to_message(answer)
    except ResourceError as exc:
        raise Fail(_("{name} is not a resource labxds can read: {problem}").format(name=name, problem=exc.problem),
                   hint) from None
    url = type_url_of(msg)
    if url != type_url:
        raise Fail(_("{name} is {kind}, the task asks for {wanted}").format(
            name=name, kind=kind_of(url), wanted=kind_of(type_url)), hint)
    return msg


def snapshot(answer: Any, name: str, hint: str) -> Snapshot:
    """The learner's snapshot (a Snapshot, or resources to make one of)."""
    need(answer, name, hint)
    if isinstance(answer, Snapshot):
        return answer
    if isinstance(answer, (str, bytes, Mapping)) or not isinstance(answer, Iterable):
        raise Fail(_("{name} is a {kind}, not a snapshot").format(name=name, kind=type(answer).__name__), hint)
    try:
        return Snapshot(list(answer))
    except (ResourceError, ConsistencyError) as exc:
        raise Fail(_("{name} does not make a snapshot: {problem}").format(name=name, problem=exc), hint) from None


def envoy_words(error: str) -> str:
    """The line of Envoy's NACK message that says what is wrong (Envoy puts it last)."""
    lines = [line.strip(" :") for line in (error or "").strip().splitlines() if line.strip(" :")]
    return lines[-1] if lines else _("(no message)")


def envoy_hint(error: str | None, hint: str) -> str:
    """``hint``, after what Envoy's ``error`` means when it is a common one (:func:`labxds.i18n.explain`):
    Envoy's words stay as Envoy wrote them, the explanation is in the learner's language."""
    meaning = explain(error)
    if not meaning:
        return hint
    return meaning + ("" if meaning.endswith(("。", "！", "？")) else " ") + hint


def push(t: Target, resources: Snapshot | Iterable[Any], *, version: str | None = None,
         what: str | None = None, timeout: float = 8.0) -> Snapshot:
    """Push to the learner's own Envoy and wait for its ACK; a NACK or a bad snapshot is a Fail.

    Without ``version`` each type's version is a hash of its content, and a type Envoy already
    runs unchanged keeps the version it ACKed (:func:`unchanged_versions`): a check sends only
    what the learner changed, and pushing the same answer twice sends nothing new. ``what`` names the answer in the learner's language
    (``_("your route")``; default: your configuration).
    """
    what = what or _("your configuration")
    lab = t.own_lab()
    if isinstance(resources, Snapshot):
        snap = resources
    else:
        resources = list(resources)
        try:
            snap = Snapshot(resources, version=version)
            if version is None:
                kept = unchanged_versions(snap, lab.cp.snapshot(lab.node_id) if lab.node_id else None)
                if kept:
                    snap = Snapshot(resources, version=kept)
        except ConsistencyError as exc:
            raise Fail(_("{what} does not fit together: {problems}").format(what=what, problems="; ".join(exc.problems)),
                       _("a listener names its route configuration, a route names its clusters: "
                         "check the names match")) from None  # fmt: skip
        except ResourceError as exc:
            raise Fail(_("{what} cannot be pushed: {problem}").format(what=what, problem=exc),
                       _("check the resource the message names")) from None
    try:
        lab.push(snap, timeout=timeout)
    except PushRejected as exc:
        (node, url), text = next(iter(exc.errors.items()))
        raise Fail(_("Envoy rejected {what} (a NACK for {type}): {words}").format(
            what=what, type=short_name(url), words=envoy_words(text)),
            envoy_hint(text, _("read Envoy's words: they name the field it could not accept"))) from None
    except PushTimeout:
        raise Fail(_("Envoy did not acknowledge {what} within {timeout} s").format(what=what, timeout=f"{timeout:g}"),
                   _("is your Envoy connected (lab.cp.nodes())? Envoy only asks for what its "
                     "listeners and clusters need")) from None  # fmt: skip
    return snap


def unchanged_versions(new: Snapshot, served: Snapshot | None) -> dict[str, str]:
    """The types whose resources Envoy already runs, each with the version it ACKed for them.

    A lesson pushes "1", "2", ...; a check's hashed versions would differ for every type, and
    SotW would send every type again. Keeping the served version of an unchanged type makes the
    check's push send only what the learner changed, as the lessons say it does.
    """
    if served is None:
        return {}

    def content(snap: Snapshot, url: str) -> dict[str, str]:
        return {name: entry.version for name, entry in snap.entries(url, ttl=True).items()}

    return {url: served.version(url) for url in new.types
            if url in served.types and content(new, url) == content(served, url)}


@contextmanager
def tried(t: Target, resources: Snapshot | Iterable[Any], *, what: str | None = None,
          timeout: float = 8.0) -> Iterator[Snapshot]:
    """Push ``resources`` to the learner's Envoy for the time of the ``with`` block, then put back
    what the control plane served before (an empty snapshot if it served none).

    For exercises whose answer is a resource rather than a push: the check tries it on the real
    Envoy and leaves the lesson where it was.
    """
    lab = t.own_lab()
    before = lab.cp.snapshot(lab.node_id) if lab.node_id else lab.cp.snapshot()
    try:
        yield push(t, resources, what=what, timeout=timeout)
    finally:
        try:
            lab.push(before if before is not None else Snapshot([], version="0"), timeout=timeout)
        except (PushRejected, PushTimeout):
            pass  # Envoy keeps what it has; the check's verdict stands


def config(t: Target, resource_name: str) -> list[dict[str, Any]]:
    """One section of the learner's Envoy's /config_dump (e.g. ``dynamic_active_clusters``)."""
    with EnvoyAdmin(t.admin_url) as admin:
        data = admin.config_dump(resource=resource_name, include_eds=resource_name.endswith("endpoint_configs"))
    return list(data.get("configs", []))


def dynamic_clusters(t: Target) -> dict[str, dict[str, Any]]:
    """The clusters Envoy got over CDS, by name: {"version_info": ..., "cluster": {...}}."""
    return {entry["cluster"]["name"]: entry for entry in config(t, "dynamic_active_clusters")}


def socket_address(cluster_json: Mapping[str, Any]) -> str | None:
    """The sandbox's jq path on one cluster: its first endpoint as "host:port"."""
    try:
        sock = cluster_json["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"][
            "socket_address"]
    except (KeyError, IndexError, TypeError):
        return None
    return f"{sock.get('address')}:{sock.get('port_value', 0)}"


def address_of(t: Target, service: str) -> str:
    """Where the learner's ``service`` listens, as "host:port"."""
    host, port = t.own_lab().upstream(service)
    return f"{host}:{port}"


def service_at(t: Target, address: str | None) -> str:
    """The learner's service listening at ``address`` ("host:port"), or the address itself."""
    lab = t.own_lab()
    for name in getattr(lab, "service_counts", {}):
        if address in {f"{h}:{p}" for h, p in lab.endpoints(name)}:
            return str(name)
    return str(address)


def acked(t: Target, type_url: str) -> str | None:
    """The version of ``type_url`` the learner's Envoy last ACKed, as the control plane saw it."""
    lab = t.own_lab()
    node = lab.cp.node_status(lab.node_id) if lab.node_id else None
    st = node.types.get(type_url) if node is not None else None
    return st.acked_version if st is not None else None


def expect_served(t: Target, service: str, *, path: str = "/", n: int = 3, hint: str = "") -> list[str]:
    """``n`` requests to ``path`` through the learner's listener, all answered by ``service``."""
    served = t.served(n, path)
    if set(served) != {service}:
        seen = ", ".join(sorted(set(served)))
        raise Fail(_("GET {path} through your listener was answered by {seen}, not {service}").format(
            path=path, seen=seen, service=service),
            hint or _("the route for {path} must lead to a cluster whose endpoint is {service}").format(
                path=path, service=service))
    return served


def sandbox_cluster(t: Target, upstream: str = "service1") -> Any:
    """The sandbox's example_proxy_cluster, its endpoint the learner's ``upstream``."""
    return cluster(SANDBOX_CLUSTER, [t.own_lab().upstream(upstream)], type="LOGICAL_DNS")


def sandbox_listener(t: Target, route: str = SANDBOX_ROUTE) -> Any:
    """The sandbox's listener_0 on the learner's listener port, its routes from RDS ``route``."""
    lab = t.own_lab()
    return http_listener(SANDBOX_LISTENER, lab.listener_port, route, address=lab.mode.listen_host)


