"""Several images in one request, {"images": [...]}, on a real server with the real model: order,
per-image errors with the status they would have had alone, limits, and forward passes of at most
--max-batch images."""

import json

import pytest

from detserve.config import Config
from support import b64, camera_body, camera_jpeg, sample_images, scrape_metrics

MAX_IMAGES = Config().max_images  # the shared server's, the default


def post(server, payload, query=""):
    return server.request("/api/" + ("?" + query if query else ""), payload)


def single(server, image_id, data, **options):
    status, _, payload = post(server, {"id": image_id, "image": b64(data), **options})
    return status, payload


def batch_figures(server):
    """(forward passes, images in them, images processed, passes of at most 4 and of at most 8 images)."""
    scrape = scrape_metrics(server)
    buckets, images_in_batches, batches = scrape.histogram("detserve_batch_size", model="yolov3-tiny")
    by_bound = dict(buckets)
    return batches, images_in_batches, scrape.value("detserve_images_processed_total"), by_bound[4], by_bound[8]


def test_answers_come_in_order_and_equal_single_requests(server):
    images = [(f"img-{i}-{path.stem}", path.read_bytes()) for i, path in enumerate(sample_images())][:MAX_IMAGES]
    status, headers, payload = post(server, {"images": [{"id": i, "image": b64(d)} for i, d in images]})
    assert status == 200 and headers["Content-Type"] == "application/json"
    assert [entry["id"] for entry in payload["results"]] == [image_id for image_id, _ in images]
    for (image_id, data), entry in zip(images, payload["results"]):
        assert entry == single(server, image_id, data)[1]


def test_one_bad_image_gets_its_own_error_and_status_and_the_others_their_answers(server):
    good = camera_body("good")
    entries = [
        good,
        {"id": "not-base64", "image": "@@@"},
        {"id": "not-an-image", "image": b64(b"hello")},
        {"image": b64(camera_jpeg())},
        "a string, not an object",
        {**camera_body("bad-option"), "confidence": 7},
        {**camera_body("good-2"), "classes": "person", "max_detections": 1},
    ]
    status, _, payload = post(server, {"images": entries})
    assert status == 200
    results = payload["results"]
    assert len(results) == len(entries)
    for entry, result in zip(entries, results):
        if isinstance(entry, dict) and entry.get("id", "").startswith("good"):
            options = {k: v for k, v in entry.items() if k not in ("id", "image")}
            alone_status, alone = single(server, entry["id"], camera_jpeg(), **options)
            assert alone_status == 200 and result == alone
            continue
        assert set(result) == {"id", "error", "status"}
        if not isinstance(entry, dict):  # alone it would be a different body (a JSON string)
            assert result == {"id": None, "error": result["error"], "status": 400}
            continue
        alone_status, _, alone = post(server, entry)
        assert (result["status"], result["error"]) == (alone_status, alone["error"]), entry
        assert result["id"] == entry.get("id")


def test_top_level_options_apply_to_every_image_and_an_entrys_own_win(server):
    status, _, payload = post(server, {"confidence": 0.99, "images": [
        camera_body("strict"),
        {**camera_body("lenient"), "confidence": 0.01, "nms": 0.9},
    ]})
    assert status == 200
    strict, lenient = payload["results"]
    assert strict["detections"] == []
    assert lenient == single(server, "lenient", camera_jpeg(), confidence=0.01, nms=0.9)[1]
    _, _, by_query = post(server, {"images": [camera_body("q")]}, "max_detections=1")
    assert by_query["results"][0] == single(server, "q", camera_jpeg(), max_detections=1)[1]


@pytest.mark.parametrize("payload, status", [
    ({"images": []}, 400),
    ({"images": "x"}, 400),
    ({"images": {"id": "a", "image": "b"}}, 400),
    ({"images": [{"id": "a", "image": "b"}], "image": "c", "id": "d"}, 400),
    ({"images": [{"id": "a", "image": "b"}], "confidence": 2}, 400),
    ({"images": [camera_body(str(i)) for i in range(MAX_IMAGES + 1)]}, 413),
])
def test_a_malformed_or_oversized_request_is_refused_whole(server, payload, status):
    got, _, answer = post(server, payload)
    assert got == status, answer
    assert answer["error"] and "results" not in answer


def test_the_structure_guard_scales_with_max_images_and_still_refuses_the_attackers_shapes(server):
    every_label = server.request("/api/labels")[2]
    full = {"images": [{**camera_body(str(i)), "classes": every_label, "confidence": 0.2,
                        "nms": 0.2, "max_detections": 5, "max_side": 100} for i in range(MAX_IMAGES)],
            "classes": every_label}
    status, _, payload = post(server, full)
    assert status == 200, payload
    hostile = b'{"images": [' + b",".join([b"{}"] * 5000) + b"]}"
    status, _, payload = server.request("/api/", hostile, headers={"Content-Type": "application/json"})
    assert status == 400 and "objects, arrays or commas" in payload["error"]
    double = json.dumps(json.dumps({"images": [camera_body("d")]})).encode()
    status, _, payload = server.request("/api/", double, headers={"Content-Type": "application/json"})
    assert status == 200 and payload["results"][0]["id"] == "d"


def test_the_images_of_one_request_run_in_passes_of_at_most_max_batch(server, batching_server):
    images = [{"id": path.stem, "image": b64(path.read_bytes())} for path in sample_images()][:5]
    images.append({"id": "broken", "image": b64(b"not an image")})
    # --max-batch 1 (the shared server): five passes of one; --max-batch 4: one of four and one of one.
    for srv, passes in ((server, 5), (batching_server, 2)):
        batches, images_in_batches, processed, up_to_4, up_to_8 = batch_figures(srv)
        status, _, payload = post(srv, {"images": images})
        assert status == 200 and len(payload["results"]) == 6
        # The scrape comes after the answer, and the worker counts a batch before it answers.
        assert batch_figures(srv) == (batches + passes, images_in_batches + 5, processed + 5,
                                      up_to_4 + passes, up_to_8 + passes)
