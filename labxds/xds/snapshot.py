"""Snapshots: an immutable, versioned set of resources that one or more nodes should run.

A snapshot is checked and serialized when it is built, never on the way to a stream: building is
where a mistake can still be reported without anything reaching Envoy, and every stream then
shares the same bytes.
"""

from __future__ import annotations

import gc

import hashlib
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

from envoy.config.cluster.v3 import cluster_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2,
)
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from google.protobuf import any_pb2, message

from ..i18n import _
from . import resource_types, wire
from .messages import ResourceError, to_message
from .resource_types import CLUSTER, ENDPOINT, LISTENER, ROUTE

__all__ = ["ConsistencyError", "Entry", "Snapshot", "staged"]

#: Seconds (int or float) or a timedelta.
Duration = float | timedelta
#: One TTL for every resource, or per type URL, resource name or (type URL, name) pair (the most
#: specific key wins; None there exempts it).
TtlSpec = Duration | Mapping[str | tuple[str, str], Duration | None] | None


class ConsistencyError(ValueError):
    """The snapshot refers to resources it does not contain; nothing was pushed."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__(_("inconsistent snapshot: {problems}").format(problems="; ".join(problems)))


@dataclass(frozen=True, slots=True)
class Entry:
    """One resource at one version, with the bytes every stream shares."""

    name: str
    message: message.Message
    version: str
    sotw: bytes  # a ready DiscoveryResponse.resources field
    delta: bytes  # a ready DeltaDiscoveryResponse.resources field
    # Rule 14, only in the form served to clients that support resource TTLs: the TTL in
    # seconds; sotw in a Resource wrapper with the TTL, delta with the TTL; and the heartbeats,
    # the same without the body. The version then says the TTL too, so a new TTL is a change.
    ttl: float | None = None
    heartbeat_sotw: bytes = b""
    heartbeat_delta: bytes = b""
    # What the resource makes the client ask for next: an EDS cluster its load assignment, a
    # listener its route configurations. Found once here, not on every ACK.
    needs: frozenset[str] = frozenset()
    # Every (type URL, name) it refers to, for the consistency check of each new snapshot.
    refs: frozenset[tuple[str, str]] = frozenset()


def _digest(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=8).hexdigest()


class _Framed:
    """The bytes of resources in recently built snapshots, by type URL, name and serialized body:
    a resource that is the same in the next snapshot (most of them, usually) is not hashed and
    framed again. Two generations, each at most ``budget`` bytes, so memory stays bounded."""

    def __init__(self, budget: int = 8 << 20) -> None:
        self.budget = budget
        self._new: dict[tuple[str, str, bytes], tuple[Any, ...]] = {}
        self._old: dict[tuple[str, str, bytes], tuple[Any, ...]] = {}
        self._size = 0

    def entry(self, type_url: str, name: str, msg: message.Message) -> Entry:
        body = msg.SerializeToString(deterministic=True)
        key = (type_url, name, body)
        parts = self._new.get(key)
        if parts is None:
            parts = self._old.get(key)
            if parts is None:
                version = _digest(body)
                packed = wire.encode_any(type_url, body)
                parts = (version, wire.sotw_resource(packed), wire.delta_resource(name, version, packed),
                         _needs(type_url, msg), _references(type_url, msg))
            self._keep(key, parts)
        version, sotw, delta, needs, refs = parts
        return Entry(name, msg, version, sotw, delta, needs=needs, refs=refs)

    def clear(self) -> None:
        self._new, self._old, self._size = {}, {}, 0

    def _keep(self, key: tuple[str, str, bytes], parts: tuple[Any, ...]) -> None:
        self._size += len(key[2]) + len(parts[1]) + len(parts[2])
        if self._size > self.budget:  # the older generation goes; this one becomes the older
            self._old, self._new, self._size = self._new, {}, 0
        self._new[key] = parts


_FRAMED = _Framed()


def _entry(type_url: str, name: str, msg: message.Message) -> Entry:
    return _FRAMED.entry(type_url, name, msg)


def _needs(type_url: str, msg: Any) -> frozenset[str]:
    if type_url == CLUSTER:
        return frozenset((_eds_name(msg),)) if _is_eds(msg) else frozenset()
    if type_url == LISTENER:
        return frozenset(hcm.rds.route_config_name for hcm in _connection_managers(msg) if hcm.HasField("rds"))
    return frozenset()


def _references(type_url: str, msg: Any) -> frozenset[tuple[str, str]]:
    """What ``msg`` points at: the check of a snapshot needs only these, not the messages."""
    if type_url == CLUSTER:
        return frozenset({(ENDPOINT, _eds_name(msg))}) if _is_eds(msg) else frozenset()
    if type_url == ROUTE:
        return frozenset((CLUSTER, c) for c in _route_targets(msg))
    if type_url == LISTENER:
        refs = set()
        for hcm in _connection_managers(msg):
            if hcm.HasField("rds"):
                refs.add((ROUTE, hcm.rds.route_config_name))
            if hcm.HasField("route_config"):
                refs.update((CLUSTER, c) for c in _route_targets(hcm.route_config))
        refs.update((CLUSTER, c) for c in _tcp_proxy_clusters(msg))
        return frozenset(refs)
    return frozenset()


def _route_targets(rc: Any) -> Iterable[str]:
    for vh in rc.virtual_hosts:
        for route in vh.routes:
            if route.HasField("route"):
                if route.route.cluster:
                    yield route.route.cluster
                for wc in route.route.weighted_clusters.clusters:
                    yield wc.name


def _ttl_entry(type_url: str, plain: Entry, ttl: float) -> Entry:
    """``plain`` as served to a client that supports TTLs."""
    version = f"{plain.version}/ttl={ttl!r}s"
    packed = wire.encode_any(type_url, plain.message.SerializeToString(deterministic=True))
    return Entry(
        plain.name, plain.message, version,
        sotw=wire.sotw_wrapped(plain.name, version, packed, ttl),
        delta=wire.delta_resource(plain.name, version, packed, ttl),
        ttl=ttl,
        heartbeat_sotw=wire.sotw_wrapped(plain.name, version, None, ttl),
        heartbeat_delta=wire.delta_resource(plain.name, version, None, ttl),
        needs=plain.needs,
        refs=plain.refs,
    )


def _seconds(value: Any, where: str) -> float:
    seconds = value.total_seconds() if isinstance(value, timedelta) else value
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
        raise TypeError(f"{where}: a TTL is seconds or a timedelta, not {type(value).__name__}")
    nanos = round(seconds * 1_000_000_000) if math.isfinite(seconds) else 0
    if nanos <= 0:
        raise ValueError(f"{where}: a TTL must be positive and finite, not {value!r}")
    return nanos / 1_000_000_000  # what a Duration can carry


def _ttls(spec: TtlSpec, by_type: Mapping[str, Mapping[str, Entry]]) -> dict[tuple[str, str], float]:
    """(type URL, name) -> seconds, for every resource ``spec`` gives a TTL."""
    if spec is None:
        return {}
    if not isinstance(spec, Mapping):
        every = _seconds(spec, "ttl")
        return {(url, name): every for url, entries in by_type.items() for name in entries}
    names = {name for entries in by_type.values() for name in entries}
    for key in spec:
        if isinstance(key, tuple):
            if len(key) != 2 or key[1] not in by_type.get(key[0], {}):
                raise ValueError(f"ttl[{key!r}]: no resource of this snapshot has that type URL and name")
        elif key not in names and not key.startswith(resource_types.TYPE_PREFIX):
            raise ValueError(f"ttl[{key!r}]: no resource of this snapshot has that name, and it is no type URL")
    out: dict[tuple[str, str], float] = {}
    for url, entries in by_type.items():
        for name in entries:
            pair = (url, name)
            chosen: str | tuple[str, str] | None = pair if pair in spec else name if name in spec else url if url in spec else None
            if chosen is not None and spec[chosen] is not None:
                out[pair] = _seconds(spec[chosen], f"ttl[{chosen!r}]")
    return out


class Snapshot:
    """Resources by type, each type with its own version.

    ``version`` may be one string for every type (the sandbox's "1", "2", ...), a mapping of type
    URL to version, or None: then each type's version is a hash of its content, so a type that
    did not change keeps its version and is never pushed again.

    ``ttl`` (rule 14) gives resources a time to live, for clients that advertise the
    ``xds.config.supports-resource-ttl`` feature: they drop a resource whose TTL runs out
    without a word from the control plane, which sends heartbeats meanwhile. It is seconds (or a
    timedelta) for every resource, or a mapping from type URL, resource name or (type URL, name)
    to seconds (the most specific key wins; None exempts it). A TTL does not change the versions computed
    from content: clients without the feature get the same resources either way.

    ``check=False`` skips the consistency check (references to resources the snapshot does not
    have); ``make_before_break=False`` serves it as is, without the control plane's ordering
    (see :func:`staged`).
    """

    __slots__ = ("_types", "_versions", "_explicit", "_ttl_types", "make_before_break")

    def __init__(
        self,
        resources: Iterable[Any] | Mapping[str, Iterable[Any]] = (),
        version: str | int | Mapping[str, str] | None = None,
        *,
        check: bool = True,
        ttl: TtlSpec = None,
        make_before_break: bool = True,
    ) -> None:
        #: Whether the control plane orders this snapshot's delivery (rule 12): routes wait until
        #: the new clusters they name are warm, removed clusters stay until routes moved. Only
        #: :func:`staged` turns it off, to show a control plane without it.
        self.make_before_break = make_before_break
        # A build makes a few objects per resource and frees none: the cyclic collector would
        # scan the whole heap again and again as it grows (100,000 resources: 11.4 s with it,
        # see docs/benchmarks.md section 7). Paused for the build; nothing here makes cycles.
        paused = gc.isenabled()
        if paused:
            gc.disable()
        try:
            self._build(resources, version, check, ttl)
        finally:
            if paused:
                gc.enable()

    def _build(self, resources: Iterable[Any] | Mapping[str, Iterable[Any]], version: str | int | Mapping[str, str] | None,
               check: bool, ttl: TtlSpec) -> None:
        by_type: dict[str, dict[str, Entry]] = {}
        if isinstance(resources, Mapping):
            items: Iterable[tuple[str, str | None, Any]] = (
                (f"resources[{url!r}] #{i}", url, r) for url, rs in resources.items() for i, r in enumerate(rs)
            )
        else:
            items = ((f"resource #{i}", None, r) for i, r in enumerate(resources))
        for where, expected, obj in items:
            msg = to_message(obj, where=where)
            url = resource_types.type_url_of(msg)
            if expected is not None and url != expected:
                raise ResourceError(f"is a {url}, not a {expected}", where=where)
            try:
                rtype = resource_types.resource_type(url)
            except ValueError as exc:
                raise ResourceError(str(exc), where=where) from None
            name = rtype.name_of(msg)
            if not name:
                field = "cluster_name" if url == ENDPOINT else "name"
                raise ResourceError(f"{rtype.short} resource has an empty {field!r}", where=where)
            entries = by_type.setdefault(url, {})
            if name in entries:
                raise ResourceError(f"duplicate {rtype.short} resource named {name!r}", where=where)
            entries[name] = _entry(url, name, msg)
        self._types = by_type
        # What clients that support TTLs are served: per type with TTLs, every entry, the
        # ones with a TTL in their TTL form (built once here, like the plain bytes).
        self._ttl_types: dict[str, dict[str, Entry]] = {}
        for (url, name), seconds in _ttls(ttl, by_type).items():
            served = self._ttl_types.setdefault(url, dict(by_type[url]))
            served[name] = _ttl_entry(url, by_type[url][name], seconds)
        self._explicit: str | Mapping[str, str] | None = (
            str(version) if isinstance(version, (str, int)) else version
        )
        self._versions: dict[str, str] = {}
        if check:
            self.check()

    # -- reading -----------------------------------------------------------------------------

    @property
    def types(self) -> tuple[str, ...]:
        """The type URLs that have resources, in push order."""
        return tuple(sorted(self._types, key=resource_types.order_key))

    def version(self, type_url: str) -> str:
        cached = self._versions.get(type_url)
        if cached is not None:
            return cached
        if isinstance(self._explicit, str):
            v = self._explicit
        elif isinstance(self._explicit, Mapping) and type_url in self._explicit:
            v = str(self._explicit[type_url])
        else:
            entries = self._types.get(type_url, {})
            v = _digest("\n".join(f"{n}={e.version}" for n, e in sorted(entries.items())).encode())
        self._versions[type_url] = v
        return v

    @property
    def versions(self) -> dict[str, str]:
        return {url: self.version(url) for url in self.types}

    def entries(self, type_url: str, ttl: bool = False) -> Mapping[str, Entry]:
        """name -> Entry; with ``ttl``, as served to clients that support resource TTLs."""
        if ttl:
            served = self._ttl_types.get(type_url)
            if served is not None:
                return served
        return self._types.get(type_url, {})

    def ttl(self, type_url: str, name: str) -> float | None:
        """The TTL in seconds of one resource, None if it has none."""
        served = self._ttl_types.get(type_url)
        entry = served.get(name) if served is not None else None
        return entry.ttl if entry is not None else None

    @property
    def has_ttl(self) -> bool:
        return bool(self._ttl_types)

    def resources(self, type_url: str) -> dict[str, message.Message]:
        return {name: e.message for name, e in self.entries(type_url).items()}

    def names(self, type_url: str) -> frozenset[str]:
        return frozenset(self.entries(type_url))

    def __len__(self) -> int:
        return sum(len(e) for e in self._types.values())

    def __repr__(self) -> str:
        parts = [
            f"{resource_types.short_name(u)} v{self.version(u)}: {len(self._types[u])}" for u in self.types
        ]
        return f"Snapshot({', '.join(parts) or 'empty'})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Snapshot):
            return NotImplemented
        return self.versions == other.versions and all(
            {n: e.version for n, e in self.entries(u, ttl=True).items()}
            == {n: e.version for n, e in other.entries(u, ttl=True).items()}
            for u in self.types
        )

    __hash__ = None  # type: ignore[assignment]

    # -- references between resources -----------------------------------------------------

    def eds_names(self) -> frozenset[str]:
        """The load assignments this snapshot's EDS clusters ask for."""
        return frozenset(n for e in self.entries(CLUSTER).values() for n in e.needs)

    def rds_names(self) -> frozenset[str]:
        """The route configurations this snapshot's listeners ask for over RDS."""
        return frozenset(n for e in self.entries(LISTENER).values() for n in e.needs)

    def check(self) -> None:
        """Raise ConsistencyError naming every reference that points at nothing."""
        types = self._types
        if all(name in types.get(url, ()) for entries in types.values() for e in entries.values() for url, name in e.refs):
            return  # every reference resolves (known when each entry was built); else find the words
        problems: list[str] = []
        clusters = self.names(CLUSTER)
        endpoints = self.names(ENDPOINT)
        routes = self.names(ROUTE)
        for name, c in self.resources(CLUSTER).items():
            if _is_eds(c) and _eds_name(c) not in endpoints:
                problems.append(_("EDS cluster {name} has no ClusterLoadAssignment named {wanted}").format(
                    name=repr(name), wanted=repr(_eds_name(c))))
        for lname, listener in self.resources(LISTENER).items():
            for hcm in _connection_managers(listener):
                if hcm.HasField("rds") and hcm.rds.route_config_name not in routes:
                    problems.append(
                        _("listener {name} uses route configuration {route}, which the snapshot does not have").format(
                            name=repr(lname), route=repr(hcm.rds.route_config_name))
                    )
                if hcm.HasField("route_config"):
                    problems.extend(_missing_clusters(hcm.route_config, clusters,
                                                      _("listener {name}").format(name=repr(lname))))
            for cluster in _tcp_proxy_clusters(listener):
                if cluster not in clusters:
                    problems.append(_("listener {name} proxies TCP to cluster {cluster}, which the snapshot does not have").format(
                        name=repr(lname), cluster=repr(cluster)))
        for rname, rc in self.resources(ROUTE).items():
            problems.extend(_missing_clusters(rc, clusters, _("route configuration {name}").format(name=repr(rname))))
        if problems:
            raise ConsistencyError(problems)


def _is_eds(c: cluster_pb2.Cluster) -> bool:
    return bool(c.WhichOneof("cluster_discovery_type") == "type" and c.type == cluster_pb2.Cluster.EDS)


def _eds_name(c: cluster_pb2.Cluster) -> str:
    return str(c.eds_cluster_config.service_name or c.name)


_M = TypeVar("_M", bound=message.Message)


def _unpack(packed: any_pb2.Any, cls: type[_M]) -> _M | None:
    if packed.type_url.split("/")[-1] != cls.DESCRIPTOR.full_name:
        return None
    msg = cls()
    msg.ParseFromString(packed.value)
    return msg


def _filters(listener: Any) -> Iterable[Any]:
    chains = list(listener.filter_chains)
    if listener.HasField("default_filter_chain"):
        chains.append(listener.default_filter_chain)
    for chain in chains:
        yield from chain.filters


def _connection_managers(listener: Any) -> Iterable[Any]:
    hcm_cls = http_connection_manager_pb2.HttpConnectionManager
    if listener.HasField("api_listener"):
        hcm = _unpack(listener.api_listener.api_listener, hcm_cls)
        if hcm is not None:
            yield hcm
    for f in _filters(listener):
        if f.HasField("typed_config"):
            hcm = _unpack(f.typed_config, hcm_cls)
            if hcm is not None:
                yield hcm


def _tcp_proxy_clusters(listener: Any) -> Iterable[str]:
    for f in _filters(listener):
        if f.HasField("typed_config"):
            tcp = _unpack(f.typed_config, tcp_proxy_pb2.TcpProxy)
            if tcp is not None:
                if tcp.cluster:
                    yield tcp.cluster
                for wc in tcp.weighted_clusters.clusters:
                    yield wc.name


def _missing_clusters(rc: Any, clusters: frozenset[str], owner: str) -> list[str]:
    missing: list[str] = []
    for vh in rc.virtual_hosts:
        for route in vh.routes:
            if not route.HasField("route"):
                continue
            action = route.route
            targets = [action.cluster] if action.cluster else []
            targets += [wc.name for wc in action.weighted_clusters.clusters]
            for target in targets:
                if target not in clusters:
                    missing.append(
                        _("{owner} routes virtual host {host} to cluster {cluster}, which the snapshot does not have "
                          "(a cluster defined in Envoy's bootstrap needs check=False)").format(
                            owner=owner, host=repr(vh.name), cluster=repr(target))
                    )
    return missing


# -- out of order, on purpose ---------------------------------------------------------------


def _type_url(name: str) -> str:
    """A type URL from itself or a short name ("CDS", "EDS", "LDS", "RDS", ...)."""
    if name.startswith(resource_types.TYPE_PREFIX):
        return name
    for url in (CLUSTER, ENDPOINT, LISTENER, ROUTE, *resource_types.PUSH_ORDER):
        if resource_types.short_name(url) == name.upper():
            return url
    known = ", ".join(resource_types.short_name(u) for u in resource_types.PUSH_ORDER)
    raise ValueError(_("unknown resource type '{name}': use {known} (or a type URL)").format(name=name, known=known))


def staged(before: Snapshot | None, after: Snapshot, order: Sequence[str]) -> list[Snapshot]:
    """The snapshots a control plane without make-before-break would serve between two snapshots.

    Step ``i`` has the resources of ``after`` for the first ``i + 1`` types of ``order`` (short
    names such as ``"RDS"``, or type URLs) and those of ``before`` for the rest, each type at the
    version of the snapshot it comes from. The steps are not checked (``check=False``): a step may
    refer to a cluster or a load assignment that only a later step brings, which is the point.
    Nor are they ordered (``make_before_break=False``): the control plane sends each step as it
    is, without holding routes back until the clusters they name are warm or keeping removed
    clusters until routes moved. Push them one by one to watch what each order does to
    traffic; push ``after`` alone to let the control plane order the update itself (rule 12). Every type that differs between the two
    snapshots (in content, not only in version label) must be in ``order``. TTLs are not
    carried over.
    """
    if isinstance(order, str):
        raise TypeError(_("order is a list of types such as ['CDS', 'EDS', 'RDS'], not the string '{order}'").format(
            order=order))
    base = before if before is not None else Snapshot([], check=False)
    urls = [_type_url(str(name)) for name in order]
    repeated = sorted({resource_types.short_name(u) for u in urls if urls.count(u) > 1})
    if repeated:
        raise ValueError(_("order names {types} more than once").format(types=", ".join(repeated)))

    def differs(url: str) -> bool:  # in content: a new version label alone changes nothing
        return {n: e.version for n, e in base.entries(url).items()} != {n: e.version for n, e in after.entries(url).items()}

    left_out = [u for u in sorted(set(base.types) | set(after.types), key=resource_types.order_key)
                if u not in urls and differs(u)]
    if left_out:
        names = ", ".join(resource_types.short_name(u) for u in left_out)
        raise ValueError(_("{types} changes between the two snapshots but is not in the order {order}").format(
            types=names, order=list(order)))
    steps: list[Snapshot] = []
    for i in range(len(urls)):
        done = set(urls[: i + 1])
        types = sorted(set(base.types) | set(after.types) | done, key=resource_types.order_key)
        source = {u: after if u in done else base for u in types}
        resources = {u: list(source[u].resources(u).values()) for u in types if source[u].entries(u)}
        versions = {u: source[u].version(u) for u in types}
        steps.append(Snapshot(resources, version=versions, check=False, make_before_break=False))
    return steps
