"""Securing the ADS port and the workshop desk: certificates, TLS credentials, node authorization.

``names`` holds what the control plane, bootstraps and certificates agree on; ``authorization``
decides which client may fetch which node's snapshot (tokens, certificate names);
``certificates`` makes a throw-away CA and certificates; ``credentials`` serves TLS with
certificates re-read when renewed. The last two need ``cryptography`` (``pip install
labxds[classroom]``): they load on first use, so the names and authorizers never pull it in.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .authorization import CertificateAuthorizer, TokenAuthorizer
from .names import SERVER_NAME, TOKEN_HEADER

if TYPE_CHECKING:
    from .certificates import (
        Credential,
        TlsFiles,
        issue,
        load_credential,
        make_ca,
        renew_server_certificate,
        tls_files_in,
        write_tls_files,
    )
    from .credentials import (
        TlsFileError,
        channel_credentials,
        server_credentials,
        server_ssl_context,
    )

__all__ = [
    "SERVER_NAME",
    "TOKEN_HEADER",
    "CertificateAuthorizer",
    "Credential",
    "TlsFileError",
    "TlsFiles",
    "TokenAuthorizer",
    "channel_credentials",
    "issue",
    "load_credential",
    "make_ca",
    "renew_server_certificate",
    "server_credentials",
    "server_ssl_context",
    "tls_files_in",
    "write_tls_files",
]

_LAZY = {
    "Credential": "certificates", "TlsFiles": "certificates", "issue": "certificates",
    "load_credential": "certificates", "make_ca": "certificates", "renew_server_certificate": "certificates",
    "tls_files_in": "certificates", "write_tls_files": "certificates",
    "TlsFileError": "credentials", "channel_credentials": "credentials",
    "server_credentials": "credentials", "server_ssl_context": "credentials",
}  # fmt: skip


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'labxds.tls' has no attribute {name!r}")
    from importlib import import_module

    try:
        value = getattr(import_module(f".{module}", __name__), name)
    except ModuleNotFoundError as exc:
        if exc.name != "cryptography":
            raise
        raise ModuleNotFoundError(
            f"labxds.tls.{name} needs the 'cryptography' package: pip install 'labxds[classroom]'",
            name=exc.name,
        ) from exc
    globals()[name] = value
    return value
