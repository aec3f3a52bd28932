"""Envoy bootstraps: the sandbox's ``envoy.yaml`` pointed at a control plane, and every edit made
to a bootstrap (ports, node, Delta, keepalive, TLS, tokens) in one place."""

from __future__ import annotations

import copy
import subprocess
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Protocol

import yaml

from ..net.addresses import parse_address
from ..tls.names import CA_SECRET, CLIENT_SECRET, SERVER_NAME, TOKEN_HEADER
from .binary import find_envoy
from .errors import EnvoyExited

__all__ = [
    "TLS_BOOTSTRAP",
    "ClientTls",
    "add_token",
    "admin_address",
    "ads_cluster_name",
    "ads_grpc_services",
    "bootstrap_path",
    "learner_bootstrap",
    "remove_token",
    "render_bootstrap",
    "render_tls_bootstrap",
    "validate_bootstrap",
    "without_client_certificate",
    "write_bootstrap",
]


class ClientTls(Protocol):
    """What a bootstrap needs of a client's TLS files (``labxds.tls.TlsFiles`` is one).

    ``envoy_*_sds``: files Envoy watches through filesystem SDS (renewals apply without a
    restart); without them the PEM files are named inline.
    """

    @property
    def ca(self) -> Path: ...
    @property
    def client_cert(self) -> Path: ...
    @property
    def client_key(self) -> Path: ...
    @property
    def server_name(self) -> str: ...
    @property
    def envoy_certificate_sds(self) -> Path | None: ...
    @property
    def envoy_validation_sds(self) -> Path | None: ...

_PACKAGE_DIR = Path(__file__).resolve().parent.parent  # labxds/
_PACKAGED_BOOTSTRAP = _PACKAGE_DIR / "data" / "envoy.yaml"
_REPO_BOOTSTRAP = _PACKAGE_DIR.parent / "envoy.yaml"


# --------------------------------------------------------------------------- bootstrap


def bootstrap_path() -> Path:
    """The sandbox bootstrap: the repo's top-level copy if present, else the packaged one."""
    return _REPO_BOOTSTRAP if _REPO_BOOTSTRAP.is_file() else _PACKAGED_BOOTSTRAP


def ads_grpc_services(bootstrap: dict) -> list[dict]:
    """The ``grpc_services`` of the bootstrap's ADS config: where tokens and the cluster name live."""
    ads = ((bootstrap.get("dynamic_resources") or {}).get("ads_config")) or {}
    return list(ads.get("grpc_services") or [])


def ads_cluster_name(bootstrap: dict) -> str:
    """Name of the cluster Envoy uses to reach the control plane, read from ads_config."""
    for service in ads_grpc_services(bootstrap):
        name = (service.get("envoy_grpc") or {}).get("cluster_name")
        if name:
            return name
    return "xds_cluster"


def _walk_dicts(node: Any) -> Iterable[dict]:
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _walk_dicts(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk_dicts(value)


def render_bootstrap(
    template: Path | str | None = None,
    *,
    xds_host: str = "127.0.0.1",
    xds_port: int = 18000,
    admin_host: str = "127.0.0.1",
    admin_port: int = 19000,
    node_id: str | None = None,
    node_cluster: str | None = None,
    delta: bool = False,
    keepalive: tuple[float, float] | None = None,
    client_features: Iterable[str] = (),
) -> dict:
    """Load the sandbox bootstrap and point it at a local control plane.

    The docker sandbox reaches `control-plane:18000` and exposes admin on 0.0.0.0;
    locally we rewrite those (and only those) so the same file works unchanged
    under compose. `delta=True` switches every gRPC xDS source to DELTA_GRPC.
    `keepalive=(interval, timeout)` makes Envoy ping the control plane every `interval`
    seconds and reconnect when a ping is not answered in `timeout`: without it, a connection
    that dies silently (a sleeping laptop, a dropped Wi-Fi) holds a dead ADS stream for as long
    as TCP takes to notice, which can be many minutes.
    `client_features` go in the node's ``client_features``: Envoy 1.40 announces
    ``xds.config.supports-resource-ttl`` (resource TTLs, heartbeats) only when its bootstrap lists it.
    """
    path = Path(template) if template is not None else bootstrap_path()
    try:
        bootstrap = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"Envoy bootstrap template not found: {path}") from None
    if not isinstance(bootstrap, dict):
        raise ValueError(f"{path}: an Envoy bootstrap must be a YAML mapping")
    bootstrap = copy.deepcopy(bootstrap)

    cluster_name = ads_cluster_name(bootstrap)
    clusters = (bootstrap.get("static_resources") or {}).get("clusters") or []
    xds = next((c for c in clusters if c.get("name") == cluster_name), None)
    if xds is None:
        raise KeyError(f"{path}: static_resources.clusters has no cluster named {cluster_name!r}")
    sockets = [
        lb["endpoint"]["address"]["socket_address"]
        for group in (xds.get("load_assignment") or {}).get("endpoints") or []
        for lb in group.get("lb_endpoints") or []
        if "socket_address" in ((lb.get("endpoint") or {}).get("address") or {})
    ]
    if not sockets:
        raise KeyError(f"{path}: cluster {cluster_name!r} has no load_assignment socket_address to rewrite")
    for sock in sockets:
        sock["address"] = xds_host
        sock["port_value"] = int(xds_port)

    admin = bootstrap.setdefault("admin", {})
    admin_sock = admin.setdefault("address", {}).setdefault("socket_address", {})
    admin_sock["address"] = admin_host
    admin_sock["port_value"] = int(admin_port)

    if node_id is not None:
        bootstrap.setdefault("node", {})["id"] = node_id
    if node_cluster is not None:
        bootstrap.setdefault("node", {})["cluster"] = node_cluster
    features = list(client_features)
    if features:
        node = bootstrap.setdefault("node", {})
        node["client_features"] = list(dict.fromkeys([*(node.get("client_features") or []), *features]))

    if delta:
        for source in _walk_dicts(bootstrap.get("dynamic_resources")):
            if source.get("api_type") == "GRPC":
                source["api_type"] = "DELTA_GRPC"
    if keepalive is not None:
        interval, timeout = keepalive
        options = xds.setdefault("typed_extension_protocol_options", {}).setdefault(
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            {"@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions"},
        )
        http2 = options.setdefault("explicit_http_config", {}).setdefault("http2_protocol_options", {})
        http2["connection_keepalive"] = {"interval": _duration(interval), "timeout": _duration(timeout)}
    return bootstrap


def _duration(seconds: float) -> str:
    if not seconds > 0:
        raise ValueError(f"keepalive times are positive seconds, not {seconds!r}")
    return f"{seconds:.3f}s"


def admin_address(bootstrap: dict) -> tuple[str, int]:
    sock = (((bootstrap.get("admin") or {}).get("address") or {}).get("socket_address")) or {}
    if "port_value" not in sock:
        raise KeyError("bootstrap has no admin.address.socket_address.port_value")
    return str(sock.get("address", "127.0.0.1")), int(sock["port_value"])


def write_bootstrap(bootstrap: dict, path: Path) -> Path:
    path.write_text(yaml.safe_dump(bootstrap, sort_keys=False))
    return path


def validate_bootstrap(bootstrap: dict | Path | str, *, timeout: float = 30) -> str:
    """Run `envoy --mode validate`; returns its output, raises EnvoyExited if Envoy rejects it.

    Catches typos in a bootstrap before a learner waits on an Envoy that will never start.
    """
    with tempfile.TemporaryDirectory(prefix="labxds-validate-") as tmp:
        if isinstance(bootstrap, dict):
            path = write_bootstrap(bootstrap, Path(tmp) / "bootstrap.yaml")
        else:
            path = Path(bootstrap)
        proc = subprocess.run(
            [str(find_envoy()), "--mode", "validate", "-c", str(path), "--disable-hot-restart", "-l", "warning"],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    output = (proc.stdout + proc.stderr).strip()
    if proc.returncode != 0:
        raise EnvoyExited(proc.returncode, output.splitlines()[-20:], f"Envoy rejected bootstrap {path}")
    return output


TLS_BOOTSTRAP = _PACKAGE_DIR.parent / "envoy-tls.yaml"

_TLS_SOCKET = "envoy.transport_sockets.tls"
_UPSTREAM_TLS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"


# -- Envoy's side -----------------------------------------------------------------------------


def _xds_cluster(bootstrap: dict) -> dict:
    name = ads_cluster_name(bootstrap)
    for cluster in (bootstrap.get("static_resources") or {}).get("clusters") or []:
        if cluster.get("name") == name:
            return cluster
    raise KeyError(f"the bootstrap has no static cluster {name!r} for the control plane")


def render_tls_bootstrap(
    files: ClientTls,
    *,
    template: Path | str | None = None,
    token: str | None = None,
    **render: Any,
) -> dict:
    """The TLS bootstrap (``envoy-tls.yaml``) pointed at ``files`` and a local control plane.

    ``render`` takes render_bootstrap's arguments (``xds_port``, ``admin_port``, ``node_id``,
    ``delta``...). The xds_cluster's UpstreamTlsContext gets the client certificate and key, the
    CA that must have signed the control plane's certificate, and ``files.server_name`` as SNI
    and as the one subject alt name accepted. Without envoy-tls.yaml (an installed package), the
    plain bootstrap gets the same transport socket added. ``token`` adds the node's token.
    """
    if template is None:
        template = TLS_BOOTSTRAP if TLS_BOOTSTRAP.is_file() else None
    bootstrap = render_bootstrap(template, **render)
    cluster = _xds_cluster(bootstrap)
    socket = cluster.get("transport_socket")
    if not socket or socket.get("name") != _TLS_SOCKET:
        socket = cluster["transport_socket"] = {"name": _TLS_SOCKET, "typed_config": {"@type": _UPSTREAM_TLS}}
    tls = socket.setdefault("typed_config", {"@type": _UPSTREAM_TLS})
    tls["sni"] = files.server_name
    common = tls.setdefault("common_tls_context", {})
    common.setdefault("alpn_protocols", ["h2"])
    for key in ("tls_certificates", "tls_certificate_sds_secret_configs", "validation_context",
                "validation_context_sds_secret_config"):
        common.pop(key, None)
    if files.envoy_certificate_sds is not None and files.envoy_validation_sds is not None:
        # Envoy's filesystem SDS: it watches these files and the PEM files they name, so renewed
        # certificates and CA bundles apply without restarting Envoy
        common["tls_certificate_sds_secret_configs"] = [_sds_config(CLIENT_SECRET, files.envoy_certificate_sds)]
        common["validation_context_sds_secret_config"] = _sds_config(CA_SECRET, files.envoy_validation_sds)
    else:
        common["tls_certificates"] = [{
            "certificate_chain": {"filename": str(files.client_cert)},
            "private_key": {"filename": str(files.client_key)},
        }]
        common["validation_context"] = {
            "trusted_ca": {"filename": str(files.ca)},
            "match_typed_subject_alt_names": [{"san_type": "DNS", "matcher": {"exact": files.server_name}}],
        }
    if token is not None:
        add_token(bootstrap, token)
    return bootstrap


def _sds_config(name: str, path: Path) -> dict:
    return {"name": name, "sds_config": {"path_config_source": {"path": str(Path(path).absolute())},
                                         "resource_api_version": "V3"}}


def add_token(bootstrap: dict, token: str, header: str = TOKEN_HEADER) -> dict:
    """Make Envoy send ``token`` as gRPC initial metadata on its ADS streams (in place; returned).

    The token travels in the clear unless the xds_cluster uses TLS: use both.
    """
    services = ads_grpc_services(bootstrap)
    if not services:
        raise KeyError("the bootstrap has no dynamic_resources.ads_config.grpc_services")
    for service in services:
        entries = [m for m in service.get("initial_metadata") or [] if m.get("key") != header]
        entries.append({"key": header, "value": token})
        service["initial_metadata"] = entries
    return bootstrap


def without_client_certificate(bootstrap: dict) -> dict:
    """A copy of a TLS bootstrap whose Envoy presents no certificate (to show it is refused)."""
    out = copy.deepcopy(bootstrap)
    common = _xds_cluster(out)["transport_socket"]["typed_config"]["common_tls_context"]
    common.pop("tls_certificates", None)
    common.pop("tls_certificate_sds_secret_configs", None)
    return out


def remove_token(bootstrap: dict, header: str = TOKEN_HEADER) -> dict:
    """Drop the token metadata from the ADS streams (in place; returned)."""
    for service in ads_grpc_services(bootstrap):
        kept = [m for m in service.get("initial_metadata") or [] if m.get("key") != header]
        if kept:
            service["initial_metadata"] = kept
        else:
            service.pop("initial_metadata", None)
    return bootstrap


def learner_bootstrap(
    node: str,
    control_plane: str = "127.0.0.1:18000",
    *,
    token: str | None = None,
    tls_ca: str | Path | None = None,
    tls_cert: str | Path | None = None,
    tls_key: str | Path | None = None,
    server_name: str | None = None,
    admin_port: int = 19000,
    admin_host: str = "127.0.0.1",
    delta: bool = False,
    metadata: Mapping[str, Any] | None = None,
    keepalive: tuple[float, float] | None = (30.0, 10.0),
) -> dict:
    """A learner's Envoy bootstrap: node id ``node``, ADS at ``control_plane`` (HOST:PORT).

    ``token`` is sent as gRPC initial metadata (``x-labxds-token``) on the ADS stream; the TLS
    files turn on TLS to the control plane (mutual TLS with a client certificate and key).
    ``metadata`` goes into the node's metadata (a learner's lab announces there where its
    listener, admin and echo services are). ``keepalive`` (interval, timeout in seconds) has
    Envoy ping the instructor's control plane and reconnect if a ping goes unanswered: across a
    network, a connection can die without either side being told.
    """
    if not node:
        raise ValueError("a learner's bootstrap needs a node id (the learner's name)")
    host, port = parse_address(control_plane)
    tls_given = [p for p in (tls_ca, tls_cert, tls_key) if p is not None]
    if tls_given and len(tls_given) != 3:
        raise ValueError("TLS needs all three of --tls-ca, --tls-cert and --tls-key")
    render: dict[str, Any] = dict(xds_host=host, xds_port=port, admin_host=admin_host, admin_port=admin_port,
                                  node_id=node, node_cluster="workshop", delta=delta, keepalive=keepalive)
    if tls_given:
        paths = [Path(p).resolve() for p in tls_given]
        for p in paths:
            if not p.is_file():
                raise FileNotFoundError(f"TLS file not found: {p}")
        files = _ClientTlsFiles(ca=paths[0], client_cert=paths[1], client_key=paths[2],
                                server_name=server_name or SERVER_NAME)
        bootstrap = render_tls_bootstrap(files, token=token, **render)
    else:
        bootstrap = render_bootstrap(**render)
        if token is not None:
            add_token(bootstrap, token)
    if token is None:  # the TLS template carries a placeholder token
        remove_token(bootstrap)
    if metadata:
        bootstrap.setdefault("node", {}).setdefault("metadata", {}).update(metadata)
    return bootstrap


@dataclass(frozen=True)
class _ClientTlsFiles:
    """A client's side of TlsFiles: what render_tls_bootstrap reads."""

    ca: Path
    client_cert: Path
    client_key: Path
    server_name: str
    envoy_certificate_sds: Path | None = None
    envoy_validation_sds: Path | None = None
