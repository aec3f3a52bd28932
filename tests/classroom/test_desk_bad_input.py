"""The workshop desk refuses bad requests with a 4xx that says why (issue 17).

Before: a deeply nested JSON body or a negative Content-Length got no answer (the connection
closed, a traceback in the log), and a learner's push timeout was taken as given (1e12, NaN)."""

from __future__ import annotations

import json
import socket

import pytest

from labxds.classroom import Workshop
from labxds.classroom.desk import DESK_BUDGET, MAX_PUSH_TIMEOUT


@pytest.fixture(scope="module")
def desk():
    ws = Workshop(port=0).start()
    host, port = ws.desk_url.rsplit("/", 1)[1].rsplit(":", 1)
    yield host, int(port)
    ws.stop()


def raw_post(desk, body: bytes, headers: dict[str, str] | None = None, path: str = "/v1/learners/zed/snapshot",
             send: bytes | None = None) -> tuple[int, dict]:
    """POST over a plain socket (any header, any lie about the length); (status, JSON answer)."""
    host, port = desk
    head = {"Host": f"{host}:{port}", "Content-Type": "application/json", "Content-Length": str(len(body))}
    head.update(headers or {})
    request = f"POST {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in head.items()) + "\r\n"
    with socket.create_connection((host, port), timeout=10) as s:
        s.sendall(request.encode() + (body if send is None else send))
        s.shutdown(socket.SHUT_WR) if send is not None else None
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(65536)
            assert chunk, f"the desk closed the connection without an answer: {data!r}"
            data += chunk
        head_text, _, rest = data.partition(b"\r\n\r\n")
        length = next(int(line.split(b":")[1]) for line in head_text.split(b"\r\n") if line.lower().startswith(b"content-length"))
        while len(rest) < length:
            chunk = s.recv(65536)
            assert chunk
            rest += chunk
    return int(head_text.split()[1]), json.loads(rest[:length])


def test_deeply_nested_json_gets_400_naming_the_depth(desk):
    for depth in (150, 100_000):
        status, answer = raw_post(desk, b"[" * depth + b"]" * depth)
        assert status == 400, answer
        assert "nests deeper than 100 levels" in answer["error"]


@pytest.mark.parametrize("length", ["-1", "-100000", "abc", "1e3", "5, 7"])
def test_a_content_length_that_is_no_length_gets_400(desk, length):
    status, answer = raw_post(desk, b"{}", {"Content-Length": length}, send=b"{}")
    assert status == 400 and "Content-Length must be a whole number of bytes" in answer["error"]


def test_a_body_over_the_limit_gets_413_before_it_is_read(desk):
    huge = DESK_BUDGET.max_bytes + 1
    status, answer = raw_post(desk, b"", {"Content-Length": str(huge)}, send=b"{")
    assert status == 413 and f"{huge:,} bytes" in answer["error"]
    status, answer = raw_post(desk, b"", {"Content-Length": str(10**30)}, send=b"{")
    assert status == 413


def test_a_body_shorter_than_announced_gets_400(desk):
    status, answer = raw_post(desk, b"", {"Content-Length": "100"}, send=b'{"resources": []}')
    assert status == 400 and "ended after 17 of the 100 bytes" in answer["error"]


def test_chunked_bodies_get_411(desk):
    status, answer = raw_post(desk, b"", {"Transfer-Encoding": "chunked", "Content-Length": "0"}, send=b"0\r\n\r\n")
    assert status == 411


@pytest.mark.parametrize("timeout", ["NaN", "Infinity", "-Infinity", "1e12", "0", "-5", '"10"', "true", "null",
                                     str(MAX_PUSH_TIMEOUT + 1)])
def test_push_timeouts_are_finite_positive_and_under_the_ceiling(desk, timeout):
    status, answer = raw_post(desk, b'{"resources": [], "timeout": %s}' % timeout.encode())
    assert status == 400, answer
    assert f"timeout must be a number of seconds above 0 and at most {MAX_PUSH_TIMEOUT:g}" in answer["error"]


def test_a_timeout_within_the_ceiling_is_taken(desk):
    status, answer = raw_post(desk, b'{"resources": [], "timeout": 0.5, "wait": false}')
    assert status == 200, answer


@pytest.mark.parametrize("body, words", [
    (b"[]", "must be a JSON object, not list"),
    (b'"x"', "must be a JSON object, not str"),
    (b'{"resources": 5}', "resources must be a list"),
    (b'{"resources": [5]}', "resource #0: cannot decode"),
    (b'{"resources": [], "wait": "yes"}', "wait must be true or false"),
    (b'{"resources": [], "version": [1]}', "version must be a string"),
    (b"\xff\xfe", "not JSON"),
])
def test_bodies_of_the_wrong_shape_get_400_in_words(desk, body, words):
    status, answer = raw_post(desk, body)
    assert status == 400 and words in answer["error"], answer


def test_a_result_of_the_wrong_shape_gets_400(desk):
    status, answer = raw_post(desk, b'{"exercise": ["x"]}', path="/v1/learners/zed/result")
    assert status == 400


def test_the_desk_still_answers_after_all_that(desk):
    status, answer = raw_post(desk, b'{"resources": [], "wait": false}')
    assert status == 200
