"""A thread sweep: one measurement per thread count, each a row of a results file.

Rows carry a replicas column so that a cluster experiment (scale to N
replicas, wait for the rollout, sweep) can append its rows for every replica
count into one file.
"""

import datetime

from bench.loadgen import DEFAULT_TIMEOUT_S, run_load

ROW_FIELDS = (
    "replicas", "threads", "requests", "successes", "errors", "errors_by_kind", "wall_s",
    "throughput_img_per_s", "latency_mean_ms", "latency_p50_ms", "latency_p90_ms", "latency_p95_ms",
    "latency_p99_ms", "latency_max_ms", "avg_response_time_s", "warmup_requests", "connections_opened",
    "percentile_method", "url", "started_at",
)


def parse_thread_counts(text):
    """'1,2,4' -> [1, 2, 4]; a ValueError says what is wrong."""
    try:
        counts = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"--threads wants whole numbers separated by commas, e.g. 1,2,4,8,16, not {text!r}") from None
    if not counts or min(counts) < 1:
        raise ValueError(f"--threads wants thread counts of at least 1, not {text!r}")
    return counts


def sweep_row(summary, replicas=None, started_at=None):
    row = {key: value for key, value in summary.to_dict().items() if key in ROW_FIELDS}
    row.update(replicas=replicas, started_at=started_at)
    return row


def run_sweep(images, url, thread_counts, *, duration_s=None, repeat=1, warmup=None,
              timeout_s=DEFAULT_TIMEOUT_S, replicas=None, progress=None):
    """Yield (row, summary) for each thread count in turn.

    warmup=None warms up with one request per thread, so every connection is
    open before the clock starts (a server with more workers than threads may
    still have a worker whose first, slower image falls inside the run).
    progress is run_load's progress callable, used for every point.
    """
    for threads in thread_counts:
        started_at = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        summary = run_load(images, url, threads, repeat=repeat, duration_s=duration_s,
                           warmup=threads if warmup is None else warmup, timeout_s=timeout_s,
                           progress=progress)
        yield sweep_row(summary, replicas, started_at), summary
        if summary.interrupted:
            return
