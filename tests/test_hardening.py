"""Regression tests for what an attacker found: bodies that kill a worker, CPU amplification
inside the documented caps, lenient head parsing, a 500 that cannot be found, front-end memory
without bound, running out of file descriptors; one or more tests each.

Real sockets on 127.0.0.1, real server subprocesses with the real model, real
images. Each test says in its docstring what went wrong before and what it checks now. Memory is measured as
VmRSS from /proc, CPU time from /proc/<pid>/stat; nothing asserts on latency.

"""

import json
import os
import resource
import select
import signal
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pytest

from bench.proc_stats import rss_mb
from detserve.worker.image_decoding import DECODE_BUDGET_NS, decode_cost_ns, reduction_factor
from detserve.worker.image_header import read_header
from reference import assert_same_detections, reference_detections
from support import (ServerProcess, assert_still_serving, b64, camera_body, camera_json, camera_jpeg, metric_value,
                     open_connections, poll_until, raw_exchange, read_response, unread_bytes, wait_until,
                     wait_until_ready)

MIB = 1024 * 1024
RECV_TIMEOUT_S = 10  # a healthy answer takes well under a second; this only stops a hang


# -- measuring a process -------------------------------------------------------------------------

def cpu_time_s(pid):
    """User + system CPU time of a whole process (every thread), from /proc/<pid>/stat."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()  # the command name may hold spaces
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def post_json(srv, body, timeout_s=60):
    return srv.request("/api/", body, headers={"Content-Type": "application/json"}, timeout_s=timeout_s)


def assert_valid_answer(answer, image_bytes=None, image_id="valid"):
    status, _, payload = answer
    assert status == 200, (status, payload)
    assert payload["id"] == image_id
    assert_same_detections(payload["detections"], reference_detections(image_bytes or camera_jpeg()))


# -- raw HTTP ------------------------------------------------------------------------------------

def connect(port, timeout_s=RECV_TIMEOUT_S):
    return socket.create_connection(("127.0.0.1", port), timeout=timeout_s)


def closed_by_server(sock, timeout_s=3):
    """True if the server closed the connection (EOF or reset) within timeout_s."""
    sock.settimeout(timeout_s)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False


def exchange(port, request_bytes):
    """Send raw bytes on a new connection; return (RawResponse, closed_by_server)."""
    with connect(port) as sock:
        sock.sendall(request_bytes)
        response = read_response(sock)
        return response, closed_by_server(sock)


def answered_within(sock, timeout_s):
    return bool(select.select([sock], [], [], timeout_s)[0])


def in_flight(srv):
    return metric_value(srv, "detserve_in_flight_requests")


def the_kernel_buffers_nothing_for(srv):
    """Wait until the server has read every byte its clients sent (what it holds is then in its RSS)."""
    wait_until(lambda: unread_bytes(srv.port) == 0, "the server read what the kernel buffered")


# The shared json_log_server (conftest) serves the first four sections below: one worker, so every
# request meets the same worker; JSON logs; room for 20 MB bodies.


# == A few kilobytes kill a worker =================================================================

def escaped(text):
    """JSON text with its structure hidden: every '{', '[' and ',' as a \\u escape."""
    return text.replace("{", r"\u007b").replace("[", r"\u005b").replace(",", r"\u002c")


def double_encoded(inner_text):
    """A body that is a JSON string holding inner_text, its structure escaped, its quotes escaped."""
    return ('"' + escaped(inner_text.replace('"', r'\"')) + '"').encode()


# (body, the id its 400 names: none when the shape is refused before parsing). The first two
# once killed the worker (RecursionError in the inner json.loads); the others probe for other
# exceptions and must stay a plain 400.
HOSTILE_JSON = {
    "5000-nested-arrays": (double_encoded("[" * 5000 + "]" * 5000), None),
    "5000-nested-objects-in-image": (
        double_encoded('{"id": "x", "image": ' + '{"a": ' * 5000 + "1" + "}" * 5001), None),
    "50000-objects": (double_encoded("[" + "{}," * 50000 + "{}]"), None),
    "50000-commas-in-image": (double_encoded('{"id": "x", "image": [' + "1," * 50000 + "1]}"), None),
    "5000-digit-id": (double_encoded('{"id": ' + "7" * 5000 + ', "image": "x"}'), None),
    "huge-exponent-id": (double_encoded('{"id": 1e999999, "image": "x"}'), None),
    "nan-image": (b'{"id": "x", "image": NaN}', "x"),
}


@pytest.mark.parametrize("body, image_id", HOSTILE_JSON.values(), ids=HOSTILE_JSON.keys())
def test_escaped_json_structure_is_a_400_and_never_ends_the_worker(json_log_server, body, image_id):
    """Double-encoded bodies whose structure hides behind \\u escapes get 400 and leave
    the worker alone; a valid request sent with them and one sent after get their correct
    detections. (Before the fix the first two ended the worker: every request it held got 503.)"""
    srv = json_log_server
    wait_until_ready(srv)
    pids_before = srv.worker_pids()
    restarts_before = metric_value(srv, "detserve_worker_restarts_total")
    with ThreadPoolExecutor(max_workers=3) as pool:
        # Valid requests before and after the hostile one: queued at the same worker.
        before = pool.submit(post_json, srv, camera_json("valid"))
        wait_until(lambda: before.done() or in_flight(srv) >= 1, "the request before it in flight")
        hostile = pool.submit(post_json, srv, body)
        wait_until(lambda: hostile.done() or in_flight(srv) >= 2, "the hostile request in flight")
        beside = pool.submit(post_json, srv, camera_json("valid"))
        status, _, payload = hostile.result()
        concurrent_answers = [before.result(), beside.result()]
    assert status == 400, (status, payload)
    assert payload["error"] and payload["id"] == image_id, payload
    assert srv.worker_pids() == pids_before, "the worker was replaced"
    assert metric_value(srv, "detserve_worker_restarts_total") == restarts_before
    for answer in concurrent_answers:
        assert_valid_answer(answer)
    assert_valid_answer(post_json(srv, camera_json("valid")))


def test_a_20_mb_body_of_escaped_objects_leaves_the_worker_near_its_baseline(json_log_server):
    """20 MB of double-encoded, escaped `{},` (1.6 million objects after decoding) is refused,
    and the worker's RSS ends within +40 MB of before (before the fix it kept ~+140 MB for good)."""
    srv = json_log_server
    wait_until_ready(srv)
    assert_valid_answer(post_json(srv, camera_json("valid")))  # the worker at its working size
    (worker,) = srv.worker_pids()
    before_mb = rss_mb(worker)
    unit = r"\u007b}\u002c"  # '{},' escaped
    head, tail = r'"\u007b\"id\": \"x\"\u002c \"image\": \u005b', r'\u007b}]}"'
    body = (head + unit * ((20 * MIB - len(head) - len(tail)) // len(unit)) + tail).encode()
    status, _, payload = post_json(srv, body)
    assert status in (400, 413), (status, payload)
    # One more request so the worker lets go of the big task it last held.
    assert_valid_answer(post_json(srv, camera_json("valid")))
    assert srv.worker_pids() == [worker], "the worker died"
    growth_mb = rss_mb(worker) - before_mb
    assert growth_mb < 40, f"worker RSS grew {growth_mb:.0f} MB ({before_mb:.0f} MB before)"


# == CPU amplification inside the documented caps ===================================================

def progressive_jpeg(image, extra_scans=0):
    """A progressive JPEG from OpenCV (10 scans), with its last scan repeated extra_scans times.

    A repeated refinement scan of an all-grey picture is a few dozen bytes, yet each one makes
    libjpeg walk every block of the frame again.
    """
    data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1, cv2.IMWRITE_JPEG_QUALITY, 50])[1].tobytes()
    last_scan = data.rindex(b"\xff\xda")
    return data[:-2] + data[last_scan:-2] * extra_scans + b"\xff\xd9"


def test_a_small_jpeg_declaring_40_mp_and_100_scans_is_refused_before_decoding(json_log_server):
    """~240 KB, 7300x5470 (39.9 MP, under --max-pixels), 100 scans: before the fix seconds of decoding in
    the worker; now a 413 from the decoding budget, naming the image's pixels and scans."""
    bomb = progressive_jpeg(np.full((5470, 7300, 3), 128, np.uint8), extra_scans=90)
    assert len(bomb) < 400_000 and bomb.count(b"\xff\xda") == 100
    status, _, payload = json_log_server.request("/api/?id=scans", bomb, headers={"Content-Type": "image/jpeg"})
    assert status == 413, (status, str(payload)[:200])
    assert "scan" in payload["error"] and "pixel" in payload["error"], payload


def test_an_ordinary_12_mp_progressive_jpeg_is_still_served(json_log_server):
    """The budget leaves real photos alone (4000x3000, OpenCV's 10 scans)."""
    photo = progressive_jpeg(cv2.resize(cv2.imdecode(np.frombuffer(camera_jpeg(), np.uint8), cv2.IMREAD_COLOR),
                                        (4000, 3000), interpolation=cv2.INTER_CUBIC))
    assert photo.count(b"\xff\xda") == 10
    status, _, payload = json_log_server.request("/api/?id=photo", photo, headers={"Content-Type": "image/jpeg"})
    assert status == 200 and payload["id"] == "photo", (status, payload)


def test_the_decoding_budget_covers_all_the_images_of_a_request(json_log_server):
    """The same amplification through a multi-image body: 12 MP progressive photos fit one
    request's decoding budget only so many times; the ones past it get their own 413, and the
    ones before it their detections."""
    photo = progressive_jpeg(cv2.resize(cv2.imdecode(np.frombuffer(camera_jpeg(), np.uint8), cv2.IMREAD_COLOR),
                                        (4000, 3000), interpolation=cv2.INTER_CUBIC))
    header = read_header(photo)
    fitting = int(DECODE_BUDGET_NS // decode_cost_ns(header, reduction_factor(header, "auto")))
    assert 2 <= fitting <= 8, fitting  # an ordinary photo: several fit, sixteen do not
    count = fitting + 2
    body = {"images": [{"id": f"p{i}", "image": b64(photo)} for i in range(count)]}
    status, _, payload = json_log_server.request("/api/", body, timeout_s=120)
    assert status == 200, payload
    results = payload["results"]
    assert [r["id"] for r in results] == [f"p{i}" for i in range(count)]
    assert all("detections" in r for r in results[:fitting]), results
    for refused in results[fitting:]:
        assert refused["status"] == 413 and " ms " in refused["error"], refused


# == Lenient header parsing ==========================================================================

def post_with(*header_lines, body=camera_json("valid")):
    head = [b"POST /api/ HTTP/1.1", b"Host: t", b"Content-Type: application/json",
            b"Content-Length: %d" % len(body), *header_lines]
    return b"\r\n".join(head) + b"\r\n\r\n" + body


MALFORMED_HEADS = {
    # Content-Length first: today the colon-less name ends the headers, the body is framed by it.
    "space-before-colon-transfer-encoding": post_with(b"Transfer-Encoding : chunked"),
    "space-before-colon-host": b"GET /healthz HTTP/1.1\r\nHost : t\r\n\r\n",
    "line-without-colon": b"GET /healthz HTTP/1.1\r\nHost: t\r\nNo-Colon-Here\r\nX-Request-ID: after-it\r\n\r\n",
    "obs-fold-first-line": b"GET /healthz HTTP/1.1\r\n Host: t\r\nX-Request-ID: folded\r\n\r\n",
    "bare-cr-in-value": b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Note: a\rb\r\n\r\n",
    "nbsp-separator": b"GET\xa0/healthz HTTP/1.1\r\nHost: t\r\n\r\n",
    "nel-separator": b"GET /healthz\x85HTTP/1.1\r\nHost: t\r\n\r\n",
    "http-1.1-without-host": b"GET /healthz HTTP/1.1\r\nX-Request-ID: no-host\r\n\r\n",
}


@pytest.mark.parametrize("request_bytes", MALFORMED_HEADS.values(), ids=MALFORMED_HEADS.keys())
def test_a_head_rfc_9112_rejects_gets_400_and_the_connection_closes(json_log_server, request_bytes):
    """Each of these was accepted before the fix (a line without a colon silently dropped every
    header after it: the X-Request-ID was not echoed); RFC 9112 asks for 400 and a close."""
    response, closed = exchange(json_log_server.port, request_bytes)
    assert response.status == 400, (response.status, f"X-Request-ID echoed: {response.header('X-Request-ID')}",
                                    response.body[:200])
    assert response.json()["error"]
    assert response.header("Connection") == "close" and closed
    assert_still_serving(json_log_server)


def expect_continue_head(version):
    return (b"POST /api/?id=continue %s\r\nHost: t\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\nExpect: 100-continue\r\n\r\n" % (version, len(camera_json("valid"))))


def test_100_continue_goes_to_http_1_1_clients_only(json_log_server):
    """An HTTP/1.0 client cannot read an interim response; HTTP/1.1 still gets one."""
    with connect(json_log_server.port) as sock:
        sock.sendall(expect_continue_head(b"HTTP/1.1"))
        assert read_response(sock).status == 100
        sock.sendall(camera_json("valid"))
        assert read_response(sock).status == 200
    with connect(json_log_server.port) as sock:
        sock.sendall(expect_continue_head(b"HTTP/1.0"))
        # A 1.0 client sends its body after a pause of its own; whatever came back by then is final.
        interim = answered_within(sock, 1.0)
        sock.sendall(camera_json("valid"))
        response = read_response(sock)
        assert response.status == 200, (response.status, f"something arrived before the body: {interim}",
                                         response.body[:200])


# == A 500 that cannot be found ======================================================================

def test_a_target_the_url_parser_rejects_is_400_with_an_access_line(json_log_server):
    """`GET http://[/` is a 400 (before the fix a 500 naming a request id the log never showed)."""
    srv = json_log_server
    response, _ = exchange(srv.port, b"GET http://[/ HTTP/1.1\r\nHost: t\r\n\r\n")
    assert response.status == 400, (response.status, response.body[:200])
    assert response.json()["error"]
    request_id = response.header("X-Request-ID")
    srv.wait_for_line(r'"request_id": "%s"' % request_id, timeout_s=5)
    access = [json.loads(line) for line in srv.lines if request_id in line and line.startswith("{")]
    assert any(entry.get("status") == 400 for entry in access), access


def test_every_line_the_json_server_printed_is_json(json_log_server):
    """After all of the above, no traceback and no worker restart broke the JSON log."""
    not_json = []
    for line in json_log_server.lines:
        try:
            json.loads(line)
        except ValueError:
            not_json.append(line)
    assert not not_json, not_json[:10]
    restarts = metric_value(json_log_server, "detserve_worker_restarts_total")
    assert restarts == 0, f"{restarts:g} worker restarts"


# == Front-end memory without bound ==================================================================
# On the shared bounded_body_server (conftest): bodies up to 4 MiB, 16 MiB of them at once.

def test_uploads_beyond_the_body_buffer_get_503_before_their_body_is_read(bounded_body_server):
    """With the only worker stopped, 12 uploads of 4 MiB against a 16 MiB body buffer:
    the first 4 are read and held (waiting for the worker), the other 8 are refused with 503 +
    Retry-After before their body is sent, and the front end grows by less than 16 MB + 24 MB
    (before the budget every body was held: 12 x 4 MiB). The budget counts bytes that arrived,
    so the 4 held bodies are sent whole."""
    srv = bounded_body_server
    front_end = srv.proc.pid
    before_mb = rss_mb(front_end)
    head = (b"POST /api/ HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % (4 * MIB))
    body = b"{" + b" " * (4 * MIB - 2) + b"}"
    (worker,) = srv.worker_pids()
    os.kill(worker, signal.SIGSTOP)
    connections, refusals = [], []
    try:
        for _ in range(12):
            sock = connect(srv.port, timeout_s=20)
            connections.append(sock)
            sock.sendall(head)
            if answered_within(sock, 0.5):
                refusals.append(read_response(sock))  # refused before any of its body was sent
            else:
                sock.sendall(body)
        time.sleep(0.5)  # let the server's threads take in what the kernel buffered
        growth_mb = rss_mb(front_end) - before_mb
        statuses = [(response.status, response.header("Retry-After"), response.header("Connection"))
                    for response in refusals]
        good_refusals = [s for s in statuses if s[0] == 503 and s[1] and s[2] == "close"]
        assert growth_mb < 16 + 24 and len(good_refusals) >= 8, (
            f"front end grew {growth_mb:.0f} MB; refusals before the body: {statuses}")
        for response in refusals:
            assert "MB of request bodies" in response.json()["error"]
    finally:
        os.kill(worker, signal.SIGCONT)
        for sock in connections:
            sock.close()
    # The shared server's next test needs the budget back: the held bodies are answered, then given back.
    wait_until(lambda: srv.request("/api/", camera_body("budget-back"))[0] == 200, "the held bodies given back")


def head_bytes(header_count, line_bytes, final_blank_line=True):
    lines = [b"GET /healthz HTTP/1.1", b"Host: t"]
    lines += [b"X-Filler-%d: %s" % (i, b"a" * (line_bytes - 16)) for i in range(header_count)]
    return b"\r\n".join(lines) + b"\r\n" + (b"\r\n" if final_blank_line else b"")


def test_a_head_over_32_kib_is_431(bounded_body_server):
    """40 header lines of 1,000 bytes (each under the line and count limits) -> 431."""
    response, closed = exchange(bounded_body_server.port, head_bytes(40, 1000))
    assert response.status == 431, (response.status, response.body[:200])
    assert response.json()["error"]
    assert closed
    assert_still_serving(bounded_body_server)


def hold_heads(srv, count, head):
    """Open count connections that each send head without its end; return them (to close)."""
    connections = []
    for _ in range(count):
        sock = connect(srv.port, timeout_s=5)
        connections.append(sock)
        try:
            sock.sendall(head)
        except OSError:
            pass  # refused and closed part-way: that is the fix at work
    the_kernel_buffers_nothing_for(srv)
    return connections


def test_unfinished_heads_cost_the_front_end_a_bounded_amount(bounded_body_server):
    """48 connections each holding ~30 KiB of headers (no final blank line) raise the
    front end's RSS by less than 48 x 64 KiB + 24 MB; then 48 that each try to send 99 lines of
    64,000 bytes (before the fix ~6.3 MB held per connection, ~300 MB in all) stay within the same bound."""
    srv = bounded_body_server
    for head in (head_bytes(30, 1000, final_blank_line=False), head_bytes(99, 64_000, final_blank_line=False)):
        before_mb = rss_mb(srv.proc.pid)
        connections = hold_heads(srv, 48, head)
        try:
            growth_mb = rss_mb(srv.proc.pid) - before_mb
            assert growth_mb < 48 * 64 / 1024 + 24, (
                f"{len(head):,}-byte heads on 48 connections: the front end grew {growth_mb:.0f} MB")
        finally:
            for sock in connections:
                sock.close()
        wait_until(lambda: open_connections(srv.port) == 0, "the server closed its end of every connection")
    assert_still_serving(srv)


def test_connections_beyond_max_connections_get_503_and_a_freed_slot_is_reused():
    """--max-connections 4, each one busy with an upload waiting for the stopped
    worker: a 5th connection gets 503 JSON with Retry-After at once and is closed; once the 4
    are answered, a new connection is served. (Connections that are only waiting for a request
    give way to new ones instead: tests/test_connection_bounds.py.)"""
    with ServerProcess("--workers", "1", "--max-connections", "4") as srv:
        (worker,) = srv.worker_pids()
        os.kill(worker, signal.SIGSTOP)
        busy = []
        try:
            for i in range(4):
                sock = connect(srv.port)
                sock.sendall(b"POST /api/?id=busy-%d HTTP/1.1\r\nHost: t\r\nContent-Type: image/jpeg\r\n"
                             b"Content-Length: %d\r\n\r\n" % (i, len(camera_jpeg())) + camera_jpeg())
                busy.append(sock)
            time.sleep(0.5)  # all four read and waiting for the worker
            response, closed = exchange(srv.port, b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
            assert response.status == 503 and response.header("Retry-After") and closed, response
            assert "--max-connections" in response.json()["error"]
        finally:
            os.kill(worker, signal.SIGCONT)
        try:
            for sock in busy:
                assert read_response(sock).status == 200
            # Until the server notices a close, the slot is still taken.
            wait_until(lambda: raw_exchange(srv.port, b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n").status == 200,
                       "a new connection served in a freed slot")
        finally:
            for sock in busy:
                sock.close()


# == Out of file descriptors ==========================================================================

def limit_descriptors_to_128():
    resource.setrlimit(resource.RLIMIT_NOFILE, (128, 128))


def open_until_no_longer_accepted(srv, most=400):
    """Open idle connections until the server says it cannot accept one; return every socket opened."""
    opened = []
    while len(opened) < most:
        opened.extend(connect(srv.port) for _ in range(8))
        probe = connect(srv.port)
        opened.append(probe)
        probe.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        outcome = wait_until(lambda: ("refused" if any("cannot accept connections" in line for line in srv.lines)
                                      else "served" if answered_within(probe, 0) else None),
                             "the probe served, or the server out of descriptors")
        if outcome == "refused":
            return opened
        read_response(probe)  # served: keep it open, idle, like the others
    raise AssertionError(f"{most} connections were all accepted: the descriptor limit did not apply")


def test_out_of_descriptors_the_server_rides_it_out():
    """With RLIMIT_NOFILE 128 filled by idle connections the server does not spin, keeps
    serving an open connection, survives a killed worker it cannot yet replace, and recovers once
    descriptors free up (before the fix: 100% CPU in the accept loop, then exit 3 as if the model failed)."""
    with ServerProcess("--workers", "1", "--client-timeout-s", "60", "--head-timeout-s", "60",
                       "--max-connections", "1000", preexec_fn=limit_descriptors_to_128) as srv:
        kept = connect(srv.port)
        kept.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        assert read_response(kept).status == 200
        idle = open_until_no_longer_accepted(srv)
        problems = []
        try:
            kept.sendall(b"POST /api/?id=kept HTTP/1.1\r\nHost: t\r\nContent-Type: image/jpeg\r\n"
                         b"Content-Length: %d\r\n\r\n" % len(camera_jpeg()) + camera_jpeg())
            response = read_response(kept)
            if response.status != 200:
                problems.append(f"the open connection got {response.status}: {response.body[:200]!r}")
            (worker,) = srv.worker_pids()
            cpu_before_s, started_s = cpu_time_s(srv.proc.pid), time.monotonic()
            os.kill(worker, signal.SIGKILL)
            # Until the fourth replacement could not be started (0.5 + 1 + 2 s of back-off), where a
            # fourth boot failure would be fatal; at most 6 s, should a replacement start at once.
            poll_until(lambda: srv.proc.poll() is not None
                       or sum("could not be started" in line for line in srv.lines) >= 4, timeout_s=6)
            # Meanwhile it had nothing to do but retry a start: an accept loop that spins shows here.
            cpu_used_s, waited_s = cpu_time_s(srv.proc.pid) - cpu_before_s, time.monotonic() - started_s
            if cpu_used_s >= waited_s / 4:
                problems.append(f"the server used {cpu_used_s:.2f} s of CPU in {waited_s:.1f} s with nothing to do")
            if srv.proc.poll() is not None:
                problems.append(f"the server exited {srv.proc.returncode} while out of descriptors: "
                                + " | ".join(srv.lines[-3:]))
        finally:
            for sock in idle:
                sock.close()
        if srv.proc.poll() is None:
            wait_until_ready(srv)
            _, _, readiness = srv.request("/readyz")
            if readiness["workers_ready"] != 1:
                problems.append(f"/readyz: {readiness}")
            if metric_value(srv, "detserve_worker_restarts_total") < 1:
                problems.append("no worker restart counted")
            status, _, payload = srv.request("/api/?id=after", camera_jpeg(), headers={"Content-Type": "image/jpeg"})
            if status != 200:
                problems.append(f"a new connection's POST got {status}: {payload}")
        kept.close()
        assert not problems, problems
