"""Lesson 6, the protocol: make Envoy NACK a listener of your own, then recover with a new version."""

from __future__ import annotations

from typing import Any

from ...envoy.config_dump import listener_rows
from ...i18n import N_, _, explain
from ...xds.builders import sandbox_resources
from ...xds.resource_types import LISTENER, short_name
from ...xds.snapshot import ConsistencyError, Snapshot
from ...xds.tracking import PushRejected, PushTimeout
from ..exercises import Exercise, Fail, Target
from .checks import envoy_hint, envoy_words, need, resource

__all__ = ["EXERCISES"]

DOCS = "https://www.envoyproxy.io/docs/envoy/v1.40.0"

#: Where the exercises start: the sandbox on service2, ACKed.
GIVEN = '''\
lab.push(lab.sandbox_snapshot("service2", version=lab.next_version()))
'''

#: Exercise 6.2 starts after a NACK: a listener on Envoy's own admin port.
GIVEN_NACKED = GIVEN + '''\
clash = labxds.http_listener("listener_admin", lab.admin_port, "local_route", address=lab.mode.listen_host)
bad = labxds.Snapshot([*labxds.sandbox_resources(*lab.upstream("service2"), listener_port=lab.listener_port,
                                                 listener_address=lab.mode.listen_host), clash],
                      version=lab.next_version())
try:
    lab.push(bad)
except labxds.PushRejected as exc:
    rejection = exc
'''


def _good(lab: Any) -> list[Any]:
    """The sandbox on service2, on the learner's ports."""
    return sandbox_resources(*lab.upstream("service2"), listener_port=lab.listener_port,
                             listener_address=lab.mode.listen_host)


def _served_ok(t: Target) -> list[str]:
    served = t.served(3)
    if not set(served) <= {"service1", "service2"}:
        raise Fail(_("listener_0 no longer answers: {who}").format(who=", ".join(sorted(set(served)))),
                   _("the refused update must not touch listener_0: push the good resources again with a new version"))
    return served


def _check_nack(t: Target, bad_listener: Any) -> str:
    hint = _("a Listener labxds can send (its route configuration, local_route, exists) but Envoy cannot "
             "apply: a port already in use (lab.admin_port is Envoy's own), or an HTTP connection manager "
             "that breaks one of Envoy's rules (stat_prefix=\"\")")
    listener = resource(bad_listener, LISTENER, "bad_listener", hint)
    if listener.name == "listener_0":
        raise Fail(_("your listener is named listener_0"),
                   _("give it a name of its own: listener_0 must keep serving beside it"))
    lab = t.own_lab()
    version = lab.next_version()
    try:
        snap = Snapshot([*_good(lab), listener], version=version)
    except ConsistencyError as exc:
        raise Fail(_("labxds refused it before sending anything: {problems}").format(problems="; ".join(exc.problems)),
                   _("Envoy never saw it. Make a listener that fits the snapshot (it names local_route) but that "
                     "Envoy cannot apply")) from None
    try:
        lab.push(snap, timeout=8)
    except PushRejected as exc:
        errors = {short_name(url): text for (_node, url), text in exc.errors.items()}
        text = errors.get("LDS")
        if text is None:
            raise Fail(_("Envoy refused {types}, not the listeners").format(types=", ".join(sorted(errors))), hint) from None
        if listener.name not in text:
            raise Fail(_("Envoy's NACK does not name your listener: {words}").format(words=envoy_words(text)),
                       envoy_hint(text, hint)) from None
    except PushTimeout:
        raise Fail(_("Envoy did not answer within 8 s"), _("is your Envoy connected? lab.cp.nodes() lists it")) from None
    else:
        raise Fail(_("Envoy accepted your listener {name}: it ACKed version {version}").format(
            name=listener.name, version=version), hint)
    rows = [r for r in listener_rows(lab.admin) if r["name"] == listener.name and r["state"] == "error"]
    if not rows:
        raise Fail(_("Envoy's /config_dump shows no error_state for {name}").format(name=listener.name), hint)
    served = _served_ok(t)
    said = _("Envoy NACKed LDS version {version}, naming {name}: \"{words}\"; listener_0 still answers "
             "({who})").format(version=version, name=listener.name, words=envoy_words(text), who=served[0])
    meaning = explain(text)  # Envoy's words stay as Envoy wrote them; what they mean, in the learner's language
    return f"{said}\n{meaning}" if meaning else said


def _check_recovered(t: Target, recovered: Any) -> str:
    hint = _("recovered = lab.push(labxds.Snapshot([...], version=...)): good resources only, and a version "
             "label never used before (lab.next_version() gives one)")
    need(recovered, "recovered", hint)
    if not isinstance(recovered, Snapshot):
        raise Fail(_("recovered is a {kind}: keep what lab.push(...) returns, the snapshot").format(
            kind=type(recovered).__name__), hint)
    lab = t.own_lab()
    if lab.cp.snapshot(lab.node_id) is not recovered:
        raise Fail(_("your control plane does not serve this snapshot: it was built, but not pushed (or another was "
                     "pushed after it)"), hint)
    node = lab.cp.node_status(lab.node_id)
    lds = node.types.get(LISTENER) if node is not None else None
    version = recovered.version(LISTENER) if LISTENER in recovered.types else None
    if version is None:
        raise Fail(_("your snapshot has no listener"), _("listener_0 must stay: put the sandbox's resources in it"))
    if lds is not None and lds.nacked_version == version:
        raise Fail(_("Envoy NACKed version {version} of the listeners: {words}").format(
            version=version, words=envoy_words(lds.nack_error or "")),
            envoy_hint(lds.nack_error, _("a version Envoy refused is never sent again: leave out the listener it "
                                         "refused, and use a new version label")))
    if lds is None or lds.acked_version != version:
        raise Fail(_("Envoy has not ACKed version {version} of the listeners (it ACKed {acked})").format(
            version=version, acked=lds.acked_version if lds is not None else None), hint)
    errors = [r["name"] for r in listener_rows(lab.admin) if r["state"] == "error"]
    if errors:
        raise Fail(_("Envoy still shows a refused listener: {names}").format(names=", ".join(errors)), hint)
    served = _served_ok(t)
    return _("Envoy ACKed version {version} of the listeners, shows no error_state, and listener_0 answers "
             "({who})").format(version=version, who=served[0])


EXERCISES = [
    Exercise(
        "6.1", N_("Make Envoy say no"),
        N_("Write a listener that labxds accepts (it fits the snapshot) but Envoy refuses. The check pushes it with "
           "the sandbox's resources, as a new version, and expects a NACK that names your listener, while "
           "listener_0 keeps serving."),
        _check_nack,
        placeholder="bad_listener = None  # a Listener Envoy will refuse",
        solution='bad_listener = labxds.http_listener("listener_bad", lab.spare_port(2), "local_route",\n'
                 '                                    address=lab.mode.listen_host, stat_prefix="")',
        answers=("bad_listener",),
        mistakes=(
            'bad_listener = labxds.http_listener("listener_fine", lab.spare_port(2), "local_route",\n'
            '                                    address=lab.mode.listen_host)',  # Envoy accepts it
            'bad_listener = labxds.http_listener("listener_bad", lab.spare_port(), "no_such_route")',  # labxds refuses
            'bad_listener = labxds.route_configuration("listener_bad", "example_proxy_cluster")',  # not a listener
        ),
        given=GIVEN,
        docs=(f"{DOCS}/api-docs/xds_protocol#ack-and-nack-semantics-summary",
              f"{DOCS}/api-v3/extensions/filters/network/http_connection_manager/v3/http_connection_manager.proto"),
    ),
    Exercise(
        "6.2", N_("Recover with a new version"),
        N_("Envoy refused the last update. Push a snapshot it accepts: the good resources, with a version label "
           "never used before. The check looks at what Envoy ACKed and at its listeners."),
        _check_recovered,
        placeholder="recovered = None  # the snapshot you pushed: what lab.push(...) returns",
        solution='recovered = lab.push(lab.sandbox_snapshot("service1", version=lab.next_version()))',
        answers=("recovered",),
        mistakes=(
            'recovered = lab.sandbox_snapshot("service1", version=lab.next_version())',  # built, not pushed
            "recovered = bad",  # the refused snapshot itself
        ),
        given=GIVEN_NACKED,
        docs=(f"{DOCS}/api-docs/xds_protocol#ack-and-nack-semantics-summary",
              f"{DOCS}/operations/admin#get--config_dump"),
    ),
]
