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

Certificates rotate without restarts: ``server_credentials`` reads the files again when they
change (``renew_server_certificate``), and ``render_tls_bootstrap`` has Envoy read its own through
filesystem SDS, which Envoy watches.

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
import json
import logging
import os
import ssl
import threading
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
    "TlsFileError",
    "TlsFiles",
    "TokenAuthorizer",
    "add_token",
    "channel_credentials",
    "issue",
    "make_ca",
    "render_tls_bootstrap",
    "renew_server_certificate",
    "server_credentials",
    "server_ssl_context",
    "tls_files_in",
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
        """Write PEM files, each replaced whole (a reader sees the old file or the new one, never
        half of one); the key is readable by its owner only (0600). Key first: a reader that
        finds a new certificate also finds its key."""
        cert_path, key_path = Path(cert_path), Path(key_path)
        _replace(key_path, self.key_pem, 0o600)
        _replace(cert_path, self.cert_pem, 0o644)
        return cert_path, key_path


def _replace(path: Path, data: bytes, mode: int) -> None:
    """Write ``data`` to a temporary file beside ``path`` and rename it over ``path``."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, mode)  # O_CREAT's mode is filtered by the umask
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


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
    """PEM files for the ADS port: the CA, the control plane's and one client's certificate.

    ``envoy_certificate_sds`` and ``envoy_validation_sds`` are Envoy's filesystem SDS files for
    the client certificate and the CA (written by :func:`write_tls_files`): a bootstrap that
    reads them reloads new certificates without a restart.
    """

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    server_name: str = SERVER_NAME
    envoy_certificate_sds: Path | None = None
    envoy_validation_sds: Path | None = None


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
    ca_path = directory / _CA_FILE
    _replace(ca_path, ca.cert_pem, 0o644)
    server_cert, server_key = server.write(directory / _SERVER_FILES[0], directory / _SERVER_FILES[1])
    client_cert, client_key = client.write(directory / _CLIENT_FILES[0], directory / _CLIENT_FILES[1])
    certificate_sds, validation_sds = directory / "envoy-client-sds.json", directory / "envoy-ca-sds.json"
    _replace(certificate_sds, _sds_file(_CLIENT_SECRET, {"tls_certificate": {
        "certificate_chain": {"filename": str(client_cert.absolute())},
        "private_key": {"filename": str(client_key.absolute())},
    }}), 0o644)
    _replace(validation_sds, _sds_file(_CA_SECRET, {"validation_context": {
        "trusted_ca": {"filename": str(ca_path.absolute())},
        "match_typed_subject_alt_names": [{"san_type": "DNS", "matcher": {"exact": server_name}}],
    }}), 0o644)
    return TlsFiles(ca_path, server_cert, server_key, client_cert, client_key, server_name,
                    certificate_sds, validation_sds)


_CA_FILE = "ca.pem"
_SERVER_FILES = ("server.pem", "server-key.pem")
_CLIENT_FILES = ("client.pem", "client-key.pem")


def tls_files_in(directory: Path | str, *, server_name: str = SERVER_NAME) -> TlsFiles:
    """The files :func:`write_tls_files` writes, in ``directory`` (yours, from any CA, named the same)."""
    d = Path(directory)
    return TlsFiles(d / _CA_FILE, d / _SERVER_FILES[0], d / _SERVER_FILES[1], d / _CLIENT_FILES[0],
                    d / _CLIENT_FILES[1], server_name)


def renew_server_certificate(files: TlsFiles, ca: Credential, *, days: float = 30) -> Credential:
    """Issue a new certificate for the control plane from ``ca`` and write it over the old one.

    A control plane started with ``server_credentials(files)`` uses it from the next connection
    on; streams already open keep theirs.
    """
    server = issue(ca, files.server_name, server=True, dns_names=[files.server_name, "localhost"],
                   ip_addresses=["127.0.0.1", "::1"], days=days)
    server.write(files.server_cert, files.server_key)
    return server


_SECRET_TYPE = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
_CLIENT_SECRET = "labxds_xds_client_certificate"
_CA_SECRET = "labxds_xds_trusted_ca"


def _sds_file(name: str, secret: dict) -> bytes:
    return json.dumps({"resources": [{"@type": _SECRET_TYPE, "name": name, **secret}]}, indent=2).encode() + b"\n"


# -- gRPC credentials -----------------------------------------------------------------------


class TlsFileError(ValueError):
    """A certificate, key or CA file the control plane cannot serve with; names the file."""

    def __init__(self, path: Path | str, reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


def _server_material(files: TlsFiles) -> tuple[bytes, bytes, bytes, str]:
    """Key, certificate chain and CA bundle as read, checked; and a description of the certificate.

    gRPC would accept a key that does not belong to the certificate (the handshakes fail later)
    or an expired certificate, so both are checked here, where the file can still be named.
    """

    def read(path: Path) -> bytes:
        try:
            return path.read_bytes()
        except OSError as exc:
            raise TlsFileError(path, f"cannot read it: {exc.strerror or exc}") from None

    key_pem, cert_pem, ca_pem = read(files.server_key), read(files.server_cert), read(files.ca)
    try:
        chain = x509.load_pem_x509_certificates(cert_pem)
    except ValueError:
        raise TlsFileError(files.server_cert, "not a PEM certificate") from None
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError):
        raise TlsFileError(files.server_key, "not an unencrypted PEM private key") from None
    try:
        cas = x509.load_pem_x509_certificates(ca_pem)
    except ValueError:
        raise TlsFileError(files.ca, "not a PEM certificate (a CA bundle is PEM certificates one after another)") from None
    leaf = chain[0]
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(*spki) != leaf.public_key().public_bytes(*spki):
        raise TlsFileError(files.server_key, f"this key does not belong to the certificate in {files.server_cert.name} "
                           "(a renewal written halfway?)")
    now = datetime.datetime.now(datetime.timezone.utc)
    if leaf.not_valid_after_utc <= now:
        raise TlsFileError(files.server_cert, f"the certificate expired on {leaf.not_valid_after_utc:%Y-%m-%d %H:%M} UTC")
    if leaf.not_valid_before_utc > now:
        raise TlsFileError(files.server_cert, f"the certificate is not valid before {leaf.not_valid_before_utc:%Y-%m-%d %H:%M} UTC")
    described = (f"{files.server_cert.name} serial {_serial_hex(leaf.serial_number)}, valid until "
                 f"{leaf.not_valid_after_utc:%Y-%m-%d %H:%M} UTC; {files.ca.name}: {len(cas)} CA certificate(s)")
    return key_pem, cert_pem, ca_pem, described


def _serial_hex(serial: int) -> str:
    """A serial number as Envoy's ``/certs`` shows it: whole bytes in hex (a leading 0 kept)."""
    text = format(serial, "x")
    return "0" + text if len(text) % 2 else text


class _WatchedTlsFiles:
    """The control plane's key, certificate and CA bundle, read again when one of them changes
    (an unchanged set costs three ``stat`` calls). Files that cannot be served are reported once,
    naming the file, and the previous material stays in use."""

    def __init__(self, files: TlsFiles, what: str) -> None:
        self.files = files
        self.what = what  # who serves with them, for the log: "the ADS port", "the desk"
        self._lock = threading.Lock()
        self._stamp = self._stat()
        key, cert, ca, self.described = _server_material(files)
        self.material = key, cert, ca
        #: Why the files on disk are not the ones in use (None when they are).
        self.last_error: TlsFileError | None = None

    def _stat(self) -> tuple[tuple[int, int, int] | None, ...]:
        out = []
        for path in (self.files.server_key, self.files.server_cert, self.files.ca):
            try:
                st = os.stat(path)
                out.append((st.st_mtime_ns, st.st_size, st.st_ino))
            except OSError:
                out.append(None)
        return tuple(out)

    def poll(self) -> tuple[bytes, bytes, bytes] | None:
        """New (key, certificate, CA) if the files changed and can be served, else None."""
        with self._lock:
            stamp = self._stat()
            if stamp == self._stamp:
                return None
            try:
                key, cert, ca, described = _server_material(self.files)
            except TlsFileError as exc:
                if self.last_error is None or str(exc) != str(self.last_error):
                    log.error("%s -- %s keeps its certificate (%s)", exc, self.what, self.described)
                self.last_error = exc
                return None  # stamp kept: the next handshake looks again (the rest may still be coming)
            self._stamp, self.described, self.last_error = stamp, described, None
            self.material = key, cert, ca
            log.info("TLS files changed: new connections to %s get %s", self.what, described)
            return self.material


class _ReloadingCertificates:
    """gRPC's certificate fetcher, called before every TLS handshake: new material or None."""

    def __init__(self, files: TlsFiles) -> None:
        import grpc

        self._grpc = grpc
        self.watch = _WatchedTlsFiles(files, "the ADS port")
        self.initial = self._config(*self.watch.material)

    def _config(self, key: bytes, cert: bytes, ca: bytes) -> Any:
        return self._grpc.ssl_server_certificate_configuration([(key, cert)], root_certificates=ca)

    def __call__(self) -> Any:
        try:
            material = self.watch.poll()
            return self._config(*material) if material is not None else None
        except Exception:  # a bug here must not fail every handshake
            log.exception("reloading the TLS files failed; keeping the certificate in use")
            return None


def server_ssl_context(files: TlsFiles, *, require_client_auth: bool = True, what: str = "the desk") -> ssl.SSLContext:
    """An ``ssl`` server context on the control plane's files (the workshop desk's HTTPS) that,
    like :func:`server_credentials`, picks up renewed files at the next handshake."""
    watch = _WatchedTlsFiles(files, what)

    def context() -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(str(files.server_cert), str(files.server_key))
        ctx.load_verify_locations(cadata=watch.material[2].decode())
        ctx.verify_mode = ssl.CERT_REQUIRED if require_client_auth else ssl.CERT_OPTIONAL
        return ctx

    current = [context()]

    def on_hello(sock: ssl.SSLObject | ssl.SSLSocket, server_name: str | None, _ctx: ssl.SSLContext) -> None:
        try:
            if watch.poll() is not None:
                fresh = context()
                fresh.sni_callback = on_hello
                current[0] = fresh
            if sock.context is not current[0]:
                sock.context = current[0]
        except Exception:
            log.exception("reloading the TLS files failed; keeping the certificate in use")

    current[0].sni_callback = on_hello
    return current[0]


def server_credentials(files: TlsFiles, *, require_client_auth: bool = True, reload: bool = True) -> Any:
    """gRPC server credentials for ControlPlane(server_credentials=...).

    With ``require_client_auth`` (the default) a client must present a certificate signed by
    the CA in ``files.ca``: a client without one, or with one from another CA, fails the TLS
    handshake and never reaches the xDS handlers.

    With ``reload`` (the default) the files are read again when they change: a renewed
    certificate (:func:`renew_server_certificate`) or a new CA bundle applies to the next
    connection, with no restart; open streams keep the TLS session they have. Files that cannot
    be served (a key that does not match, an expired certificate, garbage) are logged with the
    file's name and the previous certificate stays. Raises TlsFileError if they are bad at start.
    """
    import grpc

    if reload:
        fetcher = _ReloadingCertificates(files)
        return grpc.dynamic_ssl_server_credentials(
            fetcher.initial, fetcher, require_client_authentication=require_client_auth
        )
    key, cert, ca, _ = _server_material(files)
    return grpc.ssl_server_credentials([(key, cert)], root_certificates=ca, require_client_auth=require_client_auth)


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
    for key in ("tls_certificates", "tls_certificate_sds_secret_configs", "validation_context",
                "validation_context_sds_secret_config"):
        common.pop(key, None)
    if files.envoy_certificate_sds is not None and files.envoy_validation_sds is not None:
        # Envoy's filesystem SDS: it watches these files and the PEM files they name, so renewed
        # certificates and CA bundles apply without restarting Envoy
        common["tls_certificate_sds_secret_configs"] = [_sds_config(_CLIENT_SECRET, files.envoy_certificate_sds)]
        common["validation_context_sds_secret_config"] = _sds_config(_CA_SECRET, files.envoy_validation_sds)
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
    common.pop("tls_certificate_sds_secret_configs", None)
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
