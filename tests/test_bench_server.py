"""The load client against a real detserve server (2 workers, port 0, the real model)."""

import json
import subprocess
import sys

from bench import load_folder, run_load
from support import INPUT_FOLDER, REPO_ROOT, sample_images


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
