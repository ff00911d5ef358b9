"""Turn a raw request body into an image id and a decoded image (runs in the workers).

Accepted bodies, because real clients send all of them:
- JSON ``{"id": "...", "image": "<base64>"}``;
- the same object double-encoded as a JSON string (the original template client);
- a data-URL prefix on the base64 (``data:image/jpeg;base64,...``);
- a raw JPEG or PNG body (``Content-Type: image/jpeg`` or ``image/png``).
Every failure raises BadRequest with a status and a message a user can act on.
"""

import base64
import binascii
import json
import re
import uuid
from dataclasses import dataclass

import cv2
import numpy as np

from .image_header import ImageHeaderError, read_header
from .messages import IMAGE_MEDIA_TYPES, MAX_IMAGE_ID_CHARS

WHITESPACE = re.compile(rb"\s+")
MAX_JSON_STRUCTURE = 64  # '{', '[' and ',' in a body; a valid one has a handful


class BadRequest(Exception):
    def __init__(self, status, message, image_id=None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.image_id = image_id


@dataclass(frozen=True)
class ImageRequest:
    image_id: str
    image_bytes: bytes


def check_image_id(image_id):
    """Return image_id if it is an acceptable id, else raise BadRequest."""
    if not isinstance(image_id, str):
        raise BadRequest(400, f'"id" must be a string, not {type(image_id).__name__}')
    if len(image_id) > MAX_IMAGE_ID_CHARS:
        raise BadRequest(400, f'"id" is longer than {MAX_IMAGE_ID_CHARS} characters')
    return image_id


def parse_body(body, media_type, query_image_id=None):
    """Return the ImageRequest a body carries, or raise BadRequest."""
    if media_type in IMAGE_MEDIA_TYPES:
        image_id = check_image_id(query_image_id) if query_image_id is not None else str(uuid.uuid4())
        if not body:
            raise BadRequest(400, "the request body is empty; send the image bytes", image_id)
        return ImageRequest(image_id, bytes(body))
    return _parse_json_body(body)


def _parse_json_body(body):
    # A 20 MB body of `[{},{},...]` costs json.loads half a gigabyte. The documented
    # body has one object and two fields, and base64 holds none of these bytes, so
    # count them first, in C, and refuse anything shaped otherwise.
    structure = body.count(b"{") + body.count(b"[") + body.count(b",")
    if structure > MAX_JSON_STRUCTURE:
        raise BadRequest(400, f'the JSON has {structure:,} objects, arrays or commas; expected '
                              '{"id": "...", "image": "<base64>"}')
    try:
        payload = json.loads(body)
        if isinstance(payload, str):  # double-encoded: a JSON string holding the object
            payload = json.loads(payload)
    except UnicodeDecodeError:
        raise BadRequest(400, "the body is not valid UTF-8 JSON") from None
    except ValueError as exc:
        raise BadRequest(400, f"the body is not valid JSON ({exc})") from None
    if not isinstance(payload, dict):
        raise BadRequest(400, 'the JSON body must be an object {"id": ..., "image": ...}')
    if "id" not in payload:
        raise BadRequest(400, 'the JSON body has no "id" field')
    image_id = check_image_id(payload["id"])
    image = payload.get("image")
    if image is None:
        raise BadRequest(400, 'the JSON body has no "image" field (base64 of a JPEG or PNG)', image_id)
    if not isinstance(image, str):
        raise BadRequest(400, f'"image" must be a base64 string, not {type(image).__name__}', image_id)
    return ImageRequest(image_id, decode_base64(image, image_id))


def decode_base64(text, image_id=None):
    """Decode standard base64, tolerating a data-URL prefix, line breaks and missing padding."""
    if text.startswith("data:"):
        prefix, _, text = text.partition(",")
        if not prefix.endswith(";base64"):
            raise BadRequest(400, "the data URL is not base64-encoded (expected ';base64,')", image_id)
    try:
        raw = text.encode("ascii")
    except UnicodeEncodeError:
        raise BadRequest(400, '"image" is not valid base64 (it has non-ASCII characters)', image_id) from None
    try:
        decoded = base64.b64decode(raw, validate=True)
    except binascii.Error:
        # The strict pass failed: allow MIME line breaks and missing padding, nothing else.
        cleaned = WHITESPACE.sub(b"", raw)
        cleaned += b"=" * (-len(cleaned) % 4)
        try:
            decoded = base64.b64decode(cleaned, validate=True)
        except binascii.Error:
            raise BadRequest(400, '"image" is not valid base64', image_id) from None
    if not decoded:
        raise BadRequest(400, '"image" is empty', image_id)
    return decoded


# libjpeg can decode a JPEG at 1/2, 1/4 or 1/8 scale in the DCT domain, several
# times faster than a full decode and in a quarter to a sixty-fourth of the
# memory. YOLO only ever sees 416x416, so a reduced image still has plenty of
# pixels as long as both sides keep a margin over the network input. A smaller
# margin decodes faster but lets the reduced picture drift further from the
# full one (libjpeg's DCT scaling filters differently from a resize); at 2 x
# 416 images below 832 px on a side keep exact parity with a full decode.
MIN_REDUCED_SIDE_PX = 2 * 416
JPEG_REDUCTIONS = ((8, cv2.IMREAD_REDUCED_COLOR_8), (4, cv2.IMREAD_REDUCED_COLOR_4),
                   (2, cv2.IMREAD_REDUCED_COLOR_2))


@dataclass(frozen=True)
class DecodedImage:
    pixels: np.ndarray  # BGR, possibly at 1/2, 1/4 or 1/8 of the original size
    original_size_px: tuple  # (width, height) of the full image, as oriented by the decode


def jpeg_reduction(width_px, height_px):
    """The largest libjpeg scale factor (8, 4, 2) that keeps both sides >= the margin, or 1."""
    for factor, _ in JPEG_REDUCTIONS:
        reduced_w, reduced_h = -(-width_px // factor), -(-height_px // factor)  # libjpeg rounds up
        # OpenCV applies EXIF orientation, so the decode may come back transposed; the
        # original size is then told by the reduced shape, which must differ when transposed.
        tells_orientation = width_px == height_px or reduced_w != reduced_h
        if min(reduced_w, reduced_h) >= MIN_REDUCED_SIDE_PX and tells_orientation:
            return factor
    return 1


def decode_image(request, max_pixels, decode_reduction="auto"):
    """Decode the request's bytes to a DecodedImage, refusing bombs before allocating them.

    With decode_reduction "auto" a large JPEG decodes reduced (see MIN_REDUCED_SIDE_PX);
    everything else, and everything with "off", decodes in full exactly as OpenCV does.
    """
    try:
        header = read_header(request.image_bytes)
    except ImageHeaderError as exc:
        raise BadRequest(400, f"not a usable image: {exc}", request.image_id) from None
    if header.pixels > max_pixels:
        raise BadRequest(
            413, f"the image is {header.width}x{header.height} pixels, more than the "
                 f"{max_pixels:,}-pixel limit; resize it", request.image_id)
    factor = 1
    if decode_reduction == "auto" and header.format == "JPEG":
        factor = jpeg_reduction(header.width, header.height)
    flag = dict(JPEG_REDUCTIONS).get(factor, cv2.IMREAD_COLOR)
    buffer = np.frombuffer(request.image_bytes, np.uint8)
    try:
        image = cv2.imdecode(buffer, flag)
    except cv2.error:
        image = None
    if image is None:
        raise BadRequest(400, f"the {header.format} could not be decoded (corrupt data)", request.image_id)
    return DecodedImage(image, _original_size_px(header, image, factor))


def _original_size_px(header, image, factor):
    """The header's (width, height), transposed if EXIF orientation transposed the decode."""
    decoded_h, decoded_w = image.shape[:2]
    if factor == 1:
        return decoded_w, decoded_h
    if (decoded_w, decoded_h) == (-(-header.width // factor), -(-header.height // factor)):
        return header.width, header.height
    return header.height, header.width
