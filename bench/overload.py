"""The figures of a run against a server that refuses work: goodput, refusals,
time-outs, and the latency of the requests it accepted.

Under overload the usual summary misleads: its error count is mostly the
server's correct refusals, and its request rate is mostly how fast refusals
come back. What matters is how many images were served per second (goodput),
that nobody waited into a time-out, and how long the accepted ones took.
Both load sources (bench's threads and wrk) are reduced to this one shape so
that they can be compared.
"""

from dataclasses import asdict, dataclass

from bench.check import TIMEOUT, http_error_kind
from bench.stats import percentile

REFUSED = http_error_kind(503)


@dataclass(frozen=True)
class OverloadFigures:
    source: str  # "bench" or "wrk"
    connections: int
    wall_s: float
    requests: int
    accepted: int  # answered 200
    refused: int  # answered 503
    timeouts: int  # no answer within the client's time-out
    other_errors: int  # anything else: 4xx, 5xx other than 503, connection errors, bad bodies
    accepted_p50_ms: float  # None when nothing was accepted
    accepted_p99_ms: float
    latency_of: str  # which requests the percentiles cover

    @property
    def goodput_img_per_s(self):
        return self.accepted / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def refusals_per_s(self):
        return self.refused / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def requests_per_s(self):
        return self.requests / self.wall_s if self.wall_s > 0 else 0.0

    def to_dict(self):
        return asdict(self) | {"goodput_img_per_s": round(self.goodput_img_per_s, 3),
                               "refusals_per_s": round(self.refusals_per_s, 3),
                               "requests_per_s": round(self.requests_per_s, 3)}


def from_summary(summary):
    """The OverloadFigures of a bench Summary (run_load's result)."""
    accepted_ms = sorted(r.latency_ms for r in summary.records if r.status == 200)
    kinds = summary.errors_by_kind
    refused, timeouts = kinds.get(REFUSED, 0), kinds.get(TIMEOUT, 0)
    return OverloadFigures(
        source="bench", connections=summary.threads, wall_s=summary.wall_s, requests=summary.requests,
        accepted=len(accepted_ms), refused=refused, timeouts=timeouts,
        # A 200 with a wrong body is accepted (it is in `accepted`) and still an error of its own.
        other_errors=summary.errors - refused - timeouts,
        accepted_p50_ms=percentile(accepted_ms, 50) if accepted_ms else None,
        accepted_p99_ms=percentile(accepted_ms, 99) if accepted_ms else None,
        latency_of="requests answered 200",
    )


def format_figures(figures, capacity_img_per_s=None):
    """A few lines for a person; with a capacity, goodput is also given as a fraction of it."""
    f = figures
    goodput = f"{f.goodput_img_per_s:.1f} img/s (200s per second)"
    if capacity_img_per_s:
        goodput += f", {f.goodput_img_per_s / capacity_img_per_s:.2f} x the capacity of {capacity_img_per_s:.1f}"
    latency = ("-" if f.accepted_p50_ms is None
               else f"p50 {f.accepted_p50_ms:.1f}  p99 {f.accepted_p99_ms:.1f}  ({f.latency_of})")
    rows = [
        ("load", f"{f.source}, {f.connections} connections that ignore Retry-After, {f.wall_s:.1f} s"),
        ("goodput", goodput),
        ("refusals", f"{f.refusals_per_s:.0f}/s (503), {f.refused} in all"),
        ("requests", f"{f.requests} ({f.requests_per_s:.0f}/s), {f.accepted} accepted"),
        ("time-outs", f"{f.timeouts}"),
        ("other errors", f"{f.other_errors}"),
        ("latency ms", latency),
    ]
    width = max(len(label) for label, _ in rows) + 2
    return "\n".join(f"  {label:<{width}}{value}" for label, value in rows)
