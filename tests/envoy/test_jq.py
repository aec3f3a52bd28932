"""The small jq: the paths the sandbox and the lessons use give what the real jq gives."""

from __future__ import annotations

import json
import shutil

import pytest

from labxds.envoy.jq import JqError, configs_index, jq, run_jq

DUMP = {
    "configs": [
        {"@type": "type.googleapis.com/envoy.admin.v3.BootstrapConfigDump", "bootstrap": {"node": {"id": "test-id"}}},
        {
            "@type": "type.googleapis.com/envoy.admin.v3.ClustersConfigDump",
            "version_info": "1",
            "static_clusters": [{"cluster": {"name": "xds_cluster"}}],
            "dynamic_active_clusters": [{
                "version_info": "1",
                "cluster": {
                    "name": "example_proxy_cluster",
                    "load_assignment": {"endpoints": [{"lb_endpoints": [{"endpoint": {"address": {
                        "socket_address": {"address": "service1", "port_value": 8080}}}}]}]},
                },
            }],
        },
        {"@type": "type.googleapis.com/envoy.admin.v3.ListenersConfigDump"},
    ]
}
SANDBOX = (".configs[1].dynamic_active_clusters[0].cluster.load_assignment.endpoints[0]"
           ".lb_endpoints[0].endpoint.address.socket_address")

PATHS = [
    SANDBOX,
    ".configs[1].static_clusters[0].cluster.name",
    '.configs[0]."@type"',
    '.configs[]."@type"',
    ".configs[-1]",
    ".configs[2].dynamic_listeners[0].name",  # null all the way, as in jq
    ".configs | length",
    ".configs[1] | keys",
    ".configs[1].dynamic_active_clusters[].cluster.name",
    ".",
]


@pytest.mark.parametrize("path", PATHS)
def test_like_jq(path: str) -> None:
    ours = jq(DUMP, path)
    if shutil.which("jq") is None:
        pytest.skip("jq is not installed")
    out = run_jq(DUMP, path)
    assert out is not None
    theirs = [json.loads(line) for line in _documents(out)]
    assert (theirs if "[]" in path else theirs[0]) == ours


def _documents(text: str) -> list[str]:
    """jq prints one JSON document per result."""
    decoder = json.JSONDecoder()
    docs, pos = [], 0
    text = text.strip()
    while pos < len(text):
        _, end = decoder.raw_decode(text, pos)
        docs.append(text[pos:end])
        pos = end
        while pos < len(text) and text[pos].isspace():
            pos += 1
    return docs


def test_the_sandbox_path() -> None:
    assert jq(DUMP, SANDBOX) == {"address": "service1", "port_value": 8080}
    assert jq({"configs": []}, SANDBOX) is None  # before any CDS update, jq prints null


def test_what_jq_refuses_is_refused_with_jq_words() -> None:
    with pytest.raises(JqError, match="Cannot index array with string"):
        jq(DUMP, ".configs.name")
    with pytest.raises(JqError, match="cannot read the jq path"):
        jq(DUMP, ".configs[1")
    with pytest.raises(JqError, match="keys and length"):
        jq(DUMP, ".configs | map(.x)")


def test_configs_index_says_what_each_section_holds() -> None:
    rows = configs_index(DUMP)
    assert [r["type"] for r in rows] == ["BootstrapConfigDump", "ClustersConfigDump", "ListenersConfigDump"]
    assert rows[1]["lists"] == "static_clusters: 1, dynamic_active_clusters: 1"
    assert rows[1]["jq"] == ".configs[1]" and "CDS" in rows[1]["holds"]
    assert rows[2]["lists"] == "(empty)"
