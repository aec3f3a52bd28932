"""labxds: a live, Pythonic Envoy dynamic-configuration lab with a real xDS control plane.

The engine (snapshots, cache, SotW and Delta ADS server) is usable on its own; the lab runtime
adds a real Envoy and echo services, and tables and widgets for notebooks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .cache import SnapshotCache
from .control_plane import ControlPlane, PortInUseError
from .messages import ResourceError, to_dict, to_message
from .resource_types import CLUSTER, ENDPOINT, LISTENER, ROUTE, RUNTIME, SECRET
from .resources import (
    api_listener,
    cluster,
    http_listener,
    load_assignment,
    route_configuration,
    sandbox_resources,
    sandbox_snapshot,
)
from .snapshot import ConsistencyError, Snapshot
from .tracking import PushRejected, PushTimeout

if TYPE_CHECKING:
    from .lab import Lab

__version__ = "0.1.0"

__all__ = [
    "CLUSTER",
    "ENDPOINT",
    "LISTENER",
    "ROUTE",
    "RUNTIME",
    "SECRET",
    "ConsistencyError",
    "ControlPlane",
    "Lab",
    "PortInUseError",
    "PushRejected",
    "PushTimeout",
    "ResourceError",
    "Snapshot",
    "SnapshotCache",
    "api_listener",
    "cluster",
    "http_listener",
    "load_assignment",
    "route_configuration",
    "sandbox_resources",
    "sandbox_snapshot",
    "to_dict",
    "to_message",
]


def __getattr__(name: str) -> Any:
    # The lab pulls in the Envoy runner and HTTP client; the engine alone should import fast.
    if name == "Lab":
        from .lab import Lab

        return Lab
    raise AttributeError(f"module 'labxds' has no attribute {name!r}")
