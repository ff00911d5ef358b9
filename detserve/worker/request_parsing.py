"""Turn a raw request body into an image id and the image's encoded bytes (runs in the workers).

Accepted bodies, because real clients send all of them:
- JSON ``{"id": "...", "image": "<base64>"}``;
- the same object double-encoded as a JSON string (as the first clients of this API sent it);
- a data-URL prefix on the base64 (``data:image/jpeg;base64,...``);
- a raw JPEG or PNG body (``Content-Type: image/jpeg`` or ``image/png``);
- several images, ``{"images": [{"id": ..., "image": ...}, ...]}``;
- a multipart/form-data upload (``curl -F image=@photo.jpg``): the image in its
  file part, ``id`` and the options as text fields (worker/multipart reads it).
Option fields (detection_options) travel beside ``id`` and ``image``, unvalidated.
Every failure raises a Refusal with a status and a message a user can act on;
in a multi-image body a failure of one entry is that entry's, not the request's.
"""

import base64
import binascii
import json
import re
import uuid

from ..protocol import DETECTION_OPTION_NAMES, IMAGE_MEDIA_TYPES, MAX_IMAGE_ID_CHARS
from ..refusals import Refusal, bad_request, too_large
from .detection_options import option_fields
from .multipart import parse_form
from .parsed_request import ImageRequest, ParsedRequest

WHITESPACE = re.compile(rb"\s+")
# '{', '[' and ',' allowed per image object: id, image and every option, with "classes"
# as a list of all 80 labels, take about 90. A body may hold one object per image plus
# the top level; anything shaped otherwise is refused before json.loads sees it.
JSON_STRUCTURE_PER_OBJECT = 96


def check_image_id(image_id):
    """Return image_id if it is an acceptable id, else raise Refusal."""
    if not isinstance(image_id, str):
        raise bad_request(f'"id" must be a string, not {type(image_id).__name__}')
    if len(image_id) > MAX_IMAGE_ID_CHARS:
        raise bad_request(f'"id" is longer than {MAX_IMAGE_ID_CHARS} characters')
    return image_id


def parse_body(body, media_type, query_image_id=None, max_images=1):
    """The ParsedRequest a body carries, or raise Refusal."""
    if media_type in IMAGE_MEDIA_TYPES:
        image_id = check_image_id(query_image_id) if query_image_id is not None else str(uuid.uuid4())
        if not body:
            raise bad_request("the request body is empty; send the image bytes", image_id)
        return _one(ImageRequest(image_id, bytes(body)))
    return _parse_json_body(body, max_images)


def parse_form_body(body, content_type, query_image_id=None):
    """The ParsedRequest of a multipart/form-data upload, or raise Refusal.

    Its image is answered exactly as the same image sent raw: the form's
    ``id`` field, else ?id=, else a new UUID; its option fields are text, as
    the query's are, and win over the query's.
    """
    form = parse_form(body, content_type)
    image_id = form.fields.get("id") or query_image_id  # a blank field is no id, as a blank ?id= is
    image_id = check_image_id(image_id) if image_id is not None else str(uuid.uuid4())
    image = form.image()
    text_fields = {name: form.fields[name] for name in DETECTION_OPTION_NAMES if name in form.fields}
    return ParsedRequest((ImageRequest(image_id, image.content),), {}, several=False, text_option_fields=text_fields)


def _one(request):
    return ParsedRequest((request,), request.option_fields, several=False)


def _parse_json_body(body, max_images):
    max_structure = JSON_STRUCTURE_PER_OBJECT * (1 + max_images)
    payload = _load_json(body, max_structure)
    if isinstance(payload, str):  # double-encoded: a JSON string holding the object
        payload = _load_json(payload, max_structure)
    if not isinstance(payload, dict):
        raise bad_request('the JSON body must be an object {"id": ..., "image": ...}')
    if "images" in payload:
        return _parse_images(payload, max_images)
    return _one(_parse_image_object(payload))


def _parse_images(payload, max_images):
    images = payload["images"]
    if "image" in payload:
        raise bad_request('the JSON body has both "image" and "images"; send one image or a list of them')
    if not isinstance(images, list) or not images:
        raise bad_request('"images" must be a non-empty list of {"id": ..., "image": ...} objects')
    if len(images) > max_images:
        raise too_large(f'"images" has {len(images)} entries, more than the {max_images} allowed '
                           '(--max-images); split the request')
    entries = []
    for entry in images:
        try:
            if not isinstance(entry, dict):
                raise bad_request('each entry of "images" must be an object {"id": ..., "image": ...}')
            entries.append(_parse_image_object(entry))
        except Refusal as refusal:
            entries.append(refusal)
    return ParsedRequest(tuple(entries), option_fields(payload), several=True)


def _parse_image_object(payload):
    if "id" not in payload:
        raise bad_request('the JSON body has no "id" field')
    image_id = check_image_id(payload["id"])
    image = payload.get("image")
    if image is None:
        raise bad_request('the JSON body has no "image" field (base64 of a JPEG or PNG)', image_id)
    if not isinstance(image, str):
        raise bad_request(f'"image" must be a base64 string, not {type(image).__name__}', image_id)
    return ImageRequest(image_id, decode_base64(image, image_id), option_fields(payload))


def _load_json(text, max_structure):
    """json.loads of body bytes or of a decoded inner string, refusing any other shape first."""
    # A 20 MB body of `[{},{},...]` costs json.loads half a gigabyte. The documented
    # bodies have one object per image and a few fields each, and base64 holds none of
    # these characters, so count them first, in C, and refuse anything shaped otherwise. A double-encoded
    # body is counted again once decoded: escapes such as \u005b hide its structure
    # from the first count.
    marks = (b"{", b"[", b",") if isinstance(text, bytes) else ("{", "[", ",")
    structure = sum(text.count(mark) for mark in marks)
    if structure > max_structure:
        raise bad_request(f'the JSON has {structure:,} objects, arrays or commas, more than '
                           f'{max_structure:,}; expected {{"id": "...", "image": "<base64>"}} or '
                           '{"images": [...]}')
    try:
        return json.loads(text)
    except UnicodeDecodeError:
        raise bad_request("the body is not valid UTF-8 JSON") from None
    except ValueError as exc:
        raise bad_request(f"the body is not valid JSON ({exc})") from None
    except RecursionError:
        raise bad_request("the JSON is nested too deeply") from None


def decode_base64(text, image_id=None):
    """Decode standard base64, tolerating a data-URL prefix, line breaks and missing padding."""
    if text.startswith("data:"):
        prefix, _, text = text.partition(",")
        if not prefix.endswith(";base64"):
            raise bad_request("the data URL is not base64-encoded (expected ';base64,')", image_id)
    try:
        raw = text.encode("ascii")
    except UnicodeEncodeError:
        raise bad_request('"image" is not valid base64 (it has non-ASCII characters)', image_id) from None
    try:
        decoded = base64.b64decode(raw, validate=True)
    except binascii.Error:
        # The strict pass failed: allow MIME line breaks and missing padding, nothing else.
        cleaned = WHITESPACE.sub(b"", raw)
        cleaned += b"=" * (-len(cleaned) % 4)
        try:
            decoded = base64.b64decode(cleaned, validate=True)
        except binascii.Error:
            raise bad_request('"image" is not valid base64', image_id) from None
    if not decoded:
        raise bad_request('"image" is empty', image_id)
    return decoded
