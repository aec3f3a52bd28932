"""Turning what users write into Envoy API messages.

Users write resources three ways: xds-protos messages, dicts (or YAML) in Envoy's JSON form with an
``"@type"`` key, as in Envoy's docs and filesystem-config files, and betterproto2 dataclasses from
the ``envoy-data-plane`` package. Everything becomes an xds-protos (upb) message here, once, so the
wire path only ever sees fast messages.
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Iterable, Mapping
from typing import Any

import yaml
from google.protobuf import json_format, message

from . import envoy_text, resource_types
from .json_form import NestedTypeError, parse_dict

__all__ = [
    "ResourceError",
    "document_items",
    "from_yaml",
    "resources_of_document",
    "to_dict",
    "to_message",
    "to_messages",
    "version_of_document",
]

log = logging.getLogger("labxds.messages")


class ResourceError(ValueError):
    """A resource that cannot be understood; the message names where and why."""

    def __init__(self, problem: str, *, where: str = "") -> None:
        self.problem = problem
        self.where = where
        super().__init__(f"{where}: {problem}" if where else problem)


def to_message(obj: Any, *, where: str = "") -> message.Message:
    """One resource as an xds-protos message."""
    if isinstance(obj, message.Message):
        return obj
    if isinstance(obj, Mapping):
        return _from_dict(obj, where)
    if _is_data_plane(obj):
        return _from_data_plane(obj, where)
    if isinstance(obj, str):
        docs = from_yaml(obj, where=where)
        if len(docs) != 1:
            raise ResourceError(f"expected one resource in the YAML text, found {len(docs)}", where=where)
        return docs[0]
    raise ResourceError(
        f"cannot use a {type(obj).__name__} as a resource: pass an Envoy API message, "
        'a dict with "@type", or an envoy-data-plane message',
        where=where,
    )


def to_messages(objs: Iterable[Any], *, where: str = "") -> list[message.Message]:
    prefix = f"{where} " if where else ""
    return [to_message(o, where=f"{prefix}resource #{i}".strip()) for i, o in enumerate(objs)]


def from_yaml(text: str, *, where: str = "") -> list[message.Message]:
    """Resources from YAML or JSON text: one resource, a list, or a ``resources:`` document.

    Read as Envoy reads a YAML file (:mod:`envoy_text`): tags never construct Python objects,
    and only the first YAML document counts.
    """
    try:
        doc = envoy_text.load_yaml(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f"line {mark.line + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ResourceError(f"{line}not valid YAML/JSON: {problem}", where=where) from None
    if doc.more_at is not None:
        log.warning("%sonly the first YAML document is read, as Envoy reads it; the one at line %d is not",
                    f"{where}: " if where else "", doc.more_at)
    return resources_of_document(doc.data, where=where)


def resources_of_document(data: Any, *, where: str = "") -> list[message.Message]:
    """The resources in a parsed file: a ``resources:`` list, a bare list or one ``@type`` dict."""
    items = document_items(data, where=where)
    prefix = f"{where} " if where else ""
    for i, item in enumerate(items):
        if not isinstance(item, Mapping):
            what = "null" if item is None else f"{type(item).__name__} {item!r}"
            raise ResourceError(f'a resource is a mapping with "@type", not the {what}', where=f"{prefix}resource #{i}")
    return to_messages(items, where=where)


def document_items(data: Any, *, where: str = "") -> list[Any]:
    """The resources of a parsed file as written (dicts), not yet parsed into messages.

    A file is what Envoy's filesystem subscriptions read: a DiscoveryResponse in JSON form, its
    ``resources`` a list of objects with ``"@type"`` (or, as Envoy reads it, one such object;
    lists in the list are flattened), its other fields (``version_info``...) checked as Envoy
    checks them. A labxds convenience Envoy does not have: a bare list of resources, or one.
    """
    if data is None:
        return []
    if isinstance(data, list):
        return data
    if isinstance(data, Mapping):
        if "@type" in data:
            return [data]
        _check_header(data, where)
        items = data.get("resources")
        if items is None:
            return []
        if isinstance(items, Mapping):
            return [items]
        if isinstance(items, list):
            return _flattened(items)
        raise ResourceError(f'expected a list of resources (objects with "@type"), not {items!r} '
                            "at DiscoveryResponse.resources.", where=where)
    raise ResourceError('expected a "resources:" list of objects with "@type"', where=where)


_DISCOVERY_RESPONSE = "envoy.service.discovery.v3.DiscoveryResponse"


def _check_header(data: Mapping[str, Any], where: str) -> None:
    """The file's own fields (all but ``resources``) as Envoy reads them: a DiscoveryResponse's."""
    header = {k: v for k, v in data.items() if k != "resources"}
    if not header:
        return
    response = resource_types.message_class(_DISCOVERY_RESPONSE)()
    known = {f.name for f in response.DESCRIPTOR.fields} | {f.json_name for f in response.DESCRIPTOR.fields}
    for key in header:
        if key not in known:
            close = difflib.get_close_matches(str(key), sorted(known), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ResourceError(
                f'not a field of a snapshot file, which has "resources:" (a list of objects with "@type") and may '
                f'have "version_info:"{hint} at DiscoveryResponse.{key}.', where=where)
    try:
        parse_dict(header, response)
    except json_format.ParseError as exc:
        raise ResourceError(_explain_parse_error(str(exc)), where=where) from None


def _flattened(items: list[Any]) -> list[Any]:
    if not any(isinstance(item, list) for item in items):
        return items
    out: list[Any] = []
    for item in items:
        out.extend(_flattened(item) if isinstance(item, list) else [item])
    return out


def version_of_document(data: Any) -> str | None:
    if isinstance(data, Mapping):
        version = data.get("version_info", data.get("versionInfo"))
        if version is not None:
            return str(version)
    return None


def to_dict(msg: message.Message) -> dict[str, Any]:
    """A message in Envoy's JSON form, with ``"@type"``, as config_dump shows it."""
    out: dict[str, Any] = {"@type": resource_types.type_url_of(msg)}
    out.update(json_format.MessageToDict(msg, preserving_proto_field_name=True))
    return out


def _from_dict(data: Mapping[str, Any], where: str) -> message.Message:
    type_url = data.get("@type")
    label = where
    name = data.get("name") or data.get("cluster_name")
    if isinstance(name, str):
        label = f"{where} ({name})" if where else name
    if not isinstance(type_url, str) or not type_url:
        raise ResourceError('missing "@type" (for example "type.googleapis.com/envoy.config.cluster.v3.Cluster")', where=label)
    if type_url.rfind("/") <= 0:
        raise ResourceError(
            f'field @type: the type URL {type_url!r} has no host before its last "/" (Envoy refuses it): '
            f'write "{resource_types.TYPE_PREFIX}{type_url.lstrip("/")}"', where=label)
    try:
        cls = resource_types.message_class(type_url)
    except ValueError as exc:
        raise ResourceError(f"@type {type_url!r}: {exc}", where=label) from None
    body = {k: v for k, v in data.items() if k != "@type"}
    msg = cls()
    try:
        parse_dict(body, msg)
    except NestedTypeError as exc:
        raise ResourceError(f'a nested "@type": {exc}', where=label) from None
    except json_format.ParseError as exc:
        raise ResourceError(_explain_parse_error(str(exc)), where=label) from None
    except RecursionError:
        raise ResourceError("nested too deeply", where=label) from None
    except (AttributeError, TypeError, KeyError, IndexError) as exc:
        # json_format trips over some wrong kinds of value instead of saying so (a list as a
        # nested "@type": 'list' object has no attribute 'split'); found by fuzzing snapshot files.
        raise ResourceError(f"a value of the wrong kind somewhere in it ({type(exc).__name__}: {exc}); "
                            'is a nested "@type" or a field that holds a message something else?', where=label) from None
    return msg


def _explain_parse_error(text: str) -> str:
    # json_format says e.g. 'Failed to parse connect_timeout field: ...' or
    # 'Message type "envoy.config.cluster.v3.Cluster" has no field named "nmae" at "Cluster".'
    return text.replace("Message type ", "type ").rstrip(".")


def _is_data_plane(obj: Any) -> bool:
    module = type(obj).__module__ or ""
    return module.startswith("envoy_data_plane.") and hasattr(obj, "SerializeToString")


def _from_data_plane(obj: Any, where: str) -> message.Message:
    """Re-parse an envoy-data-plane dataclass into the upb class of the same proto name.

    betterproto2 serializes about a thousand times slower than upb, so this happens once, here.
    """
    module = type(obj).__module__.removeprefix("envoy_data_plane.")
    full_name = f"{module}.{type(obj).__name__}"
    try:
        cls = resource_types.message_class(full_name)
    except ValueError as exc:
        raise ResourceError(f"envoy-data-plane message {full_name}: {exc}", where=where) from None
    msg = cls()
    try:
        msg.ParseFromString(bytes(obj))
    except message.DecodeError as exc:
        raise ResourceError(f"envoy-data-plane message {full_name} did not re-parse: {exc}", where=where) from None
    return msg
