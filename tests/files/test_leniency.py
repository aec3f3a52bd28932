"""Envoy's file form, leniencies included: every file of tests/files/leniency goes to a real Envoy
and to labxds, and they must agree (tests/files/leniency/index.yaml says what each file shows).

Envoy reads each file through a filesystem subscription (``path_config_source`` for CDS or LDS,
the file renamed into place as an editor saves it) with ``--reject-unknown-dynamic-fields``, the
strictness labxds has. What it accepted is read back from /config_dump and compared with the
messages labxds makes of the same file; what it refused, labxds must refuse with an error naming
the file, the line and the field. Two Envoys (one reading .yaml, one .json) take all the files in
about two seconds.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from google.protobuf import json_format

from labxds import CLUSTER, LISTENER
from labxds.xds import resource_types
from labxds.envoy import Envoy, find_envoy
from labxds.files import SnapshotFileError, load_path

HERE = Path(__file__).resolve().parent
CORPUS = HERE / "leniency"
INDEX = yaml.safe_load((CORPUS / "index.yaml").read_text())
CASES = {case["file"]: case for case in INDEX}

_STATS = {"cds": "cluster_manager.cds.", "lds": "listener_manager.lds."}


@dataclass
class EnvoyRead:
    """What Envoy made of one file: ``accepted`` and its resources (JSON form, by name), or the
    lines it logged about refusing it."""

    accepted: bool
    resources: dict[str, dict]
    versions: dict[str, str]
    log: str


def _kind(text: str) -> str:
    return "lds" if "envoy.config.listener.v3.Listener" in text else "cds"


class FileSubscriber:
    """One Envoy whose CDS and LDS are files in a directory of ours (``cds.EXT``, ``lds.EXT``)."""

    def __init__(self, ext: str, workdir: Path) -> None:
        self.dir = workdir / ext
        self.dir.mkdir(parents=True)
        self.paths = {kind: self.dir / f"{kind}.{ext}" for kind in ("cds", "lds")}
        for path in self.paths.values():
            path.write_text('{"resources": []}' if ext == "json" else "resources: []\n")
        source = {kind: {"resource_api_version": "V3", "path_config_source": {"path": str(path)}}
                  for kind, path in self.paths.items()}
        bootstrap = {
            "node": {"id": "leniency", "cluster": "leniency"},
            "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
            "dynamic_resources": {"cds_config": source["cds"], "lds_config": source["lds"]},
        }
        self.envoy = Envoy(bootstrap, admin_port=0, log_level="warning", component_log_level=None,
                           drain_time_s=0, workdir=self.dir / "envoy",
                           extra_args=["--reject-unknown-dynamic-fields"])

    def _counters(self) -> dict[str, int]:
        return self.envoy.admin.stats(filter=r"(cds|lds)\.update_(attempt|success|rejected|failure)$")

    def read(self, text: str) -> EnvoyRead:
        kind = _kind(text)
        prefix = _STATS[kind]
        before = self._counters()
        log = self.envoy.log_path
        log_size = log.stat().st_size
        staged = self.paths[kind].with_name(f".{kind}.staged")
        staged.write_text(text)
        os.replace(staged, self.paths[kind])
        done = [prefix + s for s in ("update_success", "update_rejected", "update_failure")]
        deadline = time.monotonic() + 10
        while True:
            now = self._counters()
            if sum(now.get(k, 0) for k in done) > sum(before.get(k, 0) for k in done):
                break
            if time.monotonic() > deadline:
                raise AssertionError(f"Envoy did not read {self.paths[kind]} within 10 s: {now}")
            time.sleep(0.003)
        accepted = now.get(prefix + "update_success", 0) > before.get(prefix + "update_success", 0)
        if not accepted:
            time.sleep(0.05)  # the log line comes right after the counter
            with log.open(errors="replace") as fh:
                fh.seek(log_size)
                return EnvoyRead(False, {}, {}, fh.read())
        return EnvoyRead(True, *self._dump(kind), "")

    def _dump(self, kind: str) -> tuple[dict[str, dict], dict[str, str]]:
        dump = self.envoy.admin.config_dump()
        resources: dict[str, dict] = {}
        versions: dict[str, str] = {}
        for config in dump["configs"]:
            if kind == "cds" and config["@type"].endswith("ClustersConfigDump"):
                for entry in config.get("dynamic_active_clusters", []) + config.get("dynamic_warming_clusters", []):
                    resources[entry["cluster"]["name"]] = entry["cluster"]
                    versions[entry["cluster"]["name"]] = entry.get("version_info", "")
            if kind == "lds" and config["@type"].endswith("ListenersConfigDump"):
                for entry in config.get("dynamic_listeners", []):
                    state = entry.get("active_state") or entry.get("warming_state")
                    resources[entry["name"]] = state["listener"]
                    versions[entry["name"]] = state.get("version_info", "")
        return resources, versions


@pytest.fixture(scope="module")
def envoy_reads() -> Iterator[dict[str, EnvoyRead]]:
    """Every corpus file as a running Envoy reads it (a .yaml and a .json Envoy, side by side)."""
    with tempfile.TemporaryDirectory(prefix="labxds-leniency-") as tmp:
        subscribers = {ext: FileSubscriber(ext, Path(tmp)) for ext in ("yaml", "json")}
        for sub in subscribers.values():
            sub.envoy.start()
        try:
            yield {
                name: subscribers["json" if name.endswith(".json") else "yaml"].read((CORPUS / name).read_text())
                for name in CASES
            }
        finally:
            for sub in subscribers.values():
                sub.envoy.stop()


def _canonical(message: Any) -> dict:
    """The message as plain JSON data (a Struct's keys in no particular order)."""
    return json.loads(json_format.MessageToJson(message, preserving_proto_field_name=True))


def _from_dump(resource: dict, url: str) -> Any:
    msg = resource_types.message_class(url)()
    json_format.ParseDict({k: v for k, v in resource.items() if k != "@type"}, msg)
    return msg


# ---------------------------------------------------------------- the corpus is what it says


def test_every_corpus_file_is_in_the_index_once():
    files = {p.name for p in CORPUS.iterdir() if p.name != "index.yaml"}
    assert sorted(CASES) == sorted(files)
    assert len(CASES) == len(INDEX)
    for case in INDEX:
        assert case["envoy"] in ("accepts", "refuses"), case
        assert case.get("labxds", case["envoy"]) in ("accepts", "refuses"), case
        assert ("why" in case) == ("labxds" in case and case["labxds"] != case["envoy"]), case
        assert case.get("source") or case.get("why"), case


@pytest.mark.parametrize("name", CASES)
def test_envoy_reads_the_file_as_the_index_says(name, envoy_reads):
    read = envoy_reads[name]
    assert read.accepted == (CASES[name]["envoy"] == "accepts"), read.log


# ---------------------------------------------------------------- labxds agrees


@pytest.mark.parametrize("name", CASES)
def test_labxds_reads_the_file_as_envoy_does(name, envoy_reads):
    case = CASES[name]
    path = CORPUS / name
    labxds_accepts = case.get("labxds", case["envoy"]) == "accepts"
    if not labxds_accepts:
        with pytest.raises(SnapshotFileError) as info:
            load_path(path, check=False)
        err = info.value
        assert err.path == path, str(err)
        assert err.line == case["line"], str(err)
        if "field" in case:
            assert case["field"] in err.reason, str(err)
        return
    snapshot = load_path(path, check=False)
    read = envoy_reads[name]
    if not read.accepted:
        return  # a labxds convenience Envoy refuses (the index says why)
    url = LISTENER if _kind(path.read_text()) == "lds" else CLUSTER
    ours = snapshot.resources(url)
    assert sorted(ours) == sorted(read.resources), name
    for resource_name, resource in read.resources.items():
        assert _canonical(ours[resource_name]) == _canonical(_from_dump(resource, url)), resource_name
    written = {v for v in read.versions.values() if v}
    if written:
        assert {snapshot.version(url)} == written


# ---------------------------------------------------------------- YAML, scalar by scalar

#: Plain, quoted, tagged and block scalars, keys and nested values, as in a config file.
YAML_VALUES = [
    "-0x10", "0x", "00", "0", "-010", "1_000", "0b1", "+0x10", "0X10", "0777", "08", "-0", "+0",
    "2147483647", "2147483648", "-2147483648", "-2147483649", "9223372036854775807", "9223372036854775808",
    "0xFFFFFFFFFFFFFFFF", "0x100000000",
    "y", "Y", "yes", "Yes", "YES", "yEs", "on", "ON", "oN", "off", "Off", "oFF", "n", "N", "true", "TRUE", "tRUE",
    "True", "no", "NO", "~", "null", "Null", "NULL", "nUll", "", ".inf", "-.inf", ".nan", "1.5", "1e3", "0.", ".5",
    "-1", "+1", "12:30", "2024-01-01", "1,000", "1e400", "0o17", "0x1g", "١٢", "=", "<<",
    "'q'", '"1"', "'yes'", "'~'", "!!str 1", "!!int '5'", "!!bool 1", "!!null ~", "! 5", "! ~", "!foo yes", "&a 7",
    "|\n      yes", ">-\n      0x10", "[y, 010, ~, '', [n]]", "{a: n, ~: 1, 0x1: 2, '': 3, 80: x, yes: 1, 1.5: f}",
]


def test_yaml_reads_every_value_as_envoy_does(tmp_path):
    """Envoy's own YAML-to-JSON conversion, read from the message it prints when the JSON does
    not fit its bootstrap (``node.id`` given a list here), against labxds's reading of the text."""
    from labxds.xds.envoy_text import load_yaml

    body = "".join(f"    k{i}: {value}\n" for i, value in enumerate(YAML_VALUES))
    path = tmp_path / "bootstrap.yaml"
    path.write_text("node:\n  id: [not, a, string]\n  metadata:\n" + body)
    run = subprocess.run([str(find_envoy()), "--mode", "validate", "-c", str(path), "-l", "critical"],
                         capture_output=True, text=True, timeout=60)
    output = run.stdout + run.stderr
    assert run.returncode != 0 and "Unable to parse JSON as proto" in output, output[-2000:]
    start = re.search(r'\): (\{"node":)', output)
    assert start, output[-2000:]
    envoy = json.JSONDecoder().raw_decode(output, start.start(1))[0]["node"]["metadata"]
    ours = load_yaml(path.read_text()).data["node"]["metadata"]
    differ = {YAML_VALUES[int(k[1:])]: (envoy.get(k), ours.get(k)) for k in envoy.keys() | ours.keys()
              if envoy.get(k, "<absent>") != ours.get(k, "<absent>")}
    assert not differ, f"value: (Envoy's, labxds's) {differ}"
