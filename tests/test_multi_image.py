"""Several images in one request, {"images": [...]}, on a real server with the real model: order,
per-image errors with the status they would have had alone, limits, and one forward pass."""

import json
import re

import pytest

from support import ServerProcess, b64, camera_jpeg, sample_images

MAX_IMAGES = 8



@pytest.fixture(scope="module")
def srv():
    with ServerProcess("--workers", "1", "--max-images", str(MAX_IMAGES)) as server:
        yield server


def post(server, payload, query=""):
    return server.request("/api/" + ("?" + query if query else ""), payload)


def single(server, image_id, data, **options):
    status, _, payload = post(server, {"id": image_id, "image": b64(data), **options})
    return status, payload


def metric(server, name):
    _, _, text = server.request("/metrics")
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    return float(match.group(1))


def test_answers_come_in_order_and_equal_single_requests(srv):
    images = [(f"img-{i}-{path.stem}", path.read_bytes()) for i, path in enumerate(sample_images())][:MAX_IMAGES]
    status, headers, payload = post(srv, {"images": [{"id": i, "image": b64(d)} for i, d in images]})
    assert status == 200 and headers["Content-Type"] == "application/json"
    assert [entry["id"] for entry in payload["results"]] == [image_id for image_id, _ in images]
    for (image_id, data), entry in zip(images, payload["results"]):
        assert entry == single(srv, image_id, data)[1]


def test_one_bad_image_gets_its_own_error_and_status_and_the_others_their_answers(srv):
    good = {"id": "good", "image": b64(camera_jpeg())}
    entries = [
        good,
        {"id": "not-base64", "image": "@@@"},
        {"id": "not-an-image", "image": b64(b"hello")},
        {"image": b64(camera_jpeg())},
        "a string, not an object",
        {"id": "bad-option", "image": b64(camera_jpeg()), "confidence": 7},
        {"id": "good-2", "image": b64(camera_jpeg()), "classes": "person", "max_detections": 1},
    ]
    status, _, payload = post(srv, {"images": entries})
    assert status == 200
    results = payload["results"]
    assert len(results) == len(entries)
    for entry, result in zip(entries, results):
        if isinstance(entry, dict) and entry.get("id", "").startswith("good"):
            options = {k: v for k, v in entry.items() if k not in ("id", "image")}
            alone_status, alone = single(srv, entry["id"], camera_jpeg(), **options)
            assert alone_status == 200 and result == alone
            continue
        assert set(result) == {"id", "error", "status"}
        if not isinstance(entry, dict):  # alone it would be a different body (a JSON string)
            assert result == {"id": None, "error": result["error"], "status": 400}
            continue
        alone_status, _, alone = post(srv, entry)
        assert (result["status"], result["error"]) == (alone_status, alone["error"]), entry
        assert result["id"] == entry.get("id")


def test_top_level_options_apply_to_every_image_and_an_entrys_own_win(srv):
    status, _, payload = post(srv, {"confidence": 0.99, "images": [
        {"id": "strict", "image": b64(camera_jpeg())},
        {"id": "lenient", "image": b64(camera_jpeg()), "confidence": 0.01, "nms": 0.9},
    ]})
    assert status == 200
    strict, lenient = payload["results"]
    assert strict["detections"] == []
    assert lenient == single(srv, "lenient", camera_jpeg(), confidence=0.01, nms=0.9)[1]
    _, _, by_query = post(srv, {"images": [{"id": "q", "image": b64(camera_jpeg())}]}, "max_detections=1")
    assert by_query["results"][0] == single(srv, "q", camera_jpeg(), max_detections=1)[1]


@pytest.mark.parametrize("payload, status", [
    ({"images": []}, 400),
    ({"images": "x"}, 400),
    ({"images": {"id": "a", "image": "b"}}, 400),
    ({"images": [{"id": "a", "image": "b"}], "image": "c", "id": "d"}, 400),
    ({"images": [{"id": "a", "image": "b"}], "confidence": 2}, 400),
    ({"images": [{"id": str(i), "image": b64(camera_jpeg())} for i in range(MAX_IMAGES + 1)]}, 413),
])
def test_a_malformed_or_oversized_request_is_refused_whole(srv, payload, status):
    got, _, answer = post(srv, payload)
    assert got == status, answer
    assert answer["error"] and "results" not in answer


def test_the_structure_guard_scales_with_max_images_and_still_refuses_the_attackers_shapes(srv):
    every_label = srv.request("/api/labels")[2]
    full = {"images": [{"id": str(i), "image": b64(camera_jpeg()), "classes": every_label, "confidence": 0.2,
                        "nms": 0.2, "max_detections": 5, "max_side": 100} for i in range(MAX_IMAGES)],
            "classes": every_label}
    status, _, payload = post(srv, full)
    assert status == 200, payload
    hostile = b'{"images": [' + b",".join([b"{}"] * 5000) + b"]}"
    status, _, payload = srv.request("/api/", hostile, headers={"Content-Type": "application/json"})
    assert status == 400 and "objects, arrays or commas" in payload["error"]
    double = json.dumps(json.dumps({"images": [{"id": "d", "image": b64(camera_jpeg())}]})).encode()
    status, _, payload = srv.request("/api/", double, headers={"Content-Type": "application/json"})
    assert status == 200 and payload["results"][0]["id"] == "d"


def test_the_images_of_one_request_are_one_forward_pass():
    with ServerProcess("--workers", "1") as server:
        count_before = metric(server, 'detserve_batch_size_count{model="yolov3-tiny"}')
        sum_before = metric(server, 'detserve_batch_size_sum{model="yolov3-tiny"}')
        images_before = metric(server, "detserve_images_processed_total")
        images = [{"id": path.stem, "image": b64(path.read_bytes())} for path in sample_images()][:5]
        images.append({"id": "broken", "image": b64(b"not an image")})
        status, _, payload = post(server, {"images": images})
        assert status == 200 and len(payload["results"]) == 6
        assert metric(server, 'detserve_batch_size_count{model="yolov3-tiny"}') == count_before + 1
        assert metric(server, 'detserve_batch_size_sum{model="yolov3-tiny"}') == sum_before + 5
        assert metric(server, "detserve_images_processed_total") == images_before + 5
        _, _, text = server.request("/metrics")
        assert re.search(r'^detserve_batch_size_bucket\{model="yolov3-tiny",le="4"\} 0$', text, re.M)
        assert re.search(r'^detserve_batch_size_bucket\{model="yolov3-tiny",le="8"\} 1$', text, re.M)
