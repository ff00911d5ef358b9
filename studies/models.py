"""Each model's cost on this machine: a worker's memory, the load time, the forward pass per image.

`python -m studies.models [--rounds 5] [--images inputfolder]`, one
measurement at a time:

- Memory: for each model alone and for all of them together, a fresh
  one-worker server (`--workers 1 --cv-threads 1 --models SET`) on
  127.0.0.1; the worker's resident memory (VmRSS) and its peak (VmHWM) once
  it is ready (every model loaded and run once), and again after it has
  answered every sample image twice.
- Time: for each model and size variant, a fresh process loads it as a
  worker's boot does (the load time includes the first forward pass, where
  OpenCV builds the network) and runs every sample image through the
  worker's own path (detserve.worker.pipeline) at one OpenCV thread, as a
  worker under load runs; the figure is the forward pass and post-processing
  alone (the answer's inference time), the median of the rounds per image,
  then the median over the images; and the same with each image's fastest
  round, the figure least disturbed by other work on a shared machine.
"""

import argparse
import concurrent.futures
import multiprocessing
import statistics
import sys
import time
from pathlib import Path

from bench.proc_stats import peak_rss_mb, rss_mb
from bench.server_process import REPO_ROOT, ServerProcess

MEMORY_SETS = ["yolov3-tiny", "yolov4-tiny", "yolov3-tiny,yolov4-tiny", "yolov4-tiny@320", "yolov3-tiny@608"]
TIMED_MODELS = ["yolov3-tiny", "yolov4-tiny", "yolov4-tiny@320", "yolov3-tiny@608"]
ANSWERS_PER_IMAGE = 2


def sample_jpegs(folder):
    return [p.read_bytes() for p in sorted(Path(folder).iterdir()) if p.suffix.lower() in (".jpg", ".jpeg")]


def worker_memory(models, images):
    """(RSS MB ready, peak MB ready, RSS MB after answering, peak MB after, server start s) of a fresh worker."""
    with ServerProcess("--workers", "1", "--cv-threads", "1", "--models", models) as server:
        (worker_pid,) = server.worker_pids()
        ready = rss_mb(worker_pid), peak_rss_mb(worker_pid)
        for _ in range(ANSWERS_PER_IMAGE):
            for data in images:
                status, _, payload = server.request("/api/", data, headers={"Content-Type": "image/jpeg"})
                if status != 200:
                    raise RuntimeError(f"the server answered {status}: {payload}")
        return (*ready, rss_mb(worker_pid), peak_rss_mb(worker_pid), server.startup_s)


def time_model(model, images, rounds):
    """(load s, median forward ms per image, fastest forward ms per image) of one model, in this (fresh) process."""
    import cv2  # imported before the clock starts: the library's own start is no model's load

    from detserve.worker.pipeline import Pipeline, load_detector

    cv2.setNumThreads(1)
    started_s = time.perf_counter()
    detector = load_detector(model=model)
    load_s = time.perf_counter() - started_s
    pipeline = Pipeline(detector, cv_threads=1)
    per_image_ms, fastest_ms = [], []
    for data in images:
        timings_ms = []
        for _ in range(rounds):
            answer = pipeline.run_one(data, "image/jpeg")
            if answer.status != 200:
                raise RuntimeError(f"{model}: {answer.status} {answer.error}")
            timings_ms.append(answer.inference_s * 1000)
        per_image_ms.append(statistics.median(timings_ms))
        fastest_ms.append(min(timings_ms))
    return load_s, statistics.median(per_image_ms), statistics.median(fastest_ms)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m studies.models", description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", default=str(REPO_ROOT / "inputfolder"), help="folder of sample JPEGs")
    parser.add_argument("--rounds", type=int, default=5, help="forward passes per image and model (default 5)")
    args = parser.parse_args(argv)
    images = sample_jpegs(args.images)
    if not images:
        sys.exit(f"no JPEG images in {args.images}")

    print(f"worker memory, MB (one worker, --cv-threads 1; 'after': {ANSWERS_PER_IMAGE} answers "
          f"per sample image of {len(images)})")
    print(f"{'--models':<26}{'RSS ready':>10}{'peak ready':>11}{'RSS after':>10}{'peak after':>11}{'start s':>9}")
    for models in MEMORY_SETS:
        rss_ready, peak_ready, rss_after, peak_after, start_s = worker_memory(models, images)
        print(f"{models:<26}{rss_ready:>10.0f}{peak_ready:>11.0f}{rss_after:>10.0f}{peak_after:>11.0f}{start_s:>9.1f}")

    print(f"\nload and forward pass, one OpenCV thread, median of {args.rounds} rounds per image, "
          f"median over {len(images)} images")
    print(f"{'model':<20}{'load s':>8}{'ms/image':>10}{'fastest':>9}")
    context = multiprocessing.get_context("spawn")
    for model in TIMED_MODELS:
        # A fresh process per model: what one model loaded or allocated cannot speed up the next.
        with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
            load_s, forward_ms, fastest_ms = pool.submit(time_model, model, images, args.rounds).result()
        print(f"{model:<20}{load_s:>8.2f}{forward_ms:>10.1f}{fastest_ms:>9.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
