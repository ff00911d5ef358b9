"""detserve.worker.pipeline, the studies' entry to a worker's path: in this process, against the reference."""

import json

import cv2
import numpy as np
import pytest

from detserve.worker.pipeline import Pipeline, load_detector
from reference import assert_same_detections, reference_detections
from support import b64, camera_jpeg, image_bytes, sample_images


@pytest.fixture(scope="module")
def detector():
    return load_detector()


def as_served(answer):
    """The pipeline's detections as the API's JSON lists them."""
    return [detection.as_json() for detection in answer.detections]


def test_every_sample_image_gets_the_reference_detections(detector):
    pipeline = Pipeline(detector)
    for path in sample_images():
        data = image_bytes(path.name)
        answer = pipeline.run_one(data, "image/jpeg")
        assert (answer.status, answer.error) == (200, None), path.name
        assert_same_detections(as_served(answer), reference_detections(data))
        assert 0 < answer.inference_s <= answer.elapsed_s


def test_a_json_body_with_query_options_is_answered_as_the_worker_answers_it(detector):
    body = json.dumps({"id": "camera", "image": b64(camera_jpeg())}).encode()
    answer = Pipeline(detector).run_one(body, "application/json", {"confidence": 0.05, "classes": "person"})
    expected = [d for d in reference_detections(camera_jpeg(), confidence_threshold=0.05) if d[0] == "person"]
    assert answer.status == 200 and expected
    assert_same_detections(as_served(answer), expected)


@pytest.mark.parametrize("body, options, status", [(b"not an image", None, 400),
                                                   (None, {"confidence": 2}, 400)])
def test_what_a_worker_refuses_comes_back_as_a_refusal_without_detections(detector, body, options, status):
    answer = Pipeline(detector).run_one(body or camera_jpeg(), "image/jpeg", options)
    assert (answer.status, answer.detections) == (status, ())
    assert answer.error


def test_image_facts_tell_the_scale_each_setting_decodes_a_large_jpeg_at(detector):
    camera = cv2.imdecode(np.frombuffer(camera_jpeg(), np.uint8), cv2.IMREAD_COLOR)
    large = cv2.imencode(".jpg", cv2.resize(camera, (4032, 3024)))[1].tobytes()
    auto, off = Pipeline(detector, decode_reduction="auto"), Pipeline(detector, decode_reduction="off")
    assert auto.image_facts(large).size_px == off.image_facts(large).size_px == (4032, 3024)
    assert (auto.image_facts(large).decode_factor, off.image_facts(large).decode_factor) == (4, 1)
    assert auto.image_facts(camera_jpeg()).decode_factor == 1  # 512 px: too small to reduce
    assert auto.run_one(large).detections and off.run_one(large).detections
