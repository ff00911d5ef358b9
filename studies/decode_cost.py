"""What decoding an image costs a worker, by what its header says: the table behind the decode budget.

`PYTHONPATH=. python studies/decode_cost.py` builds every test image in
memory, decodes each with cv2.imdecode on one OpenCV thread (as a worker
decodes) a few times and prints the median, in nanoseconds of this thread's
CPU time per pixel of the full image, beside what the worker's DecodeBudget
prices the same image at (detserve/worker/image_decoding.py: its constants
come from this table, each the highest found for what a header tells, so the
"x" column, price over measured, should stay at 1 or above).

PNG, by colour type, bit depth and interlacing, with three contents: all zero
with every row unfiltered and with every row Paeth-filtered (the attack's
file: 40 MP in a few hundred KB, and Paeth still undone on every row), and
Paeth rows of unpredictable bytes, either one random row repeated (a small
file again) or all random (a file as large as its pixels). Then the compressed
text chunks libpng inflates whatever the pixels.

JPEG: the output stage by component layout (hand-made files whose every block
is empty), then photos, noise and flat grey by size and scans (baseline,
OpenCV's progressive with 10 scans, and 100 scans: the last one repeated, a few
dozen bytes each), decoded in full and at 1/2, 1/4 and 1/8; then a lossless
and an arithmetic-coded JPEG, written by hand.

Numbers vary with the machine: run it on a quiet one and read the ratios more
than the absolute values. It takes about two minutes.
"""

import argparse
import contextlib
import os
import statistics
import struct
import sys
import time
import zlib
from pathlib import Path

import cv2
import numpy as np

from detserve.worker.pipeline import decode_price_ns

REPO_ROOT = Path(__file__).resolve().parent.parent
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # by colour type
PNG_COLOUR_NAMES = {0: "gray", 2: "RGB", 3: "palette", 4: "gray+alpha", 6: "RGBA"}
PNG_FILTERS = {"none": 0, "Paeth": 4}
# Adam7: (first column, first row, column step, row step) of each of the seven passes.
ADAM7_PASSES = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))
JPEG_READS = {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2,
              4: cv2.IMREAD_REDUCED_COLOR_4, 8: cv2.IMREAD_REDUCED_COLOR_8}
JPEG_SAMPLINGS = {"gray": [(1, 1)], "4:2:0": [(2, 2), (1, 1), (1, 1)], "4:4:4": [(1, 1)] * 3,
                  "CMYK": [(1, 1)] * 4}


# -- PNG, written by hand ------------------------------------------------------------------------

def png_chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_pass_sizes(width, height, interlaced):
    """(width, height) of each pass that holds pixels: one pass, or Adam7's seven."""
    if not interlaced:
        return [(width, height)]
    sizes = []
    for x0, y0, dx, dy in ADAM7_PASSES:
        pass_w, pass_h = -(-(width - x0) // dx), -(-(height - y0) // dy)
        if pass_w > 0 and pass_h > 0:
            sizes.append((pass_w, pass_h))
    return sizes


def png_bytes(width, height, bit_depth, colour_type, interlaced=False, row_filter="none", content="zero",
              rng=None, extra_chunks=b""):
    """A valid PNG whose rows all use row_filter, holding content (as filtered bytes):
    "zero", "row" (one random row repeated) or "random"; extra_chunks go after IHDR."""
    bits_per_pixel = PNG_CHANNELS[colour_type] * bit_depth
    raw_parts = []
    for pass_w, pass_h in png_pass_sizes(width, height, interlaced):
        rows = np.zeros((pass_h, 1 + -(-pass_w * bits_per_pixel // 8)), np.uint8)
        if content == "row":
            rows[:, 1:] = rng.integers(0, 256, rows.shape[1] - 1, dtype=np.uint8)
        elif content == "random":
            rows[:, 1:] = rng.integers(0, 256, (rows.shape[0], rows.shape[1] - 1), dtype=np.uint8)
        rows[:, 0] = PNG_FILTERS[row_filter]
        raw_parts.append(rows.tobytes())
    level = 1 if content == "random" else 9  # random bytes do not compress: spend no time trying
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, int(interlaced))
    chunks = [png_chunk(b"IHDR", ihdr), extra_chunks]
    if colour_type == 3:
        chunks.append(png_chunk(b"PLTE", bytes(range(256)) * 3))
    chunks += [png_chunk(b"IDAT", zlib.compress(b"".join(raw_parts), level)), png_chunk(b"IEND", b"")]
    return PNG_SIGNATURE + b"".join(chunks)


# -- JPEG, from OpenCV's encoder and by hand --------------------------------------------------------

def jpeg_bytes(pixels, scans, sampling=cv2.IMWRITE_JPEG_SAMPLING_FACTOR_420, quality=90):
    """Baseline (scans=1), OpenCV's progressive (10), or progressive with its last scan repeated up to scans."""
    params = [cv2.IMWRITE_JPEG_QUALITY, quality, cv2.IMWRITE_JPEG_SAMPLING_FACTOR, sampling]
    if scans == 1:
        return cv2.imencode(".jpg", pixels, params)[1].tobytes()
    data = cv2.imencode(".jpg", pixels, params + [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])[1].tobytes()
    have = data.count(b"\xff\xda")
    if scans < have:
        raise ValueError(f"OpenCV's progressive JPEG has {have} scans; ask for at least that many")
    last_scan = data.rindex(b"\xff\xda")
    return data[:-2] + data[last_scan:-2] * (scans - have) + b"\xff\xd9"


def jpeg_segment(marker, payload):
    return b"\xff" + bytes([marker]) + struct.pack(">H", len(payload) + 2) + payload


def empty_blocks_jpeg(width, height, sampling, frame_marker=0xC0):
    """A baseline (or, with 0xC9, arithmetic-coded) JPEG of flat grey: every block is
    "DC unchanged, end of block", one bit each with the Huffman table given here."""
    one_symbol_table = bytes([1] + [0] * 15) + b"\x00"  # one code of length 1, for symbol 0
    tables = jpeg_segment(0xDB, b"\x00" + bytes([1] * 64))
    if frame_marker == 0xC0:
        tables += jpeg_segment(0xC4, b"\x00" + one_symbol_table + b"\x10" + one_symbol_table)
    components = b"".join(bytes([i + 1, (h << 4) | v, 0]) for i, (h, v) in enumerate(sampling))
    frame = jpeg_segment(frame_marker, struct.pack(">BHHB", 8, height, width, len(sampling)) + components)
    scan = jpeg_segment(0xDA, bytes([len(sampling)]) + b"".join(bytes([i + 1, 0]) for i in range(len(sampling)))
                        + bytes([0, 63, 0]))
    h_max, v_max = max(h for h, _ in sampling), max(v for _, v in sampling)
    mcus = -(-width // (8 * h_max)) * -(-height // (8 * v_max))
    bits = 2 * mcus * sum(h * v for h, v in sampling) if frame_marker == 0xC0 else 0
    return b"\xff\xd8" + tables + frame + scan + b"\x00" * (bits // 8 + 1) + b"\xff\xd9"


def lossless_jpeg(width, height, predictor=1):
    """A lossless (SOF3) 3-component JPEG of flat grey: every sample "no difference", one bit."""
    one_symbol_table = bytes([1] + [0] * 15) + b"\x00"
    table = jpeg_segment(0xC4, b"\x00" + one_symbol_table)
    frame = jpeg_segment(0xC3, struct.pack(">BHHB", 8, height, width, 3)
                         + b"".join(bytes([i + 1, 0x11, 0]) for i in range(3)))
    scan = jpeg_segment(0xDA, b"\x03" + b"".join(bytes([i + 1, 0]) for i in range(3)) + bytes([predictor, 0, 0]))
    bits = width * height * 3
    return b"\xff\xd8" + table + frame + scan + b"\x00" * (bits // 8 + 1) + b"\xff\xd9"


def jpeg_content(width, height, content, rng):
    """BGR pixels: "photo" (inputfolder/camera.jpg stretched, smooth), "noise" (the largest file) or "grey"."""
    if content == "grey":
        return np.full((height, width, 3), 128, np.uint8)
    if content == "noise":
        return rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    camera = cv2.imread(str(REPO_ROOT / "inputfolder" / "camera.jpg"), cv2.IMREAD_COLOR)
    return cv2.resize(camera, (width, height), interpolation=cv2.INTER_CUBIC)


# -- measuring -------------------------------------------------------------------------------------

def ns_per_pixel(data, flag, pixels, runs):
    """Median over runs of one cv2.imdecode, in nanoseconds of this thread's CPU time per pixel of the full image.

    CPU time rather than wall time: on a shared machine the wall clock also counts
    the time other processes held the core, which is not the decode's cost.
    """
    buffer = np.frombuffer(data, np.uint8)
    times_ns = []
    with decoder_warnings_silenced():
        for _ in range(runs):
            started = time.thread_time_ns()
            image = cv2.imdecode(buffer, flag)
            times_ns.append(time.thread_time_ns() - started)
    if image is None:
        raise RuntimeError("OpenCV could not decode a test image")
    return statistics.median(times_ns) / pixels


@contextlib.contextmanager
def decoder_warnings_silenced():
    """libjpeg and libpng print a warning per odd scan or chunk to the process's stderr: keep the table readable."""
    sys.stderr.flush()
    saved_fd = os.dup(2)
    with open(os.devnull, "wb") as devnull:
        os.dup2(devnull.fileno(), 2)
    try:
        yield
    finally:
        os.dup2(saved_fd, 2)
        os.close(saved_fd)


def priced_ns_per_pixel(data, pixels, factor=1):
    """What the worker's DecodeBudget prices this decode at, per pixel; None if its header is refused."""
    price_ns = decode_price_ns(data, factor)
    return None if price_ns is None else price_ns / pixels


def cell(measured, priced):
    """'measured priced xratio' for one decode."""
    if priced is None:
        return f"{measured:7.2f} refused"
    return f"{measured:7.2f}{priced:7.2f} x{priced / measured:<4.1f}"


# -- the tables --------------------------------------------------------------------------------------

def png_pixels_table(width, height, runs, rng):
    print(f"PNG {width}x{height}, cv2.IMREAD_COLOR: ns per pixel measured, priced, price/measured")
    print(f"{'colour':<11}{'depth':>5}{'interlace':>10}{'zero, none':>12}{'zero, Paeth':>12}"
          f"{'row, Paeth (priced)':>27}{'random, Paeth':>15}{'row KB':>8}")
    cases = [(colour, depth) for colour in (0, 3, 4, 2, 6) for depth in (8, 16) if not (colour == 3 and depth == 16)]
    for colour, depth in cases:
        for interlaced in (False, True):
            def measure(row_filter, content):
                data = png_bytes(width, height, depth, colour, interlaced, row_filter, content, rng)
                return data, ns_per_pixel(data, cv2.IMREAD_COLOR, width * height, runs)
            _, zero_none = measure("none", "zero")
            _, zero_paeth = measure("Paeth", "zero")
            row_file, row_paeth = measure("Paeth", "row")
            _, random_paeth = measure("Paeth", "random")
            print(f"{PNG_COLOUR_NAMES[colour]:<11}{depth:>5}{'Adam7' if interlaced else 'no':>10}{zero_none:12.1f}"
                  f"{zero_paeth:12.1f}   {cell(row_paeth, priced_ns_per_pixel(row_file, width * height))}"
                  f"{random_paeth:15.1f}{len(row_file) / 1024:8.0f}", flush=True)
    print("(depths under 8 bits decode as fast as 8 or faster; rows under 'random' and 'row' should agree)")


def png_text_table(runs):
    print("\nPNG 64x64 RGB with 20 zTXt chunks, each inflating to N MB of zeros: what libpng spends on them")
    print(f"{'inflated MB':>12}{'chunk KB':>10}{'ms':>8}{'ns/inflated B':>15}{'priced ms':>11}")
    for inflated_mb in (1, 4, 7.9, 16, 64):
        text = b"comment\0\0" + zlib.compress(b"\0" * int(inflated_mb * 1e6), 9)
        data = png_bytes(64, 64, 8, 2, extra_chunks=png_chunk(b"zTXt", text) * 20)
        ms = ns_per_pixel(data, cv2.IMREAD_COLOR, 1, runs) / 1e6
        priced_ms = decode_price_ns(data) / 1e6
        print(f"{inflated_mb:12}{len(text) / 1024:10.1f}{ms:8.0f}{ms * 1e6 / (20 * inflated_mb * 1e6):15.2f}"
              f"{priced_ms:11.0f}", flush=True)


def jpeg_header():
    return f"{'':>38}" + "".join(f"{'1/' + str(f) if f > 1 else 'full':>20}" for f in JPEG_READS)


def jpeg_row(label, data, pixels, runs):
    cells = [cell(ns_per_pixel(data, flag, pixels, runs), priced_ns_per_pixel(data, pixels, factor))
             for factor, flag in JPEG_READS.items()]
    print(f"{label:<30}{len(data) / 1024:6.0f}KB" + "".join(f"{c:>20}" for c in cells), flush=True)


def jpeg_output_table(width, height, runs):
    print(f"\nJPEG output stage: {width}x{height}, every block empty (2 bits), by component layout;"
          " ns per pixel measured, priced, price/measured")
    print(jpeg_header())
    for name, sampling in JPEG_SAMPLINGS.items():
        jpeg_row(f"baseline {name}", empty_blocks_jpeg(width, height, sampling), width * height, runs)


def jpeg_scans_table(sizes_px, runs, rng):
    print("\nJPEG q90 (OpenCV's encoder) by size, content, chroma sampling and scans")
    print(jpeg_header())
    samplings = {"4:2:0": cv2.IMWRITE_JPEG_SAMPLING_FACTOR_420, "4:4:4": cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444}
    cases = [("photo", "4:2:0", (1, 10)), ("photo", "4:4:4", (1, 10)), ("noise", "4:2:0", (1, 10)),
             ("noise", "4:4:4", (1, 10)), ("grey", "4:2:0", (1, 10, 100)), ("grey", "4:4:4", (100,))]
    for width, height in sizes_px:
        for content, sampling, scan_counts in cases:
            pixels = jpeg_content(width, height, content, rng)
            for scans in scan_counts:
                label = f"{width}x{height} {content} {sampling} {scans:>3} scan{'s' if scans > 1 else ''}"
                jpeg_row(label, jpeg_bytes(pixels, scans, samplings[sampling]), width * height, runs)


def jpeg_other_codings_table(width, height, runs):
    print(f"\nJPEG {width}x{height} of other codings, written by hand (full decode; lossless is never reduced)")
    for label, data in ((f"lossless, predictor 1", lossless_jpeg(width, height, 1)),
                        (f"lossless, predictor 7", lossless_jpeg(width, height, 7)),
                        (f"arithmetic 4:4:4", empty_blocks_jpeg(width, height, [(1, 1)] * 3, 0xC9))):
        measured = ns_per_pixel(data, cv2.IMREAD_COLOR, width * height, runs)
        print(f"{label:<30}{len(data) / 1024:6.0f}KB{cell(measured, priced_ns_per_pixel(data, width * height)):>20}", flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="decodes per cell; the median is printed")
    args = parser.parse_args(argv)
    cv2.setNumThreads(1)
    rng = np.random.default_rng(0)
    png_pixels_table(1000, 1000, args.runs, rng)
    png_text_table(args.runs)
    jpeg_output_table(4000, 3000, args.runs)
    jpeg_scans_table([(2000, 1500), (4000, 3000)], args.runs, rng)
    jpeg_other_codings_table(2000, 1500, args.runs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
