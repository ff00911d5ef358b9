"""The load client against a real detserve server (2 workers, port 0, the real model)."""

import json
import subprocess
import sys

import pytest

from bench import load_folder, run_load
from bench.server_process import ServerRejectedArguments
from support import INPUT_FOLDER, REPO_ROOT, ServerProcess, sample_images


def test_a_sweep_of_1_and_4_threads_has_no_errors_and_sane_numbers(server, tmp_path):
    out = tmp_path / "sweep.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "sweep", str(INPUT_FOLDER), server.url + "/api/",
         "--threads", "1,4", "--repeat", "2", "-o", str(out), "--quiet"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(out.read_text())
    assert [row["threads"] for row in rows] == [1, 4]
    for row in rows:
        assert row["errors"] == 0, row["errors_by_kind"]
        assert row["requests"] == row["successes"] == 2 * len(sample_images())
        assert row["throughput_img_per_s"] > 0
        assert 0 < row["latency_p50_ms"] <= row["latency_p99_ms"] <= row["latency_max_ms"]
        # Keep-alive: warm-up opened one connection per thread and the counted requests reused them.
        assert row["connections_opened"] == row["threads"]
    assert "img/s" in proc.stdout


def test_run_load_in_process_checks_every_answer(server):
    summary = run_load(load_folder(INPUT_FOLDER), server.url + "/api/", 2, repeat=1)
    assert summary.errors == 0, summary.errors_by_kind
    assert {r.image for r in summary.records} == {p.name for p in sample_images()}
    assert all(r.status == 200 for r in summary.records)


def test_no_backoff_overload_of_a_real_server_answers_every_request_200_or_503(tmp_path):
    # One single-threaded worker (under 20 img/s) and a queue of one: of 40 senders that never
    # pause, more wait than can be served within the second a full queue holds them.
    with ServerProcess("--workers", "1", "--queue-size", "1", "--cv-threads", "1") as server:
        proc = subprocess.run(
            [sys.executable, "-m", "bench", str(INPUT_FOLDER), server.url + "/api/", "40", "--repeat", "8",
             "--no-backoff", "--json", "--quiet"],
            cwd=REPO_ROOT, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = json.loads(proc.stdout)
    figures = summary["overload"]
    assert figures["requests"] == 8 * len(sample_images())
    assert figures["refused"] > 0, "the queue of one was never full"
    assert figures["accepted"] > 0
    assert figures["accepted"] + figures["refused"] == figures["requests"], "every request got 200 or 503"
    assert figures["timeouts"] == figures["other_errors"] == 0
    assert figures["accepted"] == summary["successes"], "every 200 carried its own id and valid detections"


def test_large_images_made_on_the_fly_are_served(server):
    proc = subprocess.run(
        [sys.executable, "-m", "bench", str(INPUT_FOLDER), server.url + "/api/", "2", "--upscale", "1600x1200",
         "--json", "--quiet"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "wrote 6 JPEG images of 1600x1200 px" in proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["successes"] == summary["requests"] == len(sample_images())


def test_the_benchmark_launcher_says_when_the_server_does_not_know_a_flag():
    with pytest.raises(ServerRejectedArguments, match="does not know --no-such-flag"):
        with ServerProcess("--workers", "1", "--no-such-flag", "x"):
            pass
