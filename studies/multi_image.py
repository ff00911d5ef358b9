"""One 16-image request against 16 single requests, one client: `python -m studies.multi_image inputfolder`.

Both sides send the same images as JSON over one keep-alive connection to
127.0.0.1, one request at a time. The multi-image request runs its images in
one forward pass on one worker; the single requests are spread by the pool.
Prints images per second and latency (median of --rounds, after one warm-up
round each), against a server it starts (--workers 2) or a running one (--url).
"""

import argparse
import base64
import http.client
import json
import statistics
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

from bench.server_process import ServerProcess


def load_images(folder, count):
    paths = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if not paths:
        raise SystemExit(f"error: no JPEG or PNG images in {folder}")
    return [(f"{i}-{paths[i % len(paths)].stem}", base64.b64encode(paths[i % len(paths)].read_bytes()).decode())
            for i in range(count)]


def post(connection, path, payload):
    body = json.dumps(payload).encode()
    started_s = time.perf_counter()
    connection.request("POST", path, body, {"Content-Type": "application/json"})
    response = connection.getresponse()
    answer = json.loads(response.read())
    if response.status != 200:
        raise RuntimeError(f"{response.status}: {answer}")
    return time.perf_counter() - started_s, answer


def one_request_round(connection, path, images):
    elapsed_s, answer = post(connection, path, {"images": [{"id": i, "image": b64} for i, b64 in images]})
    errors = [entry for entry in answer["results"] if "error" in entry]
    if errors:
        raise RuntimeError(f"images refused: {errors[:2]}")
    return elapsed_s, [elapsed_s]


def single_requests_round(connection, path, images):
    latencies = [post(connection, path, {"id": i, "image": b64})[0] for i, b64 in images]
    return sum(latencies), latencies


def measure(url, images, rounds):
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=120)
    rows = {}
    for name, run_round in (("1 request of N images", one_request_round), ("N single requests", single_requests_round)):
        run_round(connection, parts.path, images)  # warm-up
        results = [run_round(connection, parts.path, images) for _ in range(rounds)]
        total_s = statistics.median(total for total, _ in results)
        latency_s = statistics.median(latency for _, latencies in results for latency in latencies)
        rows[name] = (len(images) / total_s, total_s * 1000, latency_s * 1000)
    connection.close()
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m studies.multi_image", description=__doc__.split("\n\n")[0])
    parser.add_argument("folder")
    parser.add_argument("--url", help="a running server's /api/ URL; default: start one with --workers")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    images = load_images(args.folder, args.images)
    if args.url:
        rows = measure(args.url, images, args.rounds)
    else:
        with ServerProcess("--workers", str(args.workers)) as server:
            rows = measure(server.api_url, images, args.rounds)
    print(f"N = {len(images)} images, 1 client, median of {args.rounds} rounds")
    print(f"{'':24}{'img/s':>8}{'round ms':>10}{'latency ms':>12}")
    for name, (images_per_s, total_ms, latency_ms) in rows.items():
        print(f"{name:24}{images_per_s:>8.1f}{total_ms:>10.0f}{latency_ms:>12.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
