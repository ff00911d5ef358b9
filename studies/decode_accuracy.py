"""What reduced-scale decoding changes: detections with --decode-reduction auto against off.

`python -m studies.decode_accuracy FOLDER [FOLDER ...] [--upscale 4032x3024 | --no-upscale]`
sends every JPEG and PNG of the folders through a worker's own path
(detserve.worker.pipeline) in this process, one OpenCV thread, once with each
setting. Images narrower and lower than --upscale are first resized to it and
encoded as JPEG q90, the way a phone photo arrives; larger ones are used as
they are. --confidence below the served 0.3 compares more detections (the
weak ones are where a changed decode shows first).

The full decode (`off`) is the reference. A detection is matched when the
other side has one of the same label with IoU >= 0.5 (greedy, best IoU
first). Printed: detections matched, median IoU of the matches, the largest
confidence change, the detections only one side found (with their
confidences), and for each setting the median time per image the worker
spends outside the forward pass (parsing, decoding, resizing to the
network's input, the answer): where the decode's cost shows.
"""

import argparse
import statistics
import sys
from pathlib import Path

import cv2
import numpy as np

from bench.upscale import PHONE_PHOTO_SIZE, parse_size
from detserve.model_files import DEFAULT_MODEL_DIR
from detserve.worker.pipeline import Pipeline, load_detector

MATCH_IOU = 0.5
JPEG_QUALITY = 90
MAX_PIXELS = 10**9  # measure whatever is given; the server's own cap is not the question here
REPEATS = 3  # the median of a few runs per image steadies the timing on a shared CPU
SETTINGS = ("off", "auto")


def iou(box_a, box_b):
    ax, ay, aw, ah = box_a
    bx, by, bw, bh = box_b
    overlap = max(0, min(ax + aw, bx + bw) - max(ax, bx)) * max(0, min(ay + ah, by + bh) - max(ay, by))
    union = aw * ah + bw * bh - overlap
    return overlap / union if union else 0.0


def load_images(folders, upscale_px, pipeline):
    """[(name, encoded bytes)]: every JPEG and PNG, small ones upscaled to upscale_px as JPEG."""
    images = []
    for folder in folders:
        for path in sorted(Path(folder).iterdir()):
            if path.suffix.lower() not in (".jpg", ".jpeg", ".png"):
                continue
            data = path.read_bytes()
            width, height = pipeline.image_facts(data).size_px
            if upscale_px and width < upscale_px[0] and height < upscale_px[1]:
                image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
                resized = cv2.resize(image, upscale_px, interpolation=cv2.INTER_LINEAR)
                data = cv2.imencode(".jpg", resized, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])[1].tobytes()
            images.append((path.name, data))
    return images


def run_setting(pipeline, data, confidence):
    """(detections, median ms outside the forward pass) of one image through one pipeline."""
    media_type = "image/" + pipeline.image_facts(data).format.lower()
    answers = [pipeline.run_one(data, media_type, {"confidence": confidence}) for _ in range(REPEATS)]
    if answers[0].status != 200:
        sys.exit(f"the worker refused an image ({answers[0].status}): {answers[0].error}")
    outside_ms = [(answer.elapsed_s - answer.inference_s) * 1000 for answer in answers]
    return answers[0].detections, statistics.median(outside_ms)


def match(reduced, full):
    """Greedy same-label matching by IoU: ([(iou, full det, reduced det)], only full, only reduced)."""
    pairs = sorted(((iou(f.bbox, r.bbox), i, j) for i, f in enumerate(full) for j, r in enumerate(reduced)
                    if f.label == r.label), reverse=True)
    used_full, used_reduced, matched = set(), set(), []
    for overlap, i, j in pairs:
        if overlap < MATCH_IOU or i in used_full or j in used_reduced:
            continue
        used_full.add(i)
        used_reduced.add(j)
        matched.append((overlap, full[i], reduced[j]))
    only_full = [f for i, f in enumerate(full) if i not in used_full]
    only_reduced = [r for j, r in enumerate(reduced) if j not in used_reduced]
    return matched, only_full, only_reduced


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m studies.decode_accuracy", description=__doc__.split("\n")[0])
    parser.add_argument("folders", nargs="+", help="folders of JPEG and PNG images")
    parser.add_argument("--upscale", type=parse_size, default=PHONE_PHOTO_SIZE, metavar="WxH",
                        help=f"resize smaller images to WxH, JPEG q90 (default {PHONE_PHOTO_SIZE})")
    parser.add_argument("--no-upscale", action="store_true", help="measure every image at its own size")
    parser.add_argument("--confidence", type=float, default=0.3, help="detection threshold (default 0.3)")
    parser.add_argument("--model-dir", default=str(DEFAULT_MODEL_DIR))
    args = parser.parse_args(argv)
    upscale_px = None if args.no_upscale else args.upscale

    detector = load_detector(args.model_dir)  # one model; each setting is a worker with that flag
    pipelines = {setting: Pipeline(detector, decode_reduction=setting, max_pixels=MAX_PIXELS, cv_threads=1)
                 for setting in SETTINGS}
    images = load_images(args.folders, upscale_px, pipelines["off"])
    if not images:
        sys.exit("no JPEG or PNG images in " + ", ".join(args.folders))

    all_matched, all_only_full, all_only_reduced = [], [], []
    outside_ms = {setting: [] for setting in SETTINGS}
    full_count = reduced_count = 0
    print(f"{'image':<44} {'size':>10} {'factor':>6} {'off':>4} {'auto':>4} {'matched':>7} "
          f"{'off/auto ms':>19}")
    for name, data in images:
        facts = pipelines["auto"].image_facts(data)
        full, full_ms = run_setting(pipelines["off"], data, args.confidence)
        reduced, reduced_ms = run_setting(pipelines["auto"], data, args.confidence)
        outside_ms["off"].append(full_ms)
        outside_ms["auto"].append(reduced_ms)
        matched, only_full, only_reduced = match(reduced, full)
        all_matched += matched
        all_only_full += [(name, d) for d in only_full]
        all_only_reduced += [(name, d) for d in only_reduced]
        full_count += len(full)
        reduced_count += len(reduced)
        width, height = facts.size_px
        print(f"{name[:44]:<44} {width}x{height:<5} {'1/' + str(facts.decode_factor):>6} {len(full):>4} "
              f"{len(reduced):>4} {len(matched):>7} {full_ms:>9.1f} / {reduced_ms:<7.1f}")

    print()
    print(f"images: {len(images)}; confidence > {args.confidence}; detections: off {full_count}, auto {reduced_count}")
    print(f"matched (same label, IoU >= {MATCH_IOU}): {len(all_matched)} of {full_count} full-decode detections")
    if all_matched:
        ious = [overlap for overlap, _, _ in all_matched]
        confidence_changes = [abs(f.confidence - r.confidence) for _, f, r in all_matched]
        print(f"median IoU {statistics.median(ious):.3f} (lowest {min(ious):.3f}); "
              f"largest confidence change {max(confidence_changes):.3f}")
    for side, only in (("off", all_only_full), ("auto", all_only_reduced)):
        listed = ", ".join(f"{name}: {d.label} {d.confidence:.2f}" for name, d in only) or "none"
        print(f"only {side} found: {len(only)} ({listed})")
    print(f"outside the forward pass (parse, decode, resize, answer), 1 thread, median ms per image: "
          f"off {statistics.median(outside_ms['off']):.1f}, auto {statistics.median(outside_ms['auto']):.1f}")


if __name__ == "__main__":
    main()
