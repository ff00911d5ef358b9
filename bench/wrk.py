"""wrk as a second, independent load source: the same JSON bodies as bench's, sent
by a C client that costs the machine far less CPU per request than Python threads.

`python -m bench.wrk FOLDER URL [--connections 64] [--threads 2] [--duration 20] [--timeout 30]`

    folder ──▶ one JSON body file per image ──▶ a Lua script for wrk ──▶ wrk ──▶ its output
                                                (cycles through them,          │
                                                 counts answers by status)     ▼
                                                              parse_output ──▶ WrkResult

wrk's own summary says how many answers were not 2xx, but not which; the
script's `response()` hook counts each status in its thread and `done()`
prints the totals on one line, so goodput (200s) is told apart from
refusals (503s). wrk's latency figures cover every answer, refusals
included; it has no way to give them for the 200s alone. wrk ignores
Retry-After: each connection sends its next request as soon as an answer
arrives, which is the no-back-off overload the benchmark wants.
"""

import argparse
import json
import math
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from bench.images import ImageFolderError, load_folder
from bench.overload import OverloadFigures, format_figures

INSTALL_HINT = "wrk is not installed: apt-get install wrk (Debian, Ubuntu) or brew install wrk (macOS)"
STATUS_LINE_PREFIX = "DETSERVE_WRK_STATUS "
DEFAULT_CONNECTIONS = 64
DEFAULT_THREADS = 2
DEFAULT_DURATION_S = 20
DEFAULT_TIMEOUT_S = 30

_LUA_SCRIPT = """\
-- Written by bench/wrk.py: POST one JSON body per image, round and round; count answers by status.
local body_paths = {%(paths)s}
local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  bodies = {}
  for i, path in ipairs(body_paths) do
    local file = assert(io.open(path, "rb"))
    bodies[i] = file:read("*a")
    file:close()
  end
  next_body = 0
  statuses = {}
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
end

function request()
  next_body = next_body %% #bodies + 1
  return wrk.format(nil, nil, nil, bodies[next_body])
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end

function done(summary, latency, requests)
  local totals = {}
  for _, thread in ipairs(threads) do
    for status, count in pairs(thread:get("statuses")) do
      totals[status] = (totals[status] or 0) + count
    end
  end
  local parts = {}
  for status, count in pairs(totals) do
    table.insert(parts, string.format('"%%d": %%d', status, count))
  end
  io.write("%(prefix)s{" .. table.concat(parts, ", ") .. "}\\n")
end
"""

# wrk prints times as 12.34us, 1.50ms, 2.01s, 1.00m, 1.00h
_TIME_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}
_TIME = r"([\d.]+)(us|ms|s|m|h)"
_REQUESTS = re.compile(r"^\s*(\d+) requests in " + _TIME + r", ", re.M)
_REQUESTS_PER_S = re.compile(r"^Requests/sec:\s+([\d.]+)", re.M)
_NON_2XX = re.compile(r"^\s*Non-2xx or 3xx responses:\s+(\d+)", re.M)
_SOCKET_ERRORS = re.compile(r"^\s*Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", re.M)
_LATENCY_STATS = re.compile(r"^\s*Latency\s+" + _TIME + r"\s+" + _TIME + r"\s+" + _TIME, re.M)
_PERCENTILE = re.compile(r"^\s*(\d+)%\s+" + _TIME + r"\s*$", re.M)
_CONNECTIONS = re.compile(r"^\s*(\d+) threads and (\d+) connections", re.M)


class WrkUnavailable(Exception):
    """wrk is not on PATH; the message says how to install it."""


class WrkOutputError(Exception):
    """wrk's output lacks a figure this module needs; the message says which."""


@dataclass(frozen=True)
class WrkResult:
    threads: int
    connections: int
    duration_s: float
    requests: int  # answers received; time-outs and socket errors are not among them
    requests_per_s: float
    non_2xx: int
    socket_errors: dict  # connect, read, write, timeout
    latency_mean_ms: float  # of every answer, refusals included
    latency_max_ms: float
    latency_percentiles_ms: dict = field(default_factory=dict)  # {50: ms, 75: ms, 90: ms, 99: ms} with --latency
    statuses: dict = field(default_factory=dict)  # {200: n, 503: n, ...}, from the script's done() line

    def overload_figures(self):
        """The same shape as bench's overload figures, so the two sources compare."""
        accepted, refused = self.statuses.get(200, 0), self.statuses.get(503, 0)
        others = sum(n for status, n in self.statuses.items() if status not in (200, 503))
        connection_errors = sum(n for kind, n in self.socket_errors.items() if kind != "timeout")
        return OverloadFigures(
            source="wrk", connections=self.connections, wall_s=self.duration_s,
            requests=self.requests + self.socket_errors["timeout"], accepted=accepted, refused=refused,
            timeouts=self.socket_errors["timeout"], other_errors=others + connection_errors,
            accepted_p50_ms=self.latency_percentiles_ms.get(50), accepted_p99_ms=self.latency_percentiles_ms.get(99),
            latency_of="every answer, 503s included: wrk cannot separate them",
        )


def _ms(number, unit):
    return float(number) * _TIME_UNITS_MS[unit]


def parse_output(text):
    """Read wrk's summary (and the status line of our script, if present) into a WrkResult."""
    requests, latency, per_s, connections = (pattern.search(text) for pattern in
                                             (_REQUESTS, _LATENCY_STATS, _REQUESTS_PER_S, _CONNECTIONS))
    for match, what in ((requests, "'N requests in T'"), (latency, "the Latency line"),
                        (per_s, "'Requests/sec:'"), (connections, "'N threads and M connections'")):
        if match is None:
            raise WrkOutputError(f"wrk's output has no {what}; was it cut short?\n{text[-2000:]}")
    non_2xx = _NON_2XX.search(text)
    socket_errors = _SOCKET_ERRORS.search(text)
    statuses = {}
    for line in text.splitlines():
        if line.startswith(STATUS_LINE_PREFIX):
            statuses = {int(status): count for status, count in json.loads(line[len(STATUS_LINE_PREFIX):]).items()}
    return WrkResult(
        threads=int(connections.group(1)), connections=int(connections.group(2)),
        duration_s=_ms(requests.group(2), requests.group(3)) / 1000,
        requests=int(requests.group(1)), requests_per_s=float(per_s.group(1)),
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        socket_errors=dict(zip(("connect", "read", "write", "timeout"),
                               map(int, socket_errors.groups() if socket_errors else (0, 0, 0, 0)))),
        latency_mean_ms=_ms(latency.group(1), latency.group(2)),
        latency_max_ms=_ms(latency.group(5), latency.group(6)),
        latency_percentiles_ms={int(p): _ms(n, unit) for p, n, unit in _PERCENTILE.findall(text)},
        statuses=statuses,
    )


def write_script(images, folder):
    """Write one JSON body per image and the Lua script that sends them into folder; return the script path."""
    folder = Path(folder)
    paths = []
    for index, image in enumerate(images):
        # The image name is the id: wrk cannot check answers, so a unique id per request would buy nothing.
        path = folder / f"body-{index}.json"
        path.write_bytes(json.dumps({"id": image.name, "image": image.b64.decode()}).encode())
        paths.append(path.resolve())
    # Lua long strings take a path as it is, whatever characters it holds.
    listed = ", ".join(f"[==[{path}]==]" for path in paths)
    script = folder / "detserve-bench.lua"
    script.write_text(_LUA_SCRIPT % {"paths": listed, "prefix": STATUS_LINE_PREFIX})
    return script


def wrk_path():
    path = shutil.which("wrk")
    if path is None:
        raise WrkUnavailable(INSTALL_HINT)
    return path


def run_wrk(folder, url, *, connections=DEFAULT_CONNECTIONS, threads=DEFAULT_THREADS,
            duration_s=DEFAULT_DURATION_S, timeout_s=DEFAULT_TIMEOUT_S, images=None):
    """Run wrk against url with folder's images (or `images`, already loaded) and return its WrkResult."""
    executable = wrk_path()
    images = images if images is not None else load_folder(folder)
    # wrk wants whole seconds, and no more threads than connections.
    duration_arg, timeout_arg = max(1, math.ceil(duration_s)), max(1, math.ceil(timeout_s))
    threads = min(threads, connections)
    with tempfile.TemporaryDirectory(prefix="detserve-wrk-") as scratch:
        script = write_script(images, scratch)
        command = [executable, f"-t{threads}", f"-c{connections}", f"-d{duration_arg}s",
                   "--timeout", f"{timeout_arg}s", "--latency", "-s", str(script), url]
        # The run ends by itself after its duration; the margin covers answers in flight.
        proc = subprocess.run(command, capture_output=True, text=True,
                              timeout=duration_arg + timeout_arg + 30)
    if proc.returncode != 0:
        raise WrkOutputError(f"wrk exited {proc.returncode}: {proc.stderr.strip() or proc.stdout.strip()}")
    return parse_output(proc.stdout)


def format_result(result):
    lines = [format_figures(result.overload_figures())]
    percentiles = "  ".join(f"p{p} {ms:.1f}" for p, ms in sorted(result.latency_percentiles_ms.items()))
    lines.append(f"  {'wrk latency':<14}mean {result.latency_mean_ms:.1f}  {percentiles}  max {result.latency_max_ms:.1f} ms"
                 " (every answer)")
    lines.append(f"  {'by status':<14}" + ", ".join(f"{s}: {n}" for s, n in sorted(result.statuses.items())))
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bench.wrk", description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", help="folder of JPEG and PNG images to send")
    parser.add_argument("url", help="the API address, e.g. http://127.0.0.1:5050/api/")
    parser.add_argument("--connections", type=int, default=DEFAULT_CONNECTIONS,
                        help=f"open connections (default {DEFAULT_CONNECTIONS})")
    parser.add_argument("--threads", type=int, default=DEFAULT_THREADS, help=f"wrk threads (default {DEFAULT_THREADS})")
    parser.add_argument("--duration", type=float, default=DEFAULT_DURATION_S,
                        help=f"seconds, rounded up to whole ones (default {DEFAULT_DURATION_S})")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S,
                        help=f"wrk's per-request time-out in seconds (default {DEFAULT_TIMEOUT_S})")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)
    try:
        result = run_wrk(args.folder, args.url, connections=args.connections, threads=args.threads,
                         duration_s=args.duration, timeout_s=args.timeout)
    except (WrkUnavailable, ImageFolderError) as exc:
        parser.error(str(exc))
    except WrkOutputError as exc:
        print(f"python -m bench.wrk: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps({"wrk": result.__dict__, "overload": result.overload_figures().to_dict()}, indent=2))
    else:
        print(f"wrk: {args.url}  {result.threads} threads, {result.connections} connections")
        print(format_result(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
