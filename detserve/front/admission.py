"""Admission: the checks a detection request passes before its body is read.

Each check raises the Refusal it deserves; the handler answers it in one
place. Only what HTTP knows is checked here (auth, framing, media type, the
query id): the body itself is the workers' to parse.
"""

import hmac
import re
from dataclasses import dataclass
from typing import Optional
from urllib.parse import parse_qs

from ..protocol import (IMAGE_MEDIA_TYPES, JSON_MEDIA_TYPE, MAX_IMAGE_ID_CHARS, RejectReason, Refusal,
                        retry_headers)

ACCEPTED_MEDIA_TYPES = (JSON_MEDIA_TYPE, *IMAGE_MEDIA_TYPES)
CONTENT_LENGTH = re.compile(r"[ \t]*[0-9]{1,12}[ \t]*")  # ASCII digits only: int() would take '²'


@dataclass(frozen=True)
class Admission:
    """What a request that passed every check carries on to its body read."""

    body_length: int
    media_type: str
    query_image_id: Optional[str]


def admit(headers, query, config, draining):
    """The Admission of a POST /api/ request, or raise its Refusal (every one closes the connection)."""
    if config.api_key:
        check_authorized(headers, config.api_key)
    if draining:
        raise Refusal(503, "the server is shutting down; retry on another instance", RejectReason.DRAINING,
                      headers=retry_headers(), close=True)
    length = body_length(headers, config.max_body_bytes)
    return Admission(length, media_type(headers), query_image_id(query))


def check_authorized(headers, api_key):
    scheme, _, provided = headers.get("Authorization", "").partition(" ")
    # compare_digest takes the same time wherever the strings differ.
    if scheme.lower() != "bearer" or not hmac.compare_digest(provided.strip().encode(), api_key.encode()):
        raise Refusal(401, "missing or wrong API key; send 'Authorization: Bearer <key>'", RejectReason.UNAUTHORIZED,
                      headers={"WWW-Authenticate": 'Bearer realm="detserve"'}, close=True)


def body_length(headers, max_body_bytes):
    """The declared body length, if the framing is unambiguous and within the limit."""
    if "Transfer-Encoding" in headers:
        # Any Transfer-Encoding: a proxy and this server could otherwise disagree
        # about where the body ends (request smuggling).
        raise Refusal(411, "Transfer-Encoding (chunked bodies) is not supported; send a Content-Length", close=True)
    lengths = headers.get_all("Content-Length") or []
    if not lengths:
        raise Refusal(411, "Content-Length is required", close=True)
    if len(lengths) > 1:
        raise Refusal(400, "more than one Content-Length header", close=True)
    if not CONTENT_LENGTH.fullmatch(lengths[0]):
        raise Refusal(400, f"Content-Length {lengths[0][:40]!r} is not a number", close=True)
    length = int(lengths[0])
    if length > max_body_bytes:
        raise Refusal(413, f"the body is {length:,} bytes, more than the {max_body_bytes:,}-byte limit "
                           "(--max-body-mb)", close=True)
    return length


def media_type(headers):
    raw = headers.get("Content-Type")
    if raw is None:  # a bare `curl --data-binary` without -H: assume the documented JSON
        return JSON_MEDIA_TYPE
    media = raw.split(";", 1)[0].strip().lower()
    if media not in ACCEPTED_MEDIA_TYPES:
        raise Refusal(415, f"Content-Type {media!r} is not accepted; send application/json "
                           "(or a raw image/jpeg or image/png body)", close=True)
    return media


def query_image_id(query):
    values = parse_qs(query).get("id")
    if not values:
        return None
    if len(values[0]) > MAX_IMAGE_ID_CHARS:
        raise Refusal(400, f"?id= is longer than {MAX_IMAGE_ID_CHARS} characters", close=True)
    return values[0]
