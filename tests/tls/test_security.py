"""Exposure, TLS, mutual TLS, node tokens and safe parsing (docs/security.md).

The real-Envoy tests show what a learner would see: an Envoy with the right certificate and
token gets its configuration; one with a certificate from another CA, without a certificate, or
with a wrong token gets nothing, and the control plane says why.
"""

from __future__ import annotations

import collections
import datetime
import ipaddress
import json
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
from envoy_helpers import free_port, presented_certificate, serial_hex  # noqa: E402
from xds_client import SotwClient, ads_once, eventually, names, tls_channel  # noqa: E402

from labxds import CLUSTER, ControlPlane, Snapshot, cluster, sandbox_snapshot  # noqa: E402
from labxds.envoy import (  # noqa: E402  # noqa: E402
    TLS_BOOTSTRAP,
    Envoy,
    add_token,
    render_bootstrap,
    render_tls_bootstrap,
    validate_bootstrap,
    without_client_certificate,
)
from labxds.tls import (  # noqa: E402
    SERVER_NAME,
    TOKEN_HEADER,
    CertificateAuthorizer,
    TlsFileError,
    TokenAuthorizer,
    channel_credentials,
    issue,
    make_ca,
    renew_server_certificate,
    server_credentials,
    write_tls_files,
)
from labxds.xds import ResourceError  # noqa: E402
from labxds.xds.messages import from_yaml  # noqa: E402
from labxds.xds.server import PEER_COMMON_NAME  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
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
    from labxds.notebook import Lab

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
    lab_lines = [line for line in (ROOT / "Makefile").read_text().splitlines() if re.search(r"jupyter lab(\s|$)", line)]
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


def test_exposing_ads_over_tls_warns_only_without_node_authorization(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="labxds")
    files = write_tls_files(tmp_path)
    with ControlPlane(0, host="0.0.0.0", server_credentials=server_credentials(files)):
        pass
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "with TLS but no node authorization" in warnings[0], warnings
    assert "CertificateAuthorizer" in warnings[0] and "token" in warnings[0]
    caplog.clear()
    with ControlPlane(0, host="0.0.0.0", server_credentials=server_credentials(files),
                      authorize=CertificateAuthorizer()):
        pass
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


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


def _tls_context(bootstrap: dict) -> dict:
    return bootstrap["static_resources"]["clusters"][0]["transport_socket"]["typed_config"]["common_tls_context"]


def test_mtls_python_clients_need_a_certificate_from_the_lab_ca(tls):
    files, other = tls
    with ControlPlane(0, server_credentials=server_credentials(files)) as cp:
        cp.set_snapshot(Snapshot([cluster("only", [("127.0.0.1", 1)], type="STATIC")], version="1"))
        with tls_channel(cp.port, channel_credentials(files)) as channel:
            assert names(ads_once(channel, "good")) == ["only"]
        refused = {
            "certificate from another CA": channel_credentials(
                files.__class__(files.ca, files.server_cert, files.server_key, other.client_cert, other.client_key)),
            "no certificate": channel_credentials(files, client_certificate=False),
        }
        for what, credentials in refused.items():
            with tls_channel(cp.port, credentials) as channel, pytest.raises(grpc.RpcError) as info:
                ads_once(channel, what)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE, (what, info.value)
        with grpc.insecure_channel(cp.address) as plain, pytest.raises(grpc.RpcError) as info:
            ads_once(plain, "plaintext")
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
    # Envoy reads its certificate and CA through filesystem SDS, which it watches (rotation)
    [certificate] = common["tls_certificate_sds_secret_configs"]
    assert "tls_certificates" not in common and "validation_context" not in common
    secret = json.loads(Path(certificate["sds_config"]["path_config_source"]["path"]).read_text())["resources"][0]
    assert secret["name"] == certificate["name"]
    assert secret["tls_certificate"]["certificate_chain"]["filename"] == str(files.client_cert.absolute())
    assert secret["tls_certificate"]["private_key"]["filename"] == str(files.client_key.absolute())
    validation = common["validation_context_sds_secret_config"]
    secret = json.loads(Path(validation["sds_config"]["path_config_source"]["path"]).read_text())["resources"][0]
    assert secret["validation_context"]["trusted_ca"]["filename"] == str(files.ca.absolute())
    assert secret["validation_context"]["match_typed_subject_alt_names"][0]["matcher"]["exact"] == SERVER_NAME
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
        other_bootstrap = render_tls_bootstrap(other, xds_port=cp.port, admin_port=0)  # the other CA's client
        _tls_context(foreign)["tls_certificate_sds_secret_configs"] = (
            _tls_context(other_bootstrap)["tls_certificate_sds_secret_configs"])
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


# -- rotating certificates without restarts -----------------------------------------------------


def _served_certificate(port: int, files) -> x509.Certificate:
    return presented_certificate(port, files.client_cert, files.client_key)


def _write_whole(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".new")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _envoy_certificates(envoy: Envoy) -> tuple[set[str], set[str]]:
    """Serial numbers (hex, as Envoy's /certs shows them) of the client certificates and CAs Envoy has loaded."""
    certs = envoy.admin.get("/certs").json().get("certificates", [])
    chains = {c["serial_number"] for entry in certs for c in entry.get("cert_chain", [])}
    cas = {c["serial_number"] for entry in certs for c in entry.get("ca_cert", [])}
    return chains, cas


@pytest.mark.envoy
def test_a_renewed_server_certificate_serves_new_connections_and_open_streams_stay(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="labxds")
    ca = make_ca()
    files = write_tls_files(tmp_path, ca=ca)
    port = free_port()
    with ControlPlane(0, server_credentials=server_credentials(files)) as cp:
        cp.set_snapshot(sandbox_snapshot("127.0.0.1", 9, listener_port=port, version="1"))
        envoy = Envoy(render_tls_bootstrap(files, xds_port=cp.port, admin_port=0, node_id="renewing")).start()
        newcomer = None
        try:
            cp.wait_for_node("renewing", timeout=10)
            before = _served_certificate(cp.port, files)
            renewed = renew_server_certificate(files, ca)
            assert renewed.certificate.serial_number != before.serial_number
            assert _served_certificate(cp.port, files).serial_number == renewed.certificate.serial_number
            assert f"new connections to the ADS port get server.pem serial {serial_hex(renewed.certificate.serial_number)}" in caplog.text

            # Envoy's stream is the one it opened before the renewal, and it still gets pushes
            cp.push(sandbox_snapshot("127.0.0.1", 10, listener_port=port, version="2"), nodes=["renewing"])
            dump = envoy.admin.config_dump(resource="dynamic_active_clusters")["configs"]
            assert [c["version_info"] for c in dump] == ["2"]
            assert envoy.admin.stats("cluster.xds_cluster.upstream_cx_total")["cluster.xds_cluster.upstream_cx_total"] == 1
            # and a new Envoy checks the renewed certificate against the lab's CA
            newcomer = Envoy(render_tls_bootstrap(files, xds_port=cp.port, admin_port=0, node_id="newcomer")).start()
            cp.wait_for_node("newcomer", timeout=10)
        finally:
            envoy.stop()
            if newcomer is not None:
                newcomer.stop()


def test_a_bad_renewal_is_reported_by_file_and_the_certificate_in_use_stays(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="labxds")
    ca = make_ca()
    files = write_tls_files(tmp_path, ca=ca)
    good_key, good_cert = files.server_key.read_bytes(), files.server_cert.read_bytes()
    with ControlPlane(0, server_credentials=server_credentials(files)) as cp:
        cp.set_snapshot(Snapshot([cluster("only", [("127.0.0.1", 1)], type="STATIC")], version="1"))
        serial = _served_certificate(cp.port, files).serial_number
        stranger = issue(ca, SERVER_NAME, server=True, dns_names=[SERVER_NAME])
        expired = issue(ca, SERVER_NAME, server=True, dns_names=[SERVER_NAME], days=-0.002)  # ended 3 min ago
        mistakes = {
            "server-key.pem: this key does not belong to the certificate in server.pem": (stranger.key_pem, good_cert),
            "server.pem: not a PEM certificate": (good_key, b"-----BEGIN CERTIFICATE-----\nbroken\n"),
            "server.pem: the certificate expired on": (expired.key_pem, expired.cert_pem),
        }
        for message, (key, cert) in mistakes.items():
            _write_whole(files.server_key, key)
            _write_whole(files.server_cert, cert)
            assert _served_certificate(cp.port, files).serial_number == serial, message
            assert message in caplog.text
            assert "the ADS port keeps its certificate" in caplog.text
            with tls_channel(cp.port, channel_credentials(files)) as channel:  # RPCs go on
                assert names(ads_once(channel, "still-served")) == ["only"]
        errors = [r for r in caplog.records if r.levelno == logging.ERROR]
        assert len(errors) == len(mistakes)  # each reported once, not at every handshake
        _served_certificate(cp.port, files)
        assert len([r for r in caplog.records if r.levelno == logging.ERROR]) == len(mistakes)

        renewed = renew_server_certificate(files, ca)  # mended
        assert _served_certificate(cp.port, files).serial_number == renewed.certificate.serial_number

    _write_whole(files.server_key, stranger.key_pem)
    with pytest.raises(TlsFileError, match="server-key.pem: this key does not belong"):
        server_credentials(files)  # bad at start: an error naming the file, not a failing port
    with pytest.raises(TlsFileError, match="server-key.pem: this key does not belong"):
        server_credentials(files, reload=False)


@pytest.mark.envoy
def test_rotating_to_a_new_ca_without_restarting_envoy(tmp_path):
    """The whole rotation: trust both CAs, move every certificate to the new one, drop the old CA.
    Envoy reloads its own certificate and CA bundle (filesystem SDS); the control plane restarts
    on the same port and Envoy reconnects with its new certificate."""
    old_ca, new_ca = make_ca("old lab CA"), make_ca("new lab CA")
    files = write_tls_files(tmp_path / "tls", ca=old_ca, client_name="envoy-old-ca")
    old_client = write_tls_files(tmp_path / "old-client", ca=old_ca, client_name="old-client")
    peers: list[str | None] = []

    def authorize(node: str, metadata) -> bool:
        peers.append(metadata.get(PEER_COMMON_NAME))
        return True

    port = free_port()
    cp = ControlPlane(0, server_credentials=server_credentials(files), authorize=authorize).start()
    envoy = Envoy(render_tls_bootstrap(files, xds_port=cp.port, admin_port=0, node_id="rotating")).start()
    try:
        cp.set_snapshot(sandbox_snapshot("127.0.0.1", 9, listener_port=port, version="1"))
        cp.wait_for_node("rotating", timeout=10)
        assert peers[-1] == "envoy-old-ca"
        serial = lambda c: serial_hex(c.certificate.serial_number)  # noqa: E731

        _write_whole(files.ca, old_ca.cert_pem + new_ca.cert_pem)  # 1. both CAs trusted everywhere
        renew_server_certificate(files, new_ca)  # 2. every certificate from the new CA
        new_client = issue(new_ca, "envoy-new-ca", client=True)
        new_client.write(files.client_cert, files.client_key)
        assert eventually(lambda: _envoy_certificates(envoy) == (
            {serial(new_client)}, {serial(old_ca), serial(new_ca)}), timeout=10), _envoy_certificates(envoy)
        _write_whole(files.ca, new_ca.cert_pem)  # 3. the old CA goes
        assert eventually(lambda: _envoy_certificates(envoy)[1] == {serial(new_ca)}, timeout=10)

        xds_port = cp.port
        cp.stop()  # a restart of the control plane: Envoy reconnects, Envoy itself never restarts
        cp = ControlPlane(xds_port, server_credentials=server_credentials(files), authorize=authorize).start()
        cp.set_snapshot(sandbox_snapshot("127.0.0.1", 10, listener_port=port, version="2"))
        assert eventually(lambda: [c["version_info"] for c in
                                   envoy.admin.config_dump(resource="dynamic_active_clusters")["configs"]] == ["2"],
                          timeout=15)
        assert peers[-1] == "envoy-new-ca"
        # a client still holding an old-CA certificate is refused at the handshake
        with tls_channel(cp.port, channel_credentials(old_client)) as channel, pytest.raises(grpc.RpcError) as info:
            ads_once(channel, "old-client")
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        envoy.stop()
        cp.stop()


# -- certificates tied to node ids -------------------------------------------------------------


def test_certificate_authorizer_ties_each_client_certificate_to_its_node(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="labxds")
    ca = make_ca()
    alice = write_tls_files(tmp_path / "alice", client_name="alice", ca=ca)
    bob = write_tls_files(tmp_path / "bob", client_name="bob", ca=ca)
    auth = CertificateAuthorizer()
    with ControlPlane(0, server_credentials=server_credentials(alice), authorize=auth) as cp:
        cp.set_snapshot(Snapshot([cluster("only", [("127.0.0.1", 1)], type="STATIC")], version="1"))
        with tls_channel(cp.port, channel_credentials(alice)) as channel:
            assert names(ads_once(channel, "alice")) == ["only"]
            with pytest.raises(grpc.RpcError) as info:
                ads_once(channel, "bob")  # alice's certificate, bob's node id
            assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
        with tls_channel(cp.port, channel_credentials(bob)) as channel:
            assert names(ads_once(channel, "bob")) == ["only"]
        assert auth.refused == 1 and "its client certificate names alice" in caplog.text
        assert cp.tracker.node("alice") is not None and cp.tracker.node("bob") is not None

    with ControlPlane(0, authorize=auth) as plain, grpc.insecure_channel(plain.address) as channel:
        with pytest.raises(grpc.RpcError) as info:  # no TLS: nothing to tie the node id to
            ads_once(channel, "alice")
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "no verified client certificate" in caplog.text
    with grpc.insecure_channel("127.0.0.1:1") as channel, pytest.raises(grpc.RpcError) as info:
        ads_once(channel, "alice", metadata=((":x509-common-name", "alice"),))  # and no client can
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
            # (the refused Envoy's connected_state flickers: each retry connects, then is refused)
            served = lambda e: [c["version_info"] for c in  # noqa: E731
                                e.admin.config_dump(resource="dynamic_active_clusters").get("configs", [])]
            assert eventually(lambda: served(own) == ["1"]) and served(other) == []
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
            assert names(ads_once(channel, "node-a", ((TOKEN_HEADER, "token-a"),))) == ["example_proxy_cluster"]
            assert "node-b-secret" in names(ads_once(channel, "node-b", ((TOKEN_HEADER, "token-b"),)))
            attempts = {
                "wrong token": ("node-a", ((TOKEN_HEADER, "nope"),)),
                "no token": ("node-a", ()),
                "unknown node": ("node-z", ((TOKEN_HEADER, "token-a"),)),
                "another node's id with my token": ("node-b", ((TOKEN_HEADER, "token-a"),)),
            }
            for what, (node, metadata) in attempts.items():
                with pytest.raises(grpc.RpcError) as info:
                    ads_once(channel, node, metadata)
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
    with pytest.raises(ResourceError) as info:  # read as Envoy reads YAML: the tag is ignored, and the
        from_yaml(payload.format(marker=marker), where="evil.yaml")  # plain data left is no resource
    assert "evil.yaml" in str(info.value)
    assert not marker.exists()


def test_no_module_uses_an_unsafe_yaml_loader():
    unsafe = re.compile(r"yaml\.(load|load_all|unsafe_load|full_load)\(|Loader=yaml\.(Unsafe|Full)?Loader\b")
    offenders = []
    for path in (ROOT / "labxds").rglob("*.py"):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if unsafe.search(line):
                offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not offenders, offenders
