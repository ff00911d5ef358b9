"""Prometheus metrics in the text exposition format 0.0.4, standard library only.

All metrics live in the front end: workers report their timings inside each
Result, so one scrape of /metrics is already aggregated across every worker
process (and survives a worker's restart).
"""

import math
import threading
from dataclasses import dataclass

from .refusals import RejectReason

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64)
# Every RejectReason is exported at 0 from the start, so rate() and alerts see a
# series before the first refusal.


def _format_value(value):
    if value != value:  # the format spells it NaN; repr() would write nan
        return "NaN"
    if value == math.inf:
        return "+Inf"
    if value == -math.inf:
        return "-Inf"
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value)) if isinstance(value, float) else str(value)


def _escape_label_value(value):
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(text):
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _label_text(names, values, extra=()):
    # An empty value is no label (Prometheus reads them alike): a series that has
    # no model, such as a GET route's, keeps the name and labels it always had.
    pairs = [(n, v) for n, v in zip(names, values) if v != ""] + list(extra)
    if not pairs:
        return ""
    return "{" + ",".join(f'{n}="{_escape_label_value(v)}"' for n, v in pairs) + "}"


class _Metric:
    kind = ""

    def __init__(self, name, help_text, labelnames=()):
        self.name = name
        self.help_text = help_text
        self.labelnames = tuple(labelnames)
        self._lock = threading.Lock()

    def header(self):
        return [f"# HELP {self.name} {_escape_help(self.help_text)}", f"# TYPE {self.name} {self.kind}"]


class Counter(_Metric):
    kind = "counter"

    def __init__(self, name, help_text, labelnames=(), initial_labels=()):
        super().__init__(name, help_text, labelnames)
        self._values = {tuple(labels): 0.0 for labels in initial_labels}

    def inc(self, *labels, amount=1.0):
        with self._lock:
            self._values[labels] = self._values.get(labels, 0.0) + amount

    def value(self, *labels):
        with self._lock:
            return self._values.get(labels, 0.0)

    def samples(self, readings=None):
        with self._lock:
            items = sorted(self._values.items())
        if not items and not self.labelnames:
            items = [((), 0.0)]
        return [f"{self.name}{_label_text(self.labelnames, labels)} {_format_value(v)}" for labels, v in items]


class Gauge(_Metric):
    """A gauge read when scraped: read(readings) returns {label values: value} or one value."""

    kind = "gauge"

    def __init__(self, name, help_text, read, labelnames=()):
        super().__init__(name, help_text, labelnames)
        self._read = read

    def samples(self, readings=None):
        values = self._read(readings)
        if not isinstance(values, dict):
            values = {(): values}
        return [f"{self.name}{_label_text(self.labelnames, labels)} {_format_value(float(v))}"
                for labels, v in sorted(values.items())]


class Histogram(_Metric):
    kind = "histogram"

    def __init__(self, name, help_text, buckets, labelnames=(), initial_labels=()):
        super().__init__(name, help_text, labelnames)
        self.buckets = tuple(sorted(buckets)) + (math.inf,)
        # labels -> [per-bucket counts (not cumulative), sum, count]
        self._series = {tuple(labels): [[0] * len(self.buckets), 0.0, 0] for labels in initial_labels}

    def observe(self, value, *labels):
        with self._lock:
            series = self._series.get(labels)
            if series is None:
                series = self._series[labels] = [[0] * len(self.buckets), 0.0, 0]
            for i, bound in enumerate(self.buckets):
                if value <= bound:
                    series[0][i] += 1
                    break
            else:  # NaN compares false with every bound; +Inf must still equal _count
                series[0][-1] += 1
            series[1] += value
            series[2] += 1

    def samples(self, readings=None):
        with self._lock:
            snapshot = sorted((labels, (list(c), s, n)) for labels, (c, s, n) in self._series.items())
        if not snapshot and not self.labelnames:
            snapshot = [((), ([0] * len(self.buckets), 0.0, 0))]
        lines = []
        for labels, (counts, total, count) in snapshot:
            cumulative = 0
            for bound, bucket_count in zip(self.buckets, counts):
                cumulative += bucket_count
                le = _label_text(self.labelnames, labels, [("le", _format_value(float(bound)))])
                lines.append(f"{self.name}_bucket{le} {cumulative}")
            lines.append(f"{self.name}_sum{_label_text(self.labelnames, labels)} {_format_value(float(total))}")
            lines.append(f"{self.name}_count{_label_text(self.labelnames, labels)} {count}")
        return lines


@dataclass(frozen=True)
class GaugeReadings:
    """The values only the pool and the front end know, read at scrape time."""

    queue_depth: int
    in_flight: int
    workers_ready: int
    model_load_s: dict  # {(worker index, model name): seconds}


class Registry:
    def __init__(self):
        self._metrics = []

    def add(self, metric):
        self._metrics.append(metric)
        return metric

    def render(self, readings=None):
        """The exposition text; readings is what the gauges read."""
        lines = []
        for metric in self._metrics:
            lines.extend(metric.header())
            lines.extend(metric.samples(readings))
        return "\n".join(lines) + "\n"


class ServerMetrics:
    """Every metric detserve exposes, in one place."""

    def __init__(self, labels, workers, model_names=("yolov3-tiny",)):
        r = self.registry = Registry()
        by_model = [(name,) for name in model_names]  # every configured model exported from the start
        self.requests = r.add(Counter(
            "detserve_http_requests_total",
            "HTTP requests answered, by route, status code and (for a detection a model ran) model.",
            ("route", "code", "model")))
        self.request_duration = r.add(Histogram(
            "detserve_http_request_duration_seconds", "Time from reading a request to answering it.",
            LATENCY_BUCKETS_S, ("route",)))
        self.queue_wait = r.add(Histogram(
            "detserve_queue_wait_seconds", "Time a detection request waited before its batch started.",
            LATENCY_BUCKETS_S))
        self.inference = r.add(Histogram(
            "detserve_inference_seconds", "Compute time of one forward pass and its post-processing, by model.",
            LATENCY_BUCKETS_S, ("model",), by_model))
        self.batch_size = r.add(Histogram(
            "detserve_batch_size", "Images in one forward pass, by model.", BATCH_SIZE_BUCKETS, ("model",), by_model))
        self.images = r.add(Counter("detserve_images_processed_total", "Images run through the model."))
        self.detections = r.add(Counter(
            "detserve_detections_total", "Objects detected, by COCO label.", ("label",),
            initial_labels=[(label,) for label in labels]))
        self.rejections = r.add(Counter(
            "detserve_rejected_requests_total",
            f"Detection requests refused, by reason ({', '.join(reason.value for reason in RejectReason)}).",
            ("reason",), initial_labels=[(reason.value,) for reason in RejectReason]))
        self.worker_restarts = r.add(Counter(
            "detserve_worker_restarts_total", "Worker processes replaced after dying or hanging."))
        r.add(Gauge("detserve_queue_depth", "Requests waiting for a worker.", lambda g: g.queue_depth))
        r.add(Gauge("detserve_in_flight_requests", "Detection requests accepted and not yet answered.",
                    lambda g: g.in_flight))
        r.add(Gauge("detserve_workers", "Worker processes configured.", lambda g: workers))
        r.add(Gauge("detserve_workers_ready", "Worker processes with the model loaded.", lambda g: g.workers_ready))
        r.add(Gauge("detserve_model_load_seconds",
                    "Time the worker in each slot took to load each model and run its first forward pass.",
                    lambda g: g.model_load_s, ("worker", "model")))

    def count_request(self, route, status, model=""):
        """One answered HTTP request; model: the model that ran for it, "" when none did."""
        self.requests.inc(route, str(status), model)

    def reject(self, reason):
        self.rejections.inc(reason.value)

    def record_results(self, results):
        """Count one batch's answers as a worker reported them."""
        # Every result of one model's passes carries all of them, sizes and times: count each pass once.
        one_per_model = {r.model: r for r in results if r.batch_size and r.model is not None}
        for model, result in one_per_model.items():
            for images, seconds in result.forward_passes or ((result.batch_size, result.inference_s),):
                self.batch_size.observe(images, model)
                self.inference.observe(seconds, model)
        for result in results:
            self.queue_wait.observe(result.queue_wait_s)
            if result.status == 200:
                self.images.inc(amount=result.images_run)
                for label in result.labels:
                    self.detections.inc(label)

    def render(self, readings):
        """The exposition text; readings is a GaugeReadings taken just now."""
        return self.registry.render(readings)
