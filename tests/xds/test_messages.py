"""Inputs: xds-protos messages, "@type" dicts, YAML text and envoy-data-plane messages."""

from __future__ import annotations

import datetime
import subprocess
import sys
import textwrap

import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)

from labxds import ResourceError, to_dict, to_message
from labxds.xds import CLUSTER, LISTENER
from labxds.xds.messages import (
    from_yaml,
    resources_of_document,
    to_messages,
    version_of_document,
)

HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
CORS = "type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors"


def _cluster_dict(**extra):
    return {"@type": CLUSTER, "name": "web", "type": "STATIC", "connect_timeout": "2s", **extra}


def _listener_dict(http_filters=None, **hcm_extra):
    hcm = {
        "@type": HCM,
        "stat_prefix": "http",
        "rds": {"route_config_name": "local_route", "config_source": {"ads": {}, "resource_api_version": "V3"}},
        "http_filters": http_filters or [{"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER}}],
        **hcm_extra,
    }
    return {
        "@type": LISTENER,
        "name": "listener_0",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": 10000}},
        "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]}],
    }


def test_xds_protos_message_passes_through_unchanged():
    c = cluster_pb2.Cluster(name="web")
    assert to_message(c) is c


def test_dict_with_type_becomes_the_message():
    msg = to_message(_cluster_dict())
    assert isinstance(msg, cluster_pb2.Cluster)
    assert msg.name == "web" and msg.type == cluster_pb2.Cluster.STATIC
    assert msg.connect_timeout.seconds == 2


def test_dict_with_nested_typed_config_of_hcm():
    msg = to_message(_listener_dict())
    assert isinstance(msg, listener_pb2.Listener)
    packed = msg.filter_chains[0].filters[0].typed_config
    assert packed.type_url == HCM
    hcm = hcm_pb2.HttpConnectionManager()
    assert packed.Unpack(hcm)
    assert hcm.rds.route_config_name == "local_route"
    assert hcm.http_filters[0].typed_config.type_url == ROUTER


def test_nested_extension_is_imported_on_demand():
    # cors is not among the modules labxds imports: parsing must load it. Fresh interpreter,
    # since another test in this one may have imported it already.
    code = textwrap.dedent(f"""
        import sys
        from labxds import to_message
        assert "envoy.extensions.filters.http.cors.v3.cors_pb2" not in sys.modules
        listener = {_listener_dict([
            {"name": "envoy.filters.http.cors", "typed_config": {"@type": CORS}},
            {"name": "envoy.filters.http.router", "typed_config": {"@type": ROUTER}},
        ])!r}
        msg = to_message(listener)
        from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2
        hcm = http_connection_manager_pb2.HttpConnectionManager()
        msg.filter_chains[0].filters[0].typed_config.Unpack(hcm)
        print(hcm.http_filters[0].typed_config.type_url)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == CORS


def test_yaml_text_one_resource_and_resources_document():
    one = to_message(f"""
"@type": {CLUSTER}
name: web
type: STRICT_DNS
connect_timeout: 1s
""")
    assert isinstance(one, cluster_pb2.Cluster) and one.type == cluster_pb2.Cluster.STRICT_DNS
    doc = f"""
version_info: "7"
resources:
- "@type": {CLUSTER}
  name: a
- "@type": {CLUSTER}
  name: b
"""
    msgs = from_yaml(doc)
    assert [m.name for m in msgs] == ["a", "b"]
    import yaml

    assert version_of_document(yaml.safe_load(doc)) == "7"
    assert from_yaml("") == []
    assert [m.name for m in from_yaml(f'[{{"@type": "{CLUSTER}", "name": "j"}}]')] == ["j"]  # JSON is YAML


def test_yaml_text_with_two_resources_is_not_one_resource():
    with pytest.raises(ResourceError, match="found 2"):
        to_message(f'[{{"@type": "{CLUSTER}", "name": "a"}}, {{"@type": "{CLUSTER}", "name": "b"}}]')


def test_yaml_never_constructs_python_objects(tmp_path):
    marker = tmp_path / "ran"
    with pytest.raises(ResourceError):  # the tag is ignored, as Envoy ignores it: a list of one string
        from_yaml(f"!!python/object/apply:os.system ['touch {marker}']")
    assert not marker.exists()


def test_yaml_is_read_as_envoy_reads_it():
    one = from_yaml(f"""
"@type": {CLUSTER}
name: 2024-01-01
type: strict_dns
per_connection_buffer_limit_bytes: 0x400
close_connections_on_host_health_failure: y
""")[0]
    assert (one.name, one.type, one.per_connection_buffer_limit_bytes.value) == ("2024-01-01", one.STRICT_DNS, 1024)
    assert one.close_connections_on_host_health_failure is True
    with pytest.raises(ResourceError, match="name field: expected a string, got the boolean true"):
        from_yaml(f'"@type": {CLUSTER}\nname: y\n')


def test_broken_yaml_names_the_line():
    with pytest.raises(ResourceError, match="line 3"):
        from_yaml("resources:\n- name: a\n  x: y: z\n- name: b\n")


def test_document_without_resources_is_explained():
    with pytest.raises(ResourceError, match='"resources:"'):
        resources_of_document({"clusters": []})
    with pytest.raises(ResourceError, match="expected a list of resources"):
        resources_of_document({"resources": 5})
    with pytest.raises(ResourceError, match='missing "@type"'):  # one mapping is a list of one, as in Envoy
        resources_of_document({"resources": {"a": 1}})
    with pytest.raises(ResourceError, match="version_info field: expected a string, got the number 7"):
        resources_of_document({"version_info": 7, "resources": []})


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # pydantic, inside envoy-data-plane
def test_envoy_data_plane_message_converts_to_identical_bytes():
    from envoy_data_plane.envoy.config.cluster.v3 import Cluster, ClusterDiscoveryType
    from envoy_data_plane.envoy.config.core.v3 import Address, SocketAddress
    from envoy_data_plane.envoy.config.endpoint.v3 import (
        ClusterLoadAssignment,
        Endpoint,
        LbEndpoint,
        LocalityLbEndpoints,
    )

    dp = Cluster(
        name="web",
        type=ClusterDiscoveryType.STRICT_DNS,
        connect_timeout=datetime.timedelta(seconds=3),
        load_assignment=ClusterLoadAssignment(
            cluster_name="web",
            endpoints=[LocalityLbEndpoints(lb_endpoints=[LbEndpoint(endpoint=Endpoint(
                address=Address(socket_address=SocketAddress(address="service1", port_value=8080))
            ))])],
        ),
    )
    msg = to_message(dp)
    assert isinstance(msg, cluster_pb2.Cluster)
    assert msg.SerializeToString() == bytes(dp)
    assert msg.type == cluster_pb2.Cluster.STRICT_DNS and msg.connect_timeout.seconds == 3
    assert msg.load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.socket_address.port_value == 8080


def test_wrong_field_name_names_field_and_resource():
    with pytest.raises(ResourceError) as info:
        to_message(_cluster_dict(nmae="x"), where="resource #3")
    text = str(info.value)
    assert "nmae" in text and "web" in text and "resource #3" in text


def test_wrong_value_type_names_field_and_value():
    with pytest.raises(ResourceError) as info:
        to_message(_cluster_dict(connect_timeout="soon"))
    assert "connect_timeout" in str(info.value) and "soon" in str(info.value)
    with pytest.raises(ResourceError) as info:
        to_message(_cluster_dict(per_connection_buffer_limit_bytes="lots"))
    assert "per_connection_buffer_limit_bytes" in str(info.value) and "lots" in str(info.value)
    with pytest.raises(ResourceError) as info:
        to_message(_cluster_dict(type="NOT_A_TYPE"))
    assert "NOT_A_TYPE" in str(info.value) and "type" in str(info.value)


def test_wrong_field_in_nested_typed_config_names_field_and_path():
    with pytest.raises(ResourceError) as info:
        to_message(_listener_dict(bogus_field=1))
    text = str(info.value)
    assert "bogus_field" in text and "typed_config" in text and "listener_0" in text


def test_missing_or_unknown_type_is_explained():
    with pytest.raises(ResourceError, match='missing "@type"'):
        to_message({"name": "web"})
    with pytest.raises(ResourceError, match="Clusterr"):
        to_message({"@type": CLUSTER + "r", "name": "web"})
    with pytest.raises(ResourceError, match="cannot use a int"):
        to_message(3)


def test_to_messages_labels_positions():
    with pytest.raises(ResourceError, match=r"resource #1"):
        to_messages([_cluster_dict(), {"name": "x"}])


def test_to_dict_round_trips():
    msg = to_message(_listener_dict())
    d = to_dict(msg)
    assert d["@type"] == LISTENER and d["name"] == "listener_0"
    assert d["filter_chains"][0]["filters"][0]["typed_config"]["@type"] == HCM
    assert to_message(d) == msg


def test_unknown_nested_type_is_named_as_the_nested_one():
    listener = _listener_dict()
    listener["filter_chains"][0]["filters"][0]["typed_config"]["@type"] = HCM + "x"
    with pytest.raises(ResourceError) as info:
        to_message(listener)
    text = str(info.value)
    assert "nested" in text and "HttpConnectionManagerx" in text
    assert f"@type {LISTENER!r}" not in text, "the listener's own @type is fine"


def test_a_list_as_a_nested_type_is_a_resource_error_not_a_crash():
    """Found by fuzzing snapshot files: protobuf's json_format raised AttributeError ('list'
    object has no attribute 'split') for a nested "@type" that is a list; it escaped as a crash."""
    listener = {
        "@type": LISTENER, "name": "l0",
        "filter_chains": [{"filters": [{"name": "hcm", "typed_config": {"@type": ["x"]}}]}],
    }
    with pytest.raises(ResourceError, match="wrong kind"):
        to_message(listener, where="resource #0")
