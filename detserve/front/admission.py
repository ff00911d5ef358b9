"""Admission: the checks every detection request passes before its body is read, whatever its format.

Each check raises the Refusal it deserves (every one closes the connection,
since the body stays unread); the handler answers it in one place. Only what
HTTP knows is checked here (auth, draining, framing): how a route's clients
send their key, and which media types it takes, are its wire format's to say
(its ``authorize`` and ``media_type``), and the body is the workers' to parse.
"""

import hmac
import re

from ..refusals import (bad_request, cross_site, draining, length_required, too_large, unauthorized,
                        unsupported_media_type)

CONTENT_LENGTH = re.compile(r"[ \t]*[0-9]{1,12}[ \t]*")  # ASCII digits only: int() would take '²'


def admit(headers, config, is_draining, authorize):
    """(the declared body length, the format fields authorize left for the worker), or raise the Refusal.

    authorize is the wire format's: authorize(headers, config) -> format fields.
    """
    check_not_cross_site(headers, config.allowed_origins)
    auth_fields = authorize(headers, config)
    if is_draining:
        raise draining()
    return body_length(headers, config.max_body_bytes), auth_fields


def check_authorized(headers, api_key):
    """Refuse a request without the bearer token api_key (the check every format starts from)."""
    scheme, _, provided = headers.get("Authorization", "").partition(" ")
    # compare_digest takes the same time wherever the strings differ.
    if scheme.lower() != "bearer" or not hmac.compare_digest(provided.strip().encode(), api_key.encode()):
        raise unauthorized("missing or wrong API key; send 'Authorization: Bearer <key>'")


def check_not_cross_site(headers, allowed_origins):
    """Refuse work a browser sends on behalf of another site's page.

    A POST with a form or raw body is a "simple" request: a browser sends it
    cross-site without asking first, so any web page could make its visitors'
    browsers submit images to a detserve on their machine or intranet. Browsers
    say where a request comes from (Sec-Fetch-Site, Origin); clients that are
    not browsers send neither and are not affected, and neither is detserve's
    own page, whose requests are same-origin.
    """
    origin = headers.get("Origin")
    if origin is not None and origin in allowed_origins:
        return
    if headers.get("Sec-Fetch-Site", "").strip().lower() == "cross-site":
        raise cross_site(origin or "another site")
    if origin is not None and origin.lower() not in _own_origins(headers.get("Host", "")):
        raise cross_site(origin)


def _own_origins(host):
    host = host.strip().lower()
    return {f"http://{host}", f"https://{host}"}


def body_length(headers, max_body_bytes):
    """The declared body length, if the framing is unambiguous and within the limit."""
    if "Transfer-Encoding" in headers:
        # Any Transfer-Encoding: a proxy and this server could otherwise disagree
        # about where the body ends (request smuggling).
        raise length_required("Transfer-Encoding (chunked bodies) is not supported; send a Content-Length")
    lengths = headers.get_all("Content-Length") or []
    if not lengths:
        raise length_required("Content-Length is required")
    if len(lengths) > 1:
        raise bad_request("more than one Content-Length header", close=True)
    if not CONTENT_LENGTH.fullmatch(lengths[0]):
        raise bad_request(f"Content-Length {lengths[0][:40]!r} is not a number", close=True)
    length = int(lengths[0])
    if length > max_body_bytes:
        raise too_large(f"the body is {length:,} bytes, more than the {max_body_bytes:,}-byte limit "
                        "(--max-body-mb)", close=True)
    return length


def media_type(headers, accepted, default, hint):
    """The body's media type if it is one of accepted (no Content-Type: default, if any), else raise the 415."""
    raw = headers.get("Content-Type")
    if raw is None and default is not None:
        return default
    if raw is None:
        raise unsupported_media_type(f"the request has no Content-Type; {hint}")
    media = raw.split(";", 1)[0].strip().lower()
    if media not in accepted:
        raise unsupported_media_type(f"Content-Type {media!r} is not accepted; {hint}")
    return media
