"""Read from an image's header what decoding it will cost, without decoding it.

This runs before any decode so that a tiny file which claims to be enormous
(a "decompression bomb") is refused before OpenCV allocates its pixels, so
that a file cut short is refused instead of being decoded half-grey, and so
that the decode budget can price the image by what its decoder will do: a
PNG by its bit depth, colour type and interlacing (and the compressed text
libpng inflates on the way), a JPEG by its coding (baseline, progressive,
lossless), its size in bytes and the 8x8 blocks its scans walk.
"""

import re
import struct
import zlib
from dataclasses import dataclass

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_END_CHUNK = b"IEND\xaeB`\x82"
# Colour type -> (name, the bit depths the PNG specification allows it).
PNG_COLOUR_TYPES = {0: ("gray", (1, 2, 4, 8, 16)), 2: ("RGB", (8, 16)), 3: ("palette", (1, 2, 4, 8)),
                    4: ("gray+alpha", (8, 16)), 6: ("RGBA", (8, 16))}
# Chunks whose compressed payload libpng inflates while OpenCV reads the header, whatever
# the pixels: 200 zTXt chunks of 7 KB (each 7 MB of zeros) kept a decode busy for 6 s.
PNG_COMPRESSED_CHUNKS = (b"zTXt", b"iTXt", b"iCCP")
PNG_COMPRESSED_CHUNK_NAMES = re.compile(b"|".join(PNG_COMPRESSED_CHUNKS))
# Real files carry a handful (a comment, a profile); the cap keeps finding them a few
# C-speed searches, however many times the names appear in a 20 MB body.
MAX_PNG_COMPRESSED_CHUNKS = 64
JPEG_START = b"\xff\xd8\xff"
JPEG_END = b"\xff\xd9"
# Start-of-frame markers carry the dimensions; C4, C8 and CC are other segments.
JPEG_FRAME_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
# The Huffman-coded frames, by how they decode: C1 (extended sequential) decodes like a
# baseline C0. Arithmetic coding (C9-CB) and hierarchical frames (C5-C7, CD-CF) are
# refused: no camera or browser writes them, and arithmetic decoding makes up every block
# of a file of a few hundred bytes at 2.5-8 ns a pixel (up to 0.3 s at 40 MP).
JPEG_CODINGS = {0xC0: "baseline", 0xC1: "baseline", 0xC2: "progressive", 0xC3: "lossless"}
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
    width_px: int
    height_px: int
    file_bytes: int = 0  # the whole file: a JPEG's entropy decoding reads every byte
    scans: int = 1  # passes over the whole image a decoder makes: a progressive JPEG's scans
    # JPEG only
    coding: str = ""  # "baseline", "progressive" or "lossless"
    block_scans: int = 0  # 8x8 coefficient blocks walked, summed over the scans
    components: int = 0  # 1 gray, 3 YCbCr, 4 CMYK (which OpenCV converts to BGR itself, slowly)
    # PNG only
    bit_depth: int = 0  # bits per sample
    colour_type: str = ""  # "gray", "gray+alpha", "RGB", "RGBA" or "palette"
    interlaced: bool = False  # Adam7: seven passes, each unfiltered and scattered on its own
    compressed_chunk_bytes: tuple = ()  # payload size of each zTXt, iTXt and iCCP chunk libpng inflates

    @property
    def pixels(self):
        return self.width_px * self.height_px


def read_header(data):
    """Return the ImageHeader of a JPEG or PNG, or raise ImageHeaderError saying why not."""
    if data.startswith(PNG_SIGNATURE):
        header = _read_png(data)
    elif data.startswith(JPEG_START):
        header = _read_jpeg(data)
    else:
        raise ImageHeaderError("the image is neither a JPEG nor a PNG")
    if header.width_px == 0 or header.height_px == 0:
        raise ImageHeaderError(f"the {header.format} header gives a zero dimension")
    return header


def _read_png(data):
    if len(data) < 33 or data[12:16] != b"IHDR":
        raise ImageHeaderError("the PNG has no IHDR header chunk")
    width, height, bit_depth, colour_type, _, _, interlace = struct.unpack(">IIBBBBB", data[16:29])
    if colour_type not in PNG_COLOUR_TYPES or bit_depth not in PNG_COLOUR_TYPES[colour_type][1]:
        raise ImageHeaderError(f"the PNG header gives bit depth {bit_depth} with colour type {colour_type}, "
                               "which the PNG specification does not allow")
    if interlace not in (0, 1):
        raise ImageHeaderError(f"the PNG header gives an unknown interlace method {interlace}")
    if data.rfind(PNG_END_CHUNK) < 24:
        raise ImageHeaderError("the PNG is truncated (no IEND chunk)")
    return ImageHeader("PNG", width, height, file_bytes=len(data), bit_depth=bit_depth,
                       colour_type=PNG_COLOUR_TYPES[colour_type][0], interlaced=bool(interlace),
                       compressed_chunk_bytes=_png_compressed_chunk_bytes(data))


def _png_compressed_chunk_bytes(data):
    """Payload sizes of the zTXt, iTXt and iCCP chunks libpng will accept (their CRC holds).

    The names are found by searching, not by walking every chunk: a body of millions of
    tiny chunks would make a walk in Python cost seconds. A name that is not a chunk
    (a chance match inside compressed pixels) fails its CRC and is left out, as libpng
    leaves out a chunk whose CRC fails.
    """
    found = sum(data.count(name, 33) for name in PNG_COMPRESSED_CHUNKS)
    if found > MAX_PNG_COMPRESSED_CHUNKS:
        raise ImageHeaderError(f"the PNG has {found} compressed text or profile chunks (zTXt, iTXt, iCCP), "
                               f"more than the {MAX_PNG_COMPRESSED_CHUNKS} allowed")
    sizes = []
    for match in PNG_COMPRESSED_CHUNK_NAMES.finditer(data, 33):
        start = match.start()
        (length,) = struct.unpack(">I", data[start - 4:start])
        end = start + 4 + length
        if end + 4 <= len(data) and zlib.crc32(data[start:end]) == struct.unpack(">I", data[end:end + 4])[0]:
            sizes.append(length)
    return tuple(sizes)


def _read_jpeg(data):
    frame = None
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
            if frame is not None:
                raise ImageHeaderError("the JPEG has more than one frame header")
            if pos + 10 > len(data):
                break
            frame = _JpegFrame.read(data, pos, marker)
        elif marker == JPEG_START_OF_SCAN:
            if frame is None:
                raise ImageHeaderError("the JPEG has no frame header before its image data")
            # Entropy-coded data never contains FF D9 or FF DA (an FF there is
            # followed by 00 or a restart marker), so these searches are exact.
            if data.rfind(JPEG_END) < pos + 2 + length:
                raise ImageHeaderError("the JPEG is truncated (no end-of-image marker)")
            scans = data.count(b"\xff\xda", pos)
            if scans > MAX_JPEG_SCANS:
                raise ImageHeaderError(f"the JPEG has {scans} scans, more than the {MAX_JPEG_SCANS} allowed")
            return ImageHeader("JPEG", frame.width_px, frame.height_px, file_bytes=len(data), scans=scans,
                               coding=frame.coding, block_scans=frame.block_scans(data, pos),
                               components=len(frame.sampling))
        pos += 2 + length
    raise ImageHeaderError("the JPEG is truncated (it ends before its image data)")


@dataclass(frozen=True)
class _JpegFrame:
    """What a JPEG's start-of-frame segment says: size, coding and each component's sampling."""

    width_px: int
    height_px: int
    coding: str
    sampling: dict  # component id -> (horizontal, vertical) sampling factor, 1-4 each

    @classmethod
    def read(cls, data, pos, marker):
        height, width, count = struct.unpack(">HHB", data[pos + 5:pos + 10])
        if marker not in JPEG_CODINGS:
            kind = "arithmetic coding" if marker in (0xC9, 0xCA, 0xCB) else "hierarchical coding"
            raise ImageHeaderError(f"the JPEG uses {kind} (frame type 0x{marker:02X}), which this server does "
                                   "not decode; save it as an ordinary (baseline or progressive) JPEG")
        fields = data[pos + 10:pos + 10 + 3 * count]
        if count == 0 or len(fields) < 3 * count:
            raise ImageHeaderError("the JPEG's frame header lists no components or is cut short")
        sampling = {fields[i]: (fields[i + 1] >> 4, fields[i + 1] & 0x0F) for i in range(0, 3 * count, 3)}
        if len(sampling) != count:  # the blocks would be counted for fewer components than are decoded
            raise ImageHeaderError("the JPEG's frame header lists a component twice")
        if not all(1 <= h <= 4 and 1 <= v <= 4 for h, v in sampling.values()):
            raise ImageHeaderError("the JPEG's frame header gives a sampling factor outside 1-4")
        return cls(width, height, JPEG_CODINGS[marker], sampling)

    def component_blocks(self, component):
        """8x8 blocks of one component: its own size (the frame's, scaled by its sampling), rounded up."""
        h_max = max(h for h, _ in self.sampling.values())
        v_max = max(v for _, v in self.sampling.values())
        h, v = self.sampling[component]
        return -(-(-(-self.width_px * h // h_max)) // 8) * -(-(-(-self.height_px * v // v_max)) // 8)

    def interleaved_blocks(self, components):
        """8x8 blocks of a scan over several components: whole MCUs, each h x v blocks of each."""
        h_max = max(h for h, _ in self.sampling.values())
        v_max = max(v for _, v in self.sampling.values())
        mcus = -(-self.width_px // (8 * h_max)) * -(-self.height_px // (8 * v_max))
        return mcus * sum(self.sampling[c][0] * self.sampling[c][1] for c in components)

    def block_scans(self, data, first_scan):
        """The blocks every scan from first_scan on walks, summed.

        A scan header this cannot read (or an FF DA inside a segment between scans)
        is counted as a scan over every component: never less than the decoder does.
        """
        total, pos = 0, first_scan
        while pos >= 0:
            components = tuple(data[pos + 5:pos + 5 + 2 * data[pos + 4]:2]) if pos + 5 <= len(data) else ()
            if len(components) == 1 and components[0] in self.sampling:
                total += self.component_blocks(components[0])  # non-interleaved: no MCU padding
            elif components and all(c in self.sampling for c in components):
                total += self.interleaved_blocks(components)
            else:
                total += self.interleaved_blocks(tuple(self.sampling))
            pos = data.find(b"\xff\xda", pos + 2)
        return total
