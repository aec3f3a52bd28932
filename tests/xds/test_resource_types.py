"""Type URLs, push order and on-demand import of message classes."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2

from labxds.xds import resource_types as rt


def test_type_urls_are_envoys():
    assert rt.CLUSTER == "type.googleapis.com/envoy.config.cluster.v3.Cluster"
    assert rt.ENDPOINT == "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
    assert rt.LISTENER == "type.googleapis.com/envoy.config.listener.v3.Listener"
    assert rt.ROUTE == "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
    assert rt.type_url_of(cluster_pb2.Cluster()) == rt.CLUSTER


def test_push_order_is_make_before_break():
    # CDS, EDS, LDS, RDS, then every other type by URL
    urls = [rt.SECRET, rt.ROUTE, rt.RUNTIME, rt.LISTENER, rt.ENDPOINT, rt.CLUSTER]
    assert sorted(urls, key=rt.order_key) == [
        rt.CLUSTER, rt.ENDPOINT, rt.LISTENER, rt.ROUTE, rt.SECRET, rt.RUNTIME,
    ]
    assert rt.FULL_STATE == {rt.CLUSTER, rt.LISTENER}


def test_short_names_and_name_fields():
    assert [rt.short_name(u) for u in (rt.CLUSTER, rt.ENDPOINT, rt.LISTENER, rt.ROUTE)] == ["CDS", "EDS", "LDS", "RDS"]
    eds = rt.resource_type(rt.ENDPOINT)
    assert eds.name_of(endpoint_pb2.ClusterLoadAssignment(cluster_name="x")) == "x"
    assert rt.resource_type(rt.CLUSTER).name_of(cluster_pb2.Cluster(name="c")) == "c"


def test_message_class_imports_an_extension_on_demand():
    # A fresh interpreter: in this one another test may have imported cors already.
    code = textwrap.dedent("""
        import sys
        from labxds.xds import resource_types as rt
        module = "envoy.extensions.filters.http.cors.v3.cors_pb2"
        assert module not in sys.modules, "labxds imports cors eagerly"
        cls = rt.message_class("type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors")
        assert cls.DESCRIPTOR.full_name == "envoy.extensions.filters.http.cors.v3.Cors"
        assert module in sys.modules
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_message_class_accepts_a_bare_full_name_and_nested_types():
    assert rt.message_class("envoy.config.cluster.v3.Cluster") is not None
    nested = rt.message_class("envoy.config.cluster.v3.Cluster.CommonLbConfig")
    assert nested.DESCRIPTOR.full_name == "envoy.config.cluster.v3.Cluster.CommonLbConfig"


def test_unknown_message_type_is_a_value_error_naming_it():
    with pytest.raises(ValueError, match="envoy.config.cluster.v3.Clusterr"):
        rt.message_class("type.googleapis.com/envoy.config.cluster.v3.Clusterr")
    with pytest.raises(ValueError, match="no.such.package.Thing"):
        rt.message_class("no.such.package.Thing")


def test_unknown_resource_type_with_a_name_passes_through():
    url = "type.googleapis.com/envoy.config.route.v3.VirtualHost"  # VHDS serves these
    t = rt.resource_type(url)
    assert t.url == url and t.short == "VirtualHost"
    assert rt.short_name(url) == "VirtualHost"
    assert t.name_of(t.cls(name="vh")) == "vh"


def test_type_without_name_field_cannot_be_a_resource():
    with pytest.raises(ValueError, match="no 'name' field"):
        rt.resource_type("type.googleapis.com/envoy.extensions.filters.http.router.v3.Router")
