"""The xDS resource types labxds knows, their type URLs and the order updates go out in.

Envoy wants make-before-break: clusters first, then their endpoints, then listeners, then the
routes those listeners use. ``PUSH_ORDER`` encodes that; every other type follows in name order.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass
from typing import Callable

# Importing these registers the types (and the filters a listener usually embeds) with the
# default descriptor pool, which JSON parsing and Any unpacking need.
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import extension_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2, scoped_route_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2  # noqa: F401
from envoy.extensions.filters.network.http_connection_manager.v3 import (  # noqa: F401
    http_connection_manager_pb2,
)
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2  # noqa: F401
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2, tls_pb2  # noqa: F401
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2  # noqa: F401
from envoy.service.runtime.v3 import rtds_pb2
from google.protobuf import descriptor_pool, message, message_factory

__all__ = [
    "CLUSTER",
    "ENDPOINT",
    "EXTENSION_CONFIG",
    "FULL_STATE",
    "LISTENER",
    "PUSH_ORDER",
    "REMOVED_WITH_PARENT",
    "ROUTE",
    "RUNTIME",
    "SCOPED_ROUTE",
    "SECRET",
    "TYPE_PREFIX",
    "ResourceType",
    "ensure_importable",
    "message_class",
    "order_key",
    "resource_type",
    "short_name",
    "type_url_of",
]

TYPE_PREFIX = "type.googleapis.com/"

CLUSTER = TYPE_PREFIX + "envoy.config.cluster.v3.Cluster"
ENDPOINT = TYPE_PREFIX + "envoy.config.endpoint.v3.ClusterLoadAssignment"
LISTENER = TYPE_PREFIX + "envoy.config.listener.v3.Listener"
ROUTE = TYPE_PREFIX + "envoy.config.route.v3.RouteConfiguration"
SCOPED_ROUTE = TYPE_PREFIX + "envoy.config.route.v3.ScopedRouteConfiguration"
SECRET = TYPE_PREFIX + "envoy.extensions.transport_sockets.tls.v3.Secret"
RUNTIME = TYPE_PREFIX + "envoy.service.runtime.v3.Runtime"
EXTENSION_CONFIG = TYPE_PREFIX + "envoy.config.core.v3.TypedExtensionConfig"

PUSH_ORDER: tuple[str, ...] = (CLUSTER, ENDPOINT, LISTENER, ROUTE)

#: Types whose SotW responses carry the full state: a resource left out is deleted.
FULL_STATE: frozenset[str] = frozenset({CLUSTER, LISTENER})

#: Types a client drops when their parent (cluster, listener) stops naming them: they are
#: removed through their parents, never by a removal of their own, in Delta as in SotW. A
#: Delta removal would race the parent's update: sent in the same batch as the new listener,
#: it takes away a route configuration the old listener still uses.
REMOVED_WITH_PARENT: frozenset[str] = frozenset({ENDPOINT, ROUTE})


@dataclass(frozen=True)
class ResourceType:
    """What the engine needs to know of one resource type."""

    url: str
    short: str
    cls: type[message.Message]
    name_of: Callable[[message.Message], str]


def _by_name(msg: message.Message) -> str:
    return str(msg.name)  # type: ignore[attr-defined]


def _by_cluster_name(msg: message.Message) -> str:
    return str(msg.cluster_name)  # type: ignore[attr-defined]


_KNOWN: dict[str, ResourceType] = {
    t.url: t
    for t in (
        ResourceType(CLUSTER, "CDS", cluster_pb2.Cluster, _by_name),
        ResourceType(ENDPOINT, "EDS", endpoint_pb2.ClusterLoadAssignment, _by_cluster_name),
        ResourceType(LISTENER, "LDS", listener_pb2.Listener, _by_name),
        ResourceType(ROUTE, "RDS", route_pb2.RouteConfiguration, _by_name),
        ResourceType(SCOPED_ROUTE, "SRDS", scoped_route_pb2.ScopedRouteConfiguration, _by_name),
        ResourceType(SECRET, "SDS", secret_pb2.Secret, _by_name),
        ResourceType(RUNTIME, "RTDS", rtds_pb2.Runtime, _by_name),
        ResourceType(EXTENSION_CONFIG, "ECDS", extension_pb2.TypedExtensionConfig, _by_name),
    )
}


def resource_type(url: str) -> ResourceType:
    """The type for ``url``; an unknown type with a ``name`` field passes through."""
    known = _KNOWN.get(url)
    if known is not None:
        return known
    cls = message_class(url)
    if "name" not in cls.DESCRIPTOR.fields_by_name:
        raise ValueError(f"type {url!r} has no 'name' field, so it cannot be served as a resource")
    rtype = ResourceType(url, url.rsplit(".", 1)[-1], cls, _by_name)
    _KNOWN[url] = rtype
    return rtype


def short_name(url: str) -> str:
    """``CDS`` for the cluster type URL, the message name for others."""
    known = _KNOWN.get(url)
    return known.short if known else url.rsplit(".", 1)[-1]


def type_url_of(msg: message.Message) -> str:
    return TYPE_PREFIX + msg.DESCRIPTOR.full_name


def order_key(url: str) -> tuple[int, str]:
    """Sort key that puts types in make-before-break order."""
    try:
        return (PUSH_ORDER.index(url), url)
    except ValueError:
        return (len(PUSH_ORDER), url)


def message_class(type_name: str) -> type[message.Message]:
    """The generated class for a type URL or full message name, importing its module if needed.

    xds-protos holds thousands of modules; importing them all would cost seconds, so a missing
    type's package is imported on demand (``envoy.extensions.filters.http.cors.v3.Cors`` imports
    the ``*_pb2`` modules of ``envoy.extensions.filters.http.cors.v3``).
    """
    full = type_name.removeprefix(TYPE_PREFIX).split("/")[-1]
    pool = descriptor_pool.Default()
    try:
        desc = pool.FindMessageTypeByName(full)
    except KeyError:
        _import_package_of(full)
        try:
            desc = pool.FindMessageTypeByName(full)
        except KeyError:
            raise ValueError(f"unknown message type {full!r}") from None
    return message_factory.GetMessageClass(desc)


def ensure_importable(type_name: str) -> None:
    """Make ``type_name`` known to the descriptor pool (for JSON parsing of nested ``@type``)."""
    message_class(type_name)


def _import_package_of(full_name: str) -> None:
    parts = full_name.split(".")
    # Try the longest package prefix first: nested messages add name segments after the package.
    for cut in range(len(parts) - 1, 0, -1):
        package = ".".join(parts[:cut])
        try:
            pkg = importlib.import_module(package)
        except ImportError:
            continue
        paths = getattr(pkg, "__path__", None)
        if paths is None:
            continue
        for info in pkgutil.iter_modules(paths):
            if info.name.endswith("_pb2"):
                importlib.import_module(f"{package}.{info.name}")
        return
