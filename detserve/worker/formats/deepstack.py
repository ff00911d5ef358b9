"""DeepStack's vision API, the worker's half: its form in, its JSON answer out.

Home Assistant (deepstack-python), Frigate, Blue Iris and Agent DVR post a
multipart form (the image in its ``image`` part, ``min_confidence`` and
``api_key`` as text fields) and read:

    {"success": true, "count": 2, "inferenceMs": 31, "processMs": 40,
     "predictions": [{"label": "person", "confidence": 0.91,
                      "x_min": 12, "y_min": 40, "x_max": 180, "y_max": 390}, ...]}

Coordinates are JSON integers in the pixels of the image received, clamped to
it: clients draw them as they are and divide by the size they sent.
Predictions come most confident first, because Frigate stops reading at the
first one under its threshold; labels are COCO 2017's (label_spellings).
Post-processing is DeepStack's own (per-class NMS at IoU 0.45) unless the
query asks for other options. Errors are worded by the front end's half
(front/formats/deepstack.py), from the Refusals raised here.
"""

import hmac
import json
import math
import time
import uuid

from ... import format_fields
from ...protocol import Result
from ...refusals import bad_request, unauthorized
from ..label_spellings import coco_2017_label
from ..multipart import parse_form, shown
from ..parsed_request import ImageRequest, ParsedRequest
from ..request_parsing import check_image_id

NAME = "deepstack"
# DeepStack's own default, for a request that names no min_confidence. deepstack-python
# always sends one (0.45 unless told otherwise); Frigate and Blue Iris may not.
DEFAULT_MIN_CONFIDENCE = 0.4
# DeepStack's post-processing (YOLOv5's), as text like the query's; ?nms= or ?nms_mode= replaces it.
DEEPSTACK_OPTIONS = {"nms": "0.45", "nms_mode": "per_class"}
WRONG_KEY_MESSAGE = ("Incorrect api key: send the server's key in the api_key form field "
                     "or as 'Authorization: Bearer <key>'")


def parse(body, header, config):
    """The one image of a DeepStack form, with its options; the API key checked before anything is decoded."""
    form = parse_form(body, header.format_fields[format_fields.CONTENT_TYPE])
    if format_fields.CHECK_FORM_API_KEY in header.format_fields:
        check_api_key(form.fields.get("api_key", ""), config.api_key)
    image_id = check_image_id(header.query_image_id) if header.query_image_id is not None else str(uuid.uuid4())
    image = form.image()
    confidence = min_confidence(form.fields.get("min_confidence"), header.format_fields.get(format_fields.MIN_CONFIDENCE))
    # DeepStack's defaults sit under the query's options: they fill only what it left out.
    defaults = {name: value for name, value in DEEPSTACK_OPTIONS.items() if name not in header.query_options}
    request = ImageRequest(image_id, image.content)
    return ParsedRequest((request,), {"confidence": confidence}, several=False, text_option_fields=defaults)


def check_api_key(sent, api_key):
    # compare_digest takes the same time wherever the strings differ.
    if not hmac.compare_digest(sent.encode(), api_key.encode()):
        raise unauthorized(WRONG_KEY_MESSAGE)


def min_confidence(form_value=None, query_value=None):
    """The request's min_confidence: the form field's, else the query's, else DeepStack's default.

    Either value is the client's raw text; anything but a number in (0, 1] is a 400.
    """
    raw = form_value if form_value is not None else query_value
    if raw is None:
        return DEFAULT_MIN_CONFIDENCE
    try:
        number = float(raw)
    except ValueError:
        number = math.nan
    if not (math.isfinite(number) and 0 < number <= 1):
        raise bad_request(f"min_confidence must be a number in (0, 1], such as 0.4, not {shown(raw)}")
    return number


def answer(task, timings):
    job = task.image_jobs()[0]  # a DeepStack request is one image
    # The worker's time on this request: from its batch's start (after the queue) to now.
    process_s = time.monotonic() - (task.header.enqueued_at_s + task.queue_wait_s)
    body = detection_answer(job.detections, job.original_size_px, timings["inference_s"] * 1000, process_s * 1000)
    return Result(task.header.task_id, 200, json.dumps(body).encode(), image_id=job.image_id,
                  labels=tuple(d.label for d in job.detections), **timings)


def detection_answer(detections, image_size_px, inference_ms, process_ms):
    """The 200 answer to a detection request, as a dict for json.dumps.

    inference_ms: the forward pass; process_ms: the whole request in the worker.
    """
    found = predictions(detections, image_size_px)
    return {"success": True, "predictions": found, "count": len(found),
            "inferenceMs": int(round(inference_ms)), "processMs": int(round(process_ms))}


def predictions(detections, image_size_px):
    """DeepStack's predictions for detections in an image of image_size_px = (width, height)."""
    width_px, height_px = image_size_px
    answer = []
    for detection in sorted(detections, key=lambda d: -d.confidence):  # stable: ties keep their order
        x, y, w, h = detection.bbox
        # Rounded outwards, so a box never loses a pixel it covered; then clamped to the image.
        answer.append({
            "label": coco_2017_label(detection.label),
            "confidence": float(detection.confidence),
            "x_min": _clamped(math.floor(x), width_px),
            "y_min": _clamped(math.floor(y), height_px),
            "x_max": _clamped(math.ceil(x + w), width_px),
            "y_max": _clamped(math.ceil(y + h), height_px),
        })
    return answer


def _clamped(value, limit):
    return int(min(max(value, 0), limit))
