"""Calibration (`python -m detserve.calibrate`): measure what batching buys on this CPU and suggest flags.

For batch sizes 1, 2, 4, 8 it times one forward pass plus post-processing
per batch (median of several rounds, single-threaded as a worker under load
runs), prints the cost per image, and suggests --max-batch and --max-wait-ms.
Waiting for a batch pays only when a bigger batch is clearly cheaper per
image; on a CPU where it is not, the server should never wait.
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import cv2

from .detector import Detector, PostProcessing
from ..config import Config
from ..model_files import DEFAULT_MODEL, DEFAULT_MODEL_DIR, ModelFileError, parse_model_choice, verify

REPO_ROOT = Path(__file__).resolve().parents[2]
BATCH_SIZES = (1, 2, 4, 8)
WORTH_WAITING_GAIN = 0.10  # a batch must be 10% cheaper per image before waiting for it pays
SAME_COST_TOLERANCE = 0.03


def measure(detector, images, batch_sizes=BATCH_SIZES, rounds=5, threads=1):
    """Return {batch size: median ms per image}."""
    cv2.setNumThreads(threads)
    per_image_ms = {}
    for size in batch_sizes:
        batch = [images[i % len(images)] for i in range(size)]
        served = [PostProcessing(Config.confidence, Config.nms)] * size  # the server's defaults
        detector.detect_batch(batch, None, served)  # allocate this shape's buffers before timing
        timings = []
        for _ in range(rounds):
            started = time.perf_counter()
            detector.detect_batch(batch, None, served)
            timings.append((time.perf_counter() - started) * 1000 / size)
        per_image_ms[size] = statistics.median(timings)
    return per_image_ms


def recommend(per_image_ms):
    """(max_batch, max_wait_ms) from measured cost per image."""
    best = min(per_image_ms.values())
    single = per_image_ms[min(per_image_ms)]
    # The largest batch that costs no more per image than the best (within noise):
    # taking what is already queued then never makes anything slower.
    max_batch = max(size for size, cost in per_image_ms.items() if cost <= best * (1 + SAME_COST_TOLERANCE))
    worth_waiting = best < single * (1 - WORTH_WAITING_GAIN)
    # Wait at most about one single-image forward: longer than that, a lone request loses more than a batch gains.
    max_wait_ms = round(single) if worth_waiting else 0
    return max_batch, max_wait_ms


def load_images(folder):
    paths = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    images = [cv2.imread(str(p), cv2.IMREAD_COLOR) for p in paths]
    return [image for image in images if image is not None]


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m detserve.calibrate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", default=str(DEFAULT_MODEL_DIR))
    parser.add_argument("--model", default=DEFAULT_MODEL.name,
                        help="the model to measure, NAME or NAME@SIZE as in --models (default %(default)s)")
    parser.add_argument("--images", default=str(REPO_ROOT / "inputfolder"))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="cv2 threads (1 = a worker under full load)")
    args = parser.parse_args(argv)
    try:
        choice = parse_model_choice(args.model)
    except ValueError as exc:
        parser.error(str(exc))
    try:
        verify(args.model_dir, (choice.model,))
    except ModelFileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    images = load_images(args.images)
    if not images:
        print(f"error: no JPEG or PNG images in {args.images}", file=sys.stderr)
        return 2
    detector = Detector(args.model_dir, choice)
    detector.warm_up()
    per_image_ms = measure(detector, images, rounds=args.rounds, threads=args.threads)
    print(f"{choice.name}; cv2 threads: {args.threads}; median of {args.rounds} rounds")
    print(f"{'batch':>5}  {'ms/image':>9}  {'vs batch 1':>10}")
    for size, cost in per_image_ms.items():
        print(f"{size:>5}  {cost:>9.1f}  {cost / per_image_ms[1]:>9.2f}x")
    max_batch, max_wait_ms = recommend(per_image_ms)
    print(f"suggested: --max-batch {max_batch} --max-wait-ms {max_wait_ms}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
