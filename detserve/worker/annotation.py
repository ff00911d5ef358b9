"""The annotated answer: the input image with each detection drawn on it, encoded as JPEG.

Boxes are drawn in a fixed colour per class with a dark outline under them,
and each label sits on a filled band of its class colour with black or white
text, whichever contrasts more, so it reads on light and dark pictures alike.

The answer's size is bounded before anything is drawn or encoded: the input's
size, scaled down (aspect ratio kept) to max_side when asked, to libjpeg's
65,500 px on either side, and to MAX_ANNOTATED_PIXELS in all, whichever is
smallest. So no upload can make an answer JPEG cannot encode, nor one larger
than a 16.8 MP picture, however few bytes it was sent in.
"""

import math

import cv2
import numpy as np

JPEG_QUALITY = 90
GOLDEN_RATIO_CONJUGATE = 0.618033988749895  # successive hues land far apart on the colour wheel
FONT = cv2.FONT_HERSHEY_SIMPLEX
OUTLINE_BGR = (0, 0, 0)
LIGHT_BACKGROUND_LUMA = 140  # above it, black text; below, white
JPEG_MAX_SIDE_PX = 65_500  # libjpeg refuses to encode a wider or taller image
# An answer's bytes grow with its pixels whatever the upload's size: noise at quality 90
# takes 0.8 bytes a pixel, so a 1.1 MB PNG of 40 MP noise answered at its size was a 32.5 MB
# JPEG. A larger bound keeps more of a big upload's pixels in its picture but lets answers
# grow (15.0 MB at worst at this one, for noise); a smaller one scales ordinary photos down.
# 4096 x 4096 keeps a 16 MP camera's photos (and anything a 4K screen shows) at their size.
MAX_ANNOTATED_PIXELS = 4096 * 4096
# Lines and labels grow with the picture's longest side, but not past this many times its
# shortest, so a 65500x262 strip is not painted over by 160 px lines.
MAX_DRAWING_ASPECT = 4


def class_palette(count=80):
    """One saturated, bright BGR colour per class id, the same on every call."""
    hues = (np.arange(count) * GOLDEN_RATIO_CONJUGATE % 1.0 * 180).astype(np.uint8)
    hsv = np.stack([hues, np.full(count, 210, np.uint8), np.full(count, 255, np.uint8)], axis=1)
    bgr = cv2.cvtColor(hsv.reshape(-1, 1, 3), cv2.COLOR_HSV2BGR).reshape(-1, 3)
    return [tuple(int(channel) for channel in colour) for colour in bgr]


PALETTE = class_palette()


def output_size_px(original_size_px, max_side_px=None):
    """(width, height) of the annotated image: the input's, scaled down (aspect ratio kept) so that
    its longest side is at most max_side_px and JPEG_MAX_SIDE_PX and it holds at most MAX_ANNOTATED_PIXELS."""
    width, height = original_size_px
    longest_px = min(max(width, height), max_side_px or JPEG_MAX_SIDE_PX, JPEG_MAX_SIDE_PX)
    scale = min(longest_px / max(width, height), math.sqrt(MAX_ANNOTATED_PIXELS / (width * height)))
    if scale >= 1:
        return width, height
    size = max(1, round(width * scale)), max(1, round(height * scale))
    if size[0] * size[1] > MAX_ANNOTATED_PIXELS or max(size) > longest_px:
        size = max(1, math.floor(width * scale)), max(1, math.floor(height * scale))  # rounding up overstepped
    return size


def annotate_jpeg(pixels, original_size_px, detections, class_ids, max_side_px=None):
    """JPEG bytes of pixels at its output size with detections (boxes in original pixels) drawn.

    pixels may be a reduced decode: it is brought to the output size first (output_size_px),
    so the answer has the uploaded image's width and height unless max_side_px asks for
    less or the image is too large for an annotated answer (see the module docstring).
    """
    out_w, out_h = output_size_px(original_size_px, max_side_px)
    if (pixels.shape[1], pixels.shape[0]) != (out_w, out_h):
        shrinking = out_w < pixels.shape[1]
        pixels = cv2.resize(pixels, (out_w, out_h), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)
    scale = out_w / original_size_px[0]
    longest_px = min(max(out_w, out_h), MAX_DRAWING_ASPECT * min(out_w, out_h))
    for detection in detections:
        colour = PALETTE[class_ids[detection.label] % len(PALETTE)]
        box = [round(v * scale) for v in detection.bbox]
        _draw_box(pixels, box, colour, longest_px)
        _draw_label(pixels, box, f"{detection.label} {detection.confidence:.2f}", colour, longest_px)
    ok, encoded = cv2.imencode(".jpg", pixels, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise RuntimeError("OpenCV could not encode the annotated JPEG")
    return encoded.tobytes()


def _draw_box(pixels, box, colour, longest_px):
    x, y, w, h = box
    thickness = max(2, round(longest_px / 400))
    cv2.rectangle(pixels, (x, y), (x + w, y + h), OUTLINE_BGR, thickness + 2)
    cv2.rectangle(pixels, (x, y), (x + w, y + h), colour, thickness)


def _draw_label(pixels, box, text, colour, longest_px):
    font_scale = max(0.4, longest_px / 1200)
    thickness = max(1, round(font_scale * 1.6))
    (text_w, text_h), baseline = cv2.getTextSize(text, FONT, font_scale, thickness)
    pad = max(2, thickness)
    band_h = text_h + baseline + 2 * pad
    x, y = box[0], box[1]
    top = y - band_h if y - band_h >= 0 else y  # above the box, or inside it at the top edge
    left = max(0, min(x, pixels.shape[1] - text_w - 2 * pad))
    cv2.rectangle(pixels, (left, top), (left + text_w + 2 * pad, top + band_h), colour, cv2.FILLED)
    blue, green, red = colour
    luma = 0.299 * red + 0.587 * green + 0.114 * blue
    text_bgr = (0, 0, 0) if luma > LIGHT_BACKGROUND_LUMA else (255, 255, 255)
    cv2.putText(pixels, text, (left + pad, top + pad + text_h), FONT, font_scale, text_bgr, thickness, cv2.LINE_AA)
