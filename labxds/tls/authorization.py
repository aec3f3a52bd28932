"""Node authorization: which client may fetch which node's snapshot (tokens, certificate names)."""

from __future__ import annotations

import hmac
import logging
from collections.abc import Mapping

from ..xds.server import PEER_COMMON_NAME, PEER_DNS_NAMES
from .names import TOKEN_HEADER

__all__ = ["CertificateAuthorizer", "TokenAuthorizer"]

log = logging.getLogger("labxds")


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

