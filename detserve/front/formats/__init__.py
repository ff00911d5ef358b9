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
- ``media_type(headers)``: the body's media type, or raise the 415;
- ``task_fields(options, params)``: the TaskHeader fields it sets beyond the
  common ones (``model``, ``format_fields``), or raise a Refusal;
- ``error_body(refusal)`` and ``ERROR_CONTENT_TYPE``: a refusal in its words.
"""

from . import native

FORMATS = (native,)


def route_for(path):
    """(format module, route label, path parameters) of the detection route at path, or None."""
    for wire_format in FORMATS:
        matched = wire_format.match(path)
        if matched is not None:
            label, params = matched
            return wire_format, label, params
    return None
