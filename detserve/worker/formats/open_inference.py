"""The Open Inference Protocol's infer route: N images of one IMAGE tensor in, detection tensors out.

The body's framing and tensors are worker/open_inference_tensors'; this
module fits them to the task: each IMAGE element is one image of the batch,
the request's id and the outputs it names travel in format_state to the
answer. A tensor answer has no place for one image's error, so an element
that cannot be read fails the whole request, naming the element.
"""

from ... import format_fields
from ...open_inference_signature import IMAGE_INPUT
from ...protocol import Result
from ...refusals import Refusal
from ..open_inference_tensors import build_answer, parse_infer_request
from ..parsed_request import ImageRequest, ParsedRequest

NAME = "open_inference"


def element_id(index):
    """The image id of IMAGE's element index: what logs and a failure name."""
    return f"{IMAGE_INPUT.name}[{index}]"


def parse(body, header, config):
    header_length = header.format_fields.get(format_fields.INFERENCE_HEADER_LENGTH)
    request = parse_infer_request(body, None if header_length is None else int(header_length), config.max_images)
    entries = tuple(ImageRequest(element_id(index), image) for index, image in enumerate(request.images))
    # several: each element is read on its own, so that answer() can name the one that failed.
    return ParsedRequest(entries, request.option_fields, several=True,
                         format_state={"request_id": request.request_id, "outputs": request.outputs})


def answer(task, timings):
    failed = next((entry for entry in task.entries if isinstance(entry, Refusal)), None)
    if failed is not None:
        raise Refusal(failed.status, f"{IMAGE_INPUT.name} element {task.entries.index(failed)}: {failed.message}",
                      failed.reason, failed.image_id, failed.headers, failed.close)
    jobs = task.image_jobs()
    built = build_answer([job.detections for job in jobs], task.labels, task.format_state["outputs"],
                         task.header.model, task.format_state["request_id"])
    labels = tuple(detection.label for job in jobs for detection in job.detections)
    return Result(task.header.task_id, 200, built.body, labels=labels, content_type=built.content_type,
                  headers=built.headers(), images_run=len(jobs), **timings)
