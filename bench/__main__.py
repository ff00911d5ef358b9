"""The command line: `python -m bench` (one run), `python -m bench sweep`, `python -m bench plot`,
`python -m bench images` (a large-image set made from a folder).

Also the console script `detserve-bench`. Exit status: 0 when every counted
request succeeded (for sweep and plot: when they finished), 1 when a run had
errors, 2 for a usage error, 130 when stopped by Ctrl-C.
"""

import argparse
import datetime
import json
import os
import sys
import tempfile
from pathlib import Path

from bench import overload, report, upscale
from bench.images import ImageFolderError, load_folder
from bench.loadgen import DEFAULT_TIMEOUT_S, Target, run_load
from bench.plot import PlotUnavailable, plot_rows
from bench.progress import ProgressLine
from bench.sweep import ROW_FIELDS, parse_thread_counts, run_sweep

EXIT_OK, EXIT_REQUEST_ERRORS, EXIT_INTERRUPTED = 0, 1, 130  # usage errors exit 2, from argparse
EXIT_BROKEN_PIPE = 141  # what a shell reports for a process ended by SIGPIPE
SWEEP_DEFAULT_DURATION_S = 10.0
RESULTS_DIR = "bench/results"

RUN_EPILOG = """\
other commands:
  python -m bench sweep FOLDER URL --threads 1,2,4,8,16   one run per thread count
  python -m bench plot RESULTS.csv -o OUT.png             draw a sweep's results
  python -m bench images SRC DEST --upscale 4032x3024     a large-image set made from SRC
(to run on a folder named sweep, plot or images, write it as ./sweep, ./plot or ./images)

exit status: 0 all requests succeeded (with --no-backoff: all answered 200 or 503),
1 some failed, 2 usage error, 130 Ctrl-C
"""


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    commands = {"sweep": sweep_main, "plot": plot_main, "images": images_main}
    try:
        if argv and argv[0] in commands:
            return commands[argv[0]](argv[1:])
        return run_main(argv)
    except BrokenPipeError:
        # stdout was closed early (piped into head): stop quietly, and keep Python's
        # exit-time flush from raising the same error again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE


# -- shared options ----------------------------------------------------------

def _positive_float(text):
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, not {text}")
    return value


def _count(minimum):
    def parse(text):
        value = int(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, not {text}")
        return value
    parse.__name__ = "whole number"  # argparse names the type in its error messages
    return parse


def _add_load_options(parser, warmup_help, default_duration_s=None):
    parser.add_argument("folder", help="folder of JPEG and PNG images to send")
    parser.add_argument("url", help="the API address, e.g. http://127.0.0.1:5050/api/")
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--repeat", type=_count(1), metavar="N",
                        help="send every image N times" + ("" if default_duration_s else " (default 1)"))
    budget.add_argument("--duration", type=_positive_float, metavar="S", default=default_duration_s,
                        help="loop over the folder for S seconds"
                             + (f" (default {default_duration_s:g})" if default_duration_s else ""))
    parser.add_argument("--warmup", type=_count(0), metavar="N", help=warmup_help)
    parser.add_argument("--timeout", type=_positive_float, metavar="S", default=DEFAULT_TIMEOUT_S,
                        help=f"give up on a request after S seconds (default {DEFAULT_TIMEOUT_S:g})")


def _load_images(parser, folder):
    try:
        return load_folder(folder)
    except ImageFolderError as exc:
        parser.error(str(exc))


def _check_url(parser, url):
    try:
        Target.parse(url)
    except ValueError as exc:
        parser.error(str(exc))


# -- one run -----------------------------------------------------------------

def run_main(argv):
    parser = argparse.ArgumentParser(
        prog="python -m bench", epilog=RUN_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Send every image in FOLDER to URL from THREADS threads, each with its own "
                    "kept-alive connection, and summarise throughput, latency and errors.")
    _add_load_options(parser, warmup_help="send N requests first and leave them out of every figure (default 0)")
    parser.add_argument("threads", type=_count(1), help="concurrent threads, one connection each")
    parser.add_argument("--json", action="store_true", help="print one JSON summary on stdout instead of the text")
    parser.add_argument("--csv", metavar="FILE", help="write one row per counted request to FILE")
    chatter = parser.add_mutually_exclusive_group()
    chatter.add_argument("--quiet", action="store_true", help="no progress line, only the summary")
    chatter.add_argument("--verbose", action="store_true",
                         help="one line per image (image, id, labels found) instead of the progress line")
    refusals = parser.add_mutually_exclusive_group()
    refusals.add_argument("--no-backoff", action="store_true",
                          help="overload mode: resend at once after a 503, ignoring Retry-After (as the default "
                               "does), and report goodput, refusals per second, time-outs and the latency of the "
                               "accepted requests; 503s do not make the exit status 1")
    refusals.add_argument("--honor-retry-after", action="store_true",
                          help="after a 503, wait its Retry-After seconds before the next request")
    parser.add_argument("--upscale", metavar="WxH", type=upscale.parse_size,
                        help="send FOLDER's images resized to WxH (e.g. 4032x3024) as JPEG q90, "
                             "made in a temporary folder first")
    args = parser.parse_args(argv)
    _check_url(parser, args.url)
    if args.csv and not Path(args.csv).resolve().parent.is_dir():
        parser.error(f"--csv {args.csv}: the folder to write it in does not exist")
    if args.upscale:
        with tempfile.TemporaryDirectory(prefix="detserve-bench-") as large_folder:
            try:
                written = upscale.upscale_folder(args.folder, large_folder, *args.upscale)
            except ImageFolderError as exc:
                parser.error(str(exc))
            print(upscale.describe(written), file=sys.stderr)
            return _run(args, _load_images(parser, large_folder))
    return _run(args, _load_images(parser, args.folder))


def _run(args, images):
    # With --json, stdout carries the JSON and nothing else.
    on_record = _per_image_printer(images, sys.stderr if args.json else sys.stdout) if args.verbose else None
    progress = ProgressLine(enabled=False if (args.quiet or args.verbose) else None)
    try:
        summary = run_load(images, args.url, args.threads, repeat=args.repeat or 1, duration_s=args.duration,
                           warmup=args.warmup or 0, timeout_s=args.timeout, on_record=on_record,
                           progress=progress, honor_retry_after=args.honor_retry_after)
    finally:
        progress.close()

    figures = overload.from_summary(summary) if args.no_backoff else None
    if args.csv:
        report.write_records_csv(args.csv, summary.records)
    if args.json:
        print(json.dumps(summary.to_dict() | ({"overload": figures.to_dict()} if figures else {}), indent=2))
    else:
        print(report.format_summary(summary))
        if figures:
            print("overload (--no-backoff)\n" + overload.format_figures(figures))
    if summary.interrupted:
        return EXIT_INTERRUPTED
    # Under deliberate overload a 503 is the server's correct answer, not a failure of the run.
    failures = (figures.timeouts + figures.other_errors) if figures else summary.errors
    return EXIT_REQUEST_ERRORS if failures else EXIT_OK


def _per_image_printer(images, stream):
    image_width = max(len(image.name) for image in images)

    def print_record(record):
        print(report.format_record(record, image_width), file=stream, flush=True)
    return print_record


# -- images ------------------------------------------------------------------

def images_main(argv):
    parser = argparse.ArgumentParser(
        prog="python -m bench images",
        description="Write every JPEG and PNG of SRC resized to WxH as a JPEG into DEST (created): "
                    "a large-image set for the load client and the studies. Deterministic.")
    parser.add_argument("src", help="folder of JPEG and PNG images")
    parser.add_argument("dest", help="folder to write the JPEGs to (created if missing; same names, .jpg)")
    parser.add_argument("--upscale", metavar="WxH", type=upscale.parse_size, required=True,
                        help=f"the size in pixels, e.g. {upscale.PHONE_PHOTO_SIZE} (a 12 MP phone photo)")
    parser.add_argument("--quality", type=_quality, default=upscale.DEFAULT_JPEG_QUALITY,
                        help=f"JPEG quality 1-100 (default {upscale.DEFAULT_JPEG_QUALITY})")
    args = parser.parse_args(argv)
    try:
        written = upscale.upscale_folder(args.src, args.dest, *args.upscale, quality=args.quality)
    except ImageFolderError as exc:
        parser.error(str(exc))
    for image in written:
        print(f"{image.path}  {image.width_px}x{image.height_px}  {image.size_bytes:,} bytes")
    print(upscale.describe(written))
    return EXIT_OK


def _quality(text):
    value = int(text)
    if not 1 <= value <= 100:
        raise argparse.ArgumentTypeError(f"must be from 1 to 100, not {text}")
    return value


# -- sweep -------------------------------------------------------------------

def sweep_main(argv):
    parser = argparse.ArgumentParser(
        prog="python -m bench sweep",
        description="One measurement per thread count; prints a table and writes every row "
                    "to a CSV file (or JSON, for a .json name).")
    _add_load_options(parser, default_duration_s=SWEEP_DEFAULT_DURATION_S,
                      warmup_help="uncounted requests before each point (default: one per thread)")
    parser.add_argument("--threads", default="1,2,4,8,16", metavar="LIST",
                        help="thread counts, comma-separated (default 1,2,4,8,16)")
    parser.add_argument("--replicas", type=_count(1), metavar="N",
                        help="server replicas behind URL, written in the replicas column")
    parser.add_argument("-o", "--out", metavar="FILE",
                        help=f"results file (default {RESULTS_DIR}/sweep-<UTC time>.csv); replaced unless --append")
    parser.add_argument("--append", action="store_true",
                        help="add rows to --out instead of replacing it (for one file across replica counts)")
    parser.add_argument("--quiet", action="store_true", help="no progress line or per-point notes")
    args = parser.parse_args(argv)
    try:
        thread_counts = parse_thread_counts(args.threads)
    except ValueError as exc:
        parser.error(str(exc))
    if args.append and not args.out:
        parser.error("--append needs --out FILE: the file to add rows to")
    _check_url(parser, args.url)
    images = _load_images(parser, args.folder)
    out = args.out or f"{RESULTS_DIR}/sweep-{datetime.datetime.now(datetime.timezone.utc):%Y%m%d-%H%M%S}.csv"
    try:
        # Checked before measuring: a sweep can take many minutes.
        rows = report.rows_to_append_to(out, ROW_FIELDS) if args.append else []
    except report.ResultsFileError as exc:
        parser.error(str(exc))

    progress = ProgressLine(enabled=False if args.quiet else None)
    new_rows, interrupted = [], False
    # A "repeat" budget replaces the default duration.
    duration_s = None if args.repeat else args.duration
    try:
        for row, summary in run_sweep(images, args.url, thread_counts, duration_s=duration_s,
                                      repeat=args.repeat or 1, warmup=args.warmup, timeout_s=args.timeout,
                                      replicas=args.replicas, progress=progress):
            progress.close()
            new_rows.append(row)
            interrupted = summary.interrupted
            # Written after every point, so a sweep stopped early keeps what it measured.
            report.write_rows(out, rows + new_rows, ROW_FIELDS)
            if not args.quiet:
                print(report.format_point(summary), file=sys.stderr, flush=True)
    finally:
        progress.close()
    print(report.format_table(new_rows))
    print(f"{'appended' if args.append else 'wrote'} {len(new_rows)} row{'s' if len(new_rows) != 1 else ''} "
          f"to {out}", file=sys.stderr)
    return EXIT_INTERRUPTED if interrupted else EXIT_OK


# -- plot --------------------------------------------------------------------

def plot_main(argv):
    parser = argparse.ArgumentParser(
        prog="python -m bench plot",
        description="Draw throughput and p95 latency against threads, one line per replica count. "
                    "Needs matplotlib (pip install 'detserve[plot]'); without it, prints the table.")
    parser.add_argument("results", help="a results file written by `python -m bench sweep`")
    parser.add_argument("-o", "--out", metavar="PNG", help="image to write (default: RESULTS with .png)")
    parser.add_argument("--title", help="a title above the two charts")
    args = parser.parse_args(argv)
    try:
        rows = report.read_rows(args.results)
    except report.ResultsFileError as exc:
        parser.error(str(exc))
    if not rows:
        parser.error(f"{args.results} holds no result rows")
    out = args.out or str(Path(args.results).with_suffix(".png"))
    try:
        plot_rows(rows, out, title=args.title)
    except PlotUnavailable as exc:
        print(f"bench plot: {exc}; here is the table instead:", file=sys.stderr)
        print(report.format_table(rows))
        return EXIT_OK
    print(f"wrote {out}", file=sys.stderr)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
