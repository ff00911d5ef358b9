"""DeepStack's vision API in detserve's terms: its answers, its labels and its min_confidence (runs in the workers).

Home Assistant (deepstack-python), Frigate, Blue Iris and Agent DVR call a
detector the way the DeepStack server answered, and CodeProject.AI Server
still does:

    {"success": true, "count": 2, "inferenceMs": 31, "processMs": 40,
     "predictions": [{"label": "person", "confidence": 0.91,
                      "x_min": 12, "y_min": 40, "x_max": 180, "y_max": 390}, ...]}
    {"success": false, "error": "...", "predictions": []}

Coordinates are JSON integers in the pixels of the image received, clamped to
it: clients draw them as they are and divide by the size they sent.
Predictions come most confident first, because Frigate stops reading at the
first one under its threshold. Labels are COCO 2017's names, because Frigate
drops every prediction after a label it does not know, and darknet's
coco.names spells six of them otherwise; the mapping works both ways, so an
option naming classes can take either spelling.

These are pure functions over detections (anything with .label, .confidence
and .bbox = (x, y, w, h) in the image's pixels) and the image's size.
"""

import math

from ..refusals import bad_request

# DeepStack's own default, for a request that names no min_confidence. deepstack-python
# always sends one (0.45 unless told otherwise); Frigate and Blue Iris may not.
DEFAULT_MIN_CONFIDENCE = 0.4
# Darknet's coco.names -> COCO 2017's names, which DeepStack answers with; the other
# 74 labels are spelled alike.
DARKNET_TO_COCO_2017 = {
    "motorbike": "motorcycle",
    "aeroplane": "airplane",
    "sofa": "couch",
    "pottedplant": "potted plant",
    "diningtable": "dining table",
    "tvmonitor": "tv",
}
COCO_2017_TO_DARKNET = {coco: darknet for darknet, coco in DARKNET_TO_COCO_2017.items()}
MAX_SHOWN_CHARS = 40


def deepstack_label(label):
    """The name DeepStack gives a label of the model."""
    return DARKNET_TO_COCO_2017.get(label, label)


def model_spelling(name, model_labels):
    """The model's own spelling of a label given in either spelling; an unknown name comes back as it is."""
    if name in model_labels:
        return name
    other = DARKNET_TO_COCO_2017.get(name, COCO_2017_TO_DARKNET.get(name))
    return other if other in model_labels else name


def predictions(detections, image_size_px):
    """DeepStack's predictions for detections in an image of image_size_px = (width, height)."""
    width_px, height_px = image_size_px
    answer = []
    for detection in sorted(detections, key=lambda d: -d.confidence):  # stable: ties keep their order
        x, y, w, h = detection.bbox
        # Rounded outwards, so a box never loses a pixel it covered; then clamped to the image.
        answer.append({
            "label": deepstack_label(detection.label),
            "confidence": float(detection.confidence),
            "x_min": _clamped(math.floor(x), width_px),
            "y_min": _clamped(math.floor(y), height_px),
            "x_max": _clamped(math.ceil(x + w), width_px),
            "y_max": _clamped(math.ceil(y + h), height_px),
        })
    return answer


def _clamped(value, limit):
    return int(min(max(value, 0), limit))


def detection_answer(detections, image_size_px, inference_ms, process_ms):
    """The 200 answer to a detection request, as a dict for json.dumps.

    inference_ms: the forward pass; process_ms: the whole request in the worker.
    """
    found = predictions(detections, image_size_px)
    return {"success": True, "predictions": found, "count": len(found),
            "inferenceMs": int(round(inference_ms)), "processMs": int(round(process_ms))}


def error_answer(message):
    """The body of every DeepStack error answer, whatever its status."""
    return {"success": False, "error": message, "predictions": []}


def models_answer(model_names):
    """The answer to /v1/vision/custom/list: the models the server runs, by name."""
    return {"success": True, "models": list(model_names)}


def min_confidence(form_value=None, query_value=None):
    """The request's min_confidence: the form field's, else the query's, else DeepStack's default.

    Either value is the client's raw text; anything but a number in (0, 1] is a Refusal(400).
    """
    raw = form_value if form_value is not None else query_value
    if raw is None:
        return DEFAULT_MIN_CONFIDENCE
    try:
        number = float(raw)
    except ValueError:
        number = math.nan
    if not (math.isfinite(number) and 0 < number <= 1):
        shown = repr(raw) if len(raw) <= MAX_SHOWN_CHARS else repr(raw[:MAX_SHOWN_CHARS - 3] + "...")
        raise bad_request(f"min_confidence must be a number in (0, 1], such as 0.4, not {shown}")
    return number
