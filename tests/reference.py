"""An independent single-image reference detector, written the way the original
assignment's detector was (a Python loop over every candidate row), for parity tests.
"""

import functools
import hashlib

import cv2
import numpy as np

from detserve.model_files import DEFAULT_MODEL_DIR

CONFIDENCE, NMS = 0.3, 0.1


@functools.lru_cache(maxsize=1)
def _network():
    net = cv2.dnn.readNetFromDarknet(str(DEFAULT_MODEL_DIR / "yolov3-tiny.cfg"),
                                     str(DEFAULT_MODEL_DIR / "yolov3-tiny.weights"))
    labels = (DEFAULT_MODEL_DIR / "coco.names").read_text().strip().split("\n")
    return net, net.getUnconnectedOutLayersNames(), labels


# Many tests check the same few images: each runs through the network once per thresholds.
# Keyed by a digest, so that no image is kept alive for it.
_found = {}  # (sha256 of the image, confidence threshold, NMS threshold) -> _detect's answer


def reference_detections(image_bytes, confidence_threshold=CONFIDENCE, nms_threshold=NMS):
    """Return [(label, confidence, [x, y, w, h])] for one encoded image."""
    key = (hashlib.sha256(image_bytes).digest(), confidence_threshold, nms_threshold)
    if key not in _found:
        _found[key] = _detect(image_bytes, confidence_threshold, nms_threshold)
    return [(label, confidence, list(bbox)) for label, confidence, bbox in _found[key]]


def _detect(image_bytes, confidence_threshold, nms_threshold):
    net, layer_names, labels = _network()
    image = cv2.imdecode(np.frombuffer(image_bytes, np.uint8), cv2.IMREAD_COLOR)
    height, width = image.shape[:2]
    net.setInput(cv2.dnn.blobFromImage(image, 1 / 255.0, (416, 416), swapRB=True, crop=False))
    boxes, confidences, class_ids = [], [], []
    for output in net.forward(layer_names):
        for detection in output:
            scores = detection[5:]
            class_id = int(np.argmax(scores))
            confidence = scores[class_id]
            if confidence > confidence_threshold:
                center_x, center_y, box_w, box_h = (detection[0:4] * np.array([width, height, width, height])).astype("int")
                x = int(center_x - (box_w / 2))
                y = int(center_y - (box_h / 2))
                boxes.append([x, y, int(box_w), int(box_h)])
                confidences.append(float(confidence))
                class_ids.append(class_id)
    found = []
    for i in np.array(cv2.dnn.NMSBoxes(boxes, confidences, confidence_threshold, nms_threshold)).flatten():
        x, y, w, h = boxes[i]
        right, bottom = min(x + w, width), min(y + h, height)
        x, y = max(x, 0), max(y, 0)
        found.append((labels[class_ids[i]], confidences[i], (x, y, right - x, bottom - y)))
    return tuple(found)


def assert_same_detections(served, expected):
    """served: the API's detections list; expected: reference_detections(...)."""
    assert len(served) == len(expected), (served, expected)
    for got, (label, confidence, bbox) in zip(served, expected):
        assert got["label"] == label
        assert got["bbox"] == bbox
        assert abs(got["confidence"] - confidence) <= 1e-4
