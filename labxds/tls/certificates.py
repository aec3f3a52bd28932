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

import datetime
import ipaddress
import json
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .names import CA_SECRET, CLIENT_SECRET, SERVER_NAME

__all__ = [
    "Credential",
    "TlsFiles",
    "issue",
    "make_ca",
    "renew_server_certificate",
    "tls_files_in",
    "write_tls_files",
]

log = logging.getLogger("labxds")


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
    def serial(self) -> str:
        """The serial number as Envoy's ``/certs`` prints it: hex, whole bytes (a leading 0 kept)."""
        text = format(self.certificate.serial_number, "x")
        return text.zfill(len(text) + len(text) % 2)

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


def load_credential(cert_path: Path | str, key_path: Path | str) -> Credential:
    """A certificate and its key from PEM files (a CA kept on disk, to go on issuing from it)."""
    cert_path, key_path = Path(cert_path), Path(key_path)
    try:
        certificate = x509.load_pem_x509_certificate(cert_path.read_bytes())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{cert_path}: not a PEM certificate: {exc}") from None
    try:
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise ValueError(f"{key_path}: not an unencrypted PEM private key: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{key_path}: expected an EC private key, found {type(key).__name__}")
    return Credential(certificate, key)


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
    _replace(certificate_sds, _sds_file(CLIENT_SECRET, {"tls_certificate": {
        "certificate_chain": {"filename": str(client_cert.absolute())},
        "private_key": {"filename": str(client_key.absolute())},
    }}), 0o644)
    _replace(validation_sds, _sds_file(CA_SECRET, {"validation_context": {
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


def _sds_file(name: str, secret: dict) -> bytes:
    return json.dumps({"resources": [{"@type": _SECRET_TYPE, "name": name, **secret}]}, indent=2).encode() + b"\n"


