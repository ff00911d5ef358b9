"""The load client (bench) against a small misbehaving HTTP server started here on port 0.

The stand-in answers according to the image it is sent: each sample "image"
is a few ASCII bytes naming how to answer, so one folder exercises every
error kind. bench itself runs as a real subprocess (`python -m bench`), as a
user runs it, or in-process through run_load where a test needs the records.
"""

import base64
import csv
import json
import os
import pty
import signal
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from bench import load_folder, run_load
from bench.report import RECORD_FIELDS
from bench.stats import percentile
from bench.sweep import ROW_FIELDS
from support import REPO_ROOT

TIMEOUT_S = 1.0  # far above the stand-in's reply time even on a busy machine
SUMMARY_FIELDS = {
    "url", "threads", "images", "requests", "successes", "errors", "errors_by_kind", "wall_s",
    "throughput_img_per_s", "latency_mean_ms", "latency_p50_ms", "latency_p90_ms", "latency_p95_ms",
    "latency_p99_ms", "latency_max_ms", "avg_response_time_s", "percentile_method", "latency_of",
    "warmup_requests", "warmup_errors", "connections_opened", "interrupted",
}
# file name -> what the stand-in does with it
MISBEHAVIOUR = {
    "ok.jpg": "ok",
    "wrong-id.jpg": "wrong-id",
    "busy.png": "busy",
    "slow.jpg": "slow",
    "close.jpg": "close",
    "garbage.jpg": "garbage",
    "bad-shape.png": "bad-shape",
}
EXPECTED_ERRORS_PER_PASS = {"connection": 1, "http_503": 1, "invalid_body": 2, "timeout": 1, "wrong_id": 1}


class _StandInHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.note_request(self.client_address)
        how = base64.b64decode(body["image"]).decode()
        request_id = body["id"]
        if how == "close":
            self.close_connection = True  # hang up without a reply
            return
        if how == "slow":
            self.server.released.wait(TIMEOUT_S * 4)
            self.close_connection = True
            return
        if how == "busy":
            self._reply(503, {"error": "overloaded", "id": request_id}, {"Retry-After": "1"})
        elif how == "wrong-id":
            self._reply(200, {"id": "someone-else", "detections": []})
        elif how == "garbage":
            self._reply(200, b"<html>not json</html>")
        elif how == "bad-shape":
            self._reply(200, {"id": request_id, "detections": [{"label": "cat"}]})
        else:
            self._reply(200, {"id": request_id, "detections": [
                {"label": "person", "confidence": 0.9, "bbox": [1, 2, 3, 4]},
                {"label": "person", "confidence": 0.8, "bbox": [5, 6, 7, 8]},
                {"label": "tie", "confidence": 0.5, "bbox": [1, 1, 2, 2]}]})

    def _reply(self, status, payload, headers=None):
        raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(raw)

    def log_message(self, *args):
        pass


class StandIn(ThreadingHTTPServer):
    """The stand-in server; counts requests and the client connections they came on."""
    daemon_threads = True

    def __init__(self, protocol_version="HTTP/1.1"):
        handler = type("Handler", (_StandInHandler,), {"protocol_version": protocol_version})
        super().__init__(("127.0.0.1", 0), handler)
        self.released = threading.Event()
        self.requests = 0
        self.client_addresses = set()
        self._lock = threading.Lock()

    def note_request(self, client_address):
        with self._lock:
            self.requests += 1
            self.client_addresses.add(client_address)

    def handle_error(self, request, client_address):
        pass  # a client that timed out and left is expected here

    @property
    def url(self):
        return f"http://127.0.0.1:{self.server_address[1]}/api/"


@pytest.fixture
def stand_in():
    server = StandIn()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.released.set()
    server.shutdown()
    server.server_close()


def make_folder(path, names):
    path.mkdir(exist_ok=True)
    for name in names:
        (path / name).write_bytes(MISBEHAVIOUR[name].encode())
    return path


@pytest.fixture
def misbehaving_folder(tmp_path):
    folder = make_folder(tmp_path / "images", MISBEHAVIOUR)
    (folder / "notes.txt").write_text("not an image: bench must skip it")
    return folder


@pytest.fixture
def ok_folder(tmp_path):
    return make_folder(tmp_path / "ok-images", ["ok.jpg"])


def bench(*args, timeout_s=60, **streams):
    """Run `python -m bench ARGS` as a user would; output is captured unless streams are given."""
    if not streams:
        streams = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE}
    return subprocess.run([sys.executable, "-m", "bench", *map(str, args)], cwd=REPO_ROOT, text=True,
                          timeout=timeout_s, **streams)


# -- error kinds --------------------------------------------------------------

def test_each_misbehaviour_is_counted_as_its_own_kind_and_the_run_ends_with_a_summary(stand_in, misbehaving_folder):
    proc = bench(misbehaving_folder, stand_in.url, 3, "--repeat", 2, "--timeout", TIMEOUT_S, "--json")
    assert proc.returncode == 1, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["requests"] == 2 * len(MISBEHAVIOUR)
    assert summary["errors_by_kind"] == {kind: 2 * n for kind, n in EXPECTED_ERRORS_PER_PASS.items()}
    assert summary["successes"] == 2
    assert summary["errors"] == summary["requests"] - summary["successes"]


def test_text_summary_names_the_error_kinds_and_every_figure(stand_in, misbehaving_folder):
    proc = bench(misbehaving_folder, stand_in.url, 2, "--timeout", TIMEOUT_S)
    assert proc.returncode == 1, proc.stderr
    for kind, count in EXPECTED_ERRORS_PER_PASS.items():
        assert f"{kind} {count}" in proc.stdout
    for words in ("requests", "successes", "wall time", "throughput", "p50", "p90", "p95", "p99", "max",
                  "nearest-rank", "average response time"):
        assert words in proc.stdout
    assert "\r" not in proc.stderr, "no progress line when stderr is not a terminal"


def test_records_say_what_went_wrong(stand_in, misbehaving_folder):
    summary = run_load(load_folder(misbehaving_folder), stand_in.url, 2, timeout_s=TIMEOUT_S)
    by_image = {r.image: r for r in summary.records}
    assert by_image["ok.jpg"].ok and by_image["ok.jpg"].labels == ("person", "person", "tie")
    assert by_image["busy.png"].status == 503
    assert "overloaded" in by_image["busy.png"].detail and "Retry-After: 1" in by_image["busy.png"].detail
    assert by_image["wrong-id.jpg"].error == "wrong_id" and "someone-else" in by_image["wrong-id.jpg"].detail
    assert by_image["slow.jpg"].error == "timeout" and by_image["slow.jpg"].status is None
    assert by_image["close.jpg"].error == "connection"
    assert "not JSON" in by_image["garbage.jpg"].detail
    assert "bbox" in by_image["bad-shape.png"].detail


# -- connections --------------------------------------------------------------

def test_each_thread_keeps_one_connection_alive(stand_in, ok_folder):
    summary = run_load(load_folder(ok_folder), stand_in.url, 3, repeat=12, warmup=3)
    assert summary.errors == 0 and summary.requests == 12
    assert summary.connections_opened == 3
    assert len(stand_in.client_addresses) == 3
    assert stand_in.requests == 15
    assert summary.warmup_requests == 3


def test_a_server_that_closes_after_every_reply_gets_a_new_connection_each_time(ok_folder):
    server = StandIn(protocol_version="HTTP/1.0")
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        summary = run_load(load_folder(ok_folder), server.url, 2, repeat=6)
    finally:
        server.shutdown()
        server.server_close()
    assert summary.errors == 0
    assert summary.connections_opened == 6


def test_nothing_listening_is_a_connection_error_with_a_hint(ok_folder):
    with ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler) as placeholder:
        url = f"http://127.0.0.1:{placeholder.server_address[1]}/api/"
    proc = bench(ok_folder, url, 2)  # the port was just freed, so nothing listens there
    assert proc.returncode == 1
    assert "connection 1" in proc.stdout
    assert "is a server listening" in proc.stdout


# -- output -------------------------------------------------------------------

def test_json_summary_parses_and_carries_every_field(stand_in, ok_folder):
    proc = bench(ok_folder, stand_in.url, 2, "--repeat", 4, "--json", "--verbose")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)  # stdout holds the JSON and nothing else
    assert set(summary) == SUMMARY_FIELDS
    assert summary["requests"] == summary["successes"] == 4
    assert summary["errors_by_kind"] == {}
    assert summary["percentile_method"] == "nearest-rank"
    assert summary["latency_p50_ms"] <= summary["latency_p99_ms"] <= summary["latency_max_ms"]
    assert summary["throughput_img_per_s"] > 0
    assert proc.stderr.count("ok.jpg") == 4, "with --json the per-image lines go to stderr"


def test_csv_has_one_row_per_counted_request(stand_in, misbehaving_folder, tmp_path):
    out = tmp_path / "requests.csv"
    proc = bench(misbehaving_folder, stand_in.url, 2, "--timeout", TIMEOUT_S, "--warmup", 3, "--csv", out, "--quiet")
    assert proc.returncode == 1
    with open(out, newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    assert tuple(reader.fieldnames) == RECORD_FIELDS
    assert len(rows) == len(MISBEHAVIOUR)
    by_image = {row["image"]: row for row in rows}
    assert by_image["ok.jpg"]["detections"] == "3" and by_image["ok.jpg"]["error"] == ""
    assert by_image["busy.png"]["status"] == "503" and by_image["busy.png"]["error"] == "http_503"
    assert by_image["slow.jpg"]["status"] == "" and by_image["slow.jpg"]["error"] == "timeout"
    assert len({row["id"] for row in rows}) == len(rows)


def test_verbose_prints_one_line_per_image_with_its_labels(stand_in, ok_folder):
    proc = bench(ok_folder, stand_in.url, 1, "--repeat", 2, "--verbose")
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stdout.splitlines() if line.startswith("ok.jpg")]
    assert len(lines) == 2
    assert all(line.endswith("person x2, tie") for line in lines)


def test_progress_line_is_drawn_on_a_terminal(stand_in, ok_folder):
    primary, secondary = pty.openpty()
    try:
        proc = bench(ok_folder, stand_in.url, 2, "--duration", 0.6, stderr=secondary, stdout=subprocess.PIPE)
    finally:
        os.close(secondary)
    terminal = _read_all(primary)
    assert proc.returncode == 0
    assert "req/s" in terminal and "\r" in terminal
    assert "throughput" in proc.stdout


def _read_all(fd):
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # EIO: the other side is closed and everything was read
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(fd)
    return b"".join(chunks).decode("utf-8", "replace")


def test_ctrl_c_stops_the_run_and_still_prints_the_summary(stand_in, ok_folder):
    proc = subprocess.Popen([sys.executable, "-m", "bench", str(ok_folder), stand_in.url, "2", "--duration", "60",
                             "--verbose"], cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first_line = proc.stdout.readline()  # requests are flowing, so Python's Ctrl-C handler is in place
        assert first_line.startswith("ok.jpg")
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 130
    assert "interrupted" in rest and "throughput" in rest


@pytest.mark.parametrize("make, message", [
    (lambda tmp: tmp / "missing", "does not exist"),
    (lambda tmp: tmp, "no JPEG or PNG images"),
])
def test_a_missing_or_empty_folder_is_a_clear_usage_error(tmp_path, make, message):
    (tmp_path / "notes.txt").write_text("no images here")
    proc = bench(make(tmp_path), "http://127.0.0.1:9/api/", 2)
    assert proc.returncode == 2
    assert message in proc.stderr


def test_nearest_rank_percentiles_are_latencies_that_happened():
    values = list(range(1, 11))
    assert [percentile(values, p) for p in (50, 90, 95, 99, 100)] == [5, 9, 10, 10, 10]
    assert percentile([7.5], 50) == 7.5


# -- sweep and plot ----------------------------------------------------------

def test_sweeps_for_two_replica_counts_append_to_one_csv(stand_in, ok_folder, tmp_path):
    out = tmp_path / "cluster.csv"
    for replicas in (1, 2):
        proc = bench("sweep", ok_folder, stand_in.url, "--threads", "1,3", "--repeat", 3,
                     "--replicas", replicas, "-o", out, "--append")
        assert proc.returncode == 0, proc.stderr
        assert "img/s" in proc.stdout and "p95 ms" in proc.stdout
    with open(out, newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    assert tuple(reader.fieldnames) == ROW_FIELDS
    assert [(row["replicas"], row["threads"]) for row in rows] == [("1", "1"), ("1", "3"), ("2", "1"), ("2", "3")]
    assert all(row["errors"] == "0" and row["requests"] == "3" for row in rows)
    assert all(row["warmup_requests"] == row["threads"] for row in rows)


def test_sweep_writes_json_and_refuses_to_append_to_a_foreign_csv(stand_in, ok_folder, tmp_path):
    out = tmp_path / "sweep.json"
    proc = bench("sweep", ok_folder, stand_in.url, "--threads", "2", "--duration", 0.3, "-o", out, "--quiet")
    assert proc.returncode == 0, proc.stderr
    [row] = json.loads(out.read_text())
    assert set(row) == set(ROW_FIELDS) and row["threads"] == 2 and row["replicas"] is None

    foreign = tmp_path / "other.csv"
    foreign.write_text("a,b\n1,2\n")
    proc = bench("sweep", ok_folder, stand_in.url, "--threads", "1", "-o", foreign, "--append")
    assert proc.returncode == 2
    assert "other columns" in proc.stderr
    assert foreign.read_text() == "a,b\n1,2\n"


def _sample_results(tmp_path):
    out = tmp_path / "results.csv"
    rows = [{"replicas": r, "threads": t, "requests": 10, "errors": 0, "throughput_img_per_s": 10.0 * r * t ** 0.5,
             "latency_p95_ms": 50.0 * t / r} for r in (1, 2) for t in (1, 2, 4)]
    with open(out, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=ROW_FIELDS, restval="")
        writer.writeheader()
        writer.writerows(rows)
    return out


def test_plot_without_matplotlib_says_how_to_install_it_and_prints_the_table(tmp_path):
    results = _sample_results(tmp_path)
    # The interpreter is told matplotlib cannot be imported, whether or not it is installed.
    code = "import sys; sys.modules['matplotlib'] = None; from bench.__main__ import main; sys.exit(main())"
    proc = subprocess.run([sys.executable, "-c", code, "plot", str(results), "-o", str(tmp_path / "out.png")],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "pip install" in proc.stderr and "detserve[plot]" in proc.stderr
    assert "replicas" in proc.stdout and "p95 ms" in proc.stdout
    assert len(proc.stdout.strip().splitlines()) == 1 + 6 + 1  # heading, six rows, note
    assert not (tmp_path / "out.png").exists()


def test_plot_draws_a_png_when_matplotlib_is_installed(tmp_path):
    pytest.importorskip("matplotlib")
    results = _sample_results(tmp_path)
    proc = bench("plot", results, "-o", tmp_path / "out.png")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "out.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# -- large images -------------------------------------------------------------

def test_bench_images_writes_every_image_at_the_asked_size_as_jpeg_and_the_same_bytes_twice(tmp_path):
    import cv2
    src = tmp_path / "src"
    src.mkdir()
    for name in ("camera.jpg", "rocket.jpg"):
        (src / name).write_bytes((REPO_ROOT / "inputfolder" / name).read_bytes())
    cv2.imwrite(str(src / "flat.png"), cv2.imread(str(src / "camera.jpg"))[:40, :60])
    outputs = []
    for dest in (tmp_path / "large-1", tmp_path / "large-2"):
        proc = bench("images", src, dest, "--upscale", "640x352", "--quality", 90)
        assert proc.returncode == 0, proc.stderr
        assert "wrote 3 JPEG images of 640x352 px" in proc.stdout
        outputs.append({p.name: p.read_bytes() for p in dest.iterdir()})
    assert set(outputs[0]) == {"camera.jpg", "rocket.jpg", "flat.jpg"}
    assert outputs[0] == outputs[1], "the same source and options give the same bytes"
    for name, data in outputs[0].items():
        assert data[:3] == b"\xff\xd8\xff", f"{name} is not a JPEG"
        assert cv2.imread(str(tmp_path / "large-1" / name)).shape == (352, 640, 3)


@pytest.mark.parametrize("size", ["4032", "0x10", "axb"])
def test_bench_images_refuses_a_size_that_is_not_width_x_height(tmp_path, size):
    proc = bench("images", REPO_ROOT / "inputfolder", tmp_path / "out", "--upscale", size)
    assert proc.returncode == 2
    assert "WIDTHxHEIGHT" in proc.stderr
    assert not (tmp_path / "out").exists()


# -- overload -----------------------------------------------------------------

def test_no_backoff_counts_goodput_refusals_and_exits_0_when_every_answer_is_200_or_503(stand_in, tmp_path):
    folder = make_folder(tmp_path / "half-busy", ["ok.jpg", "busy.png"])
    proc = bench(folder, stand_in.url, 2, "--repeat", 5, "--no-backoff", "--json")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    figures = summary["overload"]
    assert summary["errors_by_kind"] == {"http_503": 5}, "a refusal is still counted as http_503"
    assert (figures["accepted"], figures["refused"], figures["timeouts"], figures["other_errors"]) == (5, 0 + 5, 0, 0)
    assert figures["requests"] == 10 == stand_in.requests, "no pause, no resend beyond the budget"
    assert figures["goodput_img_per_s"] == pytest.approx(5 / summary["wall_s"], rel=1e-3)
    assert figures["refusals_per_s"] == pytest.approx(5 / summary["wall_s"], rel=1e-3)
    # The summary's latencies are rounded to the microsecond; the figures are not.
    assert figures["accepted_p50_ms"] <= figures["accepted_p99_ms"] <= summary["latency_max_ms"] + 1e-3
    assert figures["latency_of"] == "requests answered 200"


def test_no_backoff_text_report_and_a_timeout_fails_the_run(stand_in, tmp_path):
    folder = make_folder(tmp_path / "busy-and-slow", ["busy.png", "slow.jpg", "ok.jpg"])
    proc = bench(folder, stand_in.url, 3, "--no-backoff", "--timeout", TIMEOUT_S)
    assert proc.returncode == 1, "a time-out is a failure even under overload"
    assert "overload (--no-backoff)" in proc.stdout
    for words in ("goodput", "refusals", "time-outs     1", "requests answered 200"):
        assert words in proc.stdout


def test_the_default_client_resends_at_once_and_honor_retry_after_waits(stand_in, tmp_path):
    folder = make_folder(tmp_path / "busy", ["busy.png"])
    default = run_load(load_folder(folder), stand_in.url, 1, repeat=3)
    assert [r.status for r in default.records] == [503] * 3
    # The stand-in says Retry-After: 1, longer than the run: a client that honours it sends one request.
    honoring = run_load(load_folder(folder), stand_in.url, 1, duration_s=0.5, honor_retry_after=True)
    assert honoring.requests == 1 and honoring.errors_by_kind == {"http_503": 1}


# -- wrk ----------------------------------------------------------------------

def test_wrk_output_of_an_overload_is_read_with_statuses_apart():
    from bench.wrk import parse_output
    result = parse_output((REPO_ROOT / "tests" / "data" / "wrk-overload-64-connections.txt").read_text())
    assert (result.threads, result.connections, result.requests, result.duration_s) == (2, 64, 4568, 3.03)
    assert result.requests_per_s == 1505.54 and result.non_2xx == 4535
    assert result.statuses == {200: 33, 503: 4535}
    assert result.socket_errors == {"connect": 0, "read": 0, "write": 0, "timeout": 0}
    assert result.latency_percentiles_ms == {50: 29.43, 75: 71.94, 90: 555.54, 99: 1560.0}
    assert (result.latency_mean_ms, result.latency_max_ms) == (153.62, 1860.0)
    figures = result.overload_figures()
    assert (figures.accepted, figures.refused, figures.timeouts, figures.other_errors) == (33, 4535, 0, 0)
    assert figures.goodput_img_per_s == pytest.approx(33 / 3.03)
    assert figures.refusals_per_s == pytest.approx(4535 / 3.03)


def test_wrk_output_without_refusals_or_status_line_is_read():
    from bench.wrk import WrkOutputError, parse_output
    text = (REPO_ROOT / "tests" / "data" / "wrk-2-connections.txt").read_text()
    result = parse_output(text)
    assert (result.connections, result.requests, result.non_2xx, result.statuses) == (2, 41, 0, {200: 41})
    assert result.latency_percentiles_ms[99] == 168.14
    without_status = parse_output("\n".join(line for line in text.splitlines() if "DETSERVE_WRK" not in line))
    assert without_status.statuses == {} and without_status.requests == 41
    with pytest.raises(WrkOutputError, match="cut short"):
        parse_output(text.split("Requests/sec")[0])


def test_wrk_run_against_the_stand_in_counts_200s_and_503s(stand_in, tmp_path):
    import shutil
    if shutil.which("wrk") is None:
        pytest.skip("wrk is not installed (apt-get install wrk)")
    from bench.wrk import run_wrk
    folder = make_folder(tmp_path / "half-busy", ["ok.jpg", "busy.png"])
    result = run_wrk(folder, stand_in.url, connections=2, threads=2, duration_s=2, timeout_s=5)
    assert result.statuses[200] > 0 and result.statuses[503] > 0
    assert sum(result.statuses.values()) == result.requests
    assert result.non_2xx == result.statuses[503]
    assert stand_in.requests >= result.requests, "wrk counts only what the stand-in answered"
    assert result.overload_figures().timeouts == 0


def test_bench_wrk_without_wrk_says_how_to_install_it(ok_folder, stand_in):
    env = dict(os.environ, PATH=str(Path(sys.executable).parent))  # python, and no wrk
    proc = subprocess.run([sys.executable, "-m", "bench.wrk", str(ok_folder), stand_in.url, "--duration", "1"],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 2
    assert "apt-get install wrk" in proc.stderr
