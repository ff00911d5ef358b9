"""Turning per-request records into the figures a run reports: percentiles and the Summary.

Percentiles are nearest-rank: p is the smallest recorded latency with at
least p% of the latencies at or below it, so every percentile reported is a
latency that some request really had.
"""

import math
from collections import Counter
import statistics
from dataclasses import dataclass, field, fields

PERCENTILE_METHOD = "nearest-rank"
PERCENTILES = (50, 90, 95, 99)


@dataclass
class Summary:
    """What one measurement found; to_dict() is the machine-readable form (without the records)."""
    url: str
    threads: int
    images: int  # distinct images in the folder
    requests: int  # counted requests; warm-up ones are not
    successes: int
    errors: int
    errors_by_kind: dict
    wall_s: float
    throughput_img_per_s: float  # successes per second of wall time
    latency_mean_ms: float
    latency_p50_ms: float
    latency_p90_ms: float
    latency_p95_ms: float
    latency_p99_ms: float
    latency_max_ms: float
    # The seed client's figure, kept so results compare with its scaling tables.
    avg_response_time_s: float
    warmup_requests: int
    warmup_errors: int
    connections_opened: int
    interrupted: bool
    percentile_method: str = PERCENTILE_METHOD
    latency_of: str = "successful requests"
    records: list = field(default_factory=list, repr=False)  # loadgen.RequestRecord, one per counted request

    def to_dict(self):
        # Not dataclasses.asdict: it would deep-copy every record only to drop them.
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "records"}


def percentile(sorted_values, p):
    """Nearest-rank percentile of an ascending, non-empty sequence."""
    rank = max(1, math.ceil(p / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def summarize(records, wall_s, *, url, threads, images, warmup_requests=0, warmup_errors=0,
              connections_opened=0, interrupted=False):
    """Build the Summary of a run from its counted records and its wall time."""
    latencies_ms = sorted(r.latency_ms for r in records if r.ok)
    errors_by_kind = Counter(r.error for r in records if not r.ok)
    spread = {f"latency_p{p}_ms": _ms(percentile(latencies_ms, p) if latencies_ms else None)
              for p in PERCENTILES}
    return Summary(
        url=url, threads=threads, images=images,
        requests=len(records), successes=len(latencies_ms), errors=len(records) - len(latencies_ms),
        errors_by_kind=dict(sorted(errors_by_kind.items())),
        wall_s=round(wall_s, 4),
        throughput_img_per_s=round(len(latencies_ms) / wall_s, 3) if wall_s > 0 else 0.0,
        latency_mean_ms=_ms(statistics.fmean(latencies_ms) if latencies_ms else None),
        **spread,
        latency_max_ms=_ms(latencies_ms[-1] if latencies_ms else None),
        avg_response_time_s=round(wall_s / len(records), 5) if records else None,
        warmup_requests=warmup_requests, warmup_errors=warmup_errors,
        connections_opened=connections_opened, interrupted=interrupted,
        records=list(records),
    )


def _ms(value):
    # Microsecond resolution is already finer than anything a run can resolve.
    return None if value is None else round(value, 3)
