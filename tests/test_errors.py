"""Every documented error: the right status, a JSON body with a reason, and the server keeps serving."""

import json
import socket

import pytest

from support import assert_still_serving, b64, camera_body, camera_jpeg, camera_json, png_claiming, raw_exchange


def json_body(document):
    """A body built when a test runs, so collecting the tests reads no image file."""
    return lambda: json.dumps(document() if callable(document) else document).encode()


JSON_CASES = [  # (name, body builder, status, reason)
    ("not json", lambda: b"{this is not json", 400, "not valid JSON"),
    ("not an object", lambda: b"[1, 2, 3]", 400, "must be an object"),
    ("no image", json_body({"id": "x"}), 400, 'no "image"'),
    ("no id", json_body(lambda: {"image": b64(camera_jpeg())}), 400, 'no "id"'),
    ("numeric id", json_body(lambda: {**camera_body(), "id": 7}), 400, '"id" must be a string'),
    ("image not a string", json_body({"id": "x", "image": 12}), 400, "base64 string"),
    ("invalid base64", json_body({"id": "x", "image": "@@@not base64@@@"}), 400, "not valid base64"),
    ("not an image", json_body(lambda: {"id": "x", "image": b64(b"hello world, not a picture")}), 400,
     "neither a JPEG nor a PNG"),
    ("truncated jpeg", json_body(lambda: {"id": "x", "image": b64(camera_jpeg()[: len(camera_jpeg()) // 2])}), 400,
     "truncated"),
    ("invalid utf-8", lambda: b'{"id": "\xff\xfe", "image": ""}', 400, "UTF-8"),
    ("deep nesting", lambda: b"[" * 100000 + b"]" * 100000, 400, "objects, arrays or commas"),
    ("wide json", lambda: b"[" + b'"a",' * 1_000_000 + b'"a"]', 400, "objects, arrays or commas"),
    ("pixel bomb", json_body(lambda: {"id": "bomb", "image": b64(png_claiming(100000, 100000))}), 413,
     "pixel limit"),
]


@pytest.mark.parametrize("name, body, status, reason", JSON_CASES, ids=[c[0] for c in JSON_CASES])
def test_bad_json_requests_get_a_clear_error(server, name, body, status, reason):
    got_status, headers, payload = server.request("/api/", body(), headers={"Content-Type": "application/json"})
    assert got_status == status, payload
    assert headers["Content-Type"] == "application/json"
    assert reason in payload["error"]
    assert "Traceback" not in payload["error"]


def test_error_names_the_id_when_it_is_known(server):
    status, _, payload = server.request("/api/", {"id": "known", "image": "@@@"})
    assert status == 400
    assert payload["id"] == "known"


def test_unknown_path_is_404_and_wrong_method_is_405(server):
    status, _, payload = server.request("/nope")
    assert status == 404 and "POST /api/" in payload["error"]
    status, headers, payload = server.request("/api/")  # GET
    assert status == 405 and headers["Allow"] == "POST"
    status, headers, _ = server.request("/healthz", b"{}", method="POST")
    assert status == 405 and "GET" in headers["Allow"]


def test_missing_content_length_is_411(server):
    response = raw_exchange(
        server.port, b"POST /api/ HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\r\n")
    assert response.status == 411 and "Content-Length" in response.json()["error"]


def test_chunked_body_is_411(server):
    response = raw_exchange(
        server.port, b"POST /api/ HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                     b"Content-Type: application/json\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
    assert response.status == 411 and "chunked" in response.json()["error"]


def test_body_over_the_limit_is_413_without_reading_it(server):
    response = raw_exchange(
        server.port, b"POST /api/ HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 30000000\r\n\r\n")
    assert response.status == 413 and "limit" in response.json()["error"]
    assert "Connection: close" in response.head


def test_other_content_type_is_415(server):
    status, _, payload = server.request("/api/", b"id=1", headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert status == 415 and "application/json" in payload["error"]


def test_malformed_request_line_gets_json_not_html(server):
    response = raw_exchange(server.port, b"GARBAGE\r\n\r\n")
    assert response.status == 400
    assert "application/json" in response.head and "error" in response.json()


def test_the_server_keeps_serving_after_every_error(server):
    for _, body, _, _ in JSON_CASES:
        server.request("/api/", body(), headers={"Content-Type": "application/json"})
    assert_still_serving(server)


def test_a_refused_body_is_never_read_as_the_next_request(server):
    """A 404/405 for a POST with a body closes the connection instead of leaving the body unread."""
    body = b'{"id": "x", "image": "' + b"A" * 70000 + b'"}'
    for path in (b"/nope/", b"/healthz"):
        response = raw_exchange(
            server.port, b"POST " + path + b" HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Content-Length: %d\r\n\r\n" % len(body) + body)
        assert response.status in (404, 405) and "error" in response.json()
        assert "Connection: close" in response.head


def test_expect_100_continue_is_answered_before_the_body_and_only_after_the_checks(server):
    body = camera_json("expect")
    head = (b"POST /api/ HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nExpect: 100-continue\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body))
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(head)
        interim = sock.recv(1024)  # a client waits for this before sending a large body
        assert interim.startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
        sock.sendall(body)
        response = b""
        while b'"detections"' not in response:
            chunk = sock.recv(65536)
            assert chunk, response
            response += chunk
    assert response.startswith(b"HTTP/1.1 200")
    # A request refused on its headers gets the refusal, not an invitation to send 30 MB.
    response = raw_exchange(server.port, b"POST /api/ HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
                                         b"Content-Length: 30000000\r\n\r\n")
    assert response.status == 413 and "100 Continue" not in response.head


@pytest.mark.parametrize("headers, status, reason", [
    (b"Transfer-Encoding: identity\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n", 411, "Transfer-Encoding"),
    (b"Content-Length: 5\r\nContent-Length: 7\r\n", 400, "more than one Content-Length"),
    ("Content-Length: \u00b2\r\n".encode("latin-1"), 400, "not a number"),
    (b"Content-Length: " + b"9" * 5000 + b"\r\n", 400, "not a number"),
], ids=["two-transfer-encodings", "two-content-lengths", "superscript-digit", "5000-digits"])
def test_ambiguous_body_framing_is_refused(server, headers, status, reason):
    response = raw_exchange(server.port, b"POST /api/ HTTP/1.1\r\nHost: x\r\n" + headers + b"\r\nhello")
    assert response.status == status and reason in response.json()["error"]
    assert "Connection: close" in response.head
