"""labxds.echo: the sandbox's echo upstreams, answering like jmalloc/echo-server."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from envoy_helpers import free_port

from labxds.lab import EchoFleet, EchoService, format_echo, start_services
from labxds.lab.echo import BEHAVIOUR_PATH, HEALTH_PATH, Behaviour

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def client():
    with httpx.Client(trust_env=False, timeout=5) as c:
        yield c


def test_format_matches_echo_server_layout():
    body = format_echo(
        "service1",
        "GET",
        "/a?b=1",
        [("user-agent", "curl/8"), ("Host", "localhost:10000"), ("x-request-id", "abc"), ("accept", "*/*")],
    )
    assert body.decode() == (
        "Request served by service1\n"
        "\n"
        "HTTP/1.1 GET /a?b=1\n"
        "\n"
        "Host: localhost:10000\n"
        "Accept: */*\n"
        "User-Agent: curl/8\n"
        "X-Request-Id: abc\n"
    )
    assert format_echo("s", "POST", "/", [("host", "h")], b"hi").endswith(b"Host: h\n\nhi")


def test_service_answers_with_its_name_and_the_request(client):
    with EchoService("service1") as svc:
        assert svc.port > 0 and svc.url == f"http://127.0.0.1:{svc.port}"
        r = client.get(f"{svc.url}/some/path?q=1", headers={"x-lesson": "one"})
    assert r.status_code == 200
    assert r.headers["content-type"] == "text/plain"
    assert r.headers["x-served-by"] == "service1"
    assert "x-echo-instance" not in r.headers
    lines = r.text.split("\n")
    assert lines[:5] == ["Request served by service1", "", "HTTP/1.1 GET /some/path?q=1", "", f"Host: 127.0.0.1:{svc.port}"]
    headers = lines[5:-1]
    assert "X-Lesson: one" in headers
    names = [h.split(":", 1)[0] for h in headers]
    assert names == sorted(names), "headers are printed sorted by name, as echo-server does"
    assert svc.requests == 1


def test_body_is_echoed_after_the_headers(client):
    with EchoService("service2") as svc:
        r = client.post(svc.url + "/p", content=b"payload")
        chunked = client.put(svc.url + "/c", content=iter([b"pay", b"load"]))  # no Content-Length
    assert r.text.startswith("Request served by service2\n\nHTTP/1.1 POST /p\n")
    assert r.text.endswith("\n\npayload")
    assert chunked.text.endswith("\n\npayload")


def test_fleet_instances_have_own_ports_and_instance_header(client):
    with start_services({"service1": 2, "service2": 1}) as fleet:
        ports = [svc.port for svc in fleet]
        assert len(set(ports)) == 3
        assert fleet.endpoints("service1") == [("127.0.0.1", s.port) for s in fleet["service1"]]
        answers = [client.get(s.url) for s in fleet["service1"]]
        assert [a.headers["x-echo-instance"] for a in answers] == ["1", "2"]
        assert {a.text.split("\n")[0] for a in answers} == {"Request served by service1"}
        assert "x-echo-instance" not in client.get(fleet["service2"][0].url).headers


def test_stop_closes_keepalive_connections_and_restart_keeps_the_port(client):
    svc = EchoService("service1").start()
    port = svc.port
    assert client.get(svc.url).status_code == 200  # leaves a pooled keep-alive connection
    svc.stop()
    svc.stop()  # idempotent
    with pytest.raises(httpx.TransportError):
        client.get(f"http://127.0.0.1:{port}/")
    svc.start()
    try:
        assert svc.port == port
        assert client.get(svc.url).status_code == 200
    finally:
        svc.stop()


def test_busy_port_error_names_service_and_port():
    with EchoService("service1") as first:
        with pytest.raises(OSError, match=rf"service2.*127\.0\.0\.1:{first.port}"):
            EchoService("service2", port=first.port).start()


def test_fleet_start_failure_stops_what_started():
    with EchoService("squatter") as squatter:
        fleet = EchoFleet({"service1": 1, "service2": 1})
        fleet["service2"][0]._requested_port = squatter.port
        with pytest.raises(OSError):
            fleet.start()
        assert not any(s.running for s in fleet)


def test_cli_serves_until_sigterm(client):
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen(
        [sys.executable, "-m", "labxds", "echo",
         "--name", "service9", "--port", str(port)],
        stdout=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    try:
        assert "listening" in proc.stdout.readline()
        assert client.get(f"http://127.0.0.1:{port}/").text.startswith("Request served by service9\n")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(5) == 0
    finally:
        proc.kill()


# -- misbehaving on purpose (lesson 11) ---------------------------------------------------------


def test_behaviour_makes_an_instance_fail_and_slow_then_normal_again(client):
    with EchoService("service1") as svc:
        assert svc.behaviour == Behaviour() and svc.behaviour.describe() == "normal"
        svc.set_behaviour(error_rate=1.0, status=502)
        r = client.get(svc.url + "/x")
        assert r.status_code == 502 and r.headers["x-served-by"] == "service1"
        assert "fails on purpose" in r.text and "failing 100% with 502" in r.text
        assert (svc.requests, svc.failed) == (1, 1)

        svc.set_behaviour(error_rate=0, delay=0.3)  # status stays 502 for later failures
        assert svc.behaviour == Behaviour(delay=0.3, error_rate=0, status=502)
        started = time.monotonic()
        assert client.get(svc.url).status_code == 200
        assert time.monotonic() - started >= 0.3

        svc.reset_behaviour()
        started = time.monotonic()
        assert client.get(svc.url).status_code == 200
        assert time.monotonic() - started < 0.25
        assert (svc.requests, svc.failed) == (3, 1)


def test_error_rate_is_a_share_of_the_answers(client):
    with EchoService("service1") as svc:
        svc.set_behaviour(error_rate=0.5)
        statuses = [client.get(svc.url).status_code for _ in range(200)]
    assert set(statuses) == {200, 503}
    assert 60 <= statuses.count(503) <= 140, statuses.count(503)  # ~100, 7 sd either way


def test_healthz_sees_the_same_faults_and_is_counted_apart(client):
    with EchoService("service1") as svc:
        ok = client.get(svc.url + HEALTH_PATH)
        assert (ok.status_code, ok.text) == (200, "ok\n")
        svc.set_behaviour(error_rate=1.0)
        assert client.get(svc.url + HEALTH_PATH).status_code == 503
        assert (svc.health_checks, svc.requests) == (2, 0)


def test_behaviour_over_http_as_under_compose(client):
    with EchoService("service1") as svc:
        url = svc.url + BEHAVIOUR_PATH
        assert client.get(url).json() == {"delay": 0.0, "error_rate": 0.0, "status": 503}
        r = client.put(url, json={"error_rate": 0.25})
        assert r.status_code == 200 and r.json()["error_rate"] == 0.25
        assert svc.behaviour.error_rate == 0.25
        bad = client.put(url, json={"error_rate": 2})
        assert bad.status_code == 400 and "error_rate 2" in bad.text
        typo = client.put(url, json={"errors": 1})
        assert typo.status_code == 400 and "errors" in typo.text and "error_rate" in typo.text
        assert svc.behaviour.error_rate == 0.25  # a refused change changes nothing
        assert svc.requests == 0  # the control path is not traffic


@pytest.mark.parametrize("fields, words", [
    ({"delay": -1}, "delay -1"),
    ({"delay": 61}, "delay 61"),
    ({"error_rate": 1.5}, "error_rate 1.5"),
    ({"status": 99}, "status 99"),
    ({"status": "503"}, "status '503'"),
])
def test_behaviour_refuses_values_naming_them(fields, words):
    with pytest.raises(ValueError, match=words):
        Behaviour(**fields)
