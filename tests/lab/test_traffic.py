"""Background traffic (lab.traffic.Traffic): steady requests, each one recorded, failures named."""

from __future__ import annotations

import ssl
import time

import pytest

from labxds.lab import EchoService
from labxds.lab.traffic import Traffic, _der_serial, server_certificate
from labxds.net.http_server import HttpServer


def test_traffic_records_every_request_at_about_its_rate():
    with EchoService("service1") as svc:
        traffic = Traffic(svc.url, rate=40, workers=2).start()
        time.sleep(1.0)
        summary = traffic.stop()
        assert not traffic.running
    # 40/s for ~1 s; a loaded CI machine sends fewer, never a burst of more
    assert 15 <= summary["requests"] <= 48, summary
    assert summary["failed"] == 0 and summary["success_rate"] == 1.0
    assert summary["served_by"] == {"service1": summary["requests"]}
    assert svc.requests == summary["requests"]
    rows = traffic.records()
    assert [r["t"] for r in rows] == sorted(r["t"] for r in rows)
    assert {r["worker"] for r in rows} == {0, 1}
    seconds = traffic.per_second(0.5)
    assert sum(b["requests"] for b in seconds) == summary["requests"]
    assert all(b["failed"] == 0 for b in seconds)


def test_failures_are_named_and_placed_in_time():
    svc = EchoService("service1").start()
    traffic = Traffic(svc.url, rate=40, workers=1).start()
    try:
        time.sleep(0.4)
        traffic.mark("failing")
        t_fail = traffic.marks[-1][0]
        svc.set_behaviour(error_rate=1.0, status=502)
        time.sleep(0.4)
        traffic.mark("stopping")
        t_stopping = traffic.marks[-1][0]
        svc.stop()
        traffic.mark("stopped")
        t_down = traffic.marks[-1][0]
        time.sleep(0.4)
    finally:
        summary = traffic.stop()
        svc.stop()
    assert [label for _, label in traffic.marks] == ["failing", "stopping", "stopped"]
    before = [r for r in traffic.records() if r["t"] + r["latency_ms"] / 1000 < t_fail]  # answered before
    assert before and all(r["failure"] is None for r in before), [r["failure"] for r in before if r["failure"]]
    failing = [r for r in traffic.records() if t_fail + 0.05 < r["t"] < t_stopping]
    assert failing and all(r["failure"].startswith("502 service1 fails on purpose") for r in failing)
    down = [r for r in traffic.records() if r["t"] > t_down + 0.05]
    assert down and all(r["failure"] == "connection refused" for r in down), {r["failure"] for r in down}
    assert summary["failed"] == len(traffic.failures()) == sum(summary["failures"].values())
    assert summary["ok"] + summary["failed"] == summary["requests"]


def test_traffic_refuses_nonsense():
    with pytest.raises(ValueError, match="rate 0"):
        Traffic(1234, rate=0)
    with pytest.raises(ValueError, match="workers 0"):
        Traffic(1234, workers=0)


def test_server_certificate_reads_the_serial_as_envoy_prints_it(tmp_path):
    from labxds.tls import issue, make_ca

    ca = make_ca("test CA")
    cert = issue(ca, "localhost", server=True, dns_names=["localhost"], ip_addresses=["127.0.0.1"])
    cert_path, key_path = cert.write(tmp_path / "c.pem", tmp_path / "k.pem")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(cert_path), str(key_path))
    server = HttpServer(("127.0.0.1", 0), _Hello, context=context).start()
    try:
        url = f"https://127.0.0.1:{server.port}"
        seen = server_certificate(url, ca.cert_pem)
        assert seen["serial"] == cert.serial
        assert "127.0.0.1" in seen["names"] and "localhost" in seen["names"]
        assert server_certificate(url)["serial"] == cert.serial  # unverified: which, not whether
        with pytest.raises(ssl.SSLError):
            server_certificate(url, make_ca("another CA").cert_pem)
    finally:
        server.stop()


def test_der_serial_keeps_whole_bytes():
    from labxds.tls import issue, make_ca

    ca = make_ca()
    for _ in range(20):  # one serial in eight starts with a zero nibble; a few start with 0x80+
        cert = issue(ca, "x", server=True)
        from cryptography.hazmat.primitives.serialization import Encoding

        assert _der_serial(cert.certificate.public_bytes(Encoding.DER)) == cert.serial
        assert len(cert.serial) % 2 == 0


from http.server import BaseHTTPRequestHandler  # noqa: E402


class _Hello(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"hi")

    def log_message(self, *args):
        pass


class _AnswersOncePerConnection:
    """A server that answers the first request on each connection with keep-alive, then closes
    the connection when the second one arrives, without a word: what a client sees when a drained
    listener's connection closes as it sends."""

    def __init__(self) -> None:
        import socket
        import threading

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.closed_under_a_request = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        import threading

        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn) -> None:
        with conn:
            if not conn.recv(65536):
                return
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 27\r\n\r\nRequest served by keepalive")
            if conn.recv(65536):
                self.closed_under_a_request += 1  # and close without answering

    def close(self) -> None:
        self.sock.close()


@pytest.mark.parametrize("retry_closed", [True, False])
def test_a_connection_closed_under_a_request_is_retried_once_like_browsers_do(retry_closed):
    server = _AnswersOncePerConnection()
    try:
        traffic = Traffic(f"http://127.0.0.1:{server.port}", rate=30, workers=1, retry_closed=retry_closed).start()
        time.sleep(1.0)
        summary = traffic.stop()
    finally:
        server.close()
    assert server.closed_under_a_request >= 5
    if retry_closed:
        assert summary["failed"] == 0 and summary["retried"] >= 5, summary
        retried = [r for r in traffic.records() if r["retried"]]
        assert {r["retried"] for r in retried} <= {"empty reply from server", "connection reset by peer"}
        assert all(r["served_by"] == "keepalive" for r in retried)
    else:
        assert summary["retried"] == 0 and summary["failed"] >= 5, summary
        assert set(summary["failures"]) <= {"empty reply from server", "connection reset by peer"}
