"""One-line descriptions of a snapshot and of what changed between two (the serve log)."""

from __future__ import annotations

import logging

from ..xds import resource_types
from ..xds.resource_types import CLUSTER, ENDPOINT, LISTENER, ROUTE
from ..xds.snapshot import Snapshot

__all__ = ["changed_types", "describe", "same_version_warning"]

log = logging.getLogger("labxds.snapshot_files")


# --------------------------------------------------------------------------- describing

_NOUNS = {
    CLUSTER: ("cluster", "clusters"),
    ENDPOINT: ("load assignment", "load assignments"),
    LISTENER: ("listener", "listeners"),
    ROUTE: ("route configuration", "route configurations"),
    resource_types.SCOPED_ROUTE: ("scoped route configuration", "scoped route configurations"),
    resource_types.SECRET: ("secret", "secrets"),
    resource_types.RUNTIME: ("runtime layer", "runtime layers"),
    resource_types.EXTENSION_CONFIG: ("extension config", "extension configs"),
}


def _count(url: str, n: int) -> str:
    one, many = _NOUNS.get(url, (url.rsplit(".", 1)[-1],) * 2)
    return f"{n} {one if n == 1 else many}"


def describe(snapshot: Snapshot) -> str:
    """``version 1: 1 cluster, 1 listener, 1 route configuration`` (per type if versions differ)."""
    types = snapshot.types
    if not types:
        return "(empty)"
    versions = {snapshot.version(u) for u in types}
    if len(versions) == 1:
        return f"version {versions.pop()}: " + ", ".join(_count(u, len(snapshot.entries(u))) for u in types)
    return ", ".join(f"{_count(u, len(snapshot.entries(u)))} (version {snapshot.version(u)})" for u in types)


def changed_types(old: Snapshot | None, new: Snapshot) -> list[str]:
    if old is None:
        return [resource_types.short_name(u) for u in new.types]
    urls = sorted(set(old.types) | set(new.types), key=resource_types.order_key)
    return [
        resource_types.short_name(u)
        for u in urls
        if {n: e.version for n, e in old.entries(u).items()} != {n: e.version for n, e in new.entries(u).items()}
        or (u in old.types and u in new.types and old.version(u) != new.version(u))
    ]


def same_version_warning(old: Snapshot | None, new: Snapshot) -> str | None:
    if old is None:
        return None
    for u in new.types:
        if u in old.types and old.version(u) == new.version(u) and old.entries(u).keys() == new.entries(u).keys():
            if any(old.entries(u)[n].version != e.version for n, e in new.entries(u).items()):
                return (
                    f"resources changed but version_info is still {new.version(u)!r}; Envoy is sent the "
                    "change, but never again a version it once rejected: change version_info on every edit, "
                    "or drop it and let labxds hash the content"
                )
    return None
