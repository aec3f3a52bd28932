"""Securing the ADS port: TLS, mutual TLS, and per-node tokens.

The control plane hands every node its whole configuration, secrets included, and believes
whatever node id a client claims. On loopback only this machine can ask; the moment ADS listens
on another address (docker compose, a shared VM), two things are needed:

* **mutual TLS**, so only clients holding a certificate from the lab's own CA can open a stream,
  and Envoy knows it talks to the real control plane (``make_ca``, ``issue``,
  ``write_tls_files``, ``server_credentials``, ``render_tls_bootstrap``);
* **node authorization**, so a client can only fetch the snapshot of the node it is entitled to:
  ``TokenAuthorizer({node_id: token})`` plugs into ``ControlPlane(authorize=...)`` and checks the
  token Envoy sends as gRPC initial metadata (``add_token`` puts it in a bootstrap); with mutual
  TLS, ``CertificateAuthorizer()`` accepts a node id only from a client whose certificate bears
  that name (``write_tls_files(dir, client_name=node_id, ca=ca)``).

Everything is generated locally with ``cryptography``: a throw-away CA valid for days, not a PKI.

    files = write_tls_files(tmp_dir)                      # CA, server and client certificates
    cp = ControlPlane(0, server_credentials=server_credentials(files),
                      authorize=TokenAuthorizer({"test-id": "s3cret"})).start()
    bootstrap = render_tls_bootstrap(files, xds_port=cp.port, admin_port=0, token="s3cret")
    Envoy(bootstrap).start()
"""

from __future__ import annotations

import copy
import datetime
import hmac
import ipaddress
import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .server import PEER_COMMON_NAME, PEER_DNS_NAMES

__all__ = [
    "SERVER_NAME",
    "TLS_BOOTSTRAP",
    "TOKEN_HEADER",
    "CertificateAuthorizer",
    "Credential",
    "TlsFiles",
    "TokenAuthorizer",
    "add_token",
    "channel_credentials",
    "issue",
    "make_ca",
    "render_tls_bootstrap",
    "server_credentials",
    "write_tls_files",
]

log = logging.getLogger("labxds")

#: The name Envoy asks for (SNI) and checks in the control plane's certificate.
SERVER_NAME = "labxds-control-plane"
#: The gRPC metadata header that carries a node's token.
TOKEN_HEADER = "x-labxds-token"
#: The TLS variant of the sandbox bootstrap, next to envoy.yaml at the repository's root.
TLS_BOOTSTRAP = Path(__file__).resolve().parent.parent / "envoy-tls.yaml"

_TLS_SOCKET = "envoy.transport_sockets.tls"
_UPSTREAM_TLS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"


# -- certificates ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Credential:
    """A certificate and its private key."""

    certificate: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def cert_pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    @property
    def common_name(self) -> str:
        attrs = self.certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        return str(attrs[0].value) if attrs else ""

    def write(self, cert_path: Path | str, key_path: Path | str) -> tuple[Path, Path]:
        """Write PEM files; the key is readable by its owner only (0600)."""
        cert_path, key_path = Path(cert_path), Path(key_path)
        cert_path.write_bytes(self.cert_pem)
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(self.key_pem)
        os.chmod(key_path, 0o600)  # an existing file keeps its mode through O_CREAT
        return cert_path, key_path


def _name(common_name: str) -> x509.Name:
    return x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "labxds"),
        x509.NameAttribute(NameOID.COMMON_NAME, common_name),
    ])


def _validity(days: float) -> tuple[datetime.datetime, datetime.datetime]:
    now = datetime.datetime.now(datetime.timezone.utc)
    # A little backdating absorbs clock skew between this machine and a container.
    return now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=days)


def make_ca(common_name: str = "labxds lab CA", *, days: float = 30) -> Credential:
    """A self-signed certificate authority (ECDSA P-256) that may sign leaf certificates only."""
    key = ec.generate_private_key(ec.SECP256R1())
    not_before, not_after = _validity(days)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                key_encipherment=False, data_encipherment=False, key_agreement=False,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return Credential(cert, key)


def issue(
    ca: Credential,
    common_name: str,
    *,
    server: bool = False,
    client: bool = False,
    dns_names: Iterable[str] = (),
    ip_addresses: Iterable[str] = (),
    days: float = 30,
) -> Credential:
    """A leaf certificate signed by ``ca``, for a TLS ``server``, a ``client``, or both.

    A server certificate names what clients will check: ``dns_names`` (the SNI, e.g.
    ``labxds-control-plane``, or ``localhost``) and ``ip_addresses`` (``127.0.0.1``).
    """
    if not (server or client):
        raise ValueError("issue() needs server=True, client=True or both")
    key = ec.generate_private_key(ec.SECP256R1())
    not_before, not_after = _validity(days)
    usages = ([ExtendedKeyUsageOID.SERVER_AUTH] if server else []) + ([ExtendedKeyUsageOID.CLIENT_AUTH] if client else [])
    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in dns_names]
    sans += [x509.IPAddress(ipaddress.ip_address(a)) for a in ip_addresses]
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, key_cert_sign=False, crl_sign=False, content_commitment=False,
                key_encipherment=False, data_encipherment=False, key_agreement=False,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False
        )
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return Credential(builder.sign(ca.key, hashes.SHA256()), key)


@dataclass(frozen=True)
class TlsFiles:
    """PEM files for the ADS port: the CA, the control plane's and one client's certificate."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    server_name: str = SERVER_NAME


def write_tls_files(
    directory: Path | str,
    *,
    server_name: str = SERVER_NAME,
    client_name: str = "envoy",
    ca: Credential | None = None,
    days: float = 30,
) -> TlsFiles:
    """Make (or reuse) a CA and write ca.pem, server.pem/server-key.pem, client.pem/client-key.pem.

    The server certificate is valid for ``server_name``, ``localhost`` and ``127.0.0.1``, so
    Envoy can check it whether it reaches the control plane by name or by loopback address.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    ca = ca or make_ca(days=days)
    server = issue(ca, server_name, server=True, dns_names=[server_name, "localhost"],
                   ip_addresses=["127.0.0.1", "::1"], days=days)
    client = issue(ca, client_name, client=True, days=days)
    ca_path = directory / "ca.pem"
    ca_path.write_bytes(ca.cert_pem)
    server_cert, server_key = server.write(directory / "server.pem", directory / "server-key.pem")
    client_cert, client_key = client.write(directory / "client.pem", directory / "client-key.pem")
    return TlsFiles(ca_path, server_cert, server_key, client_cert, client_key, server_name)


# -- gRPC credentials -----------------------------------------------------------------------


def server_credentials(files: TlsFiles, *, require_client_auth: bool = True) -> Any:
    """``grpc.ssl_server_credentials`` for ControlPlane(server_credentials=...).

    With ``require_client_auth`` (the default) a client must present a certificate signed by
    the CA in ``files.ca``: a client without one, or with one from another CA, fails the TLS
    handshake and never reaches the xDS handlers.
    """
    import grpc

    pair = (files.server_key.read_bytes(), files.server_cert.read_bytes())
    return grpc.ssl_server_credentials(
        [pair], root_certificates=files.ca.read_bytes(), require_client_auth=require_client_auth
    )


def channel_credentials(files: TlsFiles, *, client_certificate: bool = True) -> Any:
    """Channel credentials for a Python gRPC client of the control plane (tests, tools).

    Connect to ``127.0.0.1`` with ``options=[("grpc.ssl_target_name_override", files.server_name)]``
    or to the server name itself.
    """
    import grpc

    if client_certificate:
        return grpc.ssl_channel_credentials(
            root_certificates=files.ca.read_bytes(),
            private_key=files.client_key.read_bytes(),
            certificate_chain=files.client_cert.read_bytes(),
        )
    return grpc.ssl_channel_credentials(root_certificates=files.ca.read_bytes())


# -- Envoy's side -----------------------------------------------------------------------------


def _xds_cluster(bootstrap: dict) -> dict:
    from .envoy import _ads_cluster_name

    name = _ads_cluster_name(bootstrap)
    for cluster in (bootstrap.get("static_resources") or {}).get("clusters") or []:
        if cluster.get("name") == name:
            return cluster
    raise KeyError(f"the bootstrap has no static cluster {name!r} for the control plane")


def render_tls_bootstrap(
    files: TlsFiles,
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
    from .envoy import render_bootstrap

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
    common["tls_certificates"] = [{
        "certificate_chain": {"filename": str(files.client_cert)},
        "private_key": {"filename": str(files.client_key)},
    }]
    validation = common.setdefault("validation_context", {})
    validation["trusted_ca"] = {"filename": str(files.ca)}
    validation["match_typed_subject_alt_names"] = [
        {"san_type": "DNS", "matcher": {"exact": files.server_name}}
    ]
    if token is not None:
        add_token(bootstrap, token)
    return bootstrap


def add_token(bootstrap: dict, token: str, header: str = TOKEN_HEADER) -> dict:
    """Make Envoy send ``token`` as gRPC initial metadata on its ADS streams (in place; returned).

    The token travels in the clear unless the xds_cluster uses TLS: use both.
    """
    ads = ((bootstrap.get("dynamic_resources") or {}).get("ads_config")) or {}
    services = ads.get("grpc_services") or []
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
    return out


# -- node authorization ---------------------------------------------------------------------


class TokenAuthorizer:
    """``ControlPlane(authorize=TokenAuthorizer({"node-a": "token-a"}))``.

    A stream is accepted only for a listed node id whose own token arrives in the ``header``
    metadata (``x-labxds-token``). Anything else ends the stream with PERMISSION_DENIED and
    logs why, never the token itself. A node therefore cannot ask for another node's snapshot
    by claiming its id. Tokens are compared in constant time.
    """

    def __init__(self, tokens: Mapping[str, str], *, header: str = TOKEN_HEADER) -> None:
        for node, token in tokens.items():
            if not node or not isinstance(token, str) or not token:
                raise ValueError(f"node {node!r} needs a non-empty token")
        self._tokens = {node: token.encode() for node, token in tokens.items()}
        self.header = header.lower()  # gRPC metadata keys are lower case
        self.refused = 0

    def __repr__(self) -> str:
        return f"TokenAuthorizer({len(self._tokens)} node(s), header {self.header!r})"

    @property
    def nodes(self) -> list[str]:
        return sorted(self._tokens)

    def __call__(self, node_id: str, metadata: Mapping[str, str]) -> bool:
        expected = self._tokens.get(node_id)
        given = metadata.get(self.header)
        if expected is None:
            reason = "unknown node id"
        elif given is None:
            reason = f"no {self.header} metadata"
        elif not hmac.compare_digest(given.encode(), expected):
            reason = f"wrong {self.header}"
        else:
            return True
        self.refused += 1
        log.warning("labxds: refusing node %r: %s", node_id, reason)
        return False


class CertificateAuthorizer:
    """``ControlPlane(authorize=CertificateAuthorizer(), server_credentials=server_credentials(files))``.

    Mutual TLS proves a client holds a certificate from the lab's CA; this also ties the
    certificate to one node: a stream is accepted only if its node id is the certificate's common
    name or one of its DNS names, so alice's certificate cannot fetch bob's snapshot. A client
    without a verified certificate (no mTLS) is refused. Combine with tokens if both are wanted:
    ``authorize=lambda node, md: certs(node, md) and tokens(node, md)``.
    """

    def __init__(self) -> None:
        self.refused = 0

    def __repr__(self) -> str:
        return "CertificateAuthorizer()"

    def __call__(self, node_id: str, metadata: Mapping[str, str]) -> bool:
        names = {n for n in [metadata.get(PEER_COMMON_NAME), *metadata.get(PEER_DNS_NAMES, "").split(",")] if n}
        if node_id in names:
            return True
        self.refused += 1
        reason = (f"its client certificate names {', '.join(sorted(names))}" if names
                  else "no verified client certificate (is the port using mutual TLS?)")
        log.warning("labxds: refusing node %r: %s", node_id, reason)
        return False
