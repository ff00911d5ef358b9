"""From one task's header and body to the images it puts into the forward pass, each with its options.

A task carries one image or, for a multi-image body, several; every image is
decoded and brought to the network's input size here, one at a time, so a
request of many large images never holds them all at full size. Only an
image whose answer is annotated keeps its full pixels.
"""

import logging
from dataclasses import dataclass
from typing import Any, List, Optional, Tuple, Union

from ..protocol import Refusal, internal_error
from . import detection_options
from .annotation import output_size_px
from .detector import network_input
from .image_decoding import DecodeBudget, decode_image
from .request_parsing import MultiImageRequest, parse_body

log = logging.getLogger("detserve.worker")


def out_of_memory(image_id=None):
    return Refusal(413, "the request needs more memory than this worker has; send a smaller image",
                   image_id=image_id)


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
    several: bool  # a multi-image body, answered {"results": [...]}

    def image_jobs(self):
        return [entry for entry in self.entries if isinstance(entry, ImageJob)]


class TaskPreparation:
    def __init__(self, config, labels):
        self.config = config
        self.labels = labels
        self.defaults = detection_options.server_defaults(config)

    def prepare(self, header, body, queue_wait_s):
        """The TaskJob of one task, or raise the Refusal the whole task gets."""
        request = parse_body(body, header.media_type, header.query_image_id, self.config.max_images)
        several = isinstance(request, MultiImageRequest)
        try:
            options = detection_options.resolve(self.defaults, header.query_options, self.labels, from_query=True)
            options = detection_options.resolve(options, request.option_fields, self.labels)
        except Refusal as refusal:
            refusal.image_id = None if several else request.image_id
            raise
        budget = DecodeBudget()
        if not several:
            return TaskJob(header, queue_wait_s, [self._prepare_image(header, request, options, budget)], False)
        if header.output_format != "json":
            raise Refusal(406, "an annotated image answers one image per request; send one image, "
                               "or ask for JSON (Accept: application/json) to get several answers")
        entries = [entry if isinstance(entry, Refusal) else
                   self._prepare_image_or_refusal(header, entry, options, budget) for entry in request.entries]
        return TaskJob(header, queue_wait_s, entries, True)

    def _prepare_image_or_refusal(self, header, request, options, budget):
        try:
            return self._prepare_image(header, request, options, budget)
        except Refusal as refusal:
            return refusal

    def _pixels_to_draw_on(self, request, decoded, options, budget):
        """The picture an annotated answer is drawn on: never upscaled from a reduced decode.

        The detections come from the same decode as a JSON answer's, so both agree;
        only when that decode is smaller than the answer is the image decoded again,
        in full, and the request's decode budget pays for that decode too.
        """
        out_w, out_h = output_size_px(decoded.original_size_px, options.max_side_px)
        if max(decoded.pixels.shape[:2]) >= max(out_w, out_h):
            return decoded.pixels
        return decode_image(request, self.config.max_pixels, "off", budget, full_redecode=True).pixels

    def _prepare_image(self, header, request, base_options, budget):
        """The ImageJob of one image, or raise its Refusal; never lets another exception out."""
        try:
            options = detection_options.resolve(base_options, request.option_fields, self.labels)
            decoded = decode_image(request, self.config.max_pixels, self.config.decode_reduction, budget)
            annotated = header.output_format != "json"
            drawn = self._pixels_to_draw_on(request, decoded, options, budget) if annotated else None
            return ImageJob(request.image_id, options, network_input(decoded.pixels), decoded.original_size_px, drawn)
        except Refusal as refusal:
            refusal.image_id = request.image_id
            raise
        except MemoryError:  # one oversized image must not take the worker (and its neighbours) down
            raise out_of_memory(request.image_id) from None
        except Exception:  # a bug of ours that these bytes found: their answer, not the worker's end
            log.exception("request %s: unexpected error reading image %r", header.request_id, request.image_id)
            raise internal_error(header.request_id, request.image_id) from None
