"""The Open Inference Protocol's REST routes (KServe's v2 data plane), as Triton's and KServe's clients call them.

    GET  /v2                                   server metadata
    GET  /v2/health/live, /v2/health/ready     {"live": ...}, {"ready": ...}
    GET  /v2/models/{name}[/versions/{v}]      the model's metadata (its signature)
    GET  /v2/models/{name}[/versions/{v}]/ready
    POST /v2/models/{name}[/versions/{v}]/infer   run by the workers (worker/formats/open_inference)

Every path under /v2 is this format's: a refusal there, a 404 for a path
that matches nothing included, is {"error": "..."} as the protocol says.
Everything a route can check before the body is read (the model and
version, the media type, Inference-Header-Content-Length against the
declared length) is checked here; the body itself is the worker's.
"""

from ... import __version__, format_fields
from ...open_inference_signature import BINARY_MEDIA_TYPE, HEADER_LENGTH_FIELD
from ...protocol import JSON_MEDIA_TYPE
from ...refusals import bad_request, not_acceptable, unsupported_media_type
from .. import admission
from .. import open_inference_metadata as metadata
from ..get_routes import FixedRoute, json_answer

NAME = "open_inference"
PATH_PREFIX = "/v2"
MODEL_TEMPLATE = "/v2/models/{model}"
VERSION_TEMPLATE = "/v2/models/{model}/versions/{version}"
# The paths as openapi.json documents them.
OPENAPI_PATHS = (MODEL_TEMPLATE + "/infer", VERSION_TEMPLATE + "/infer")
OPENAPI_FIXED_PATHS = ("/v2", "/v2/health/live", "/v2/health/ready", MODEL_TEMPLATE, VERSION_TEMPLATE,
                       MODEL_TEMPLATE + "/ready", VERSION_TEMPLATE + "/ready")
# No Content-Type is JSON; binary tensors after the JSON come as octet-stream.
ACCEPTED_MEDIA_TYPES = (JSON_MEDIA_TYPE, BINARY_MEDIA_TYPE)
IDENTITY_ENCODINGS = ("", "identity")
ERROR_CONTENT_TYPE = JSON_MEDIA_TYPE
ROUTES_TEXT = ("GET /v2, /v2/health/live, /v2/health/ready, /v2/models/{name}[/versions/{version}][/ready] "
               "and POST /v2/models/{name}[/versions/{version}]/infer")


def owns(path):
    """True for every path under /v2: its refusals, a 404 included, are in this format's words."""
    return path == PATH_PREFIX or path.startswith(PATH_PREFIX + "/")


def match(path):
    """The infer route's (metrics label, {"model", "version"}), or None."""
    matched = metadata.match_model_path(path)
    if matched is None or matched[2] != "infer":
        return None
    model, version, _ = matched
    return _template(version) + "/infer", {"model": model, "version": version}


def match_fixed(path):
    """The FixedRoute of a metadata or health path, or None."""
    if path in SERVER_ROUTES:
        return SERVER_ROUTES[path]
    matched = metadata.match_model_path(path)
    if matched is None or matched[2] == "infer":
        return None
    model, version, action = matched
    if action == "ready":
        return FixedRoute(_template(version) + "/ready", lambda state, headers: model_ready(state, model, version))
    return FixedRoute(_template(version), lambda state, headers: model_metadata(state, model, version))


def _template(version):
    return MODEL_TEMPLATE if version is None else VERSION_TEMPLATE


def no_route_message(path):
    return f"no such path {path[:100]!r}; the Open Inference routes are {ROUTES_TEXT}"


# -- the fixed answers ---------------------------------------------------------------------------
def server_metadata(state, headers):
    return json_answer(200, metadata.server_metadata(__version__))


def server_live(state, headers):
    live = not state.fatal_error
    return json_answer(metadata.health_status(live), metadata.server_live(live))


def server_ready(state, headers):
    ready, _ = state.readiness()
    return json_answer(metadata.health_status(ready), metadata.server_ready(ready))


def model_metadata(state, model, version):
    metadata.check_model(model, version, state.model_names)
    return json_answer(200, metadata.model_metadata(model))


def model_ready(state, model, version):
    metadata.check_model(model, version, state.model_names)
    ready, _ = state.readiness()
    return json_answer(metadata.health_status(ready), metadata.model_ready(model, ready))


SERVER_ROUTES = {"/v2": FixedRoute("/v2", server_metadata),
                 "/v2/health/live": FixedRoute("/v2/health/live", server_live),
                 "/v2/health/ready": FixedRoute("/v2/health/ready", server_ready)}


# -- the infer route, before its body is read ---------------------------------------------------------
def authorize(headers, config):
    """The bearer token, as on /api/ (tritonclient sends it as a header)."""
    if config.api_key:
        admission.check_authorized(headers, config.api_key)
    return {}


def media_type(headers):
    """The body's media type; a compressed body is a 415 (the workers read tensors, not gzip)."""
    encoding = ", ".join(headers.get_all("Content-Encoding") or []).strip().lower()
    if encoding not in IDENTITY_ENCODINGS:
        raise unsupported_media_type(f"Content-Encoding {encoding[:40]!r} is not accepted; send the body "
                                     "uncompressed (tritonclient: no request_compression_algorithm)")
    return admission.media_type(headers, ACCEPTED_MEDIA_TYPES, JSON_MEDIA_TYPE,
                                f"send {JSON_MEDIA_TYPE}, or {BINARY_MEDIA_TYPE} with {HEADER_LENGTH_FIELD}")


def task_fields(headers, options, params, model_names):
    """The model to run and the header length, or raise the 404, 400 or 406 the request gets now."""
    metadata.check_model(params["model"], params["version"], model_names)
    if options.query:
        names = ", ".join(repr(name[:40]) for name in sorted(options.query)[:5])
        raise bad_request(f"the Open Inference routes take no query parameters ({names}); send the detection "
                          "options as the request's parameters", close=True)
    if options.output_format != "json":
        raise not_acceptable(f"the infer route answers tensors, as {JSON_MEDIA_TYPE} or {BINARY_MEDIA_TYPE}")
    sent = headers.get_all(HEADER_LENGTH_FIELD) or []
    if len(sent) > 1:
        raise bad_request(f"more than one {HEADER_LENGTH_FIELD} header", close=True)
    body_length = int(headers["Content-Length"])  # admitted: one Content-Length, a number
    header_length = metadata.inference_header_length(sent[0] if sent else None, body_length)
    fields = {} if header_length is None else {format_fields.INFERENCE_HEADER_LENGTH: str(header_length)}
    return {"model": params["model"], "format_fields": fields}


def error_body(refusal):
    return metadata.error_body(refusal)
