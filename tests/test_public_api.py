"""The public API, pinned: what `labxds` and each layer export (their `__all__`).

An export added or removed by accident fails here; on purpose, change the list in the same commit.
Everything listed must import, and the layers' names must stay reachable where users import them.
"""

from __future__ import annotations

import importlib

import pytest

PUBLIC = {
    "labxds": [
        "CLUSTER", "ConsistencyError", "ControlPlane", "ENDPOINT", "LISTENER", "Lab", "PortInUseError",
        "PushRejected", "PushTimeout", "RESPONSE_FLAGS_HEADER", "ROUTE", "RUNTIME", "ResourceError", "SECRET",
        "Snapshot", "SnapshotCache", "api_listener", "cluster", "http_listener", "load_assignment",
        "route_configuration", "sandbox_resources", "sandbox_snapshot", "staged", "tls_secret", "to_dict",
        "to_message", "validation_secret",
    ],
    "labxds.xds": [
        "CLUSTER", "ConfigWatcher", "ConsistencyError", "ControlPlane", "ENDPOINT", "EXTENSION_CONFIG", "LISTENER",
        "NodeStatus", "PortInUseError", "PushRejected", "PushTimeout", "RESPONSE_FLAGS_HEADER", "ROUTE", "RUNTIME",
        "ResourceError", "SCOPED_ROUTE", "SECRET", "Snapshot", "SnapshotCache", "TraceEvent", "Tracker",
        "TypeStatus", "api_listener", "cluster", "http_listener", "load_assignment", "route_configuration",
        "sandbox_resources", "sandbox_snapshot", "socket_address", "staged", "tls_secret", "to_dict", "to_message",
        "validation_secret",
    ],
    "labxds.xds.server": ["Authorizer", "PEER_COMMON_NAME", "PEER_DNS_NAMES", "XdsServer"],
    "labxds.xds.hooks": [
        "EVENTS", "Event", "Hook", "RequestHook", "ResponseHook", "StreamCloseHook", "StreamOpenHook",
    ],
    "labxds.files": [
        "SNAPSHOT_SUFFIXES", "SnapshotFileError", "SnapshotSet", "SnapshotWatcher", "describe", "load_path",
        "load_snapshots",
    ],
    "labxds.tls": [
        "CertificateAuthorizer", "Credential", "SERVER_NAME", "TOKEN_HEADER", "TlsFileError", "TlsFiles",
        "TokenAuthorizer", "channel_credentials", "issue", "load_credential", "make_ca", "renew_server_certificate",
        "server_credentials", "server_ssl_context", "tls_files_in", "write_tls_files",
    ],
    "labxds.envoy": [
        "CONFIG_DUMP_RESOURCES", "ENVOY_VERSION", "Envoy", "EnvoyAdmin", "EnvoyError", "EnvoyExited",
        "EnvoyNotFound", "EnvoyPortBusy", "JqError", "TLS_BOOTSTRAP", "add_token", "as_admin", "bootstrap_path",
        "configs_index", "find_envoy", "jq", "learner_bootstrap", "render_bootstrap", "render_tls_bootstrap",
        "run_jq", "validate_bootstrap", "without_client_certificate",
    ],
    "labxds.lab": [
        "Announcement", "Behaviour", "EchoFleet", "EchoService", "GrpcEcho", "GrpcFleet", "LabRuntime",
        "LocalLabOnly", "Traffic", "XdsGrpcClient", "format_echo", "local_lab_only", "send", "start_services",
    ],
    "labxds.notebook": [
        "BehaviourPanel", "CanarySlider", "Checked", "Dashboard", "Diagram", "ExerciseFailed", "GrpcBackendToggle",
        "Lab", "LiveChart", "SANDBOX_JQ", "StatusPanel", "UpstreamToggle", "canary_snapshot", "certificates_table",
        "check", "clusters_table", "config_dump", "configs_index", "curl", "curl_i", "endpoints_table", "exercises",
        "hosts_table", "jq", "listeners_table", "next_version", "phases_table", "progress_table", "routes_table", "run_jq",
        "sandbox_endpoint", "sequence", "show_json", "solve", "stats_table", "status_table", "styled",
        "topology", "tr", "trace_table", "traffic_figure", "traffic_png",
    ],
    "labxds.classroom": [
        "CheckResult", "Desk", "EXERCISES", "Exercise", "Fail", "Learner", "LearnerSession", "SnapshotSpec", "Store",
        "TOKEN_HEADER", "Target", "Template", "Workshop", "WorkshopClient", "WorkshopService", "broken_listener",
        "canary", "class_status", "course_exercises", "describe_spec", "exercise", "learner_bootstrap", "register",
        "render", "routes", "sandbox",
    ],
    "labxds.net": ["free_port", "parse_address", "port_is_free", "reachable"],
    "labxds.i18n": ["LANGUAGES", "N_", "_", "explain", "language", "ngettext", "set_language"],
    "labxds.classroom.course": ["LESSON_MODULES", "lesson_exercises"],
    "labxds.cli": ["build_parser", "main"],
}  # fmt: skip


@pytest.mark.parametrize("module", sorted(PUBLIC))
def test_exports_are_pinned_and_import(module: str) -> None:
    mod = importlib.import_module(module)
    assert sorted(mod.__all__) == sorted(PUBLIC[module]), f"{module}.__all__ changed: update PUBLIC if on purpose"
    for name in mod.__all__:
        assert getattr(mod, name) is not None, f"{module}.{name}"


def test_the_top_level_names_are_the_engines_own() -> None:
    """`labxds.X` is the same object as the layer's: one class, whichever import a user wrote."""
    import labxds
    import labxds.notebook
    import labxds.xds

    for name in labxds.__all__:
        home = labxds.notebook if name == "Lab" else labxds.xds
        assert getattr(labxds, name) is getattr(home, name), name


def test_every_module_says_what_it_exports() -> None:
    import pathlib

    root = pathlib.Path(importlib.import_module("labxds").__file__).parent
    missing = [str(p.relative_to(root)) for p in root.rglob("*.py")
               if p.name != "__main__.py" and "__all__" not in p.read_text()]
    assert missing == []
    assert (root / "py.typed").is_file()
