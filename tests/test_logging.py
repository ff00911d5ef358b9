"""Request ids, Server-Timing, and the access log in both formats, on real servers.

Every request a test sends carries its own X-Request-ID where it can, so its
access line can be found by id and counted: one request, one line.
"""

import json
import re
import uuid

import pytest

from support import b64, camera_body, camera_jpeg
GENERATED_ID = re.compile(r"[0-9a-f]{32}")
TIMING_ENTRY = re.compile(r"([A-Za-z0-9!#$%&'*+.^_`|~-]+);dur=(\d+(?:\.\d+)?)")
ACCESS_KEYS = {"method", "path", "status", "bytes", "duration_ms", "request_id", "image_id", "batch_size", "error"}
# Text format: remote "METHOD path" status bytesB durationms rid=id [key=value ...], where
# a value is bare or a JSON string.
TEXT_VALUE = r'(?:"(?:[^"\\]|\\.)*"|[^\s"]+)'
TEXT_ACCESS = re.compile(
    rf'(?P<remote>\S+) (?P<request>"(?:[^"\\]|\\.)*") (?P<status>\d{{3}}) (?P<bytes>\d+)B '
    rf'(?P<duration_ms>\d+\.\d)ms rid=(?P<rid>{TEXT_VALUE})(?P<extra>(?: \w+={TEXT_VALUE})*)')
TEXT_EXTRA = re.compile(rf" (\w+)=({TEXT_VALUE})")
BASE64_RUN = re.compile(r"[A-Za-z0-9+/]{100,}")


@pytest.fixture(params=["text", "json"])
def srv(request, server, json_log_server):
    """The shared server of each log format (ServerProcess knows the ready line of both); its
    lines from this test on are srv.lines[srv.first_line:]."""
    chosen = {"text": server, "json": json_log_server}[request.param]
    chosen.log_format = request.param
    chosen.first_line = len(chosen.lines)
    return chosen


# -- reading the access log -------------------------------------------------------------------------
def _text_field(raw):
    return json.loads(raw) if raw.startswith('"') else raw


def parse_access_line(line, log_format):
    """The access fields of one output line, normalised across formats; None if it is not one."""
    if log_format == "json":
        entry = json.loads(line)
        if entry.get("logger") != "detserve.access":
            return None
        missing = ACCESS_KEYS - set(entry)
        assert not missing, f"access line lacks {missing}: {line}"
        assert isinstance(entry["status"], int) and isinstance(entry["bytes"], int)
        assert isinstance(entry["duration_ms"], (int, float))
        assert entry["batch_size"] is None or isinstance(entry["batch_size"], int)
        return entry
    match = TEXT_ACCESS.fullmatch(line)
    if match is None:
        assert not line.startswith("127.0.0.1 "), f"malformed access line: {line!r}"
        return None
    method, _, path = json.loads(match["request"]).partition(" ")
    extra = {key: _text_field(raw) for key, raw in TEXT_EXTRA.findall(match["extra"])}
    assert set(extra) <= {"image_id", "batch_size", "error"}, line
    return {"remote": match["remote"], "method": method, "path": path, "status": int(match["status"]),
            "bytes": int(match["bytes"]), "duration_ms": float(match["duration_ms"]),
            "request_id": _text_field(match["rid"]), "image_id": extra.get("image_id"),
            "batch_size": int(extra["batch_size"]) if "batch_size" in extra else None,
            "error": extra.get("error")}


def flush_log(srv):
    """Return once the access lines of every request answered so far are in srv.lines.

    A line is written just after its answer is sent, so a client can hold the
    answer before the line exists: send a marker request and wait for its line.
    """
    marker = f"marker-{uuid.uuid4().hex}"
    first_line = len(srv.lines)
    srv.request("/healthz", headers={"X-Request-ID": marker})
    srv.wait_for_line(re.escape(marker), timeout_s=15, start=first_line)


def access_entries(srv, request_id):
    """Every access entry for request_id (a duplicate line would show up as a second one)."""
    flush_log(srv)
    entries = [parse_access_line(line, srv.log_format) for line in srv.lines[srv.first_line:]]
    return [e for e in entries if e is not None and e["request_id"] == request_id]


def the_access_entry(srv, request_id):
    entries = access_entries(srv, request_id)
    assert len(entries) == 1, f"{len(entries)} access lines for {request_id}: {entries}"
    return entries[0]


def new_id(prefix):
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


# -- X-Request-ID -----------------------------------------------------------------------------------
def test_a_client_request_id_is_echoed_on_answers_and_errors(srv):
    cases = [
        ("/api/", camera_body("cam"), 200),
        ("/api/", b"{not json", 400),
        ("/healthz", None, 200),
        ("/no/such/path", None, 404),
    ]
    for path, body, status in cases:
        request_id = new_id("client.id:ok")
        headers = {"X-Request-ID": request_id, **({"Content-Type": "application/json"} if body else {})}
        got_status, headers, _ = srv.request(path, body, headers=headers)
        assert got_status == status
        assert headers["X-Request-ID"] == request_id, path


def test_a_request_id_is_generated_when_the_client_sends_none(srv):
    seen = set()
    for path, body, method in [("/api/", camera_body("cam"), None),
                               ("/api/", {"id": "bad", "image": "@@@"}, None),
                               ("/api/", None, "GET"),  # 405
                               ("/", None, None), ("/readyz", None, None), ("/metrics", None, None),
                               ("/nowhere", None, None)]:
        _, headers, _ = srv.request(path, body, method=method)
        request_id = headers["X-Request-ID"]
        assert GENERATED_ID.fullmatch(request_id), (path, request_id)
        seen.add(request_id)
    assert len(seen) == 7  # a new one each time


@pytest.mark.parametrize("unsafe", ["has spaces in it", "x" * 129, 'quote"d', "esc\x1b[2J"],
                         ids=["spaces", "too-long", "quote", "escape-sequence"])
def test_a_request_id_that_could_forge_a_log_field_is_replaced(srv, unsafe):
    _, headers, _ = srv.request("/healthz", headers={"X-Request-ID": unsafe})
    assert GENERATED_ID.fullmatch(headers["X-Request-ID"])
    flush_log(srv)
    assert not any(unsafe in line for line in srv.lines[srv.first_line:])


# -- Server-Timing --------------------------------------------------------------------------------
def parse_server_timing(value):
    """{name: duration in ms} from 'name;dur=1.5, name2;dur=3'; every entry must be well-formed."""
    entries = [entry.strip() for entry in value.split(",")]
    parsed = {}
    for entry in entries:
        match = TIMING_ENTRY.fullmatch(entry)
        assert match, f"malformed Server-Timing entry {entry!r} in {value!r}"
        assert match[1] not in parsed, f"{match[1]} twice in {value!r}"
        parsed[match[1]] = float(match[2])
    return parsed


@pytest.mark.parametrize("body, status", [(lambda: camera_body("cam"), 200),
                                          (lambda: {"id": "bad", "image": "@@@"}, 400)],
                         ids=["detection", "bad-input-found-by-a-worker"])
def test_server_timing_on_api_answers_has_queue_inference_and_total(srv, body, status):
    got_status, headers, _ = srv.request("/api/", body())
    assert got_status == status
    timings = parse_server_timing(headers["Server-Timing"])
    assert list(timings) == ["queue", "inference", "total"]


@pytest.mark.parametrize("path, body, method", [("/healthz", None, None), ("/metrics", None, None),
                                                ("/nowhere", None, None), ("/api/", None, "GET"),
                                                ("/api/", b"x", "POST")],  # 415: refused by the front end
                         ids=["healthz", "metrics", "404", "405", "415"])
def test_server_timing_on_every_response(srv, path, body, method):
    headers = {"Content-Type": "text/plain"} if body else None
    _, got_headers, _ = srv.request(path, body, method=method, headers=headers)
    assert "total" in parse_server_timing(got_headers.get("Server-Timing", ""))


# -- the access log -------------------------------------------------------------------------------
def test_one_access_line_per_request_with_every_field(srv):
    requests = [  # path, body, headers, method, status, image_id, batch_size
        ("/api/", camera_body("json-cam"), {}, None, 200, "json-cam", 1),
        ("/api/?id=raw-cam", camera_jpeg(), {"Content-Type": "image/jpeg"}, None, 200, "raw-cam", 1),
        ("/api/", b'{"id": "broken", ', {"Content-Type": "application/json"}, None, 400, None, None),
        ("/api/", {"id": "no-pixels", "image": b64(b"plain text")}, {}, None, 400,
         "no-pixels", None),
        ("/healthz", None, {}, None, 200, None, None),
        ("/metrics", None, {}, None, 200, None, None),
        ("/nowhere?x=1", None, {}, None, 404, None, None),
        ("/api/", None, {}, "DELETE", 405, None, None),
    ]
    sent = []
    for path, body, headers, method, status, image_id, batch_size in requests:
        request_id = new_id("access")
        got_status, got_headers, _ = srv.request(path, body, method=method,
                                                 headers={**headers, "X-Request-ID": request_id})
        assert got_status == status
        sent.append((request_id, path, method or ("POST" if body is not None else "GET"), status,
                     int(got_headers["Content-Length"]), image_id, batch_size))
    for request_id, path, method, status, size, image_id, batch_size in sent:
        entry = the_access_entry(srv, request_id)
        assert entry["method"] == method
        assert entry["path"] == path.split("?")[0]  # never the query string
        assert entry["status"] == status
        assert entry["bytes"] == size
        assert entry["duration_ms"] >= 0
        assert entry["image_id"] == image_id
        assert entry["batch_size"] == batch_size
        assert (entry["error"] is None) == (status < 400), entry


def test_errors_are_logged_with_their_reason(srv):
    cases = [
        ("/api/", b"{not json", {"Content-Type": "application/json"}, "not valid JSON"),
        ("/api/", b"<xml/>", {"Content-Type": "application/xml"}, "Content-Type 'application/xml' is not accepted"),
        ("/api/", {"id": "bad-b64", "image": "@@@"}, {}, "not valid base64"),
        ("/nowhere", None, {}, "no such path '/nowhere'"),
    ]
    for path, body, headers, reason in cases:
        request_id = new_id("error")
        status, _, payload = srv.request(path, body, headers={**headers, "X-Request-ID": request_id})
        assert status >= 400
        entry = the_access_entry(srv, request_id)
        assert reason in entry["error"]
        assert entry["error"] == payload["error"]  # the client and the operator read the same reason


def test_a_hostile_image_id_or_path_stays_on_one_line(srv):
    image_id = 'evil\n127.0.0.1 "GET /forged" 200 0B 0.0ms rid=forged\x1b[2J'
    request_id = new_id("hostile")
    status, _, payload = srv.request("/api/", camera_body(image_id),
                                     headers={"X-Request-ID": request_id})
    assert status == 200 and payload["id"] == image_id
    assert the_access_entry(srv, request_id)["image_id"] == image_id
    path_id = new_id("hostile-path")
    srv.request('/quote"d', headers={"X-Request-ID": path_id})
    assert the_access_entry(srv, path_id)["path"] == '/quote"d'
    written = srv.lines[srv.first_line:]
    assert not any("forged" in line and "hostile" not in line and "evil" not in line for line in written)
    assert not any("\x1b" in line for line in written)


def test_json_format_writes_only_json_lines(srv):
    if srv.log_format != "json":
        pytest.skip("the JSON format only")
    srv.request("/api/", camera_body("cam"))
    flush_log(srv)
    for line in srv.lines:  # everything the server printed since it started
        entry = json.loads(line)
        assert isinstance(entry, dict) and {"ts", "level", "logger"} <= set(entry), line
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", entry["ts"]), line
        if entry["logger"] != "detserve.access":
            assert entry["message"], line


def test_image_data_never_reaches_the_log(srv):
    camera, camera_b64 = camera_jpeg(), b64(camera_jpeg())
    bodies = [
        ({"id": "cam", "image": camera_b64}, {}),
        ({"id": "data-url", "image": "data:image/jpeg;base64," + camera_b64}, {}),
        ({"id": "truncated", "image": camera_b64[: len(camera_b64) // 2]}, {}),
        ({"id": "not-an-image", "image": b64(camera[200:])}, {}),
        ({"id": "bad-b64", "image": camera_b64[:5000] + "!!!" + camera_b64[5000:10000]}, {}),
        (camera, {"Content-Type": "image/jpeg"}),
        (camera[: len(camera) // 3], {"Content-Type": "image/jpeg"}),  # a truncated raw JPEG
    ]
    statuses = [srv.request("/api/", body, headers=headers)[0] for body, headers in bodies]
    assert statuses == [200, 200, 400, 400, 400, 200, 400]
    flush_log(srv)
    pieces = [camera_b64[i:i + 40] for i in range(0, len(camera_b64) - 40, len(camera_b64) // 7)]
    for line in srv.lines[srv.first_line:]:
        assert not BASE64_RUN.search(line), line[:200]
        assert not any(piece in line for piece in pieces), line[:200]
        assert "\\xff\\xd8" not in line and "\ufffd" not in line  # nor raw JPEG bytes


def test_the_api_key_never_appears_in_the_output(keyed_server):
    """What it prints while stopping is checked where a key is read from a file (test_reliability)."""
    srv, api_key = keyed_server, keyed_server.api_key
    srv.log_format, srv.first_line = "text", 0
    wrong_key = "sk-wrong-" + uuid.uuid4().hex
    attempts = [
        ({}, 401),
        ({"Authorization": f"Bearer {wrong_key}"}, 401),
        ({"Authorization": f"Basic {api_key}"}, 401),  # the right key, the wrong scheme
        ({"Authorization": f"Bearer {api_key}x"}, 401),
        ({"Authorization": f"Bearer {api_key}"}, 200),
    ]
    for headers, status in attempts:
        request_id = new_id("auth")
        got_status, got_headers, payload = srv.request("/api/", camera_body("cam"),
                                                       headers={**headers, "X-Request-ID": request_id})
        assert got_status == status
        assert api_key not in json.dumps(payload) and api_key not in str(got_headers)
        entry = the_access_entry(srv, request_id)
        if status == 401:
            assert "API key" in entry["error"]
    assert any("'api_key': 'set'" in line for line in srv.lines)  # the settings line says only that
    output = "\n".join(srv.lines)
    assert api_key not in output
    assert wrong_key not in output
    assert api_key[len("sk-detserve-"):] not in output
