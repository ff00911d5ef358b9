"""The performance benchmark: detserve against the raw pipeline ceiling, in one go.

`python -m studies.perf FOLDER` does, per run, on this machine, three parts
(`--only` chooses):

small    the sample images, as before:
         1. the ceiling (`python -m studies.ceiling --json`): bare processes, no HTTP, no pipes;
         2. starts `python -m detserve --workers 2` on 127.0.0.1 and times it to ready;
         3. loads it from 1, 2, 4, 8 and 16 client threads for DURATION seconds each;
         4. the ceiling again (the run's yardstick is the mean of 1 and 4).
         Goals: >= 0.95 x ceiling at 8 clients, p50 <= 1.25 x the
         best single-image latency at 1 client.
large    FOLDER's images upscaled to 12 MP (bench.upscale, once per invocation)
         at 1 and 8 clients, against a server started with
         `--decode-reduction auto`, then `off`. Goals: 12 MP
         throughput >= 0.85 x small at 8 clients, p50 <= 1.3 x small at 1.
overload 64 connections that ignore Retry-After against `--queue-size 16`,
         from bench's threads (and from wrk with --wrk). Goals:
         goodput >= 0.9 x the 8-client capacity of the same run, no time-out,
         p99 of accepted requests under --request-timeout-s.

The small-image figures at 1 and 8 clients that large and overload compare
with come from the small part of the same run, or, when it is left out, from
a server started for them. A server that does not know `--decode-reduction`
(one older than reduced decoding) is reported as such, and the large part measures
it once without the flag instead. Figures are medians over --runs; the
client runs on the same cores as the server, as in any one-machine test.
"""

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import overload as overload_figures
from bench import upscale
from bench import wrk as wrk_bench
from bench.images import load_folder
from bench.loadgen import run_load
from bench.server_process import REPO_ROOT, ServerProcess, ServerRejectedArguments

THROUGHPUT_GOAL = 0.95
LATENCY_GOAL = 1.25
PARTS = ("small", "large", "overload")
# The large-image and overload goals.
LARGE_THROUGHPUT_GOAL = 0.85  # 12 MP img/s / small img/s, at 8 clients
LARGE_LATENCY_GOAL = 1.3  # 12 MP p50 / small p50, at 1 client
OVERLOAD_GOAL = 0.9  # goodput under overload / 8-client capacity
LARGE_CLIENTS = (1, 8)
CAPACITY_CLIENTS = 8
DECODE_MODES = ("auto", "off")
SERVER_DEFAULT = "default"  # the large part's row for a server without --decode-reduction
OVERLOAD_SERVER_ARGS = ("--queue-size", "16")
DEFAULT_REQUEST_TIMEOUT_S = 30.0  # detserve's own default, for the p99 goal when --server-arg does not set it


def measure_ceiling(folder, duration_s):
    """The raw pipeline ceiling's figures (studies.ceiling's Ceiling as a dict), from a run of its own."""
    command = [sys.executable, "-m", "studies.ceiling", str(Path(folder).resolve()), "--duration", str(duration_s),
               "--model-dir", str(REPO_ROOT / "yolo_tiny_configs"), "--json"]
    proc = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"studies.ceiling exited with {proc.returncode}: {proc.stderr.strip()[-2000:]}")
    return json.loads(proc.stdout)


def one_run(folder, clients, duration_s, workers, server_args, ceiling_duration_s):
    # The ceiling is measured before and after the server, and their mean is the
    # yardstick: a shared machine's speed drifts within a run, and one side of
    # the ratio should not get the fast minute and the other the slow one.
    before = measure_ceiling(folder, ceiling_duration_s)
    images = load_folder(folder)
    loads = {}
    with ServerProcess("--workers", str(workers), *server_args) as server:
        for count in clients:
            loads[count] = run_load(images, server.api_url, count, duration_s=duration_s, warmup=count)
        startup_s = server.startup_s
    after = measure_ceiling(folder, ceiling_duration_s)
    ceilings_img_per_s = [before["throughput_img_per_s"], after["throughput_img_per_s"]]
    return {
        "ceiling_img_per_s": statistics.mean(ceilings_img_per_s),
        "ceiling_before_after_img_per_s": ceilings_img_per_s,
        "single_image_latency_ms": statistics.mean([before["single_image_latency_ms"],
                                                    after["single_image_latency_ms"]]),
        "startup_s": startup_s,
        "clients": {
            count: {"img_per_s": s.throughput_img_per_s, "p50_ms": s.latency_p50_ms, "p99_ms": s.latency_p99_ms,
                    "errors": s.errors}
            for count, s in loads.items()
        },
    }


def _load_figures(summary):
    return {"img_per_s": summary.throughput_img_per_s, "p50_ms": summary.latency_p50_ms,
            "p99_ms": summary.latency_p99_ms, "errors": summary.errors}


def measure_points(images, workers, server_args, clients, duration_s):
    """Start a server with server_args and load it from each count of clients; {count: figures}."""
    with ServerProcess("--workers", str(workers), *server_args) as server:
        return {count: _load_figures(run_load(images, server.api_url, count, duration_s=duration_s, warmup=count))
                for count in clients}


def large_run(large_images, reference, workers, server_args, duration_s):
    """12 MP images at 1 and 8 clients, per --decode-reduction mode, with ratios to the small images."""
    modes = {}
    for mode in DECODE_MODES:
        try:
            points = measure_points(large_images, workers, [*server_args, "--decode-reduction", mode],
                                    LARGE_CLIENTS, duration_s)
        except ServerRejectedArguments as exc:
            modes[mode] = {"supported": False, "reason": str(exc)}
            continue
        modes[mode] = _with_ratios(points, reference)
    if not any(m["supported"] for m in modes.values()):
        # An older server decodes as `off` would; measuring it gives the "before" figures.
        modes[SERVER_DEFAULT] = _with_ratios(
            measure_points(large_images, workers, server_args, LARGE_CLIENTS, duration_s), reference)
    return modes


def _with_ratios(points, reference):
    small_8, small_1 = reference[CAPACITY_CLIENTS], reference[1]
    return {"supported": True, "clients": points,
            "throughput_ratio_8": points[8]["img_per_s"] / small_8["img_per_s"] if small_8["img_per_s"] else None,
            "p50_ratio_1": (points[1]["p50_ms"] / small_1["p50_ms"]
                            if points[1]["p50_ms"] and small_1["p50_ms"] else None)}


def overload_run(images, folder, capacity_img_per_s, workers, server_args, options):
    """No-back-off overload against --queue-size 16 from bench's threads (and wrk), against the capacity."""
    sources = {}
    with ServerProcess("--workers", str(workers), *server_args, *OVERLOAD_SERVER_ARGS) as server:
        summary = run_load(images, server.api_url, options.overload_connections, duration_s=options.overload_duration,
                           timeout_s=options.overload_timeout)
        sources["bench"] = overload_figures.from_summary(summary).to_dict()
        if options.wrk:
            try:
                result = wrk_bench.run_wrk(folder, server.api_url, connections=options.overload_connections,
                                           duration_s=options.overload_duration, timeout_s=options.overload_timeout,
                                           images=images)
                sources["wrk"] = result.overload_figures().to_dict()
            except wrk_bench.WrkUnavailable as exc:
                sources["wrk"] = {"unavailable": str(exc)}
    for figures in sources.values():
        if "goodput_img_per_s" in figures:
            figures["capacity_ratio"] = (figures["goodput_img_per_s"] / capacity_img_per_s
                                         if capacity_img_per_s else None)
    return {"capacity_img_per_s": capacity_img_per_s, "sources": sources}


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


def _median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def large_medians(runs):
    """Medians over runs of the large part, per decoding mode."""
    modes = {}
    for mode in runs[0]["large"]:
        per_run = [r["large"][mode] for r in runs]
        if not per_run[0]["supported"]:
            modes[mode] = per_run[0]
            continue
        modes[mode] = {
            "supported": True,
            "clients": {c: {key: _median([r["clients"][c][key] for r in per_run])
                            for key in ("img_per_s", "p50_ms", "p99_ms")}
                        | {"errors": sum(r["clients"][c]["errors"] for r in per_run)} for c in LARGE_CLIENTS},
            "throughput_ratio_8": _median([r["throughput_ratio_8"] for r in per_run]),
            "p50_ratio_1": _median([r["p50_ratio_1"] for r in per_run]),
        }
    return modes


def overload_medians(runs):
    sources = {}
    for name, first in runs[0]["overload"]["sources"].items():
        per_run = [r["overload"]["sources"][name] for r in runs]
        if "unavailable" in first:
            sources[name] = first
            continue
        sources[name] = {key: _median([f[key] for f in per_run])
                         for key in ("goodput_img_per_s", "refusals_per_s", "capacity_ratio", "accepted_p50_ms",
                                     "accepted_p99_ms")}
        sources[name] |= {"timeouts": sum(f["timeouts"] for f in per_run),
                          "other_errors": sum(f["other_errors"] for f in per_run),
                          "latency_of": first["latency_of"]}
    return {"capacity_img_per_s": _median([r["overload"]["capacity_img_per_s"] for r in runs]), "sources": sources}


def _fmt(value, spec, missing="-"):
    return missing if value is None else format(value, spec)


def report_large(modes, reference, size):
    small_8, small_1 = reference[CAPACITY_CLIENTS], reference[1]
    lines = [f"{size} images (FOLDER upscaled), against small images of the same run "
             f"(small: {small_1['img_per_s']:.1f} img/s and p50 {_fmt(small_1['p50_ms'], '.1f')} ms at 1 client, "
             f"{small_8['img_per_s']:.1f} img/s at 8)",
             f"{'decoding':<23}  {'clients':>7}  {'img/s':>6}  {'x small':>7}  {'p50 ms':>7}  {'x small':>7}  "
             f"{'p99 ms':>7}  {'errors':>6}"]
    for mode, figures in modes.items():
        label = "server default" if mode == SERVER_DEFAULT else f"--decode-reduction {mode}"
        if not figures["supported"]:
            lines.append(f"{label:<23}  not supported by this server ({figures['reason']})")
            continue
        for count in LARGE_CLIENTS:
            row, small = figures["clients"][count], reference[count]
            throughput_x = row["img_per_s"] / small["img_per_s"] if small["img_per_s"] else None
            p50_x = row["p50_ms"] / small["p50_ms"] if row["p50_ms"] and small["p50_ms"] else None
            lines.append(f"{label if count == LARGE_CLIENTS[0] else '':<23}  {count:>7}  {row['img_per_s']:>6.1f}  "
                         f"{_fmt(throughput_x, '>7.2f'):>7}  {_fmt(row['p50_ms'], '>7.1f'):>7}  "
                         f"{_fmt(p50_x, '>7.2f'):>7}  {_fmt(row['p99_ms'], '>7.1f'):>7}  {row['errors']:>6}")
    for mode, figures in modes.items():
        if figures["supported"]:
            lines.append(f"{mode}: {size} / small throughput at 8 clients {_fmt(figures['throughput_ratio_8'], '.2f')} "
                         f"(goal >= {LARGE_THROUGHPUT_GOAL}); p50 at 1 client {_fmt(figures['p50_ratio_1'], '.2f')} "
                         f"(goal <= {LARGE_LATENCY_GOAL})")
    return "\n".join(lines)


def report_overload(summary, connections, workers, request_timeout_s):
    lines = [f"overload: {connections} connections that ignore Retry-After against --workers {workers} "
             f"{' '.join(OVERLOAD_SERVER_ARGS)}; "
             f"capacity = small images at {CAPACITY_CLIENTS} clients in the same run: "
             f"{summary['capacity_img_per_s']:.1f} img/s",
             f"{'source':<6}  {'goodput':>7}  {'x capacity':>10}  {'refusals/s':>10}  {'time-outs':>9}  "
             f"{'p50 ms':>7}  {'p99 ms':>7}  {'other errors':>12}"]
    for name, f in summary["sources"].items():
        if "unavailable" in f:
            lines.append(f"{name:<6}  not measured: {f['unavailable']}")
            continue
        lines.append(f"{name:<6}  {f['goodput_img_per_s']:>7.1f}  {_fmt(f['capacity_ratio'], '>10.2f'):>10}  "
                     f"{f['refusals_per_s']:>10.0f}  {f['timeouts']:>9}  {_fmt(f['accepted_p50_ms'], '>7.1f'):>7}  "
                     f"{_fmt(f['accepted_p99_ms'], '>7.1f'):>7}  {f['other_errors']:>12}")
    for name, f in summary["sources"].items():
        if "unavailable" not in f:
            lines.append(f"{name}: latency of {f['latency_of']}")
    bench_figures = summary["sources"]["bench"]
    p99_s = None if bench_figures["accepted_p99_ms"] is None else bench_figures["accepted_p99_ms"] / 1000
    lines.append(f"goodput / capacity: {_fmt(bench_figures['capacity_ratio'], '.2f')} (goal >= {OVERLOAD_GOAL}); "
                 f"time-outs {bench_figures['timeouts']} (goal 0); p99 of accepted {_fmt(p99_s, '.2f')} s "
                 f"(goal < {request_timeout_s:g} s)")
    return "\n".join(lines)


def request_timeout_of(server_args):
    """--request-timeout-s as the server will get it from --server-arg, else its default."""
    for index, arg in enumerate(server_args):
        if arg.startswith("--request-timeout-s="):
            return float(arg.split("=", 1)[1])
        if arg == "--request-timeout-s" and index + 1 < len(server_args):
            return float(server_args[index + 1])
    return DEFAULT_REQUEST_TIMEOUT_S


def _parts(text):
    parts = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [part for part in parts if part not in PARTS]
    if unknown or not parts:
        raise argparse.ArgumentTypeError(f"choose from {','.join(PARTS)}, not {text!r}")
    return parts


def one_full_run(args, clients, large_images, small_images):
    """One run of every chosen part; the small part's figures are the others' reference."""
    run = {}
    if "small" in args.only:
        run["small"] = one_run(args.folder, clients, args.duration, args.workers, args.server_arg,
                               args.ceiling_duration)
    if "large" in args.only or "overload" in args.only:
        needed = (1, CAPACITY_CLIENTS)
        if "small" in run and all(c in clients for c in needed):
            run["reference"] = {c: run["small"]["clients"][c] for c in needed}
        else:
            run["reference"] = measure_points(small_images, args.workers, args.server_arg, needed, args.duration)
    if "large" in args.only:
        run["large"] = large_run(large_images, run["reference"], args.workers, args.server_arg, args.duration)
    if "overload" in args.only:
        run["overload"] = overload_run(small_images, args.folder, run["reference"][CAPACITY_CLIENTS]["img_per_s"],
                                       args.workers, args.server_arg, args)
    return run


def _run_note(run, clients):
    notes = []
    if "small" in run:
        notes.append(", ".join(f"{c}: {run['small']['clients'][c]['img_per_s']:.1f} img/s" for c in clients)
                     + f"; ceiling {run['small']['ceiling_img_per_s']:.1f}")
    if "large" in run:
        notes += [f"large {mode}: {f['clients'][8]['img_per_s']:.1f} img/s at 8"
                  for mode, f in run["large"].items() if f["supported"]]
    if "overload" in run:
        notes += [f"overload {name}: {f['goodput_img_per_s']:.1f} img/s goodput"
                  for name, f in run["overload"]["sources"].items() if "goodput_img_per_s" in f]
    return "; ".join(notes)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m studies.perf", description=__doc__.split("\n\n")[0])
    parser.add_argument("folder")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--only", type=_parts, default=list(PARTS), metavar="PARTS",
                        help=f"which parts to run, comma-separated (default {','.join(PARTS)})")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per concurrency point")
    parser.add_argument("--ceiling-duration", type=float, default=10.0)
    parser.add_argument("--clients", default="1,2,4,8,16")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--server-arg", action="append", default=[],
                        help="extra detserve flag, repeatable (e.g. --server-arg=--max-batch=2)")
    parser.add_argument("--large-size", type=upscale.parse_size, default=upscale.PHONE_PHOTO_SIZE, metavar="WxH",
                        help=f"size of the large images (default {upscale.PHONE_PHOTO_SIZE})")
    parser.add_argument("--overload-connections", type=int, default=64)
    parser.add_argument("--overload-duration", type=float, help="seconds of each overload (default --duration)")
    parser.add_argument("--overload-timeout", type=float, default=30.0,
                        help="the overload clients' time-out in seconds (default 30)")
    parser.add_argument("--wrk", action="store_true", help="also overload the server from wrk (apt-get install wrk)")
    parser.add_argument("--json", metavar="FILE", help="also write every run and the medians as JSON")
    args = parser.parse_args(argv)
    args.overload_duration = args.overload_duration or args.duration
    clients = [int(c) for c in args.clients.split(",")]
    if args.wrk:
        try:
            wrk_bench.wrk_path()
        except wrk_bench.WrkUnavailable as exc:
            parser.error(str(exc))
    size = "x".join(map(str, args.large_size))
    with tempfile.TemporaryDirectory(prefix="detserve-perf-large-") as large_folder:
        large_images = None
        if "large" in args.only:
            print(upscale.describe(upscale.upscale_folder(args.folder, large_folder, *args.large_size)),
                  file=sys.stderr)
            large_images = load_folder(large_folder)
        small_images = load_folder(args.folder)
        runs = []
        for index in range(args.runs):
            started = time.monotonic()
            runs.append(one_full_run(args, clients, large_images, small_images))
            print(f"run {index + 1}/{args.runs} done in {time.monotonic() - started:.0f} s: "
                  + _run_note(runs[-1], clients), file=sys.stderr)
    summary, sections = {}, []
    if "small" in args.only:
        summary["small"] = medians([r["small"] for r in runs], clients)
        sections.append(report(summary["small"], args.runs, args.duration))
    else:
        sections.append(f"medians of {args.runs} run(s), {args.duration:g} s per point")
    if "reference" in runs[0]:
        summary["reference"] = {c: {key: _median([r["reference"][c][key] for r in runs])
                                    for key in ("img_per_s", "p50_ms", "p99_ms")} for c in (1, CAPACITY_CLIENTS)}
    if "large" in args.only:
        summary["large"] = large_medians(runs)
        sections.append(report_large(summary["large"], summary["reference"], size))
    if "overload" in args.only:
        summary["overload"] = overload_medians(runs)
        sections.append(report_overload(summary["overload"], args.overload_connections, args.workers,
                                        request_timeout_of(args.server_arg)))
    print("\n\n".join(sections))
    if args.json:
        Path(args.json).write_text(json.dumps({"runs": runs, "medians": summary}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
