"""Frigate's DeepStack detector against detserve: `python -m studies.frigate_latency inputfolder`.

Frigate's ``deepstack`` detector posts each region it wants looked at as a
320x320 RGB JPEG (Pillow's default quality, 75) to /v1/vision/detection with
``requests.post(url, files={"image": ...}, data={"api_key": ...},
timeout=api_timeout)``, a new connection each time, and gives up on an answer
after ``api_timeout`` (0.1 s by default). Each camera here is one such client:
it sends --fps requests a second (0: back to back, the most a camera's region
queue can ask) for --duration-s, at 1, 2 and 4 cameras in turn, against a
server it starts (--workers 2) or a running one (--url).

Prints, per number of cameras: requests sent, the share answered (200) within
100 ms, the share that timed out (or failed to connect) at --timeout-s, the median and 95th percentile latency of all requests (a request
that timed out counts as slower than every answer), and the median of the
server's own time (Server-Timing's total) for the requests it answered.
"""

import argparse
import math
import os
import statistics
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import requests

from bench.server_process import ServerProcess

FRIGATE_SIDE_PX = 320  # Frigate's default model input, the size of each region it sends
PILLOW_JPEG_QUALITY = 75  # what Frigate's plugin gets from Image.save(format="JPEG")
WITHIN_S = 0.1  # Frigate's default api_timeout


def frigate_jpegs(folder):
    """Each JPEG or PNG of folder as Frigate would send a region of it: 320x320, a JPEG of quality 75."""
    paths = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if not paths:
        raise SystemExit(f"error: no JPEG or PNG images in {folder}")
    jpegs = []
    for path in paths:
        image = cv2.imdecode(np.frombuffer(path.read_bytes(), np.uint8), cv2.IMREAD_COLOR)
        square = cv2.resize(image, (FRIGATE_SIDE_PX, FRIGATE_SIDE_PX), interpolation=cv2.INTER_AREA)
        jpegs.append(cv2.imencode(".jpg", square, [cv2.IMWRITE_JPEG_QUALITY, PILLOW_JPEG_QUALITY])[1].tobytes())
    return jpegs


def post_like_frigate(url, jpeg, timeout_s):
    """(seconds, answered with a 200 within 100 ms, the server's own ms or None): one request as Frigate sends it."""
    started_s = time.perf_counter()
    try:
        response = requests.post(url, data={"api_key": ""}, files={"image": jpeg}, timeout=timeout_s)
        ok = response.status_code == 200 and response.json().get("success") is True
    except requests.exceptions.RequestException:  # Frigate logs it and has no detections for the frame
        return math.inf, False, None
    elapsed_s = time.perf_counter() - started_s
    return elapsed_s, ok and elapsed_s <= WITHIN_S, server_total_ms(response.headers.get("Server-Timing", ""))


def server_total_ms(server_timing):
    """The total;dur= of a Server-Timing header: the server's time from the request's head to its answer."""
    for entry in server_timing.split(","):
        name, _, duration = entry.strip().partition(";dur=")
        if name == "total":
            return float(duration)
    return None


def camera(url, jpegs, index, fps, stop_at_s, timeout_s, results):
    period_s = 1 / fps if fps > 0 else 0.0
    next_s, sent = time.perf_counter(), 0
    while time.perf_counter() < stop_at_s:
        results.append(post_like_frigate(url, jpegs[(index + sent) % len(jpegs)], timeout_s))
        sent += 1
        next_s += period_s
        time.sleep(max(0.0, next_s - time.perf_counter()))


def run_cameras(url, jpegs, cameras, fps, duration_s, timeout_s):
    results = []  # list.append is atomic: the camera threads share it
    stop_at_s = time.perf_counter() + duration_s
    threads = [threading.Thread(target=camera, args=(url, jpegs, i, fps, stop_at_s, timeout_s, results))
               for i in range(cameras)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def percentile_ms(latencies_s, fraction):
    ordered = sorted(latencies_s)
    value = ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]
    return f"{value * 1000:.0f} ms" if math.isfinite(value) else f">{WITHIN_S * 1000:.0f} ms"


def report(cameras, results):
    answered = sum(1 for _, ok, _ in results if ok)
    failed = sum(1 for seconds, _, _ in results if not math.isfinite(seconds))
    latencies = [seconds for seconds, _, _ in results]
    server_ms = [ms for _, _, ms in results if ms is not None]
    in_server = f"{statistics.median(server_ms):8.0f} ms" if server_ms else "       -"
    print(f"{cameras:7} {len(results):8} {answered / len(results):12.1%} {failed / len(results):9.1%} "
          f"{percentile_ms(latencies, 0.5):>8} {percentile_ms(latencies, 0.95):>8} {in_server}")


def measure(url, jpegs, args):
    for _ in range(4):  # warm-up: the first requests pay for connections and caches
        post_like_frigate(url, jpegs[0], 10)
    print(f"{len(jpegs)} images at {FRIGATE_SIDE_PX}x{FRIGATE_SIDE_PX} ({statistics.mean(map(len, jpegs)) / 1024:.0f} KiB "
          f"mean), {args.fps or 'back-to-back'} requests/s per camera, {args.duration_s:g} s each, "
          f"timeout {args.timeout_s:g} s; load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    print("cameras requests within 100ms timed out      p50      p95  server p50")
    for cameras in args.cameras:
        report(cameras, run_cameras(url, jpegs, cameras, args.fps, args.duration_s, args.timeout_s))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", help="images to send (each resized to 320x320)")
    parser.add_argument("--url", help="a running server's DeepStack detection URL (default: start one)")
    parser.add_argument("--workers", type=int, default=2, help="workers of the server started here")
    parser.add_argument("--cameras", type=lambda text: [int(n) for n in text.split(",")], default=[1, 2, 4],
                        help="comma-separated numbers of cameras to run in turn")
    parser.add_argument("--fps", type=float, default=5.0,
                        help="requests per second per camera (Frigate's default detect fps); 0: back to back")
    parser.add_argument("--duration-s", type=float, default=8.0, help="seconds per number of cameras")
    parser.add_argument("--timeout-s", type=float, default=WITHIN_S, help="the client's timeout (api_timeout)")
    args = parser.parse_args(argv)
    jpegs = frigate_jpegs(args.folder)
    if args.url:
        measure(args.url, jpegs, args)
        return 0
    with ServerProcess("--workers", str(args.workers)) as server:
        measure(server.url + "/v1/vision/detection", jpegs, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
