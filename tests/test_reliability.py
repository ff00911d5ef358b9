"""Reliability with real processes and real signals: health, overload, deadlines,
dead and stuck workers, boot failures, graceful shutdown, slow clients, auth.
"""

import http.client
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from bench.proc_stats import rss_mb
from reference import assert_same_detections, reference_detections
from support import REPO_ROOT, ServerProcess, b64, camera_jpeg, metric_value

# A hang shows up as a request that outlives this; a healthy answer takes well under a second.
HANG_LIMIT_S = 20


def camera_request(image_id="camera"):
    return {"id": image_id, "image": b64(camera_jpeg())}


def post_camera(srv, image_id="camera", timeout_s=HANG_LIMIT_S, headers=None):
    return srv.request("/api/", camera_request(image_id), timeout_s=timeout_s, headers=headers)


def post_many(srv, count, concurrency):
    """Post count requests from concurrency threads; return [(status, payload, seconds)]."""
    def one(i):
        started = time.monotonic()
        status, headers, payload = post_camera(srv, f"r{i}")
        return status, payload, time.monotonic() - started, headers
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        return list(pool.map(one, range(count)))


# -- health ---------------------------------------------------------------------------------

def test_readiness_waits_for_every_worker_and_liveness_answers_at_once():
    with ServerProcess("--workers", "2", wait_ready=False) as srv:
        status, _, payload = srv.request("/readyz")
        live_status, _, _ = srv.request("/healthz")
        assert live_status == 200
        assert status == 503 and "workers" in payload["reason"]
        srv.wait_for_line(r"detserve: ready")
        status, _, payload = srv.request("/readyz")
        assert status == 200 and payload["workers_ready"] == 2


# -- overload and deadlines -----------------------------------------------------------------

def test_a_full_queue_refuses_with_503_and_retry_after_and_loses_no_accepted_request():
    """The queue stays full while the only worker is stopped: what does not fit is refused
    (after its short wait for room) while the worker is still stopped, and everything
    accepted is answered once the worker goes on."""
    queue_size, credit, senders = 2, 2, 8
    with ServerProcess("--workers", "1", "--queue-size", str(queue_size), "--max-batch", "1") as srv:
        (worker,) = srv.worker_pids()
        os.kill(worker, signal.SIGSTOP)
        try:
            with ThreadPoolExecutor(max_workers=senders) as pool:
                futures = [pool.submit(post_camera, srv, f"r{i}") for i in range(senders)]
                expected_refusals = senders - queue_size - credit
                give_up_s = time.monotonic() + HANG_LIMIT_S
                while sum(f.done() for f in futures) < expected_refusals and time.monotonic() < give_up_s:
                    time.sleep(0.05)
                time.sleep(0.5)  # one more answer now would be an accepted request answered early: a bug
                refused = [f.result() for f in futures if f.done()]
                assert len(refused) == expected_refusals, refused
                for status, headers, payload in refused:
                    assert status == 503 and headers["Retry-After"] == "1", (status, payload)
                    assert "overloaded" in payload["error"] and payload["id"] is None
                os.kill(worker, signal.SIGCONT)
                answers = [f.result(timeout=HANG_LIMIT_S) for f in futures]
        finally:
            os.kill(worker, signal.SIGCONT)
        accepted = [a for a in answers if a not in refused]
        assert len(accepted) == queue_size + credit
        for status, _, payload in accepted:
            assert status == 200, payload
            assert_same_detections(payload["detections"], reference_detections(camera_jpeg()))
        assert metric_value(srv, 'detserve_rejected_requests_total{reason="overload"}') == len(refused)


def test_requests_past_their_deadline_are_dropped_before_inference():
    with ServerProcess("--workers", "1", "--max-batch", "1", "--cv-threads", "1",
                       "--request-timeout-s", "0.4", "--queue-size", "64") as srv:
        answers = post_many(srv, count=40, concurrency=40)
        statuses = [a[0] for a in answers]
        assert set(statuses) <= {200, 504}, statuses
        assert statuses.count(504) > 0
        time.sleep(1.0)  # let the worker reach the expired requests still queued
        processed = metric_value(srv, "detserve_images_processed_total")
        # Each image processed either answered a 200 or was already running when its
        # client timed out (at most one batch per worker, plus one prefetched).
        assert processed <= statuses.count(200) + 2, (processed, statuses.count(200))
        assert processed < 40


def test_four_times_more_clients_than_capacity_all_get_answers():
    """Two workers, 16 clients looping for 3 s: every request gets 200 or 503, none hangs."""
    with ServerProcess("--workers", "1", "--queue-size", "4", "--max-batch", "1") as srv:
        results, stop_at = [], time.monotonic() + 3
        lock = threading.Lock()

        def client(n):
            i = 0
            while time.monotonic() < stop_at:
                started = time.monotonic()
                status, _, _ = post_camera(srv, f"c{n}-{i}")
                with lock:
                    results.append((status, time.monotonic() - started))
                i += 1
        with ThreadPoolExecutor(max_workers=16) as pool:
            list(pool.map(client, range(16)))
        statuses = [s for s, _ in results]
        assert set(statuses) <= {200, 503}, set(statuses)
        assert statuses.count(200) > 0 and statuses.count(503) > 0
        assert max(seconds for _, seconds in results) < HANG_LIMIT_S


# -- dead and stuck workers ------------------------------------------------------------------

def test_a_killed_worker_fails_only_its_requests_and_is_replaced():
    with ServerProcess("--workers", "2", "--max-batch", "1") as srv:
        victim, survivor = srv.worker_pids()
        with ThreadPoolExecutor(max_workers=1) as background:
            load = background.submit(post_many, srv, 48, 8)
            time.sleep(0.5)
            os.kill(victim, signal.SIGKILL)
            answers = load.result(timeout=60)
        statuses = [a[0] for a in answers]
        assert set(statuses) <= {200, 503}, statuses
        assert 1 <= statuses.count(503) <= 4  # only what the victim held (2 x max_batch)
        for status, payload, seconds, _ in answers:
            assert seconds < HANG_LIMIT_S
            if status == 503:
                assert "died" in payload["error"]
        srv.wait_for_line(r"worker \d+ \(pid %d\) died" % victim)
        deadline = time.monotonic() + 30
        while srv.request("/readyz")[0] != 200:
            assert time.monotonic() < deadline, "the replacement never became ready"
            time.sleep(0.1)
        pids = srv.worker_pids()
        assert survivor in pids and victim not in pids and len(pids) == 2
        assert metric_value(srv, "detserve_worker_restarts_total") == 1
        status, _, payload = post_camera(srv)
        assert status == 200
        assert_same_detections(payload["detections"], reference_detections(camera_jpeg()))


def test_readiness_reports_the_gap_while_a_worker_is_replaced():
    with ServerProcess("--workers", "2") as srv:
        os.kill(srv.worker_pids()[0], signal.SIGKILL)
        srv.wait_for_line(r"died")
        status, _, payload = srv.request("/readyz")
        assert status == 503 and "1 of 2" in payload["reason"]
        assert post_camera(srv)[0] == 200  # the other worker still serves
        deadline = time.monotonic() + 30
        while srv.request("/readyz")[0] != 200:
            assert time.monotonic() < deadline
            time.sleep(0.1)


def test_a_stuck_worker_is_killed_its_request_gets_504_and_it_is_replaced():
    with ServerProcess("--workers", "1", "--request-timeout-s", "2") as srv:
        (worker,) = srv.worker_pids()
        os.kill(worker, signal.SIGSTOP)  # a real hang: the process exists but does nothing
        started = time.monotonic()
        status, _, payload = post_camera(srv)
        assert status == 504, payload
        assert time.monotonic() - started < HANG_LIMIT_S
        srv.wait_for_line(r"made no progress")
        deadline = time.monotonic() + 30
        while srv.request("/readyz")[0] != 200:
            assert time.monotonic() < deadline, "no replacement for the stuck worker"
            time.sleep(0.1)
        assert worker not in srv.worker_pids()
        assert post_camera(srv)[0] == 200
        assert metric_value(srv, 'detserve_rejected_requests_total{reason="deadline"}') >= 1


def _limit_address_space():
    # The front end does not import OpenCV and fits; a worker loading the model does not.
    limit = 500 * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def test_a_worker_that_cannot_load_the_model_stops_the_server_with_the_reason():
    proc = subprocess.run(
        [sys.executable, "-m", "detserve", "--host", "127.0.0.1", "--port", "0", "--probe-port", "0", "--workers", "1"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=60, preexec_fn=_limit_address_space)
    assert proc.returncode == 3, proc.stderr
    assert "could not start" in proc.stderr
    assert proc.stderr.count("could not start") <= 2  # reported, not respawned in a loop


def test_missing_weights_fail_at_once_with_how_to_fetch_them(tmp_path):
    for name in ("yolov3-tiny.cfg", "coco.names"):
        (tmp_path / name).write_bytes((REPO_ROOT / "yolo_tiny_configs" / name).read_bytes())
    proc = subprocess.run(
        [sys.executable, "-m", "detserve", "--port", "0", "--model-dir", str(tmp_path)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2
    assert "yolov3-tiny.weights is missing" in proc.stderr and "make models" in proc.stderr


# -- graceful shutdown -------------------------------------------------------------------------

def test_sigterm_drains_accepted_requests_then_exits_zero():
    srv = ServerProcess("--workers", "1", "--max-batch", "1", "--cv-threads", "1").start()
    try:
        with ThreadPoolExecutor(max_workers=6) as pool:
            accepted = [pool.submit(post_camera, srv, f"d{i}") for i in range(6)]
            time.sleep(0.3)  # they are queued behind one single-threaded worker
            srv.proc.send_signal(signal.SIGTERM)
            srv.wait_for_line(r"SIGTERM received")
            ready_status, _, ready = srv.request("/readyz")
            late_status, _, late = post_camera(srv, "late")
            statuses = [f.result(timeout=HANG_LIMIT_S)[0] for f in accepted]
        assert ready_status == 503 and "draining" in ready["reason"]
        assert late_status == 503 and "shutting down" in late["error"]
        assert statuses == [200] * 6
        assert srv.proc.wait(timeout=HANG_LIMIT_S) == 0
        srv.wait_for_line(r"drained")
    finally:
        srv.stop(signal.SIGKILL)


def test_a_second_sigint_stops_at_once():
    srv = ServerProcess("--workers", "1", "--max-batch", "1", "--cv-threads", "1",
                        "--drain-timeout-s", "60").start()
    try:
        workers = srv.worker_pids()
        with ThreadPoolExecutor(max_workers=30) as pool:
            for i in range(30):
                pool.submit(post_camera, srv, f"s{i}")
            time.sleep(0.3)
            srv.proc.send_signal(signal.SIGINT)
            srv.wait_for_line(r"SIGINT received")
            started = time.monotonic()
            srv.proc.send_signal(signal.SIGINT)
            code = srv.proc.wait(timeout=HANG_LIMIT_S)
            assert time.monotonic() - started < 5
        assert code == 130
        time.sleep(0.2)
        for pid in workers:
            assert not os.path.exists(f"/proc/{pid}") or "Z" in open(f"/proc/{pid}/stat").read().split()[2]
    finally:
        srv.stop(signal.SIGKILL)


# -- slow clients ------------------------------------------------------------------------------------

def test_stalled_connections_time_out_and_cannot_starve_normal_clients():
    with ServerProcess("--workers", "1", "--client-timeout-s", "2", "--head-timeout-s", "2") as srv:
        stalled = []
        for i in range(200):
            sock = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
            # Half a request line, or headers promising a body that never comes.
            sock.sendall(b"POST /api/ HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{" if i % 2 else b"POST /ap")
            stalled.append(sock)
        status, _, payload = post_camera(srv, timeout_s=10)
        assert status == 200
        time.sleep(3)  # past --client-timeout-s: the server has given up on every one
        closed = 0
        for sock in stalled:
            sock.settimeout(5)
            data = sock.recv(65536)
            closed += 1 if (data == b"" or data.startswith(b"HTTP/1.1 400")) else 0
            sock.close()
        assert closed == len(stalled)


# -- optional authentication -----------------------------------------------------------------------

def test_api_key_is_required_on_api_only_and_never_logged(tmp_path):
    key = "s3cr3t-key-value"
    with ServerProcess("--workers", "1", env={"DETSERVE_API_KEY": key}) as srv:
        assert post_camera(srv)[0] == 401
        status, headers, payload = post_camera(srv, headers={"Authorization": "Bearer wrong"})
        assert status == 401 and "API key" in payload["error"] and headers["WWW-Authenticate"].startswith("Bearer")
        assert post_camera(srv, headers={"Authorization": f"Bearer {key}"})[0] == 200
        assert srv.request("/healthz")[0] == 200
        assert srv.request("/readyz")[0] == 200
        srv.stop()
        assert key not in "\n".join(srv.lines)
    key_file = tmp_path / "key"
    key_file.write_text("from-a-file\n")
    with ServerProcess("--workers", "1", "--api-key-file", str(key_file)) as srv:
        assert post_camera(srv, headers={"Authorization": "Bearer from-a-file"})[0] == 200
        assert post_camera(srv)[0] == 401



def test_a_body_still_arriving_at_sigterm_is_answered_before_exit():
    srv = ServerProcess("--workers", "1").start()
    try:
        body = json.dumps(camera_request()).encode()
        with socket.create_connection(("127.0.0.1", srv.port), timeout=HANG_LIMIT_S) as sock:
            sock.sendall(b"POST /api/ HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Content-Length: %d\r\n\r\n" % len(body) + body[:1000])
            time.sleep(0.3)
            srv.proc.send_signal(signal.SIGTERM)
            srv.wait_for_line(r"SIGTERM received")
            sock.sendall(body[1000:])
            response = http.client.HTTPResponse(sock)
            response.begin()
            assert response.status == 200
            assert json.loads(response.read())["id"] == "camera"
        assert srv.proc.wait(timeout=HANG_LIMIT_S) == 0
    finally:
        srv.stop(signal.SIGKILL)


def test_declared_but_unsent_bodies_cost_the_front_end_no_memory():
    with ServerProcess("--workers", "1", "--client-timeout-s", "5") as srv:
        before_mb = rss_mb(srv.proc.pid)
        sockets = []
        for _ in range(25):  # each promises a 20 MB body and sends none of it
            sock = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
            sock.sendall(b"POST /api/ HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 20971520\r\n\r\n")
            sockets.append(sock)
        time.sleep(1)
        grown_mb = rss_mb(srv.proc.pid) - before_mb
        for sock in sockets:
            sock.close()
        assert grown_mb < 50, f"the front end grew by {grown_mb:.0f} MB"


def worker_pid_of_slot(srv, index):
    line = srv.wait_for_line(r"worker %d \(pid \d+\) ready" % index)
    return int(line.split("(pid ")[1].split(")")[0])


def test_a_large_body_for_a_hung_worker_does_not_hold_up_the_others():
    with ServerProcess("--workers", "2", "--request-timeout-s", "20") as srv:
        os.kill(worker_pid_of_slot(srv, 0), signal.SIGSTOP)  # ties go to slot 0: it gets the first request
        big = {"id": "big", "image": b64(camera_jpeg() + b"\0" * 1_500_000)}  # > the pipe buffer
        with ThreadPoolExecutor(max_workers=1) as background:
            stuck = background.submit(srv.request, "/api/", big, timeout_s=HANG_LIMIT_S + 10)
            time.sleep(0.5)
            started = time.monotonic()
            status, _, _ = post_camera(srv, "meanwhile")
            waited_s = time.monotonic() - started
            assert status == 200
            assert waited_s < 10, f"a request for the idle worker waited {waited_s:.1f} s behind the hung one"
            assert stuck.result()[0] == 504


def test_shutdown_with_a_hung_worker_is_bounded_and_clean():
    srv = ServerProcess("--workers", "1", "--drain-timeout-s", "1").start()
    try:
        (worker,) = srv.worker_pids()
        os.kill(worker, signal.SIGSTOP)
        with ThreadPoolExecutor(max_workers=1) as background:
            in_flight = background.submit(post_camera, srv)
            time.sleep(0.3)
            started = time.monotonic()
            srv.proc.send_signal(signal.SIGTERM)
            code = srv.proc.wait(timeout=HANG_LIMIT_S)
            stopped_s = time.monotonic() - started
            status, _, payload = in_flight.result()
        assert code == 0
        assert stopped_s < 8, f"stopping took {stopped_s:.1f} s with --drain-timeout-s 1"
        assert status == 503 and "shutting down" in payload["error"]
    finally:
        srv.stop(signal.SIGKILL)


def test_a_replacement_that_cannot_load_is_retried_with_backoff_then_fatal(tmp_path):
    for name in ("yolov3-tiny.cfg", "coco.names", "yolov3-tiny.weights"):
        (tmp_path / name).symlink_to(REPO_ROOT / "yolo_tiny_configs" / name)
    srv = ServerProcess("--workers", "2", "--model-dir", str(tmp_path)).start()
    try:
        (tmp_path / "yolov3-tiny.weights").unlink()  # replacements can no longer load the model
        os.kill(worker_pid_of_slot(srv, 0), signal.SIGKILL)
        srv.wait_for_line(r"could not start: .*retrying in 0\.5 s")
        assert post_camera(srv)[0] == 200  # the other worker serves meanwhile
        srv.wait_for_line(r"retrying in 2\.0 s", timeout_s=30)
        assert srv.proc.wait(timeout=30) == 3
        assert sum("retrying in" in line for line in srv.lines) == 3
    finally:
        srv.stop(signal.SIGKILL)


def test_bodies_held_in_the_front_end_are_bounded_in_bytes_as_well_as_in_requests():
    with ServerProcess("--workers", "1", "--max-body-mb", "1", "--max-body-buffer-mb", "8",
                       "--request-timeout-s", "4") as srv:
        os.kill(srv.worker_pids()[0], signal.SIGSTOP)  # nothing leaves the queue
        body = {"id": "big", "image": b64(b"\0" * 650_000)}  # ~0.87 MB each: 9 fit in 8 MB
        with ThreadPoolExecutor(max_workers=14) as pool:
            answers = list(pool.map(lambda i: srv.request("/api/", {**body, "id": f"b{i}"}), range(14)))
        refused = [(headers, payload) for status, headers, payload in answers if status == 503]
        assert len(refused) >= 14 - 9, answers
        for headers, payload in refused:
            assert "MB of request bodies" in payload["error"] and headers["Retry-After"] == "1"
        assert {status for status, _, _ in answers} <= {503, 504}


def test_headers_trickled_in_cannot_outlast_the_head_timeout():
    with ServerProcess("--workers", "1", "--head-timeout-s", "2") as srv:
        with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\n")
            started = time.monotonic()
            closed_after_s = None
            for i in range(10):  # one header line every 0.5 s: each read is quick, the whole is not
                time.sleep(0.5)
                try:
                    sock.sendall(b"X-Slow-%d: 1\r\n" % i)
                except (BrokenPipeError, ConnectionResetError):
                    closed_after_s = time.monotonic() - started
                    break
            if closed_after_s is None:
                sock.settimeout(5)
                assert sock.recv(1024) == b"", "the server answered a request whose headers took 5 s"
                closed_after_s = time.monotonic() - started
        assert closed_after_s < 5.5
        assert post_camera(srv)[0] == 200
