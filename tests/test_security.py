"""Exposure, TLS, mutual TLS, node tokens and safe parsing (docs/security.md).

The real-Envoy tests show what a learner would see: an Envoy with the right certificate and
token gets its configuration; one with a certificate from another CA, without a certificate, or
with a wrong token gets nothing, and the control plane says why.
"""

from __future__ import annotations

import collections
import datetime
import ipaddress
import logging
import os
import re
import socket
import stat
import time
from pathlib import Path

os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")  # Envoy forks: no notices

import grpc  # noqa: E402
import pytest  # noqa: E402
from cryptography import x509  # noqa: E402
from cryptography.x509.oid import ExtendedKeyUsageOID  # noqa: E402
from envoy.service.discovery.v3 import discovery_pb2  # noqa: E402
from envoy_helpers import free_port  # noqa: E402
from xds_client import SotwClient, eventually, names  # noqa: E402

from labxds import CLUSTER, ControlPlane, Snapshot, cluster, sandbox_snapshot  # noqa: E402
from labxds.envoy import Envoy, render_bootstrap, validate_bootstrap  # noqa: E402
from labxds.messages import ResourceError, from_yaml  # noqa: E402
from labxds.security import (  # noqa: E402
    SERVER_NAME,
    TLS_BOOTSTRAP,
    TOKEN_HEADER,
    CertificateAuthorizer,
    TokenAuthorizer,
    add_token,
    channel_credentials,
    issue,
    make_ca,
    render_tls_bootstrap,
    server_credentials,
    without_client_certificate,
    write_tls_files,
)

ROOT = Path(__file__).resolve().parents[1]
ADS = "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources"


# -- listening sockets, read from /proc (no psutil) -------------------------------------------


def _address(hex_address: str, v6: bool) -> tuple[str, int]:
    host, port = hex_address.split(":")
    raw = bytes.fromhex(host)
    if v6:  # four 32-bit words, each in host (little-endian) order
        raw = b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4))
        return socket.inet_ntop(socket.AF_INET6, raw), int(port, 16)
    return socket.inet_ntop(socket.AF_INET, raw[::-1]), int(port, 16)


def _loopback(host: str) -> bool:
    ip = ipaddress.ip_address(host)
    mapped = getattr(ip, "ipv4_mapped", None)  # a dual-stack socket shows 127.0.0.1 as ::ffff:127.0.0.1
    return ip.is_loopback or (mapped is not None and mapped.is_loopback)


def listening_sockets(pids: list[int]) -> set[tuple[str, int, str]]:
    """(address, port, inode) of every TCP socket in LISTEN state owned by ``pids``."""
    inodes = set()
    for pid in pids:
        fd_dir = Path(f"/proc/{pid}/fd")
        for fd in fd_dir.iterdir():
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    found = set()
    for table, v6 in (("/proc/net/tcp", False), ("/proc/net/tcp6", True)):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == "0A" and inode in inodes:  # 0A: TCP_LISTEN
                host, port = _address(local, v6)
                found.add((host, port, inode))
    return found


def test_proc_parser_sees_a_socket_bound_beyond_loopback():
    """The check below can fail: a 0.0.0.0 listener is seen as such."""
    with socket.socket() as wide:
        wide.bind(("0.0.0.0", 0))
        wide.listen()
        port = wide.getsockname()[1]
        mine = {(h, p) for h, p, _ in listening_sockets([os.getpid()])}
        assert ("0.0.0.0", port) in mine
    assert _loopback("::ffff:127.0.0.1") and _loopback("::1") and not _loopback("::ffff:10.0.0.1")


@pytest.mark.envoy
def test_the_lab_listens_on_loopback_only(monkeypatch):
    from labxds.lab import Lab

    for var in ("LABXDS_MODE", "LABXDS_XDS_HOST", "LABXDS_LISTEN_HOST", "LABXDS_ENVOY_HOST"):
        monkeypatch.delenv(var, raising=False)
    before = listening_sockets([os.getpid()])
    lab = Lab(xds_port=0, admin_port=0, listener_port=free_port())
    try:
        lab.start(progress=False)
        lab.push(lab.sandbox_snapshot())  # Envoy's listener binds too
        assert lab.envoy is not None and lab.envoy.pid is not None
        sockets = listening_sockets([os.getpid(), lab.envoy.pid]) - before
    finally:
        lab.stop()
    ports = {port for _, port, _ in sockets}
    expected = {lab.xds_port, lab.admin_port, lab.listener_port, *(p for n in ("service1", "service2")
                                                                     for _, p in lab.endpoints(n))}
    assert expected <= ports, (expected, sockets)
    wide = [(host, port) for host, port, _ in sockets if not _loopback(host)]
    assert not wide, f"the lab listens beyond loopback: {wide}"


def test_jupyter_from_the_makefile_binds_loopback():
    lab_lines = [line for line in (ROOT / "Makefile").read_text().splitlines() if "jupyter lab" in line]
    assert lab_lines and all("--ip=127.0.0.1" in line for line in lab_lines), lab_lines


def test_command_line_servers_default_to_loopback():
    from labxds.cli import build_parser

    parser = build_parser()
    assert parser.parse_args(["serve", "--snapshot", "x"]).host == "127.0.0.1"
    assert parser.parse_args(["echo", "--name", "a"]).host == "127.0.0.1"
    assert render_bootstrap(xds_port=1, admin_port=2)["admin"]["address"]["socket_address"]["address"] == "127.0.0.1"


def test_exposing_ads_beyond_loopback_logs_a_warning_naming_the_risk(caplog):
    caplog.set_level(logging.WARNING, logger="labxds")
    with ControlPlane(0):
        pass
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    with ControlPlane(0, host="0.0.0.0") as cp:
        assert cp.running
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    text = warnings[0]
    assert "0.0.0.0" in text
    assert "snapshot" in text and "any node" in text  # what is at risk
    assert "TLS" in text and "token" in text  # and what to do


# -- certificates -----------------------------------------------------------------------------


def test_ca_and_certificates_have_the_right_extensions(tmp_path):
    files = write_tls_files(tmp_path)
    ca = x509.load_pem_x509_certificate(files.ca.read_bytes())
    server = x509.load_pem_x509_certificate(files.server_cert.read_bytes())
    client = x509.load_pem_x509_certificate(files.client_cert.read_bytes())
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    for leaf in (server, client):
        assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        assert leaf.issuer == ca.subject
        leaf.verify_directly_issued_by(ca)
        assert leaf.not_valid_after_utc > datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=7)
    usages = lambda cert: set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)  # noqa: E731
    assert usages(server) == {ExtendedKeyUsageOID.SERVER_AUTH}
    assert usages(client) == {ExtendedKeyUsageOID.CLIENT_AUTH}
    sans = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(sans.get_values_for_type(x509.DNSName)) == {SERVER_NAME, "localhost"}
    assert {str(a) for a in sans.get_values_for_type(x509.IPAddress)} == {"127.0.0.1", "::1"}
    for key in (files.server_key, files.client_key):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
    with pytest.raises(ValueError):
        issue(make_ca(), "nobody")
    other = make_ca("another CA")
    with pytest.raises(Exception):
        server.verify_directly_issued_by(x509.load_pem_x509_certificate(other.cert_pem))


# -- mutual TLS on the ADS port ----------------------------------------------------------------


@pytest.fixture
def tls(tmp_path):
    files = write_tls_files(tmp_path / "lab")
    other = write_tls_files(tmp_path / "other")  # a CA of its own: not trusted by the lab
    return files, other


def _ads_once(channel: grpc.Channel, node: str, metadata: tuple = ()) -> discovery_pb2.DiscoveryResponse:
    rpc = channel.stream_stream(ADS, request_serializer=discovery_pb2.DiscoveryRequest.SerializeToString,
                                response_deserializer=discovery_pb2.DiscoveryResponse.FromString)
    request = discovery_pb2.DiscoveryRequest(type_url=CLUSTER)
    request.node.id = node
    call = rpc(iter([request]), timeout=5, metadata=metadata)
    try:
        return next(call)
    finally:
        call.cancel()


def _tls_channel(port: int, credentials: grpc.ChannelCredentials) -> grpc.Channel:
    return grpc.secure_channel(f"127.0.0.1:{port}", credentials,
                               options=[("grpc.ssl_target_name_override", SERVER_NAME)])


def test_mtls_python_clients_need_a_certificate_from_the_lab_ca(tls):
    files, other = tls
    with ControlPlane(0, server_credentials=server_credentials(files)) as cp:
        cp.set_snapshot(Snapshot([cluster("only", [("127.0.0.1", 1)], type="STATIC")], version="1"))
        with _tls_channel(cp.port, channel_credentials(files)) as channel:
            assert names(_ads_once(channel, "good")) == ["only"]
        refused = {
            "certificate from another CA": channel_credentials(
                files.__class__(files.ca, files.server_cert, files.server_key, other.client_cert, other.client_key)),
            "no certificate": channel_credentials(files, client_certificate=False),
        }
        for what, credentials in refused.items():
            with _tls_channel(cp.port, credentials) as channel, pytest.raises(grpc.RpcError) as info:
                _ads_once(channel, what)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE, (what, info.value)
        with grpc.insecure_channel(cp.address) as plain, pytest.raises(grpc.RpcError) as info:
            _ads_once(plain, "plaintext")
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert cp.tracker.node("good") is not None
        for who in (*refused, "plaintext"):
            assert cp.tracker.node(who) is None, f"{who} reached the xDS handlers"


def test_envoy_tls_yaml_is_a_valid_bootstrap_once_rendered(tls):
    files, _ = tls
    text = TLS_BOOTSTRAP.read_text()
    assert "envoy.transport_sockets.tls" in text and TOKEN_HEADER in text
    bootstrap = render_tls_bootstrap(files, xds_port=18000, admin_port=0, token="t0k3n")
    xds = bootstrap["static_resources"]["clusters"][0]
    context = xds["transport_socket"]["typed_config"]
    assert context["sni"] == SERVER_NAME
    common = context["common_tls_context"]
    assert common["tls_certificates"][0]["certificate_chain"]["filename"] == str(files.client_cert)
    assert common["validation_context"]["trusted_ca"]["filename"] == str(files.ca)
    metadata = bootstrap["dynamic_resources"]["ads_config"]["grpc_services"][0]["initial_metadata"]
    assert metadata == [{"key": TOKEN_HEADER, "value": "t0k3n"}]
    validate_bootstrap(bootstrap)


@pytest.mark.envoy
def test_mtls_end_to_end_with_envoy_and_refusals(tls):
    files, other = tls
    port = free_port()
    with ControlPlane(0, server_credentials=server_credentials(files)) as cp:
        cp.set_snapshot(sandbox_snapshot("127.0.0.1", 9, listener_port=port, version="1"))
        good = Envoy(render_tls_bootstrap(files, xds_port=cp.port, admin_port=0, node_id="tls-good")).start()
        try:
            cp.wait_for_node("tls-good", timeout=10)
            cp.push(sandbox_snapshot("127.0.0.1", 10, listener_port=port, version="2"), nodes=["tls-good"])
            dump = good.admin.config_dump(resource="dynamic_active_clusters")["configs"]
            assert [c["version_info"] for c in dump] == ["2"]
        finally:
            good.stop()

        foreign = render_tls_bootstrap(files, xds_port=cp.port, admin_port=0, node_id="tls-foreign")
        common = foreign["static_resources"]["clusters"][0]["transport_socket"]["typed_config"]["common_tls_context"]
        common["tls_certificates"] = [{"certificate_chain": {"filename": str(other.client_cert)},
                                       "private_key": {"filename": str(other.client_key)}}]
        bare = without_client_certificate(
            render_tls_bootstrap(files, xds_port=cp.port, admin_port=0, node_id="tls-bare"))
        refused = [Envoy(foreign).start(), Envoy(bare).start()]
        try:
            deadline = time.monotonic() + 2.5
            stats: dict[str, dict[str, int]] = {}
            while time.monotonic() < deadline:
                stats = {e.bootstrap["node"]["id"]: e.admin.stats("cluster.xds_cluster.upstream_cx") for e in refused}
                if all(s.get("cluster.xds_cluster.upstream_cx_connect_fail", 0) >= 2 for s in stats.values()):
                    break
                time.sleep(0.1)
            for node, counters in stats.items():
                assert counters.get("cluster.xds_cluster.upstream_cx_connect_fail", 0) >= 1, (node, counters)
            assert "tls-foreign" not in cp.nodes() and "tls-bare" not in cp.nodes()
            assert cp.tracker.node("tls-foreign") is None and cp.tracker.node("tls-bare") is None
        finally:
            for envoy in refused:
                envoy.stop()


# -- certificates tied to node ids -------------------------------------------------------------


def test_certificate_authorizer_ties_each_client_certificate_to_its_node(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="labxds")
    ca = make_ca()
    alice = write_tls_files(tmp_path / "alice", client_name="alice", ca=ca)
    bob = write_tls_files(tmp_path / "bob", client_name="bob", ca=ca)
    auth = CertificateAuthorizer()
    with ControlPlane(0, server_credentials=server_credentials(alice), authorize=auth) as cp:
        cp.set_snapshot(Snapshot([cluster("only", [("127.0.0.1", 1)], type="STATIC")], version="1"))
        with _tls_channel(cp.port, channel_credentials(alice)) as channel:
            assert names(_ads_once(channel, "alice")) == ["only"]
            with pytest.raises(grpc.RpcError) as info:
                _ads_once(channel, "bob")  # alice's certificate, bob's node id
            assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
        with _tls_channel(cp.port, channel_credentials(bob)) as channel:
            assert names(_ads_once(channel, "bob")) == ["only"]
        assert auth.refused == 1 and "its client certificate names alice" in caplog.text
        assert cp.tracker.node("alice") is not None and cp.tracker.node("bob") is not None

    with ControlPlane(0, authorize=auth) as plain, grpc.insecure_channel(plain.address) as channel:
        with pytest.raises(grpc.RpcError) as info:  # no TLS: nothing to tie the node id to
            _ads_once(channel, "alice")
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "no verified client certificate" in caplog.text
    with grpc.insecure_channel("127.0.0.1:1") as channel, pytest.raises(grpc.RpcError) as info:
        _ads_once(channel, "alice", metadata=((":x509-common-name", "alice"),))  # and no client can
    assert info.value.code() == grpc.StatusCode.INTERNAL  # pass itself off through metadata


def test_certificate_authorizer_with_real_envoys(tmp_path):
    ca = make_ca()
    files = write_tls_files(tmp_path / "learner-a", client_name="learner-a", ca=ca)
    auth = CertificateAuthorizer()
    with ControlPlane(0, server_credentials=server_credentials(files), authorize=auth) as cp:
        cp.set_snapshot(sandbox_snapshot("127.0.0.1", 9, listener_port=free_port(), version="1"))
        own = Envoy(render_tls_bootstrap(files, xds_port=cp.port, admin_port=0, node_id="learner-a")).start()
        other = Envoy(render_tls_bootstrap(files, xds_port=cp.port, admin_port=0, node_id="learner-b")).start()
        try:
            cp.wait_for_node("learner-a", timeout=10)
            assert eventually(lambda: auth.refused >= 2)  # learner-b's streams, retried and refused again
            assert cp.nodes() == ["learner-a"] and cp.tracker.node("learner-b") is None
            assert own.admin.stats("control_plane.")["control_plane.connected_state"] == 1
            assert other.admin.stats("control_plane.")["control_plane.connected_state"] == 0
        finally:
            own.stop()
            other.stop()


# -- node tokens --------------------------------------------------------------------------------


def test_token_authorizer_accepts_only_the_nodes_own_token(caplog):
    caplog.set_level(logging.WARNING, logger="labxds")
    auth = TokenAuthorizer({"node-a": "token-a", "node-b": "token-b"})
    assert auth("node-a", {TOKEN_HEADER: "token-a"})
    assert not auth("node-a", {TOKEN_HEADER: "token-b"})  # another node's token
    assert not auth("node-a", {})
    assert not auth("node-c", {TOKEN_HEADER: "token-a"})
    assert not auth("node-a", {TOKEN_HEADER: "token-a "})
    assert auth.refused == 4
    text = caplog.text
    assert "wrong x-labxds-token" in text and "no x-labxds-token" in text and "unknown node id" in text
    assert "token-b" not in text and "token-a" not in text, "a token must never be logged"
    with pytest.raises(ValueError):
        TokenAuthorizer({"node-a": ""})


def _two_node_snapshots(cp: ControlPlane, port_a: int, port_b: int) -> None:
    cp.set_snapshot(sandbox_snapshot("127.0.0.1", 9, listener_port=port_a, version="a1"), node="node-a")
    snap_b = sandbox_snapshot("127.0.0.1", 9, listener_port=port_b, version="b1")
    secret = cluster("node-b-secret", [("127.0.0.1", 7)], type="STATIC")
    cp.set_snapshot(Snapshot([*(e.message for u in snap_b.types for e in snap_b.entries(u).values()), secret],
                             version="b1"), node="node-b")


def test_tokens_with_the_test_client(caplog):
    caplog.set_level(logging.WARNING, logger="labxds")
    auth = TokenAuthorizer({"node-a": "token-a", "node-b": "token-b"})
    with ControlPlane(0, authorize=auth) as cp:
        _two_node_snapshots(cp, free_port(), free_port())
        with grpc.insecure_channel(cp.address) as channel:
            assert names(_ads_once(channel, "node-a", ((TOKEN_HEADER, "token-a"),))) == ["example_proxy_cluster"]
            assert "node-b-secret" in names(_ads_once(channel, "node-b", ((TOKEN_HEADER, "token-b"),)))
            attempts = {
                "wrong token": ("node-a", ((TOKEN_HEADER, "nope"),)),
                "no token": ("node-a", ()),
                "unknown node": ("node-z", ((TOKEN_HEADER, "token-a"),)),
                "another node's id with my token": ("node-b", ((TOKEN_HEADER, "token-a"),)),
            }
            for what, (node, metadata) in attempts.items():
                with pytest.raises(grpc.RpcError) as info:
                    _ads_once(channel, node, metadata)
                assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED, what
                assert node in info.value.details(), what
        assert auth.refused == len(attempts)
        assert cp.tracker.node("node-z") is None
    refusals = [r.getMessage() for r in caplog.records if "refus" in r.getMessage()]
    assert len(refusals) >= len(attempts), refusals


def _metadata_channel(channel: grpc.Channel, token: str) -> grpc.Channel:
    class Details(collections.namedtuple("Details", "method timeout metadata credentials wait_for_ready compression"),
                  grpc.ClientCallDetails):
        pass

    class AddToken(grpc.StreamStreamClientInterceptor):
        def intercept_stream_stream(self, continuation, details, requests):  # type: ignore[no-untyped-def]
            metadata = [*(details.metadata or ()), (TOKEN_HEADER, token)]
            return continuation(Details(details.method, details.timeout, metadata, details.credentials,
                                        details.wait_for_ready, details.compression), requests)

    return grpc.intercept_channel(channel, AddToken())


def test_tokens_with_the_stepwise_client_sotw_stream():
    """The test suite's own xDS client, through an interceptor that adds the token."""
    with ControlPlane(0, authorize=TokenAuthorizer({"node-a": "token-a"})) as cp:
        _two_node_snapshots(cp, free_port(), free_port())
        raw = grpc.insecure_channel(cp.address)
        client = SotwClient(cp.address, "node-a", channel=_metadata_channel(raw, "token-a"))
        try:
            response = client.subscribe(CLUSTER)
            assert names(response) == ["example_proxy_cluster"]
            client.ack(response)
            client.expect_nothing()
        finally:
            client.close()
            raw.close()


@pytest.mark.envoy
def test_tokens_with_real_envoys(caplog, tls):
    """Right token: Envoy gets its own snapshot only. Wrong token: nothing, and a log line."""
    caplog.set_level(logging.WARNING, logger="labxds")
    files, _ = tls
    port_a, port_b = free_port(), free_port()
    auth = TokenAuthorizer({"node-a": "token-a", "node-b": "token-b"})
    with ControlPlane(0, authorize=auth, server_credentials=server_credentials(files)) as cp:
        _two_node_snapshots(cp, port_a, port_b)
        good = Envoy(render_tls_bootstrap(files, xds_port=cp.port, admin_port=0, node_id="node-a", token="token-a"))
        wrong = Envoy(render_tls_bootstrap(files, xds_port=cp.port, admin_port=0, node_id="node-b", token="token-a"))
        try:
            good.start()
            wrong.start()
            cp.wait_for_node("node-a", timeout=10)
            cp.push(cp.snapshot("node-a"), nodes=["node-a"])
            clusters = good.admin.config_dump(resource="dynamic_active_clusters")["configs"]
            assert [c["cluster"]["name"] for c in clusters] == ["example_proxy_cluster"]
            listeners = good.admin.config_dump(resource="dynamic_listeners")["configs"]
            bound = {entry["active_state"]["listener"]["address"]["socket_address"]["port_value"] for entry in listeners}
            assert bound == {port_a}
            deadline = time.monotonic() + 3
            while time.monotonic() < deadline and auth.refused < 2:
                time.sleep(0.05)
            assert auth.refused >= 2, "Envoy with the wrong token should have been refused, more than once"
            assert "node-b" not in cp.nodes() and cp.tracker.node("node-b") is None
            assert wrong.admin.config_dump(resource="dynamic_active_clusters").get("configs", []) == []
        finally:
            good.stop()
            wrong.stop()
    assert "refusing node 'node-b': wrong x-labxds-token" in caplog.text
    assert "token-a" not in caplog.text


def test_add_token_replaces_the_placeholder():
    bootstrap = render_bootstrap(TLS_BOOTSTRAP, xds_port=1, admin_port=0)
    services = bootstrap["dynamic_resources"]["ads_config"]["grpc_services"]
    assert services[0]["initial_metadata"] == [{"key": TOKEN_HEADER, "value": "change-me"}]
    add_token(bootstrap, "s3cret")
    assert services[0]["initial_metadata"] == [{"key": TOKEN_HEADER, "value": "s3cret"}]


# -- safe parsing -------------------------------------------------------------------------------


@pytest.mark.parametrize("payload", [
    "!!python/object/apply:os.system ['touch {marker}']",
    "resources:\n- !!python/object/apply:os.system ['touch {marker}']",
    "!!python/object/new:subprocess.Popen [['touch', '{marker}']]",
    "{{'@type': !!python/name:os.system }}",
], ids=["apply", "in-resources", "new", "name"])
def test_snapshot_text_never_builds_python_objects(tmp_path, payload):
    marker = tmp_path / "pwned"
    with pytest.raises(ResourceError) as info:
        from_yaml(payload.format(marker=marker), where="evil.yaml")
    assert "not valid YAML" in str(info.value) and "evil.yaml" in str(info.value)
    assert not marker.exists()


def test_no_module_uses_an_unsafe_yaml_loader():
    unsafe = re.compile(r"yaml\.(load|load_all|unsafe_load|full_load)\(|Loader=yaml\.(Unsafe|Full)?Loader\b")
    offenders = []
    for path in (ROOT / "labxds").rglob("*.py"):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if unsafe.search(line):
                offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not offenders, offenders
