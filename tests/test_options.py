"""Per-request options (confidence, nms, classes, max_detections) on a real server with the real model:
query and JSON forms, precedence, validation, and batch invariance with mixed options in one batch."""

import re
import uuid
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np
import pytest

from support import (INPUT_FOLDER, access_line, b64, camera_body, camera_jpeg, logged_batch_size, metric_value,
                     sample_images)
from detserve.model_files import DEFAULT_MODEL_DIR, read_labels
from reference import assert_same_detections, reference_detections

LOW = {"confidence": 0.01, "nms": 0.9}  # many detections, several labels on the mosaic



def mosaic_jpeg():
    """Four samples side by side (person, toilet, motorbike, bottle): one image with several labels."""
    tiles = [cv2.resize(cv2.imread(str(INPUT_FOLDER / name)), (320, 320))
             for name in ("camera.jpg", "coffee.jpg", "motorcycle.jpg", "astronaut.jpg")]
    ok, encoded = cv2.imencode(".jpg", np.vstack([np.hstack(tiles[:2]), np.hstack(tiles[2:])]),
                               [cv2.IMWRITE_JPEG_QUALITY, 92])
    assert ok
    return encoded.tobytes()


MOSAIC = mosaic_jpeg()


def post_raw(server, data, query="", headers=None):
    return server.request("/api/?" + query, body=data,
                          headers={"Content-Type": "image/jpeg", **(headers or {})})


def post_json(server, payload, query=""):
    return server.request("/api/" + ("?" + query if query else ""), payload)


def detections_of(answer):
    status, _, payload = answer
    assert status == 200, payload
    return payload["detections"]


def test_options_in_the_query_and_in_json_give_the_reference_answer_at_those_thresholds(server):
    for path in sample_images() + [None]:
        data = path.read_bytes() if path else MOSAIC
        expected = reference_detections(data, LOW["confidence"], LOW["nms"])
        by_query = detections_of(post_raw(server, data, "confidence=0.01&nms=0.9"))
        by_json = detections_of(post_json(server, {"id": "j", "image": b64(data), **LOW}))
        assert by_query == by_json
        assert_same_detections(by_query, expected)
    assert len({d["label"] for d in by_query}) >= 2, "the mosaic should show several labels"


def test_without_options_the_answer_is_the_default_one(server):
    for path in sample_images():
        data = path.read_bytes()
        plain = detections_of(post_json(server, {"id": "p", "image": b64(data)}))
        assert_same_detections(plain, reference_detections(data))
        assert plain == detections_of(post_raw(server, data, "confidence=0.3&nms=0.1"))


def test_json_fields_win_over_query_parameters(server):
    expected = detections_of(post_raw(server, MOSAIC, "confidence=0.01&nms=0.9"))
    assert expected
    got = detections_of(post_json(server, {"id": "w", "image": b64(MOSAIC), **LOW}, "confidence=0.99&nms=0.05"))
    assert got == expected
    only_query = detections_of(post_json(server, {"id": "q", "image": b64(MOSAIC)}, "confidence=0.99"))
    assert only_query == []


def test_a_class_filter_returns_the_subset_of_the_unfiltered_answer(server):
    unfiltered = detections_of(post_raw(server, MOSAIC, "confidence=0.01&nms=0.9"))
    labels = sorted({d["label"] for d in unfiltered})
    for wanted in (labels[:1], labels[:2], ["person", "zebra"]):
        query = "confidence=0.01&nms=0.9&classes=" + ",".join(wanted)
        filtered = detections_of(post_raw(server, MOSAIC, query))
        assert filtered == [d for d in unfiltered if d["label"] in wanted]
        as_list = detections_of(post_json(server, {"id": "l", "image": b64(MOSAIC), "classes": wanted, **LOW}))
        assert as_list == filtered
    assert detections_of(post_raw(server, MOSAIC, "classes=giraffe")) == []


def test_max_detections_keeps_the_most_confident_in_the_answers_order(server):
    unfiltered = detections_of(post_raw(server, MOSAIC, "confidence=0.01&nms=0.9"))
    assert len(unfiltered) >= 4
    for n in (1, 2, 3, len(unfiltered), 1000):
        kept = detections_of(post_raw(server, MOSAIC, f"confidence=0.01&nms=0.9&max_detections={n}"))
        threshold = sorted((d["confidence"] for d in unfiltered), reverse=True)[min(n, len(unfiltered)) - 1]
        assert kept == [d for d in unfiltered if d["confidence"] >= threshold][:n]
        assert len(kept) == min(n, len(unfiltered))


def test_a_tiny_threshold_answers_and_the_worker_stays(server):
    """DeepStack's min_confidence=0 hung its worker: 0 is refused, the smallest accepted values answer."""
    restarts_before = metric_value(server, "detserve_worker_restarts_total")
    default_count = len(detections_of(post_raw(server, MOSAIC)))
    for query in ("confidence=0.01", "confidence=1e-300&nms=1", "confidence=5e-324&nms=5e-324", "confidence=1"):
        answer = detections_of(post_raw(server, MOSAIC, query))
        if query != "confidence=1":
            assert len(answer) >= default_count
    assert post_raw(server, MOSAIC, "confidence=0")[0] == 400
    assert metric_value(server, "detserve_worker_restarts_total") == restarts_before


BAD_QUERIES = ["confidence=0", "confidence=1.5", "confidence=-0.2", "confidence=nan", "confidence=inf",
               "confidence=", "confidence=abc", "nms=0", "nms=2", "max_detections=0", "max_detections=1001",
               "max_detections=1.5", "max_detections=-3", "max_detections=%C2%B2", "max_side=4", "max_side=99999",
               "classes=", "classes=person,,dog", "format=png"]
BAD_FIELDS = [("confidence", 0), ("confidence", 1.01), ("confidence", "0.5"), ("confidence", True),
              ("confidence", None), ("nms", []), ("max_detections", 2.0), ("max_detections", False),
              ("max_detections", "5"), ("classes", 7), ("classes", ["person", 3]), ("classes", []),
              ("max_side", 1e9)]


@pytest.mark.parametrize("query", BAD_QUERIES)
def test_an_invalid_query_option_is_a_400_that_names_it(server, query):
    status, _, payload = post_raw(server, camera_jpeg(), "id=bad&" + query)
    assert status == 400, payload
    assert query.split("=")[0] in payload["error"]


@pytest.mark.parametrize("name, value", BAD_FIELDS)
def test_an_invalid_json_option_is_a_400_that_names_it(server, name, value):
    status, _, payload = post_json(server, {**camera_body("bad"), name: value})
    assert status == 400, payload
    assert name in payload["error"] and payload["id"] == "bad"


def test_an_unknown_label_is_named_and_the_list_is_pointed_at(server):
    status, _, payload = post_raw(server, camera_jpeg(), "classes=person,unicorn")
    assert status == 400
    assert "'unicorn'" in payload["error"] and "GET /api/labels" in payload["error"]
    assert "'person'" not in payload["error"]
    status, _, payload = post_json(server, {**camera_body("u"), "classes": ["Person"]})
    assert status == 400 and "'Person'" in payload["error"]


def test_api_labels_lists_the_models_80_labels(server):
    status, headers, labels = server.request("/api/labels")
    assert status == 200 and headers["Content-Type"] == "application/json"
    assert labels == read_labels(DEFAULT_MODEL_DIR) and len(labels) == 80


def test_options_do_not_become_metric_labels_or_log_fields(server):
    first_line = len(server.lines)
    request_id = f"options-{uuid.uuid4().hex}"
    post_raw(server, camera_jpeg(), "confidence=0.123456&classes=person", headers={"X-Request-ID": request_id})
    _, _, metrics = server.request("/metrics")
    assert "0.123456" not in metrics
    access_line(server, request_id)
    assert not any("0.123456" in line for line in server.lines[first_line:])


# -- batch invariance with mixed options ----------------------------------------------------------

MIXED = [  # (image, query, JSON option fields): every option differs between the four
    ("camera.jpg", "confidence=0.01&nms=0.9", {}),
    (None, "", {"confidence": 0.05, "classes": ["person", "toilet"]}),
    ("coffee.jpg", "max_detections=1", {"confidence": 0.02, "nms": 0.5}),
    (None, "confidence=0.2", {"max_detections": 2, "nms": 0.3}),
]


def mixed_request(server, index):
    name, query, fields = MIXED[index]
    data = (INPUT_FOLDER / name).read_bytes() if name else MOSAIC
    request_id = f"mixed-{index}-{uuid.uuid4().hex}"
    status, _, payload = server.request("/api/" + ("?" + query if query else ""),
                                        {"id": f"m{index}", "image": b64(data), **fields},
                                        headers={"X-Request-ID": request_id})
    assert status == 200, payload
    return request_id, payload


def test_mixed_options_in_one_batch_answer_exactly_as_alone(server, batching_server):
    alone = [mixed_request(server, i)[1] for i in range(len(MIXED))]
    for (name, query, fields), payload in zip(MIXED, alone):  # alone equals the independent reference
        data = (INPUT_FOLDER / name).read_bytes() if name else MOSAIC
        options = dict(pair.split("=") for pair in query.split("&") if pair)
        options.update({k: v for k, v in fields.items()})
        expected = reference_detections(data, float(options.get("confidence", 0.3)), float(options.get("nms", 0.1)))
        if "classes" in options:
            expected = [e for e in expected if e[0] in options["classes"]]
        if "max_detections" in options:
            n = int(options["max_detections"])
            keep = sorted(range(len(expected)), key=lambda i: -expected[i][1])[:n]
            expected = [expected[i] for i in sorted(keep)]
        assert_same_detections(payload["detections"], expected)
    largest_batch = 0
    for _ in range(3):  # the machine is shared: a round may not gather all four
        with ThreadPoolExecutor(max_workers=len(MIXED)) as pool:
            answers = list(pool.map(lambda i: mixed_request(batching_server, i), range(len(MIXED))))
        for (request_id, payload), single in zip(answers, alone):
            assert payload == single
            largest_batch = max(largest_batch, logged_batch_size(batching_server, request_id))
        if largest_batch == len(MIXED):
            break
    assert largest_batch >= 2, "no two of the mixed requests shared a batch"


def test_the_pages_request_gets_the_low_threshold_answer_it_asks_for(server):
    """page.js asks POST /api/?id=...&confidence=REQUEST_CONFIDENCE and filters client-side."""
    script = (INPUT_FOLDER.parent / "detserve" / "front" / "page" / "page.js").read_text()
    confidence = float(re.search(r"REQUEST_CONFIDENCE = ([0-9.]+)", script).group(1))
    assert confidence < 0.3
    for path in sample_images():
        data = path.read_bytes()
        answer = detections_of(post_raw(server, data, f"id=page&confidence={confidence}"))
        assert_same_detections(answer, reference_detections(data, confidence, 0.1))
