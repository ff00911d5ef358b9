"""The Open Inference Protocol's answers the front end gives alone: metadata, health, paths, errors.

Pure functions over names and flags, no I/O: the server metadata (GET /v2),
a model's metadata (GET /v2/models/{name}[/versions/{version}]), the health
bodies, the reading of a /v2/models/... path, which model and version it
names, the Inference-Header-Content-Length header, and the error body. The
infer body itself is parsed in the workers (worker/open_inference_tensors).
"""

import json
from urllib.parse import unquote

from ..open_inference_signature import HEADER_LENGTH_FIELD, IMAGE_INPUT, MODEL_VERSION, OUTPUTS, PLATFORM
from ..refusals import bad_request, not_found
from .admission import CONTENT_LENGTH

SERVER_NAME = "detserve"
EXTENSIONS = ("binary_tensor_data",)  # Inference-Header-Content-Length, binary_data_size, binary_data
MODELS_PREFIX = "/v2/models/"
# What may follow /v2/models/{name}[/versions/{version}]; nothing after it is the model's metadata.
MODEL_ACTIONS = {"ready": "ready", "infer": "infer"}
MAX_MODEL_NAME_CHARS = 256  # longer than any name served; keeps a 404's message short
# Both clients read only the status of a health answer; Triton gives 400 when not
# ready, KServe 503. 503 is what /readyz gives and what a load balancer expects.
NOT_READY_STATUS = 503


def server_metadata(version):
    """GET /v2: the server's name, its version and the protocol extensions it speaks."""
    return {"name": SERVER_NAME, "version": version, "extensions": list(EXTENSIONS)}


def model_metadata(model_name, platform=PLATFORM):
    """GET /v2/models/{name}: the model's versions, its one input and its outputs."""
    return {"name": model_name, "versions": [MODEL_VERSION], "platform": platform,
            "inputs": [IMAGE_INPUT.as_metadata()], "outputs": [output.as_metadata() for output in OUTPUTS]}


def server_live(live=True):
    return {"live": live}


def server_ready(ready):
    return {"ready": ready}


def model_ready(model_name, ready):
    return {"name": model_name, "ready": ready}


def health_status(ok):
    return 200 if ok else NOT_READY_STATUS


def match_model_path(path):
    """(model, version or None, action) for /v2/models/{model}[/versions/{version}][/ready|/infer], else None.

    action is "metadata", "ready" or "infer"; the model's name is percent-decoded, as
    tritonclient quotes it. Any other shape (a trailing slash, /config, /stats) is None.
    """
    if not path.startswith(MODELS_PREFIX):
        return None
    segments = path[len(MODELS_PREFIX):].split("/")
    if "" in segments:
        return None
    model, rest = unquote(segments[0]), segments[1:]
    version = None
    if rest[:1] == ["versions"] and len(rest) >= 2:
        version, rest = unquote(rest[1]), rest[2:]
    if len(rest) > 1 or len(model) > MAX_MODEL_NAME_CHARS:
        return None
    action = MODEL_ACTIONS.get(rest[0]) if rest else "metadata"
    if action is None:
        return None
    return model, version, action


def check_model(model, version, served_models):
    """Raise Refusal(404) unless model is one of served_models and version is absent or ours."""
    if model not in served_models:
        raise not_found(f"unknown model {model[:60]!r}; this server serves {', '.join(served_models)}")
    if version is not None and version != MODEL_VERSION:
        raise not_found(f"model {model[:60]!r} has no version {version[:40]!r}; its one version is {MODEL_VERSION}")


def inference_header_length(value, body_length):
    """The Inference-Header-Content-Length header as an int (None when absent), or raise Refusal(400).

    Checked against the declared body length before a byte of the body is read; the
    worker checks it again against the body it receives.
    """
    if value is None:
        return None
    if not CONTENT_LENGTH.fullmatch(value):  # the same digits as a Content-Length
        raise bad_request(f"{HEADER_LENGTH_FIELD} {value[:40]!r} is not a number of bytes", close=True)
    length = int(value)
    if not 0 < length <= body_length:
        raise bad_request(f"{HEADER_LENGTH_FIELD} is {length:,} bytes; the body is {body_length:,}", close=True)
    return length


def error_body(refusal):
    """The protocol's error answer: {"error": "<message>"}."""
    return json.dumps({"error": refusal.message}).encode()
