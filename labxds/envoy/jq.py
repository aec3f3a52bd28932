"""The sandbox reads ``/config_dump`` with ``jq``; here is the part of jq it uses, in Python.

``jq(data, ".configs[1].dynamic_active_clusters[0].cluster.name")`` walks a path the way jq
does: ``.name`` and ``."@type"`` take a field, ``[1]`` an item (``[-1]`` the last), ``[]`` every
item, ``|`` feeds one path into the next, and ``keys`` and ``length`` are jq's functions of the
same names. As in jq, a field of null is null (``None``). ``run_jq`` runs the real ``jq`` when it
is installed, so a notebook can show both give the same answer. ``configs_index`` says what each
``configs[i]`` of a /config_dump holds.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Mapping
from typing import Any

from ..i18n import N_, _

__all__ = ["CONFIG_SECTIONS", "JqError", "configs_index", "jq", "run_jq"]

_TOKEN = re.compile(r'\s*(?:\.\s*"((?:[^"\\]|\\.)*)"|\.([A-Za-z_][A-Za-z0-9_]*)|\[\s*(-?\d+)?\s*\]|\[\s*"((?:[^"\\]|\\.)*)"\s*\]|(\.))')


class JqError(ValueError):
    """A path this evaluator does not understand, or one jq itself would refuse."""


class _Many(list[Any]):
    """The results of ``[]``: the rest of the path applies to each."""


def _steps(path: str) -> list[tuple[str, Any]]:
    steps: list[tuple[str, Any]] = []
    pos = 0
    path = path.strip()
    while pos < len(path):
        m = _TOKEN.match(path, pos)
        if m is None or m.end() == pos:
            raise JqError(_('cannot read the jq path {path} at {rest}: use .field, ."field", [n], [] and |').format(
                path=repr(path), rest=repr(path[pos:])))
        quoted, bare, index, bracketed, dot = m.groups()
        if quoted is not None or bracketed is not None:
            steps.append(("field", json.loads(f'"{quoted if quoted is not None else bracketed}"')))
        elif bare is not None:
            steps.append(("field", bare))
        elif dot is not None:
            pass  # "." alone: the input itself
        elif index is not None:
            steps.append(("index", int(index)))
        else:
            steps.append(("each", None))
        pos = m.end()
    return steps


def _apply(value: Any, step: tuple[str, Any]) -> Any:
    kind, arg = step
    if isinstance(value, _Many):
        return _Many(_apply(v, step) for v in value)
    if kind == "field":
        if value is None:
            return None
        if not isinstance(value, Mapping):
            raise JqError(f"Cannot index {_jq_type(value)} with string \"{arg}\"")
        return value.get(arg)
    if kind == "index":
        if value is None:
            return None
        if not isinstance(value, list):
            raise JqError(f"Cannot index {_jq_type(value)} with number")
        return value[arg] if -len(value) <= arg < len(value) else None
    if isinstance(value, Mapping):
        return _Many(value.values())
    if isinstance(value, list):
        return _Many(value)
    raise JqError(f"Cannot iterate over {_jq_type(value)}")


def _jq_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def _function(value: Any, name: str) -> Any:
    if isinstance(value, _Many):
        return _Many(_function(v, name) for v in value)
    if name == "keys":
        if isinstance(value, Mapping):
            return sorted(value)
        if isinstance(value, list):
            return list(range(len(value)))
        raise JqError(f"{_jq_type(value)} has no keys")
    if name == "length":
        if value is None:
            return 0
        if isinstance(value, (Mapping, list, str)):
            return len(value)
        if isinstance(value, (int, float)):
            return abs(value)
        raise JqError(f"{_jq_type(value)} has no length")
    raise JqError(_("this small jq knows keys and length, not {name}").format(name=repr(name)))


def jq(data: Any, path: str) -> Any:
    """``path`` applied to ``data`` as jq would; several results (after ``[]``) come as a list."""
    value: Any = data
    for part in path.split("|"):
        part = part.strip()
        if part and part[0] not in ".[":  # a function: keys, length
            value = _function(value, part)
            continue
        for step in _steps(part or "."):
            value = _apply(value, step)
    return list(value) if isinstance(value, _Many) else value


def run_jq(data: Any, path: str, *, timeout: float = 10.0) -> str | None:
    """The real ``jq``'s output for ``path`` on ``data`` (None when jq is not installed)."""
    binary = shutil.which("jq")
    if binary is None:
        return None
    done = subprocess.run([binary, path], input=json.dumps(data), capture_output=True, text=True, timeout=timeout,
                          check=False)  # fmt: skip
    if done.returncode != 0:
        raise JqError(f"jq {path!r}: {done.stderr.strip()}")
    return done.stdout


#: What each section of /config_dump holds, by the last part of its "@type" (in English;
#: ``configs_index`` says it in the learner's language).
CONFIG_SECTIONS = {
    "BootstrapConfigDump": N_("the bootstrap Envoy started with (envoy.yaml): node, admin, static clusters, where ADS is"),
    "ClustersConfigDump": N_("clusters: static ones from the bootstrap, dynamic ones from CDS (active and warming)"),
    "EndpointsConfigDump": N_("endpoints of every cluster (only with ?include_eds)"),
    "ListenersConfigDump": N_("listeners from LDS: active, warming, draining, and rejected updates (error_state)"),
    "ScopedRoutesConfigDump": N_("scoped route configurations (Envoy lists it once it has an HTTP listener)"),
    "RoutesConfigDump": N_("route configurations: inline ones and those from RDS"),
    "SecretsConfigDump": N_("TLS certificates and keys: static ones and those from SDS"),
    "EcdsConfigDump": N_("filter configurations from the extension config discovery service (ECDS)"),
}


def configs_index(dump: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One record per ``configs[i]`` of a /config_dump: its index, type, what it holds, and the
    lists in it with their lengths ("dynamic_active_clusters: 1")."""
    rows = []
    for i, section in enumerate(dump.get("configs") or []):
        kind = str(section.get("@type", "")).rsplit(".", 1)[-1]
        lists = [f"{k}: {len(v)}" for k, v in section.items() if isinstance(v, list)]
        rows.append({
            "index": i,
            "type": kind,
            "holds": _(CONFIG_SECTIONS[kind]) if kind in CONFIG_SECTIONS else "",
            "lists": ", ".join(lists) or _("(empty)"),
            "jq": f".configs[{i}]",
        })  # fmt: skip
    return rows
