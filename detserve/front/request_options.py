"""What the front end reads of a request besides its body, parsed once: the URL query and Accept.

The query is parsed by one rule (the first value of each name; a blank value
is a value) into RequestOptions, which the exchange hands on: the image id,
the detection options as the raw strings they are (the worker validates them
with the body's fields), and the answer's format, from ``?format=`` or Accept.
Accept is read by one parser here for every route (the page's ``GET /`` too).
"""

from dataclasses import dataclass, field
from typing import Optional
from urllib.parse import parse_qs

from ..protocol import DETECTION_OPTION_NAMES, MAX_IMAGE_ID_CHARS, OUTPUT_MEDIA_TYPES
from ..refusals import bad_request

FORMAT_PARAMETER = "format"
# The media ranges that admit a JSON answer, most specific first: the first one
# present gives JSON's quality (RFC 9110, 12.5.1).
JSON_RANGES = ("application/json", "application/*", "*/*")
JPEG_MEDIA_TYPE = OUTPUT_MEDIA_TYPES["jpeg"]
HTML_MEDIA_TYPE = "text/html"


@dataclass(frozen=True)
class RequestOptions:
    """A detection request's query and Accept, read; the body is the worker's to read."""

    image_id: Optional[str] = None  # ?id=; a blank one is no id (the worker makes one)
    detection_options: dict = field(default_factory=dict)  # {DETECTION_OPTION_NAMES: raw string}
    output_format: str = "json"  # a key of OUTPUT_MEDIA_TYPES
    query: dict = field(default_factory=dict)  # every parameter's first value, for a format's own names


def parse(query, accept_header):
    """The RequestOptions of a query string and an Accept header, or raise the 400 of a bad one."""
    values = {name: found[0] for name, found in parse_qs(query, keep_blank_values=True).items()}
    image_id = values.get("id") or None
    if image_id is not None and len(image_id) > MAX_IMAGE_ID_CHARS:
        raise bad_request(f"?id= is longer than {MAX_IMAGE_ID_CHARS} characters", close=True)
    detection_options = {name: values[name] for name in DETECTION_OPTION_NAMES if name in values}
    return RequestOptions(image_id, detection_options, _output_format(values, accept_header), values)


def _output_format(values, accept_header):
    """"json" or "jpeg": ?format= if given, else JPEG only when Accept prefers image/jpeg to JSON.

    No Accept, */*, or an Accept naming neither keeps JSON, as every client so far expects.
    """
    requested = values.get(FORMAT_PARAMETER)
    if requested is not None:
        if requested not in OUTPUT_MEDIA_TYPES:
            raise bad_request(f"?format= must be one of {', '.join(OUTPUT_MEDIA_TYPES)}, not {requested[:40]!r}")
        return requested
    qualities = accept_qualities(accept_header)
    jpeg_q = qualities.get(JPEG_MEDIA_TYPE, 0.0)
    json_q = next((qualities[media] for media in JSON_RANGES if media in qualities), 0.0)
    return "jpeg" if jpeg_q > 0 and jpeg_q > json_q else "json"


def accept_qualities(accept_header):
    """{media range: q} of an Accept header (the first entry of a range counts); a malformed q counts as 0."""
    qualities = {}
    for entry in (accept_header or "").split(","):
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
            qualities.setdefault(media.lower(), quality)
    return qualities


def wants_html(accept_header):
    """True when an Accept header names text/html with a non-zero q, as browsers send.

    curl's `*/*`, no Accept at all, or `application/json` keep the plain-text welcome.
    """
    return accept_qualities(accept_header).get(HTML_MEDIA_TYPE, 0.0) > 0
