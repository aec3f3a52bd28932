"""labxds: a live, Pythonic Envoy dynamic-configuration lab with a real xDS control plane.

The engine (``labxds.xds``: snapshots, cache, SotW and Delta ADS server) is usable on its own
and is what ``import labxds`` loads; ``labxds.Lab`` (the notebook layer) adds a real Envoy, echo
services, tables and widgets. docs/architecture.md draws the layers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .xds import (
    CLUSTER,
    ENDPOINT,
    LISTENER,
    ROUTE,
    RUNTIME,
    SECRET,
    ConsistencyError,
    ControlPlane,
    PortInUseError,
    PushRejected,
    PushTimeout,
    RESPONSE_FLAGS_HEADER,
    ResourceError,
    Snapshot,
    SnapshotCache,
    api_listener,
    cluster,
    http_listener,
    load_assignment,
    route_configuration,
    sandbox_resources,
    sandbox_snapshot,
    staged,
    tls_secret,
    to_dict,
    to_message,
    validation_secret,
)

if TYPE_CHECKING:
    from .notebook.lab import Lab

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
    "RESPONSE_FLAGS_HEADER",
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
    "staged",
    "tls_secret",
    "to_dict",
    "to_message",
    "validation_secret",
]


def __getattr__(name: str) -> Any:
    # The lab pulls in Envoy's runner, an HTTP client and pandas (labxds[lab,notebook]); the engine
    # alone must import fast and install without them.
    if name == "Lab":
        from .notebook.lab import Lab

        return Lab
    raise AttributeError(f"module 'labxds' has no attribute {name!r}")
