"""/metrics: a strict Prometheus text-format (0.0.4) parser, and exact counts after real traffic.

The parser (in support.py, where every test reads /metrics with it) is
written from the format's rules, so a test fails when the exposition is wrong
even where Prometheus itself would be lenient. Its own tests here feed it
broken texts first; then real servers (the real model, the images in
inputfolder/) are driven with a known mix of requests and every counter is
checked against what the client saw.
"""

import collections
import json
import math
import os
import signal
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pytest

from detserve import metrics as exposition
from detserve.model_files import DEFAULT_MODEL_DIR
from support import ExpositionError, Scrape, ServerProcess, access_line, b64, image_bytes, parse_exposition, \
    sample_images, scrape_metrics, wait_until

WORKERS = 2

MODEL = {"model": "yolov3-tiny"}  # the default model: every detection of these tests ran through it


def coco_labels():
    """Read here, not with detserve's own reader, so the label set is checked independently."""
    text = (DEFAULT_MODEL_DIR / "coco.names").read_text()
    return [label.strip() for label in text.splitlines() if label.strip()]


def sample_image_pairs():
    return [(path.name, image_bytes(path.name)) for path in sample_images()]


# -- the parser's own tests: it must refuse what the format forbids ---------------------------------
VALID_TEXT = """\
# A plain comment is allowed anywhere.
# HELP demo_requests_total Requests, with a backslash \\\\ and a line break \\n in the help.
# TYPE demo_requests_total counter
demo_requests_total{path="/a \\"quoted\\"",note="back\\\\slash\\nnewline",} 3 1700000000000
demo_requests_total{path="/b"} 0

# TYPE demo_temperature gauge
demo_temperature NaN
demo_temperature{where="out"} -Inf
# TYPE demo_latency_seconds histogram
demo_latency_seconds_bucket{le="0.5"} 1
demo_latency_seconds_bucket{le="1.0"} 2
demo_latency_seconds_bucket{le="+Inf"} 2
demo_latency_seconds_sum 1.25e0
demo_latency_seconds_count 2
"""


def test_parser_reads_a_valid_exposition():
    scrape = parse_exposition(VALID_TEXT)
    assert scrape.family("demo_requests_total").help == \
        "Requests, with a backslash \\ and a line break \n in the help."
    assert scrape.value("demo_requests_total", path='/a "quoted"', note="back\\slash\nnewline") == 3
    assert math.isnan(scrape.value("demo_temperature"))
    assert scrape.value("demo_temperature", where="out") == -math.inf
    assert scrape.histogram("demo_latency_seconds") == ([(0.5, 1), (1.0, 2), (math.inf, 2)], 1.25, 2)


BROKEN_TEXTS = {
    "sample before its TYPE": "x_total 1\n# TYPE x_total counter\n",
    "sample without any TYPE": "# HELP x_total Things.\nx_total 1\n",
    "two TYPE lines": "# TYPE x_total counter\n# TYPE x_total counter\nx_total 1\n",
    "two HELP lines": "# HELP g One.\n# HELP g Two.\n# TYPE g gauge\ng 1\n",
    "HELP after samples": "# TYPE g gauge\ng 1\n# HELP g Late.\n",
    "unknown type": "# TYPE g gauges\ng 1\n",
    "metric name starting with a digit": "# TYPE 1g gauge\n1g 1\n",
    "label name with a dash": '# TYPE g gauge\ng{la-bel="x"} 1\n',
    "label name starting with a digit": '# TYPE g gauge\ng{1a="x"} 1\n',
    "unescaped quote in a label value": '# TYPE g gauge\ng{a="say "hi""} 1\n',
    "unknown escape in a label value": '# TYPE g gauge\ng{a="tab\\there"} 1\n',
    "unterminated label value": '# TYPE g gauge\ng{a="x} 1\n',
    "same label twice": '# TYPE g gauge\ng{a="x",a="y"} 1\n',
    "duplicate series": '# TYPE g gauge\ng{a="x",b="y"} 1\ng{b="y",a="x"} 2\n',
    "lower-case nan": "# TYPE g gauge\ng nan\n",
    "Python-only float": "# TYPE g gauge\ng 1_000\n",
    "not a number": "# TYPE g gauge\ng many\n",
    "bad timestamp": "# TYPE g gauge\ng 1 soon\n",
    "missing value": "# TYPE g gauge\ng\n",
    "no final newline": "# TYPE g gauge\ng 1",
    "carriage return": "# TYPE g gauge\r\ng 1\r\n",
    "counter not ending in _total": "# TYPE hits counter\nhits 1\n",
    "negative counter": "# TYPE hits_total counter\nhits_total -1\n",
    "families interleaved": "# TYPE a gauge\na 1\n# TYPE b gauge\nb 1\na{x=\"1\"} 2\n",
    "buckets not cumulative": '# TYPE h histogram\nh_bucket{le="1"} 2\nh_bucket{le="+Inf"} 1\n'
                              "h_sum 1\nh_count 1\n",
    "le not ascending": '# TYPE h histogram\nh_bucket{le="2"} 1\nh_bucket{le="1"} 1\n'
                        'h_bucket{le="+Inf"} 1\nh_sum 1\nh_count 1\n',
    "no +Inf bucket": '# TYPE h histogram\nh_bucket{le="1"} 1\nh_sum 1\nh_count 1\n',
    "_count differs from +Inf": '# TYPE h histogram\nh_bucket{le="+Inf"} 2\nh_sum 1\nh_count 3\n',
    "no _sum": '# TYPE h histogram\nh_bucket{le="+Inf"} 2\nh_count 2\n',
    "bucket without le": '# TYPE h histogram\nh_bucket 2\nh_bucket{le="+Inf"} 2\nh_sum 1\nh_count 2\n',
}


@pytest.mark.parametrize("text", BROKEN_TEXTS.values(), ids=BROKEN_TEXTS.keys())
def test_parser_refuses_what_the_format_forbids(text):
    with pytest.raises(ExpositionError):
        parse_exposition(text)


# -- the exposition classes in detserve/metrics.py -------------------------------------------------
def test_exposition_escapes_label_values_and_help_and_round_trips():
    tricky = 'say "hi" \\ to C:\\path\nand a second line'
    registry = exposition.Registry()
    counter = registry.add(exposition.Counter("t_events_total", "Help with \\ and\na newline.", ("what",)))
    counter.inc(tricky)
    counter.inc(tricky, amount=2)
    counter.inc("plain")
    registry.add(exposition.Gauge("t_level", "A gauge.",
                                          lambda readings: {(tricky,): math.nan, ("up",): math.inf}, ("what",)))
    histogram = registry.add(exposition.Histogram("t_size_bytes", "A histogram.", (1, 10), ("what",)))
    for value in (0.5, 1, 10, 11, math.nan):  # a bound is inclusive; NaN lands in +Inf only
        histogram.observe(value, tricky)
    text = registry.render()
    # Escaped, the newline in the value and in the help cannot start a line of its own.
    assert not any(line.startswith(("and a second line", "a newline")) for line in text.splitlines())
    assert f'what="{tricky}"' not in text

    scrape = parse_exposition(text)
    assert scrape.family("t_events_total").help == "Help with \\ and\na newline."
    assert scrape.value("t_events_total", what=tricky) == 3
    assert scrape.value("t_events_total", what="plain") == 1
    assert math.isnan(scrape.value("t_level", what=tricky))
    assert scrape.value("t_level", what="up") == math.inf
    buckets, _, count = scrape.histogram("t_size_bytes", what=tricky)
    assert buckets == [(1.0, 2), (10.0, 3), (math.inf, 5)]
    assert count == 5
    assert "t_level{what=" in text and " NaN\n" in text and " +Inf\n" in text


def test_unlabelled_metrics_are_exported_before_their_first_event():
    registry = exposition.Registry()
    registry.add(exposition.Counter("t_restarts_total", "Restarts."))
    registry.add(exposition.Histogram("t_wait_seconds", "Waits.", (0.1, 1)))
    scrape = parse_exposition(registry.render())
    assert scrape.value("t_restarts_total") == 0
    assert scrape.histogram("t_wait_seconds") == ([(0.1, 0), (1.0, 0), (math.inf, 0)], 0, 0)


# -- a real server under known traffic --------------------------------------------------------------
VALID_COUNT = 10
BAD_BODIES = [  # all three are found by a worker, so each also waits in the queue once
    json.dumps({"id": "bad-base64", "image": "@@@ not base64 @@@"}).encode(),
    json.dumps({"id": "not-an-image", "image": b64(b"hello, this is not a picture")}).encode(),
    b'{"id": "malformed", "image": ',
]


def wait_until_counted(srv, request_ids):
    """A request is counted just after its answer is sent, just before its access line is
    written: once every line is there, every count is in, and a scrape sees them all."""
    for request_id in request_ids:
        access_line(srv, request_id)


@dataclass
class Traffic:
    first: Scrape
    last: Scrape
    answers: list  # (status, payload) per request sent


@pytest.fixture(scope="module")
def traffic():
    """A fresh server batching up to 4: one scrape, 10 valid and 3 bad detections sent 4 at a time, a scrape."""
    with ServerProcess("--workers", str(WORKERS), "--max-batch", "4") as srv:
        first = scrape_metrics(srv, "first-scrape")
        images = sample_image_pairs()
        bodies = [{"id": f"valid-{i}-{images[i % len(images)][0]}", "image": b64(images[i % len(images)][1])}
                  for i in range(VALID_COUNT)]
        for position, bad in zip((2, 6, 11), BAD_BODIES):  # spread among the valid ones
            bodies.insert(position, bad)

        request_ids = [f"metrics-{i}" for i in range(len(bodies))]

        def post(body, request_id):
            headers = {"Content-Type": "application/json", "X-Request-ID": request_id}
            status, _, payload = srv.request("/api/", body, headers=headers)
            return status, payload

        with ThreadPoolExecutor(max_workers=4) as pool:
            answers = list(pool.map(post, bodies, request_ids))
        wait_until_counted(srv, ["first-scrape", *request_ids])
        yield Traffic(first, scrape_metrics(srv), answers)


def test_a_fresh_server_exports_every_metric_at_zero(traffic):
    scrape = traffic.first
    assert scrape.value("detserve_images_processed_total") == 0
    assert scrape.value("detserve_worker_restarts_total") == 0
    assert set(scrape.series("detserve_detections_total").values()) == {0}
    assert scrape.series("detserve_http_requests_total") == {}  # this scrape is counted once answered
    for name, labels in (("detserve_queue_wait_seconds", {}), ("detserve_inference_seconds", MODEL),
                         ("detserve_batch_size", MODEL)):
        buckets, total, count = scrape.histogram(name, **labels)
        assert count == 0 and total == 0 and {c for _, c in buckets} == {0}
    for reason in ("overload", "deadline", "bad_input"):
        assert scrape.value("detserve_rejected_requests_total", reason=reason) == 0


def test_every_metric_the_issue_asks_for_is_there_with_its_type(traffic):
    expected = {
        "detserve_http_requests_total": "counter",
        "detserve_http_request_duration_seconds": "histogram",
        "detserve_queue_wait_seconds": "histogram",
        "detserve_inference_seconds": "histogram",
        "detserve_batch_size": "histogram",
        "detserve_images_processed_total": "counter",
        "detserve_detections_total": "counter",
        "detserve_queue_depth": "gauge",
        "detserve_in_flight_requests": "gauge",
        "detserve_workers_ready": "gauge",
        "detserve_worker_restarts_total": "counter",
        "detserve_model_load_seconds": "gauge",
        "detserve_rejected_requests_total": "counter",
    }
    families = traffic.last.families
    assert {name: families[name].type for name in expected if name in families} == expected
    for family in families.values():
        assert family.name.startswith("detserve_")
        assert family.help, f"{family.name} has no HELP"


def test_the_traffic_was_what_the_test_meant_to_send(traffic):
    statuses = collections.Counter(status for status, _ in traffic.answers)
    assert statuses == {200: VALID_COUNT, 400: len(BAD_BODIES)}, traffic.answers


def test_requests_are_counted_by_route_and_code(traffic):
    scrape = traffic.last
    assert scrape.series("detserve_http_requests_total") == {
        frozenset({("route", "/api/"), ("code", "200"), ("model", "yolov3-tiny")}): VALID_COUNT,
        frozenset({("route", "/api/"), ("code", "400")}): len(BAD_BODIES),
        frozenset({("route", "/metrics"), ("code", "200")}): 1,  # the first scrape
    }
    _, _, count = scrape.histogram("detserve_http_request_duration_seconds", route="/api/")
    assert count == VALID_COUNT + len(BAD_BODIES)
    _, _, count = scrape.histogram("detserve_http_request_duration_seconds", route="/metrics")
    assert count == 1


def test_rejections_count_bad_input_and_nothing_else(traffic):
    series = {dict(labels)["reason"]: v for labels, v in
              traffic.last.series("detserve_rejected_requests_total").items()}
    assert series.pop("bad_input") == len(BAD_BODIES)
    assert {"overload", "deadline"} <= set(series)
    assert set(series.values()) == {0}, series


def test_images_batches_and_queue_waits_add_up(traffic):
    scrape = traffic.last
    assert scrape.value("detserve_images_processed_total") == VALID_COUNT
    _, batch_total, batches = scrape.histogram("detserve_batch_size", **MODEL)
    assert batch_total == VALID_COUNT  # however the 10 were batched, each was in exactly one batch
    assert 1 <= batches <= VALID_COUNT
    _, _, inferences = scrape.histogram("detserve_inference_seconds", **MODEL)
    assert inferences == batches  # one compute time per batch
    _, _, waits = scrape.histogram("detserve_queue_wait_seconds")
    assert waits == VALID_COUNT + len(BAD_BODIES)  # every request that reached a worker waited once


def test_detections_by_label_match_the_responses_and_cover_all_coco_labels(traffic):
    served = collections.Counter(d["label"] for status, payload in traffic.answers if status == 200
                                 for d in payload["detections"])
    assert served, "the sample images should yield some detections"
    exported = {dict(labels)["label"]: v for labels, v in traffic.last.series("detserve_detections_total").items()}
    labels = coco_labels()
    assert len(labels) == 80
    assert set(exported) == set(labels)
    assert exported == {label: served.get(label, 0) for label in labels}


def test_worker_gauges(traffic):
    scrape = traffic.last
    assert scrape.value("detserve_workers_ready") == WORKERS
    assert scrape.value("detserve_worker_restarts_total") == 0
    load_times = {dict(labels)["worker"]: v for labels, v in scrape.series("detserve_model_load_seconds").items()}
    assert set(load_times) == {str(i) for i in range(WORKERS)}
    assert all(v > 0 for v in load_times.values())
    # Read after every answer arrived: nothing waits and nothing is in flight.
    assert scrape.value("detserve_queue_depth") == 0
    assert scrape.value("detserve_in_flight_requests") == 0


def test_overload_is_counted_as_overload(tight_server):
    """One worker, stopped while a burst of 16 arrives, a queue of one: the rest overflow."""
    srv, image = tight_server, sample_image_pairs()[0][1]
    request_ids = [f"burst-{uuid.uuid4().hex}" for _ in range(16)]

    def post(request_id):
        status, headers, _ = srv.request("/api/?id=burst", image,
                                         headers={"Content-Type": "image/jpeg", "X-Request-ID": request_id})
        if status == 503:
            assert headers["Retry-After"] == "1"
        return status

    before = scrape_metrics(srv)
    (worker,) = srv.worker_pids()
    os.kill(worker, signal.SIGSTOP)  # the queue stays full until every refusal is out
    try:
        with ThreadPoolExecutor(max_workers=16) as pool:
            futures = [pool.submit(post, request_id) for request_id in request_ids]
            held = 3  # two sent to the stopped worker (its credit), one in the queue
            wait_until(lambda: sum(f.done() for f in futures) >= 16 - held, "every request that found no room refused")
            os.kill(worker, signal.SIGCONT)
            statuses = collections.Counter(f.result() for f in futures)
    finally:
        os.kill(worker, signal.SIGCONT)
    wait_until_counted(srv, request_ids)
    assert set(statuses) <= {200, 503}, statuses
    assert statuses[503] > 0, "a burst of 16 never overflowed a queue of 1"
    after = scrape_metrics(srv)

    def counted(name, **labels):
        """What the burst added to a counter."""
        return after.count(name, **labels) - before.count(name, **labels)

    assert counted("detserve_rejected_requests_total", reason="overload") == statuses[503]
    assert counted("detserve_http_requests_total", route="/api/", code="503") == statuses[503]
    assert counted("detserve_http_requests_total", route="/api/", code="200", **MODEL) == statuses[200]
    assert counted("detserve_images_processed_total") == statuses[200]
    batched = after.histogram("detserve_batch_size", **MODEL)[1] - before.histogram("detserve_batch_size", **MODEL)[1]
    assert batched == statuses[200]
