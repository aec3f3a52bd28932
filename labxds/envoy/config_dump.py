"""Envoy's ``/config_dump`` read as plain records: clusters, endpoints, listeners, routes.

Every reader filters /config_dump by resource type (never by the position of a section, which
changes between Envoy versions) and takes anything ``as_admin`` accepts: an admin URL, a port,
an EnvoyAdmin or an Envoy, local or in docker. Exercise checks read these records; the notebook
layer shows them as tables.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from ..i18n import N_
from .admin import EnvoyAdmin, as_admin

__all__ = [
    "COLUMNS",
    "certificate_rows",
    "cluster_rows",
    "endpoint_rows",
    "host_rows",
    "listener_rows",
    "route_rows",
    "sandbox_endpoint",
    "warming_clusters",
]

_HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"

#: The fields of each reader's records, in the order a table shows them.
COLUMNS = {
    "clusters": ["name", "version_info", "last_updated", "type", "lb_policy", "source"],
    "endpoints": ["cluster", "address", "port", "health", "weight", "priority", "hostname"],
    "listeners": ["name", "address", "port", "version_info", "state", "last_updated", "error_state"],
    "routes": ["route_config", "version_info", "virtual_host", "domains", "match", "cluster", "last_updated", "source"],
    "hosts": ["cluster", "address", "health", "requests", "succeeded", "failed", "connect_failures"],
    "certificates": ["kind", "serial", "names", "valid_from", "expires", "days_left", "source"],
}


def _configs(admin: EnvoyAdmin, resource: str, include_eds: bool = False) -> list[dict]:
    return admin.config_dump(resource=resource, include_eds=include_eds).get("configs", [])


def _socket(address: Mapping | None) -> tuple[str | None, int | None]:
    """(address, port) of an envoy.config.core.v3.Address; pipes show as their path."""
    address = address or {}
    if "socket_address" in address:
        sock = address["socket_address"]
        return sock.get("address"), sock.get("port_value", 0)
    if "pipe" in address:
        return address["pipe"].get("path"), None
    if "envoy_internal_address" in address:
        return address["envoy_internal_address"].get("server_listener_name"), None
    return None, None


def _cluster_type(cluster: Mapping) -> str:
    if "cluster_type" in cluster:  # custom cluster extension
        return cluster["cluster_type"].get("name", "custom")
    return cluster.get("type", "STATIC")  # proto3 JSON omits the default


def _lb_policy(cluster: Mapping) -> str:
    policies = (cluster.get("load_balancing_policy") or {}).get("policies") or []
    if policies:
        return ", ".join(p.get("typed_extension_config", {}).get("name", "?") for p in policies)
    return cluster.get("lb_policy", "ROUND_ROBIN")


def cluster_rows(admin: Any, *, include_static: bool = False, include_warming: bool = False) -> list[dict[str, Any]]:
    """Clusters Envoy has accepted over CDS (plus bootstrap ones with include_static).

    With ``include_warming``, also the clusters Envoy received but does not use yet: they warm
    (``dynamic_warming_clusters``) until their endpoints arrive. Each record's ``state`` says
    which: "static", "active" or "warming".
    """
    admin = as_admin(admin)
    rows = []
    sections = [("dynamic_active_clusters", "dynamic")]
    if include_static:
        sections.insert(0, ("static_clusters", "static"))
    if include_warming:
        sections.append(("dynamic_warming_clusters", "dynamic"))
    for resource, source in sections:
        state = {"static_clusters": "static", "dynamic_active_clusters": "active"}.get(resource, "warming")
        for entry in _configs(admin, resource):
            cluster = entry.get("cluster", {})
            rows.append({
                "name": cluster.get("name"),
                "version_info": entry.get("version_info"),
                "last_updated": entry.get("last_updated"),
                "type": _cluster_type(cluster),
                "lb_policy": _lb_policy(cluster),
                "source": source,
                "state": state,
            })  # fmt: skip
    return rows


def warming_clusters(admin: Any) -> list[str]:
    """Names of the clusters that are warming: received over CDS, waiting for their endpoints."""
    return [entry.get("cluster", {}).get("name") for entry in _configs(as_admin(admin), "dynamic_warming_clusters")]


def _assignment_rows(assignment: Mapping, cluster: str) -> Iterable[dict]:
    for group in assignment.get("endpoints") or []:
        for lb in group.get("lb_endpoints") or []:
            endpoint = lb.get("endpoint") or {}
            address, port = _socket(endpoint.get("address"))
            yield {
                "cluster": cluster,
                "address": address,
                "port": port,
                "health": lb.get("health_status", "UNKNOWN"),
                "weight": (lb.get("load_balancing_weight") or 1),
                "priority": group.get("priority", 0),
                "hostname": endpoint.get("hostname") or None,
            }


def endpoint_rows(admin: Any, cluster: str | None = None, *, include_static: bool = False) -> list[dict[str, Any]]:
    """Endpoints as Envoy's cluster manager holds them: EDS ones and DNS/inline ones alike.

    Uses /config_dump?include_eds, whose dynamic_endpoint_configs cover every
    dynamic cluster (including LOGICAL_DNS with an inline load_assignment) and
    carry the health status Envoy currently assigns to each host.
    """
    admin = as_admin(admin)
    resources = ["dynamic_endpoint_configs"] + (["static_endpoint_configs"] if include_static else [])
    rows: list[dict] = []
    for resource in resources:
        for entry in _configs(admin, resource, include_eds=True):
            assignment = entry.get("endpoint_config", {})
            name = assignment.get("cluster_name")
            if cluster is None or name == cluster:
                rows.extend(_assignment_rows(assignment, name))
    return rows


def listener_rows(admin: Any) -> list[dict[str, Any]]:
    """One row per listener state (active, warming, draining) and per rejected update (error)."""
    admin = as_admin(admin)
    rows: list[dict] = []
    seen_errors: set[tuple[str | None, str | None]] = set()
    for entry in _configs(admin, "dynamic_listeners"):
        error = entry.get("error_state")
        name = entry.get("name") or ((error or {}).get("failed_configuration") or {}).get("name")
        for state in ("active", "warming", "draining"):
            section = entry.get(f"{state}_state")
            if not section:
                continue
            address, port = _socket(section.get("listener", {}).get("address"))
            rows.append({"name": name, "address": address, "port": port, "version_info": section.get("version_info"),
                         "state": state, "last_updated": section.get("last_updated"), "error_state": None})  # fmt: skip
        if error:
            key = (name, error.get("details"))
            if key in seen_errors:  # Envoy repeats rejected listeners in a nameless entry
                continue
            seen_errors.add(key)
            address, port = _socket((error.get("failed_configuration") or {}).get("address"))
            rows.append({"name": name, "address": address, "port": port, "version_info": None, "state": "error",
                         "last_updated": error.get("last_update_attempt"), "error_state": error.get("details")})  # fmt: skip
    return rows


def _describe_match(match: Mapping) -> str:
    parts = []
    for key in ("prefix", "path", "path_separated_prefix"):
        if key in match:
            parts.append(f"{key} {match[key]}")
    if "safe_regex" in match:
        parts.append(f"regex {match['safe_regex'].get('regex')}")
    if "connect_matcher" in match:
        parts.append("CONNECT")
    if "path_match_policy" in match:
        parts.append(f"policy {match['path_match_policy'].get('name')}")
    for header in match.get("headers") or []:
        value = next((str(v) for k, v in header.items() if k not in ("name", "invert_match")), "present")
        parts.append(f"[{header.get('name')} {value}]")
    return " ".join(parts) or "any"


def _describe_action(route: Mapping) -> str:
    action = route.get("route")
    if action is not None:
        if "cluster" in action:
            return action["cluster"]
        if "weighted_clusters" in action:
            clusters = action["weighted_clusters"].get("clusters") or []
            total = sum(int(c.get("weight", 0)) for c in clusters) or 1
            return ", ".join(f"{c.get('name')} {100 * int(c.get('weight', 0)) / total:g}%" for c in clusters)
        if "cluster_header" in action:
            return f"(from header {action['cluster_header']})"
        return "(cluster specifier plugin)"
    if "redirect" in route:
        return f"redirect {route['redirect']}"
    if "direct_response" in route:
        return f"direct_response {route['direct_response'].get('status')}"
    return "?"


def _config_route_rows(route_config: Mapping, version: str | None, updated: str | None, source: str) -> Iterable[dict]:
    for vhost in route_config.get("virtual_hosts") or []:
        for route in vhost.get("routes") or []:
            yield {
                "route_config": route_config.get("name"),
                "version_info": version,
                "virtual_host": vhost.get("name"),
                "domains": ", ".join(vhost.get("domains") or []),
                "match": _describe_match(route.get("match") or {}),
                "cluster": _describe_action(route),
                "last_updated": updated,
                "source": source,
            }


def _inline_route_configs(listener: Mapping) -> Iterable[Mapping]:
    chains = list(listener.get("filter_chains") or [])
    if listener.get("default_filter_chain"):
        chains.append(listener["default_filter_chain"])
    for chain in chains:
        for flt in chain.get("filters") or []:
            typed = flt.get("typed_config") or {}
            if typed.get("@type") == _HCM and "route_config" in typed:
                yield typed["route_config"]


def route_rows(admin: Any) -> list[dict[str, Any]]:
    """Every route in order of evaluation: RDS route configs, then ones inline in listeners."""
    admin = as_admin(admin)
    rows: list[dict] = []
    for entry in _configs(admin, "dynamic_route_configs"):
        rows.extend(_config_route_rows(entry.get("route_config", {}), entry.get("version_info"), entry.get("last_updated"), "rds"))
    for entry in _configs(admin, "dynamic_listeners"):
        active = entry.get("active_state")
        if not active:
            continue
        for route_config in _inline_route_configs(active.get("listener", {})):
            rows.extend(_config_route_rows(route_config, active.get("version_info"), active.get("last_updated"),
                                    f"inline in {entry.get('name')}"))  # fmt: skip
    return rows


def sandbox_endpoint(admin: Any, cluster: str | None = None, *, as_dict: bool = False) -> str | dict | None:
    """The sandbox's one jq query, by resource type instead of by position.

    The sandbox runs `jq '.configs[1].dynamic_active_clusters[0].cluster.load_assignment
    .endpoints[0].lb_endpoints[0].endpoint.address.socket_address'`. Here: the first
    endpoint of `cluster` (default: the first dynamic cluster), read from its inline
    load_assignment (LOGICAL_DNS/STATIC, as in the sandbox) or, for EDS clusters, from
    the endpoints Envoy received. Returns "host:port" (or the socket_address dict), or
    None when there is no such cluster yet, as jq prints null.
    """
    admin = as_admin(admin)
    clusters = [entry.get("cluster", {}) for entry in _configs(admin, "dynamic_active_clusters")]
    chosen = next((c for c in clusters if cluster is None or c.get("name") == cluster), None)
    if chosen is None:
        return None
    assignment = chosen.get("load_assignment")
    if not assignment:  # EDS: the assignment arrived separately, keyed by service_name or cluster name
        wanted = (chosen.get("eds_cluster_config") or {}).get("service_name") or chosen.get("name")
        assignment = next(
            (
                entry.get("endpoint_config", {})
                for entry in _configs(admin, "dynamic_endpoint_configs", include_eds=True)
                if entry.get("endpoint_config", {}).get("cluster_name") in (wanted, chosen.get("name"))
            ),
            None,
        )
    for group in (assignment or {}).get("endpoints") or []:
        for lb in group.get("lb_endpoints") or []:
            sock = ((lb.get("endpoint") or {}).get("address") or {}).get("socket_address")
            if sock:
                if as_dict:
                    return dict(sock)
                return f"{sock.get('address')}:{sock.get('port_value', 0)}"
    return None


# -- /clusters and /certs: what Envoy does with its configuration ----------------------------------

#: /clusters' health flags in words (a host with none of them is healthy); the words stay English in
#: the rows, for code to compare, and a notebook's table shows them in the learner's language.
_HEALTH_FLAGS = {
    "failed_active_health_check": N_("failed active health check"),
    "failed_outlier_check": N_("ejected (outlier detection)"),
    "failed_eds_health": N_("unhealthy by EDS"),
    "pending_dynamic_removal": N_("being removed"),
    "pending_active_hc": N_("waiting for its first health check"),
    "excluded_via_immediate_hc_fail": N_("excluded (immediate health check failure)"),
    "active_hc_timeout": N_("health check timed out"),
}


def host_rows(admin: Any, cluster: str | None = None) -> list[dict[str, Any]]:
    """Each upstream host as Envoy sees it now (``/clusters``): its health in words (active
    health checks, outlier ejection) and its request counters (``rq_total``, ``rq_success``,
    ``rq_error``, ``cx_connect_fail``)."""
    admin = as_admin(admin)
    rows = []
    for status in admin.clusters().get("cluster_statuses", []):
        if cluster is not None and status.get("name") != cluster:
            continue
        for host in status.get("host_statuses", []):
            sock = (host.get("address") or {}).get("socket_address") or {}
            stats = {s.get("name"): int(s.get("value", 0) or 0) for s in host.get("stats", [])}
            flags = [text for key, text in _HEALTH_FLAGS.items() if (host.get("health_status") or {}).get(key)]
            rows.append({
                "cluster": status.get("name"),
                "address": f"{sock.get('address')}:{sock.get('port_value')}",
                "health": ", ".join(flags) or N_("healthy"),
                "requests": stats.get("rq_total", 0),
                "succeeded": stats.get("rq_success", 0),
                "failed": stats.get("rq_error", 0),
                "connect_failures": stats.get("cx_connect_fail", 0),
            })  # fmt: skip
    return rows


def certificate_rows(admin: Any) -> list[dict[str, Any]]:
    """Every certificate Envoy holds (``/certs``): serial (hex, as Envoy prints it), names,
    validity; ``kind`` says whether it is a certificate Envoy presents or a CA it trusts."""
    admin = as_admin(admin)
    rows = []
    for entry in admin.certs().get("certificates", []):
        for kind, key in (("certificate", "cert_chain"), ("trusted CA", "ca_cert")):
            for cert in entry.get(key) or []:
                names = [next(iter(n.values())) for n in cert.get("subject_alt_names") or [] if n]
                rows.append({
                    "kind": kind,
                    "serial": cert.get("serial_number"),
                    "names": ", ".join(str(n) for n in names),
                    "valid_from": cert.get("valid_from"),
                    "expires": cert.get("expiration_time"),
                    "days_left": int(cert["days_until_expiration"]) if cert.get("days_until_expiration") else None,
                    "source": cert.get("path"),
                })  # fmt: skip
    return rows
