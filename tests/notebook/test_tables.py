"""labxds.tables against a live Envoy whose dynamic resources come from files.

One Envoy serves the whole module: CDS, EDS, LDS and RDS are read from
path_config_source files, so /config_dump holds real dynamic clusters, endpoints,
listeners (one of them rejected) and routes without any control plane.
"""

from __future__ import annotations

import re
import socket
import time
from pathlib import Path

import pandas as pd
import pytest
from envoy_helpers import (
    ENDPOINTS,
    HCM,
    LISTENER,
    ROUTE,
    ROUTER,
    eds_cluster,
    file_bootstrap,
    free_port,
    http_listener,
    load_assignment,
    logical_dns_cluster,
    socket_address,
    write_resources,
)

from labxds.envoy import Envoy, EnvoyAdmin, render_bootstrap
from labxds.lab import start_services
from labxds.lab.traffic import _parse_echo
from labxds.notebook import (
    clusters_table,
    curl,
    endpoints_table,
    listeners_table,
    routes_table,
    sandbox_endpoint,
    stats_table,
    styled,
)

pytestmark = pytest.mark.envoy

UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


class Lab:
    """What the module's tests share: echo upstreams, one Envoy, its listener port."""

    def __init__(self, fleet, envoy: Envoy, port: int, busy_port: int) -> None:
        self.fleet, self.envoy, self.port, self.busy_port = fleet, envoy, port, busy_port
        self.url = f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    d: Path = tmp_path_factory.mktemp("xds-files")
    fleet = start_services({"service1": 2, "service2": 1})
    squatter = socket.socket()
    squatter.bind(("127.0.0.1", 0))
    squatter.listen()
    busy_port = squatter.getsockname()[1]
    port, inline_port = free_port(), free_port()

    # one file per EDS cluster: a filesystem subscription expects only its own resource
    write_resources(d / "eds-service1.yaml", [{"@type": ENDPOINTS, **load_assignment("service1", fleet.endpoints("service1"))}])
    write_resources(d / "eds-nobody.yaml", [{"@type": ENDPOINTS, **load_assignment("nobody", [])}])
    write_resources(d / "cds.yaml", [
        # the sandbox's cluster: LOGICAL_DNS with an inline load_assignment
        logical_dns_cluster("example_proxy_cluster", *fleet.endpoints("service2")[0]),
        eds_cluster("service1", d / "eds-service1.yaml"),
        eds_cluster("nobody", d / "eds-nobody.yaml"),
    ], version="v7")  # fmt: skip
    routes = [
        {"match": {"prefix": "/weighted"}, "route": {"weighted_clusters": {"clusters": [
            {"name": "service1", "weight": 80}, {"name": "example_proxy_cluster", "weight": 20}]}}},
        {"match": {"path": "/sandbox"}, "route": {"cluster": "example_proxy_cluster"}},
        {"match": {"prefix": "/empty"}, "route": {"cluster": "nobody"}},
        {"match": {"prefix": "/"}, "route": {"cluster": "service1"}},
    ]  # fmt: skip
    write_resources(d / "rds.yaml", [{"@type": ROUTE, "name": "local_route", "virtual_hosts": [
        {"name": "local_service", "domains": ["*"], "routes": routes}]}], version="r3")  # fmt: skip
    inline = {
        "@type": LISTENER,
        "name": "inline_listener",
        "address": socket_address("127.0.0.1", inline_port),
        "filter_chains": [{"filters": [{"name": "hcm", "typed_config": {
            "@type": HCM, "stat_prefix": "inline",
            "route_config": {"name": "inline_route", "virtual_hosts": [{"name": "teapot", "domains": ["tea.local"],
                "routes": [{"match": {"prefix": "/"}, "direct_response": {"status": 418}}]}]},
            "http_filters": [{"name": "router", "typed_config": {"@type": ROUTER}}]}}]}],
    }  # fmt: skip
    write_resources(d / "lds.yaml", [
        http_listener("listener_0", port, "local_route", d / "rds.yaml"),
        http_listener("listener_busy", busy_port, "local_route", d / "rds.yaml"),
        inline,
    ], version="l1")  # fmt: skip

    envoy = Envoy(file_bootstrap(d, cds=d / "cds.yaml", lds=d / "lds.yaml")).start()
    deadline = time.monotonic() + 10
    while not envoy.admin.ready() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert envoy.admin.ready(), envoy.logs()
    try:
        yield Lab(fleet, envoy, port, busy_port)
    finally:
        envoy.stop()
        fleet.stop()
        squatter.close()


# ---------------------------------------------------------------- curl


def test_parse_echo():
    served, headers = _parse_echo("Request served by s1\n\nHTTP/1.1 GET /\n\nHost: h\nX-Request-Id: r\n\nbody: x\n")
    assert served == "s1" and headers == {"Host": "h", "X-Request-Id": "r"}
    assert _parse_echo("no healthy upstream") == (None, {})


def test_curl_round_robin_alternates_between_instances(lab):
    df = curl(lab.url, 6)
    assert list(df["request"]) == [1, 2, 3, 4, 5, 6]
    assert list(df["status"]) == [200] * 6
    assert set(df["served_by"]) == {"service1"}
    first, second = df["instance"].iloc[0], df["instance"].iloc[1]
    assert {first, second} == {1, 2}
    assert list(df["instance"]) == [first, second] * 3
    assert df["x_request_id"].map(lambda v: bool(UUID.match(v))).all()
    assert df["x_request_id"].is_unique
    assert (df["latency_ms"] > 0).all() and df["error"].isna().all()


def test_curl_path_and_echoed_headers(lab):
    df = curl(lab.url, 2, path="/sandbox", headers={"x-lesson": "2"}, include_headers=True)
    assert list(df["served_by"]) == ["service2", "service2"]
    assert df["instance"].isna().all()
    assert list(df["X-Forwarded-Proto"]) == ["http", "http"]
    assert list(df["X-Lesson"]) == ["2", "2"]
    assert (df["X-Request-Id"] == df["x_request_id"]).all()
    assert (df["Host"] == f"127.0.0.1:{lab.port}").all()


def test_curl_refused_connection_is_a_row_not_an_exception():
    df = curl(f"http://127.0.0.1:{free_port()}", 2)
    assert len(df) == 2
    assert df["status"].isna().all()
    assert list(df["error"]) == ["connection refused", "connection refused"]
    assert df["served_by"].isna().all()


def test_curl_shows_envoys_own_error_answers(lab):
    df = curl(lab.url, 1, path="/empty")
    assert df["status"].iloc[0] == 503
    assert df["error"].iloc[0] == "no healthy upstream"
    assert pd.isna(df["served_by"].iloc[0])


# ---------------------------------------------------------------- config_dump tables


def test_clusters_table(lab):
    df = clusters_table(lab.envoy)
    assert list(df.columns) == ["name", "version_info", "last_updated", "type", "lb_policy"]
    rows = df.set_index("name")
    assert set(rows.index) == {"example_proxy_cluster", "service1", "nobody"}
    assert rows.loc["example_proxy_cluster", "type"] == "LOGICAL_DNS"
    assert rows.loc["service1", "type"] == "EDS"
    assert set(df["version_info"]) == {"v7"}
    assert set(df["lb_policy"]) == {"ROUND_ROBIN"}
    assert isinstance(df["last_updated"].iloc[0], pd.Timestamp)

    with_static = clusters_table(lab.envoy.admin_url, include_static=True)
    assert set(with_static["source"]) == {"dynamic"}  # this bootstrap has no static cluster


def test_endpoints_table_covers_eds_and_inline_clusters(lab):
    df = endpoints_table(lab.envoy.admin)
    s1 = df[df["cluster"] == "service1"]
    assert sorted(s1["port"]) == sorted(p for _, p in lab.fleet.endpoints("service1"))
    assert set(s1["address"]) == {"127.0.0.1"}
    assert set(s1["health"]) == {"HEALTHY"}
    sandbox = df[df["cluster"] == "example_proxy_cluster"]
    assert list(sandbox["port"]) == [lab.fleet["service2"][0].port]
    assert df[df["cluster"] == "nobody"].empty
    only = endpoints_table(lab.envoy, cluster="service1")
    assert set(only["cluster"]) == {"service1"} and len(only) == 2


def test_listeners_table_shows_active_and_rejected(lab):
    df = listeners_table(lab.envoy)
    assert list(df.columns) == ["name", "address", "port", "version_info", "state", "last_updated", "error_state"]
    active = df[df["state"] == "active"].set_index("name")
    assert set(active.index) == {"listener_0", "inline_listener"}
    assert active.loc["listener_0", "port"] == lab.port
    assert active.loc["listener_0", "version_info"] == "l1"
    errors = df[df["state"] == "error"]
    assert list(errors["name"]) == ["listener_busy"], "Envoy's nameless duplicate entry is folded"
    assert f"{lab.busy_port}" in errors["error_state"].iloc[0]
    assert "Address already in use" in errors["error_state"].iloc[0]


def test_routes_table_rds_and_inline(lab):
    df = routes_table(lab.envoy)
    rds = df[df["source"] == "rds"]
    assert list(rds["match"]) == ["prefix /weighted", "path /sandbox", "prefix /empty", "prefix /"]
    assert list(rds["cluster"]) == [
        "service1 80%, example_proxy_cluster 20%",
        "example_proxy_cluster",
        "nobody",
        "service1",
    ]
    assert set(rds["route_config"]) == {"local_route"} and set(rds["version_info"]) == {"r3"}
    assert set(rds["virtual_host"]) == {"local_service"} and set(rds["domains"]) == {"*"}
    inline = df[df["route_config"] == "inline_route"]
    assert list(inline["cluster"]) == ["direct_response 418"]
    assert list(inline["domains"]) == ["tea.local"]
    assert list(inline["source"]) == ["inline in inline_listener"]


def test_sandbox_endpoint_logical_dns_eds_and_missing(lab):
    sandbox_port = lab.fleet["service2"][0].port
    assert sandbox_endpoint(lab.envoy) == f"127.0.0.1:{sandbox_port}"  # first dynamic cluster, as the jq does
    assert sandbox_endpoint(lab.envoy, "example_proxy_cluster", as_dict=True) == {
        "address": "127.0.0.1",
        "port_value": sandbox_port,
    }
    assert sandbox_endpoint(lab.envoy, "service1") == f"127.0.0.1:{lab.fleet['service1'][0].port}"
    assert sandbox_endpoint(lab.envoy, "nobody") is None
    assert sandbox_endpoint(lab.envoy, "absent") is None


def test_stats_table(lab):
    curl(lab.url, 3)
    df = stats_table(lab.envoy, filter=r"^cluster\.service1\.upstream_rq_total$")
    assert list(df["name"]) == ["cluster.service1.upstream_rq_total"]
    assert df["value"].iloc[0] >= 3
    nonzero = stats_table(lab.envoy, filter=r"cluster\.service1\.", nonzero=True)
    assert (nonzero["value"] != 0).all()


def test_tables_before_any_xds_are_empty_not_errors():
    with Envoy(render_bootstrap(xds_port=free_port(), admin_port=0)) as envoy:
        admin = EnvoyAdmin(envoy.admin_url)
        assert clusters_table(admin).empty
        assert endpoints_table(admin).empty
        assert listeners_table(admin).empty
        assert routes_table(admin).empty
        assert sandbox_endpoint(admin) is None
        static = clusters_table(admin, include_static=True)
        assert list(static["name"]) == ["xds_cluster"] and list(static["type"]) == ["STRICT_DNS"]
        assert "127.0.0.1" in set(endpoints_table(admin, include_static=True)["address"])


# ---------------------------------------------------------------- presentation


def test_styled_hides_index_and_puts_units_in_headers(lab):
    html = styled(curl(lab.url, 2), caption="Two requests").to_html()
    assert "latency (ms)" in html and "latency_ms" not in html
    assert "served by" in html and "Two requests" in html
    assert "row_heading" not in html, "index is hidden"
