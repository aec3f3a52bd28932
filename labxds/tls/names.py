"""Names the control plane, Envoy's bootstrap and the certificates must agree on.

Kept apart from the certificate code so that using them loads neither ``cryptography`` nor gRPC.
"""

from __future__ import annotations

__all__ = ["CA_SECRET", "CLIENT_SECRET", "SERVER_NAME", "TOKEN_HEADER"]

#: The name Envoy asks for (SNI) and checks in the control plane's certificate.
SERVER_NAME = "labxds-control-plane"
#: The gRPC metadata header that carries a node's token.
TOKEN_HEADER = "x-labxds-token"
#: The SDS secrets Envoy reads from the files ``write_tls_files`` writes beside the PEM files.
CLIENT_SECRET = "labxds_xds_client_certificate"
CA_SECRET = "labxds_xds_trusted_ca"
