"""The DeepStack routes against a live server with the real model, through their real clients:
deepstack-python 0.9 (Home Assistant's), the request Frigate's plugin sends, and curl -F (the
docs' examples). Each answer is computed from POST /api/ with the options DeepStack's routes
use, its labels renamed to COCO 2017's; errors, the model list, the status routes and the API
key (in the form or as a bearer token) are checked on the wire."""

import uuid

import cv2
import numpy as np
import pytest
import requests
from deepstack.core import DeepstackException, DeepstackObject

from support import (PDF, ServerProcess, assert_doc_examples_answer_as_shown, camera_jpeg, image_bytes, raw_exchange,
                     sample_images, scrape_metrics)

DETECTION = "/v1/vision/detection"
CUSTOM = "/v1/vision/custom/"
# What DeepStack's routes promise: COCO 2017's names where darknet's coco.names differs.
RENAMED = {"motorbike": "motorcycle", "aeroplane": "airplane", "sofa": "couch", "pottedplant": "potted plant",
           "diningtable": "dining table", "tvmonitor": "tv"}
# DeepStack's post-processing, which its routes apply unless the query says otherwise.
DEEPSTACK_NMS = {"nms": "0.45", "nms_mode": "per_class"}
TIMINGS = ("inferenceMs", "processMs")


def api_predictions(server, data, headers=None, **query):
    """DeepStack's predictions computed from POST /api/'s answer with DeepStack's NMS and query's options."""
    parameters = "&".join(f"{name}={value}" for name, value in {**DEEPSTACK_NMS, **query}.items())
    status, _, payload = server.request(f"/api/?{parameters}", data,
                                        headers={"Content-Type": "image/jpeg", **(headers or {})})
    assert status == 200, payload
    ranked = sorted(payload["detections"], key=lambda d: -d["confidence"])  # stable, as DeepStack's order is
    return [{"label": RENAMED.get(d["label"], d["label"]), "confidence": d["confidence"],
             "x_min": d["bbox"][0], "y_min": d["bbox"][1],
             "x_max": d["bbox"][0] + d["bbox"][2], "y_max": d["bbox"][1] + d["bbox"][3]} for d in ranked]


def post_form(server, path, image, data=None, headers=None, filename="image"):
    return requests.post(server.url + path, files={"image": (filename, image)}, data=data or {}, headers=headers,
                         timeout=60)


def deepstack_error(response, status):
    """The error message of a DeepStack error answer, after checking its status and form."""
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"] == "application/json"
    assert response.headers["Content-Length"] == str(len(response.content))
    payload = response.json()
    assert payload == {"success": False, "error": payload["error"], "predictions": []}
    return payload["error"]


def frigate_jpeg(data):
    """An image as Frigate's plugin sends it: 320x320, RGB, a JPEG of Pillow's default quality (75)."""
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    square = cv2.resize(image, (320, 320), interpolation=cv2.INTER_AREA)
    return cv2.imencode(".jpg", square, [cv2.IMWRITE_JPEG_QUALITY, 75])[1].tobytes()


# -- deepstack-python, as Home Assistant calls it -----------------------------------------------------------
@pytest.mark.parametrize("custom_model", ["", "yolov3-tiny"], ids=["detection", "custom-model"])
def test_deepstack_python_gets_the_detections_of_the_api(server, custom_model):
    found = set()
    for path in sample_images():
        data = image_bytes(path.name)
        client = DeepstackObject("127.0.0.1", server.port, min_confidence=0.1, custom_model=custom_model)
        predictions = client.detect(data)
        assert predictions == api_predictions(server, data, confidence="0.1"), path.name
        found.update(p["label"] for p in predictions)
    assert "motorcycle" in found and "person" in found and "motorbike" not in found


def test_deepstack_pythons_default_min_confidence_is_honoured(server):
    predictions = DeepstackObject("127.0.0.1", server.port).detect(camera_jpeg())  # it sends 0.45
    assert predictions == api_predictions(server, camera_jpeg(), confidence="0.45")


def test_an_unknown_custom_model_is_a_deepstack_exception_and_a_404_before_the_body_is_read(server):
    with pytest.raises(DeepstackException, match="404"):
        DeepstackObject("127.0.0.1", server.port, custom_model="yolov9").detect(camera_jpeg())
    # A 1 MB body declared and never sent: the answer comes at once, and the connection closes.
    response = raw_exchange(server.port, b"POST /v1/vision/custom/yolov9 HTTP/1.1\r\nHost: x\r\n"
                                         b"Content-Type: multipart/form-data; boundary=x\r\n"
                                         b"Content-Length: 1000000\r\n\r\n")
    assert response.status == 404 and "Connection: close" in response.head
    assert response.json() == {"success": False, "predictions": [],
                               "error": "no model named 'yolov9'; this server runs yolov3-tiny "
                                        "(GET /v1/vision/custom/list)"}


# -- Frigate's plugin ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", sample_images(), ids=lambda path: path.name)
def test_frigates_request_gets_deepstacks_answer_with_its_defaults(server, path):
    jpeg = frigate_jpeg(image_bytes(path.name))
    response = requests.post(server.url + DETECTION, data={"api_key": ""}, files={"image": jpeg}, timeout=10)
    assert response.status_code == 200
    assert response.headers["Content-Length"] == str(len(response.content))
    answer = response.json()
    expected = api_predictions(server, jpeg, confidence="0.4")  # DeepStack's default min_confidence
    assert {name: value for name, value in answer.items() if name not in TIMINGS} == {
        "success": True, "predictions": expected, "count": len(expected)}
    assert all(type(answer[name]) is int and answer[name] >= 0 for name in TIMINGS)
    assert answer["processMs"] >= answer["inferenceMs"]


# -- options -------------------------------------------------------------------------------------------------
def test_detserves_options_work_as_query_parameters_with_either_label_spelling(server):
    data = image_bytes("motorcycle.jpg")
    answer = post_form(server, f"{DETECTION}?classes=motorcycle,person&max_detections=1&nms=0.3",
                       data, {"min_confidence": "0.05"}).json()
    expected = api_predictions(server, data, confidence="0.05", classes="motorbike,person", max_detections="1",
                               nms="0.3")
    assert answer["predictions"] == expected and expected[0]["label"] == "motorcycle"
    by_model = post_form(server, f"{DETECTION}?model=yolov3-tiny", data, {"min_confidence": "0.05"}).json()
    assert by_model["predictions"] == api_predictions(server, data, confidence="0.05")
    error = deepstack_error(post_form(server, f"{DETECTION}?model=yolov9", data), 400)
    assert error.startswith("no model named 'yolov9'")
    error = deepstack_error(post_form(server, f"{DETECTION}?classes=unicorn", data), 400)
    assert "unknown label 'unicorn'" in error


def test_min_confidence_comes_from_the_form_else_the_query_else_deepstacks_default(server):
    data = camera_jpeg()
    by_query = post_form(server, f"{DETECTION}?min_confidence=0.42", data).json()
    assert by_query["predictions"] == api_predictions(server, data, confidence="0.42")
    assert len(by_query["predictions"]) == 1
    by_form = post_form(server, f"{DETECTION}?min_confidence=0.9", data, {"min_confidence": "0.05"}).json()
    assert by_form["predictions"] == api_predictions(server, data, confidence="0.05")
    by_default = post_form(server, DETECTION, data).json()
    assert by_default["predictions"] == api_predictions(server, data, confidence="0.4")
    for bad in ("0", "1.5", "nan", "", "high"):
        error = deepstack_error(post_form(server, DETECTION, data, {"min_confidence": bad}), 400)
        assert error.startswith("min_confidence must be a number in (0, 1]"), bad


# -- errors ----------------------------------------------------------------------------------------------------
def test_every_error_is_in_deepstacks_form_with_its_status(server):
    error = deepstack_error(requests.get(server.url + DETECTION, timeout=10), 405)
    assert "use POST" in error
    raw = requests.post(server.url + DETECTION, data=camera_jpeg(), headers={"Content-Type": "image/jpeg"},
                        timeout=10)
    assert "multipart/form-data" in deepstack_error(raw, 415)
    assert "no Content-Type" in deepstack_error(requests.post(server.url + DETECTION, data=b"x", timeout=10), 415)
    assert "is empty" in deepstack_error(post_form(server, DETECTION, b""), 400)
    assert "neither a JPEG nor a PNG" in deepstack_error(post_form(server, DETECTION, PDF, filename="a.jpg"), 400)
    too_large = raw_exchange(server.port, b"POST /v1/vision/detection HTTP/1.1\r\nHost: x\r\n"
                                          b"Content-Type: multipart/form-data; boundary=x\r\n"
                                          b"Content-Length: 30000000\r\n\r\n")
    assert too_large.status == 413 and too_large.json()["success"] is False
    no_length = raw_exchange(server.port, b"POST /v1/vision/detection HTTP/1.1\r\nHost: x\r\n"
                                          b"Content-Type: multipart/form-data; boundary=x\r\n\r\n")
    assert no_length.status == 411 and no_length.json()["predictions"] == []


# -- the routes no worker answers --------------------------------------------------------------------------------
def test_the_model_list_and_the_status_routes_answer_as_codeproject_ai_does(server):
    for method in ("GET", "POST"):
        response = requests.request(method, server.url + CUSTOM + "list", timeout=10)
        assert response.status_code == 200 and response.json() == {"success": True, "models": ["yolov3-tiny"]}
    _, _, version = server.request("/v1/status/ping")
    assert version["success"] is True and version["message"] == version["version"]["version"]
    _, _, update = server.request("/v1/status/updateavailable")
    assert update["success"] is True and update["updateAvailable"] is False
    assert update["current"] == update["latest"] == version["version"]
    assert requests.head(server.url + "/v1/status/ping", timeout=10).status_code == 200
    assert "use GET, HEAD" in deepstack_error(requests.put(server.url + "/v1/status/ping", timeout=10), 405)


def test_the_metrics_label_every_custom_model_with_one_route(server):
    post_form(server, CUSTOM + "yolov3-tiny", camera_jpeg())
    routes = {dict(labels)["route"] for labels in scrape_metrics(server).series("detserve_http_requests_total")}
    assert {DETECTION, CUSTOM + "{model}", CUSTOM + "list"} <= routes
    assert CUSTOM + "yolov3-tiny" not in routes and CUSTOM + "yolov9" not in routes


def test_the_docs_curl_examples_answer_what_the_page_shows(server, tmp_path):
    assert_doc_examples_answer_as_shown("deepstack.md", server.port, tmp_path, at_least=6)


# -- the API key ---------------------------------------------------------------------------------------------------
API_KEY = "sk-detserve-" + uuid.uuid4().hex


@pytest.fixture(scope="module")
def keyed_server():
    with ServerProcess("--workers", "1", env={"DETSERVE_API_KEY": API_KEY}) as srv:
        yield srv


def test_deepstack_python_with_the_right_key_gets_its_detections(keyed_server):
    bearer = {"Authorization": f"Bearer {API_KEY}"}
    for custom_model in ("", "yolov3-tiny"):
        client = DeepstackObject("127.0.0.1", keyed_server.port, api_key=API_KEY, min_confidence=0.1,
                                 custom_model=custom_model)
        assert client.detect(camera_jpeg()) == api_predictions(keyed_server, camera_jpeg(), bearer, confidence="0.1")


def test_a_wrong_or_missing_key_is_a_401_in_deepstacks_form(keyed_server):
    with pytest.raises(DeepstackException, match="401"):
        DeepstackObject("127.0.0.1", keyed_server.port, api_key=API_KEY + "x").detect(camera_jpeg())
    for data in ({"api_key": API_KEY[:-1]}, {"api_key": ""}, {}):
        response = post_form(keyed_server, DETECTION, camera_jpeg(), data)
        assert deepstack_error(response, 401).startswith("Incorrect api key"), data
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
    # The key is checked before the image is looked at: a PDF with a wrong key is a 401, not a 400.
    assert deepstack_error(post_form(keyed_server, DETECTION, PDF, {"api_key": "wrong"}), 401)


def test_a_bearer_token_works_on_the_deepstack_routes_and_is_checked_when_sent(keyed_server):
    right = post_form(keyed_server, DETECTION, camera_jpeg(), headers={"Authorization": f"Bearer {API_KEY}"})
    assert right.status_code == 200 and right.json()["success"] is True
    wrong = post_form(keyed_server, DETECTION, camera_jpeg(), {"api_key": API_KEY},
                      headers={"Authorization": "Bearer wrong"})
    assert "Authorization: Bearer" in deepstack_error(wrong, 401)  # refused in the front end, body unread


def test_the_api_keeps_the_bearer_token_only_and_the_fixed_routes_need_no_key(keyed_server):
    status, _, payload = keyed_server.request("/api/?id=x", camera_jpeg(), headers={"Content-Type": "image/jpeg"})
    assert status == 401 and set(payload) == {"error", "id"}
    refused = requests.post(keyed_server.url + "/api/", files={"image": camera_jpeg()}, data={"api_key": API_KEY},
                            timeout=10)
    assert refused.status_code == 401
    for path in (CUSTOM + "list", "/v1/status/ping", "/v1/status/updateavailable"):
        assert keyed_server.request(path)[0] == 200, path
