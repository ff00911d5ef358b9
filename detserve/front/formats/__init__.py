"""The wire formats the front end speaks on its detection routes: one module each, with the same names.

A format module says which POST paths are its own and what an answer in it
looks like; the exchange (front/exchange.py) runs every format's requests the
same way, and the worker-side module of the same NAME (worker/formats/)
parses its bodies and builds its answers. A new format is one more module
here and one there, listed in FORMATS; nothing else branches on formats.

Each module provides:
- ``NAME``: the TaskHeader.wire_format its requests carry;
- ``match(path)``: the route's metrics label and its path parameters, or None;
- ``OPENAPI_PATHS``: its POST paths as openapi.json documents them;
- ``authorize(headers, config)``: raise the 401 of a request without the key
  (--api-key), or return the format fields (format_fields) that leave the
  rest of the check to the worker, where the key travels in the body;
- ``media_type(headers)``: the body's media type, or raise the 415;
- ``task_fields(headers, options, params, model_names)``: the TaskHeader
  fields it sets beyond the common ones (``model``, ``format_fields``, or its
  own ``output_format``), or raise a Refusal; called before the body is read;
- ``error_body(refusal)`` and ``ERROR_CONTENT_TYPE``: a refusal in its words;
- ``FIXED_ROUTES``: {path: (methods, answer(state, headers) -> get_routes.Answer)},
  the routes of the format that a worker has no part in (a model list, a status probe).
"""

from . import deepstack, native

FORMATS = (native, deepstack)


def route_for(path):
    """(format module, route label, path parameters) of the detection route at path, or None."""
    for wire_format in FORMATS:
        matched = wire_format.match(path)
        if matched is not None:
            label, params = matched
            return wire_format, label, params
    return None


def fixed_route_for(path):
    """(format module, allowed methods, answer function) of a format's fixed route at path, or None."""
    for wire_format in FORMATS:
        if path in wire_format.FIXED_ROUTES:
            methods, answer = wire_format.FIXED_ROUTES[path]
            return wire_format, methods, answer
    return None
