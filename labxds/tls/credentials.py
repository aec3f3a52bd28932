"""TLS for the control plane's servers (ADS over gRPC, the workshop desk over HTTPS) and its
clients, with certificates re-read when their files are renewed."""

from __future__ import annotations

import datetime
import logging
import os
import ssl
import threading
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from .certificates import TlsFiles

__all__ = ["TlsFileError", "channel_credentials", "server_credentials", "server_ssl_context"]

log = logging.getLogger("labxds")


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
        out: list[tuple[int, int, int] | None] = []
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


