"""DeepStack's answers built from detections: the real model's on the sample images (through the
independent reference detector), and made-up ones for the edges (boxes past the image, ties)."""

import json

import cv2
import numpy as np
import pytest

from detserve.model_files import DEFAULT_MODEL_DIR, read_labels
from detserve.refusals import Refusal
from detserve.front.formats.deepstack import error_answer
from detserve.worker.formats.deepstack import DEFAULT_MIN_CONFIDENCE, detection_answer, min_confidence, predictions
from detserve.worker.label_spellings import coco_2017_label as deepstack_label
from detserve.worker.label_spellings import model_spelling
from detserve.worker.detector import Detection
from reference import reference_detections
from support import image_bytes, sample_images

# What the DeepStack routes promise: COCO 2017's names where darknet's coco.names differs.
RENAMED = {"motorbike": "motorcycle", "aeroplane": "airplane", "sofa": "couch", "pottedplant": "potted plant",
           "diningtable": "dining table", "tvmonitor": "tv"}
# Low thresholds, so the samples give several detections each (the motorcycle's only one is at 0.3).
CONFIDENCE, NMS = 0.05, 0.45


def model_detections(name):
    """The reference detector's detections on inputfolder/NAME, as Detection objects, and the image size."""
    data = image_bytes(name)
    height, width = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR).shape[:2]
    found = [Detection(label, confidence, tuple(bbox))
             for label, confidence, bbox in reference_detections(data, CONFIDENCE, NMS)]
    return found, (width, height)


@pytest.mark.parametrize("path", sample_images(), ids=lambda path: path.name)
def test_the_models_detections_become_deepstack_predictions(path):
    detections, (width, height) = model_detections(path.name)
    found = predictions(detections, (width, height))
    expected = sorted(detections, key=lambda d: -d.confidence)
    assert [p["confidence"] for p in found] == [d.confidence for d in expected]
    for prediction, detection in zip(found, expected):
        x, y, w, h = detection.bbox
        assert prediction == {"label": RENAMED.get(detection.label, detection.label),
                              "confidence": detection.confidence,
                              "x_min": x, "y_min": y, "x_max": x + w, "y_max": y + h}
        assert 0 <= prediction["x_min"] <= prediction["x_max"] <= width
        assert 0 <= prediction["y_min"] <= prediction["y_max"] <= height


def test_the_motorcycle_is_a_motorcycle_not_a_motorbike():
    detections, size = model_detections("motorcycle.jpg")
    assert "motorbike" in {d.label for d in detections}
    assert "motorcycle" in {p["label"] for p in predictions(detections, size)}
    assert "motorbike" not in {p["label"] for p in predictions(detections, size)}


def test_the_answer_has_deepstacks_fields_and_is_json():
    detections, size = model_detections("camera.jpg")
    answer = json.loads(json.dumps(detection_answer(detections, size, inference_ms=31.6, process_ms=40.2)))
    assert answer == {"success": True, "predictions": predictions(detections, size),
                      "count": len(detections), "inferenceMs": 32, "processMs": 40}
    assert answer["count"] > 0
    empty = detection_answer([], size, 0.4, 1)
    assert (empty["predictions"], empty["count"], empty["inferenceMs"]) == ([], 0, 0)


def test_coordinates_are_integers_clamped_to_the_image_and_rounded_outwards():
    boxes = [Detection("person", 0.9, (-5, -7, 30, 20)),       # past the top-left corner
             Detection("person", 0.8, (90, 40, 50, 99)),       # past the bottom-right corner
             Detection("person", 0.7, (10.6, 20.2, 5.1, 5.5)),  # fractional
             Detection("person", 0.6, (200, 300, 10, 10))]     # wholly outside
    found = predictions(boxes, (100, 60))
    assert [(p["x_min"], p["y_min"], p["x_max"], p["y_max"]) for p in found] == [
        (0, 0, 25, 13), (90, 40, 100, 60), (10, 20, 16, 26), (100, 60, 100, 60)]
    assert all(type(p[key]) is int for p in found for key in ("x_min", "y_min", "x_max", "y_max"))


def test_predictions_are_most_confident_first_and_ties_keep_their_order():
    boxes = [Detection(label, confidence, (0, 0, 1, 1))
             for label, confidence in (("cat", 0.5), ("dog", 0.9), ("car", 0.5), ("sofa", 0.7))]
    assert [p["label"] for p in predictions(boxes, (10, 10))] == ["dog", "couch", "cat", "car"]


# -- labels ------------------------------------------------------------------------------------------------
def test_every_label_the_model_spells_differently_is_renamed_and_no_other():
    labels = read_labels(DEFAULT_MODEL_DIR)
    renamed = {label: deepstack_label(label) for label in labels if deepstack_label(label) != label}
    assert renamed == RENAMED
    assert len({deepstack_label(label) for label in labels}) == len(labels) == 80


def test_either_spelling_names_the_models_own_label():
    labels = read_labels(DEFAULT_MODEL_DIR)
    for label in labels:
        assert model_spelling(label, labels) == label
        assert model_spelling(deepstack_label(label), labels) == label
    assert model_spelling("unicorn", labels) == "unicorn"  # left for the classes check to refuse


def test_a_model_with_coco_2017_names_takes_darknets_spelling_too():
    coco_2017_labels = [deepstack_label(label) for label in read_labels(DEFAULT_MODEL_DIR)]
    assert model_spelling("sofa", coco_2017_labels) == "couch"
    assert model_spelling("couch", coco_2017_labels) == "couch"


# -- other answers ------------------------------------------------------------------------------------------
def test_an_error_has_deepstacks_form():
    assert json.loads(json.dumps(error_answer("Incorrect api key"))) == {
        "success": False, "error": "Incorrect api key", "predictions": []}


# -- min_confidence -----------------------------------------------------------------------------------------
def test_min_confidence_is_the_form_fields_else_the_querys_else_deepstacks_default():
    assert min_confidence() == DEFAULT_MIN_CONFIDENCE == 0.4
    assert min_confidence(query_value="0.6") == 0.6
    assert min_confidence(form_value="0.45", query_value="0.6") == 0.45
    assert min_confidence(form_value="1") == 1.0
    assert min_confidence(form_value=" 1e-2 ") == 0.01


@pytest.mark.parametrize("raw", ["0", "-0.1", "1.01", "45", "nan", "inf", "-inf", "", "abc", "0.4,0.5"])
def test_min_confidence_outside_zero_to_one_or_not_a_number_is_400(raw):
    with pytest.raises(Refusal) as caught:
        min_confidence(form_value=raw)
    assert caught.value.status == 400
    assert caught.value.message == f"min_confidence must be a number in (0, 1], such as 0.4, not {raw!r}"


def test_a_bad_query_min_confidence_is_refused_too_and_a_long_one_is_shown_cut():
    with pytest.raises(Refusal, match=r"not 'x{37}\.\.\.'"):
        min_confidence(query_value="x" * 5000)
