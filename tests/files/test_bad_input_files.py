"""Plain regression tests for what fuzzing snapshot files found (tests/files/test_file_fuzz.py)."""

from __future__ import annotations

import pytest

from labxds.files import SnapshotFileError, load_path


def test_json_nested_past_the_parser_is_refused_in_words(tmp_path):
    """json.loads raised RecursionError, which escaped load_path as a crash."""
    path = tmp_path / "deep.json"
    path.write_text('{"resources": ' + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises(SnapshotFileError, match="nests too deeply to parse") as info:
        load_path(path)
    assert str(info.value).startswith(str(path))


def test_invalid_utf8_names_its_line_and_column(tmp_path):
    path = tmp_path / "cds.yaml"
    path.write_bytes(b"resources:\n- name: a\n  bad: \xff\n")
    with pytest.raises(SnapshotFileError) as info:
        load_path(path)
    assert info.value.line == 3
    assert "not UTF-8 text (invalid start byte at byte 28, column 8)" in str(info.value)


def test_a_control_character_names_its_line(tmp_path):
    path = tmp_path / "cds.yaml"
    path.write_bytes(b"resources:\n- name: a\n  bad: x\x01y\n")
    with pytest.raises(SnapshotFileError) as info:
        load_path(path)
    assert info.value.line == 3
    assert "control characters are not allowed (#x0001)" in str(info.value)


def test_a_file_over_the_byte_budget_is_refused_before_it_is_read(tmp_path, monkeypatch):
    from labxds.files import parse
    from labxds.net.budget import InputBudget

    monkeypatch.setattr(parse, "DEFAULT_BUDGET", InputBudget(max_bytes=1000))
    monkeypatch.setattr(parse._read_text, "__defaults__", (InputBudget(max_bytes=1000),))
    path = tmp_path / "big.yaml"
    path.write_text("resources: []\n# " + "x" * 2000 + "\n")
    with pytest.raises(SnapshotFileError, match="refused: the file is 2,017 bytes, more than the 1,000 allowed"):
        load_path(path)


def test_an_alias_that_contains_itself_is_refused(tmp_path):
    path = tmp_path / "self.yaml"
    path.write_text("resources: &r\n- *r\n")
    with pytest.raises(SnapshotFileError, match="refers to a node that contains it") as info:
        load_path(path)
    assert info.value.line == 2


def test_aliases_within_the_budget_still_load(tmp_path):
    """Anchors are fine; only their expansion is measured."""
    path = tmp_path / "anchors.yaml"
    cluster = ("- '@type': type.googleapis.com/envoy.config.cluster.v3.Cluster\n"
               "  name: {name}\n"
               "  connect_timeout: {timeout}\n"
               "  type: STATIC\n"
               "  load_assignment: {{cluster_name: {name}, endpoints: [{{lb_endpoints: [{{endpoint: {{address: "
               "{{socket_address: {{address: 127.0.0.1, port_value: 1}}}}}}}}]}}]}}\n")
    path.write_text("resources:\n" + cluster.format(name="a", timeout="&timeout 0.25s")
                    + cluster.format(name="b", timeout="*timeout"))
    assert load_path(path).names("type.googleapis.com/envoy.config.cluster.v3.Cluster") == {"a", "b"}
