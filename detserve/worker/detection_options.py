"""Per-request detection options: merge the query's raw strings with the JSON fields, validate, apply.

Options act on post-processing only (thresholds, which detections are kept),
never on the forward pass, so a batched image with its own options gets
exactly what it gets alone. Precedence, lowest first: the server's flags, the
query string, a form's fields (text like the query's, so merged with it and
read by the query's rules), the JSON body's top level, a multi-image entry's
own fields.
Every value a client can send is checked here, and a bad one is a 400 that
says what is accepted: no value can make a worker hang or fail. ``model``
picks which of the worker's models runs the image; it is read first, since
the labels ``classes`` may name are that model's.
"""

import math
from dataclasses import dataclass, replace
from typing import FrozenSet, Optional

from ..protocol import DETECTION_OPTION_NAMES, NMS_MODES
from ..refusals import bad_request
from .label_spellings import model_spelling

MAX_DETECTIONS_LIMIT = 1000  # more than YOLOv3-tiny's 2,535 candidates ever keep after NMS in practice
MIN_SIDE_PX, MAX_SIDE_PX = 16, 10_000  # max_side: smaller is unreadable, larger than any accepted image
LABELS_HINT = "the model's labels are listed at GET /api/labels"
MODELS_HINT = "GET /api/models lists them"


@dataclass(frozen=True)
class DetectionOptions:
    model: str  # the name of the model that runs the image, as the server lists it
    confidence: float  # keep a candidate whose class score is above this
    nms: float  # IoU above which the less confident of two boxes is suppressed
    nms_mode: str = "agnostic"  # a key of NMS_MODES: which boxes may suppress each other
    classes: Optional[FrozenSet[str]] = None  # keep only these labels, after NMS; None: all
    max_detections: Optional[int] = None  # keep the N most confident, in the answer's order
    max_side_px: Optional[int] = None  # longest side of an annotated image; None: the input's size

    def select(self, detections):
        """The detections this request asked for, out of NMS's answer (order kept)."""
        if self.classes is not None:
            detections = [d for d in detections if d.label in self.classes]
        if self.max_detections is not None and len(detections) > self.max_detections:
            # sorted() is stable: equal confidences keep the answer's order.
            ranked = sorted(range(len(detections)), key=lambda i: -detections[i].confidence)
            kept = sorted(ranked[:self.max_detections])
            detections = [detections[i] for i in kept]
        return detections


def server_defaults(config):
    return DetectionOptions(model=config.model_choices[0].name, confidence=config.confidence, nms=config.nms,
                            nms_mode=config.nms_mode)


def option_fields(payload):
    """The option fields of a JSON object, unvalidated."""
    return {name: payload[name] for name in DETECTION_OPTION_NAMES if name in payload}


def resolve(base, fields, labels_by_model, from_query=False):
    """base with fields (a dict of option name -> value) applied, or raise Refusal(400).

    labels_by_model: {model name: its labels} of the models this worker serves.
    from_query: the values are the query string's raw strings, not JSON values.
    """
    changes = {}
    if "model" in fields:
        changes["model"] = _model(fields["model"], labels_by_model, from_query)
    labels = labels_by_model[changes.get("model", base.model)]
    for name, value in fields.items():
        if name != "model":
            parse = _QUERY_PARSERS[name] if from_query else _JSON_PARSERS[name]
            changes[_FIELD_NAMES.get(name, name)] = parse(name, value, labels)
    return replace(base, **changes) if changes else base


# -- one check per kind of value ------------------------------------------------------------
def _bad(name, value, expected, from_query=False):
    where = f"?{name}=" if from_query else f'"{name}"'
    shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
    return bad_request(f"{where} must be {expected}, not {shown}")


def _unit_interval(name, number, raw, from_query):
    if not (math.isfinite(number) and 0 < number <= 1):
        raise _bad(name, raw, "a number in (0, 1]", from_query)
    return float(number)


def _json_fraction(name, value, labels):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _bad(name, value, "a number in (0, 1]")
    return _unit_interval(name, value, value, False)


def _query_fraction(name, raw, labels):
    try:
        number = float(raw)
    except ValueError:
        raise _bad(name, raw, "a number in (0, 1]", True) from None
    return _unit_interval(name, number, raw, True)


def _integer_in(name, value, low, high, from_query):
    expected = f"a whole number from {low} to {high}"
    if from_query:
        if not (value.isascii() and value.isdigit() and len(value) <= 6):
            raise _bad(name, value, expected, True)
        value = int(value)
    elif isinstance(value, bool) or not isinstance(value, int):
        raise _bad(name, value, expected)
    if not low <= value <= high:
        raise _bad(name, value, expected, from_query)
    return value


def _model(value, labels_by_model, from_query):
    if not isinstance(value, str) or value not in labels_by_model:
        shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
        where = "?model=" if from_query else '"model"'
        raise bad_request(f"{where} {shown} is not a model this server serves; it serves "
                          f"{', '.join(labels_by_model)} ({MODELS_HINT})")
    return value


def _nms_mode(name, value, from_query):
    if value not in NMS_MODES:
        raise _bad(name, value, f"one of {', '.join(NMS_MODES)}", from_query)
    return value


def _classes(name, names, labels, from_query):
    # Either spelling of a COCO label (darknet's motorbike, COCO 2017's motorcycle) names the model's own.
    wanted = frozenset(model_spelling(label.strip(), labels) for label in names)
    if not names or "" in wanted:
        raise _bad(name, ",".join(names), f"a comma-separated list of labels ({LABELS_HINT})", from_query)
    unknown = sorted(wanted - set(labels))
    if unknown:
        shown = ", ".join(repr(label[:40]) for label in unknown[:5])
        raise bad_request(f"unknown label{'s' if len(unknown) > 1 else ''} {shown} in {name}; {LABELS_HINT}")
    return wanted


def _json_classes(name, value, labels):
    if isinstance(value, str):
        return _classes(name, value.split(","), labels, False)
    if isinstance(value, list) and all(isinstance(label, str) for label in value):
        return _classes(name, value, labels, False)
    raise _bad(name, value, "a comma-separated string or a list of label strings")


_JSON_PARSERS = {
    "confidence": _json_fraction,
    "nms": _json_fraction,
    "nms_mode": lambda name, value, labels: _nms_mode(name, value, False),
    "classes": _json_classes,
    "max_detections": lambda name, value, labels: _integer_in(name, value, 1, MAX_DETECTIONS_LIMIT, False),
    "max_side": lambda name, value, labels: _integer_in(name, value, MIN_SIDE_PX, MAX_SIDE_PX, False),
}
_QUERY_PARSERS = {
    "confidence": _query_fraction,
    "nms": _query_fraction,
    "nms_mode": lambda name, raw, labels: _nms_mode(name, raw, True),
    "classes": lambda name, raw, labels: _classes(name, raw.split(","), labels, True),
    "max_detections": lambda name, raw, labels: _integer_in(name, raw, 1, MAX_DETECTIONS_LIMIT, True),
    "max_side": lambda name, raw, labels: _integer_in(name, raw, MIN_SIDE_PX, MAX_SIDE_PX, True),
}
_FIELD_NAMES = {"max_side": "max_side_px"}  # the API's name -> the dataclass's name with its unit
