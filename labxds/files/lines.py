"""Where in a YAML file a field lives: the line a mistake is reported at.

The parsers give a path such as ``filter_chains[0].filters[0].typed_config``; these helpers follow
it (in Envoy's snake_case or protobuf's camelCase) through the YAML node tree.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable

import yaml

__all__ = ["key_node", "problem_line", "scalar_line", "search_line", "snake"]

log = logging.getLogger("labxds.snapshot_files")


_INDEXED = re.compile(r"^([^\[\]]+)((?:\[\d+\])*)$")


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(p[:1].upper() + p[1:] for p in rest)


def snake(name: str) -> str:
    return re.sub(r"(?<!^)([A-Z])", r"_\1", name).lower()


def key_node(node: yaml.Node, name: str) -> tuple[yaml.Node, yaml.Node] | None:
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode) and key.value in (name, _camel(name)):
                return key, value
    return None


def _follow(node: yaml.Node, steps: list[tuple[str, list[int]]]) -> int | None:
    """The line of the last key along an exact path such as load_assignment.endpoints[0]."""
    line = None
    for name, indices in steps:
        found = key_node(node, name)
        if found is None:
            return line
        key, node = found
        line = key.start_mark.line + 1
        for i in indices:
            if not isinstance(node, yaml.SequenceNode):
                if i == 0:
                    continue  # one value where a list is expected, as Envoy reads it
                return line
            if i >= len(node.value):
                return line
            node = node.value[i]
            line = node.start_mark.line + 1
    return line


def search_line(node: yaml.Node, names: list[str]) -> int | None:
    """The line of the first key chain ``names`` (lists in between are searched item by item)."""
    if not names:
        return None
    if isinstance(node, yaml.SequenceNode):
        for item in node.value:
            hit = search_line(item, names)
            if hit is not None:
                return hit
        return None
    found = key_node(node, names[0])
    if found is None:
        return None
    key, value = found
    deeper = search_line(value, names[1:])
    return deeper if deeper is not None else key.start_mark.line + 1


def scalar_line(node: yaml.Node, wanted: Callable[[str], bool]) -> int | None:
    stack = [node]
    while stack:
        n = stack.pop(0)
        if isinstance(n, yaml.ScalarNode) and isinstance(n.value, str) and wanted(n.value):
            return n.start_mark.line + 1
        if isinstance(n, yaml.MappingNode):
            for k, v in n.value:
                stack.extend((k, v))
        elif isinstance(n, yaml.SequenceNode):
            stack.extend(n.value)
    return None


def problem_line(node: yaml.Node | None, problem: str) -> int | None:
    """Where in the resource ``node`` json_format's complaint points, best effort."""
    if node is None:
        return None
    first = problem.splitlines()[0] if problem else ""
    unknown_type = re.search(r"unknown message type '([^']+)'", first)
    if unknown_type:
        short = unknown_type.group(1)
        return scalar_line(node, lambda v: v == short or v.endswith("/" + short))
    at = re.search(r' at "?([A-Za-z_][^\s"]*?)"?\.?$', first)
    if at:
        parts = at.group(1).split(".")[1:]  # the first part is the resource's message name
        steps = []
        for part in parts:
            m = _INDEXED.match(part)
            if m is None:
                break
            steps.append((m.group(1), [int(i) for i in re.findall(r"\d+", m.group(2))]))
        missing = re.search(r'has no field named "([^"]+)"', first)
        if missing:
            steps.append((missing.group(1), []))
        line = _follow(node, steps)
        if line is not None:
            return line
    chain = re.findall(r"Failed to parse (\w+) field", first)
    missing = re.search(r'has no field named "([^"]+)"', first)
    names = chain + ([missing.group(1)] if missing else [])
    return search_line(node, names) if names else None
