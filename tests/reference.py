"""An independent single-image reference detector, written as plainly as a detector can be
(a Python loop over every candidate row), for parity tests.

It reads the darknet files by their conventional names, runs OpenCV directly
at the input size it is given, and does its own NMS: one class-agnostic pass
(the server's default) or one pass per class, merged most confident first.
"""

import functools
import hashlib

import cv2
import numpy as np

from detserve.model_files import DEFAULT_MODEL_DIR

CONFIDENCE, NMS = 0.3, 0.1


@functools.lru_cache(maxsize=None)
def _network(model):
    net = cv2.dnn.readNetFromDarknet(str(DEFAULT_MODEL_DIR / f"{model}.cfg"),
                                     str(DEFAULT_MODEL_DIR / f"{model}.weights"))
    labels = (DEFAULT_MODEL_DIR / "coco.names").read_text().strip().split("\n")
    return net, net.getUnconnectedOutLayersNames(), labels


# Many tests check the same few images: each runs through the network once per settings.
# Keyed by a digest, so that no image is kept alive for it.
_found = {}  # (sha256 of the image, the settings) -> _detect's answer


def reference_detections(image_bytes, confidence_threshold=CONFIDENCE, nms_threshold=NMS,
                         model="yolov3-tiny", input_size_px=416, nms_mode="agnostic"):
    """Return [(label, confidence, [x, y, w, h])] for one encoded image."""
    settings = (confidence_threshold, nms_threshold, model, input_size_px, nms_mode)
    key = (hashlib.sha256(image_bytes).digest(), settings)
    if key not in _found:
        _found[key] = _detect(image_bytes, *settings)
    return [(label, confidence, list(bbox)) for label, confidence, bbox in _found[key]]


def _detect(image_bytes, confidence_threshold, nms_threshold, model, input_size_px, nms_mode):
    net, layer_names, labels = _network(model)
    image = cv2.imdecode(np.frombuffer(image_bytes, np.uint8), cv2.IMREAD_COLOR)
    height, width = image.shape[:2]
    net.setInput(cv2.dnn.blobFromImage(image, 1 / 255.0, (input_size_px, input_size_px), swapRB=True, crop=False))
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
    if nms_mode == "agnostic":
        kept = list(np.array(cv2.dnn.NMSBoxes(boxes, confidences, confidence_threshold, nms_threshold)).flatten())
    else:
        kept = []
        for class_id in sorted(set(class_ids)):
            members = [i for i, c in enumerate(class_ids) if c == class_id]
            survivors = cv2.dnn.NMSBoxes([boxes[i] for i in members], [confidences[i] for i in members],
                                         confidence_threshold, nms_threshold)
            kept.extend(members[j] for j in np.array(survivors).flatten())
        kept.sort(key=lambda i: -confidences[i])
    found = []
    for i in kept:
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
