"""What a person or a program reads after a run: the text summary, per-image lines,
the results table, and the CSV and JSON files of records and of sweep rows."""

import csv
import json
from collections import Counter
from pathlib import Path

from bench.check import CONNECTION, TIMEOUT, http_error_kind

RECORD_FIELDS = ("id", "image", "thread", "start_s", "status", "latency_ms", "detections", "error", "detail")

# (row key, table heading, format for a number)
TABLE_COLUMNS = (
    ("replicas", "replicas", "{:.0f}"),
    ("threads", "threads", "{:.0f}"),
    ("requests", "requests", "{:.0f}"),
    ("errors", "errors", "{:.0f}"),
    ("throughput_img_per_s", "img/s", "{:.1f}"),
    ("latency_mean_ms", "mean ms", "{:.1f}"),
    ("latency_p50_ms", "p50 ms", "{:.1f}"),
    ("latency_p90_ms", "p90 ms", "{:.1f}"),
    ("latency_p95_ms", "p95 ms", "{:.1f}"),
    ("latency_p99_ms", "p99 ms", "{:.1f}"),
    ("latency_max_ms", "max ms", "{:.1f}"),
    ("avg_response_time_s", "avg resp s", "{:.4f}"),
)
TABLE_NOTE = ("latency: nearest-rank percentiles of successful requests; "
              "avg resp s = wall time / images")


class ResultsFileError(Exception):
    """A results file cannot be read or appended to; the message says why."""


# -- text ------------------------------------------------------------------

def format_summary(summary):
    s = summary
    title = (f"detserve bench: {s.url}  {_plural(s.threads, 'thread')}, "
             f"{_plural(s.images, 'image')} in the folder")
    warmup = ""
    if s.warmup_requests:
        failed = f", {s.warmup_errors} failed" if s.warmup_errors else ""
        warmup = f"  (+{s.warmup_requests} warm-up, not counted{failed})"
    figures = [
        ("requests", f"{s.requests}{warmup}"),
        ("successes", f"{s.successes}"),
        ("errors", f"{s.errors}" + (f"  ({_kinds(s.errors_by_kind)})" if s.errors else "")),
        ("wall time", f"{s.wall_s:.3f} s"),
        ("throughput", f"{s.throughput_img_per_s:.2f} images/s  (successes / wall time)"),
    ]
    if s.successes:
        figures += [
            ("latency ms", f"mean {s.latency_mean_ms:.1f}  p50 {s.latency_p50_ms:.1f}  p90 {s.latency_p90_ms:.1f}  "
                           f"p95 {s.latency_p95_ms:.1f}  p99 {s.latency_p99_ms:.1f}  max {s.latency_max_ms:.1f}"),
            ("", f"({s.percentile_method} percentiles of the {s.successes} {s.latency_of})"),
        ]
    else:
        figures.append(("latency ms", "- (no successful request)"))
    if s.avg_response_time_s is not None:
        figures.append(("average response time",
                        f"{s.avg_response_time_s:.4f} s  (wall time / images)"))
    figures.append(("connections", f"{s.connections_opened} opened"))
    hint = _hint(s)
    if hint:
        figures.append(("hint", hint))
    lines = [title]
    if s.interrupted:
        lines.append(f"  interrupted: the figures cover the {s.requests} requests that finished")
    width = max(len(label) for label, _ in figures) + 2
    lines += [f"  {label:<{width}}{value}" for label, value in figures]
    return "\n".join(lines)


def _plural(count, noun):
    return f"{count} {noun}" + ("" if count == 1 else "s")


def format_point(s):
    """One line for a finished sweep point."""
    p95 = f"p95 {s.latency_p95_ms:.1f} ms" if s.latency_p95_ms is not None else "no successes"
    return (f"{_plural(s.threads, 'thread')}: {s.requests} requests, {s.throughput_img_per_s:.1f} img/s, {p95}, "
            f"{_plural(s.errors, 'error')}" + (" (interrupted)" if s.interrupted else ""))


def _hint(s):
    """Where every request failed the same way, the likely cause, in words a user can act on."""
    if s.successes or len(s.errors_by_kind) != 1:
        return None
    kind = next(iter(s.errors_by_kind))
    if kind == CONNECTION:
        return f"no request got through: is a server listening at {s.url}?"
    if kind in (http_error_kind(404), http_error_kind(405)):
        return f"is {s.url} the API address (it usually ends in /api/)?"
    if kind == TIMEOUT:
        return "every request timed out: is the server overloaded, or is --timeout too short?"
    return None


def _kinds(errors_by_kind):
    return ", ".join(f"{kind} {count}" for kind, count in errors_by_kind.items())


def format_record(record, image_width=0):
    """One per-image line: image, id, what was found.

    image_width pads the image name so that the lines of one run line up.
    """
    head = f"{record.image:<{image_width}}  {record.id}  {record.latency_ms:7.1f} ms  "
    if not record.ok:
        status = f" {record.status}" if record.status is not None and record.error != http_error_kind(record.status) else ""
        return head + f"ERROR {record.error}{status}: {record.detail}"
    if not record.labels:
        return head + "(nothing found)"
    return head + ", ".join(label if n == 1 else f"{label} x{n}" for label, n in Counter(record.labels).items())


def format_table(rows):
    """A right-aligned text table of result rows (typed, or strings read back from a CSV file)."""
    columns = [c for c in TABLE_COLUMNS if c[0] != "replicas" or any(_present(r.get("replicas")) for r in rows)]
    cells = [[heading for _, heading, _ in columns]]
    cells += [[_cell(row.get(key), fmt) for key, _, fmt in columns] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(line, widths)) for line in cells]
    return "\n".join(lines + [TABLE_NOTE])


def _present(value):
    return value is not None and value != ""


def _cell(value, fmt):
    if not _present(value):
        return "-"
    try:
        return fmt.format(float(value))
    except ValueError:
        return str(value)


# -- files -----------------------------------------------------------------

def write_records_csv(path, records):
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(RECORD_FIELDS)
        for r in records:
            writer.writerow([r.id, r.image, r.thread, f"{r.start_s:.6f}", _csv_value(r.status),
                             f"{r.latency_ms:.3f}", len(r.labels) if r.ok else "", r.error or "", r.detail])


def read_rows(path):
    """Rows from a results file written by write_rows (.json, else CSV); values from CSV stay strings."""
    path = Path(path)
    try:
        if path.suffix.lower() == ".json":
            rows = json.loads(path.read_text())
            if not isinstance(rows, list):
                raise ResultsFileError(f"{path} does not hold a JSON list of result rows")
            return rows
        with open(path, newline="") as f:
            return list(csv.DictReader(f))
    except FileNotFoundError:
        raise ResultsFileError(f"results file {path} does not exist") from None
    except (OSError, ValueError, csv.Error) as exc:
        raise ResultsFileError(f"cannot read results file {path}: {exc}") from None


def rows_to_append_to(path, fields):
    """The rows already in path (none if it does not exist yet); raise ResultsFileError
    if rows with these fields cannot be added to it."""
    path = Path(path)
    if not path.exists() or path.stat().st_size == 0:
        return []
    rows = read_rows(path)
    if path.suffix.lower() == ".json":
        if any(not isinstance(row, dict) for row in rows):
            raise ResultsFileError(f"{path} does not hold a JSON list of result rows")
    else:
        with open(path, newline="") as f:
            header = next(csv.reader(f), [])
        if tuple(header) != tuple(fields):
            raise ResultsFileError(
                f"{path} has other columns than this version of bench writes; append to a new file instead")
    return rows


def write_rows(path, rows, fields):
    """Write rows to path as JSON (a .json name) or CSV (any other name), replacing the file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    if path.suffix.lower() == ".json":
        tmp.write_text(json.dumps([{k: row.get(k) for k in fields} for row in rows], indent=2) + "\n")
    else:
        with open(tmp, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(fields)
            writer.writerows([_csv_value(row.get(k)) for k in fields] for row in rows)
    # Whole-file replace, so a sweep stopped mid-write never leaves a torn results file.
    tmp.replace(path)


def _csv_value(value):
    if value is None:
        return ""
    if isinstance(value, dict):
        return ";".join(f"{k}={v}" for k, v in value.items())
    if isinstance(value, bool):
        return str(value).lower()
    return value
