"""What a learner's Envoy announces in its node metadata: where its listener, admin and services are.

A learner's lab writes it into the bootstrap (``envoy.bootstrap.learner_bootstrap(metadata=)``);
the instructor's workshop reads it to build that learner's snapshots, so several learners can
share one machine. The format lives here, below both, so the two cannot disagree.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..net.addresses import parse_address

__all__ = ["DEFAULT_LISTENER_PORT", "METADATA_KEY", "Announcement"]

#: Node metadata key under which a learner's Envoy says where its listener and services are.
METADATA_KEY = "labxds"
DEFAULT_LISTENER_PORT = 10000


@dataclass
class Announcement:
    """Where one Envoy's listener, admin interface and echo services are."""

    listener_port: int = DEFAULT_LISTENER_PORT
    listener_host: str = "127.0.0.1"
    admin_url: str | None = None
    services: dict[str, list[tuple[str, int]]] = field(default_factory=dict)

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any] | None) -> Announcement:
        """Read it back from node metadata; the sandbox's conventions fill what is missing."""
        data = dict((metadata or {}).get(METADATA_KEY) or {})
        services: dict[str, list[tuple[str, int]]] = {}
        for svc, eps in (data.get("services") or {}).items():
            services[str(svc)] = [parse_address(str(ep)) for ep in (eps if isinstance(eps, list) else [eps])]
        return cls(
            listener_port=int(data.get("listener_port") or DEFAULT_LISTENER_PORT),
            listener_host=str(data.get("listener_host") or "127.0.0.1"),
            admin_url=data.get("admin_url") or None,
            services=services,
        )

    def metadata(self) -> dict[str, Any]:
        """As node metadata (the inverse of from_metadata)."""
        out: dict[str, Any] = {"listener_port": self.listener_port, "listener_host": self.listener_host}
        if self.admin_url:
            out["admin_url"] = self.admin_url
        if self.services:
            out["services"] = {s: [f"{h}:{p}" for h, p in eps] for s, eps in self.services.items()}
        return {METADATA_KEY: out}
