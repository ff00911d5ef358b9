"""What an attacker found in the upload forms, DeepStack's and Open Inference's routes, the models and the
connection bounds: one regression test per finding, each on its own server with real sockets, real workers
and the real model.

Memory is read from /proc (VmHWM, the peak, of a worker that has served nothing else, so a peak cannot come
from another test); counts from /metrics. Every attack is bounded in requests and in time, and nothing asserts
on latency.
"""

import json
import socket
import struct
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np

from bench.proc_stats import peak_rss_mb
from support import (ServerProcess, camera_jpeg, form_content_type, form_part, http_request, multipart_body, poll_until,
                     raw_exchange, scrape_metrics)

MODEL = "yolov3-tiny"
INFER_PATH = f"/v2/models/{MODEL}/infer"
MAX_IMAGES = 16  # the server's --max-images default
MIB = 1 << 20


def one_pixel_png():
    return cv2.imencode(".png", np.zeros((1, 1, 3), np.uint8))[1].tobytes()


def binary_infer_request(images):
    """(head bytes, body) of a binary-tensor infer request carrying images as IMAGE's elements."""
    tensors = b"".join(struct.pack("<I", len(image)) + image for image in images)
    header = json.dumps({"inputs": [{"name": "IMAGE", "datatype": "BYTES", "shape": [len(images)],
                                     "parameters": {"binary_data_size": len(tensors)}}]}).encode()
    body = header + tensors
    head = (f"POST {INFER_PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/octet-stream\r\n"
            f"Inference-Header-Content-Length: {len(header)}\r\nContent-Length: {len(body)}\r\n\r\n").encode()
    return head, body


def post_camera(port):
    """The status of one raw camera upload to /api/, or the name of the error that ended it."""
    try:
        return http_request(f"http://127.0.0.1:{port}/api/", body=camera_jpeg(), headers={"Content-Type": "image/jpeg"},
                            timeout_s=30)[0]
    except OSError as exc:
        return type(getattr(exc, "reason", exc)).__name__


def forward_passes(srv):
    """(passes, images in them, passes of at most 2 images) from detserve_batch_size."""
    buckets, images, passes = scrape_metrics(srv).histogram("detserve_batch_size", model=MODEL)
    return passes, images, dict(buckets)[2]


def test_tiny_images_in_one_request_do_not_multiply_a_workers_memory():
    """A forward pass costs about 25 MB per image whatever the image's size, so 16 one-pixel PNGs (a 1.3 KB
    request) run as one pass took a worker from 374 MB to a 770 MB peak (the whole pod had 768Mi then); two
    such requests batched together (--max-batch 2) made one pass of 32. Passes now hold at most --max-batch
    images."""
    with ServerProcess("--workers", "1", "--max-batch", "2", "--max-wait-ms", "300") as srv:
        (worker,) = srv.worker_pids()
        booted_peak_mb = peak_rss_mb(worker)
        head, body = binary_infer_request([one_pixel_png()] * MAX_IMAGES)
        with ThreadPoolExecutor(2) as pool:  # two at once, so the worker batches them
            answers = list(pool.map(lambda _: raw_exchange(srv.port, head, body=body, timeout_s=60), range(2)))
        assert [answer.status for answer in answers] == [200, 200], [answer.body[:200] for answer in answers]
        assert all(json.loads(answer.body)["outputs"][0]["shape"] == [MAX_IMAGES] for answer in answers)
        grown_mb = peak_rss_mb(worker) - booted_peak_mb
        # One extra image in a pass is ~25 MB; a pass of 16 was ~390 MB, of 32 ~800 MB.
        assert grown_mb < 100, f"the worker's peak grew {grown_mb:.0f} MB for 32 one-pixel images"
        passes, images, small_passes = forward_passes(srv)
        assert images == 2 * MAX_IMAGES and passes == small_passes >= MAX_IMAGES, (passes, images, small_passes)


class TricklingUploads:
    """count uploads to path, each declaring a large body and sending chunk_bytes every 0.25 s (above the
    body reader's floor of 16 KiB/s, so none is dropped as stalled) until stopped or closed by the server."""

    def __init__(self, port, count, path="/v1/vision/detection", chunk_bytes=8 * 1024, declared_bytes=8 << 20):
        self.closed_by_server = 0
        self._stop = threading.Event()
        head = (f"POST {path} HTTP/1.1\r\nHost: t\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                f"Content-Length: {declared_bytes}\r\n\r\n").encode()
        self._threads = [threading.Thread(target=self._upload, args=(port, head, chunk_bytes), daemon=True)
                         for _ in range(count)]

    def _upload(self, port, head, chunk_bytes):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            try:
                sock.sendall(head)
                while not self._stop.wait(0.25):
                    sock.sendall(b"x" * chunk_bytes)
            except OSError:
                self.closed_by_server += 1

    def __enter__(self):
        for thread in self._threads:
            thread.start()
        time.sleep(1.5)  # every upload under way for longer than the table's grace
        return self

    def __exit__(self, *exc):
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=5)


def test_uploads_that_trickle_in_give_way_to_new_requests_at_the_connection_limit():
    """256 uploads at 24 KiB/s each (6 MiB/s in all, 25 connects/s) held every --max-connections slot:
    35 of 37 other requests got 503 for 20 s. At the limit the slowest upload under 128 KiB/s now gives
    way, as an idle connection does (after: 33 of 33 served); the attack needs 5 times the bandwidth."""
    with ServerProcess("--workers", "1", "--max-connections", "8") as srv:
        with TricklingUploads(srv.port, 8) as uploads:
            statuses = [post_camera(srv.port) for _ in range(3)]
            assert statuses == [200, 200, 200], statuses
            # The first request took an upload's slot (the others found it free again): that upload was cut off.
            assert poll_until(lambda: uploads.closed_by_server >= 1, timeout_s=5), uploads.closed_by_server


def striped_png(side_px=4096):
    """One random row repeated: a 72 KB PNG whose annotated answer is a JPEG of about 5.6 MB."""
    row = np.random.default_rng(0).integers(0, 256, (1, side_px, 3), dtype=np.uint8)
    return cv2.imencode(".png", np.repeat(row, side_px, axis=0), [cv2.IMWRITE_PNG_COMPRESSION, 9])[1].tobytes()


class SlowAnswerReaders:
    """count clients that ask for the annotated answer to png at path and take 8 KiB of it every 0.1 s
    (80 KiB/s, over the writer's floor of 64 KiB/s, so none is dropped) until stopped."""

    def __init__(self, port, count, png, path):
        self._stop = threading.Event()
        self._request = (f"POST {path} HTTP/1.1\r\nHost: t\r\nContent-Type: image/png\r\n"
                         f"Content-Length: {len(png)}\r\n\r\n").encode() + png
        self._threads = [threading.Thread(target=self._read, args=(port,), daemon=True) for _ in range(count)]

    def _read(self, port):
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # the kernel holds little for us
            sock.settimeout(10)
            sock.connect(("127.0.0.1", port))
            sock.sendall(self._request)
            while not self._stop.wait(0.1) and sock.recv(8192):
                pass

    def __enter__(self):
        for thread in self._threads:
            thread.start()
        time.sleep(3)  # every answer made and being taken
        return self

    def __exit__(self, *exc):
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=5)


def test_slow_readers_of_large_answers_cannot_lock_out_the_small_ones():
    """Every answer was charged to --max-answer-buffer-mb, so readers taking annotated pictures just over
    the writer's floor could hold it: two 5.6 MB answers (from 72 KB uploads) read at 80 KiB/s, with the
    budget 100 bytes over them, and 10 of 10 JSON, DeepStack and Open Inference answers got 503 after their
    worker had run them. Answers of at most 16 KiB are bounded by the connections and no longer counted."""
    png = striped_png()
    annotated_path = "/api/?format=jpeg&max_side=4096"
    annotated_head = (f"POST {annotated_path} HTTP/1.1\r\nHost: t\r\nContent-Type: image/png\r\n"
                      f"Content-Length: {len(png)}\r\n\r\n").encode()
    with ServerProcess("--workers", "1") as srv:
        answer = raw_exchange(srv.port, annotated_head, body=png, timeout_s=60)
        assert answer.status == 200 and answer.header("Content-Type") == "image/jpeg"
        answer_bytes = len(answer.body)
    budget_mb = (2 * answer_bytes + 100) / MIB  # two such answers fill it to within 100 bytes
    with ServerProcess("--workers", "1", "--max-answer-buffer-mb", repr(budget_mb)) as srv:
        form = multipart_body(form_part("image", camera_jpeg(), "camera.jpg"))
        head, tensors = binary_infer_request([camera_jpeg()])
        with SlowAnswerReaders(srv.port, 2, png, annotated_path):
            statuses = {
                "/api/": post_camera(srv.port),
                "DeepStack": http_request(srv.url + "/v1/vision/detection", body=form,
                                          headers={"Content-Type": form_content_type()})[0],
                "Open Inference": raw_exchange(srv.port, head, body=tensors).status,
                "annotated, over the budget": raw_exchange(srv.port, annotated_head, body=png).status,
            }
        assert statuses == {"/api/": 200, "DeepStack": 200, "Open Inference": 200,
                            "annotated, over the budget": 503}, statuses
