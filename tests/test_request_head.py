"""The strict request-head parser (detserve/front/request_head.py): each malformed head and its status,
and valid heads parsed to what they say."""

import pytest

from detserve.front.request_head import MAX_HEAD_BYTES, HeadError, parse_head, parse_header_lines, parse_request_line

GOOD_LINE = b"GET /healthz HTTP/1.1\r\n"
HOST = b"Host: t\r\n"
END = b"\r\n"

MALFORMED_HEADS = [
    # (name, raw head, status, words the message must hold)
    ("space before colon", GOOD_LINE + HOST + b"Transfer-Encoding : chunked\r\n" + END, 400, "whitespace"),
    ("space before colon in Host", GOOD_LINE + b"Host : t\r\n" + END, 400, "whitespace"),
    ("tab before colon", GOOD_LINE + HOST + b"X-A\t: 1\r\n" + END, 400, "whitespace"),
    ("line without colon", GOOD_LINE + HOST + b"No-Colon-Here\r\nX-Request-ID: a\r\n" + END, 400, "no colon"),
    ("obs-fold first line", GOOD_LINE + b" Host: t\r\n" + END, 400, "folding"),
    ("obs-fold continuation", GOOD_LINE + HOST + b"X-A: 1\r\n\t2\r\n" + END, 400, "folding"),
    ("bare CR in value", GOOD_LINE + HOST + b"X-Note: a\rb\r\n" + END, 400, "control"),
    ("bare CR in name", GOOD_LINE + HOST + b"X\rA: 1\r\n" + END, 400, "token"),
    ("NUL in value", GOOD_LINE + HOST + b"X-Note: a\x00b\r\n" + END, 400, "control"),
    ("escape in value", GOOD_LINE + HOST + b"X-Note: \x1b[31m\r\n" + END, 400, "control"),
    ("empty name", GOOD_LINE + HOST + b": value\r\n" + END, 400, "token"),
    ("name with a slash", GOOD_LINE + HOST + b"X/A: 1\r\n" + END, 400, "token"),
    ("HTTP/1.1 without Host", GOOD_LINE + END, 400, "Host"),
    ("two Hosts", GOOD_LINE + HOST + HOST + END, 400, "more than one Host"),
    ("two Hosts in HTTP/1.0", b"GET / HTTP/1.0\r\n" + HOST + HOST + END, 400, "more than one Host"),
    ("NBSP separator", b"GET\xa0/healthz HTTP/1.1\r\n" + HOST + END, 400, "one space"),
    ("NEL separator", b"GET /healthz\x85HTTP/1.1\r\n" + HOST + END, 400, "one space"),
    ("tab separator", b"GET\t/healthz HTTP/1.1\r\n" + HOST + END, 400, "one space"),
    ("two spaces", b"GET  /healthz HTTP/1.1\r\n" + HOST + END, 400, "one space"),
    ("leading space", b" GET /healthz HTTP/1.1\r\n" + HOST + END, 400, "one space"),
    ("trailing space", b"GET /healthz HTTP/1.1 \r\n" + HOST + END, 400, "one space"),
    ("no version (HTTP/0.9)", b"GET /healthz\r\n" + END, 400, "one space"),
    ("method not a token", b"G(T /healthz HTTP/1.1\r\n" + HOST + END, 400, "method"),
    ("bare CR in request line", b"GET /a\rb HTTP/1.1\r\n" + HOST + END, 400, "target"),
    ("non-ASCII target", b"GET /caf\xe9 HTTP/1.1\r\n" + HOST + END, 400, "percent-encode"),
    ("target urlsplit rejects", b"GET http://[/ HTTP/1.1\r\n" + HOST + END, 400, "cannot be parsed"),
    ("relative target", b"GET healthz HTTP/1.1\r\n" + HOST + END, 400, "must be a path"),
    ("authority-form target", b"GET example.com:80 HTTP/1.1\r\n" + HOST + END, 400, "must be a path"),
    ("other scheme", b"GET ftp://h/x HTTP/1.1\r\n" + HOST + END, 400, "must be a path"),
    ("asterisk for GET", b"GET * HTTP/1.1\r\n" + HOST + END, 400, "only for OPTIONS"),
    ("lowercase version", b"GET / http/1.1\r\n" + HOST + END, 400, "not an HTTP version"),
    ("version with letters", b"GET / HTTP/1.x\r\n" + HOST + END, 400, "not an HTTP version"),
    ("HTTP/2.0", b"GET / HTTP/2.0\r\n" + HOST + END, 505, "not supported"),
    ("HTTP/0.9 spelled out", b"GET / HTTP/0.9\r\n" + HOST + END, 505, "not supported"),
    ("empty head", END, 400, "no request line"),
    ("blank line inside the headers", GOOD_LINE + HOST + END + b"X-A: 1\r\n" + END, 400, "no colon"),
    ("over the byte bound", GOOD_LINE + HOST + b"X-Filler: " + b"a" * MAX_HEAD_BYTES + b"\r\n" + END, 431,
     "bytes, more than"),
]


@pytest.mark.parametrize("raw_head, status, words", [case[1:] for case in MALFORMED_HEADS],
                         ids=[case[0] for case in MALFORMED_HEADS])
def test_a_malformed_head_is_refused_with_its_status(raw_head, status, words):
    with pytest.raises(HeadError) as refused:
        parse_head(raw_head)
    assert refused.value.status == status
    assert words in refused.value.message
    assert "\r" not in refused.value.message and "\x00" not in refused.value.message


VALID_HEADS = [
    # (name, raw head, (method, target, version, headers))
    ("origin form", b"POST /api/?id=a%20b HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\n",
     ("POST", "/api/?id=a%20b", "HTTP/1.1", [("Host", "t"), ("Content-Length", "3")])),
    ("absolute form routes on its path",
     b"GET http://example.com:5050/readyz?x=1 HTTP/1.1\r\nHost: example.com\r\n\r\n",
     ("GET", "/readyz?x=1", "HTTP/1.1", [("Host", "example.com")])),
    ("absolute form without a path", b"GET https://example.com HTTP/1.1\r\nHost: example.com\r\n\r\n",
     ("GET", "/", "HTTP/1.1", [("Host", "example.com")])),
    ("asterisk for OPTIONS", b"OPTIONS * HTTP/1.1\r\nHost: t\r\n\r\n", ("OPTIONS", "*", "HTTP/1.1", [("Host", "t")])),
    ("HTTP/1.0 without Host", b"GET / HTTP/1.0\r\n\r\n", ("GET", "/", "HTTP/1.0", [])),
    ("optional whitespace stripped, inner kept",
     b"GET / HTTP/1.1\r\nHost:t\r\nX-A: \t a \t b \t\r\nX-Empty:\r\n\r\n",
     ("GET", "/", "HTTP/1.1", [("Host", "t"), ("X-A", "a \t b"), ("X-Empty", "")])),
    ("bare LF line ends", b"GET / HTTP/1.1\nHost: t\n\n", ("GET", "/", "HTTP/1.1", [("Host", "t")])),
    ("no blank line given", b"GET / HTTP/1.1\r\nHost: t", ("GET", "/", "HTTP/1.1", [("Host", "t")])),
    ("obs-text value as Latin-1", b"GET / HTTP/1.1\r\nHost: t\r\nX-Name: caf\xe9\r\n\r\n",
     ("GET", "/", "HTTP/1.1", [("Host", "t"), ("X-Name", "caf\xe9")])),
    ("repeated names kept in order", b"GET / HTTP/1.1\r\nhost: t\r\nX-A: 1\r\nx-a: 2\r\n\r\n",
     ("GET", "/", "HTTP/1.1", [("host", "t"), ("X-A", "1"), ("x-a", "2")])),
    ("token punctuation in a name and method", b"M-1.x! / HTTP/1.1\r\nHost: t\r\nX_#$%&'*+.^`|~: v\r\n\r\n",
     ("M-1.x!", "/", "HTTP/1.1", [("Host", "t"), ("X_#$%&'*+.^`|~", "v")])),
    ("exactly at the byte bound", b"GET / HTTP/1.1\r\nHost: t\r\nX-F: " + b"a" * (MAX_HEAD_BYTES - 34) + b"\r\n\r\n",
     ("GET", "/", "HTTP/1.1", [("Host", "t"), ("X-F", "a" * (MAX_HEAD_BYTES - 34))])),
]


@pytest.mark.parametrize("raw_head, parsed", [case[1:] for case in VALID_HEADS], ids=[case[0] for case in VALID_HEADS])
def test_a_valid_head_parses_to_what_it_says(raw_head, parsed):
    assert parse_head(raw_head) == parsed


def test_the_byte_bound_is_inclusive():
    head = VALID_HEADS[-1][1]
    assert len(head) == MAX_HEAD_BYTES
    with pytest.raises(HeadError) as refused:
        parse_head(head + b"a")
    assert refused.value.status == 431


def test_the_line_functions_take_lines_with_or_without_their_crlf():
    expected = ("GET", "/x", "HTTP/1.0")
    assert parse_request_line(b"GET /x HTTP/1.0") == parse_request_line(b"GET /x HTTP/1.0\r\n") == expected
    assert parse_header_lines([b"Host: a\r\n", b"X: 1"]) == [("Host", "a"), ("X", "1")]
    assert parse_header_lines([], version="HTTP/1.0") == []
    with pytest.raises(HeadError):
        parse_header_lines([b"X: 1"])  # HTTP/1.1 is the default, and needs Host
