"""Serving several models over HTTP: each model's answers against the reference, batch invariance across
models and NMS modes, unknown models refused, GET /api/models, and metric labels only the server names.

One server for the module: one worker holding yolov3-tiny (the default), yolov4-tiny and
yolov4-tiny@320, gathering up to 4 requests for 300 ms, so concurrent requests for different
models meet in one collected batch, which runs one forward pass per model.
"""

import hashlib
import uuid
from urllib.parse import quote
from concurrent.futures import ThreadPoolExecutor

import pytest

from detserve.model_files import DEFAULT_MODEL_DIR, parse_model_choice
from reference import assert_same_detections, reference_detections
from support import ServerProcess, b64, image_bytes, logged_batch_size, sample_images, scrape_metrics

SERVED = ("yolov3-tiny", "yolov4-tiny", "yolov4-tiny@320")
SERVED_TEXT = ", ".join(SERVED)
NMS_MODES = ("agnostic", "per_class")


@pytest.fixture(scope="module")
def three_model_server():
    with ServerProcess("--workers", "1", "--models", ",".join(SERVED), "--max-batch", "4",
                       "--max-wait-ms", "300") as srv:
        yield srv


def post_image(server, data, query="", headers=None):
    return server.request("/api/" + ("?" + query if query else ""), body=data,
                          headers={"Content-Type": "image/jpeg", **(headers or {})})


def expected_for(data, model_name, nms_mode, confidence=0.3):
    choice = parse_model_choice(model_name)
    return reference_detections(data, confidence, 0.1, model=choice.model.name,
                                input_size_px=choice.input_size_px, nms_mode=nms_mode)


# -- each model's answers against the reference ------------------------------------------------------

@pytest.mark.parametrize("nms_mode", NMS_MODES)
@pytest.mark.parametrize("model", ["yolov4-tiny", "yolov4-tiny@320"])
def test_a_models_answers_equal_the_reference_on_every_sample(three_model_server, model, nms_mode):
    found_any = False
    for index, path in enumerate(sample_images()):
        data = image_bytes(path.name)
        expected = expected_for(data, model, nms_mode)
        if index % 2:  # the query's form and the JSON body's, alternately
            status, headers, payload = post_image(three_model_server, data, f"model={model}&nms_mode={nms_mode}")
        else:
            status, headers, payload = three_model_server.request(
                "/api/", {"id": path.name, "image": b64(data), "model": model, "nms_mode": nms_mode})
        assert status == 200, payload
        assert headers["X-Model"] == model
        assert_same_detections(payload["detections"], expected)
        found_any = found_any or bool(expected)
    assert found_any, "the comparison must be about real detections, not empty lists"


def test_the_default_model_answers_when_none_is_named_and_when_it_is(three_model_server):
    for path in sample_images():
        data = image_bytes(path.name)
        for query in ("", "model=yolov3-tiny"):
            status, headers, payload = post_image(three_model_server, data, query)
            assert status == 200 and headers["X-Model"] == "yolov3-tiny", payload
            assert_same_detections(payload["detections"], reference_detections(data))


# -- batch invariance across models and NMS modes ---------------------------------------------------

MIXED = [  # (image, model, nms_mode, confidence, sent in JSON): each model at least twice
    ("chelsea.jpg", "yolov4-tiny", "agnostic", 0.3, False),
    ("chelsea.jpg", "yolov4-tiny", "per_class", 0.3, True),
    ("camera.jpg", "yolov4-tiny@320", "agnostic", 0.1, False),
    ("astronaut.jpg", "yolov4-tiny@320", "per_class", 0.1, True),
    ("camera.jpg", "yolov3-tiny", "agnostic", 0.3, False),
    ("coffee.jpg", "yolov3-tiny", "per_class", 0.1, True),
    ("motorcycle.jpg", "yolov4-tiny", "per_class", 0.1, False),
    ("rocket.jpg", "yolov4-tiny@320", "agnostic", 0.1, True),
]


def mixed_request(server, index):
    name, model, nms_mode, confidence, as_json = MIXED[index]
    data = image_bytes(name)
    request_id = f"mixed-{index}-{uuid.uuid4().hex}"
    headers = {"X-Request-ID": request_id}
    if as_json:
        status, answer_headers, payload = server.request("/api/", {
            "id": f"m{index}", "image": b64(data), "model": model, "nms_mode": nms_mode, "confidence": confidence},
            headers=headers)
    else:
        status, answer_headers, payload = post_image(
            server, data, f"id=m{index}&model={model}&nms_mode={nms_mode}&confidence={confidence}", headers)
    assert status == 200, payload
    assert answer_headers["X-Model"] == model
    return request_id, payload


def passes_of_two_or_more(server):
    """Forward passes of at least 2 images so far, per model, from the batch-size histogram."""
    scrape = scrape_metrics(server)
    found = {}
    for model in SERVED:
        buckets, _, count = scrape.histogram("detserve_batch_size", model=model)
        found[model] = count - dict(buckets)[1.0]
    return found


def test_mixed_models_and_nms_modes_in_one_batch_answer_exactly_as_alone(three_model_server):
    alone = [mixed_request(three_model_server, i)[1] for i in range(len(MIXED))]  # one client: one request per batch
    for (name, model, nms_mode, confidence, _), payload in zip(MIXED, alone):
        assert_same_detections(payload["detections"], expected_for(image_bytes(name), model, nms_mode, confidence))
    assert sum(bool(payload["detections"]) for payload in alone) >= 6, "most of the requests must find something"
    passes_before = passes_of_two_or_more(three_model_server)
    largest_batch = 0
    for _ in range(3):  # the machine is shared: a round may not gather a model's requests together
        with ThreadPoolExecutor(max_workers=len(MIXED)) as pool:
            answers = list(pool.map(lambda i: mixed_request(three_model_server, i), range(len(MIXED))))
        for (request_id, payload), single in zip(answers, alone):
            assert payload == single
            largest_batch = max(largest_batch, logged_batch_size(three_model_server, request_id))
        if largest_batch >= 2:
            break
    assert largest_batch >= 2, "no two of the mixed requests shared a forward pass"
    passes_after = passes_of_two_or_more(three_model_server)
    assert any(passes_after[m] > passes_before[m] for m in SERVED), (passes_before, passes_after)
    assert all(passes_after[m] >= passes_before[m] for m in SERVED)


# -- unknown models -------------------------------------------------------------------------------------

@pytest.mark.parametrize("model", ["yolov5s", "YOLOv4-tiny", "yolov3-tiny@608", "yolov4-tiny@416x"])
def test_an_unknown_model_is_a_400_that_names_it_and_lists_the_served_ones(three_model_server, model):
    data = image_bytes("camera.jpg")
    listing = f"it serves {SERVED_TEXT} (GET /api/models lists them)"
    status, headers, payload = post_image(three_model_server, data, f"model={model}")
    assert status == 400 and "X-Model" not in headers
    assert payload["error"] == f"?model= {model!r} is not a model this server serves; {listing}"
    status, headers, payload = three_model_server.request("/api/", {"id": "u", "image": b64(data), "model": model})
    assert status == 400 and "X-Model" not in headers
    assert payload == {"error": f'"model" {model!r} is not a model this server serves; {listing}', "id": "u"}


def test_a_model_that_is_not_a_string_is_a_400(three_model_server):
    for value in (7, None, ["yolov4-tiny"], {"name": "yolov4-tiny"}):
        status, _, payload = three_model_server.request("/api/", {"id": "n", "image": b64(image_bytes("camera.jpg")),
                                                             "model": value})
        assert status == 400 and "is not a model this server serves" in payload["error"], value


def test_a_model_named_by_one_image_of_several_is_a_400_for_that_image(three_model_server):
    camera, chelsea = image_bytes("camera.jpg"), image_bytes("chelsea.jpg")
    status, headers, payload = three_model_server.request("/api/", {"model": "yolov4-tiny", "images": [
        {"id": "a", "image": b64(camera), "model": "yolov4-tiny@320"},
        {"id": "b", "image": b64(chelsea)},
        {"id": "c", "image": b64(camera), "model": "yolov3-tiny"}]})
    assert status == 200 and headers["X-Model"] == "yolov4-tiny", payload
    refused = {"error": '"model" is chosen once per request, at its top level, not per image', "status": 400}
    first, second, third = payload["results"]
    assert first == {"id": "a", **refused} and third == {"id": "c", **refused}
    assert second["id"] == "b"
    assert_same_detections(second["detections"], expected_for(chelsea, "yolov4-tiny", "agnostic"))


# -- GET /api/models ----------------------------------------------------------------------------------

def test_api_models_lists_every_served_model_default_first(three_model_server):
    status, headers, listed = three_model_server.request("/api/models")
    assert status == 200 and headers["Content-Type"] == "application/json"
    labels = len([line for line in (DEFAULT_MODEL_DIR / "coco.names").read_text().splitlines() if line.strip()])
    digests = {name: hashlib.sha256((DEFAULT_MODEL_DIR / f"{name}.weights").read_bytes()).hexdigest()
               for name in ("yolov3-tiny", "yolov4-tiny")}
    assert listed == [
        {"name": "yolov3-tiny", "model": "yolov3-tiny", "input_size_px": 416, "labels": labels,
         "weights_sha256": digests["yolov3-tiny"], "default": True},
        {"name": "yolov4-tiny", "model": "yolov4-tiny", "input_size_px": 416, "labels": labels,
         "weights_sha256": digests["yolov4-tiny"], "default": False},
        {"name": "yolov4-tiny@320", "model": "yolov4-tiny", "input_size_px": 320, "labels": labels,
         "weights_sha256": digests["yolov4-tiny"], "default": False},
    ]
    assert labels == 80


# -- metrics: the model label's values are the configured names ------------------------------------------

MODEL_LABELLED = ("detserve_inference_seconds", "detserve_batch_size", "detserve_http_requests_total")


def model_label_values(scrape):
    return {name: {dict(labels).get("model") for (_, labels) in scrape.family(name).samples} - {None}
            for name in MODEL_LABELLED}


def test_metrics_carry_only_the_configured_model_names(three_model_server):
    data = image_bytes("camera.jpg")
    for model in SERVED:  # every model has answered, so each has its series
        assert post_image(three_model_server, data, f"model={model}")[0] == 200
    invented = ["evil", "yolov3-tiny@608", 'x"}\nfake_metric 1', "../../etc", "é" * 50]
    for model in invented:
        assert post_image(three_model_server, data, f"model={quote(model)}")[0] == 400
        assert three_model_server.request("/api/", {"id": "i", "image": b64(data), "model": model})[0] == 400
    three_model_server.request("/api/", {"images": [{"id": "e", "image": b64(data), "model": "evil"}]})
    scrape = scrape_metrics(three_model_server)
    for name, values in model_label_values(scrape).items():
        assert values == set(SERVED), (name, values)
    counted = {dict(labels)["model"]: value for (_, labels), value
               in scrape.family("detserve_http_requests_total").samples.items()
               if dict(labels).get("model") and dict(labels)["code"] == "200"}
    assert set(counted) == set(SERVED) and all(value >= 1 for value in counted.values())
    text = three_model_server.request("/metrics")[2]
    assert not any(model in text for model in ("evil", "fake_metric", "etc", "yolov3-tiny@608"))
