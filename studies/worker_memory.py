"""A worker's peak memory by what it is asked: images in one forward pass, and the largest image it admits.

`python -m studies.worker_memory [--models yolov3-tiny,yolov4-tiny] [--max-pixels 16000000]`
(about 70 s), one-worker servers on 127.0.0.1 with one OpenCV thread, as a
pod of one CPU runs them (`--cv-threads 0`: every CPU, as a worker alone on
a larger machine runs); the worker's peak resident memory (VmHWM):

- Forward passes, per model: a fresh server (`--models M --max-images N
  --max-batch N`), the peak once ready, then after one multi-image request of
  N small JPEGs (inputfolder/camera.jpg at 416 x 416, so decoding costs
  nothing): with `--max-batch N` one request of N images is one forward pass
  of N (a request's images run in passes of at most `--max-batch`), and the network's buffers
  grow with N and stay grown. A fresh server for each N of 2, 4, 8 and 16
  (after one single image, N = 1), since a worker that ran smaller passes
  first reuses some of their buffers. The growth over the peak once ready
  is the table each model entry carries (model_files.WorkerMemory).
- The largest image: a fresh server (`--max-pixels P`), the peak after a
  small JPEG, then after the largest square noise PNG P admits, answered as
  JSON and annotated (the largest answer there is); the growth divided by P
  is the decoding working set per pixel detserve.memory_sizing states.
"""

import argparse
import base64
import json
import sys
import urllib.error
import urllib.request

import cv2
import numpy as np

from bench.proc_stats import peak_rss_mb
from bench.server_process import REPO_ROOT, ServerProcess

IMAGES_PER_PASS = (1, 2, 4, 8, 16)
NOISE_PERIOD_PX = 64
MIB = 1 << 20


def small_jpeg():
    return cv2.imencode(".jpg", cv2.resize(cv2.imread(str(REPO_ROOT / "inputfolder" / "camera.jpg")), (416, 416)))[1]


def noise_png(side_px):
    """Noise in every 8x8 block, repeating every 64 px along a row: a 1 MB PNG of 16 MP, a 15 MB JPEG."""
    tile = np.random.default_rng(18).integers(0, 256, (side_px, NOISE_PERIOD_PX, 3), dtype=np.uint8)
    return cv2.imencode(".png", np.tile(tile, (1, side_px // NOISE_PERIOD_PX, 1)), [cv2.IMWRITE_PNG_COMPRESSION, 9])[1]


def post(server, path, body, media_type):
    request = urllib.request.Request(server.url + path, data=body, headers={"Content-Type": media_type})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            response.read()
            return
    except urllib.error.HTTPError as err:
        raise RuntimeError(f"{path}: {err.code} {err.read()[:300]!r}") from None


def forward_pass_peaks(model, cv_threads):
    """The worker's peak MiB once ready, and {N: its peak after one forward pass of N images}.

    A fresh server for each N (after one image first, the ordinary start): a worker that has
    run smaller passes before reuses some of their buffers, so N alone is the worst case.
    """
    image = base64.b64encode(small_jpeg().tobytes()).decode()
    ready_mib, peaks = 0.0, {1: 0.0}
    for count in IMAGES_PER_PASS[1:]:
        with ServerProcess("--workers", "1", "--cv-threads", str(cv_threads), "--max-images", str(count),
                           "--max-batch", str(count), "--models", model) as server:
            (worker,) = server.worker_pids()
            ready_mib = max(ready_mib, peak_rss_mb(worker))
            for images in (1, count):
                body = json.dumps({"images": [{"id": str(i), "image": image} for i in range(images)]}).encode()
                post(server, "/api/", body, "application/json")
                peaks[images] = max(peaks.get(images, 0.0), peak_rss_mb(worker))
    return ready_mib, peaks


def largest_image_peaks(max_pixels, cv_threads):
    """(side px, the worker's peak MiB after a small JPEG, after the noise PNG as JSON, after it annotated)."""
    side_px = int(max_pixels ** 0.5) // NOISE_PERIOD_PX * NOISE_PERIOD_PX
    png = noise_png(side_px).tobytes()
    with ServerProcess("--workers", "1", "--cv-threads", str(cv_threads), "--max-pixels", str(max_pixels)) as server:
        (worker,) = server.worker_pids()
        post(server, "/api/", small_jpeg().tobytes(), "image/jpeg")
        peaks = [peak_rss_mb(worker)]
        for path in ("/api/", "/api/?format=jpeg"):
            post(server, path, png, "image/png")
            peaks.append(peak_rss_mb(worker))
    return (side_px, *peaks)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m studies.worker_memory", description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="yolov3-tiny,yolov4-tiny", help="comma-separated, each measured alone")
    parser.add_argument("--max-pixels", type=int, default=16_000_000, help="the largest image (default: the pod's)")
    parser.add_argument("--cv-threads", type=int, default=1,
                        help="OpenCV threads (default 1, a pod of one CPU; 0: the server's default, every CPU)")
    args = parser.parse_args(argv)
    print(f"--cv-threads {args.cv_threads}: worker peak (VmHWM) MiB once ready and after one forward pass of N images "
          f"(a fresh worker for each N > 1); growth over ready in brackets")
    print(f"{'model':<18}{'ready':>7}" + "".join(f"{'N=' + str(n):>13}" for n in IMAGES_PER_PASS))
    for model in args.models.split(","):
        ready_mib, peaks = forward_pass_peaks(model, args.cv_threads)
        cells = "".join(f"{peaks[n]:>7.0f} ({peaks[n] - ready_mib:>3.0f})" for n in IMAGES_PER_PASS)
        print(f"{model:<18}{ready_mib:>7.0f}{cells}")
    side_px, small_mib, json_mib, annotated_mib = largest_image_peaks(args.max_pixels, args.cv_threads)
    pixels = side_px * side_px
    print(f"\nthe largest image, {side_px} x {side_px} noise PNG (--max-pixels {args.max_pixels}): peak after a small "
          f"JPEG {small_mib:.0f} MiB, after it as JSON {json_mib:.0f} MiB "
          f"({(json_mib - small_mib) * MIB / pixels:.1f} bytes a pixel), annotated {annotated_mib:.0f} MiB "
          f"({(annotated_mib - small_mib) * MIB / pixels:.1f} bytes a pixel)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
