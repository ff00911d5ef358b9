"""What the front end reads of a detection request's options, without parsing its body.

The answer's format is decided here, from ``?format=`` or the Accept header;
the option query parameters are passed on to the worker as the raw strings
they are, and the worker validates them together with the JSON fields.
"""

from urllib.parse import parse_qs

from ..protocol import DETECTION_OPTION_NAMES, OUTPUT_MEDIA_TYPES, Refusal

FORMAT_PARAMETER = "format"
# The media ranges that admit a JSON answer, most specific first: the first one
# present gives JSON's quality (RFC 9110, 12.5.1).
JSON_RANGES = ("application/json", "application/*", "*/*")
JPEG_MEDIA_TYPE = OUTPUT_MEDIA_TYPES["jpeg"]


def query_options(query):
    """{option name: raw string} for the detection options in a query string (the first of each)."""
    values = parse_qs(query, keep_blank_values=True)
    return {name: values[name][0] for name in DETECTION_OPTION_NAMES if name in values}


def output_format(query, accept_header):
    """"json" or "jpeg": ?format= if given, else JPEG only when Accept prefers image/jpeg to JSON.

    No Accept, */*, or an Accept naming neither keeps JSON, as every client so far expects.
    """
    requested = parse_qs(query, keep_blank_values=True).get(FORMAT_PARAMETER)
    if requested:
        if requested[0] not in OUTPUT_MEDIA_TYPES:
            raise Refusal(400, f"?format= must be one of {', '.join(OUTPUT_MEDIA_TYPES)}, "
                               f"not {requested[0][:40]!r}")
        return requested[0]
    qualities = _accept_qualities(accept_header or "")
    jpeg_q = qualities.get(JPEG_MEDIA_TYPE, 0.0)
    json_q = next((qualities[media] for media in JSON_RANGES if media in qualities), 0.0)
    return "jpeg" if jpeg_q > 0 and jpeg_q > json_q else "json"


def _accept_qualities(accept_header):
    """{media range: q} of an Accept header; a malformed q counts as 0."""
    qualities = {}
    for entry in accept_header.split(","):
        media, *params = (part.strip() for part in entry.split(";"))
        quality = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        if media:
            qualities[media.lower()] = quality
    return qualities
