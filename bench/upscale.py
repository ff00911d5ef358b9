"""Large test images made from small ones: every JPEG and PNG of a folder, resized
to one size (4032x3024 is a 12 MP phone photo) and written as JPEG.

`python -m bench images SRC DEST --upscale 4032x3024 [--quality 90]`

The output is deterministic (same source and options, same bytes), so two
runs of a benchmark send the same bodies. This is the only part of bench that
needs OpenCV; it is imported only when large images are asked for.
"""

import argparse
import re
from dataclasses import dataclass
from pathlib import Path

from bench.images import IMAGE_SUFFIXES, ImageFolderError

PHONE_PHOTO_SIZE = "4032x3024"  # a 12 MP phone camera, landscape
DEFAULT_JPEG_QUALITY = 90
_SIZE = re.compile(r"^(\d+)x(\d+)$")


@dataclass(frozen=True)
class WrittenImage:
    path: Path
    width_px: int
    height_px: int
    size_bytes: int


def parse_size(text):
    """'4032x3024' -> (4032, 3024): the argparse type of every WxH flag, here and in the studies.

    A bad size raises ArgumentTypeError, whose message argparse prints as it is.
    """
    match = _SIZE.match(text.strip().lower())
    if not match or int(match.group(1)) < 1 or int(match.group(2)) < 1:
        raise argparse.ArgumentTypeError(f"size {text!r} is not WIDTHxHEIGHT in pixels, e.g. {PHONE_PHOTO_SIZE}")
    return int(match.group(1)), int(match.group(2))


def upscale_folder(src, dest, width_px, height_px, quality=DEFAULT_JPEG_QUALITY):
    """Write every JPEG and PNG of src (not its subfolders), resized to width_px x height_px,
    as DEST/<stem>.jpg; return the WrittenImage list, sorted by name."""
    import cv2  # only here: the rest of bench runs without OpenCV

    src, dest = Path(src), Path(dest)
    if not src.is_dir():
        raise ImageFolderError(f"image folder {src} {'is not a folder' if src.exists() else 'does not exist'}")
    sources = sorted(p for p in src.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not sources:
        raise ImageFolderError(f"no JPEG or PNG images in {src}")
    dest.mkdir(parents=True, exist_ok=True)
    written = []
    for source in sources:
        image = cv2.imread(str(source), cv2.IMREAD_COLOR)
        if image is None:
            raise ImageFolderError(f"{source} cannot be decoded as an image")
        # Cubic rather than linear: fewer block-shaped edges for the detector to see at 12 MP.
        resized = cv2.resize(image, (width_px, height_px), interpolation=cv2.INTER_CUBIC)
        ok, encoded = cv2.imencode(".jpg", resized, [cv2.IMWRITE_JPEG_QUALITY, quality])
        if not ok:
            raise RuntimeError(f"OpenCV could not encode {source.name} as JPEG")
        target = dest / (source.stem + ".jpg")
        target.write_bytes(encoded.tobytes())
        written.append(WrittenImage(target, width_px, height_px, target.stat().st_size))
    return written


def describe(written):
    """What was written, for a person: count, size in pixels, file sizes."""
    sizes = [w.size_bytes for w in written]
    first = written[0]
    return (f"wrote {len(written)} JPEG image{'s' if len(written) != 1 else ''} of "
            f"{first.width_px}x{first.height_px} px to {first.path.parent}: "
            f"{min(sizes) / 1e6:.2f}-{max(sizes) / 1e6:.2f} MB each, {sum(sizes) / 1e6:.1f} MB in all")
