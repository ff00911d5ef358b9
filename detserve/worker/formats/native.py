"""detserve's own API: JSON (one image or several), a raw image or an upload form in; JSON or an annotated JPEG out."""

from ... import format_fields
from ...protocol import FORM_MEDIA_TYPE
from .. import answers
from ..request_parsing import parse_body, parse_form_body

NAME = "native"


def parse(body, header, config):
    if header.media_type == FORM_MEDIA_TYPE:
        return parse_form_body(body, header.format_fields[format_fields.CONTENT_TYPE], header.query_image_id)
    return parse_body(body, header.media_type, header.query_image_id, config.max_images)


def answer(task, timings):
    if task.several:
        return answers.several_answer(task, timings)
    return answers.single_answer(task, task.image_jobs()[0], timings)
