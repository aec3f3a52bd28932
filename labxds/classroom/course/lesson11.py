"""Lesson 11, resilience: retries, timeouts, outlier detection and active health checks around an
echo instance that the check makes fail or slow down on purpose."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from ...envoy import EnvoyAdmin
from ...envoy.config_dump import host_rows
from ...i18n import N_, _
from ...lab.echo import Behaviour
from ...lab.traffic import send
from ...xds.builders import SANDBOX_LISTENER, SANDBOX_ROUTE, cluster, load_assignment, route_configuration
from ..exercises import Exercise, Fail, Target
from .checks import push
from .live import mark_background, wait_until

__all__ = ["BACKEND", "EXERCISES", "GIVEN", "OTHER_HOST", "backend_snapshot"]

DOCS = "https://www.envoyproxy.io/docs/envoy/v1.40.0"
BACKEND = "backend"

#: Retry on another host than the ones that failed (Envoy's previous_hosts predicate; a pick that
#: lands on one of them is made again, up to 3 times).
OTHER_HOST = {
    "retry_host_predicate": [{
        "name": "envoy.retry_host_predicates.previous_hosts",
        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"},
    }],
    "host_selection_retry_max_attempts": 3,
}  # fmt: skip

GIVEN = '''\
other_host = {
    "retry_host_predicate": [{
        "name": "envoy.retry_host_predicates.previous_hosts",
        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"},
    }],
    "host_selection_retry_max_attempts": 3,
}
'''


def backend_snapshot(lab: Any, *, route: Mapping[str, Any] | None = None, **cluster_options: Any) -> list[Any]:
    """service1 and service2 behind one EDS cluster "backend", on listener_0 (the lesson's setup);
    ``route`` options (timeout, retry_policy) and cluster options (outlier_detection,
    health_checks) as the builders take them."""
    return [
        cluster(BACKEND, **cluster_options),
        load_assignment(BACKEND, [lab.upstream("service1"), lab.upstream("service2")]),
        route_configuration(SANDBOX_ROUTE, BACKEND, **dict(route or {})),
        sandbox_listener_of(lab),
    ]


def sandbox_listener_of(lab: Any) -> Any:
    from ...xds.builders import http_listener

    return http_listener(SANDBOX_LISTENER, lab.listener_port, SANDBOX_ROUTE, address=lab.mode.listen_host)


def _dict(answer: Any, name: str, hint: str) -> dict[str, Any]:
    if answer is None:
        raise Fail(_("{name} is still None: the exercise is not done yet").format(name=name), hint)
    if not isinstance(answer, Mapping):
        raise Fail(_("{name} is a {kind}: write it as a dict, the way Envoy's docs show it").format(
            name=name, kind=type(answer).__name__), hint)
    return dict(answer)


def _push(t: Target, what: str, key: str, **options: Any) -> None:
    """The lesson's setup with the learner's part; a part Envoy's API does not know is a Fail."""
    lab = t.own_lab()
    try:
        resources = backend_snapshot(lab, **options)
    except (ValueError, TypeError) as exc:
        raise Fail(_("{what} is not in Envoy's JSON form: {error}").format(what=what, error=exc),
                   _('field names as in Envoy\'s API reference, durations as strings like "0.25s"')) from None
    mark_background(t, _("check {key}").format(key=key))
    push(t, resources, what=what)  # versions are content hashes: only what changed goes out


class _Misbehaving:
    """service1 made to misbehave for the length of a check (service2 normal); afterwards both
    behave as they did before, so the lesson goes on where it was."""

    def __init__(self, t: Target, **behaviour: Any) -> None:
        self.lab, self.behaviour = t.own_lab(), behaviour
        self.saved: dict[str, Any] = {}

    def __enter__(self) -> None:
        self.saved = {name: self.lab.behaviour(name) for name in ("service1", "service2")}
        # Each set whole, in one step: a moment of "normal" in between would let a health check pass.
        self.lab.set_behaviour("service1", **{**Behaviour().to_dict(), **self.behaviour})
        self.lab.set_behaviour("service2", **Behaviour().to_dict())

    def __exit__(self, *exc: object) -> None:
        for name, behaviour in self.saved.items():
            self.lab.set_behaviour(name, **behaviour.to_dict())


def _counter(t: Target, name: str) -> int:
    with EnvoyAdmin(t.admin_url) as admin:
        return admin.stats(f"^cluster\\.{BACKEND}\\.{name}$").get(f"cluster.{BACKEND}.{name}", 0)


# -- 11.1 retries -------------------------------------------------------------------------------

#: Hints: the answer in code, with the words around it in the learner's language (translated where used).
_RETRY_HINT = N_('retry 5xx answers, twice, on another host: '
                 'retry_policy = {"retry_on": "5xx", "num_retries": 2, **other_host}')


def _check_retries(t: Target, retry_policy: Any) -> str:
    policy = _dict(retry_policy, "retry_policy", _(_RETRY_HINT))
    with _Misbehaving(t, error_rate=1.0, status=503):
        _push(t, _("your retry policy"), "11.1", route={"retry_policy": policy})
        before = _counter(t, "upstream_rq_retry")
        rows = send(t.listener_url, 40)
    failed = [r for r in rows if r["status"] != 200]
    retries = _counter(t, "upstream_rq_retry") - before
    if failed:
        statuses = ", ".join(sorted({str(r["status"] or r["error"]) for r in failed}))
        if not retries:
            raise Fail(_("{failed} of 40 requests failed ({statuses}): Envoy retried none").format(
                failed=len(failed), statuses=statuses),
                _('retry_on names what Envoy retries: a 503 from the upstream is a "5xx"; num_retries must be 1 '
                  "or more"))  # fmt: skip
        raise Fail(_("{failed} of 40 requests failed although Envoy retried {retries} times").format(
            failed=len(failed), retries=retries),
            _("a retry can land on the failing instance again: retry on another host (**other_host) and allow "
              "2 retries"))  # fmt: skip
    return _("service1 fails every request, yet 40 of 40 succeeded: Envoy retried {retries} times on "
             "service2").format(retries=retries)


# -- 11.2 per-try timeout -----------------------------------------------------------------------

_SLOW_HINT = N_("give up on a try well before service1's 1 s, and retry on another host: "
                'slow_policy = {"retry_on": "5xx", "num_retries": 2, "per_try_timeout": "0.25s", **other_host}')
_ROUTE_TIMEOUT = 3.0


def _check_slow(t: Target, slow_policy: Any) -> str:
    policy = _dict(slow_policy, "slow_policy", _(_SLOW_HINT))
    with _Misbehaving(t, delay=1.0):
        _push(t, _("your retry policy"), "11.2", route={"retry_policy": policy, "timeout": _ROUTE_TIMEOUT})
        before = _counter(t, "upstream_rq_per_try_timeout")
        rows = send(t.listener_url, 6, timeout=5)
    failed = [r for r in rows if r["status"] != 200]
    if failed:
        raise Fail(_("{failed} of 6 requests failed: {first}").format(
            failed=len(failed), first=failed[0]["status"] or failed[0]["error"]),
            _('a per_try_timeout abandons one try; retry_on "5xx" retries it (a per-try timeout counts as a 5xx)'))
    slow = [r for r in rows if r["latency_ms"] > 800]
    if slow:
        raise Fail(_("{slow} of 6 requests took about {seconds} s: they waited for slow service1").format(
            slow=len(slow), seconds=f"{slow[0]['latency_ms'] / 1000:.1f}"),
            _('give each try a per_try_timeout shorter than 1 s, e.g. "0.25s", and a retry goes to service2'))
    worst = max(r["latency_ms"] for r in rows)
    timeouts = _counter(t, "upstream_rq_per_try_timeout") - before
    return _("service1 takes 1 s, yet 6 of 6 succeeded within {worst} ms: {timeouts} tries timed out and were "
             "retried").format(worst=f"{worst:.0f}", timeouts=timeouts)


# -- 11.3 outlier detection ---------------------------------------------------------------------

_OUTLIER_HINT = N_('eject a host after 3 failures in a row, and let one host of two be out: '
                   'outlier = {"consecutive_5xx": 3, "interval": "1s", "base_ejection_time": "30s", '
                   '"max_ejection_percent": 50}')


def _health(t: Target) -> dict[str, str]:
    lab = t.own_lab()
    names = {f"{h}:{p}": s for s in ("service1", "service2") for h, p in [lab.upstream(s)]}
    with EnvoyAdmin(t.admin_url) as admin:
        return {names.get(r["address"], r["address"]): r["health"] for r in host_rows(admin, BACKEND)}


def _check_outlier(t: Target, outlier: Any) -> str:
    detection = _dict(outlier, "outlier", _(_OUTLIER_HINT))
    with _Misbehaving(t, error_rate=1.0, status=503):
        _push(t, _("your outlier detection"), "11.3", outlier_detection=detection)
        before = _counter(t, "outlier_detection.ejections_overflow")
        first = send(t.listener_url, 30)
        health = _health(t)
        later = send(t.listener_url, 10)
        overflow = _counter(t, "outlier_detection.ejections_overflow") - before
    if health.get("service1") != "ejected (outlier detection)":
        if overflow:
            raise Fail(_("Envoy wanted to eject service1 but did not ({times} times): the cluster has two "
                         "hosts").format(times=overflow),
                       _("max_ejection_percent (default 10 %) caps how many hosts may be out: with two hosts, "
                         "10 % is none. Allow 50"))  # fmt: skip
        raise Fail(_("after 30 requests (about 15 of them failed by service1) Envoy still counts service1 as "
                     "{state}").format(state=health.get("service1", "absent")),
                   _("consecutive_5xx is how many failures in a row eject a host: a few, e.g. 3"))
    bad = [r for r in later if r["status"] != 200]
    if bad:
        raise Fail(_("service1 is ejected, yet {bad} of the next 10 requests failed").format(bad=len(bad)),
                   _("with service1 out, every request should reach service2"))
    failed_first = sum(r["status"] != 200 for r in first)
    return _("Envoy ejected service1 (its /clusters says so); {failed} of the check's first 30 requests failed "
             "before that, and the next 10 all went to service2 and succeeded").format(failed=failed_first)


# -- 11.4 active health checks ------------------------------------------------------------------

_HC_HINT = N_('ask /healthz every 0.2 s, a host out after 2 failures and back after 1 success: '
              'health_check = {"timeout": "0.25s", "interval": "0.2s", "no_traffic_interval": "0.2s", '
              '"unhealthy_threshold": 2, "healthy_threshold": 1, "http_health_check": {"path": "/healthz"}}')


def _check_health(t: Target, health_check: Any) -> str:
    check = _dict(health_check, "health_check", _(_HC_HINT))
    lab = t.own_lab()
    with _Misbehaving(t, error_rate=1.0, status=503):
        _push(t, _("your health check"), "11.4", health_checks=[check])
        started = time.monotonic()
        # service2 must have passed its first health check too: with no healthy host at all, Envoy
        # would be in panic mode and send to every host.
        out = wait_until(lambda: _health(t) == {"service1": "failed active health check", "service2": "healthy"}, 3.0)
        took = time.monotonic() - started
        if not out:
            probes = lab.services["service1"][0].health_checks if lab.services and not lab.mode.docker else None
            state = _health(t).get("service1")
            detail = (_("3 s after your push Envoy still counts service1 as {state} ({probes} health checks "
                        "reached it)").format(state=state, probes=probes) if probes is not None
                      else _("3 s after your push Envoy still counts service1 as {state}").format(state=state))
            raise Fail(detail, _('check often (interval "0.2s", and no_traffic_interval too: this cluster may see '
                                 "no traffic), mark a host unhealthy after 2 failures, on the path /healthz"))
        # The load balancer can keep picking the host for a moment (up to about a second) after
        # /clusters shows the flag: wait until it has stopped, then look.
        wait_until(lambda: {r["served_by"] for r in send(t.listener_url, 4)} == {"service2"}, 3.0, every=0.1)
        served = {r["served_by"] for r in send(t.listener_url, 6)}
        if served != {"service2"}:
            raise Fail(_("service1 failed its health checks, yet requests were answered by {who}").format(
                who=", ".join(map(str, served))),
                _("Envoy sends no traffic to an unhealthy host: is the health check on the cluster backend?"))
        lab.set_behaviour("service1", error_rate=0, delay=0)  # it recovers
        back = wait_until(lambda: _health(t).get("service1") == "healthy", 3.0)
    if not back:
        raise Fail(_("service1 answers normally again, but Envoy still counts it unhealthy after 3 s"),
                   _("Envoy asks again only every interval and takes a host back after healthy_threshold passed "
                     "checks: ask every 0.2 s, and 1 success is enough here"))  # fmt: skip
    return _("Envoy marked service1 unhealthy {seconds} s after it started failing, then stopped sending it "
             "requests, and took it back once it recovered").format(seconds=f"{took:.1f}")


EXERCISES = [
    Exercise(
        "11.1", N_("Retries"),
        N_("service1 will fail every request with 503. Write a retry policy for the route (a dict in Envoy's JSON "
           "form) so that every request still succeeds: retry 5xx answers, up to 2 times, on another host "
           "(other_host). The check pushes it on local_route, makes service1 fail, and sends 40 requests."),
        _check_retries,
        placeholder="retry_policy = None  # a dict: what to retry (retry_on) and how many times (num_retries)",
        solution='retry_policy = {"retry_on": "5xx", "num_retries": 2, **other_host}',
        answers=("retry_policy",),
        mistakes=(
            'retry_policy = {"retry_on": "connect-failure", "num_retries": 2}',  # a 503 is not a connect failure
            'retry_policy = {"retry_on": "5xx", "num_retry": 2}',  # a typo Envoy's API names
        ),
        given=GIVEN,
        docs=(f"{DOCS}/intro/arch_overview/http/http_routing#retry-semantics",
              f"{DOCS}/api-v3/config/route/v3/route_components.proto#envoy-v3-api-msg-config-route-v3-retrypolicy"),
    ),
    Exercise(
        "11.2", N_("A slow instance: per-try timeouts"),
        N_("service1 will take 1 s to answer. Write a retry policy that gives up on a try after 0.25 s and "
           "retries on another host, so that every request succeeds quickly. The check gives the route a 3 s "
           "timeout."),
        _check_slow,
        placeholder="slow_policy = None  # a retry policy with a per_try_timeout",
        solution='slow_policy = {"retry_on": "5xx", "num_retries": 2, "per_try_timeout": "0.25s", **other_host}',
        answers=("slow_policy",),
        mistakes=(
            'slow_policy = {"retry_on": "5xx", "num_retries": 2}',  # waits for slow service1
            'slow_policy = {"retry_on": "5xx", "num_retries": 2, "per_try_timeout": "2s"}',
        ),
        given=GIVEN,
        docs=(f"{DOCS}/faq/configuration/timeouts#route-timeouts",
              f"{DOCS}/api-v3/config/route/v3/route_components.proto#envoy-v3-api-field-config-route-v3-retrypolicy-per-try-timeout"),
    ),
    Exercise(
        "11.3", N_("Outlier detection"),
        N_("service1 will fail every request. Write outlier_detection for the cluster backend so that Envoy "
           "ejects service1 after a few failures in a row and stops sending it requests (without retries)."),
        _check_outlier,
        placeholder="outlier = None  # a dict: when to eject a host, for how long, how many hosts at most",
        solution='outlier = {"consecutive_5xx": 3, "interval": "1s", "base_ejection_time": "30s", '
                 '"max_ejection_percent": 50}',
        answers=("outlier",),
        mistakes=(
            'outlier = {"consecutive_5xx": 3, "interval": "1s", "base_ejection_time": "30s"}',  # 10 % of 2 hosts
            'outlier = {"consecutive_5xx": 100, "max_ejection_percent": 50}',  # never in 30 requests
        ),
        docs=(f"{DOCS}/intro/arch_overview/upstream/outlier",
              f"{DOCS}/api-v3/config/cluster/v3/outlier_detection.proto"),
    ),
    Exercise(
        "11.4", N_("Active health checks"),
        N_("service1 will fail, then recover. Write an HTTP health check for the cluster backend (a dict): ask "
           "/healthz every 0.2 s, mark a host unhealthy after 2 failures and healthy after 1 success. The check "
           "waits for Envoy to take service1 out, then back in."),
        _check_health,
        placeholder="health_check = None  # a dict: path, interval, thresholds, timeout",
        solution='''\
health_check = {
    "timeout": "0.25s",
    "interval": "0.2s",
    "no_traffic_interval": "0.2s",
    "unhealthy_threshold": 2,
    "healthy_threshold": 1,
    "http_health_check": {"path": "/healthz"},
}''',
        answers=("health_check",),
        mistakes=(
            'health_check = {"timeout": "0.25s", "interval": "30s", "no_traffic_interval": "30s", '
            '"unhealthy_threshold": 2, "healthy_threshold": 1, "http_health_check": {"path": "/healthz"}}',
            'health_check = {"interval": "0.2s", "unhealthy_threshold": 2, "healthy_threshold": 1, '
            '"http_health_check": {"path": "/healthz"}}',  # no timeout: Envoy refuses it
        ),
        docs=(f"{DOCS}/intro/arch_overview/upstream/health_checking",
              f"{DOCS}/api-v3/config/core/v3/health_check.proto"),
    ),
]
