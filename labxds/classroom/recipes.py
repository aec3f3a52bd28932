"""Snapshot specs written down: a template's name and arguments, or a snapshot's resources.

The workshop store keeps each learner's spec as such a recipe, so a restarted workshop renders
the same template for a learner who connects later; the instructor's JSON API takes them too:
``{"template": "routes", "table": {"/api": "service2", "/": "service1"}}``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from ..xds.snapshot import Snapshot
from .templates import SnapshotSpec, Template, broken_listener, canary, routes, sandbox

__all__ = ["TEMPLATES", "recipe_of", "spec_from_recipe"]

#: The ready templates by name, and the arguments each takes.
TEMPLATES: dict[str, tuple[Callable[..., Template], tuple[str, ...]]] = {
    "sandbox": (sandbox, ("upstream", "version")),
    "routes": (routes, ("table", "version")),
    "canary": (canary, ("weights", "version")),
    "broken_listener": (broken_listener, ("version",)),
}


def spec_from_recipe(recipe: Mapping[str, Any]) -> SnapshotSpec:
    """The spec a recipe describes; a clear error for an unknown template or argument."""
    if "snapshot" in recipe:
        from .store import decode_snapshot

        return decode_snapshot(recipe["snapshot"])
    name = recipe.get("template")
    if name not in TEMPLATES:
        raise ValueError(f"unknown template {name!r}; known: {', '.join(TEMPLATES)} (or a 'snapshot')")
    factory, allowed = TEMPLATES[name]
    args = {k: v for k, v in recipe.items() if k != "template"}
    unknown = sorted(set(args) - set(allowed))
    if unknown:
        raise ValueError(f"template {name!r} takes {', '.join(allowed)}; not {', '.join(unknown)}")
    spec: SnapshotSpec = factory(**args)
    return spec


def recipe_of(spec: SnapshotSpec) -> dict[str, Any] | None:
    """How to write ``spec`` down, or None when it is a function of the instructor's own."""
    if isinstance(spec, Snapshot):
        from .store import encode_snapshot

        return {"snapshot": encode_snapshot(spec)}
    recipe = getattr(spec, "recipe", None)
    if isinstance(recipe, Mapping):
        return dict(recipe)
    if not callable(spec):
        from .store import encode_snapshot

        return {"snapshot": encode_snapshot(Snapshot(spec))}
    return None
