"""One control plane for a whole class: real Envoys of several learners, and hundreds of simulated ones.

The real-Envoy tests share one workshop (with tokens) and three learners' labs in "remote control
plane" mode: their own Envoy and echo services, the workshop's control plane. Ports are always
picked by the kernel.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import grpc
import pytest
import yaml
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import discovery_pb2
from envoy_helpers import free_port, presented_certificate
from google.protobuf import struct_pb2

from labxds import cli
from labxds.classroom import (
    EXERCISES,
    CheckResult,
    Learner,
    LearnerSession,
    Workshop,
    broken_listener,
    canary,
    learner_bootstrap,
    routes,
    sandbox,
)
from labxds.envoy import validate_bootstrap
from labxds.net import parse_address
from labxds.notebook import Lab
from labxds.tls import TOKEN_HEADER
from labxds.xds import PushRejected, Snapshot, cluster

LEARNERS = ("alice", "bob", "carol")
CDS_OK = "cluster_manager.cds.update_success"
LDS_OK = "listener_manager.lds.update_success"


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def workshop():
    ws = Workshop(port=0, tokens=True).start()
    for name in LEARNERS:
        ws.add_learner(name)
    yield ws
    ws.stop()


@pytest.fixture(scope="module")
def labs(workshop: Workshop):
    started: dict[str, Lab] = {}
    try:
        for name in LEARNERS:
            started[name] = Lab(
                control_plane=workshop.address, node_id=name, token=workshop.token(name),
                admin_port=0, listener_port=free_port(),
            ).start(progress=False)  # fmt: skip
        workshop.control_plane.tracker.wait_connected("carol", 10)
        yield started
    finally:
        for lab in started.values():
            lab.stop()


@pytest.fixture
def baseline(workshop: Workshop, labs: dict[str, Lab]) -> dict[str, Lab]:
    """Every learner back on the class default: the sandbox to service1."""
    workshop.reset(LEARNERS, wait=False)
    workshop.broadcast(sandbox("service1"))
    return labs


def served(lab: Lab, n: int = 2, path: str = "/") -> list[str]:
    return list(lab.curl(n, path=path)["served_by"])


def counters(lab: Lab) -> dict[str, int]:
    stats = lab.admin.stats(f"^({CDS_OK}|{LDS_OK})$")
    return {CDS_OK: stats[CDS_OK], LDS_OK: stats[LDS_OK]}


# --------------------------------------------------------------------------- joining


def test_parse_address() -> None:
    assert parse_address("10.0.0.5:18000") == ("10.0.0.5", 18000)
    assert parse_address("[::1]:9") == ("::1", 9)
    assert parse_address("instructor") == ("instructor", 18000)
    with pytest.raises(ValueError, match="not a port"):
        parse_address("host:abc")
    with pytest.raises(ValueError, match="no host"):
        parse_address(":18000")


@pytest.mark.envoy
def test_bootstrap_command_writes_what_envoy_accepts(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from labxds.tls import write_tls_files

    files = write_tls_files(tmp_path / "tls")
    out = tmp_path / "envoy.yaml"
    code = cli.main([
        "bootstrap", "--node", "alice", "--control-plane", "instructor.example:18123", "--token", "s3cret",
        "--tls-ca", str(files.ca), "--tls-cert", str(files.client_cert), "--tls-key", str(files.client_key),
        "--admin-port", "19555", "--service", "service1=127.0.0.1:8081", "-o", str(out),
    ])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    boot = yaml.safe_load(out.read_text())
    assert boot["node"]["id"] == "alice"
    assert boot["node"]["metadata"]["labxds"]["services"] == {"service1": ["127.0.0.1:8081"]}
    service = boot["dynamic_resources"]["ads_config"]["grpc_services"][0]
    assert service["envoy_grpc"]["cluster_name"] == "xds_cluster"
    assert service["initial_metadata"] == [{"key": TOKEN_HEADER, "value": "s3cret"}]
    xds = next(c for c in boot["static_resources"]["clusters"] if c["name"] == "xds_cluster")
    sock = xds["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]
    assert (sock["address"], sock["port_value"]) == ("instructor.example", 18123)
    tls = xds["transport_socket"]["typed_config"]
    assert tls["@type"].endswith("UpstreamTlsContext")
    assert tls["common_tls_context"]["validation_context"]["trusted_ca"]["filename"] == str(files.ca.resolve())
    assert boot["admin"]["address"]["socket_address"]["port_value"] == 19555
    options = xds["typed_extension_protocol_options"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
    keepalive = options["explicit_http_config"]["http2_protocol_options"]["connection_keepalive"]
    assert keepalive == {"interval": "30.000s", "timeout": "10.000s"}  # a learner's network can die silently
    assert "OK" in validate_bootstrap(out)

    # Without TLS and token: plain, and no placeholder token left behind.
    plain = learner_bootstrap("bob", "127.0.0.1:18000", admin_port=0)
    assert "initial_metadata" not in plain["dynamic_resources"]["ads_config"]["grpc_services"][0]
    assert "transport_socket" not in plain["static_resources"]["clusters"][0]
    assert "OK" in validate_bootstrap(plain)

    assert cli.main(["bootstrap", "--node", "x", "--control-plane", "h:1", "--tls-ca", str(files.ca)]) == 2
    assert "all three" in capsys.readouterr().err


# --------------------------------------------------------------------------- per-learner snapshots


@pytest.mark.envoy
def test_a_change_to_one_learner_reaches_only_that_learner(workshop: Workshop, baseline: dict[str, Lab]) -> None:
    labs = baseline
    for name, lab in labs.items():
        assert served(lab) == ["service1", "service1"], name
        # Each learner's snapshot was rendered for them: their own service1's port.
        host, port = lab.upstream("service1")
        assert lab.sandbox_endpoint() == f"{host}:{port}"
    before = {name: counters(lab) for name, lab in labs.items()}

    workshop.push(sandbox("service2"), "bob")
    assert served(labs["bob"]) == ["service2", "service2"]
    assert counters(labs["bob"])[CDS_OK] > before["bob"][CDS_OK]
    time.sleep(0.5)  # room for a stray update to arrive
    for name in ("alice", "carol"):
        assert counters(labs[name]) == before[name], f"{name}'s Envoy was updated by bob's push"
        assert served(labs[name]) == ["service1", "service1"]
    assert workshop.source_of("bob").startswith("own:")
    assert workshop.source_of("alice").startswith("class:")

    # A new class default does not override bob's own snapshot...
    before = {name: counters(lab) for name, lab in labs.items()}
    workshop.broadcast(sandbox("service2"))
    assert served(labs["alice"]) == ["service2", "service2"]
    assert counters(labs["bob"]) == before["bob"]
    # ...until bob is reset to the class default.
    workshop.push(sandbox("service1"), "bob")
    assert served(labs["bob"]) == ["service1", "service1"]
    workshop.reset("bob")
    assert served(labs["bob"]) == ["service2", "service2"]


@pytest.mark.envoy
def test_group_push(workshop: Workshop, baseline: dict[str, Lab]) -> None:
    labs = baseline
    workshop.group("team-a", ["alice", "carol"])
    assert workshop.resolve(["team-a", "bob"]) == ["alice", "carol", "bob"]
    with pytest.raises(ValueError, match="learner's name"):
        workshop.group("alice", ["bob"])
    before = counters(labs["bob"])
    workshop.push(routes({"/api": "service2", "/": "service1"}), "team-a")
    for name in ("alice", "carol"):
        assert served(labs[name], 1, "/api") == ["service2"]
    time.sleep(0.3)
    assert counters(labs["bob"]) == before
    assert served(labs["bob"], 1, "/api") == ["service1"]


@pytest.mark.envoy
def test_a_plain_snapshot_broadcast_reaches_everyone(workshop: Workshop, baseline: dict[str, Lab]) -> None:
    labs = baseline
    # One snapshot for all (no template): a cluster only, since one listener port cannot serve
    # several learners on one machine. Every Envoy gets it, in place of its rendered sandbox.
    snap = Snapshot([cluster("shared", [labs["alice"].upstream("service1")], type="STATIC")], version="shared-1")
    workshop.broadcast(snap)
    for name, lab in labs.items():
        assert list(lab.clusters()["name"]) == ["shared"], name
        assert lab.clusters().loc[0, "version_info"].startswith("shared-1")  # "+retained": make before break
    assert workshop.snapshot_of("bob") is snap


# --------------------------------------------------------------------------- exercises


@pytest.mark.envoy
def test_exercise_checks_pass_on_a_solution_and_fail_with_a_hint(workshop: Workshop, baseline: dict[str, Lab]) -> None:
    labs = baseline
    me = LearnerSession(workshop.desk_url, labs["alice"], token=workshop.token("alice"))
    try:
        # route-api: at the start everything goes to service1.
        result = me.check("route-api")
        assert not result.passed and "/api" in result.hint
        me.push(EXERCISES["route-api"].wrong)  # /api after the catch-all '/'
        result = me.check("route-api")
        assert not result.passed and "first route that matches" in result.hint
        me.push(EXERCISES["route-api"].solved)
        result = me.check("route-api")
        assert result.passed, str(result)
        recorded = workshop.progress["alice"]["route-api"]  # reported through the desk
        assert recorded.passed and recorded.confirmed is True, recorded.evidence
        assert "Envoy ACKed a configuration that sends /api to service2 and / to service1" in recorded.evidence

        # canary: 10/90 is the wrong way round; the instructor runs this check from here.
        workshop.push(EXERCISES["canary"].wrong, "carol")
        result = workshop.check("canary", "carol")
        assert not result.passed and "90% to service1" in result.hint
        assert result.confirmed is False and "/ is split service1 10%, service2 90%" in result.evidence
        workshop.push(canary(), "carol")
        result = workshop.check("canary", "carol")
        assert result.passed, str(result)
        assert result.confirmed is True and "splits / 90% to service1" in result.evidence
    finally:
        me.close()


@pytest.mark.envoy
def test_a_reported_pass_is_set_against_what_the_control_plane_knows(
    workshop: Workshop, baseline: dict[str, Lab], caplog
) -> None:
    """A check runs on the learner's machine, so a learner could report a pass without the work.
    The workshop compares every report with the snapshot it serves that learner and the versions
    their Envoy ACKed; the learner cannot set that verdict."""
    caplog.set_level(logging.WARNING, "labxds")
    me = LearnerSession(workshop.desk_url, baseline["alice"], token=workshop.token("alice"))
    try:
        forged = {"exercise": "route-api", "passed": True, "detail": "trust me", "confirmed": True,
                  "evidence": "the control plane agrees"}  # fmt: skip
        me._post("result", forged)  # alice still runs the class default: everything to service1
        recorded = workshop.progress["alice"]["route-api"]
        assert recorded.passed and recorded.contradicted and recorded.mark == "⚠"
        assert recorded.evidence == "in the configuration Envoy ACKed, /api goes to service1"
        assert "alice reports route-api passed, but in the configuration Envoy ACKed" in caplog.text
        from labxds.notebook import Dashboard

        row = Dashboard(workshop, live=False).frame().set_index("learner").loc["alice"]
        assert row["progress"] == "route-api ⚠" and row["passed"] == 0  # a contradicted pass does not count

        me.push(EXERCISES["route-api"].solved)
        returned = me.check("route-api")  # the learner sees the verdict too
        assert returned.passed and returned.confirmed is True and "control plane: Envoy ACKed" in str(returned)
        assert workshop.progress["alice"]["route-api"].mark == "✓"
    finally:
        me.close()

    # a learner whose Envoy never connected: the report is kept, unconfirmed
    dave = workshop.record(CheckResult("canary", "dave", True, detail="reported"))
    assert dave.confirmed is None and dave.mark == "✓?"
    assert dave.evidence == "the learner's Envoy is not connected to the control plane"
    workshop.progress.pop("dave")


@pytest.mark.envoy
def test_fix_the_nacked_listener(workshop: Workshop, baseline: dict[str, Lab]) -> None:
    labs = baseline
    workshop.assign("fix-nack", "bob")  # a NACK on purpose: no exception
    status = workshop.control_plane.node_status("bob")
    lds = next(st for url, st in status.types.items() if url.endswith("Listener"))
    assert "StatPrefix" in (lds.nack_error or "")
    from labxds.notebook import Dashboard

    rows = Dashboard(workshop, live=False).frame().set_index("learner")
    assert rows.loc["bob", "nack_open"] and "StatPrefix" in rows.loc["bob", "last_nack"]  # the real Envoy's words
    assert rows.loc["bob", "last_nack"].startswith("LDS v")
    assert not rows.loc["carol", "nack_open"]
    result = workshop.check("fix-nack", "bob")
    assert not result.passed and "stat_prefix" in result.hint and "StatPrefix" in result.detail
    forged = workshop.record(CheckResult("fix-nack", "bob", True))  # what a forged report would say
    assert forged.contradicted and forged.evidence.startswith("Envoy refused the LDS it was sent: ")
    assert "StatPrefix" in forged.evidence
    assert served(labs["bob"], 1) == ["service1"]  # Envoy kept the listener it had

    me = LearnerSession(workshop.desk_url, labs["bob"], token=workshop.token("bob"))
    try:
        with pytest.raises(PushRejected, match="StatPrefix"):
            me.push(broken_listener(version="learner-1"))
        me.push(sandbox("service2"))
        result = me.check("fix-nack")
        assert result.passed, str(result)
        assert workshop.progress["bob"]["fix-nack"].confirmed is True
    finally:
        me.close()


# --------------------------------------------------------------------------- access


@pytest.mark.envoy
def test_a_learner_cannot_pose_as_another(workshop: Workshop, labs: dict[str, Lab], caplog) -> None:
    caplog.set_level(logging.WARNING, "labxds")
    refused_before = workshop._authorizer.refused  # type: ignore[union-attr]
    impostor = Lab(control_plane=workshop.address, node_id="bob", token=workshop.token("alice"),
                   admin_port=0, listener_port=free_port())  # fmt: skip
    with pytest.raises(TimeoutError, match="did not connect"):
        impostor.start(progress=False, timeout=2)
    assert not impostor.running  # stopped after failing
    assert workshop._authorizer.refused > refused_before  # type: ignore[union-attr]
    assert "wrong x-labxds-token" in caplog.text

    # The desk refuses the same way: alice's token does not push to bob.
    desk = LearnerSession(workshop.desk_url, labs["alice"], name="bob", token=workshop.token("alice"))
    try:
        with pytest.raises(PermissionError, match="not authorized"):
            desk.push(sandbox("service2"))
    finally:
        desk.close()

    # Tokens and TLS need the workshop's own control plane.
    with pytest.raises(ValueError, match="create its control plane"):
        Workshop(workshop.control_plane, tokens=True)


@pytest.mark.envoy
def test_remote_lab_has_no_control_plane_of_its_own(labs: dict[str, Lab], workshop: Workshop) -> None:
    lab = labs["alice"]
    with pytest.raises(RuntimeError, match="configured by the control plane"):
        lab.push(lab.sandbox_snapshot())
    where = lab.where()
    assert where.loc[0, "address"] == workshop.address
    assert workshop.learner("alice").admin_url == lab.admin_url
    assert workshop.learner("alice").endpoints("service2") == lab.endpoints("service2")
    with pytest.raises(ValueError, match="node_id"):
        Lab(control_plane="127.0.0.1:1")


@pytest.mark.envoy
def test_tls_workshop_with_a_real_envoy(tmp_path: Path) -> None:
    ws = Workshop(port=0, tls=tmp_path / "tls", tokens=True).start()
    lab = None
    try:
        token = ws.add_learner("dana")
        ca, cert, key = ws.learner_tls("dana", tmp_path / "dana")
        assert ws.desk_url.startswith("https://")
        lab = Lab(control_plane=ws.address, node_id="dana", token=token, tls=(str(ca), str(cert), str(key)),
                  admin_port=0, listener_port=free_port()).start(progress=False)  # fmt: skip
        ws.broadcast(sandbox("service2"))
        assert served(lab, 1) == ["service2"]

        def push_through_the_desk(upstream: str) -> None:
            me = LearnerSession(ws.desk_url, lab, token=token, tls=(ca, cert, key))
            try:
                me.push(sandbox(upstream))
            finally:
                me.close()
            assert served(lab, 1) == [upstream]

        push_through_the_desk("service1")
        assert "--tls-cert dana.pem" in ws.bootstrap_command("dana")

        # a renewed certificate: the desk's HTTPS and the ADS port serve it from the next
        # connection, without a restart, and the learner's clients still trust it
        from labxds.tls import renew_server_certificate

        renewed = renew_server_certificate(ws.tls_files, ws._ca).certificate.serial_number
        desk_port = int(ws.desk_url.rsplit(":", 1)[1])
        assert presented_certificate(desk_port, cert, key).serial_number == renewed
        assert presented_certificate(ws.control_plane.port, cert, key).serial_number == renewed
        push_through_the_desk("service2")
    finally:
        if lab is not None:
            lab.stop()
        ws.stop()


# --------------------------------------------------------------------------- hundreds of learners

ADS = "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources"
CLUSTER = "type.googleapis.com/envoy.config.cluster.v3.Cluster"


class SimLearner:
    """A learner's xDS client on grpc.aio: one ADS stream, CDS only, announcing a service port."""

    def __init__(self, channel: grpc.aio.Channel, name: str, service_port: int) -> None:
        self.name = name
        self.port = service_port
        self.call = channel.stream_stream(
            ADS,
            request_serializer=discovery_pb2.DiscoveryRequest.SerializeToString,
            response_deserializer=discovery_pb2.DiscoveryResponse.FromString,
        )()

    async def subscribe(self) -> None:
        meta = struct_pb2.Struct()
        meta.update(Learner(self.name, services={"service1": [("127.0.0.1", self.port)],
                                                 "service2": [("127.0.0.1", self.port + 1)]}).metadata())
        node = base_pb2.Node(id=self.name, cluster="workshop", metadata=meta)
        await self.call.write(discovery_pb2.DiscoveryRequest(node=node, type_url=CLUSTER))

    async def recv(self, timeout: float = 10.0) -> discovery_pb2.DiscoveryResponse:
        return await asyncio.wait_for(self.call.read(), timeout)

    async def answer(self, response: discovery_pb2.DiscoveryResponse, error: str | None = None) -> None:
        req = discovery_pb2.DiscoveryRequest(type_url=CLUSTER, version_info=response.version_info,
                                             response_nonce=response.nonce)  # fmt: skip
        if error is not None:
            req.version_info = ""
            req.error_detail.message = error
        await self.call.write(req)


def endpoint_port(response: discovery_pb2.DiscoveryResponse) -> int:
    c = cluster_pb2.Cluster()
    response.resources[0].Unpack(c)
    return c.load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.socket_address.port_value


def test_hundreds_of_simulated_learners_each_get_their_own_snapshot() -> None:
    count = 300
    ws = Workshop(port=0, desk_port=None).start()
    ws.broadcast(sandbox("service1"), wait=False)  # a template: rendered per learner on arrival

    async def run() -> None:
        channels = [grpc.aio.insecure_channel(ws.address) for _ in range(10)]
        learners = [SimLearner(channels[i % 10], f"learner-{i:03d}", 20000 + 2 * i) for i in range(count)]
        try:
            await asyncio.gather(*(sim.subscribe() for sim in learners))
            first = await asyncio.gather(*(sim.recv() for sim in learners))
            for sim, response in zip(learners, first):
                assert endpoint_port(response) == sim.port, sim.name  # its own service1, nobody else's
            await asyncio.gather(*(sim.answer(r) for sim, r in zip(learners, first)))
            assert len(ws.control_plane.nodes()) == count

            # One learner's change reaches that learner and nobody else.
            target = learners[137]
            await asyncio.to_thread(ws.push, sandbox("service2"), target.name, wait=False)
            response = await target.recv()
            assert endpoint_port(response) == target.port + 1
            others = [sim for sim in learners if sim is not target]
            stray = await asyncio.wait(
                [asyncio.ensure_future(sim.call.read()) for sim in others[::3]], timeout=0.5
            )
            assert not stray[0], "a learner received another learner's update"
            for pending in stray[1]:
                pending.cancel()

            # One learner NACKs: the workshop's view (and so the dashboard's) names it with the error.
            await target.answer(response, error="simulated: cluster rejected")
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                status = ws.control_plane.node_status(target.name)
                if status and status.types[CLUSTER].nack_error:
                    break
                await asyncio.sleep(0.02)
            assert ws.control_plane.node_status(target.name).types[CLUSTER].nack_error == "simulated: cluster rejected"
            assert ws.control_plane.node_status(learners[0].name).types[CLUSTER].nack_error is None
        finally:
            for sim in learners:
                sim.call.cancel()
            for channel in channels:
                await channel.close()

    try:
        asyncio.run(run())
    finally:
        ws.stop()


def test_listens_beyond_loopback_only_when_asked(caplog) -> None:
    assert Workshop(port=0, desk_port=None).control_plane.host == "127.0.0.1"
    caplog.set_level(logging.WARNING, "labxds")
    wide = Workshop(port=0, host="0.0.0.0", desk_port=None).start()
    try:
        assert "beyond this machine" in caplog.text
    finally:
        wide.stop()


def test_desk_answers_bad_requests_in_words() -> None:
    import httpx

    from labxds.xds import route_configuration

    ws = Workshop(port=0).start()
    try:
        with httpx.Client(base_url=ws.desk_url, trust_env=False) as client:
            assert [e["key"] for e in client.get("/v1/exercises").json()["exercises"]] == list(EXERCISES)
            assert client.post("/v1/learners/zed/snapshot", content=b"{nope").status_code == 400
            assert client.post("/v1/nowhere").status_code == 404
            # A route to a cluster the snapshot lacks: refused before anything reaches Envoy.
            rc = route_configuration("local_route", "missing")
            body = {"resources": [{"type_url": "type.googleapis.com/envoy.config.route.v3.RouteConfiguration",
                                   "value": __import__("base64").b64encode(rc.SerializeToString()).decode()}]}
            answer = client.post("/v1/learners/zed/snapshot", json=body)
            assert answer.status_code == 400 and "missing" in answer.json()["error"]
            answer = client.post("/v1/learners/zed/result", json={"exercise": "canary", "passed": True})
            assert answer.status_code == 200
        assert ws.progress["zed"]["canary"].passed
        assert ws.snapshot_of("zed") is None  # the refused snapshot was never served
    finally:
        ws.stop()
