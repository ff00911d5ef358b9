"""The wire formats the front end speaks on its detection routes: one module each, with the same names.

A format module says which POST paths are its own and what an answer in it
looks like; the exchange (front/exchange.py) runs every format's requests the
same way, and the worker-side module of the same NAME (worker/formats/)
parses its bodies and builds its answers. A new format is one more module
here and one there, listed in FORMATS; nothing else branches on formats.

Each module provides:
- ``NAME``: the TaskHeader.wire_format its requests carry;
- ``owns(path)``: whether path is in its path space, where every refusal (a
  404 for a path that matches nothing, a 405) is in its words;
- ``match(path)``: its detection route's metrics label and path parameters, or None;
- ``match_fixed(path)``: the get_routes.FixedRoute of a route it answers from
  the server's state alone (metadata, health), or None;
- ``no_route_message(path)``: the 404's words for a path of its own that matches nothing;
- ``OPENAPI_PATHS`` and ``OPENAPI_FIXED_PATHS``: its POST paths and its GET
  paths as openapi.json documents them;
- ``authorize(headers, config)``: raise the 401 of a request without the key
  (--api-key-file), or return the format fields (format_fields) that leave the
  rest of the check to the worker, where the key travels in the body;
- ``media_type(headers)``: the body's media type, or raise the 415;
- ``task_fields(headers, options, params, model_names)``: the TaskHeader
  fields it sets beyond the common ones (``model``, ``format_fields``), or
  raise a Refusal; called before the body is read;
- ``error_body(refusal)`` and ``ERROR_CONTENT_TYPE``: a refusal in its words.
"""

from . import deepstack, native, open_inference

FORMATS = (native, deepstack, open_inference)
DEFAULT_FORMAT = native  # whose words answer a path no format owns


def route_for(path):
    """(format module, route label, path parameters) of the detection route at path, or None."""
    for wire_format in FORMATS:
        matched = wire_format.match(path)
        if matched is not None:
            label, params = matched
            return wire_format, label, params
    return None


def fixed_route_for(path):
    """(format module, FixedRoute) of the fixed route at path, or None."""
    for wire_format in FORMATS:
        route = wire_format.match_fixed(path)
        if route is not None:
            return wire_format, route
    return None


def owner_of(path):
    """The format whose words a refusal at path is in: the one that owns it, else the default."""
    return next((wire_format for wire_format in FORMATS if wire_format.owns(path)), DEFAULT_FORMAT)
