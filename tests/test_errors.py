"""Every documented error: the right status, a JSON body with a reason, and the server keeps serving."""

import base64
import json
import socket
import struct
import zlib

import pytest

from conftest import INPUT_FOLDER
from reference import assert_same_detections, reference_detections

CAMERA = (INPUT_FOLDER / "camera.jpg").read_bytes()


def b64(data):
    return base64.b64encode(data).decode()


def png_claiming(width, height):
    """A tiny, well-formed PNG whose header claims width x height pixels."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def raw_exchange(port, request_bytes, timeout_s=15):
    """Send raw bytes, return (status, parsed JSON body) of the first response."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
        sock.sendall(request_bytes)
        received = b""
        while b"\r\n\r\n" not in received:
            chunk = sock.recv(65536)
            if not chunk:
                break
            received += chunk
        head, _, body = received.partition(b"\r\n\r\n")
        length = int([line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")][0])
        while len(body) < length:
            body += sock.recv(65536)
    status = int(head.split(b" ")[1])
    return status, head.decode(), json.loads(body[:length])


def assert_still_serving(server):
    status, _, payload = server.request("/api/", {"id": "after", "image": b64(CAMERA)})
    assert status == 200
    assert_same_detections(payload["detections"], reference_detections(CAMERA))


JSON_CASES = [
    ("not json", b"{this is not json", 400, "not valid JSON"),
    ("not an object", b"[1, 2, 3]", 400, "must be an object"),
    ("no image", json.dumps({"id": "x"}).encode(), 400, 'no "image"'),
    ("no id", json.dumps({"image": b64(CAMERA)}).encode(), 400, 'no "id"'),
    ("numeric id", json.dumps({"id": 7, "image": b64(CAMERA)}).encode(), 400, '"id" must be a string'),
    ("image not a string", json.dumps({"id": "x", "image": 12}).encode(), 400, "base64 string"),
    ("invalid base64", json.dumps({"id": "x", "image": "@@@not base64@@@"}).encode(), 400, "not valid base64"),
    ("not an image", json.dumps({"id": "x", "image": b64(b"hello world, not a picture")}).encode(), 400,
     "neither a JPEG nor a PNG"),
    ("truncated jpeg", json.dumps({"id": "x", "image": b64(CAMERA[: len(CAMERA) // 2])}).encode(), 400, "truncated"),
    ("invalid utf-8", b'{"id": "\xff\xfe", "image": ""}', 400, "UTF-8"),
    ("deep nesting", b"[" * 100000 + b"]" * 100000, 400, "objects, arrays or commas"),
    ("wide json", b"[" + b'"a",' * 1_000_000 + b'"a"]', 400, "objects, arrays or commas"),
    ("pixel bomb", json.dumps({"id": "bomb", "image": b64(png_claiming(100000, 100000))}).encode(), 413,
     "pixel limit"),
]


@pytest.mark.parametrize("name, body, status, reason", JSON_CASES, ids=[c[0] for c in JSON_CASES])
def test_bad_json_requests_get_a_clear_error(server, name, body, status, reason):
    got_status, headers, payload = server.request("/api/", body, headers={"Content-Type": "application/json"})
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
    status, _, payload = raw_exchange(
        server.port, b"POST /api/ HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\r\n")
    assert status == 411 and "Content-Length" in payload["error"]


def test_chunked_body_is_411(server):
    status, _, payload = raw_exchange(
        server.port, b"POST /api/ HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                     b"Content-Type: application/json\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
    assert status == 411 and "chunked" in payload["error"]


def test_body_over_the_limit_is_413_without_reading_it(server):
    status, head, payload = raw_exchange(
        server.port, b"POST /api/ HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 30000000\r\n\r\n")
    assert status == 413 and "limit" in payload["error"]
    assert "Connection: close" in head


def test_other_content_type_is_415(server):
    status, _, payload = server.request("/api/", b"id=1", headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert status == 415 and "application/json" in payload["error"]


def test_malformed_request_line_gets_json_not_html(server):
    status, head, payload = raw_exchange(server.port, b"GARBAGE\r\n\r\n")
    assert status == 400
    assert "application/json" in head and "error" in payload


def test_the_server_keeps_serving_after_every_error(server):
    for _, body, _, _ in JSON_CASES:
        server.request("/api/", body, headers={"Content-Type": "application/json"})
    assert_still_serving(server)


def test_a_refused_body_is_never_read_as_the_next_request(server):
    """A 404/405 for a POST with a body closes the connection instead of leaving the body unread."""
    body = b'{"id": "x", "image": "' + b"A" * 70000 + b'"}'
    for path in (b"/nope/", b"/healthz"):
        status, head, payload = raw_exchange(
            server.port, b"POST " + path + b" HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Content-Length: %d\r\n\r\n" % len(body) + body)
        assert status in (404, 405)
        assert "Connection: close" in head


def test_expect_100_continue_is_answered_before_the_body_and_only_after_the_checks(server):
    body = b'{"id": "expect", "image": "' + base64.b64encode(CAMERA) + b'"}'
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
    status, head, _ = raw_exchange(server.port, b"POST /api/ HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
                                                b"Content-Length: 30000000\r\n\r\n")
    assert status == 413 and "100 Continue" not in head


@pytest.mark.parametrize("headers, status, reason", [
    (b"Transfer-Encoding: identity\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n", 411, "Transfer-Encoding"),
    (b"Content-Length: 5\r\nContent-Length: 7\r\n", 400, "more than one Content-Length"),
    ("Content-Length: \u00b2\r\n".encode("latin-1"), 400, "not a number"),
    (b"Content-Length: " + b"9" * 5000 + b"\r\n", 400, "not a number"),
], ids=["two-transfer-encodings", "two-content-lengths", "superscript-digit", "5000-digits"])
def test_ambiguous_body_framing_is_refused(server, headers, status, reason):
    got, head, payload = raw_exchange(server.port, b"POST /api/ HTTP/1.1\r\nHost: x\r\n" + headers + b"\r\nhello")
    assert got == status and reason in payload["error"]
    assert "Connection: close" in head
