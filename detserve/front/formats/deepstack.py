"""DeepStack's vision API, the front end's half: its routes, what it admits, its errors and its fixed answers.

Home Assistant (deepstack-python), Frigate, Blue Iris and Agent DVR call a
detector the way the DeepStack server answered (and CodeProject.AI Server
still does): POST /v1/vision/detection, or /v1/vision/custom/<model> for a
named model, with a multipart form holding the image. The worker-side module
of the same name reads the form and answers. Every error, whatever its
status, is DeepStack's ``{"success": false, "error": "...", "predictions": []}``
as JSON with a Content-Length: Frigate calls .json() on any answer, and Blue
Iris fails on a chunked one. The API key (--api-key-file) may come as the bearer token
or, as DeepStack's clients send it, in the form's ``api_key`` field, which
only the worker can read. The model list and the status routes Blue Iris and
Agent DVR probe answer here, without a worker (match_fixed).
"""

import json
from urllib.parse import unquote

from ... import __version__, format_fields
from ...protocol import FORM_MEDIA_TYPE, JSON_MEDIA_TYPE
from ...refusals import bad_request, not_found
from .. import admission
from ..get_routes import FixedRoute, json_answer

NAME = "deepstack"
DETECTION_PATH = "/v1/vision/detection"
CUSTOM_PREFIX = "/v1/vision/custom/"
CUSTOM_ROUTE_LABEL = CUSTOM_PREFIX + "{model}"  # one metrics label for every model
MODELS_PATH = CUSTOM_PREFIX + "list"  # a fixed route, not a model named "list"
PATH_PREFIX = "/v1/"  # every path under it is DeepStack's: its refusals are in DeepStack's words
STATUS_PATHS = ("/v1/status/ping", "/v1/status/updateavailable")
OPENAPI_PATHS = (DETECTION_PATH, CUSTOM_ROUTE_LABEL, MODELS_PATH)  # POST; the model list answers GET too
OPENAPI_FIXED_PATHS = (MODELS_PATH, *STATUS_PATHS)
ERROR_CONTENT_TYPE = JSON_MEDIA_TYPE
MAX_SHOWN_CHARS = 40


def owns(path):
    return path.startswith(PATH_PREFIX)


def no_route_message(path):
    return (f"no such path {_shown(path)}; DeepStack's routes are POST {DETECTION_PATH}, "
            f"POST {CUSTOM_ROUTE_LABEL}, {MODELS_PATH} and GET {', '.join(STATUS_PATHS)}")


def match(path):
    if path == DETECTION_PATH:
        return DETECTION_PATH, {}
    model = path[len(CUSTOM_PREFIX):]
    if path.startswith(CUSTOM_PREFIX) and path != MODELS_PATH and model and "/" not in model:
        return CUSTOM_ROUTE_LABEL, {"model": unquote(model)}
    return None


def authorize(headers, config):
    """A bearer token is checked here; without one, the worker checks the form's api_key."""
    if config.api_key and "Authorization" in headers:
        admission.check_authorized(headers, config.api_key)
    elif config.api_key:
        return {format_fields.CHECK_FORM_API_KEY: "yes"}
    return {}


def media_type(headers):
    return admission.media_type(headers, (FORM_MEDIA_TYPE,), None,
                                "send the image as a multipart/form-data upload (curl -F image=@photo.jpg)")


def task_fields(headers, options, params, model_names):
    """The model (the path's, else ?model=, else the default), the form's Content-Type and ?min_confidence=."""
    model = params.get("model", options.query.get("model"))
    if model is not None and model not in model_names:
        refuse = not_found if "model" in params else bad_request
        raise refuse(f"no model named {_shown(model)}; this server runs {', '.join(model_names)} "
                     f"(GET {MODELS_PATH})")
    fields = {format_fields.CONTENT_TYPE: headers["Content-Type"]}
    if "min_confidence" in options.query:
        fields[format_fields.MIN_CONFIDENCE] = options.query["min_confidence"]
    return {"model": model, "output_format": "json", "format_fields": fields}  # DeepStack answers JSON only


def error_body(refusal):
    return json.dumps(error_answer(refusal.message)).encode()


def error_answer(message):
    """The body of every DeepStack error answer, whatever its status."""
    return {"success": False, "error": message, "predictions": []}


def _shown(text):
    return repr(text) if len(text) <= MAX_SHOWN_CHARS else repr(text[:MAX_SHOWN_CHARS - 3] + "...")


# -- the routes a worker has no part in -----------------------------------------------------------------
def models(state, headers):
    """The models the server runs, by name: each one is a /v1/vision/custom/<model> route."""
    return json_answer(200, {"success": True, "models": list(state.model_names)})


def _version():
    major, minor, patch = (int(part) for part in __version__.split(".")[:3])
    return {"name": "detserve", "version": __version__, "major": major, "minor": minor, "patch": patch}


def ping(state, headers):
    """Alive: CodeProject.AI answers its version, which Blue Iris shows."""
    return json_answer(200, {"success": True, "message": __version__, "version": _version()})


def update_available(state, headers):
    """detserve never looks for a newer version: the answer is always that this one is current."""
    return json_answer(200, {"success": True, "message": "This is the current version", "updateAvailable": False,
                             "current": _version(), "latest": _version()})


FIXED_ROUTES = {
    MODELS_PATH: FixedRoute(MODELS_PATH, models, ("GET", "HEAD", "POST")),
    STATUS_PATHS[0]: FixedRoute(STATUS_PATHS[0], ping),
    STATUS_PATHS[1]: FixedRoute(STATUS_PATHS[1], update_available),
}


def match_fixed(path):
    return FIXED_ROUTES.get(path)
