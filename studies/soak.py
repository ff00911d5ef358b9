"""The soak benchmark: thousands of requests, and the resident memory of every process.

`python -m studies.soak FOLDER` is not a test: it reports. It starts detserve on
127.0.0.1, sends --requests images (every sample, round and round) from
--threads clients, and prints the resident set size of the front end and of
each worker at start (after one warm-up pass), at every quarter, and at the
end. Memory that keeps growing from quarter to quarter is a leak; a step at
the first forward pass is OpenCV allocating its buffers once.
"""

import argparse
import sys

from bench.images import load_folder
from bench.loadgen import run_load
from bench.proc_stats import rss_mb
from bench.server_process import ServerProcess

CHECKPOINTS = 4


def snapshot(server):
    front_end = server.proc.pid
    return {"front end": rss_mb(front_end),
            **{f"worker {i}": rss_mb(pid) for i, pid in enumerate(sorted(server.worker_pids()))}}


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m studies.soak", description=__doc__.split("\n\n")[0])
    parser.add_argument("folder")
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    images = load_folder(args.folder)
    rows, errors, sent = [], 0, 0
    with ServerProcess("--workers", str(args.workers)) as server:
        run_load(images, server.api_url, args.threads, repeat=1)  # every image once: buffers allocated
        rows.append(("start", 0, snapshot(server)))
        per_checkpoint = max(len(images), args.requests // CHECKPOINTS)
        for checkpoint in range(1, CHECKPOINTS + 1):
            summary = run_load(images, server.api_url, args.threads, repeat=max(1, per_checkpoint // len(images)))
            sent += summary.requests
            errors += summary.errors
            rows.append((f"{checkpoint}/{CHECKPOINTS}", sent, snapshot(server)))
    names = list(rows[0][2])
    print(f"resident memory (MB), {args.workers} workers, {args.threads} client threads, {errors} errors")
    print(f"{'point':>6}  {'requests':>8}  " + "  ".join(f"{name:>10}" for name in names))
    for label, count, memory in rows:
        print(f"{label:>6}  {count:>8}  " + "  ".join(f"{memory.get(name, 0):>10.1f}" for name in names))
    growth = {name: rows[-1][2][name] - rows[1][2][name] for name in names}
    print("growth from the first quarter to the end (MB): "
          + ", ".join(f"{name} {delta:+.1f}" for name, delta in growth.items()))
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
