"""From one task's header and body to the images it puts into the forward pass, each with its options.

A task carries one image or, for a multi-image body, several; every image is
decoded and brought to the network's input size here, one at a time, so a
request of many large images never holds them all at full size (at the
input size of the model the task asked for). Only an image whose answer is
annotated keeps its full pixels. A task runs through one model, chosen at
its top level (a path, the query or the body's top-level fields). The deadline is
checked before each image: once nobody waits for the answer, the worker
stops spending time on it.
"""

import time
from dataclasses import dataclass, field
from typing import Any, List, Optional, Tuple, Union

from ..refusals import Refusal, bad_request, not_acceptable, past_deadline
from . import detection_options
from .annotation import output_size_px
from .failures import refusal_boundary
from .formats import WORKER_FORMATS
from .image_decoding import DecodeBudget, decode_image


@dataclass
class ImageJob:
    """One image on its way through a batch."""

    image_id: str
    options: detection_options.DetectionOptions
    network_pixels: Any  # BGR at the network's input size
    original_size_px: Tuple[int, int]  # (width, height) of the uploaded image, boxes are in these
    full_pixels: Any = None  # the decoded image, kept only for an annotated answer
    detections: Optional[list] = None  # set once the forward pass has run


@dataclass
class TaskJob:
    """One task's share of a batch: its images (or what refused each), in the body's order."""

    header: Any  # protocol.TaskHeader
    queue_wait_s: float
    entries: List[Union[ImageJob, Refusal]]
    several: bool  # a multi-image body, answered per image
    model: str  # the name of the model its images run through
    labels: Tuple[str, ...]  # that model's labels
    format_state: dict = field(default_factory=dict)  # ParsedRequest.format_state, for the answer

    def image_jobs(self):
        return [entry for entry in self.entries if isinstance(entry, ImageJob)]


class TaskPreparation:
    def __init__(self, config, detectors):
        """detectors: {model name: Detector} of every model this worker serves."""
        self.config = config
        self.detectors = detectors
        self.labels_by_model = {name: tuple(detector.labels) for name, detector in detectors.items()}
        self.defaults = detection_options.server_defaults(config)

    def prepare(self, header, body, queue_wait_s):
        """The TaskJob of one task, or raise the Refusal the whole task gets."""
        request = WORKER_FORMATS[header.wire_format].parse(body, header, self.config)
        task_image_id = None if request.several else request.entries[0].image_id
        with refusal_boundary(header.request_id, task_image_id, "reading its options"):
            # Lowest first: the query, a form's text fields, the model a route names (its path's).
            route_model = {"model": header.model} if header.model is not None else {}
            text_fields = {**header.query_options, **request.text_option_fields, **route_model}
            options = detection_options.resolve(self.defaults, text_fields, self.labels_by_model, from_query=True)
            options = detection_options.resolve(options, request.option_fields, self.labels_by_model)
        if request.several and header.output_format != "json":
            raise not_acceptable("an annotated image answers one image per request; send one image, "
                                 "or ask for JSON (Accept: application/json) to get several answers")
        budget = DecodeBudget()
        entries = []
        for entry in request.entries:
            if time.monotonic() > header.deadline_at_s:  # its client has had its 504
                raise past_deadline(task_image_id)
            if isinstance(entry, Refusal):
                entries.append(entry)
                continue
            try:
                entries.append(self._prepare_image(header, entry, options, budget))
            except Refusal as refusal:
                if not request.several:
                    raise
                entries.append(refusal)  # one entry's failure is that entry's answer
        return TaskJob(header, queue_wait_s, entries, request.several, options.model,
                       self.labels_by_model[options.model], request.format_state)

    def _prepare_image(self, header, request, base_options, budget):
        """The ImageJob of one image, or raise its Refusal; never lets another exception out."""
        with refusal_boundary(header.request_id, request.image_id, f"reading image {request.image_id!r}"):
            if "model" in request.option_fields and request.option_fields["model"] != base_options.model:
                raise bad_request('"model" is chosen once per request, at its top level, not per image')
            options = detection_options.resolve(base_options, request.option_fields, self.labels_by_model)
            decoded = decode_image(request, self.config.max_pixels, self.config.decode_reduction, budget)
            annotated = header.output_format != "json"
            drawn = self._pixels_to_draw_on(request, decoded, options, budget) if annotated else None
            network_pixels = self.detectors[options.model].network_input(decoded.pixels)
            return ImageJob(request.image_id, options, network_pixels, decoded.original_size_px, drawn)

    def _pixels_to_draw_on(self, request, decoded, options, budget):
        """The picture an annotated answer is drawn on: never upscaled from a reduced decode.

        The detections come from the same decode as a JSON answer's, so both agree;
        only when that decode is smaller than the answer is the image decoded again, and
        that second decode is priced from the request's budget like the first.
        """
        out_w, out_h = output_size_px(decoded.original_size_px, options.max_side_px)
        if max(decoded.pixels.shape[:2]) >= max(out_w, out_h):
            return decoded.pixels
        return decode_image(request, self.config.max_pixels, "off", budget, full_redecode=True).pixels
