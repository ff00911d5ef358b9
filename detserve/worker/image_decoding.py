"""Decode an image's bytes for the network, refusing bombs before any pixel is allocated.

A large JPEG is decoded at a reduced scale straight from its DCT coefficients;
everything else is decoded in full exactly as OpenCV does. Before any decode
runs, the request's DecodeBudget prices it by what its header says the decoder
will do, from a table of costs measured here (studies/decode_cost.py), and
refuses what would take the request past its half second.
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
JPEG_REDUCTIONS = ((8, cv2.IMREAD_REDUCED_COLOR_8), (4, cv2.IMREAD_REDUCED_COLOR_4),
                   (2, cv2.IMREAD_REDUCED_COLOR_2))


@dataclass(frozen=True)
class DecodedImage:
    pixels: np.ndarray  # BGR, possibly at 1/2, 1/4 or 1/8 of the original size
    original_size_px: tuple  # (width, height) of the full image, as oriented by the decode


# -- the decode budget -------------------------------------------------------------------------------
# Every decode a request causes (each image's, and an annotated answer's second, full
# decode of a reduced JPEG) is priced before it runs, in nanoseconds of one core as
# cv2.imdecode takes them on one thread, and refused when the request's decodes would
# pass this in total. A worker decodes one request at a time while others queue behind
# it: a larger budget lets one request hold it longer (15 crafted PNGs in one body held
# a worker for 24 s when a pixel of any format was priced like a JPEG's); a smaller one
# refuses ordinary large photos. Half a second admits a 12 MP photo as a JPEG (annotated
# too: 0.27 s for a progressive one) or an 8-bit PNG, and a 40 MP JPEG answered as JSON;
# it refuses a 40 MP 16-bit interlaced PNG (2.5 s) and a 40 MP RGB PNG (0.96 s).
DECODE_BUDGET_NS = 500_000_000

# The costs below were measured with studies/decode_cost.py (one thread, median of 5,
# CPU time, a 2-core x86 VM shared with other work); each is the highest two runs found
# for what the header tells, plus about a tenth, so that a price stays above the decode
# it stands for. A faster or quieter machine is only over-charged.
#
# PNG: nanoseconds per pixel by (colour type, 16-bit or not): (not interlaced, Adam7
# interlaced). Depths under 8 bits cost no more than 8 (libpng expands them). The row
# filter is chosen per row and not in the header, so every row is priced as Paeth on
# unpredictable bytes: its worst, which a small file reaches (one random row repeated
# compresses to a few KB per megapixel and costs as much as noise).
PNG_NS_PER_PIXEL = {
    ("gray", False): (9.0, 13.5),
    ("palette", False): (10.5, 13.5),
    ("gray", True): (19.0, 22.5),
    ("gray+alpha", False): (17.5, 23.0),
    ("gray+alpha", True): (33.5, 40.5),
    ("RGB", False): (24.0, 27.0),
    ("RGB", True): (47.0, 53.0),
    ("RGBA", False): (30.5, 31.0),
    ("RGBA", True): (55.5, 63.5),
}
# libpng inflates every zTXt, iTXt and iCCP chunk while OpenCV reads the header (twice:
# once to size it), whatever the pixels, up to its per-chunk limit; deflate packs at most
# 1032 bytes into one. So each such chunk costs up to 1032 inflated bytes per byte, capped
# at the limit: a 1 KB comment is priced 5 ms, the 8 MB a chunk can reach 38 ms.
PNG_INFLATE_NS_PER_BYTE = 4.7
DEFLATE_MAX_RATIO = 1032
LIBPNG_CHUNK_LIMIT_BYTES = 8_000_000
# JPEG: three parts. Entropy decoding reads every byte of the file at every scale
# (noise-filled photos: 9-12 ns a byte baseline, 26-30 progressive); a progressive scan
# walks every 8x8 block of its components again (about 45 ns a block for a refinement
# scan that holds almost nothing: 100 such scans cost a 12 MP file of 70 KB 0.8 s); and
# the output (inverse DCT, upsampling, colour conversion) costs per pixel by the scale
# libjpeg decodes at, more for CMYK, whose conversion to BGR OpenCV does itself. A
# lossless JPEG has no DCT: each sample is decoded on its own (13-14 ns a pixel from a
# file of 1 bit a sample), never reduced.
JPEG_NS_PER_FILE_BYTE = {"baseline": 13.0, "progressive": 32.0, "lossless": 13.0}
JPEG_NS_PER_PROGRESSIVE_BLOCK_SCAN = 50.0
JPEG_OUTPUT_NS_PER_PIXEL = {1: 5.2, 2: 2.0, 4: 1.6, 8: 1.2}  # by scale factor: gray, YCbCr
JPEG_CMYK_OUTPUT_NS_PER_PIXEL = {1: 9.0, 2: 2.8, 4: 2.2, 8: 1.6}
JPEG_LOSSLESS_NS_PER_PIXEL = 12.0

def decode_cost_ns(header, factor=1):
    """The estimated nanoseconds of one core cv2.imdecode spends on this image at 1/factor scale."""
    if header.format == "PNG":
        plain_ns, interlaced_ns = PNG_NS_PER_PIXEL[(header.colour_type, header.bit_depth == 16)]
        pixels_ns = header.pixels * (interlaced_ns if header.interlaced else plain_ns)
        inflated_bytes = sum(min(size * DEFLATE_MAX_RATIO, LIBPNG_CHUNK_LIMIT_BYTES)
                             for size in header.compressed_chunk_bytes)
        return pixels_ns + inflated_bytes * PNG_INFLATE_NS_PER_BYTE
    entropy_ns = header.file_bytes * JPEG_NS_PER_FILE_BYTE[header.coding]
    if header.coding == "lossless":
        return entropy_ns + header.pixels * JPEG_LOSSLESS_NS_PER_PIXEL
    scans_ns = header.block_scans * JPEG_NS_PER_PROGRESSIVE_BLOCK_SCAN if header.coding == "progressive" else 0
    output = JPEG_CMYK_OUTPUT_NS_PER_PIXEL if header.components == 4 else JPEG_OUTPUT_NS_PER_PIXEL
    return entropy_ns + scans_ns + header.pixels * output[factor]


class DecodeBudget:
    """The decoding time one request may still spend, across all of its images and all their decodes."""

    def __init__(self, budget_ns=DECODE_BUDGET_NS):
        self.budget_ns = budget_ns
        self.spent_ns = 0

    def spend(self, header, image_id, factor=1, full_redecode=False):
        """Take this decode's price from the budget, or raise the 413 that says it does not fit.

        factor: the scale it decodes at (1, 2, 4, 8). full_redecode: it is an annotated
        answer's second, full decode of an image already decoded reduced.
        """
        cost_ns = decode_cost_ns(header, factor)
        if self.spent_ns + cost_ns > self.budget_ns:
            raise too_large(self._refusal_message(header, cost_ns, full_redecode), image_id)
        self.spent_ns += cost_ns

    def _refusal_message(self, header, cost_ns, full_redecode):
        what = "decoding it a second time in full for the annotated image" if full_redecode else "decoding it"
        earlier = f" after the {self.spent_ns / 1e6:,.0f} ms its request already spent" if self.spent_ns else ""
        return (f"the image is {describe(header)}: {what} would take about {cost_ns / 1e6:,.0f} ms{earlier}, "
                f"more than the {self.budget_ns / 1e6:,.0f} ms a request may spend decoding; "
                f"{what_to_send_instead(header, full_redecode, bool(self.spent_ns))}")


def describe(header):
    """The image as its header tells what decoding it costs, e.g. '8000x5000, 16-bit RGBA PNG, interlaced'."""
    size = f"{header.width_px}x{header.height_px}"
    if header.format == "PNG":
        interlaced = ", interlaced" if header.interlaced else ""
        text = f", with {len(header.compressed_chunk_bytes)} compressed text chunks" \
            if header.compressed_chunk_bytes else ""
        return f"{size}, {header.bit_depth}-bit {header.colour_type} PNG{interlaced}{text}"
    scans = f" in {header.scans} scans" if header.coding == "progressive" else ""
    return f"{size}, {header.coding} JPEG of {header.file_bytes / 1e6:.1f} MB{scans}"


def what_to_send_instead(header, full_redecode, shares_a_request):
    """What a user can change so the image fits the budget, worded for this header."""
    if full_redecode:
        reduced_w, reduced_h = reduced_size_px(header.width_px, header.height_px,
                                               jpeg_reduction(header.width_px, header.height_px))
        return (f"ask for JSON, or for an annotated image of max_side={max(reduced_w, reduced_h)} or less "
                "(drawn on the reduced decode), or send fewer pixels")
    options = []
    if shares_a_request:
        options.append("send it in a request of its own")
    if header.format == "PNG":
        if header.compressed_chunk_bytes:
            options.append("strip its compressed text and colour profile chunks")
        simpler = [change for change, applies in (("8-bit", header.bit_depth == 16),
                                                  ("non-interlaced", header.interlaced)) if applies]
        options.append("send it as a JPEG" + (f" or as an {', '.join(simpler)} PNG" if simpler else ""))
    elif header.coding != "baseline":
        options.append("save it as a baseline JPEG")
    options.append("send fewer pixels")
    return ", ".join(options[:-1]) + (", or " if len(options) > 1 else "") + options[-1]


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
    if decode_reduction == "auto" and header.format == "JPEG" and header.coding != "lossless":
        return jpeg_reduction(header.width_px, header.height_px)  # lossless JPEG has no DCT to scale
    return 1


def decode_image(request, max_pixels, decode_reduction="auto", budget=None, full_redecode=False):
    """Decode the request's bytes to a DecodedImage, refusing bombs before allocating them.

    With decode_reduction "auto" a large JPEG decodes reduced (see MIN_REDUCED_SIDE_PX);
    everything else, and everything with "off", decodes in full exactly as OpenCV does.
    budget: the request's DecodeBudget, shared by its images and all their decodes (a
    fresh one by default). full_redecode: this is an annotated answer's second decode of
    an image already decoded reduced; it is priced like any other, and its refusal says so.
    """
    try:
        header = read_header(request.image_bytes)
    except ImageHeaderError as exc:
        raise bad_request(f"not a usable image: {exc}", request.image_id) from None
    if header.pixels > max_pixels:
        raise too_large(f"the image is {header.width_px}x{header.height_px} pixels, more than the "
                        f"{max_pixels:,}-pixel limit; resize it", request.image_id)
    factor = reduction_factor(header, decode_reduction)
    (budget or DecodeBudget()).spend(header, request.image_id, factor, full_redecode)
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
    if (decoded_w, decoded_h) == reduced_size_px(header.width_px, header.height_px, factor):
        return header.width_px, header.height_px
    return header.height_px, header.width_px
