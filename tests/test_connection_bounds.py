"""The connection-level bounds against cheap lockouts, one or more regression tests per attack.

Real sockets on 127.0.0.1, real server subprocesses with the real model. Each test's docstring
names the attack and what it did before the bound. Nothing asserts on speed: the time bounds
below are generous ceilings that only an unbounded wait (the attack working) could pass.

- Idle connections: at --max-connections the longest-idle connection waiting for a request
  gives way to a new one, and a request head must arrive within --head-timeout-s.
- Probes: /healthz, /readyz and /metrics have their own port (--probe-port) and its own
  small connection bound, so a flood of the API port cannot starve them.
- A connection refused past the limit reads its 503 (answered, then a lingering close).
- Bodies hold the body budget by the bytes that arrive, and a body that stops arriving
  loses what it holds within seconds.
- Answers are written at a minimum rate: a client that reads too slowly is dropped, and the answers
  held for slow readers stay within --max-answer-buffer-mb and the front end under its memory ceiling.
"""

import collections
import dataclasses
import os
import select
import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np

from bench.proc_stats import peak_rss_mb, rss_mb
from detserve import memory_sizing
from detserve.config import Config
from support import ServerProcess, camera_jpeg, http_request, parse_exposition, read_response

MIB = 1 << 20
HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n"


# -- raw clients -----------------------------------------------------------------------------------

def connect(port, timeout_s=10):
    return socket.create_connection(("127.0.0.1", port), timeout=timeout_s)


def closed_by_server(sock, timeout_s):
    """True if the server closed sock (EOF or reset) within timeout_s; bytes it sends are skipped."""
    deadline_s = time.monotonic() + timeout_s
    while True:
        remaining_s = deadline_s - time.monotonic()
        if remaining_s <= 0:
            return False
        sock.settimeout(remaining_s)
        try:
            if sock.recv(65536) == b"":
                return True
        except ConnectionResetError:
            return True
        except socket.timeout:
            return False


def upload_head(length, path="/api/", content_type="image/jpeg"):
    return (b"POST %s HTTP/1.1\r\nHost: t\r\nContent-Type: %s\r\nContent-Length: %d\r\n\r\n"
            % (path.encode(), content_type.encode(), length))


def post_camera(port, image_id, padding_bytes=0, timeout_s=30):
    """POST the camera JPEG (with trailing zero bytes, which JPEG decoders ignore) as a raw body."""
    body = camera_jpeg() + b"\0" * padding_bytes
    return http_request(f"http://127.0.0.1:{port}/api/?id={image_id}", body=body,
                        headers={"Content-Type": "image/jpeg"}, timeout_s=timeout_s)


def status_of(request, *args, **kwargs):
    """The status of request(*args), or the name of the error that ended it (a reset, a timeout)."""
    try:
        return request(*args, **kwargs)[0]
    except OSError as exc:
        return type(getattr(exc, "reason", exc)).__name__


def busy_uploads(port, count):
    """count complete camera uploads whose answers cannot come yet (the worker is stopped)."""
    connections = []
    for i in range(count):
        sock = connect(port, timeout_s=60)
        sock.sendall(upload_head(len(camera_jpeg()), f"/api/?id=busy-{i}") + camera_jpeg())
        connections.append(sock)
    time.sleep(0.5)  # every one read and waiting for the worker
    return connections


class ReconnectingClients:
    """count connections that each send `opening` and then nothing, reopened whenever closed.

    The lockout attack: a few bytes per connection, a reconnect the
    moment the server lets one go. Runs in a thread until stop(); counts the reconnects.
    """

    def __init__(self, port, count, opening=b""):
        self.port, self.count, self.opening = port, count, opening
        self.reconnects = 0
        self._stop = threading.Event()
        self._sockets = []
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _open(self):
        try:
            sock = connect(self.port)
            if self.opening:
                sock.sendall(self.opening)
            return sock
        except OSError:
            return None

    def _run(self):
        self._sockets = [self._open() for _ in range(self.count)]
        while not self._stop.is_set():
            live = [s for s in self._sockets if s is not None]
            readable = select.select(live, [], [], 0.05)[0] if live else []
            for i, sock in enumerate(self._sockets):
                if sock is None or sock in readable:
                    if sock is not None:
                        sock.close()
                    self._sockets[i] = self._open()
                    self.reconnects += 1

    def __enter__(self):
        self._thread.start()
        time.sleep(0.5)  # every connection open (and, with an opening, read by the server)
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=5)
        for sock in self._sockets:
            if sock is not None:
                sock.close()


def stopped_worker(srv):
    (worker,) = srv.worker_pids()
    os.kill(worker, signal.SIGSTOP)
    return worker


# == Idle connections and the head timeout ============================================================

def test_idle_connections_at_the_limit_give_way_to_new_requests():
    """16 connections that send nothing, reopened the moment they are closed, against
    --max-connections 16: every innocent request, a GET /healthz or a POST, is still answered
    (before: all 503, the idle sockets held every slot)."""
    with ServerProcess("--workers", "1", "--max-connections", "16") as srv:
        with ReconnectingClients(srv.port, 16) as idle:
            statuses = []
            for i in range(12):
                statuses.append(status_of(http_request, srv.url + "/healthz", timeout_s=10))
                statuses.append(status_of(post_camera, srv.port, f"innocent-{i}"))
            reconnects = idle.reconnects
        assert statuses == [200] * len(statuses), collections.Counter(statuses)
        assert reconnects >= 12, f"only {reconnects} idle connections gave way"


def test_heads_that_declare_a_body_and_send_none_give_way_at_the_limit_too():
    """16 complete POST heads that declare 20 MiB and send none of it, reopened the moment they
    are dropped, against --max-connections 16: such a connection has not sent its request, so
    it gives way like an idle one, and every innocent upload is answered (before: 0 of 99 in
    10 s, each of the 16 holding its slot until its body's 2 s window ran out)."""
    with ServerProcess("--workers", "1", "--max-connections", "16") as srv:
        with ReconnectingClients(srv.port, 16, opening=upload_head(20 * MIB)):
            statuses = [status_of(post_camera, srv.port, f"innocent-{i}") for i in range(16)]
        assert statuses == [200] * len(statuses), collections.Counter(statuses)


def test_a_request_head_must_arrive_within_the_head_timeout_and_keep_alive_waits_longer():
    """--head-timeout-s 1 with --client-timeout-s 30: a connection that sends nothing, and one
    that trickles its head a line at a time, are closed within a few seconds (before: the
    client timeout, 30 s); a kept-alive connection may still idle past the head timeout."""
    with ServerProcess("--workers", "1", "--head-timeout-s", "1", "--client-timeout-s", "30") as srv:
        silent = connect(srv.port)
        trickling = connect(srv.port)
        kept_alive = connect(srv.port)
        kept_alive.sendall(HEALTHZ)
        assert read_response(kept_alive).status == 200
        started_s = time.monotonic()
        trickling.sendall(b"GET /healthz HTTP/1.1\r\n")
        trickle_closed_s = None
        for i in range(30):
            time.sleep(0.25)
            try:
                trickling.sendall(b"X-Slow-%d: 1\r\n" % i)
            except OSError:
                trickle_closed_s = time.monotonic() - started_s
                break
        if trickle_closed_s is None:
            trickle_closed_s = (time.monotonic() - started_s) if closed_by_server(trickling, 1) else None
        assert trickle_closed_s is not None and trickle_closed_s < 5, trickle_closed_s
        assert closed_by_server(silent, timeout_s=3), "a connection that sent nothing outlived the head timeout"
        time.sleep(max(0.0, 2.5 - (time.monotonic() - started_s)))  # past the head timeout, within the client's
        kept_alive.sendall(HEALTHZ)
        assert read_response(kept_alive).status == 200
        for sock in (silent, trickling, kept_alive):
            sock.close()


def probe_answers(port):
    """{path: (status, payload)} for the three probe paths, each on a new connection."""
    answers = {}
    for path in ("/healthz", "/readyz", "/metrics"):
        status, _, payload = http_request(f"http://127.0.0.1:{port}{path}", timeout_s=5)
        answers[path] = (status, payload)
    return answers


def test_probes_answer_on_their_own_port_while_the_api_port_is_full():
    """--max-connections 4 held by uploads waiting for a stopped worker, so the API port refuses
    everyone: the probe port still answers /healthz, /readyz and /metrics, and keeps answering
    while 64 idle connections, reopened when closed, flood it too (before: no probe port; a full
    API port left the kubelet's liveness probe unanswered, and the pod would be restarted)."""
    with ServerProcess("--workers", "1", "--max-connections", "4") as srv:
        assert srv.probe_port and srv.probe_port != srv.port
        worker = stopped_worker(srv)
        uploads = busy_uploads(srv.port, 4)
        try:
            status, _, payload = http_request(srv.url + "/healthz", timeout_s=5)
            assert status == 503 and "--max-connections" in payload["error"], (status, payload)
            answers = probe_answers(srv.probe_port)
            with ReconnectingClients(srv.probe_port, 64):
                flooded = probe_answers(srv.probe_port)
        finally:
            os.kill(worker, signal.SIGCONT)
        for found in (answers, flooded):
            assert found["/healthz"] == (200, {"status": "ok"}), found["/healthz"]
            assert found["/readyz"][0] in (200, 503) and "workers_ready" in found["/readyz"][1]
            assert found["/metrics"][0] == 200
            parse_exposition(found["/metrics"][1])
        for sock in uploads:
            assert read_response(sock).status == 200
            sock.close()
        status, _, _ = http_request(srv.url + "/healthz", timeout_s=5)
        assert status == 200, "the API port answers the probe paths too"
        status, _, payload = http_request(f"http://127.0.0.1:{srv.probe_port}/api/", timeout_s=5)
        assert status == 404 and str(srv.port) not in payload["error"] and "/healthz" in payload["error"]


# == A refused connection reads its 503 ==============================================================

def refused_upload(port, body_bytes):
    """One upload past the limit, sent as a client sends it (head, then body, then read): (status, Retry-After)."""
    try:
        with connect(port) as sock:
            sock.sendall(upload_head(body_bytes))
            body = b"\0" * body_bytes
            for start in range(0, body_bytes, 10_000):  # in pieces, as from a client reading a file
                time.sleep(0.01)
                sock.sendall(body[start:start + 10_000])
            response = read_response(sock)
            return response.status, response.header("Retry-After")
    except OSError as exc:
        return type(exc).__name__, None


def test_connections_refused_past_the_limit_read_their_503():
    """--max-connections 4, every slot an upload waiting for a stopped worker: 40 more uploads
    (20 of 1 KB, 20 of 100 KB bodies) each read a 503 with Retry-After (before: 3 of 40; the
    others found their connection reset by a close with their body unread)."""
    with ServerProcess("--workers", "1", "--max-connections", "4") as srv:
        worker = stopped_worker(srv)
        uploads = busy_uploads(srv.port, 4)
        try:
            with ThreadPoolExecutor(max_workers=8) as pool:
                outcomes = list(pool.map(lambda size: (size, *refused_upload(srv.port, size)), [1000, 100_000] * 20))
        finally:
            os.kill(worker, signal.SIGCONT)
        for sock in uploads:
            sock.close()
        read_their_503 = sum(1 for _, status, retry_after in outcomes if status == 503 and retry_after)
        assert read_their_503 == len(outcomes), collections.Counter(outcomes)


# == Bodies hold the budget by the bytes that arrive ==================================================

def test_heads_that_declare_bodies_and_send_nothing_hold_no_body_budget():
    """8 heads declaring 20 MiB each (the whole 160 MB default budget) that send nothing and
    reconnect when dropped: innocent uploads are all answered 200 (before: every one 503 while
    the promises held the budget)."""
    with ServerProcess("--workers", "1") as srv:
        with ReconnectingClients(srv.port, 8, opening=upload_head(20 * MIB)):
            statuses = [status_of(post_camera, srv.port, f"innocent-{i}") for i in range(16)]
        assert statuses == [200] * len(statuses), collections.Counter(statuses)


def test_a_body_that_stalls_loses_what_it_holds_within_seconds():
    """Two uploads send 3.9 MiB of 4 MiB and stop, against --max-body-buffer-mb 8 and
    --client-timeout-s 30: a 1.5 MB upload is refused while they hold the budget, then
    answered within a few seconds, because a body that stops arriving is dropped (before: the
    budget stayed spent until the 30 s client timeout). The front end's memory meanwhile
    stays within the budget (RSS from /proc)."""
    with ServerProcess("--workers", "1", "--max-body-mb", "4", "--max-body-buffer-mb", "8",
                       "--client-timeout-s", "30") as srv:
        before_mb = rss_mb(srv.proc.pid)
        stalled = [connect(srv.port, timeout_s=30) for _ in range(2)]
        for sock in stalled:
            sock.sendall(upload_head(4 * MIB) + b"\0" * (4 * MIB - 100 * 1024))
        time.sleep(0.5)
        grown_mb = rss_mb(srv.proc.pid) - before_mb
        first_status = status_of(post_camera, srv.port, "refused", padding_bytes=1_500_000)
        started_s = time.monotonic()
        status = None
        while status != 200 and time.monotonic() - started_s < 20:
            status = status_of(post_camera, srv.port, "served", padding_bytes=1_500_000)
            if status != 200:
                time.sleep(0.25)
        waited_s = time.monotonic() - started_s
        dropped = [closed_by_server(sock, timeout_s=5) for sock in stalled]
        for sock in stalled:
            sock.close()
    assert first_status == 503, first_status
    assert status == 200 and waited_s < 10, f"the budget was held {waited_s:.1f} s by bodies that stopped"
    assert all(dropped), "a stalled upload was not dropped"
    assert grown_mb < 8 + 24, f"the front end grew {grown_mb:.0f} MB holding 7.8 MiB of bodies"


# == Answers are written at a minimum rate ===========================================================

def striped_png(width_px, height_px):
    """A PNG that compresses to little (every row the same) but whose annotated JPEG is large."""
    row = (np.random.default_rng(7).integers(0, 2, (1, width_px, 3)) * 255).astype(np.uint8)
    ok, encoded = cv2.imencode(".png", np.repeat(row, height_px, axis=0), [cv2.IMWRITE_PNG_COMPRESSION, 9])
    assert ok
    return encoded.tobytes()


def noise_png(side_px):
    """A square PNG of about 1 MB at 4096 px whose annotated JPEG is as large as annotated answers get:
    noise in every 8x8 block (JPEG cannot compress it), repeating every 64 px along a row (PNG can)."""
    tile = np.random.default_rng(18).integers(0, 256, (side_px, 64, 3), dtype=np.uint8)
    ok, encoded = cv2.imencode(".png", np.tile(tile, (1, side_px // 64, 1)), [cv2.IMWRITE_PNG_COMPRESSION, 9])
    assert ok
    return encoded.tobytes()


SlowRead = collections.namedtuple("SlowRead", "status received length closed_after_s")


def slow_reader(port, body, read_bytes, every_s, give_up_s):
    """POST body for an annotated answer, then read read_bytes every every_s seconds.

    Returns a SlowRead: the status, the bytes of the answer read, its Content-Length, and the
    seconds from its head until the server closed (None if it was still sending after give_up_s).
    """
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)  # before connect: a small window
    sock.settimeout(60)
    sock.connect(("127.0.0.1", port))
    with sock:
        sock.sendall(upload_head(len(body), "/api/?format=jpeg", "image/png") + body)
        head = b""
        while b"\r\n\r\n" not in head:
            head += sock.recv(1)
        status = int(head.split()[1])
        length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length:")))
        started_s, received = time.monotonic(), len(head.partition(b"\r\n\r\n")[2])
        while time.monotonic() - started_s < give_up_s:
            try:
                chunk = sock.recv(read_bytes)
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                return SlowRead(status, received, length, time.monotonic() - started_s)
            received += len(chunk)
            time.sleep(every_s)
        return SlowRead(status, received, length, None)


def test_a_client_that_reads_its_answer_too_slowly_is_dropped_and_a_normal_one_is_not():
    """An annotated answer of several MB read 16 KiB every 4 s (4 KiB/s, under the 64 KiB/s
    minimum): the server closes the connection within seconds of its grace (before: each send
    only had to progress within --client-timeout-s, so the answer stayed held for hours).
    The same answer read at full speed arrives whole."""
    body = striped_png(5000, 3500)
    with ServerProcess("--workers", "1") as srv:
        status, headers, whole = http_request(srv.url + "/api/?format=jpeg", body=body,
                                              headers={"Content-Type": "image/png"})
        assert status == 200 and headers["Content-Type"] == "image/jpeg"
        answer_bytes = int(headers["Content-Length"])
        assert answer_bytes > 4 * MIB, f"the answer is only {answer_bytes:,} bytes: too small to need reading"
        status, received, length, closed_after_s = slow_reader(srv.port, body, 16 * 1024, 4, give_up_s=40)
        assert status == 200 and length == answer_bytes
        assert closed_after_s is not None, f"still sending after 40 s ({received:,} of {length:,} bytes read)"
        assert received < length
        status, _, _ = http_request(srv.url + "/healthz")
        assert status == 200


SLOW_CLIENTS = 24


def test_slow_readers_of_large_annotated_answers_keep_the_front_end_under_its_ceiling():
    """24 clients ask for annotated answers of a 1 MB noise PNG (each a 14 MiB JPEG) and read
    16 KiB every 4 s. Before: each answer stayed held for about an hour, and the front end grew
    from 61 MB to 871 MB against a stated ceiling of 253 MB. Now answers past
    --max-answer-buffer-mb are refused with 503, the ones being written are dropped within
    seconds of their grace, and the front end's peak (VmHWM) stays under the ceiling
    detserve.memory_sizing states for what these clients can hold: their bodies, their
    connections and the answer budget."""
    body = noise_png(4096)
    config = Config()  # the defaults the server runs with
    with ServerProcess() as srv:
        with ThreadPoolExecutor(SLOW_CLIENTS) as pool:
            reads = list(pool.map(lambda _: slow_reader(srv.port, body, 16 * 1024, 4, give_up_s=40),
                                  range(SLOW_CLIENTS)))
        peak_mib = peak_rss_mb(srv.proc.pid)
        status, _, _ = http_request(srv.url + "/healthz")
        assert status == 200
    held_by_these_clients = dataclasses.replace(
        config, max_body_buffer_mb=SLOW_CLIENTS * len(body) / MIB, max_connections=SLOW_CLIENTS)
    ceiling_mib = memory_sizing.front_end_ceiling_mib(held_by_these_clients)
    print(f"\nfront end peak {peak_mib:.0f} MiB, ceiling for what these clients hold {ceiling_mib:.0f} MiB; "
          f"{collections.Counter(read.status for read in reads)}")
    assert peak_mib < ceiling_mib, f"the front end peaked at {peak_mib:.0f} MiB, over its {ceiling_mib:.0f} MiB"
    assert ceiling_mib < memory_sizing.front_end_ceiling_mib(config)
    answered = [read for read in reads if read.status == 200]
    assert len(answered) >= 2, collections.Counter(read.status for read in reads)
    for read in answered:
        assert read.length > 10 * MIB, f"an answer of only {read.length:,} bytes"
        assert read.closed_after_s is not None, f"still sending after 40 s ({read.received:,} bytes read)"
        assert read.received < read.length / 10, "a slow reader got most of its answer"
    # The others never held an answer: refused because the answers held filled the budget
    # (or, on a very busy machine, past their deadline).
    assert all(read.status in (503, 504) for read in reads if read.status != 200), [read.status for read in reads]


def test_the_probe_port_can_be_turned_off_and_a_taken_one_stops_the_start():
    """--probe-port off: no second listener, the API port answers the probes as always. A probe
    port already in use is a configuration error (exit 2, naming the flag), like a taken --port."""
    with ServerProcess("--workers", "1", "--probe-port", "off", wait_ready=False) as srv:
        assert srv.probe_port is None
        assert http_request(srv.url + "/healthz", timeout_s=10)[0] == 200
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        srv = ServerProcess("--workers", "1", "--probe-port", str(port), wait_ready=False)
        try:
            srv.start()
        except AssertionError:
            pass  # it exited before printing its listening line: what this test wants
        assert srv.proc.wait(timeout=30) == 2
        assert any("--probe-port" in line for line in srv.lines), srv.lines[-5:]
