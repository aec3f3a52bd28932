"""labxds.xds.json_form: the fast path must give the slow path's result (Envoy's leniencies rewritten by
labxds.xds.lenient, then json_format), or the slow path's own error."""

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
    lenient,
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


def reference(data: dict, msg) -> None:
    """The slow path spelled out: Envoy's leniencies rewritten (or refused), then json_format."""
    strict = lenient.normalize(data, msg.DESCRIPTOR)
    json_form._import_nested_types(strict)  # json_format resolves only loaded types
    json_format.ParseDict(strict, msg)


def same_as_reference(type_url: str, data: dict) -> tuple[str, object]:
    before = copy.deepcopy(data)
    ours, theirs = outcome(parse_dict, type_url, data), outcome(reference, type_url, data)
    assert ours == theirs
    assert data == before  # neither path changes what it was given
    return ours


def corpus() -> list[tuple[str, dict]]:
    """Resources as users write them: the example files and every builder's output as JSON form."""
    items = []
    for path in sorted((REPO / "examples" / "sandbox").glob("*.yaml")):  # the common form
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
        raise AssertionError("the fast path fell back")

    monkeypatch.setattr(json_form.json_format, "ParseDict", refused)
    monkeypatch.setattr(json_form.lenient, "normalize", refused)
    assert outcome(parse_dict, type_url, data) == expected


ENDPOINT = {"endpoint": {"address": {"socket_address": {"address": "1.2.3.4", "port_value": 80}}}}

# name -> (data, what Envoy does with it: "ok" or "error")
CASES = {
    "camel and snake names": ({"name": "a", "connectTimeout": "0.250s", "lb_policy": "RING_HASH"}, "ok"),
    "duration not a string": ({"name": "a", "connect_timeout": 5}, "error"),
    "bad duration": ({"name": "a", "connect_timeout": "5 seconds"}, "error"),
    "duration Python reads, Envoy not": ({"name": "a", "connect_timeout": "+5s"}, "error"),
    "duration as an object": ({"name": "a", "connect_timeout": {"seconds": 5, "nanos": 10}}, "ok"),
    "string given a number": ({"name": 5}, "error"),
    "string given a bool": ({"name": True}, "error"),
    "enum by number": ({"name": "a", "type": 1}, "ok"),
    "enum by number in a string": ({"name": "a", "type": "1"}, "ok"),
    "enum in lowercase": ({"name": "a", "type": "strict_dns"}, "ok"),
    "enum given a bool": ({"name": "a", "type": True}, "error"),
    "unknown enum name": ({"name": "a", "type": "NOPE"}, "error"),
    "unknown field": ({"name": "a", "nmae": "x"}, "error"),
    "both spellings of one field": ({"connect_timeout": "1s", "connectTimeout": "2s"}, "error"),
    "oneof given twice": ({"type": "STATIC", "cluster_type": {"name": "envoy.clusters.aggregate"}}, "error"),
    "wrapper": ({"per_connection_buffer_limit_bytes": 1024}, "ok"),
    "wrapper from a string": ({"per_connection_buffer_limit_bytes": "1024"}, "ok"),
    "wrapper from hexadecimal in a string": ({"per_connection_buffer_limit_bytes": "0x400"}, "ok"),
    "wrapper as an object": ({"per_connection_buffer_limit_bytes": {"value": 1024}}, "ok"),
    "wrapper negative": ({"per_connection_buffer_limit_bytes": -1}, "error"),
    "wrapper too big": ({"per_connection_buffer_limit_bytes": 2**40}, "error"),
    "wrapper float": ({"per_connection_buffer_limit_bytes": 1.0}, "ok"),
    "wrapper fraction": ({"per_connection_buffer_limit_bytes": 1.5}, "error"),
    "wrapper bool": ({"per_connection_buffer_limit_bytes": True}, "error"),
    "wrapper with underscores": ({"per_connection_buffer_limit_bytes": "1_024"}, "error"),
    "port as string": ({"load_assignment": {"cluster_name": "a", "endpoints": [{"lb_endpoints": [
        {"endpoint": {"address": {"socket_address": {"address": "h", "port_value": "80"}}}}]}]}}, "ok"),
    "port negative": ({"load_assignment": {"cluster_name": "a", "endpoints": [{"lb_endpoints": [
        {"endpoint": {"address": {"socket_address": {"address": "h", "port_value": -1}}}}]}]}}, "error"),
    "port with spaces": ({"load_assignment": {"cluster_name": "a", "endpoints": [{"lb_endpoints": [
        {"endpoint": {"address": {"socket_address": {"address": "h", "port_value": " 80"}}}}]}]}}, "error"),
    "nested lists": ({"load_assignment": {"cluster_name": "a", "endpoints": [{"lb_endpoints": [ENDPOINT, ENDPOINT]}]}}, "ok"),
    "lists in a list": ({"load_assignment": {"cluster_name": "a", "endpoints": [[{"priority": 1}], {}]}}, "ok"),
    "list given an object": ({"load_assignment": {"cluster_name": "a", "endpoints": {"lb_endpoints": []}}}, "ok"),
    "null in a list": ({"load_assignment": {"cluster_name": "a", "endpoints": [None]}}, "ok"),
    "empty message keeps presence": ({"name": "a", "http2_protocol_options": {}}, "ok"),
    "null field": ({"name": "a", "load_assignment": None}, "ok"),
    "message given a string": ({"name": "a", "load_assignment": "x"}, "error"),
    "double given an int": ({"common_lb_config": {"healthy_panic_threshold": {"value": 50}}}, "ok"),
    "double given a string": ({"common_lb_config": {"healthy_panic_threshold": {"value": "50"}}}, "ok"),
    "double NaN string": ({"common_lb_config": {"healthy_panic_threshold": {"value": "NaN"}}}, "ok"),
    "double given a bool": ({"common_lb_config": {"healthy_panic_threshold": {"value": True}}}, "error"),
    "bool": ({"name": "a", "respect_dns_ttl": True}, "ok"),
    "bool given a string": ({"name": "a", "respect_dns_ttl": "true"}, "ok"),
    "bool given yes in a string": ({"name": "a", "respect_dns_ttl": "Yes"}, "ok"),
    "bool given another word": ({"name": "a", "respect_dns_ttl": "sure"}, "error"),
    "bool given an int": ({"name": "a", "respect_dns_ttl": 1}, "error"),
    "any": ({"transport_socket": {"name": "tls", "typed_config": {"@type": TLS, "sni": "x.test"}}}, "ok"),
    "any with another host": ({"transport_socket": {"name": "tls", "typed_config": {
        "@type": "example.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext", "sni": "x.test"}}}, "ok"),
    "any without a host": ({"transport_socket": {"name": "tls", "typed_config": {
        "@type": "envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext", "sni": "x.test"}}}, "error"),
    "empty any": ({"transport_socket": {"name": "tls", "typed_config": {}}}, "ok"),
    "any without @type": ({"transport_socket": {"name": "tls", "typed_config": {"sni": "x"}}}, "error"),
    "any holding a wrapper": ({"transport_socket": {"name": "t", "typed_config": {
        "@type": "type.googleapis.com/google.protobuf.UInt32Value", "value": 5}}}, "ok"),
    "map of any": ({"typed_extension_protocol_options": {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
        "@type": HTTP_OPTIONS, "explicit_http_config": {"http2_protocol_options": {}}}}}, "ok"),
    "map given a list": ({"typed_extension_protocol_options": []}, "error"),
    "struct": ({"metadata": {"filter_metadata": {"envoy.lb": {"canary": True, "n": [1, "x", None]}}}}, "ok"),
    "unicode": ({"name": "café ☕"}, "ok"),
    "unpaired surrogate": ({"name": "\ud800"}, "error"),
    "repeated enum": ({"name": "a", "dns_resolution_config": {"dns_resolver_options": {"no_default_search_domain": True}}}, "ok"),
}


@pytest.mark.parametrize("name", CASES)
def test_tricky_input_gives_the_slow_paths_result_or_error(name):
    data, envoy = CASES[name]
    assert same_as_reference(CLUSTER_URL, data)[0] == envoy


def test_repeated_strings_and_their_mistakes():
    vh = {"name": "v", "domains": ["a.test", "*"], "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "c"}}]}
    assert same_as_reference(resource_types.ROUTE, {"name": "r", "virtual_hosts": [vh]})[0] == "ok"
    for domains in ("a.test", [None]):  # one value for a list; null as ""
        assert same_as_reference(resource_types.ROUTE, {"name": "r", "virtual_hosts": [{**vh, "domains": domains}]})[0] == "ok"
    for domains in ([1], [True], [["a", 1]]):
        assert same_as_reference(resource_types.ROUTE, {"name": "r", "virtual_hosts": [{**vh, "domains": domains}]})[0] == "error"


def test_a_nested_type_nobody_knows_is_named():
    with pytest.raises(NestedTypeError, match="no.such.v3.Thing"):
        parse_dict({"name": "t", "transport_socket": {"name": "x", "typed_config": {
            "@type": "type.googleapis.com/no.such.v3.Thing"}}}, resource_types.message_class(CLUSTER_URL)())


def test_types_are_imported_on_demand_by_the_fast_path():
    data = {"name": "l", "filter_chains": [{"filters": [{"name": "cors", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.echo.v3.Echo"}}]}]}
    assert same_as_reference(resource_types.LISTENER, data)[0] == "ok"
