"""Random mutations of valid snapshot files (issue 17): truncated, wrong types, unknown fields,
deep nesting, huge strings, invalid UTF-8, flipped bytes.

Every mutated file either loads or is refused with a SnapshotFileError that names the file (and a
line, counted); nothing else is raised, nothing hangs, and a watcher that was serving the good
files keeps serving them. ``make fuzz`` runs thousands; the counts and the worst time to refuse
are printed as ``[figures]``.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from snapshot_files_helpers import sandbox_docs

from labxds.files import SnapshotFileError, SnapshotWatcher, load_snapshots

FUZZ = bool(os.environ.get("LABXDS_FUZZ"))
EXAMPLES = int(os.environ.get("LABXDS_FILE_EXAMPLES", "5000" if FUZZ else "100"))
BOUND = 5.0  # seconds a load may take, refused or not
STATS: Counter[str] = Counter()
WORST = {"refuse": 0.0, "load": 0.0, "what": ""}


class FakePlane:
    """What a watcher pushes to: the snapshots it set, by node."""

    def __init__(self) -> None:
        self.served: dict[str | None, object] = {}
        self.cache = self

    def set_snapshot(self, snap: object, node: str | None = None) -> None:
        self.served[node] = snap

    def clear(self, node: str) -> None:
        self.served.pop(node, None)


@pytest.fixture(scope="module")
def figures():
    yield
    if STATS:
        print(f"\n[figures] snapshot file fuzz: {sum(STATS[k] for k in ('loaded', 'refused'))} mutated files: "
              f"{dict(STATS)}; worst time to refuse {WORST['refuse'] * 1000:.0f} ms ({WORST['what']}), "
              f"worst load {WORST['load'] * 1000:.0f} ms")


def _paths(data: object, prefix: tuple = ()) -> list[tuple]:
    """Every path to a value in parsed YAML/JSON."""
    out = [prefix]
    if isinstance(data, dict):
        for k, v in data.items():
            out += _paths(v, prefix + (k,))
    elif isinstance(data, list):
        for i, v in enumerate(data):
            out += _paths(v, prefix + (i,))
    return out


def _replace(data: object, path: tuple, value: object) -> object:
    if not path:
        return value
    data[path[0]] = _replace(data[path[0]], path[1:], value)  # type: ignore[index]
    return data


WRONG = st.one_of(st.integers(-2**70, 2**70), st.floats(allow_nan=True), st.booleans(), st.none(),
                  st.text(max_size=20), st.lists(st.integers(), max_size=3),
                  st.dictionaries(st.text(max_size=8), st.integers(), max_size=3))


@st.composite
def mutated(draw: st.DrawFn) -> tuple[str, bytes, str]:
    """(file name, bytes, what was done) from one of the sandbox's files."""
    name = draw(st.sampled_from(["cds", "rds", "lds"]))
    doc = sandbox_docs(version="1")[name]
    as_json = draw(st.booleans())
    op = draw(st.sampled_from(["wrong type", "unknown field", "deep nesting", "huge string", "truncate",
                               "invalid utf-8", "flip bytes", "drop key"]))
    paths = _paths(doc)
    if op == "wrong type":
        doc = _replace(doc, draw(st.sampled_from(paths[1:])), draw(WRONG))
    elif op == "unknown field":
        maps = [p for p in paths if isinstance(_get(doc, p), dict)]
        target = _get(doc, draw(st.sampled_from(maps)))
        target[draw(st.text(min_size=1, max_size=12))] = draw(WRONG)
    elif op == "drop key":
        maps = [p for p in paths if isinstance(_get(doc, p), dict) and _get(doc, p)]
        target = _get(doc, draw(st.sampled_from(maps)))
        del target[draw(st.sampled_from(sorted(target, key=str)))]
    elif op == "deep nesting":  # as text: no encoder nests that deep
        depth = draw(st.sampled_from([50, 99, 101, 500, 990, 5000, 100_000]))
        opening, closing = ('{"a": ', "}") if draw(st.booleans()) else ("[", "]")
        doc = _replace(doc, draw(st.sampled_from(paths[1:])), "\x00DEEP\x00")
        text = json.dumps(doc).replace('"\\u0000DEEP\\u0000"', opening * depth + "1" + closing * depth)
        return f"{name}.json", text.encode(), op
    elif op == "huge string":
        doc = _replace(doc, draw(st.sampled_from(paths[1:])), "x" * draw(st.sampled_from([10_000, 300_000, 3_000_000])))
    text = json.dumps(doc) if as_json else yaml.dump(doc, Dumper=_DUMPER, sort_keys=False)
    data = text.encode()
    if op == "truncate":
        data = data[: draw(st.integers(0, max(0, len(data) - 1)))]
    elif op == "invalid utf-8":
        at = draw(st.integers(0, len(data)))
        data = data[:at] + draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\x80\x80"])) + data[at:]
    elif op == "flip bytes":
        buf = bytearray(data)
        for _ in range(draw(st.integers(1, 5))):
            i = draw(st.integers(0, len(buf) - 1))
            buf[i] = draw(st.integers(0, 255))
        data = bytes(buf)
    return f"{name}.{'json' if as_json else 'yaml'}", data, op


def _get(data: object, path: tuple) -> object:
    for step in path:
        data = data[step]  # type: ignore[index]
    return data


_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
_SETTINGS = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))


@_SETTINGS
@given(case=mutated())
def test_a_mutated_snapshot_file_loads_or_is_refused_by_file_and_line(tmp_path_factory, figures, case):
    name, data, op = case
    directory = tmp_path_factory.mktemp("fuzz")
    for other, doc in sandbox_docs(version="1").items():
        (directory / f"{other}.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    (directory / f"{name.split('.')[0]}.yaml").unlink()
    path = directory / name
    path.write_bytes(data)
    t0 = time.monotonic()
    try:
        load_snapshots(directory)
    except SnapshotFileError as exc:
        took = time.monotonic() - t0
        STATS["refused"] += 1
        STATS[f"refused: {op}"] += 1
        text = str(exc)
        assert text.startswith(str(directory)), text  # the file (or, for a snapshot-wide problem, the directory)
        STATS["with a line" if exc.line else "without a line"] += 1
        if not exc.line and os.environ.get("LABXDS_FUZZ_SHOW"):
            print(f"\nno line ({op}): {text[:300]}")
        if took > WORST["refuse"]:
            WORST["refuse"], WORST["what"] = took, op
    else:
        took = time.monotonic() - t0
        STATS["loaded"] += 1
        WORST["load"] = max(WORST["load"], took)
    assert took < BOUND, f"{took:.1f}s for {op} of {name}"


def test_a_watcher_keeps_serving_the_last_good_files_through_every_kind_of_mutation(tmp_path):
    """One mutation of each kind, through a watcher (no threads: reload() by hand)."""
    for name, doc in sandbox_docs(version="1").items():
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    plane = FakePlane()
    watcher = SnapshotWatcher(tmp_path, plane)
    assert watcher.reload()
    good = plane.served[None]
    cds = tmp_path / "cds.yaml"
    text = cds.read_bytes()
    bad = {
        "truncated": text[: text.index(b"lb_endpoints")] + b"lb_endpoints: [{endpoint: {addr",  # mid-way through a write
        "invalid utf-8": text[:40] + b"\xff" + text[40:],
        "wrong type": text.replace(b"port_value: 8080", b"port_value: [1, 2]"),
        "unknown field": text.replace(b"  name: example_proxy_cluster", b"  name: example_proxy_cluster\n  colour: blue"),
        "deep nesting": b"resources: " + b"[" * 3000 + b"]" * 3000,
        "huge string": text.replace(b"type: LOGICAL_DNS", b"type: " + b"x" * 2_000_000),
        "alias bomb": b'a: &a ["x","x","x","x","x","x","x","x","x"]\n' + b"".join(
            b"a%d: &a%d [%s]\n" % (i, i, b",".join([b"*a" if i == 1 else b"*a%d" % (i - 1)] * 9)) for i in range(1, 9)),
    }
    for what, data in bad.items():
        cds.write_bytes(data)
        t0 = time.monotonic()
        assert watcher.reload() is False, what
        assert time.monotonic() - t0 < BOUND, what
        assert watcher.last_error is not None and str(cds) in str(watcher.last_error), (what, watcher.last_error)
        assert plane.served[None] is good, what  # still the last good snapshot
    cds.write_bytes(text.replace(b"port_value: 8080", b"port_value: 8081"))
    assert watcher.reload() and plane.served[None] is not good
