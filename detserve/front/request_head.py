"""A strict parser for an HTTP/1.x request head (request line and header fields), per RFC 9112.

http.server is lenient where leniency is dangerous: it splits the request line
on any Unicode whitespace (NBSP, NEL), lets a header line without a colon end
the headers silently (so `Transfer-Encoding : chunked` is dropped and the body
framed by Content-Length), accepts folded lines and bare CRs, and does not
require Host. A proxy in front may read the same bytes differently; that
disagreement is request smuggling. Here every such head is refused with a
HeadError carrying the status to answer (400, 431 or 505) and a message a
client can act on. Standard library only; nothing here knows about detserve.
"""

import re
from urllib.parse import urlsplit

# 32 KiB holds any real head (nginx's default large_client_header_buffers is 4 x 8 KiB)
# while bounding what one connection can make the server hold before it is refused.
MAX_HEAD_BYTES = 32 * 1024
SUPPORTED_VERSIONS = ("HTTP/1.0", "HTTP/1.1")

TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # RFC 9110 5.6.2
HTTP_VERSION = re.compile(rb"HTTP/[0-9]\.[0-9]")
VISIBLE_ASCII = re.compile(rb"[\x21-\x7e]+")  # a request target has no spaces, controls or non-ASCII
CONTROL_EXCEPT_TAB = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")  # includes a bare CR, LF and NUL
OPTIONAL_WHITESPACE = b" \t"


class HeadError(Exception):
    """A request head that must be refused: answer `status` with `message`, then close."""

    def __init__(self, status, message):
        super().__init__(message)
        self.status = status
        self.message = message


def parse_head(raw_head, max_head_bytes=MAX_HEAD_BYTES):
    """Parse a whole head (request line, header lines, optionally the blank line).

    Returns (method, target, version, headers); see parse_request_line and parse_header_lines.
    """
    if len(raw_head) > max_head_bytes:
        raise HeadError(431, f"the request line and headers are {len(raw_head):,} bytes, more than the "
                             f"{max_head_bytes:,} allowed; send fewer or shorter headers")
    pieces = raw_head.split(b"\n")
    after_last_line_feed = pieces.pop()  # empty for a complete head
    lines = [piece + b"\n" for piece in pieces] + ([after_last_line_feed] if after_last_line_feed else [])
    if lines and _without_line_end(lines[-1]) == b"":
        lines.pop()  # the blank line that ends the head
    if not lines:
        raise HeadError(400, "the request has no request line")
    method, target, version = parse_request_line(lines[0])
    return method, target, version, parse_header_lines(lines[1:], version)


def parse_request_line(raw_line):
    """Return (method, target, version) of `METHOD SP target SP HTTP/x.y`, or raise HeadError.

    The target returned is what to route on: an origin-form target as sent
    (`/path?query`), an absolute-form target reduced to its path and query, or `*`.
    """
    line = _without_line_end(raw_line)
    parts = line.split(b" ")
    if len(parts) != 3 or not all(parts):
        raise HeadError(400, "the request line must be METHOD, one space, target, one space, "
                             f"HTTP version: got {_shown(line)}")
    method, target, version = parts
    if not TOKEN.fullmatch(method):
        raise HeadError(400, f"the method {_shown(method)} is not a valid token")
    if not HTTP_VERSION.fullmatch(version):
        raise HeadError(400, f"{_shown(version)} is not an HTTP version; send HTTP/1.1")
    if version.decode() not in SUPPORTED_VERSIONS:
        raise HeadError(505, f"{version.decode()} is not supported; send HTTP/1.1 or HTTP/1.0")
    return method.decode(), _route_target(target, method), version.decode()


def parse_header_lines(lines, version="HTTP/1.1"):
    """Return [(name, value)] in the order sent, values stripped of optional whitespace.

    `lines` are the raw header lines (with or without their CRLF), without the
    blank line. Names keep their case; values are decoded as Latin-1 (RFC 9110's
    obs-text). HTTP/1.1 requires exactly one Host; HTTP/1.0 allows at most one.
    """
    headers = []
    for raw_line in lines:
        line = _without_line_end(raw_line)
        if line[:1] in (b" ", b"\t"):
            raise HeadError(400, "a header line starts with whitespace (obsolete line folding); "
                                 "send each header on one line")
        name, colon, value = line.partition(b":")
        if not colon:
            raise HeadError(400, f"the header line {_shown(line)} has no colon; send 'Name: value'")
        if name.rstrip(OPTIONAL_WHITESPACE) != name:
            raise HeadError(400, f"the header name {_shown(name)} is followed by whitespace; "
                                 "put the colon right after the name")
        if not TOKEN.fullmatch(name):
            raise HeadError(400, f"the header name {_shown(name)} is not a valid token")
        value = value.strip(OPTIONAL_WHITESPACE)
        if CONTROL_EXCEPT_TAB.search(value):
            raise HeadError(400, f"the header {name.decode()} holds a control character (a bare CR, "
                                 "NUL or similar); only tabs and visible characters are allowed")
        headers.append((name.decode(), value.decode("latin-1")))
    hosts = sum(1 for name, _ in headers if name.lower() == "host")
    if hosts > 1:
        raise HeadError(400, "more than one Host header")
    if hosts == 0 and version == "HTTP/1.1":
        raise HeadError(400, "an HTTP/1.1 request needs a Host header")
    return headers


def _route_target(target, method):
    """The path and query to route on, from an origin-form, absolute-form or asterisk-form target."""
    if not VISIBLE_ASCII.fullmatch(target):
        raise HeadError(400, f"the request target {_shown(target)} has spaces, control or non-ASCII "
                             "characters; percent-encode them")
    text = target.decode("ascii")
    if text == "*":
        if method != b"OPTIONS":
            raise HeadError(400, "the target * is only for OPTIONS")
        return text
    try:
        parts = urlsplit(text)
    except ValueError as exc:
        raise HeadError(400, f"the request target {_shown(target)} cannot be parsed ({exc})") from None
    if text.startswith("/"):
        return text
    if parts.scheme.lower() in ("http", "https") and parts.netloc:
        return (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    raise HeadError(400, f"the request target {_shown(target)} must be a path like /api/ "
                         "or an absolute http:// URL")


def _without_line_end(raw_line):
    """The line without its CRLF (or the bare LF RFC 9112 lets a server accept); other CRs stay."""
    if raw_line.endswith(b"\r\n"):
        return raw_line[:-2]
    if raw_line.endswith(b"\n"):
        return raw_line[:-1]
    return raw_line


def _shown(raw, limit=60):
    """Bytes as a short printable quote for an error message (never echoes control characters)."""
    text = raw[:limit].decode("latin-1")
    return repr(text) + ("..." if len(raw) > limit else "")
