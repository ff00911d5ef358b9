"""Everything the tests share: sample images and request bodies, base64, multipart bodies, one raw-socket
exchange, reading /metrics, waiting on a condition, the docs' curl examples, plain HTTP requests and the
server launcher (bench's, so tests and benchmarks start detserve alike).

Test modules import this module (and ``reference``), never each other; conftest.py holds only fixtures.
"""

import base64
import collections
import functools
import json
import math
import re
import shlex
import socket
import struct
import subprocess
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from bench.server_process import REPO_ROOT, ServerFailed, ServerProcess, http_request, worker_pids
from reference import assert_same_detections, reference_detections

__all__ = ["REPO_ROOT", "INPUT_FOLDER", "ServerFailed", "ServerProcess", "http_request", "worker_pids",
           "sample_images", "image_bytes", "camera_jpeg", "b64", "png_claiming", "camera_body", "camera_json",
           "PDF", "FORM_BOUNDARY", "form_part", "multipart_body", "form_content_type",
           "RawResponse", "raw_exchange", "read_response", "sockets_at", "unread_bytes", "open_connections",
           "ExpositionError", "Scrape", "parse_exposition", "scrape_metrics", "metric_value",
           "EVENT_TIMEOUT_S", "poll_until", "wait_until", "wait_until_ready", "access_line", "logged_batch_size",
           "assert_still_serving", "iou", "DocExample", "doc_examples", "run_doc_example", "assert_doc_examples_answer_as_shown"]

INPUT_FOLDER = REPO_ROOT / "inputfolder"
# A bound on waiting for something that should happen, never asserted as a duration:
# on a busy 2-core machine a worker's spawn alone can take seconds.
EVENT_TIMEOUT_S = 30


# -- images --------------------------------------------------------------------------------------
def sample_images():
    """The sample image files in inputfolder/, sorted by name."""
    return sorted(p for p in INPUT_FOLDER.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))


@functools.lru_cache(maxsize=None)
def image_bytes(name):
    """The bytes of inputfolder/NAME, read once per test session."""
    return (INPUT_FOLDER / name).read_bytes()


def camera_jpeg():
    """The cameraman (inputfolder/camera.jpg): YOLOv3-tiny finds a person in it."""
    return image_bytes("camera.jpg")


def b64(data):
    return base64.b64encode(data).decode()


def camera_body(image_id="camera"):
    """The JSON request for the cameraman, as a dict (ServerProcess.request sends a dict as JSON)."""
    return {"id": image_id, "image": b64(camera_jpeg())}


def camera_json(image_id="camera"):
    """The same request as the bytes of its body, for raw sockets."""
    return json.dumps(camera_body(image_id)).encode()


def png_claiming(width, height):
    """A tiny, well-formed PNG whose header claims width x height pixels."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


# -- multipart/form-data bodies, written out by hand -------------------------------------------------
FORM_BOUNDARY = "detserve-test-boundary"
PDF = b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"


def form_part(name, content, filename=None, extra_headers=()):
    """One part: its Content-Disposition (and extra header lines), a blank line, its content."""
    disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename is not None else "")
    headers = [f"Content-Disposition: {disposition}", *extra_headers]
    return "\r\n".join(headers).encode() + b"\r\n\r\n" + content


def multipart_body(*parts, boundary=FORM_BOUNDARY, close=True):
    """A multipart body of the given parts (each from form_part() or raw header-and-content bytes)."""
    dash = b"--" + boundary.encode()
    body = b"".join(dash + b"\r\n" + p + b"\r\n" for p in parts)
    return body + (dash + b"--\r\n" if close else b"")


def form_content_type(boundary=FORM_BOUNDARY):
    return f"multipart/form-data; boundary={boundary}"


# -- raw sockets ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class RawResponse:
    status: int
    head: str   # the status line and the headers, as sent
    body: bytes

    def header(self, name):
        """The value of the first header called name (any case), or None."""
        for line in self.head.split("\r\n")[1:]:
            key, _, value = line.partition(":")
            if key.strip().lower() == name.lower():
                return value.strip()
        return None

    def json(self):
        return json.loads(self.body)


def raw_exchange(port, request_bytes, timeout_s=15, body=b""):
    """Send request_bytes, then body, on a fresh connection to 127.0.0.1:port; return the first response.

    The body goes separately because a server may answer and close before
    reading a body it refused. The first response is read as bytes, so an
    interim "100 Continue" is returned as what it is, never skipped.
    """
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
        sock.sendall(request_bytes)
        if body:
            try:
                sock.sendall(body)
            except (BrokenPipeError, ConnectionResetError):
                pass
        return read_response(sock)


def read_response(sock):
    """Read one response from sock as a RawResponse; without a Content-Length the body ends at EOF.

    Bytes after the head are taken as this response's body: read an interim
    "100 Continue" before sending what would make the server answer again.
    """
    received = b""
    while b"\r\n\r\n" not in received:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"connection closed before a full response head: {received[:200]!r}")
        received += chunk
    head, _, content = received.partition(b"\r\n\r\n")
    response = RawResponse(int(head.split(b" ")[1]), head.decode("latin-1"), b"")
    length = response.header("Content-Length")
    if response.status < 200 or response.status in (204, 304):
        length = "0"  # never a body, whatever the headers say
    while length is None or len(content) < int(length):
        chunk = sock.recv(65536)
        if not chunk:
            break
        content += chunk
    return RawResponse(response.status, response.head, content if length is None else content[:int(length)])


# -- the kernel's view of a server's connections (Linux /proc) ---------------------------------------
TCP_STATES = {"01": "ESTABLISHED", "06": "TIME_WAIT", "08": "CLOSE_WAIT", "0A": "LISTEN"}  # the ones tests ask for


def sockets_at(port):
    """(state, unread bytes) of every IPv4 TCP socket whose local port is `port`: for a server on
    127.0.0.1, its listening socket and its own end of each client connection."""
    found = []
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[1].rsplit(":", 1)[1], 16) == port:
            found.append((TCP_STATES.get(fields[3], fields[3]), int(fields[4].split(":")[1], 16)))
    return found


def unread_bytes(port):
    """Bytes clients sent that the server at port has not read yet (0: it took in all it was sent)."""
    return sum(unread for state, unread in sockets_at(port) if state != "LISTEN")


def open_connections(port):
    """Client connections the server at port still holds open (closing is the server's own close)."""
    return sum(state in ("ESTABLISHED", "CLOSE_WAIT") for state, _ in sockets_at(port))


# -- /metrics: a strict Prometheus text-format (0.0.4) parser ----------------------------------------
# Written from the format's rules, so a test fails when the exposition is wrong
# even where Prometheus itself would be lenient; test_metrics tests it first.
METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
# Go's ParseFloat, as the format requires, minus hex floats and Python's extras (underscores, "inf").
FLOAT_TEXT = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
SPECIAL_VALUES = {"NaN": math.nan, "+Inf": math.inf, "-Inf": -math.inf}
TIMESTAMP = re.compile(r"-?\d+")
TYPES = ("counter", "gauge", "histogram", "summary", "untyped")


class ExpositionError(ValueError):
    pass


@dataclass
class Family:
    name: str
    type: str = None
    help: str = None
    # (sample name, frozenset of (label, value)) -> value
    samples: dict = field(default_factory=dict)


@dataclass
class Scrape:
    families: dict

    def family(self, name):
        assert name in self.families, f"no metric family {name!r}"
        return self.families[name]

    def series(self, name, sample_name=None):
        """{frozenset(labels): value} for the samples called sample_name (default: name)."""
        wanted = sample_name or name
        return {labels: v for (sname, labels), v in self.family(name).samples.items() if sname == wanted}

    def value(self, name, **labels):
        key = (name, frozenset(labels.items()))
        samples = self.family(name).samples
        assert key in samples, f"no sample {name}{labels}; have {sorted(dict(k[1]) for k in samples)}"
        return samples[key]

    def count(self, name, **labels):
        """A counter's value, 0 for a labelled series not exported yet (before its first event)."""
        return self.family(name).samples.get((name, frozenset(labels.items())), 0)

    def histogram(self, name, **labels):
        """(buckets as [(le, cumulative count)], sum, count) of one histogram series."""
        family = self.family(name)
        assert family.type == "histogram"
        fixed = frozenset(labels.items())
        buckets = sorted((float(dict(ls)["le"]), v) for (sname, ls), v in family.samples.items()
                         if sname == name + "_bucket" and ls - {("le", dict(ls)["le"])} == fixed)
        assert buckets, f"no buckets for {name}{labels}"
        return buckets, family.samples[(name + "_sum", fixed)], family.samples[(name + "_count", fixed)]


def _unescape(text, allowed, where):
    out, i = [], 0
    while i < len(text):
        char = text[i]
        if char == "\\":
            if i + 1 >= len(text) or text[i + 1] not in allowed:
                raise ExpositionError(f"bad escape {text[i:i + 2]!r} in {where}")
            out.append(allowed[text[i + 1]])
            i += 2
        else:
            out.append(char)
            i += 1
    return "".join(out)


def _parse_value(text, line):
    if text in SPECIAL_VALUES:
        return SPECIAL_VALUES[text]
    if not FLOAT_TEXT.fullmatch(text):
        raise ExpositionError(f"value {text!r} is not a float: {line!r}")
    return float(text)


def _parse_labels(text, pos, line):
    """Parse '{a="x",b="y"}' starting at text[pos] == '{'; return (labels, position after '}')."""
    labels = {}
    pos += 1
    while True:
        if text[pos:pos + 1] == "}":
            return labels, pos + 1
        match = LABEL_NAME.match(text, pos)
        if not match:
            raise ExpositionError(f"bad label name at column {pos}: {line!r}")
        name = match.group()
        pos = match.end()
        if text[pos:pos + 2] != '="':
            raise ExpositionError(f"expected =\" after label {name!r}: {line!r}")
        pos += 2
        start = pos
        while pos < len(text) and text[pos] != '"':
            pos += 2 if text[pos] == "\\" else 1
        if pos >= len(text):
            raise ExpositionError(f"unterminated value of label {name!r}: {line!r}")
        value = _unescape(text[start:pos], {"\\": "\\", '"': '"', "n": "\n"}, f"label {name!r}")
        if name in labels:
            raise ExpositionError(f"label {name!r} twice: {line!r}")
        labels[name] = value
        pos += 1
        if text[pos:pos + 1] == ",":  # a trailing comma before '}' is allowed
            pos += 1
        elif text[pos:pos + 1] != "}":
            raise ExpositionError(f"expected , or }} after label {name!r}: {line!r}")


def _family_of(sample_name, families):
    for suffix, kinds in (("_bucket", ("histogram",)), ("_sum", ("histogram", "summary")),
                          ("_count", ("histogram", "summary"))):
        base = sample_name[: -len(suffix)]
        if sample_name.endswith(suffix) and base in families and families[base].type in kinds:
            return families[base]
    family = families.get(sample_name)
    if family is not None and family.type != "histogram":
        return family
    return None


def parse_exposition(text):
    """Parse a whole scrape strictly; raise ExpositionError at the first broken rule."""
    if not text.endswith("\n"):
        raise ExpositionError("the exposition must end with a newline")
    if "\r" in text:
        raise ExpositionError("lines end with \\n, never \\r")
    families = {}
    current = None  # a family's lines form one group: no going back to an earlier one
    closed = set()

    def enter(family):
        nonlocal current
        if current is not family:
            if family.name in closed:
                raise ExpositionError(f"lines of {family.name} are not contiguous")
            if current is not None:
                closed.add(current.name)
            current = family

    for line in text[:-1].split("\n"):
        if not line.strip():
            continue
        if line.startswith("#"):
            parts = line.split(" ", 3)
            if len(parts) < 3 or parts[0] != "#" or parts[1] not in ("HELP", "TYPE"):
                continue  # a plain comment
            keyword, name = parts[1], parts[2]
            if not METRIC_NAME.fullmatch(name):
                raise ExpositionError(f"bad metric name {name!r}: {line!r}")
            family = families.setdefault(name, Family(name))
            enter(family)
            if family.samples:
                raise ExpositionError(f"{keyword} for {name} after its samples")
            rest = parts[3] if len(parts) == 4 else ""
            if keyword == "HELP":
                if family.help is not None:
                    raise ExpositionError(f"second HELP for {name}")
                family.help = _unescape(rest, {"\\": "\\", "n": "\n"}, f"HELP of {name}")
            else:
                if family.type is not None:
                    raise ExpositionError(f"second TYPE for {name}")
                if rest not in TYPES:
                    raise ExpositionError(f"unknown type {rest!r} for {name}")
                family.type = rest
            continue
        match = METRIC_NAME.match(line)
        if not match:
            raise ExpositionError(f"bad metric name: {line!r}")
        sample_name, pos = match.group(), match.end()
        labels = {}
        if line[pos:pos + 1] == "{":
            labels, pos = _parse_labels(line, pos, line)
        fields = line[pos:].split()
        if not line[pos:pos + 1].isspace() or len(fields) not in (1, 2):
            raise ExpositionError(f"expected ' value [timestamp]' after the name: {line!r}")
        value = _parse_value(fields[0], line)
        if len(fields) == 2 and not TIMESTAMP.fullmatch(fields[1]):
            raise ExpositionError(f"bad timestamp: {line!r}")
        family = _family_of(sample_name, families)
        if family is None or family.type is None:
            raise ExpositionError(f"sample {sample_name} comes before the TYPE of its family: {line!r}")
        enter(family)
        key = (sample_name, frozenset(labels.items()))
        if key in family.samples:
            raise ExpositionError(f"duplicate series: {line!r}")
        family.samples[key] = value
    for family in families.values():
        if family.type is None:
            raise ExpositionError(f"{family.name} has HELP but no TYPE")
        _check_family(family)
    return Scrape(families)


def _check_family(family):
    if family.type == "counter":
        if not family.name.endswith("_total"):
            raise ExpositionError(f"counter {family.name} does not end in _total")
        for (_, labels), value in family.samples.items():
            if not value >= 0:  # also refuses NaN
                raise ExpositionError(f"counter {family.name}{dict(labels)} is {value}")
    if family.type != "histogram":
        return
    name = family.name
    series = collections.defaultdict(dict)
    for (sname, labels), value in family.samples.items():
        label_map = dict(labels)
        if sname == name + "_bucket":
            if "le" not in label_map:
                raise ExpositionError(f"{sname}{label_map} has no le label")
            le = _parse_value(label_map.pop("le"), sname)
            series[frozenset(label_map.items())].setdefault("buckets", []).append((le, value))
        else:
            if "le" in label_map:
                raise ExpositionError(f"{sname} carries an le label")
            series[labels][sname[len(name) + 1:]] = value
    for labels, parts in series.items():
        where = f"{name}{dict(labels)}"
        buckets = parts.get("buckets")
        if not buckets:
            raise ExpositionError(f"{where} has no buckets")
        bounds = [le for le, _ in buckets]
        if bounds != sorted(bounds) or len(set(bounds)) != len(bounds):
            raise ExpositionError(f"{where}: le values are not ascending: {bounds}")
        if bounds[-1] != math.inf:
            raise ExpositionError(f"{where}: the last bucket is not le=\"+Inf\"")
        counts = [count for _, count in buckets]
        if any(b < a for a, b in zip(counts, counts[1:])):
            raise ExpositionError(f"{where}: buckets are not cumulative: {counts}")
        if any(count != int(count) or count < 0 for count in counts):
            raise ExpositionError(f"{where}: bucket counts are not whole numbers: {counts}")
        if "count" not in parts or "sum" not in parts:
            raise ExpositionError(f"{where} lacks _count or _sum")
        if parts["count"] != counts[-1]:
            raise ExpositionError(f"{where}: _count {parts['count']} != +Inf bucket {counts[-1]}")


def scrape_metrics(srv, request_id=None):
    """GET /metrics from srv and parse it strictly: the one way the tests read metrics."""
    status, headers, text = srv.request("/metrics", headers={"X-Request-ID": request_id} if request_id else None)
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain; version=0.0.4"), headers["Content-Type"]
    return parse_exposition(text)


def metric_value(srv, name_with_labels):
    """The value of one sample, e.g. 'detserve_rejected_requests_total{reason="overload"}', scraped now."""
    name = METRIC_NAME.match(name_with_labels).group()
    labels, end = {}, len(name)
    if end < len(name_with_labels):
        labels, end = _parse_labels(name_with_labels, end, name_with_labels)
    assert end == len(name_with_labels), f"not a sample name: {name_with_labels!r}"
    return scrape_metrics(srv).value(name, **labels)


# -- the docs' curl examples --------------------------------------------------------------------------
DOCS = REPO_ROOT / "docs"
DOC_HOST = "localhost:5050"
# What differs between two runs of one request: the worker's timings.
VARYING_FIELDS = ("inferenceMs", "processMs")


@dataclass(frozen=True)
class DocExample:
    command: str  # as the page shows it, against localhost:5050
    expected: object = None  # the JSON on the comment line after it (its VARYING_FIELDS left out), if any


def doc_examples(page):
    """Every `curl` line of the ```bash blocks of docs/PAGE, with the answer the page shows for it."""
    examples, in_bash, lines = [], False, (DOCS / page).read_text().splitlines()
    for i, line in enumerate(lines):
        if line.startswith("```"):
            in_bash = line.strip() == "```bash"
        elif in_bash and line.startswith("curl "):
            following = lines[i + 1] if i + 1 < len(lines) else ""
            try:
                expected = json.loads(following[2:]) if following.startswith("# ") else None
            except ValueError:
                expected = None
            examples.append(DocExample(line, _without_varying_fields(expected)))
    return examples


def assert_doc_examples_answer_as_shown(page, port, tmp_path, at_least):
    """Run every curl example of docs/PAGE in tmp_path (inputfolder/ linked in): each answer is the one shown.

    at_least: how many examples show an answer, so that a page that lost its examples fails.
    Returns tmp_path, where the examples' output files landed.
    """
    (tmp_path / "inputfolder").symlink_to(INPUT_FOLDER)  # the examples' paths, and their output files here
    examples = doc_examples(page)
    assert len([example for example in examples if example.expected is not None]) >= at_least, page
    for example in examples:
        answer = run_doc_example(example, port, tmp_path)
        if example.expected is not None:
            assert answer == example.expected, example.command
    return tmp_path


def run_doc_example(example, port, cwd):
    """The answer of one example against 127.0.0.1:port, run in cwd: JSON (its VARYING_FIELDS left out), or the output.

    cwd must hold (or link to) inputfolder/, as the repository root does; the
    examples' own output files land there.
    """
    command = shlex.split(example.command.replace(DOC_HOST, f"127.0.0.1:{port}"))
    run = subprocess.run(command, cwd=cwd, capture_output=True, timeout=60)
    assert run.returncode == 0, (example.command, run.stderr)
    try:
        return _without_varying_fields(json.loads(run.stdout))
    except ValueError:
        return run.stdout


def _without_varying_fields(answer):
    if isinstance(answer, dict):
        return {name: value for name, value in answer.items() if name not in VARYING_FIELDS}
    return answer


# -- waiting on a condition ---------------------------------------------------------------------------
def poll_until(condition, timeout_s, interval_s=0.05):
    """Poll condition() until it is true or timeout_s passed; return its last value."""
    deadline_s = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value or time.monotonic() >= deadline_s:
            return value
        time.sleep(interval_s)


def wait_until(condition, what, timeout_s=EVENT_TIMEOUT_S, interval_s=0.05):
    """Poll condition() until it is true and return its value; fail naming `what` after timeout_s.

    The tests wait for what they need to see (a gauge, a line, a process gone)
    instead of sleeping for a time that is too long on a quiet machine and too
    short on a busy one.
    """
    value = poll_until(condition, timeout_s, interval_s)
    assert value, f"not within {timeout_s} s: {what}"
    return value


def wait_until_ready(srv, timeout_s=EVENT_TIMEOUT_S):
    """Wait until srv answers /readyz with 200 (every worker loaded), failing at once if it exited."""
    def ready():
        assert srv.proc.poll() is None, f"the server exited ({srv.proc.returncode}): " + " | ".join(srv.lines[-3:])
        return srv.request("/readyz")[0] == 200
    wait_until(ready, "the server ready", timeout_s)


def access_line(srv, request_id, timeout_s=EVENT_TIMEOUT_S):
    """The text-format access line of the request sent with X-Request-ID request_id.

    A line is written just after its answer is sent, so a client can hold the
    answer before the line exists: this waits for it.
    """
    return srv.wait_for_line(rf" rid={re.escape(request_id)}( |$)", timeout_s=timeout_s)


def logged_batch_size(srv, request_id):
    """How many images shared the forward pass of that request, from its access line (0: none ran)."""
    match = re.search(r" batch_size=(\d+)", access_line(srv, request_id))
    return int(match.group(1)) if match else 0


def assert_still_serving(srv):
    """srv still answers a detection, with the reference's detections."""
    status, _, payload = srv.request("/api/", camera_body("still-serving"))
    assert status == 200, payload
    assert_same_detections(payload["detections"], reference_detections(camera_jpeg()))


# -- comparing detections -----------------------------------------------------------------------------
def iou(box_a, box_b):
    """Intersection over union of two [x, y, w, h] boxes."""
    ax, ay, aw, ah = box_a
    bx, by, bw, bh = box_b
    overlap_w = max(0, min(ax + aw, bx + bw) - max(ax, bx))
    overlap_h = max(0, min(ay + ah, by + bh) - max(ay, by))
    overlap = overlap_w * overlap_h
    union = aw * ah + bw * bh - overlap
    return overlap / union if union else 0.0
