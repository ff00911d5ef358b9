"""detserve's own API, POST /api/: a JSON body (one image or several), a raw JPEG or PNG body, or an upload form."""

import json

from ... import format_fields
from ...protocol import FORM_MEDIA_TYPE, IMAGE_MEDIA_TYPES, JSON_MEDIA_TYPE
from .. import admission

NAME = "native"
ROUTE_LABEL = "/api/"
PATHS = ("/api/", "/api")
OPENAPI_PATHS = ("/api/",)  # the paths as openapi.json documents them
OPENAPI_FIXED_PATHS = ()  # its GET routes are the server's own (get_routes)
ACCEPTED_MEDIA_TYPES = (JSON_MEDIA_TYPE, *IMAGE_MEDIA_TYPES, FORM_MEDIA_TYPE)
ERROR_CONTENT_TYPE = JSON_MEDIA_TYPE


def owns(path):
    return False  # the default owner of every path no format claims


def match(path):
    return (ROUTE_LABEL, {}) if path in PATHS else None


def match_fixed(path):
    return None


def no_route_message(path):
    return f"no such path {path[:100]!r}; the API is POST /api/"


def authorize(headers, config):
    if config.api_key:
        admission.check_authorized(headers, config.api_key)
    return {}


def media_type(headers):
    # No Content-Type: a bare `curl --data-binary` without -H; assume the documented JSON.
    return admission.media_type(headers, ACCEPTED_MEDIA_TYPES, JSON_MEDIA_TYPE,
                                "send application/json, a raw image/jpeg or image/png body, "
                                "or a multipart/form-data upload (curl -F image=@photo.jpg)")


def task_fields(headers, options, params, model_names):
    if media_type(headers) == FORM_MEDIA_TYPE:  # the worker needs the form's boundary
        return {"format_fields": {format_fields.CONTENT_TYPE: headers["Content-Type"]}}
    return {}


def error_body(refusal):
    """The JSON body of every error answer: a reason a user can act on, and the id if known."""
    return json.dumps({"error": refusal.message, "id": refusal.image_id}).encode()
