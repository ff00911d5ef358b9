"""detserve's own API: JSON (one image or several) or a raw image body in; JSON or an annotated JPEG out."""

from .. import answers
from ..request_parsing import parse_body

NAME = "native"


def parse(body, header, max_images):
    return parse_body(body, header.media_type, header.query_image_id, max_images)


def answer(task, timings):
    if task.several:
        return answers.several_answer(task, timings)
    return answers.single_answer(task, task.image_jobs()[0], timings)
