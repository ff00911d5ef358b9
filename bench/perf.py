"""The performance benchmark: detserve against the raw pipeline ceiling, in one go.

`python -m bench.perf FOLDER` does, per run, on this machine:
1. the ceiling (bench.ceiling): bare processes, no HTTP, no pipes;
2. starts `python -m detserve --workers 2` on 127.0.0.1 and times it to ready;
3. loads it from 1, 2, 4, 8 and 16 client threads for DURATION seconds each;
4. the ceiling again (the run's yardstick is the mean of 1 and 4);
and prints, with medians over --runs: throughput / ceiling at each
concurrency, and the median latency at 1 client / the best single-image
latency. The goals (issue 7): >= 0.95 at 8 clients, <= 1.25 at 1 client.
The client runs on the same cores as the server, as in any one-machine test.
"""

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from bench import ceiling as ceiling_bench
from bench.images import load_folder
from bench.loadgen import run_load
from bench.server_process import REPO_ROOT, ServerProcess

THROUGHPUT_GOAL = 0.95
LATENCY_GOAL = 1.25


def one_run(folder, clients, duration_s, workers, server_args, ceiling_duration_s):
    model_dir = str(REPO_ROOT / "yolo_tiny_configs")
    # The ceiling is measured before and after the server, and their mean is the
    # yardstick: a shared machine's speed drifts within a run, and one side of
    # the ratio should not get the fast minute and the other the slow one.
    before = ceiling_bench.measure(folder, model_dir, duration_s=ceiling_duration_s)
    images = load_folder(folder)
    loads = {}
    with ServerProcess("--workers", str(workers), *server_args) as server:
        for count in clients:
            loads[count] = run_load(images, server.api_url, count, duration_s=duration_s, warmup=count)
        startup_s = server.startup_s
    after = ceiling_bench.measure(folder, model_dir, duration_s=ceiling_duration_s)
    return {
        "ceiling_img_per_s": statistics.mean([before.throughput_img_per_s, after.throughput_img_per_s]),
        "ceiling_before_after_img_per_s": [before.throughput_img_per_s, after.throughput_img_per_s],
        "single_image_latency_ms": statistics.mean([before.single_image_latency_ms, after.single_image_latency_ms]),
        "startup_s": startup_s,
        "clients": {
            count: {"img_per_s": s.throughput_img_per_s, "p50_ms": s.latency_p50_ms, "p99_ms": s.latency_p99_ms,
                    "errors": s.errors}
            for count, s in loads.items()
        },
    }


def medians(runs, clients):
    def med(values):
        return statistics.median(values)
    return {
        "ceiling_img_per_s": med([r["ceiling_img_per_s"] for r in runs]),
        "single_image_latency_ms": med([r["single_image_latency_ms"] for r in runs]),
        "startup_s": med([r["startup_s"] for r in runs]),
        "clients": {c: {key: med([r["clients"][c][key] for r in runs]) for key in ("img_per_s", "p50_ms", "p99_ms")}
                    | {"errors": sum(r["clients"][c]["errors"] for r in runs),
                       "ratio": med([r["clients"][c]["img_per_s"] / r["ceiling_img_per_s"] for r in runs])}
                    for c in clients},
        "latency_ratio_1_client": med([r["clients"][clients[0]]["p50_ms"] / r["single_image_latency_ms"]
                                       for r in runs]) if clients[0] == 1 else None,
    }


def report(summary, runs_count, duration_s):
    lines = [f"medians of {runs_count} run(s), {duration_s:g} s per point",
             f"raw pipeline ceiling       {summary['ceiling_img_per_s']:.1f} img/s",
             f"best single-image latency  {summary['single_image_latency_ms']:.1f} ms",
             f"detserve time to ready     {summary['startup_s']:.2f} s",
             "",
             f"{'clients':>7}  {'img/s':>6}  {'/ceiling':>8}  {'p50 ms':>7}  {'p99 ms':>7}  {'errors':>6}"]
    for count, row in summary["clients"].items():
        lines.append(f"{count:>7}  {row['img_per_s']:>6.1f}  {row['ratio']:>8.2f}  {row['p50_ms']:>7.1f}  "
                     f"{row['p99_ms']:>7.1f}  {row['errors']:>6}")
    if 8 in summary["clients"]:
        ratio = summary["clients"][8]["ratio"]
        lines.append(f"\nthroughput at 8 clients / ceiling: {ratio:.2f} (goal >= {THROUGHPUT_GOAL})")
    if summary["latency_ratio_1_client"] is not None:
        lines.append(f"p50 latency at 1 client / best single-image latency: "
                     f"{summary['latency_ratio_1_client']:.2f} (goal <= {LATENCY_GOAL})")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bench.perf", description=__doc__.split("\n\n")[0])
    parser.add_argument("folder")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per concurrency point")
    parser.add_argument("--ceiling-duration", type=float, default=10.0)
    parser.add_argument("--clients", default="1,2,4,8,16")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--server-arg", action="append", default=[],
                        help="extra detserve flag, repeatable (e.g. --server-arg=--max-batch=2)")
    parser.add_argument("--json", metavar="FILE", help="also write every run and the medians as JSON")
    args = parser.parse_args(argv)
    clients = [int(c) for c in args.clients.split(",")]
    runs = []
    for index in range(args.runs):
        started = time.monotonic()
        runs.append(one_run(args.folder, clients, args.duration, args.workers, args.server_arg,
                            args.ceiling_duration))
        print(f"run {index + 1}/{args.runs} done in {time.monotonic() - started:.0f} s: "
              + ", ".join(f"{c}: {runs[-1]['clients'][c]['img_per_s']:.1f} img/s" for c in clients)
              + f"; ceiling {runs[-1]['ceiling_img_per_s']:.1f}", file=sys.stderr)
    summary = medians(runs, clients)
    print(report(summary, args.runs, args.duration))
    if args.json:
        Path(args.json).write_text(json.dumps({"runs": runs, "medians": summary}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
