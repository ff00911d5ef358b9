"""The API on a real 2-worker server with the real model: parity, accepted inputs, batching."""

import base64
import json
import re
import uuid
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np
import pytest

from reference import assert_same_detections, reference_detections
from support import b64, image_bytes, logged_batch_size, sample_images


def blank_png(width=320, height=240):
    ok, encoded = cv2.imencode(".png", np.full((height, width, 3), 127, np.uint8))
    assert ok
    return encoded.tobytes()


@pytest.fixture(scope="module")
def images():
    return {path.name: image_bytes(path.name) for path in sample_images()}


def test_welcome_page_names_the_api(server):
    status, headers, text = server.request("/")
    assert status == 200
    assert "POST /api/" in text
    assert headers["Content-Type"].startswith("text/plain")


def test_every_sample_image_matches_the_single_image_reference(server, images):
    assert len(images) >= 5
    found_any = False
    for name, data in images.items():
        status, headers, payload = server.request("/api/", {"id": name, "image": b64(data)})
        assert status == 200, payload
        assert headers["Content-Type"] == "application/json"
        assert payload["id"] == name
        assert_same_detections(payload["detections"], reference_detections(data))
        found_any = found_any or bool(payload["detections"])
    assert found_any, "the sample images should contain at least one detectable object"


def test_concurrent_requests_each_get_their_own_id_and_answer(server, images):
    jobs = [(f"req-{i}-{name}", data) for i in range(4) for name, data in images.items()]

    def post(job):
        image_id, data = job
        return image_id, data, server.request("/api/", {"id": image_id, "image": b64(data)})

    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(post, jobs))
    for image_id, data, (status, _, payload) in answers:
        assert status == 200, payload
        assert payload["id"] == image_id
        assert_same_detections(payload["detections"], reference_detections(data))


def test_an_image_with_nothing_in_it_gives_an_empty_list(server):
    status, _, payload = server.request("/api/", {"id": "blank", "image": b64(blank_png())})
    assert (status, payload) == (200, {"id": "blank", "detections": []})


def test_double_encoded_json_body_is_accepted(server, images):
    data = images["camera.jpg"]
    body = json.dumps(json.dumps({"id": "double", "image": b64(data)})).encode()
    status, _, payload = server.request("/api/", body, headers={"Content-Type": "application/json"})
    assert status == 200, payload
    assert payload["id"] == "double"
    assert_same_detections(payload["detections"], reference_detections(data))


def test_data_url_prefix_and_line_wrapped_base64_are_accepted(server, images):
    data = images["coffee.jpg"]
    wrapped = base64.encodebytes(data).decode()  # MIME style: a newline every 76 characters
    for image_id, image in (("data-url", "data:image/jpeg;base64," + b64(data)), ("wrapped", wrapped)):
        status, _, payload = server.request("/api/", {"id": image_id, "image": image})
        assert status == 200, payload
        assert_same_detections(payload["detections"], reference_detections(data))


def test_raw_jpeg_body_with_query_id(server, images):
    data = images["camera.jpg"]
    status, _, payload = server.request("/api/?id=raw-1", data, headers={"Content-Type": "image/jpeg"})
    assert status == 200, payload
    assert payload["id"] == "raw-1"
    assert_same_detections(payload["detections"], reference_detections(data))


def test_raw_png_body_without_id_gets_a_generated_uuid(server):
    status, _, payload = server.request("/api/", blank_png(), headers={"Content-Type": "image/png"})
    assert status == 200, payload
    assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", payload["id"])


def test_png_input_matches_reference(server, images):
    image = cv2.imdecode(np.frombuffer(images["camera.jpg"], np.uint8), cv2.IMREAD_COLOR)
    png = cv2.imencode(".png", image)[1].tobytes()
    status, _, payload = server.request("/api/", {"id": "png", "image": b64(png)})
    assert status == 200
    assert_same_detections(payload["detections"], reference_detections(png))


def test_forced_batches_give_exactly_the_unbatched_detections(batching_server, images):
    """Batch invariance: a batched image must get exactly the detections it gets alone."""
    jobs = [(f"{name}-{i}-{uuid.uuid4().hex}", data) for i in range(2) for name, data in images.items()]

    def post(job):
        image_id, data = job
        return batching_server.request("/api/", {"id": image_id, "image": b64(data)},
                                       headers={"X-Request-ID": image_id})

    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        answers = list(zip(jobs, pool.map(post, jobs)))
    batch_sizes = [logged_batch_size(batching_server, image_id) for image_id, _ in jobs]
    assert max(batch_sizes) > 1, f"no batch formed: {batch_sizes}"
    for (image_id, data), (status, _, payload) in answers:
        assert status == 200, payload
        assert payload["id"] == image_id
        assert_same_detections(payload["detections"], reference_detections(data))
