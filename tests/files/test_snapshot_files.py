"""labxds.snapshot_files: snapshots in files, watched and pushed to a real ControlPlane (and Envoy)."""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import time
from pathlib import Path

import pytest
import yaml
from envoy_helpers import free_port
from snapshot_files_helpers import (
    atomic_write,
    cluster_version,
    curl,
    one_file,
    sandbox_docs,
    wait_cluster_version,
    write_sandbox,
)
from xds_client import eventually

from labxds import CLUSTER, LISTENER, ROUTE, ControlPlane, Snapshot, sandbox_snapshot
from labxds.envoy import Envoy, render_bootstrap
from labxds.files import (
    SnapshotFileError,
    SnapshotSet,
    SnapshotWatcher,
    describe,
    inotify,
    load_path,
    load_snapshots,
)
from labxds.lab import EchoService

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "sandbox"


# ---------------------------------------------------------------- helpers


def endpoint_of(snapshot: Snapshot) -> tuple[str, int]:
    c = snapshot.resources(CLUSTER)["example_proxy_cluster"]
    sock = c.load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.socket_address
    return sock.address, sock.port_value


def error_of(path) -> SnapshotFileError:
    with pytest.raises(SnapshotFileError) as info:
        load_snapshots([path])
    return info.value


CLUSTER_DOC = """\
resources:
- "@type": type.googleapis.com/envoy.config.cluster.v3.Cluster
  name: ok
  connect_timeout: 1s
- "@type": {type}
  name: second
  {field}: {value}
"""


def cluster_file(tmp_path: Path, *, type: str = "type.googleapis.com/envoy.config.cluster.v3.Cluster",
                 field: str = "connect_timeout", value: str = "2s", name: str = "c.yaml") -> Path:
    path = tmp_path / name
    path.write_text(CLUSTER_DOC.format(type=type, field=field, value=value))
    return path


# ---------------------------------------------------------------- loading


def test_example_sandbox_is_the_sandbox_snapshot():
    snap = load_path(EXAMPLE)
    reference = sandbox_snapshot(listener_address="0.0.0.0")
    assert set(snap.types) == {CLUSTER, ROUTE, LISTENER}
    for url in snap.types:
        assert snap.resources(url) == reference.resources(url), url
    assert snap.versions == {CLUSTER: "1", ROUTE: "1", LISTENER: "1"}
    assert describe(snap) == "version 1: 1 cluster, 1 listener, 1 route configuration"
    hcm_source = snap.rds_names()
    assert hcm_source == {"local_route"}


def test_one_yaml_file_bare_list_single_resource_and_json(tmp_path):
    docs = sandbox_docs(version="7")
    resources = [r for d in docs.values() for r in d["resources"]]
    listed = tmp_path / "list.yaml"
    listed.write_text(yaml.safe_dump(resources))
    assert len(load_path(listed)) == 3
    single = tmp_path / "single.yml"
    single.write_text(yaml.safe_dump(resources[0]))
    assert load_path(single).names(CLUSTER) == {"example_proxy_cluster"}
    as_json = tmp_path / "snap.json"
    as_json.write_text(json.dumps({"version_info": "7", "resources": resources}, indent=2))
    snap = load_path(as_json)
    assert len(snap) == 3 and set(snap.versions.values()) == {"7"}
    as_json.write_text(json.dumps({"version_info": 7, "resources": resources}, indent=2))
    err = error_of(as_json)  # a number, which Envoy refuses: DiscoveryResponse.version_info is a string
    assert err.line == 2 and "field version_info: expected a string, got the number 7" in err.reason


def test_directory_merges_snapshot_files_only(tmp_path):
    write_sandbox(tmp_path)
    (tmp_path / "rds.yaml").rename(tmp_path / "rds.yml")
    lds = yaml.safe_load((tmp_path / "lds.yaml").read_text())
    (tmp_path / "lds.yaml").unlink()
    (tmp_path / "lds.json").write_text(json.dumps(lds))
    garbage = "resources: [ {\n"
    for ignored in (".hidden.yaml", "notes.txt", "cds.yaml~", "README.md", "sub/more.yaml", "nodes/x/c.yaml"):
        (tmp_path / ignored).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / ignored).write_text(garbage)
    snap = load_path(tmp_path)
    assert {url: snap.names(url) for url in snap.types} == {
        CLUSTER: {"example_proxy_cluster"},
        LISTENER: {"listener_0"},
        ROUTE: {"local_route"},
    }


def test_version_info_used_only_when_the_files_agree(tmp_path):
    write_sandbox(tmp_path, version="4")
    assert set(load_path(tmp_path).versions.values()) == {"4"}
    doc = yaml.safe_load((tmp_path / "rds.yaml").read_text())
    del doc["version_info"]  # files that set none do not count
    (tmp_path / "rds.yaml").write_text(yaml.safe_dump(doc))
    assert set(load_path(tmp_path).versions.values()) == {"4"}
    doc["version_info"] = "5"  # disagreement: content hashes
    (tmp_path / "rds.yaml").write_text(yaml.safe_dump(doc))
    snap = load_path(tmp_path)
    hashed = Snapshot([snap.resources(u)[n] for u in snap.types for n in snap.names(u)])
    assert snap.versions == hashed.versions
    assert not {"4", "5"} & set(snap.versions.values())


def test_load_snapshots_nodes_have_their_own_snapshot(tmp_path):
    write_sandbox(tmp_path, "service1", 8080)
    (tmp_path / "cds.yaml").write_text(
        (tmp_path / "cds.yaml").read_text()
        + "- '@type': type.googleapis.com/envoy.config.cluster.v3.Cluster\n  name: default_only\n"
          "  connect_timeout: 1s\n"
    )
    write_sandbox(tmp_path / "nodes" / "envoy-a", "service2", 8081, version="9")
    one_file(tmp_path / "nodes" / "envoy-b.yaml", "service3", 8082)
    (tmp_path / "nodes" / "empty").mkdir()  # a node directory without files is ignored
    (tmp_path / "nodes" / "notes.txt").write_text("not a node")
    snaps = load_snapshots([tmp_path])
    assert isinstance(snaps, SnapshotSet)
    assert endpoint_of(snaps.default) == ("service1", 8080)
    assert snaps.default.names(CLUSTER) == {"example_proxy_cluster", "default_only"}
    assert sorted(snaps.nodes) == ["envoy-a", "envoy-b"]
    a, b = snaps.nodes["envoy-a"], snaps.nodes["envoy-b"]
    assert endpoint_of(a) == ("service2", 8081) and set(a.versions.values()) == {"9"}
    assert a.names(CLUSTER) == {"example_proxy_cluster"}  # not merged with the default
    assert endpoint_of(b) == ("service3", 8082)
    assert "node 'envoy-a' version 9" in snaps.describe()


def test_only_nodes_means_no_default(tmp_path):
    one_file(tmp_path / "nodes" / "n1.yaml")
    snaps = load_snapshots(tmp_path)
    assert snaps.default is None and list(snaps.nodes) == ["n1"]


def test_several_paths_merge_into_the_default(tmp_path):
    write_sandbox(tmp_path / "a")
    (tmp_path / "b").mkdir()
    shutil.move(tmp_path / "a" / "lds.yaml", tmp_path / "b" / "listeners.yaml")
    with pytest.raises(SnapshotFileError, match="route configuration 'local_route'|listener"):
        load_path(tmp_path / "b")  # alone, the listener's routes are missing
    snaps = load_snapshots([tmp_path / "a", tmp_path / "b" / "listeners.yaml", tmp_path / "a" / "cds.yaml"])
    assert len(snaps.default) == 3  # cds.yaml named twice is read once


def test_node_defined_twice_is_refused(tmp_path):
    write_sandbox(tmp_path / "nodes" / "n1")
    one_file(tmp_path / "nodes" / "n1.yaml")
    err = error_of(tmp_path)
    assert "n1" in str(err) and "also defined" in str(err)


# ---------------------------------------------------------------- errors name file, line, reason


def test_yaml_syntax_error_names_file_and_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("resources:\n- name: x\n  connect_timeout: [1s\n")
    err = error_of(path)
    assert err.path == path and err.line == 4
    assert str(err).startswith(f"{path}:4: not valid YAML")


def test_json_syntax_error_names_file_and_line(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('{\n  "resources": [\n    {"@type": "x" "name": "y"}\n  ]\n}\n')
    err = error_of(path)
    assert (err.path, err.line) == (path, 3)
    assert "not valid JSON" in str(err)


def test_json_resource_errors_have_lines_too(tmp_path):
    path = tmp_path / "c.json"
    doc = {"resources": [{"@type": "type.googleapis.com/envoy.config.cluster.v3.Cluster", "name": "c",
                          "connect_timeout": "1s", "lb_polcy": "RANDOM"}]}
    path.write_text(json.dumps(doc, indent=2))
    err = error_of(path)
    assert '"lb_polcy"' in path.read_text().splitlines()[err.line - 1]
    assert "did you mean 'lb_policy'" in err.reason


def test_python_tags_build_nothing_and_never_run(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "evil.yaml"
    path.write_text(f"resources:\n- !!python/object/apply:os.system ['touch {marker}']\n")
    err = error_of(path)  # Envoy ignores the tag: a list in the list, flattened, of one string
    assert not marker.exists()
    assert err.line == 2 and f"a resource is a mapping with \"@type\", not the str 'touch {marker}'" in err.reason


def test_a_second_yaml_document_is_not_read_and_is_reported(tmp_path, caplog):
    path = cluster_file(tmp_path)
    text = path.read_text()
    path.write_text(text + "---\nresources: []\n")  # Envoy reads the first document only
    with caplog.at_level(logging.WARNING, logger="labxds.snapshot_files"):
        snap = load_path(path)
    assert snap.names(CLUSTER) == {"ok", "second"}
    line = len(text.splitlines()) + 1
    assert f"{path}:{line}: a second YAML document, which Envoy does not read: only the first is served" in caplog.text


def test_unknown_type_names_resource_and_line(tmp_path):
    path = cluster_file(tmp_path, type="type.googleapis.com/envoy.config.cluster.v3.Clustr")
    err = error_of(path)
    assert (err.path, err.line) == (path, 5)
    assert err.resource == "resource #1 (second)"
    assert "unknown message type 'envoy.config.cluster.v3.Clustr'" in str(err)


def test_unknown_nested_type_points_at_its_line(tmp_path):
    docs = sandbox_docs()
    hcm = docs["lds"]["resources"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    hcm["@type"] += "x"
    path = tmp_path / "lds.yaml"
    path.write_text(yaml.safe_dump(docs["lds"], sort_keys=False))
    err = error_of(path)
    assert "HttpConnectionManagerx" in err.reason
    assert "HttpConnectionManagerx" in path.read_text().splitlines()[err.line - 1]


def test_misspelled_field_names_field_line_and_suggestion(tmp_path):
    path = cluster_file(tmp_path, field="conect_timeout", value="2s")
    err = error_of(path)
    assert (err.line, err.resource) == (7, "resource #1 (second)")
    assert "unknown field 'conect_timeout'" in err.reason and "did you mean 'connect_timeout'" in err.reason


def test_nested_misspelled_field_points_at_the_nested_line(tmp_path):
    docs = sandbox_docs()
    path = tmp_path / "cds.yaml"
    text = yaml.safe_dump(docs["cds"], sort_keys=False).replace("port_value:", "port_valu:")
    path.write_text(text)
    err = error_of(path)
    assert "port_valu:" in text.splitlines()[err.line - 1]
    assert "socket_address" in err.reason and "did you mean 'port_value'" in err.reason


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("connect_timeout", "five", "field connect_timeout: 'five' is not a duration as Envoy reads one"),
        ("type", "LOGICAL", "field type: unknown value 'LOGICAL' for envoy.config.cluster.v3.Cluster.DiscoveryType; "
                            "did you mean LOGICAL_DNS?"),
        ("lb_policy", "yes", "field lb_policy: expected a name of envoy.config.cluster.v3.Cluster.LbPolicy, got the "
                             "boolean true (YAML reads y, yes, on and true"),
    ],
)
def test_wrong_value_names_field_value_and_line(tmp_path, field, value, expected):
    path = cluster_file(tmp_path, field=field, value=value)
    err = error_of(path)
    assert err.line == 7 and expected in err.reason and value in err.reason


@pytest.mark.parametrize(
    ("text", "line", "expected"),
    [
        ("resources:\n- name: x\n  connect_timeout: 1s\n", 2, 'missing "@type"'),
        ("resources:\n- '@type': type.googleapis.com/envoy.config.cluster.v3.Cluster\n  connect_timeout: 1s\n",
         2, "empty or missing 'name'"),
        ("hello: world\n", 1, 'field hello: not a field of a snapshot file, which has "resources:"'),
        ("resource:\n- x: 1\n", 1, "did you mean 'resources'?"),
        ("resources: 5\n", 1, 'field resources: expected a list of resources (objects with "@type"), not 5'),
    ],
)
def test_document_mistakes(tmp_path, text, line, expected):
    path = tmp_path / "x.yaml"
    path.write_text(text)
    err = error_of(path)
    assert err.path == path and err.line == line and expected in str(err)


def test_inconsistent_snapshot_names_the_file_and_line_of_the_reference(tmp_path):
    write_sandbox(tmp_path)
    lds = tmp_path / "lds.yaml"
    lds.write_text(lds.read_text().replace("route_config_name: local_route", "route_config_name: other"))
    err = error_of(tmp_path)
    assert err.path == lds
    assert "route_config_name: other" in lds.read_text().splitlines()[err.line - 1]
    assert "inconsistent snapshot: listener 'listener_0' uses route configuration 'other'" in str(err)
    assert "check=False" not in str(err)


def test_a_route_to_a_bootstrap_cluster_loads_with_the_check_skipped(tmp_path):
    write_sandbox(tmp_path)
    rds = tmp_path / "rds.yaml"
    rds.write_text(rds.read_text().replace("cluster: example_proxy_cluster", "cluster: from_bootstrap"))
    err = error_of(tmp_path)
    assert err.path == rds and "from_bootstrap" in rds.read_text().splitlines()[err.line - 1]
    assert "serve with --no-check" in str(err)
    loaded = load_snapshots([tmp_path], check=False)
    assert loaded.default.resources(ROUTE)["local_route"].virtual_hosts[0].routes[0].route.cluster == "from_bootstrap"
    assert load_path(tmp_path, check=False) == loaded.default
    from labxds.cli import build_parser

    assert build_parser().parse_args(["serve", "--snapshot", str(tmp_path), "--no-check"]).no_check is True
    assert build_parser().parse_args(["serve", "--snapshot", str(tmp_path)]).no_check is False


WRAPPED = """\
resources:
- "@type": type.googleapis.com/envoy.service.discovery.v3.Resource
  name: web
  ttl: 30s
  resource:
    "@type": type.googleapis.com/envoy.config.cluster.v3.Cluster
    name: web
    connect_timeout: 1s
- "@type": type.googleapis.com/envoy.config.route.v3.RouteConfiguration
  name: web
"""


def test_a_resource_wrapper_gives_a_ttl_to_its_resource_only(tmp_path):
    path = tmp_path / "ttl.yaml"
    path.write_text(WRAPPED)
    snap = load_path(path)
    assert snap.entries(CLUSTER, True)["web"].ttl == 30.0
    assert snap.entries(ROUTE, True)["web"].ttl is None  # the same name, another type: no TTL
    assert snap.entries(CLUSTER)["web"].ttl is None  # clients without TTL support get it plain
    assert snap.resources(CLUSTER)["web"].connect_timeout.seconds == 1
    plain = tmp_path / "plain.yaml"
    plain.write_text(WRAPPED.replace("  ttl: 30s\n", ""))
    assert load_path(plain).entries(CLUSTER, True)["web"].ttl is None


@pytest.mark.parametrize("edit,line,expected", [  # WRAPPED's lines: wrapper 2-5, cluster 6-8
    (("ttl: 30s", "ttl: soon"), 4, "ttl 'soon' is not a duration"),
    (("ttl: 30s", "ttl: 0s"), 4, "ttl '0s' must be positive"),
    (("  name: web\n  ttl", "  name: other\n  ttl"), 3, "wrapper is named 'other' but its resource 'web'"),
    (("  ttl: 30s", "  ttl: 30s\n  version: '1'"), 5, "'version' is not supported"),
    (('    "@type": type.googleapis.com/envoy.config.cluster.v3.Cluster\n', ""), 5, 'needs "resource"'),
    (("connect_timeout: 1s", "connect_timeout: soon"), 8, "connect_timeout"),
])
def test_resource_wrapper_mistakes_name_the_line(tmp_path, edit, line, expected):
    path = tmp_path / "ttl.yaml"
    path.write_text(WRAPPED.replace(*edit))
    err = error_of(path)
    assert expected in str(err) and err.path == path
    assert err.line == line, (err.line, str(err))


def test_duplicate_across_files_names_both(tmp_path):
    write_sandbox(tmp_path)
    shutil.copy(tmp_path / "cds.yaml", tmp_path / "more.yaml")
    err = error_of(tmp_path)
    assert err.path == tmp_path / "more.yaml"
    assert f"already defined at {tmp_path / 'cds.yaml'}:" in str(err)


def test_missing_path_and_non_utf8(tmp_path):
    assert "no such file or directory" in str(error_of(tmp_path / "nope"))
    bad = tmp_path / "latin1.yaml"
    bad.write_bytes("resources: []  # caf\xe9\n".encode("latin-1"))
    err = error_of(bad)
    assert err.path == bad and "UTF-8" in err.reason
    assert isinstance(err, ValueError)  # the CLI turns ValueErrors into exit code 2


# ---------------------------------------------------------------- watching (real ControlPlane)


class Recorder:
    """Wraps ControlPlane.set_snapshot and cache.clear; lets a test wait for the next push."""

    def __init__(self, cp: ControlPlane) -> None:
        self.calls: list[tuple[str, str | None]] = []
        self.errors: list[SnapshotFileError] = []
        self.cond = threading.Condition()
        set_snapshot, clear = cp.set_snapshot, cp.cache.clear

        def recording_set(snapshot, node=None):
            try:
                return set_snapshot(snapshot, node)
            finally:
                self._add(("set", node))

        def recording_clear(node):
            try:
                return clear(node)
            finally:
                self._add(("clear", node))

        cp.set_snapshot = recording_set
        cp.cache.clear = recording_clear

    def _add(self, call) -> None:
        with self.cond:
            self.calls.append(call)
            self.cond.notify_all()

    def on_error(self, exc: SnapshotFileError) -> None:
        with self.cond:
            self.errors.append(exc)
            self.cond.notify_all()

    def wait(self, predicate, timeout: float = 5.0):
        with self.cond:
            assert self.cond.wait_for(predicate, timeout), f"timed out; calls={self.calls} errors={self.errors}"

    def calls_after(self, n: int) -> list:
        return self.calls[n:]


@pytest.fixture
def cp():
    plane = ControlPlane(port=0).start()
    yield plane
    plane.stop()


def settle(seconds: float = 0.3) -> None:
    """Long enough for the watcher to have seen (and, wrongly, pushed) anything."""
    time.sleep(seconds)


def test_watcher_pushes_only_what_changed(tmp_path, cp):
    write_sandbox(tmp_path, "service1", 8080)
    write_sandbox(tmp_path / "nodes" / "a", "service2", 8080)
    one_file(tmp_path / "nodes" / "b.yaml", "service3", 8080)
    rec = Recorder(cp)
    with SnapshotWatcher([tmp_path], cp, on_error=rec.on_error) as watcher:
        assert sorted(rec.calls, key=str) == [("set", "a"), ("set", "b"), ("set", None)]
        assert endpoint_of(cp.snapshot("a")) == ("service2", 8080)

        n = len(rec.calls)
        write_sandbox(tmp_path / "nodes" / "a", "service2", 9090, version="2")  # three files, one by one
        rec.wait(lambda: set(cp.snapshot("a").versions.values()) == {"2"})
        settle()
        assert set(rec.calls_after(n)) == {("set", "a")}  # neither the default nor node b again
        assert endpoint_of(cp.snapshot("a")) == ("service2", 9090)

        n = len(rec.calls)
        atomic_write(tmp_path / "cds.yaml", (tmp_path / "cds.yaml").read_text().replace("service1", "service9"))
        rec.wait(lambda: len(rec.calls) > n)
        settle()
        assert rec.calls_after(n) == [("set", None)]
        assert endpoint_of(cp.snapshot()) == ("service9", 8080)

        n = len(rec.calls)
        (tmp_path / "nodes" / "b.yaml").unlink()  # node b falls back to the default
        rec.wait(lambda: len(rec.calls) > n)
        assert rec.calls_after(n) == [("clear", "b")]
        assert cp.cache.node_ids() == ["a"] and cp.cache.get("b") is cp.snapshot()

        n = len(rec.calls)
        one_file(tmp_path / "nodes" / "c.yaml", "service4", 8080)  # a new node appears
        rec.wait(lambda: len(rec.calls) > n)
        assert rec.calls_after(n) == [("set", "c")] and endpoint_of(cp.snapshot("c")) == ("service4", 8080)

        n = len(rec.calls)
        shutil.rmtree(tmp_path / "nodes" / "a")  # removing a node directory
        rec.wait(lambda: ("clear", "a") in rec.calls_after(n))
        assert watcher.last_error is None and rec.errors == []


def test_bad_file_is_reported_and_the_last_good_snapshot_stays(tmp_path, cp, caplog):
    write_sandbox(tmp_path, version="1")
    rec = Recorder(cp)
    caplog.set_level(logging.INFO, logger="labxds")
    with SnapshotWatcher([tmp_path], cp, on_error=rec.on_error) as watcher:
        served = cp.snapshot()
        n = len(rec.calls)
        cds = tmp_path / "cds.yaml"
        good = cds.read_text()
        cds.write_text(good.replace("connect_timeout: 5s", "connect_timeout: soon"))
        rec.wait(lambda: rec.errors)
        err = watcher.last_error
        assert err is rec.errors[0] and err.path == cds and "connect_timeout" in err.reason
        assert "connect_timeout: soon" in cds.read_text().splitlines()[err.line - 1]
        assert any(str(cds) in r.getMessage() and "still serving" in r.getMessage() for r in caplog.records)

        lds = tmp_path / "lds.yaml"  # an inconsistent snapshot is refused too
        cds.write_text(good)
        lds.write_text(lds.read_text().replace("route_config_name: local_route", "route_config_name: nope"))
        rec.wait(lambda: len(rec.errors) == 2)
        assert rec.errors[1].path == lds and "inconsistent snapshot" in rec.errors[1].reason
        settle()
        assert rec.calls_after(n) == [] and cp.snapshot() is served

        write_sandbox(tmp_path, "service5", 8080, version="2")  # fixed: pushed, error cleared
        rec.wait(lambda: set(cp.snapshot().versions.values()) == {"2"})
        assert watcher.last_error is None
        assert endpoint_of(cp.snapshot()) == ("service5", 8080)


def test_watching_one_file_saved_by_atomic_rename(tmp_path, cp):
    path = one_file(tmp_path / "snapshot.yaml", version="1")
    (tmp_path / "unrelated.yaml").write_text("garbage: [")
    rec = Recorder(cp)
    with SnapshotWatcher(path, cp, on_error=rec.on_error):
        for i in range(2, 5):  # each rename replaces the inode: a watch on the file itself would go deaf
            n = len(rec.calls)
            one_file(path, port=8000 + i, version=str(i))
            rec.wait(lambda: len(rec.calls) > n)
            assert endpoint_of(cp.snapshot())[1] == 8000 + i
        (tmp_path / "unrelated.yaml").write_text("still: [garbage")
        settle()
        assert rec.errors == []


@pytest.mark.skipif(not inotify.AVAILABLE, reason="the wait for a close needs inotify")
def test_a_file_still_being_written_is_loaded_once_closed(tmp_path, cp):
    write_sandbox(tmp_path, "service1", 8080, version="1")
    rec = Recorder(cp)
    with SnapshotWatcher([tmp_path], cp, on_error=rec.on_error, debounce_ms=5000) as watcher:
        n = len(rec.calls)
        text = yaml.safe_dump(sandbox_docs("service2", 8080, version="2")["cds"], sort_keys=False)
        with open(tmp_path / "cds.yaml", "w") as f:  # truncated, then written in two halves
            f.write(text[: len(text) // 2])
            f.flush()
            settle()
            assert rec.calls_after(n) == [] and rec.errors == [] and watcher.last_error is None
            f.write(text[len(text) // 2 :])
        rec.wait(lambda: len(rec.calls) > n)  # the close: loaded at once, not after 5 s
        assert endpoint_of(cp.snapshot()) == ("service2", 8080) and rec.errors == []


def test_an_editors_backup_and_rewrite_save_is_loaded_whole(tmp_path, cp):
    # vim's and emacs's way: the original renamed to a backup, a new file written, the backup
    # deleted. In between there is no cds.yaml at all: that state must not be served or reported.
    write_sandbox(tmp_path, "service1", 8080, version="1")
    rec = Recorder(cp)
    with SnapshotWatcher([tmp_path], cp, on_error=rec.on_error, debounce_ms=500) as watcher:
        n = len(rec.calls)
        cds = tmp_path / "cds.yaml"
        new_text = cds.read_text().replace("service1", "service4")
        os.rename(cds, tmp_path / "cds.yaml~")
        cds.write_text(new_text)
        (tmp_path / "cds.yaml~").unlink()
        rec.wait(lambda: endpoint_of(cp.snapshot()) == ("service4", 8080))
        settle()
        assert rec.errors == [] and watcher.last_error is None
        assert rec.calls_after(n) == [("set", None)]  # one push, of the whole new file


def test_a_save_of_several_files_is_judged_once_they_are_quiet(tmp_path, cp):
    # lds.yaml first names a route configuration that only the next file defines: the state in
    # between is inconsistent, and must not be reported as a mistake.
    write_sandbox(tmp_path, "service1", 8080, version="1")
    rec = Recorder(cp)
    with SnapshotWatcher([tmp_path], cp, on_error=rec.on_error, debounce_ms=500) as watcher:
        docs = sandbox_docs("service1", 8080, version="2")
        docs["rds"]["resources"][0]["name"] = "renamed_route"
        lds = docs["lds"]["resources"][0]["filter_chains"][0]["filters"][0]["typed_config"]
        lds["rds"]["route_config_name"] = "renamed_route"
        atomic_write(tmp_path / "lds.yaml", yaml.safe_dump(docs["lds"], sort_keys=False))
        atomic_write(tmp_path / "rds.yaml", yaml.safe_dump(docs["rds"], sort_keys=False))
        rec.wait(lambda: "renamed_route" in cp.snapshot().resources(ROUTE))
        settle(0.7)
        assert rec.errors == [] and watcher.last_error is None

        atomic_write(tmp_path / "rds.yaml", yaml.safe_dump(sandbox_docs(version="3")["rds"], sort_keys=False))
        rec.wait(lambda: rec.errors)  # left inconsistent: reported once quiet, the good one stays
        assert "inconsistent snapshot" in str(watcher.last_error)
        assert "renamed_route" in cp.snapshot().resources(ROUTE)


@pytest.mark.skipif(not inotify.AVAILABLE, reason="inotify is Linux-only")
def test_lost_events_still_load_the_latest_files(tmp_path, cp, monkeypatch):
    real_read = inotify.Inotify.read

    def overflowing(self, timeout):  # the kernel's queue overflowed: the events themselves are lost
        events = real_read(self, timeout)
        return [inotify.Event("", inotify.IN_Q_OVERFLOW)] if events else events

    monkeypatch.setattr(inotify.Inotify, "read", overflowing)
    write_sandbox(tmp_path, "service1", 8080, version="1")
    rec = Recorder(cp)
    with SnapshotWatcher([tmp_path], cp, on_error=rec.on_error):
        atomic_write(tmp_path / "cds.yaml", (tmp_path / "cds.yaml").read_text().replace("service1", "service3"))
        rec.wait(lambda: endpoint_of(cp.snapshot()) == ("service3", 8080))
        assert rec.errors == []


@pytest.mark.parametrize("how", ["no inotify", "inotify refused"])
def test_without_inotify_the_watcher_polls(tmp_path, cp, monkeypatch, caplog, how):
    if how == "no inotify":  # not Linux
        monkeypatch.setattr(inotify, "AVAILABLE", False)
    else:  # Linux, but out of inotify instances (fs.inotify.max_user_instances)
        def refused():
            raise OSError(24, "Too many open files")
        monkeypatch.setattr(inotify, "Inotify", refused)
    write_sandbox(tmp_path, "service1", 8080, version="1")
    rec = Recorder(cp)
    with SnapshotWatcher([tmp_path], cp, on_error=rec.on_error):
        atomic_write(tmp_path / "cds.yaml", (tmp_path / "cds.yaml").read_text().replace("service1", "service8"))
        rec.wait(lambda: endpoint_of(cp.snapshot()) == ("service8", 8080))
        (tmp_path / "cds.yaml").write_text("resources: [")
        rec.wait(lambda: rec.errors)
        assert endpoint_of(cp.snapshot()) == ("service8", 8080)
    assert ("polling instead" in caplog.text) == (how == "inotify refused")


def test_watched_directory_deleted_and_recreated(tmp_path, cp):
    snap_dir = write_sandbox(tmp_path / "snap", "service1", 8080)
    rec = Recorder(cp)
    with SnapshotWatcher(snap_dir, cp, on_error=rec.on_error) as watcher:
        served = cp.snapshot()
        shutil.rmtree(snap_dir)
        rec.wait(lambda: rec.errors)
        assert "no such file or directory" in str(watcher.last_error) and cp.snapshot() is served
        write_sandbox(snap_dir, "service6", 8080, version="2")
        rec.wait(lambda: set(cp.snapshot().versions.values()) == {"2"})
        assert endpoint_of(cp.snapshot()) == ("service6", 8080)
        pushes = watcher.pushes
        atomic_write(snap_dir / "cds.yaml", (snap_dir / "cds.yaml").read_text().replace("service6", "service7"))
        rec.wait(lambda: endpoint_of(cp.snapshot()) == ("service7", 8080))  # and it is watched again
        assert eventually(lambda: watcher.pushes == pushes + 1) and watcher.last_error is None


def test_start_raises_on_bad_files_and_watches_nothing(tmp_path, cp):
    (tmp_path / "x.yaml").write_text("resources: [")
    watcher = SnapshotWatcher([tmp_path], cp)
    with pytest.raises(SnapshotFileError):
        watcher.start()
    assert not watcher.running and cp.snapshot() is None


def test_removing_every_default_file_serves_an_empty_default(tmp_path, cp):
    one_file(tmp_path / "snap.yaml")
    rec = Recorder(cp)
    with SnapshotWatcher([tmp_path], cp):
        n = len(rec.calls)
        (tmp_path / "snap.yaml").unlink()
        rec.wait(lambda: len(rec.calls) > n)
        assert len(cp.snapshot()) == 0


# ---------------------------------------------------------------- with a real Envoy


@pytest.fixture
def echoes():
    with EchoService("service1") as one, EchoService("service2") as two:
        yield one, two


@pytest.mark.envoy
def test_file_change_reaches_envoy_and_a_bad_file_keeps_it_serving(tmp_path, cp, echoes, record_property):
    one, two = echoes
    listener = free_port()
    path = one_file(tmp_path / "snapshot.yaml", "127.0.0.1", one.port, listener_port=listener, version="1")
    errors: list[SnapshotFileError] = []
    pushed_at: list[float] = []
    with SnapshotWatcher([tmp_path], cp, on_error=errors.append,
                         on_push=lambda nodes, snaps: pushed_at.append(time.monotonic())) as watcher, \
            Envoy(render_bootstrap(xds_port=cp.port, admin_port=0)) as envoy:
        assert "Request served by service1" in curl(listener, expect="service1")
        assert cluster_version(envoy) == "1"

        latencies, pushes = [], []
        for version in ("2", "3", "4"):
            target = two if version != "3" else one
            one_file(path, "127.0.0.1", target.port, listener_port=listener, version=version)
            written = time.monotonic()
            latencies.append(wait_cluster_version(envoy, version))
            pushes.append(pushed_at[-1] - written)
            assert f"Request served by {target.name}" in curl(listener, expect=target.name)
        record_property("change_to_config_dump_s", latencies)
        print(f"\nfile change -> set_snapshot: {', '.join(f'{t * 1000:.0f} ms' for t in pushes)}; "
              f"-> Envoy config_dump: {', '.join(f'{t * 1000:.0f} ms' for t in latencies)}")

        path.write_text(path.read_text().replace("port_value: %d" % listener, "port_value: many"))
        deadline = time.monotonic() + 5
        while not errors and time.monotonic() < deadline:
            time.sleep(0.01)
        assert errors and errors[0].path == path and "port_value" in errors[0].reason
        assert watcher.last_error is errors[0]
        settle(0.5)
        assert cluster_version(envoy) == "4"  # the last good snapshot stays
        assert "Request served by service2" in curl(listener, expect="service2")


@pytest.mark.envoy
def test_per_node_directories_give_two_envoys_different_snapshots(tmp_path, cp, echoes):
    one, two = echoes
    port_a, port_b = free_port(), free_port()
    write_sandbox(tmp_path, "127.0.0.1", one.port, listener_port=port_a, version="default-1")
    write_sandbox(tmp_path / "nodes" / "envoy-b", "127.0.0.1", two.port, listener_port=port_b, version="b-1")
    with SnapshotWatcher([tmp_path], cp), \
            Envoy(render_bootstrap(xds_port=cp.port, admin_port=0, node_id="envoy-a")) as a, \
            Envoy(render_bootstrap(xds_port=cp.port, admin_port=0, node_id="envoy-b")) as b:
        assert "Request served by service1" in curl(port_a, expect="service1")
        assert "Request served by service2" in curl(port_b, expect="service2")
        assert cluster_version(a) == "default-1" and cluster_version(b) == "b-1"
        listeners_a = a.admin.config_dump(resource="dynamic_listeners")["configs"]
        bound = {c["active_state"]["listener"]["address"]["socket_address"]["port_value"] for c in listeners_a}
        assert bound == {port_a}

        shutil.rmtree(tmp_path / "nodes")  # envoy-b falls back to the default snapshot
        wait_cluster_version(b, "default-1")
        assert "Request served by service1" in curl(port_a, expect="service1")
