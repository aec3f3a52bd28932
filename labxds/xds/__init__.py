"""The control plane itself: resources, snapshots, the xDS protocol, and the ControlPlane that runs it.

``resource_types`` knows the type URLs; ``messages`` and ``json_form`` turn inputs (protobuf
messages, dicts, YAML, envoy-data-plane objects) into messages, reading text and JSON form as Envoy
reads them (``envoy_text`` for YAML and JSON, ``lenient`` for what Envoy's parser allows beyond
protobuf's JSON mapping, and refuses within it); ``snapshot`` holds one version of
a node's configuration and checks its references; ``cache`` keeps snapshots per node; ``wire``
pre-encodes responses; ``server`` speaks SotW and Delta; ``tracking`` records what each node
ACKed or NACKed; ``control_plane`` runs it all on an event loop of its own; ``builders`` write
common resources in a line each. Nothing here needs pandas, Jupyter, an HTTP client or Envoy.
"""

from .builders import (
    RESPONSE_FLAGS_HEADER,
    api_listener,
    cluster,
    http_listener,
    load_assignment,
    route_configuration,
    sandbox_resources,
    sandbox_snapshot,
    socket_address,
    tls_secret,
    validation_secret,
)
from .cache import ConfigWatcher, SnapshotCache
from .control_plane import ControlPlane, PortInUseError
from .messages import ResourceError, to_dict, to_message
from .resource_types import (
    CLUSTER,
    ENDPOINT,
    EXTENSION_CONFIG,
    LISTENER,
    ROUTE,
    RUNTIME,
    SCOPED_ROUTE,
    SECRET,
)
from .snapshot import ConsistencyError, Snapshot, staged
from .tracking import (
    NodeStatus,
    PushRejected,
    PushTimeout,
    TraceEvent,
    Tracker,
    TypeStatus,
)

__all__ = [
    "CLUSTER",
    "ENDPOINT",
    "EXTENSION_CONFIG",
    "LISTENER",
    "ROUTE",
    "RUNTIME",
    "SCOPED_ROUTE",
    "SECRET",
    "ConfigWatcher",
    "ConsistencyError",
    "ControlPlane",
    "NodeStatus",
    "PortInUseError",
    "PushRejected",
    "PushTimeout",
    "RESPONSE_FLAGS_HEADER",
    "ResourceError",
    "Snapshot",
    "SnapshotCache",
    "TraceEvent",
    "Tracker",
    "TypeStatus",
    "api_listener",
    "cluster",
    "http_listener",
    "load_assignment",
    "route_configuration",
    "sandbox_resources",
    "sandbox_snapshot",
    "socket_address",
    "staged",
    "tls_secret",
    "to_dict",
    "to_message",
    "validation_secret",
]
