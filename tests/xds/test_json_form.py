"""labxds.json_form: the fast path must give json_format's result, or json_format's own error."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml
from google.protobuf import json_format

from labxds.xds import (
    api_listener,
    cluster,
    http_listener,
    json_form,
    load_assignment,
    resource_types,
    route_configuration,
    sandbox_resources,
    to_dict,
)
from labxds.xds.json_form import NestedTypeError, parse_dict

REPO = Path(__file__).resolve().parents[2]
CLUSTER_URL = resource_types.CLUSTER
TLS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
HTTP_OPTIONS = "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


def outcome(parse, type_url: str, data: dict) -> tuple[str, object]:
    msg = resource_types.message_class(type_url)()
    try:
        parse(copy.deepcopy(data), msg)
    except json_format.ParseError as exc:
        return "error", str(exc)
    return "ok", msg.SerializeToString(deterministic=True)


def same_as_json_format(type_url: str, data: dict) -> tuple[str, object]:
    json_form._import_nested_types(data)  # json_format resolves only loaded types
    ours, theirs = outcome(parse_dict, type_url, data), outcome(json_format.ParseDict, type_url, data)
    assert ours == theirs
    return ours


def corpus() -> list[tuple[str, dict]]:
    """Resources as users write them: the example files and every builder's output as JSON form."""
    items = []
    for path in sorted((REPO / "examples").rglob("*.yaml")):
        for doc in yaml.safe_load(path.read_text())["resources"]:
            items.append((doc["@type"], {k: v for k, v in doc.items() if k != "@type"}))
    built = [
        *sandbox_resources("service1", 8080),
        cluster("eds", type="EDS"),
        cluster("strict", [("a", 1), ("b", 2, 3)], type="STRICT_DNS", lb_policy="LEAST_REQUEST", connect_timeout=0.25),
        load_assignment("eds", [("10.0.0.1", 80), ("10.0.0.2", 81, 5)]),
        route_configuration("r", weights={"a": 80, "b": 20}, domains=["x.test", "*"]),
        route_configuration("paths", routes={"/a": "ca", "/b": {"cb": 1, "cc": 3}}),
        http_listener("l", 10001, "r"),
        api_listener("api", "r"),
    ]
    for msg in built:
        d = to_dict(msg)
        items.append((d.pop("@type"), d))
    return items


@pytest.mark.parametrize("type_url,data", corpus(), ids=lambda v: v if isinstance(v, str) else None)
def test_every_corpus_resource_parses_like_json_format_without_falling_back(type_url, data, monkeypatch):
    expected = outcome(json_format.ParseDict, type_url, data)
    assert expected[0] == "ok"

    def refused(*a, **k):
        raise AssertionError("the fast path fell back to json_format")

    monkeypatch.setattr(json_form.json_format, "ParseDict", refused)
    assert outcome(parse_dict, type_url, data) == expected


ENDPOINT = {"endpoint": {"address": {"socket_address": {"address": "1.2.3.4", "port_value": 80}}}}

CASES = {
    "camel and snake names": {"name": "a", "connectTimeout": "0.250s", "lb_policy": "RING_HASH"},
    "duration not a string": {"name": "a", "connect_timeout": 5},
    "bad duration": {"name": "a", "connect_timeout": "5 seconds"},
    "string given a number": {"name": 5},
    "enum by number": {"name": "a", "type": 1},
    "unknown enum name": {"name": "a", "type": "NOPE"},
    "unknown field": {"name": "a", "nmae": "x"},
    "both spellings of one field": {"connect_timeout": "1s", "connectTimeout": "2s"},
    "oneof given twice": {"type": "STATIC", "cluster_type": {"name": "envoy.clusters.aggregate"}},
    "wrapper": {"per_connection_buffer_limit_bytes": 1024},
    "wrapper from a string": {"per_connection_buffer_limit_bytes": "1024"},
    "wrapper negative": {"per_connection_buffer_limit_bytes": -1},
    "wrapper too big": {"per_connection_buffer_limit_bytes": 2**40},
    "wrapper float": {"per_connection_buffer_limit_bytes": 1.0},
    "wrapper fraction": {"per_connection_buffer_limit_bytes": 1.5},
    "wrapper bool": {"per_connection_buffer_limit_bytes": True},
    "port as string": {"load_assignment": {"cluster_name": "a", "endpoints": [{"lb_endpoints": [
        {"endpoint": {"address": {"socket_address": {"address": "h", "port_value": "80"}}}}]}]}},
    "port negative": {"load_assignment": {"cluster_name": "a", "endpoints": [{"lb_endpoints": [
        {"endpoint": {"address": {"socket_address": {"address": "h", "port_value": -1}}}}]}]}},
    "port with spaces": {"load_assignment": {"cluster_name": "a", "endpoints": [{"lb_endpoints": [
        {"endpoint": {"address": {"socket_address": {"address": "h", "port_value": " 80"}}}}]}]}},
    "nested lists": {"load_assignment": {"cluster_name": "a", "endpoints": [{"lb_endpoints": [ENDPOINT, ENDPOINT]}]}},
    "list given an object": {"load_assignment": {"cluster_name": "a", "endpoints": {"lb_endpoints": []}}},
    "null in a list": {"load_assignment": {"cluster_name": "a", "endpoints": [None]}},
    "empty message keeps presence": {"name": "a", "http2_protocol_options": {}},
    "null field": {"name": "a", "load_assignment": None},
    "message given a string": {"name": "a", "load_assignment": "x"},
    "double given an int": {"common_lb_config": {"healthy_panic_threshold": {"value": 50}}},
    "double given a string": {"common_lb_config": {"healthy_panic_threshold": {"value": "50"}}},
    "double NaN string": {"common_lb_config": {"healthy_panic_threshold": {"value": "NaN"}}},
    "bool": {"name": "a", "respect_dns_ttl": True},
    "bool given a string": {"name": "a", "respect_dns_ttl": "true"},
    "bool given an int": {"name": "a", "respect_dns_ttl": 1},
    "any": {"transport_socket": {"name": "tls", "typed_config": {"@type": TLS, "sni": "x.test"}}},
    "empty any": {"transport_socket": {"name": "tls", "typed_config": {}}},
    "any without @type": {"transport_socket": {"name": "tls", "typed_config": {"sni": "x"}}},
    "any holding a wrapper": {"transport_socket": {"name": "t", "typed_config": {
        "@type": "type.googleapis.com/google.protobuf.UInt32Value", "value": 5}}},
    "map of any": {"typed_extension_protocol_options": {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
        "@type": HTTP_OPTIONS, "explicit_http_config": {"http2_protocol_options": {}}}}},
    "map given a list": {"typed_extension_protocol_options": []},
    "struct": {"metadata": {"filter_metadata": {"envoy.lb": {"canary": True, "n": [1, "x", None]}}}},
    "unicode": {"name": "café ☕"},
    "unpaired surrogate": {"name": "\ud800"},
    "repeated enum": {"name": "a", "dns_resolution_config": {"dns_resolver_options": {"no_default_search_domain": True}}},
}


@pytest.mark.parametrize("name", CASES)
def test_tricky_input_gives_json_formats_result_or_error(name):
    same_as_json_format(CLUSTER_URL, CASES[name])


def test_repeated_strings_and_their_mistakes():
    vh = {"name": "v", "domains": ["a.test", "*"], "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "c"}}]}
    assert same_as_json_format(resource_types.ROUTE, {"name": "r", "virtual_hosts": [vh]})[0] == "ok"
    for domains in ("a.test", [1], [None], [True]):
        assert same_as_json_format(resource_types.ROUTE, {"name": "r", "virtual_hosts": [{**vh, "domains": domains}]})[0] == "error"


def test_a_nested_type_nobody_knows_is_named():
    with pytest.raises(NestedTypeError, match="no.such.v3.Thing"):
        parse_dict({"name": "t", "transport_socket": {"name": "x", "typed_config": {
            "@type": "type.googleapis.com/no.such.v3.Thing"}}}, resource_types.message_class(CLUSTER_URL)())


def test_types_are_imported_on_demand_by_the_fast_path():
    data = {"name": "l", "filter_chains": [{"filters": [{"name": "cors", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.echo.v3.Echo"}}]}]}
    assert same_as_json_format(resource_types.LISTENER, data)[0] == "ok"
