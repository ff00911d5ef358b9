"""Read an image's format and dimensions from its header, without decoding it.

This runs before any decode so that a tiny file which claims to be enormous
(a "decompression bomb") is refused before OpenCV allocates its pixels, and so
that a file cut short is refused instead of being decoded half-grey.
"""

import struct
from dataclasses import dataclass

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_END_CHUNK = b"IEND\xaeB`\x82"
JPEG_START = b"\xff\xd8\xff"
JPEG_END = b"\xff\xd9"
# Start-of-frame markers carry the dimensions; C4, C8 and CC are other segments.
JPEG_FRAME_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
JPEG_START_OF_SCAN = 0xDA
JPEG_STANDALONE_MARKERS = frozenset([0x01, 0xD8, *range(0xD0, 0xD8)])
# 0x00 is byte stuffing and 0x02-0xBF are reserved: libjpeg skips or rejects
# them, so a parser that walked over them would read a different frame header
# than the decoder does (and a hidden 20000x20000 frame would pass as 16x16).
JPEG_FIRST_SEGMENT_MARKER = 0xC0
# Each scan of a progressive JPEG re-walks the whole image: thousands of tiny
# scans make a 1 MB file take a worker for minutes. Real files have about 10.
MAX_JPEG_SCANS = 100


class ImageHeaderError(ValueError):
    """The bytes are not a complete JPEG or PNG image."""


@dataclass(frozen=True)
class ImageHeader:
    format: str
    width: int
    height: int
    scans: int = 1  # passes over the whole image a decoder makes: a progressive JPEG's scans

    @property
    def pixels(self):
        return self.width * self.height


def read_header(data):
    """Return the ImageHeader of a JPEG or PNG, or raise ImageHeaderError saying why not."""
    if data.startswith(PNG_SIGNATURE):
        header = _read_png(data)
    elif data.startswith(JPEG_START):
        header = _read_jpeg(data)
    else:
        raise ImageHeaderError("the image is neither a JPEG nor a PNG")
    if header.width == 0 or header.height == 0:
        raise ImageHeaderError(f"the {header.format} header gives a zero dimension")
    return header


def _read_png(data):
    if len(data) < 24 or data[12:16] != b"IHDR":
        raise ImageHeaderError("the PNG has no IHDR header chunk")
    width, height = struct.unpack(">II", data[16:24])
    if data.rfind(PNG_END_CHUNK) < 24:
        raise ImageHeaderError("the PNG is truncated (no IEND chunk)")
    return ImageHeader("PNG", width, height)


def _read_jpeg(data):
    size = None
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            raise ImageHeaderError(f"the JPEG has a corrupt marker at byte {pos}")
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte before a marker
            pos += 1
            continue
        if marker in JPEG_STANDALONE_MARKERS:
            pos += 2
            continue
        if marker < JPEG_FIRST_SEGMENT_MARKER:
            raise ImageHeaderError(f"the JPEG has an invalid marker 0x{marker:02X} at byte {pos}")
        (length,) = struct.unpack(">H", data[pos + 2:pos + 4])
        if length < 2:
            raise ImageHeaderError(f"the JPEG has a corrupt segment length at byte {pos}")
        if marker in JPEG_FRAME_MARKERS:
            if size is not None:
                raise ImageHeaderError("the JPEG has more than one frame header")
            if pos + 9 > len(data):
                break
            height, width = struct.unpack(">HH", data[pos + 5:pos + 9])
            size = (width, height)
        elif marker == JPEG_START_OF_SCAN:
            if size is None:
                raise ImageHeaderError("the JPEG has no frame header before its image data")
            # Entropy-coded data never contains FF D9 or FF DA (an FF there is
            # followed by 00 or a restart marker), so these searches are exact.
            if data.rfind(JPEG_END) < pos + 2 + length:
                raise ImageHeaderError("the JPEG is truncated (no end-of-image marker)")
            scans = data.count(b"\xff\xda", pos)
            if scans > MAX_JPEG_SCANS:
                raise ImageHeaderError(f"the JPEG has {scans} scans, more than the {MAX_JPEG_SCANS} allowed")
            return ImageHeader("JPEG", *size, scans=scans)
        pos += 2 + length
    raise ImageHeaderError("the JPEG is truncated (it ends before its image data)")
