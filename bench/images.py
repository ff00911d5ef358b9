"""The images a run sends: found in a folder and base64-encoded once, before any clock starts."""

import base64
from dataclasses import dataclass
from pathlib import Path

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


class ImageFolderError(Exception):
    """The folder is missing or holds no image; the message says which."""


@dataclass(frozen=True)
class Image:
    name: str
    b64: bytes  # ASCII base64 of the file, ready to splice into a JSON body


def load_folder(folder):
    """Return the JPEG and PNG images in folder (not its subfolders), sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        what = "is not a folder" if folder.exists() else "does not exist"
        raise ImageFolderError(f"image folder {folder} {what}")
    paths = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise ImageFolderError(
            f"no JPEG or PNG images in {folder} (looked for {', '.join('*' + s for s in IMAGE_SUFFIXES)})")
    return [Image(p.name, base64.b64encode(p.read_bytes())) for p in paths]
