"""Helpers for tests that run a real Envoy without a control plane.

Envoy can read xDS resources from files (path_config_source), which puts real
dynamic clusters, listeners, routes and endpoints into /config_dump without any
gRPC server. Ports are always picked by the kernel: other test sessions share
this machine.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import yaml

CLUSTER = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
LISTENER = "type.googleapis.com/envoy.config.listener.v3.Listener"
ROUTE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
ENDPOINTS = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on right now (bind 0, read it back, release it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def free_ports(n: int) -> list[int]:
    """n distinct ports nobody listens on now (bound together, so they differ)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def presented_certificate(port: int, cert: Path, key: Path) -> Any:
    """The certificate a TLS server on 127.0.0.1:``port`` presents to a new connection (a
    handshake with client certificate ``cert``/``key``, no request): which one, not whether to trust it."""
    import ssl

    from cryptography import x509

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.load_cert_chain(str(cert), str(key))
    context.set_alpn_protocols(["h2", "http/1.1"])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with context.wrap_socket(raw) as tls:
            return x509.load_der_x509_certificate(tls.getpeercert(binary_form=True))


def serial_hex(serial: int) -> str:
    """A certificate serial as Envoy's /certs prints it: whole bytes in hex, so a leading zero
    nibble stays (one random serial in eight has one)."""
    text = format(serial, "x")
    return text.zfill(len(text) + len(text) % 2)


def socket_address(host: str, port: int) -> dict:
    return {"socket_address": {"address": host, "port_value": port}}


def load_assignment(cluster: str, endpoints: list[tuple[str, int]]) -> dict:
    return {
        "cluster_name": cluster,
        "endpoints": [{"lb_endpoints": [{"endpoint": {"address": socket_address(h, p)}} for h, p in endpoints]}],
    }


def path_source(path: Path) -> dict:
    return {"resource_api_version": "V3", "path_config_source": {"path": str(path)}}


def logical_dns_cluster(name: str, host: str, port: int) -> dict:
    """Like the sandbox's example_proxy_cluster: LOGICAL_DNS with an inline load_assignment."""
    return {
        "@type": CLUSTER,
        "name": name,
        "type": "LOGICAL_DNS",
        "connect_timeout": "1s",
        "dns_lookup_family": "V4_ONLY",
        "load_assignment": load_assignment(name, [(host, port)]),
    }


def eds_cluster(name: str, eds_file: Path) -> dict:
    return {
        "@type": CLUSTER,
        "name": name,
        "type": "EDS",
        "connect_timeout": "1s",
        "eds_cluster_config": {"eds_config": path_source(eds_file)},
    }


def http_listener(name: str, port: int, route_config: str, rds_file: Path, host: str = "127.0.0.1") -> dict:
    hcm = {
        "@type": HCM,
        "stat_prefix": "http",
        "rds": {"route_config_name": route_config, "config_source": path_source(rds_file)},
        "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER}}],
    }
    return {
        "@type": LISTENER,
        "name": name,
        "address": socket_address(host, port),
        "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]}],
    }


def write_resources(path: Path, resources: list[dict], version: str = "1") -> Path:
    """A DiscoveryResponse-shaped YAML file, the format path_config_source reads."""
    path.write_text(yaml.safe_dump({"version_info": version, "resources": resources}, sort_keys=False))
    return path


def file_bootstrap(workdir: Path, *, cds: Path | None = None, lds: Path | None = None, admin_port: int = 0) -> dict:
    """A bootstrap whose clusters and listeners come from files instead of a control plane."""
    dynamic: dict[str, Any] = {}
    if cds is not None:
        dynamic["cds_config"] = path_source(cds)
    if lds is not None:
        dynamic["lds_config"] = path_source(lds)
    return {
        "node": {"id": "test-id", "cluster": "test-cluster"},
        "dynamic_resources": dynamic,
        "admin": {"address": socket_address("127.0.0.1", admin_port)},
    }
