"""Decode an image's bytes for the network, refusing bombs before any pixel is allocated.

A large JPEG is decoded at a reduced scale straight from its DCT coefficients;
everything else is decoded in full exactly as OpenCV does.
"""

from dataclasses import dataclass

import cv2
import numpy as np

from ..refusals import bad_request, too_large
from .image_header import ImageHeaderError, read_header


# libjpeg can decode a JPEG at 1/2, 1/4 or 1/8 scale in the DCT domain, several
# times faster than a full decode and in a quarter to a sixty-fourth of the
# memory. YOLO only ever sees 416x416, so a reduced image still has plenty of
# pixels as long as both sides keep a margin over the network input. A smaller
# margin decodes faster but lets the reduced picture drift further from the
# full one (libjpeg's DCT scaling filters differently from a resize). At 1.5 x
# 416 a 12 MP photo decodes at 1/4 (1008x756: 13 ms instead of 23 ms at 1/2 and
# 56 ms in full, 1 thread), a 1080p frame and anything with a side under 1248 px
# keep exact parity with a full decode, and detections stay put (docs/performance.md).
MIN_REDUCED_SIDE_PX = 624
# Each scan of a progressive JPEG walks every coefficient again, at a reduced
# scale too: decoding costs about 0.8 ns per pixel per scan on the 2-core CPU
# measured (a 40 MP photo in OpenCV's 10 scans: 0.3-0.6 s; the same pixels in 100
# tiny scans, a 240 KB file: 3.2-3.8 s). The budget admits any real photo up to
# --max-pixels with 15 scans (about half a second) and refuses the rest before
# decoding, so a small file cannot buy seconds of a worker. One budget covers all
# the images of a request: sixteen such images in one body would buy eight seconds.
DECODE_BUDGET_PIXEL_SCANS = 600_000_000
JPEG_REDUCTIONS = ((8, cv2.IMREAD_REDUCED_COLOR_8), (4, cv2.IMREAD_REDUCED_COLOR_4),
                   (2, cv2.IMREAD_REDUCED_COLOR_2))


@dataclass(frozen=True)
class DecodedImage:
    pixels: np.ndarray  # BGR, possibly at 1/2, 1/4 or 1/8 of the original size
    original_size_px: tuple  # (width, height) of the full image, as oriented by the decode


class DecodeBudget:
    """The pixel-scans one request may still spend on decoding, across all of its images."""

    def __init__(self, pixel_scans=DECODE_BUDGET_PIXEL_SCANS):
        self.remaining = pixel_scans

    def spend(self, header, image_id):
        """Take this image's cost from the budget, or raise the 413 that says it does not fit."""
        cost = header.pixels * header.scans
        if cost > self.remaining:
            spent = DECODE_BUDGET_PIXEL_SCANS - self.remaining
            earlier = f" (the request's earlier images spent {spent:,})" if spent else ""
            raise too_large(f"the image is {header.width}x{header.height} pixels in {header.scans} scans: "
                            f"{cost:,} pixel-scans to decode, more than the {DECODE_BUDGET_PIXEL_SCANS:,} a "
                            f"request may spend{earlier}; send a baseline JPEG, fewer pixels or fewer images",
                            image_id)
        self.remaining -= cost


def reduced_size_px(width_px, height_px, factor):
    """(width, height) libjpeg decodes at 1/factor scale: it rounds up."""
    return -(-width_px // factor), -(-height_px // factor)


def jpeg_reduction(width_px, height_px):
    """The largest libjpeg scale factor (8, 4, 2) that keeps both sides >= the margin, or 1."""
    for factor, _ in JPEG_REDUCTIONS:
        reduced_w, reduced_h = reduced_size_px(width_px, height_px, factor)
        # OpenCV applies EXIF orientation, so the decode may come back transposed; the
        # original size is then told by the reduced shape, which must differ when transposed.
        tells_orientation = width_px == height_px or reduced_w != reduced_h
        if min(reduced_w, reduced_h) >= MIN_REDUCED_SIDE_PX and tells_orientation:
            return factor
    return 1


def reduction_factor(header, decode_reduction):
    """The scale (1/factor) decode_image reads this image at: 1, a full decode, but for a large JPEG with auto."""
    if decode_reduction == "auto" and header.format == "JPEG":
        return jpeg_reduction(header.width, header.height)
    return 1


def decode_image(request, max_pixels, decode_reduction="auto", budget=None):
    """Decode the request's bytes to a DecodedImage, refusing bombs before allocating them.

    With decode_reduction "auto" a large JPEG decodes reduced (see MIN_REDUCED_SIDE_PX);
    everything else, and everything with "off", decodes in full exactly as OpenCV does.
    budget: the request's DecodeBudget, shared by its images (a fresh one by default).
    """
    try:
        header = read_header(request.image_bytes)
    except ImageHeaderError as exc:
        raise bad_request(f"not a usable image: {exc}", request.image_id) from None
    if header.pixels > max_pixels:
        raise too_large(f"the image is {header.width}x{header.height} pixels, more than the "
                        f"{max_pixels:,}-pixel limit; resize it", request.image_id)
    (budget or DecodeBudget()).spend(header, request.image_id)
    factor = reduction_factor(header, decode_reduction)
    flag = dict(JPEG_REDUCTIONS).get(factor, cv2.IMREAD_COLOR)
    buffer = np.frombuffer(request.image_bytes, np.uint8)
    try:
        image = cv2.imdecode(buffer, flag)
    except cv2.error:
        image = None
    if image is None:
        raise bad_request(f"the {header.format} could not be decoded (corrupt data)", request.image_id)
    return DecodedImage(image, _original_size_px(header, image, factor))


def _original_size_px(header, image, factor):
    """The header's (width, height), transposed if EXIF orientation transposed the decode."""
    decoded_h, decoded_w = image.shape[:2]
    if factor == 1:
        return decoded_w, decoded_h
    if (decoded_w, decoded_h) == reduced_size_px(header.width, header.height, factor):
        return header.width, header.height
    return header.height, header.width
