"""Parse a multipart/form-data body into its text fields and file parts, strictly, in bounded time (runs in the workers).

The body is the request's bytes as the front end read them; the Content-Type
header value carries the boundary. The form's parts are split by a scan with
``bytes.find`` for the delimiter (CRLF, "--", the boundary), per RFC 2046 and
RFC 7578: each search starts where the last one stopped and a part's header
block is searched only within its size limit, so the cost is one pass over
the body whatever it holds, and the image part is copied once, into its own
``bytes``. The standard library's ``email`` parser was measured against this
scan and not used: it turns the bytes into a str, splits that into lines and
joins them back, so on a 19.5 MiB upload (the front end's limit is 20 MB) it
took 994 ms and allocated 207 MiB at its peak, 10.6 times the body, where the
scan took 8 ms and 19.5 MiB, the one copy of the image (``python -m
studies.multipart_parsers``, 2-core machine, 2026-12).

Strict, because a detector has no use for the rest of MIME: at most
MAX_PARTS parts, each with a header block of at most MAX_PART_HEADER_BYTES
and a ``Content-Disposition: form-data`` with a non-empty name, each name
once, text fields of at most MAX_FIELD_BYTES of UTF-8, no nested multipart,
no transfer encoding, CRLF line breaks, a closing boundary. Anything else is a
Refusal(400) that names the problem.

A part is a file part when it has a filename or is named ``image`` or
``file``; the others are text fields. A file part's filename and
Content-Type are the client's claims and are never trusted: the image's bytes
are sniffed by the image header reader, as for every other body.
"""

import re
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

from ..protocol import FORM_MEDIA_TYPE
from ..refusals import bad_request, unsupported_media_type

# An image and a handful of option fields fill a detection form; real clients send
# at most five parts. 32 leaves room for HTML forms with extra inputs, and refusing
# the 33rd part means 10,000 empty parts cost no more than 32.
MAX_PARTS = 32
# Browsers and curl write one or two header lines per part, under 300 bytes; a long
# filename is the only thing that grows them.
MAX_PART_HEADER_BYTES = 8 * 1024
# The longest field an option needs is "classes" with all 80 labels (under 1 KiB) or
# an id of 256 characters (1 KiB of UTF-8 at most).
MAX_FIELD_BYTES = 4 * 1024
# Tried in this order for the image; after them, the first part with a filename.
IMAGE_PART_NAMES = ("image", "file")
IDENTITY_TRANSFER_ENCODINGS = ("7bit", "8bit", "binary")
MAX_SHOWN_CHARS = 40

# RFC 2046: 1 to 70 of these characters, the last not a space.
BOUNDARY = re.compile(r"[0-9A-Za-z'()+_,\-./:=? ]{0,69}[0-9A-Za-z'()+_,\-./:=?]")
# One "; name=value" of a header value (RFC 2045), the value a token or a quoted string.
# Clients leave some values unquoted that RFC 2045 would quote, so an unquoted value
# is anything up to the next ";" or space.
PARAMETER = re.compile(r'[ \t]*;[ \t]*([!#$%&\'*+\-.^_`|~0-9A-Za-z]+)[ \t]*=[ \t]*'
                       r'(?:"((?:[^"\\\r\n]|\\[^\r\n])*)"|([^;" \t\r\n]+))[ \t]*')
QUOTED_PAIR = re.compile(r"\\(.)")
PADDING_THEN_CRLF = re.compile(rb"[ \t]*\r\n")  # RFC 2046's transport-padding after a delimiter


@dataclass(frozen=True)
class FilePart:
    name: str
    filename: Optional[str]  # the client's claim, for messages only; None when the part had none
    content: bytes


@dataclass(frozen=True)
class MultipartForm:
    fields: Dict[str, str]  # text field name -> its UTF-8 text
    files: Tuple[FilePart, ...]  # in the body's order

    def image(self):
        """The part holding the image: named image, else file, else the first with a filename."""
        named = {part.name: part for part in self.files}
        chosen = next((named[name] for name in IMAGE_PART_NAMES if name in named), None)
        if chosen is None and self.files:
            chosen = self.files[0]  # every other file part has a filename
        if chosen is None:
            raise bad_request('the form has no image; send it as a file part named "image" '
                               "(curl -F image=@photo.jpg)")
        if not chosen.content:
            raise bad_request(f"the form's image part {shown(chosen.name)} is empty")
        return chosen


def parse_form(body, content_type):
    """The MultipartForm of a multipart/form-data body, or raise Refusal."""
    boundary = form_boundary(content_type)
    return _form_of(body, _part_spans(body, boundary))


def form_boundary(content_type):
    """The boundary (bytes) of a multipart/form-data Content-Type header value, or raise Refusal."""
    media_type, parameters = header_parameters(content_type, "Content-Type")
    if media_type != FORM_MEDIA_TYPE:
        raise unsupported_media_type(f"the body is {shown(media_type)}, not {FORM_MEDIA_TYPE}")
    boundary = parameters.get("boundary")
    if boundary is None:
        raise bad_request(f"Content-Type {FORM_MEDIA_TYPE} has no boundary parameter")
    if not BOUNDARY.fullmatch(boundary):
        raise bad_request(f"the multipart boundary {shown(boundary)} is not 1 to 70 of the characters "
                           "RFC 2046 allows (letters, digits, '()+_,-./:=? and a space not last)")
    return boundary.encode("ascii")


def header_parameters(value, header_name):
    """(the lower-cased value before the first ';', {parameter name: value}) of a header value."""
    kind, semicolon, rest = value.partition(";")
    text, parameters, pos = (semicolon + rest).rstrip("; \t"), {}, 0
    while pos < len(text):
        match = PARAMETER.match(text, pos)
        if match is None:
            raise bad_request(f"{header_name} has a malformed parameter at {shown(text[pos:])}")
        name = match[1].lower()
        if name in parameters:
            raise bad_request(f"{header_name} has two {shown(name)} parameters")
        parameters[name] = QUOTED_PAIR.sub(r"\1", match[2]) if match[2] is not None else match[3]
        pos = match.end()
    return kind.strip().lower(), parameters


def shown(text):
    """A client's text in a message: quoted, and cut short if long."""
    return repr(text) if len(text) <= MAX_SHOWN_CHARS else repr(text[:MAX_SHOWN_CHARS - 3] + "...")


# -- splitting the body --------------------------------------------------------------------------------
def _part_spans(body, boundary):
    """[(part number from 1, header text, content start, content end)] of each part, in order."""
    delimiter = b"\r\n--" + boundary
    pos, spans = _first_delimiter_end(body, boundary, delimiter), []
    while not body.startswith(b"--", pos):  # "--" after a delimiter closes the form
        number = len(spans) + 1
        pos = _after_padding(body, pos, boundary)
        if number > MAX_PARTS:
            raise bad_request(f"the form has more than {MAX_PARTS} parts")
        headers, content_start = _header_block(body, pos, number)
        content_end = body.find(delimiter, content_start)
        if content_end < 0:
            raise bad_request(f"the form ends inside part {number}: its closing boundary "
                               f"{shown('--' + boundary.decode() + '--')} is missing")
        spans.append((number, headers, content_start, content_end))
        pos = content_end + len(delimiter)
    return spans


def _first_delimiter_end(body, boundary, delimiter):
    """Where the first delimiter ends; a preamble before it is skipped, as RFC 2046 says."""
    if body.startswith(b"--" + boundary):
        return len(boundary) + 2
    found = body.find(delimiter)
    if found < 0:
        raise bad_request(f"the body never contains the boundary {shown(boundary.decode())} "
                           "its Content-Type gives")
    return found + len(delimiter)


def _after_padding(body, pos, boundary):
    """Where a part's headers start: after the delimiter's optional spaces and its CRLF."""
    match = PADDING_THEN_CRLF.match(body, pos)
    if match is not None:
        return match.end()
    if pos >= len(body):
        raise bad_request(f"the form has no closing boundary {shown('--' + boundary.decode() + '--')}")
    raise bad_request("a multipart boundary is followed by something other than a CRLF line break "
                       "(the body's line breaks must be CRLF, and no part may contain the boundary)")


def _header_block(body, pos, number):
    """(the part's header lines as text, where its content starts), within the header limit."""
    if body.startswith(b"\r\n", pos):
        return "", pos + 2
    end = body.find(b"\r\n\r\n", pos, pos + MAX_PART_HEADER_BYTES + 4)
    if end < 0:
        if len(body) - pos > MAX_PART_HEADER_BYTES:
            raise bad_request(f"part {number}'s headers are over {MAX_PART_HEADER_BYTES // 1024} KiB, "
                               "or do not end with a blank line")
        raise bad_request(f"part {number}'s headers do not end with a blank line (CRLF CRLF)")
    return body[pos:end].decode("utf-8", "replace"), end + 4


# -- reading the parts ---------------------------------------------------------------------------------
def _form_of(body, spans):
    fields, files = {}, []
    for number, header_text, start, end in spans:
        name, filename = _part_name(_part_headers(header_text, number), number)
        if name in fields or any(part.name == name for part in files):
            raise bad_request(f"the form has two parts named {shown(name)}; send each field once "
                               "and one image per request")
        if filename is not None or name in IMAGE_PART_NAMES:
            files.append(FilePart(name, filename, body[start:end]))
        else:
            fields[name] = _field_text(body, start, end, name)
    return MultipartForm(fields, tuple(files))


def _part_headers(header_text, number):
    """{lower-cased header name: value} of one part's header lines."""
    headers = {}
    for line in header_text.split("\r\n") if header_text else ():
        name, colon, value = line.partition(":")
        if not colon or not name or name != name.strip() or "\r" in line or "\n" in line:
            raise bad_request(f"part {number} has a malformed header line {shown(line)} "
                               "(expected 'Name: value' on one CRLF-ended line)")
        key = name.lower()
        if key in headers:
            raise bad_request(f"part {number} has two {name} headers")
        headers[key] = value.strip()
    return headers


def _part_name(headers, number):
    """(name, filename or None) of a part, after refusing what this parser does not take."""
    media_type = headers.get("content-type", "").partition(";")[0].strip().lower()
    if media_type.startswith("multipart/"):
        raise bad_request(f"part {number} is itself multipart ({shown(media_type)}); nested multipart "
                           "is not accepted, send the image as a part of its own")
    encoding = headers.get("content-transfer-encoding", "binary").lower()
    if encoding not in IDENTITY_TRANSFER_ENCODINGS:
        raise bad_request(f"part {number} has Content-Transfer-Encoding {shown(encoding)}; send the bytes "
                           "as they are")
    if "content-disposition" not in headers:
        raise bad_request(f"part {number} has no Content-Disposition header, so no name")
    kind, parameters = header_parameters(headers["content-disposition"], f"part {number}'s Content-Disposition")
    if kind != "form-data":
        raise bad_request(f"part {number}'s Content-Disposition is {shown(kind)}, not form-data")
    name = parameters.get("name")
    if not name:
        raise bad_request(f"part {number} has no name (Content-Disposition: form-data; name=\"...\")")
    filename = parameters.get("filename", parameters.get("filename*"))
    return name, filename


def _field_text(body, start, end, name):
    if end - start > MAX_FIELD_BYTES:
        raise bad_request(f"the form field {shown(name)} is over {MAX_FIELD_BYTES // 1024} KiB; "
                           'send the image as a file part (named "image")')
    try:
        return body[start:end].decode("utf-8")
    except UnicodeDecodeError:
        raise bad_request(f"the form field {shown(name)} is not UTF-8 text") from None
