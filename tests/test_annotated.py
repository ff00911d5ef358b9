"""Annotated answers (Accept: image/jpeg or ?format=jpeg) on a real server with the real model: the
input's size, boxes drawn where the detections are and nowhere else, X-Detections, max_side."""

import json
import urllib.request

import cv2
import numpy as np

from support import INPUT_FOLDER, camera_body, camera_jpeg, camera_json, http_request, sample_images

# Drawing reaches this far outside a box (outline, label band above it); past it, only
# JPEG re-encoding changes a pixel. A label ("person 0.43") may be wider than its box.
DRAWING_MARGIN_PX = 40
LABEL_WIDTH_PX = 150


def post(server, data, query="", accept=None, content_type="image/jpeg"):
    headers = {"Content-Type": content_type}
    if accept:
        headers["Accept"] = accept
    return http_request(server.url + "/api/?" + query, body=data, headers=headers)


def raw_annotated(server, data, query="format=jpeg"):
    """(decoded image, headers) without the text decoding http_request does to non-JSON bodies."""
    request = urllib.request.Request(server.url + "/api/?" + query, data=data, headers={"Content-Type": "image/jpeg"})
    with urllib.request.urlopen(request, timeout=60) as response:
        assert response.status == 200 and response.headers["Content-Type"] == "image/jpeg"
        return cv2.imdecode(np.frombuffer(response.read(), np.uint8), cv2.IMREAD_COLOR), response.headers


def json_detections(server, data, query=""):
    status, _, payload = post(server, data, query)
    assert status == 200, payload
    return payload["detections"]


def test_accept_and_format_give_a_jpeg_of_the_inputs_size_with_the_detections_in_a_header(server):
    for path in sample_images():
        data = path.read_bytes()
        original = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        for query in ("format=jpeg", "format=jpeg&confidence=0.02&nms=0.5"):
            image, headers = raw_annotated(server, data, query)
            assert image.shape == original.shape, path.name
            options = query.replace("format=jpeg", "").strip("&")
            assert json.loads(headers["X-Detections"]) == json_detections(server, data, options)
            assert "X-Detections-Truncated" not in headers


def test_accept_image_jpeg_asks_for_the_annotated_image_and_json_stays_the_default(server):
    status, headers, _ = post(server, camera_jpeg(), accept="image/jpeg")
    assert status == 200 and headers["Content-Type"] == "image/jpeg"
    for accept in (None, "*/*", "application/json", "application/json, image/jpeg;q=0.5", "image/jpeg, */*",
                   "text/html", "image/jpeg;q=0"):
        status, headers, payload = post(server, camera_jpeg(), accept=accept)
        assert status == 200 and headers["Content-Type"] == "application/json", accept
        assert payload["detections"]
    status, headers, _ = post(server, camera_jpeg(), query="format=json", accept="image/jpeg")
    assert headers["Content-Type"] == "application/json"
    status, _, payload = post(server, camera_jpeg(), query="format=png")
    assert status == 400 and "format" in payload["error"]


def test_pixels_change_where_boxes_are_drawn_and_not_far_from_them(server):
    original = cv2.imdecode(np.frombuffer(camera_jpeg(), np.uint8), cv2.IMREAD_COLOR).astype(int)
    image, headers = raw_annotated(server, camera_jpeg())
    detections = json.loads(headers["X-Detections"])
    assert detections
    difference = np.abs(image.astype(int) - original).sum(axis=2)
    near_boxes = np.zeros(difference.shape, bool)
    for detection in detections:
        x, y, w, h = detection["bbox"]
        edge = difference[y:y + h + 1, x:x + 2]  # the left edge of the box, where the line is
        assert np.median(edge) > 60, detection
        near_boxes[max(0, y - DRAWING_MARGIN_PX):y + h + DRAWING_MARGIN_PX,
                   max(0, x - DRAWING_MARGIN_PX):x + max(w, LABEL_WIDTH_PX) + DRAWING_MARGIN_PX] = True
    assert (~near_boxes).sum() > 10_000, "the test needs pixels far from every box"
    assert np.mean(difference[~near_boxes]) < 8  # JPEG re-encoding only
    assert np.percentile(difference[~near_boxes], 99.9) < 60


def test_an_image_without_detections_comes_back_undrawn(server):
    path = INPUT_FOLDER / "rocket.jpg"
    image, headers = raw_annotated(server, path.read_bytes())
    assert json.loads(headers["X-Detections"]) == []
    original = cv2.imdecode(np.frombuffer(path.read_bytes(), np.uint8), cv2.IMREAD_COLOR).astype(int)
    assert np.abs(image.astype(int) - original).sum(axis=2).mean() < 8


def test_max_side_scales_the_annotated_image_down_never_up(server):
    moto = (INPUT_FOLDER / "motorcycle.jpg").read_bytes()  # 741 x 500
    image, headers = raw_annotated(server, moto, "format=jpeg&max_side=200")
    assert image.shape[:2] == (135, 200)
    assert json.loads(headers["X-Detections"]) == json_detections(server, moto)  # boxes stay in the input's pixels
    image, _ = raw_annotated(server, moto, "format=jpeg&max_side=5000")
    assert image.shape[:2] == (500, 741)
    status, _, payload = post(server, moto, "format=jpeg&max_side=8")
    assert status == 400 and "max_side" in payload["error"]


def test_a_png_and_a_json_body_are_annotated_too(server):
    original = cv2.imdecode(np.frombuffer(camera_jpeg(), np.uint8), cv2.IMREAD_COLOR)
    ok, png = cv2.imencode(".png", original)
    assert ok
    status, headers, _ = post(server, png.tobytes(), "format=jpeg", content_type="image/png")
    assert status == 200 and headers["Content-Type"] == "image/jpeg"
    status, headers, _ = post(server, camera_json("j"), "format=jpeg", content_type="application/json")
    assert status == 200 and headers["Content-Type"] == "image/jpeg"
    assert json.loads(headers["X-Detections"]) == json_detections(server, camera_jpeg())


def test_errors_stay_json_when_an_image_was_asked_for(server):
    status, headers, payload = post(server, b"not an image", "id=broken", accept="image/jpeg")
    assert status == 400 and headers["Content-Type"] == "application/json"
    assert payload["id"] == "broken"


def test_several_images_cannot_be_one_annotated_image(server):
    body = json.dumps({"images": [camera_body("a")]}).encode()
    status, _, payload = post(server, body, accept="image/jpeg", content_type="application/json")
    assert status == 406 and "one image" in payload["error"]


def test_x_detections_is_bounded_and_says_how_many_it_left_out(server):
    """A grid of 49 cameras at a tiny threshold: more detections than 3 KiB of header holds."""
    tile = cv2.resize(cv2.imdecode(np.frombuffer(camera_jpeg(), np.uint8), cv2.IMREAD_COLOR), (300, 300))
    grid = np.vstack([np.hstack([tile] * 7)] * 7)
    ok, encoded = cv2.imencode(".jpg", grid, [cv2.IMWRITE_JPEG_QUALITY, 92])
    data = encoded.tobytes()
    query = "confidence=0.001&nms=1"
    full = json_detections(server, data, query)
    image, headers = raw_annotated(server, data, "format=jpeg&" + query)
    assert len(headers["X-Detections"]) <= 3 * 1024
    shown = json.loads(headers["X-Detections"])
    assert len(full) > len(shown) > 0
    assert int(headers["X-Detections-Truncated"]) == len(full) - len(shown)
    assert shown == [d for d in full if d in shown]  # the answer's order
    assert min(d["confidence"] for d in shown) >= max(d["confidence"] for d in full if d not in shown)


def test_a_large_photo_is_drawn_on_its_full_pixels_and_detected_like_its_json_answer(server):
    """A 4032x3024 JPEG is detected from a reduced decode; its annotated answer has the photo's
    own sharpness (never the reduced decode blown up) and the JSON answer's detections."""
    camera = cv2.imdecode(np.frombuffer(camera_jpeg(), np.uint8), cv2.IMREAD_COLOR)
    ok, encoded = cv2.imencode(".jpg", cv2.resize(camera, (4032, 3024), interpolation=cv2.INTER_CUBIC),
                               [cv2.IMWRITE_JPEG_QUALITY, 95])
    data = encoded.tobytes()
    image, headers = raw_annotated(server, data)
    assert image.shape == (3024, 4032, 3)
    assert json.loads(headers["X-Detections"]) == json_detections(server, data)
    full = cv2.imdecode(encoded, cv2.IMREAD_COLOR).astype(int)
    blown_up = cv2.resize(cv2.imdecode(encoded, cv2.IMREAD_REDUCED_COLOR_4), (4032, 3024),
                          interpolation=cv2.INTER_LINEAR).astype(int)
    corner = (slice(2400, 3000), slice(3400, 4000))  # grass, far from the person boxes
    to_full = np.abs(image.astype(int)[corner] - full[corner]).mean()
    to_blown_up = np.abs(image.astype(int)[corner] - blown_up[corner]).mean()
    assert to_full < to_blown_up, (to_full, to_blown_up)
