"""How much one input from outside may hold, measured before anything walks it.

A small text can stand for a huge value: YAML aliases nested eight deep, each level nine aliases
of the one below, are 43 million values in 600 bytes, and walking them took ``labxds serve`` to
100 % CPU and 700 MB in a minute. A text can also nest deeper than any parser's stack. So every
input a peer or a file can send (snapshot files, the workshop desk's JSON bodies, the
DiscoveryRequests on an ADS stream) is held to one budget: bytes, values once aliases are
expanded, and depth. What goes over is refused with the reason, before it is expanded.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

__all__ = ["BudgetExceeded", "DEFAULT_BUDGET", "InputBudget", "check_data", "expanded_size"]


class BudgetExceeded(ValueError):
    """An input over its budget; ``what`` is the limit it crossed ("bytes", "values", "depth"), or
    "cycle" for a value that contains itself."""

    def __init__(self, what: str, reason: str, where: Any = None) -> None:
        self.what = what
        self.where = where  # what the caller can point at (a YAML node, a key path)
        super().__init__(reason)


@dataclass(frozen=True)
class InputBudget:
    """Limits for one input.

    ``max_values``: scalars, lists and mappings counted as they would be walked (an alias counts
    as many values as what it names). A 100,000-cluster snapshot file is about 2.5 million.
    ``max_depth``: nesting; protobuf itself refuses messages deeper than 100.
    """

    max_bytes: int = 256 << 20
    max_values: int = 5_000_000
    max_depth: int = 100

    def check_bytes(self, size: int, what: str = "the input") -> None:
        if size > self.max_bytes:
            raise BudgetExceeded("bytes", f"{what} is {size:,} bytes, more than the {self.max_bytes:,} allowed")


#: Snapshot files; the desk and the ADS server use the same values and depth with fewer bytes.
DEFAULT_BUDGET = InputBudget()


def expanded_size(root: Any, children: Any, budget: InputBudget) -> tuple[int, int]:
    """(values, depth) of a graph whose shared nodes count once per reference (YAML aliases).

    ``children(node)`` lists a node's children. Shared nodes are measured once (memoized by
    identity), so a bomb costs its distinct nodes, not its expansion. Raises BudgetExceeded at
    the first node whose expansion crosses the budget (``where`` is that node), and for a node
    that contains itself.
    """
    sizes: dict[int, tuple[int, int]] = {}
    active: set[int] = set()
    stack: list[tuple[Any, Iterable[Any] | None]] = [(root, None)]
    while stack:
        node, pending = stack[-1]
        key = id(node)
        if pending is None:
            if key in sizes:
                stack.pop()
                continue
            active.add(key)
            kids = list(children(node))
            stack[-1] = (node, kids)
            for kid in kids:
                if id(kid) in active:
                    raise BudgetExceeded("cycle", "a value contains itself", kid)
                if id(kid) not in sizes:
                    stack.append((kid, None))
            continue
        stack.pop()
        active.discard(key)
        count, depth = 1, 0
        for kid in pending:
            c, d = sizes[id(kid)]
            count += c
            depth = max(depth, d)
        depth += 1
        if count > budget.max_values:
            raise BudgetExceeded("values", f"it expands to more than {budget.max_values:,} values", node)
        if depth > budget.max_depth:
            raise BudgetExceeded("depth", f"it nests deeper than {budget.max_depth} levels", node)
        sizes[key] = (count, depth)
    return sizes[id(root)]


def _data_children(value: Any) -> Iterable[Any]:
    if isinstance(value, dict):
        for k, v in value.items():
            yield k
            yield v
    elif isinstance(value, (list, tuple)):
        yield from value


def check_data(value: Any, budget: InputBudget = DEFAULT_BUDGET) -> tuple[int, int]:
    """(values, depth) of parsed data (JSON-like); BudgetExceeded if over ``budget``."""
    return expanded_size(value, _data_children, budget)
