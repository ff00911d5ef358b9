"""What a hostile web page or an abandoned request could make a detection route do, and what it does now.

Cross-site browser requests are refused on every detection route (a page on
the internet must not make its visitors' browsers submit work to a detserve
on their machine); clients that are not browsers are not affected. Work
nobody waits for stops: a multi-image task checks its deadline between
images, so an abandoned request frees its worker within one image's cost.
"""

import json
import time

import cv2
import numpy as np
import pytest

from detserve.config import Config
from detserve.protocol import TaskHeader
from detserve.worker.task_preparation import TaskPreparation
from support import ServerProcess, b64, camera_jpeg, metric_value

ALLOWED_ORIGIN = "http://dashboard.example:8080"


@pytest.fixture(scope="module")
def srv():
    with ServerProcess("--workers", "1", "--allow-origin", f"{ALLOWED_ORIGIN}, http://other.example") as server:
        yield server


def post_camera(srv, headers):
    return srv.request("/api/?id=cam", body=camera_jpeg(), headers={"Content-Type": "image/jpeg", **headers})


@pytest.mark.parametrize("headers", [
    {"Sec-Fetch-Site": "cross-site"},
    {"Sec-Fetch-Site": "cross-site", "Origin": "https://evil.example"},
    {"Origin": "https://evil.example"},  # an older browser: no Sec-Fetch-Site, but an Origin
    {"Origin": "null"},  # a sandboxed frame or a data: page
    {"Sec-Fetch-Site": "same-site", "Origin": "http://printer.lan"},  # another host of the same site
])
def test_a_browser_request_from_another_site_is_refused_in_words(srv, headers):
    refused_before = metric_value(srv, 'detserve_rejected_requests_total{reason="cross_site"}')
    status, answer_headers, body = post_camera(srv, headers)
    assert status == 403, body
    assert "--allow-origin" in body["error"] and body["id"] is None
    assert answer_headers["Connection"] == "close"  # the body was never read
    assert metric_value(srv, 'detserve_rejected_requests_total{reason="cross_site"}') == refused_before + 1


@pytest.mark.parametrize("headers", [
    {},  # curl, the load client, DeepStack and Triton clients, old clients
    {"Sec-Fetch-Site": "same-origin"},
    {"Sec-Fetch-Site": "none"},  # typed into the address bar, or a bookmark
    {"Origin": ALLOWED_ORIGIN, "Sec-Fetch-Site": "cross-site"},  # listed by the operator
    {"Origin": "http://other.example", "Sec-Fetch-Site": "cross-site"},
])
def test_clients_that_are_not_cross_site_pages_are_served(srv, headers):
    status, _, body = post_camera(srv, headers)
    assert status == 200, body
    assert body["id"] == "cam" and body["detections"]


def test_the_servers_own_page_origin_is_its_own(srv):
    """The page's fetch carries Origin http://<the Host it was served from>."""
    headers = {"Origin": f"http://127.0.0.1:{srv.port}", "Sec-Fetch-Site": "same-origin",
               "Host": f"127.0.0.1:{srv.port}"}
    status, _, body = srv.request("/api/", body={"id": "page", "image": b64(camera_jpeg())}, headers=headers)
    assert status == 200 and body["id"] == "page"
    headers = {"Origin": f"http://127.0.0.1:{srv.port}", "Host": f"127.0.0.1:{srv.port}"}
    status, _, _ = srv.request("/api/", body={"id": "page", "image": b64(camera_jpeg())}, headers=headers)
    assert status == 200


def test_a_refused_origin_does_not_reach_the_worker_nor_hide_a_key_problem(srv):
    """Cross-site is decided before the key: a page cannot probe which keys work."""
    status, _, body = post_camera(srv, {"Origin": "https://evil.example", "Authorization": "Bearer wrong"})
    assert status == 403, body


# -- work nobody waits for stops -------------------------------------------------------------------
def slow_png_b64(side_px=2400):
    """A small grey PNG whose decode costs tens of milliseconds (few bytes, many pixels), eight of
    which fit one request's decoding budget."""
    ok, encoded = cv2.imencode(".png", np.zeros((side_px, side_px), np.uint8))
    assert ok
    return b64(encoded.tobytes())


class StandInModel:
    """What task preparation asks of a model (its labels and input size), without loading one."""

    labels = ("person",)

    def network_input(self, image):
        return image


def test_a_multi_image_task_stops_at_its_deadline_between_images():
    """The first image's decode outlives the deadline: the rest are never decoded, the task is a 504."""
    image = slow_png_b64()
    body = json.dumps({"images": [{"id": f"n{i}", "image": image} for i in range(8)]}).encode()
    preparation = TaskPreparation(Config(), {"yolov3-tiny": StandInModel()})
    now_s = time.monotonic()
    header = TaskHeader(task_id=1, request_id="abandoned", media_type="application/json", query_image_id=None,
                        enqueued_at_s=now_s, deadline_at_s=now_s + 0.01)
    started_s = time.perf_counter()
    with pytest.raises(Exception) as refused:
        preparation.prepare(header, body, queue_wait_s=0.0)
    one_image_s = time.perf_counter() - started_s
    assert getattr(refused.value, "status", None) == 504, refused.value
    # Every image was decoded before, eight times this one's cost; now the worker stops after one.
    started_s = time.perf_counter()
    alone = TaskHeader(task_id=2, request_id="alone", media_type="application/json", query_image_id=None,
                       enqueued_at_s=time.monotonic(), deadline_at_s=time.monotonic() + 60)
    job = preparation.prepare(alone, body, queue_wait_s=0.0)
    all_images_s = time.perf_counter() - started_s
    assert len(job.image_jobs()) == 8
    assert one_image_s < all_images_s / 2, (one_image_s, all_images_s)
