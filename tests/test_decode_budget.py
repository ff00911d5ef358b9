"""The decode budget prices what decoding costs, per format; an annotated answer's size is bounded.

Real images built here (PNGs written chunk by chunk, JPEGs from OpenCV's
encoder or by hand), the real worker code (read_header, decode_image,
DecodeBudget, annotate_jpeg) and, for each attack, a real server on port 0
with the real model. Nothing asserts on speed: the only time bounds are
generous upper limits that tell "refused before decoding" from "decoded for
seconds".
"""

import functools
import json
import struct
import time
import urllib.error
import urllib.request
import zlib

import cv2
import numpy as np
import pytest

from detserve.refusals import Refusal
from detserve.worker.annotation import JPEG_MAX_SIDE_PX, MAX_ANNOTATED_PIXELS, annotate_jpeg, output_size_px
from detserve.worker.detector import Detection
from detserve.worker.image_decoding import (DECODE_BUDGET_NS, DecodeBudget, decode_cost_ns, decode_image,
                                            jpeg_reduction, reduced_size_px)
from detserve.worker.image_header import MAX_PNG_COMPRESSED_CHUNKS, ImageHeaderError, read_header
from detserve.worker.request_parsing import ImageRequest
from support import ServerProcess, b64, camera_jpeg, http_request, sample_images

MAX_PIXELS = 40_000_000  # the server's default --max-pixels
# Adam7: (first column, first row, column step, row step) of each of the seven passes.
ADAM7_PASSES = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))
PNG_SAMPLES = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # per pixel, by colour type
PAETH = 4
# Far above what refusing from the header takes, far below what decoding the attack takes
# (15 such PNGs held a worker for 24 s before their decodes were priced).
REFUSED_BEFORE_DECODING_S = 10


# -- images ----------------------------------------------------------------------------------------

def png_chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def zero_png(width, height, bit_depth=8, colour_type=2, interlaced=False, row_filter=PAETH, extra_chunks=b""):
    """An all-zero PNG, every row declaring row_filter: libpng still undoes the filter on every row.

    Compressed a block of rows at a time, so that 40 MP of 16-bit RGBA (320 MB of rows)
    never sits in memory at once.
    """
    row_bits = PNG_SAMPLES[colour_type] * bit_depth
    passes = ADAM7_PASSES if interlaced else ((0, 0, 1, 1),)
    compressor = zlib.compressobj(9)
    compressed = []
    for x0, y0, dx, dy in passes:
        pass_w, pass_h = -(-(width - x0) // dx), -(-(height - y0) // dy)
        if pass_w <= 0 or pass_h <= 0:
            continue
        row = bytes([row_filter]) + bytes(-(-pass_w * row_bits // 8))
        for first in range(0, pass_h, 256):
            compressed.append(compressor.compress(row * min(256, pass_h - first)))
    compressed.append(compressor.flush())
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, int(interlaced))
    palette = png_chunk(b"PLTE", bytes(range(256)) * 3) if colour_type == 3 else b""
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + extra_chunks + palette
            + png_chunk(b"IDAT", b"".join(compressed)) + png_chunk(b"IEND", b""))


@functools.lru_cache(maxsize=None)
def attack_png():
    """The finding's PNG: 7300x5470 (39.9 MP, under --max-pixels), 16-bit RGBA, interlaced, Paeth, all zero."""
    return zero_png(7300, 5470, bit_depth=16, colour_type=6, interlaced=True)


@functools.lru_cache(maxsize=None)
def camera_pixels():
    return cv2.imdecode(np.frombuffer(camera_jpeg(), np.uint8), cv2.IMREAD_COLOR)


@functools.lru_cache(maxsize=None)
def progressive_photo(width, height):
    """The cameraman stretched to width x height, as OpenCV's progressive JPEG (10 scans), q90."""
    pixels = cv2.resize(camera_pixels(), (width, height), interpolation=cv2.INTER_CUBIC)
    ok, encoded = cv2.imencode(".jpg", pixels, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1, cv2.IMWRITE_JPEG_QUALITY, 90])
    assert ok
    return encoded.tobytes()


def jpeg_segment(marker, payload):
    return b"\xff" + bytes([marker]) + struct.pack(">H", len(payload) + 2) + payload


def flat_jpeg(width, height, frame_marker):
    """A flat grey 4:4:4 JPEG written by hand: lossless (0xC3, every sample "no difference", one bit)
    or arithmetic-coded (0xC9, no entropy data at all: the decoder makes up every block)."""
    one_code = bytes([1] + [0] * 15) + b"\x00"  # a Huffman table of one 1-bit code, for symbol 0
    tables = jpeg_segment(0xC4, b"\x00" + one_code) if frame_marker == 0xC3 else jpeg_segment(0xDB, bytes(65))
    frame = jpeg_segment(frame_marker, struct.pack(">BHHB", 8, height, width, 3)
                         + b"".join(bytes([i + 1, 0x11, 0]) for i in range(3)))
    spectral = bytes([1, 0, 0]) if frame_marker == 0xC3 else bytes([0, 63, 0])  # predictor 1 / all coefficients
    scan = jpeg_segment(0xDA, b"\x03" + b"".join(bytes([i + 1, 0]) for i in range(3)) + spectral)
    data = bytes(width * height * 3 // 8 + 1) if frame_marker == 0xC3 else b""
    return b"\xff\xd8" + tables + frame + scan + data + b"\xff\xd9"


def text_bomb_chunk(inflated_bytes):
    """A zTXt chunk of zeros: libpng inflates it while reading the header, whatever the pixels."""
    return png_chunk(b"zTXt", b"comment\x00\x00" + zlib.compress(bytes(inflated_bytes), 9))


def request_of(data, image_id="img"):
    return ImageRequest(image_id, data, {})


def refusal_of(call):
    with pytest.raises(Refusal) as caught:
        call()
    return caught.value


# == What the header tells ==========================================================================

def test_the_png_header_gives_bit_depth_colour_type_and_interlacing():
    encoded = {(8, "RGB"): cv2.imencode(".png", np.zeros((30, 40, 3), np.uint8))[1].tobytes(),
               (16, "RGB"): cv2.imencode(".png", np.zeros((30, 40, 3), np.uint16))[1].tobytes(),
               (8, "gray"): cv2.imencode(".png", np.zeros((30, 40), np.uint8))[1].tobytes(),
               (8, "RGBA"): cv2.imencode(".png", np.zeros((30, 40, 4), np.uint8))[1].tobytes()}
    for (bit_depth, colour_type), data in encoded.items():
        header = read_header(data)
        assert (header.width_px, header.height_px, header.bit_depth, header.colour_type, header.interlaced) \
            == (40, 30, bit_depth, colour_type, False)
    header = read_header(attack_png())
    assert (header.bit_depth, header.colour_type, header.interlaced) == (16, "RGBA", True)
    assert cv2.imdecode(np.frombuffer(zero_png(40, 30, 16, 6, interlaced=True), np.uint8),
                        cv2.IMREAD_COLOR).shape == (30, 40, 3)  # the hand-written PNG is one OpenCV reads


def test_a_png_header_the_specification_forbids_is_refused():
    forbidden = zero_png(40, 30, bit_depth=8, colour_type=2).replace(
        b"IHDR" + struct.pack(">IIBB", 40, 30, 8, 2), b"IHDR" + struct.pack(">IIBB", 40, 30, 4, 2))
    with pytest.raises(ImageHeaderError, match="bit depth 4 with colour type 2"):
        read_header(forbidden)


def test_the_jpeg_header_counts_the_blocks_every_scan_walks():
    """Baseline 4:2:0: one scan over 6 blocks per 16x16 macroblock; each repeat of the last
    (luma-only) scan of a progressive file walks the luma blocks once more."""
    pixels = cv2.resize(camera_pixels(), (640, 480))
    baseline = read_header(cv2.imencode(".jpg", pixels)[1].tobytes())
    assert (baseline.coding, baseline.scans, baseline.block_scans) == ("baseline", 1, 640 * 480 // 256 * 6)
    progressive = cv2.imencode(".jpg", pixels, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])[1].tobytes()
    last_scan = progressive.rindex(b"\xff\xda")
    repeated = progressive[:-2] + progressive[last_scan:-2] * 5 + b"\xff\xd9"
    once, more = read_header(progressive), read_header(repeated)
    assert once.coding == "progressive" and more.scans == once.scans + 5
    assert more.block_scans - once.block_scans == 5 * (640 // 8) * (480 // 8)


def test_an_arithmetic_coded_jpeg_is_refused_and_a_lossless_one_decodes_at_its_size():
    """Arithmetic decoding makes up every block of a file of a few hundred bytes, at a photo's cost: refused.
    A lossless JPEG has no DCT to reduce: decoded in full, and its size is its own (not transposed)."""
    refusal = refusal_of(lambda: decode_image(request_of(flat_jpeg(2000, 1500, 0xC9)), MAX_PIXELS))
    assert refusal.status == 400 and "arithmetic coding" in refusal.message and "baseline" in refusal.message
    lossless = flat_jpeg(2000, 1500, 0xC3)
    assert jpeg_reduction(2000, 1500) > 1  # a DCT JPEG this size would decode reduced
    decoded = decode_image(request_of(lossless), MAX_PIXELS)
    assert decoded.pixels.shape == (1500, 2000, 3) and decoded.original_size_px == (2000, 1500)


# == The budget: refuses what costs too much, serves what is ordinary ================================

def test_the_findings_png_is_refused_from_its_header_with_what_to_send_instead():
    """40 MP of interlaced 16-bit RGBA in ~400 KB: about 2 s of decoding each, were it decoded."""
    data = attack_png()
    assert len(data) < 1_000_000
    started_s = time.monotonic()
    refusal = refusal_of(lambda: decode_image(request_of(data), MAX_PIXELS, budget=DecodeBudget()))
    assert time.monotonic() - started_s < REFUSED_BEFORE_DECODING_S
    assert refusal.status == 413 and refusal.image_id == "img"
    assert "7300x5470, 16-bit RGBA PNG, interlaced" in refusal.message
    assert f"{DECODE_BUDGET_NS / 1e6:,.0f} ms" in refusal.message
    assert "send it as a JPEG or as an 8-bit, non-interlaced PNG" in refusal.message


def test_every_sample_image_and_an_ordinary_12_mp_progressive_photo_fit_annotated_too():
    """The images a user sends: each decoded the way its annotated answer would (reduced, then in full)."""
    images = [path.read_bytes() for path in sample_images()] + [progressive_photo(4000, 3000)]
    for data in images:
        budget = DecodeBudget()
        decoded = decode_image(request_of(data), MAX_PIXELS, "auto", budget)
        decode_image(request_of(data), MAX_PIXELS, "off", budget, full_redecode=True)
        assert decoded.original_size_px == (read_header(data).width_px, read_header(data).height_px)
    assert read_header(images[-1]).scans == 10


def test_the_annotated_answers_second_decode_is_priced_and_its_refusal_says_how_to_avoid_it():
    """A 40 MP progressive photo fits the budget as JSON (decoded at 1/8); decoding it once more in
    full for an annotated answer does not, and the refusal names the max_side that avoids it."""
    data = progressive_photo(7744, 5163)
    budget = DecodeBudget()
    decoded = decode_image(request_of(data), MAX_PIXELS, "auto", budget)
    assert decoded.pixels.shape[:2] == (646, 968)
    refusal = refusal_of(lambda: decode_image(request_of(data), MAX_PIXELS, "off", budget, full_redecode=True))
    assert refusal.status == 413
    assert "a second time in full for the annotated image" in refusal.message
    assert f"max_side={max(reduced_size_px(7744, 5163, 8))} or less" in refusal.message
    assert f"after the {budget.spent_ns / 1e6:,.0f} ms its request already spent" in refusal.message


def test_one_budget_covers_every_image_of_a_request():
    """RGB PNGs of 16 MP, each priced under the budget: the first fits, the second would pass it,
    and a small one after it still fits what is left."""
    big, small = zero_png(4000, 4000), zero_png(640, 480)
    big_ns = decode_cost_ns(read_header(big))
    assert big_ns < DECODE_BUDGET_NS < 2 * big_ns
    budget = DecodeBudget()
    decode_image(request_of(big, "first"), MAX_PIXELS, budget=budget)
    refusal = refusal_of(lambda: decode_image(request_of(big, "second"), MAX_PIXELS, budget=budget))
    assert refusal.status == 413 and refusal.image_id == "second"
    assert "send it in a request of its own" in refusal.message
    decode_image(request_of(small, "third"), MAX_PIXELS, budget=budget)
    assert budget.spent_ns == big_ns + decode_cost_ns(read_header(small))


def test_compressed_text_chunks_are_priced_by_what_libpng_inflates():
    """20 zTXt chunks of 7.5 KB, each 7.9 MB of zeros, on a 64x64 image: more than half a second of
    inflating before any pixel. A short compressed comment costs next to nothing; too many such chunks
    are refused by count."""
    bomb = zero_png(64, 64, extra_chunks=text_bomb_chunk(7_900_000) * 20)
    assert len(bomb) < 200_000
    refusal = refusal_of(lambda: decode_image(request_of(bomb), MAX_PIXELS))
    assert refusal.status == 413 and "compressed text" in refusal.message
    commented = zero_png(64, 64, extra_chunks=text_bomb_chunk(100))
    assert decode_image(request_of(commented), MAX_PIXELS).pixels.shape == (64, 64, 3)
    many = zero_png(64, 64, extra_chunks=text_bomb_chunk(10) * (MAX_PNG_COMPRESSED_CHUNKS + 1))
    refusal = refusal_of(lambda: decode_image(request_of(many), MAX_PIXELS))
    assert refusal.status == 400 and f"more than the {MAX_PNG_COMPRESSED_CHUNKS}" in refusal.message


# == The annotated answer's size =======================================================================

def test_an_annotated_image_wider_than_jpeg_allows_is_scaled_to_fit_keeping_its_aspect():
    """100000x400 cannot be a JPEG; scaled, it can (and its boxes scale with it)."""
    pixels = np.full((400, 100_000, 3), 200, np.uint8)
    box = (20_000, 100, 10_000, 200)
    jpeg = annotate_jpeg(pixels, (100_000, 400), [Detection("person", 0.9, box)], {"person": 0})
    image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    height, width = image.shape[:2]
    assert width <= JPEG_MAX_SIDE_PX and width * height <= MAX_ANNOTATED_PIXELS
    assert abs(height - 400 * width / 100_000) <= 1
    scale = width / 100_000
    drawn_columns = np.flatnonzero(np.abs(image.astype(int) - 200).sum(axis=2).max(axis=0) > 100)
    assert abs(drawn_columns.min() - box[0] * scale) < 10 and abs(drawn_columns.max() - (box[0] + box[2]) * scale) < 10


def test_the_annotated_size_is_bounded_in_pixels_and_left_alone_below_the_bounds():
    for size_px in ((7744, 5163), (100_000, 400), (400, 100_000), (4097, 4096)):
        out_w, out_h = output_size_px(size_px)
        assert out_w * out_h <= MAX_ANNOTATED_PIXELS and max(out_w, out_h) <= JPEG_MAX_SIDE_PX
        assert abs(out_w / out_h - size_px[0] / size_px[1]) / (size_px[0] / size_px[1]) < 0.01
    assert output_size_px((4032, 3024)) == (4032, 3024)  # a 12 MP phone photo keeps its size
    assert output_size_px((741, 500), 200) == (200, 135)
    assert output_size_px((100_000, 400), 70_000) == output_size_px((100_000, 400))


# == On a live server ============================================================================

@pytest.fixture(scope="module")
def one_worker():
    """One worker: an attack that held it would hold every request after it."""
    with ServerProcess("--workers", "1") as srv:
        yield srv


def annotated(srv, data, content_type, query="format=jpeg&id=wide"):
    """(status, Content-Type, body bytes) of one annotated request, the body left undecoded."""
    request = urllib.request.Request(f"{srv.url}/api/?{query}", data=data, headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, response.headers["Content-Type"], response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers["Content-Type"], error.read()


def test_live_fifteen_attack_pngs_in_one_body_get_their_413s_at_once_and_the_worker_stays_free(one_worker):
    """15 x 40 MP interlaced 16-bit RGBA Paeth PNGs (~6 MB of JSON) held the worker 24 s before PNGs
    were priced by their header; now each is refused from its header, and an innocent request is
    answered right after."""
    encoded = b64(attack_png())
    body = json.dumps({"images": [{"id": f"png{i}", "image": encoded} for i in range(15)]}).encode()
    started_s = time.monotonic()
    status, _, payload = http_request(one_worker.api_url, body=body, headers={"Content-Type": "application/json"},
                                      timeout_s=120)
    assert time.monotonic() - started_s < REFUSED_BEFORE_DECODING_S
    assert status == 200, payload
    assert [r["id"] for r in payload["results"]] == [f"png{i}" for i in range(15)]
    assert all(r["status"] == 413 and "16-bit RGBA PNG, interlaced" in r["error"] for r in payload["results"])
    started_s = time.monotonic()
    status, _, payload = one_worker.request("/api/?id=innocent", camera_jpeg(), headers={"Content-Type": "image/jpeg"})
    assert time.monotonic() - started_s < REFUSED_BEFORE_DECODING_S
    assert status == 200 and payload["id"] == "innocent" and payload["detections"], payload


def test_live_a_100000x400_png_asked_for_annotated_is_a_scaled_jpeg(one_worker):
    """Was a 500 from the JPEG encoder (65,500 px limit); now 200, scaled to fit.
    8-bit gray, so that its 40 MP fit the decode budget (an RGB one is refused with a 413)."""
    png = cv2.imencode(".png", np.full((400, 100_000), 90, np.uint8))[1].tobytes()
    status, content_type, body = annotated(one_worker, png, "image/png")
    assert status == 200 and content_type == "image/jpeg", body[:300]
    height, width = cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_COLOR).shape[:2]
    assert width <= JPEG_MAX_SIDE_PX and abs(height - 400 * width / 100_000) <= 1


def test_live_an_ordinary_12_mp_progressive_photo_is_served_annotated_and_a_40_mp_one_as_json(one_worker):
    photo = progressive_photo(4000, 3000)
    status, content_type, body = annotated(one_worker, photo, "image/jpeg", "format=jpeg&id=photo")
    assert status == 200 and content_type == "image/jpeg", body[:300]
    assert cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_COLOR).shape == (3000, 4000, 3)
    large = progressive_photo(7744, 5163)
    status, _, payload = one_worker.request("/api/?id=large", large, headers={"Content-Type": "image/jpeg"})
    assert status == 200 and payload["id"] == "large", payload
    status, content_type, body = annotated(one_worker, large, "image/jpeg", "format=jpeg&id=large")
    assert status == 413 and json.loads(body)["id"] == "large" and "max_side=968" in json.loads(body)["error"]
    status, content_type, _ = annotated(one_worker, large, "image/jpeg", "format=jpeg&max_side=968&id=large")
    assert status == 200 and content_type == "image/jpeg"
