"""The calibration command: the table it measures with the real model, and what it suggests."""

import re
import subprocess
import sys

from detserve.worker.calibration import recommend
from support import REPO_ROOT


def test_calibration_prints_a_table_and_flags_it_measured():
    proc = subprocess.run([sys.executable, "-m", "detserve.calibrate", "--rounds", "1"],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    rows = re.findall(r"^\s+(\d+)\s+([\d.]+)\s+([\d.]+)x$", proc.stdout, re.MULTILINE)
    assert [int(size) for size, _, _ in rows] == [1, 2, 4, 8]
    assert all(float(ms) > 0 for _, ms, _ in rows)
    assert float(rows[0][2]) == 1.0
    assert re.search(r"suggested: --max-batch [1248] --max-wait-ms \d+", proc.stdout)


def test_batching_that_does_not_pay_is_never_waited_for():
    # Measured on the 2-core CPU this project runs on, one thread: batch 1 is cheapest.
    assert recommend({1: 56.2, 2: 58.3, 4: 64.1, 8: 63.1}) == (1, 0)
    # Within 3% of the best: take what is queued, but still never wait.
    assert recommend({1: 30.1, 2: 29.9, 4: 31.0, 8: 33.6}) == (2, 0)


def test_batching_that_pays_is_waited_for_about_one_forward():
    assert recommend({1: 50.0, 2: 40.0, 4: 30.0, 8: 29.0}) == (8, 50)
