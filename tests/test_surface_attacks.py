"""What an attacker found in the upload forms, DeepStack's and Open Inference's routes, the models and the
connection bounds: one regression test per finding, each on its own server with real sockets, real workers
and the real model.

Memory is read from /proc (VmHWM, the peak, of a worker that has served nothing else, so a peak cannot come
from another test); counts from /metrics. Every attack is bounded in requests and in time, and nothing asserts
on latency.
"""

import json
import struct
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np

from bench.proc_stats import peak_rss_mb
from support import ServerProcess, raw_exchange, scrape_metrics

MODEL = "yolov3-tiny"
INFER_PATH = f"/v2/models/{MODEL}/infer"
MAX_IMAGES = 16  # the server's --max-images default


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


def forward_passes(srv):
    """(passes, images in them, passes of at most 2 images) from detserve_batch_size."""
    buckets, images, passes = scrape_metrics(srv).histogram("detserve_batch_size", model=MODEL)
    return passes, images, dict(buckets)[2]


def test_tiny_images_in_one_request_do_not_multiply_a_workers_memory():
    """A forward pass costs about 25 MB per image whatever the image's size, so 16 one-pixel PNGs (a 1.3 KB
    request) run as one pass took a worker from 374 MB to a 770 MB peak, past the Deployment's 768Mi; two
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
