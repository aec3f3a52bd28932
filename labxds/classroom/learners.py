"""Learners of a workshop: who they are and where their Envoy lives.

A learner's Envoy announces, in its bootstrap's node metadata, where its listener, admin and
echo services are (``labxds.lab.metadata``); the workshop reads it into a :class:`Learner`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..i18n import _
from ..envoy.bootstrap import learner_bootstrap as _learner_bootstrap
from ..lab.metadata import DEFAULT_LISTENER_PORT, Announcement
from ..net.addresses import reachable

log = logging.getLogger("labxds")




# --------------------------------------------------------------------------- learners


@dataclass(init=False)
class Learner(Announcement):
    """One learner: a node id, and where their Envoy's listener, admin and services are.

    The locations come from the node metadata their bootstrap carries (``learner_bootstrap``
    writes it); without any, the sandbox's conventions apply (listener on 10000).
    """

    name: str = ""

    def __init__(self, name: str, listener_port: int = DEFAULT_LISTENER_PORT, listener_host: str = "127.0.0.1",
                 admin_url: str | None = None, services: dict[str, list[tuple[str, int]]] | None = None) -> None:
        super().__init__(listener_port, listener_host, admin_url, dict(services or {}))
        self.name = name

    @classmethod
    def from_metadata(cls, name: str, metadata: Mapping[str, Any] | None) -> Learner:  # type: ignore[override]
        a = Announcement.from_metadata(metadata)
        return cls(name, a.listener_port, a.listener_host, a.admin_url, a.services)

    @classmethod
    def from_lab(cls, lab: Any, name: str | None = None) -> Learner:
        """The learner a running lab is (its own ports and services)."""
        return cls(
            name=name or lab.node_id or "learner",
            listener_port=lab.listener_port,
            listener_host=lab.mode.listen_host,
            admin_url=lab.admin_url,
            services={svc: lab.endpoints(svc) for svc in lab.service_counts},
        )

    def endpoints(self, service: str) -> list[tuple[str, int]]:
        try:
            return list(self.services[service])
        except KeyError:
            known = ", ".join(self.services) or _("none (its Envoy announced no services)")
            raise KeyError(_("learner '{name}' has no service '{service}'; known: {known}").format(
                name=self.name, service=service, known=known)) from None

    @property
    def listener_url(self) -> str:
        return f"http://{reachable(self.listener_host)}:{self.listener_port}"


def learner_bootstrap(node: str, control_plane: str = "127.0.0.1:18000", *, learner: Learner | None = None,
                      **options: Any) -> dict:
    """A learner's Envoy bootstrap (see :func:`labxds.envoy.bootstrap.learner_bootstrap`);
    ``learner`` announces where its listener, admin and services are."""
    return _learner_bootstrap(node, control_plane, metadata=learner.metadata() if learner else None, **options)


__all__ = ["Learner", "learner_bootstrap"]
