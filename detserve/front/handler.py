"""DetectionRequestHandler: route one HTTP request, refuse it or answer it, and log it once.

Every refusal is a Refusal raised where its check is (admission, body
reader, pool) and turned into an answer, a metric and a log line here, in
_refuse.
"""

import json
import logging
import re
import time
import uuid
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from urllib.parse import urlsplit

from .. import __version__
from ..logs import log_access
from ..metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from ..pool.pending import PendingRequest
from ..protocol import RejectReason, Refusal
from . import admission, answer_options, openapi, page
from .body_reader import read_body
from .deadline_reader import DeadlineLineReader

log = logging.getLogger("detserve.http")

API_PATHS = ("/api/", "/api")
# Path -> the method answering GET (and HEAD) there. With API_PATHS and the page's
# assets this is every route the server answers, and what openapi.json documents.
GET_ROUTES = {"/": "_get_root", "/healthz": "_get_healthz", "/readyz": "_get_readyz", "/metrics": "_get_metrics",
              "/api/labels": "_get_labels", "/openapi.json": "_get_openapi"}
CLIENT_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")

WELCOME_TEXT = (
    "detserve: object detection with YOLOv3-tiny.\n"
    "POST /api/ with JSON {\"id\": \"...\", \"image\": \"<base64 JPEG or PNG>\"}\n"
    "  -> {\"id\": \"...\", \"detections\": [{\"label\", \"confidence\", \"bbox\": [x, y, w, h]}]}\n"
    "Options: ?confidence=, ?nms=, ?classes=, ?max_detections=; Accept: image/jpeg for an annotated image;\n"
    "  {\"images\": [...]} for several images. GET /openapi.json describes it all; GET /api/labels lists the labels.\n"
    "GET /healthz (liveness), /readyz (readiness), /metrics (Prometheus).\n"
)


class DetectionRequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Errors found before the request line is parsed still get status and headers
    # (http.server's HTTP/0.9 default would send a bare body nobody can read).
    default_request_version = "HTTP/1.1"
    # Headers and body leave in one write, and without Nagle's algorithm: a
    # second small write would otherwise wait for the client's delayed ACK
    # (~40 ms on Linux), more than the whole inference at low load.
    disable_nagle_algorithm = True
    wbufsize = 64 * 1024  # coalesces headers and body; _send flushes once per answer

    def version_string(self):
        return f"detserve/{__version__}"  # not the Python version: nothing for a scanner to match

    # -- connection and per-request state ------------------------------------------
    def setup(self):
        self.timeout = self.server.state.config.client_timeout_s
        super().setup()
        self.rfile = DeadlineLineReader(self.rfile, self.connection)

    def handle_expect_100(self):
        return True  # 100 Continue is sent by _detect, after its checks, not before them

    def handle_one_request(self):
        self.headers = self.path = None  # never a previous request's, if this one fails to parse
        # An idle keep-alive and the request line and headers share one --client-timeout-s.
        self.rfile.deadline_s = time.monotonic() + self.timeout
        self._started_s = None  # set when a request line arrives, not while a keep-alive idles
        self._body_read = False
        self._stage_timing_ms = {}  # queue and inference, once a worker has answered
        self._responded = False
        self._request_id = None
        self._route = "other"
        self._log = {"image_id": None, "batch_size": None, "error": None}
        super().handle_one_request()

    def log_request(self, code="-", size="-"):
        pass  # one access line per request is written by _send, with more fields

    def log_message(self, format, *args):
        pass  # http.server's own messages are replaced by the access log

    # -- routing ---------------------------------------------------------------------------
    def do_GET(self):
        self._route_request("GET")

    def do_HEAD(self):
        self._route_request("HEAD")

    def do_POST(self):
        self._route_request("POST")

    def do_PUT(self):
        self._route_request("PUT")

    def do_DELETE(self):
        self._route_request("DELETE")

    def do_PATCH(self):
        self._route_request("PATCH")

    def do_OPTIONS(self):
        self._route_request("OPTIONS")

    def __getattr__(self, name):
        # Any other method (TRACE, QUERY, ...) on a known path is 405 with Allow, elsewhere
        # 404, like the methods above: http.server alone would answer 501, a server error.
        if name.startswith("do_") and name[3:].isupper():
            return lambda: self._route_request(name[3:])
        raise AttributeError(name)

    def _route_request(self, method):
        self._started_s = time.perf_counter()
        self.rfile.deadline_s = None
        self.connection.settimeout(self.timeout)  # not what was left of the header deadline
        self._request_id = self._pick_request_id()
        try:
            self._dispatch(method)
        except Refusal as refusal:
            self._refuse(refusal)
        except OSError:
            raise  # the client went away; http.server closes the connection
        except Exception:  # a bug of ours: log it, answer in JSON, never show a stack trace
            log.exception("unexpected error handling %s %s (request id %s)", method, self.path, self._request_id)
            if not self._responded:
                self._refuse(Refusal(500, "internal server error; see the server log for request id "
                                          f"{self._request_id}", RejectReason.INTERNAL_ERROR, close=True))

    def _dispatch(self, method):
        path = urlsplit(self.path).path
        if path in API_PATHS:
            self._route = "/api/"
            if method != "POST":
                raise self._wrong_method("POST")
            return self._detect()
        if path in GET_ROUTES:
            self._route = path
            if method not in ("GET", "HEAD"):
                raise self._wrong_method("GET, HEAD")
            return getattr(self, GET_ROUTES[path])()
        if path.startswith(page.ASSET_PREFIX):
            self._route = page.ASSET_PREFIX  # one metrics label for every asset, known or not
            if method not in ("GET", "HEAD"):
                raise self._wrong_method("GET, HEAD")
            return self._send_asset(page.find_asset(path), path)
        raise Refusal(404, f"no such path {path!r}; the API is POST /api/", reason=None)

    def _wrong_method(self, allowed):
        return Refusal(405, f"{self.command} is not allowed here; use {allowed}", reason=None,
                       headers={"Allow": allowed})

    def _pick_request_id(self):
        sent = self.headers.get("X-Request-ID", "")
        return sent if CLIENT_REQUEST_ID.match(sent) else uuid.uuid4().hex

    # -- GET routes -----------------------------------------------------------------------------
    def _get_root(self):
        if page.wants_html(self.headers.get("Accept")):
            return self._send_asset(page.index(), "/")
        # Vary: a cache must not hand the page to curl, or this text to a browser.
        self._send(200, WELCOME_TEXT.encode(), "text/plain; charset=utf-8", headers={"Vary": "Accept"})

    def _send_asset(self, asset, path):
        if asset is None:
            raise Refusal(404, f"no such page asset {path!r}", reason=None)
        self._send(200, asset.body, asset.content_type, headers=asset.headers)

    def _get_healthz(self):
        state = self.server.state
        if state.fatal_error:
            return self._send_json(503, {"status": "failing", "reason": state.fatal_error})
        self._send_json(200, {"status": "ok"})

    def _get_readyz(self):
        state = self.server.state
        ready, reason = state.readiness()
        body = {"status": "ready" if ready else "not ready", "workers_ready": state.pool.ready_count(),
                "workers": state.config.workers}
        if not ready:
            body["reason"] = reason
        self._send_json(200 if ready else 503, body)

    def _get_metrics(self):
        state = self.server.state
        self._send(200, state.metrics.render(state.gauge_readings()).encode(), METRICS_CONTENT_TYPE)

    def _get_labels(self):
        self._send_json(200, list(self.server.state.labels))

    def _get_openapi(self):
        self._send(200, openapi.document(), "application/json")

    # -- POST /api/ -------------------------------------------------------------------------------
    def _detect(self):
        # In flight from arrival until the answer is on the wire, so that a drain
        # waits for a body that is still arriving and for the last write.
        with self.server.state.track_in_flight():
            try:
                self._admit_and_answer()
            except Refusal as refusal:
                self._refuse(refusal)

    def _admit_and_answer(self):
        state = self.server.state
        config = state.config
        arrived_s = time.monotonic()
        query = urlsplit(self.path).query
        admitted = admission.admit(self.headers, query, config, state.draining)
        output_format = answer_options.output_format(query, self.headers.get("Accept"))
        if self.headers.get("Expect", "").lower() == "100-continue":
            # Only now, after every check a refusal could come from, invite the body.
            self.wfile.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            self.wfile.flush()
        body = read_body(self.rfile, self.connection, admitted.body_length, config.client_timeout_s)
        self._body_read = True
        pending = PendingRequest(state.next_task_id(), self._request_id, admitted.media_type,
                                 admitted.query_image_id, body, arrived_s + config.request_timeout_s,
                                 answer_options.query_options(query), output_format)
        try:
            state.pool.submit(pending)
        except Refusal as refusal:
            refusal.image_id = admitted.query_image_id
            raise
        result = pending.wait(pending.deadline_s - time.monotonic())
        if result is None:
            raise Refusal(504, f"no answer within the {config.request_timeout_s:g} s deadline",
                          RejectReason.DEADLINE, image_id=admitted.query_image_id)
        self._log.update(image_id=result.image_id, batch_size=result.batch_size or None, error=result.error)
        self._stage_timing_ms.update(queue=result.queue_wait_s * 1000, inference=result.inference_s * 1000)
        if result.reject_reason:
            state.metrics.reject(result.reject_reason)
        self._send(result.status, result.body, result.content_type, headers=dict(result.headers))

    # -- answering --------------------------------------------------------------------------------
    def send_error(self, code, message=None, explain=None):
        """http.server calls this for malformed requests; answer JSON, never HTML."""
        if not self._request_id:
            self._request_id = self._pick_request_id() if getattr(self, "headers", None) else uuid.uuid4().hex
        self._started_s = self._started_s or time.perf_counter()
        self._refuse(Refusal(code, message or HTTPStatus(code).phrase, close=True))

    def _refuse(self, refusal):
        """Answer a Refusal: the error body, its metric (on the API route) and its log fields."""
        self._log["error"] = refusal.message
        if refusal.image_id is not None:
            self._log["image_id"] = refusal.image_id
        if refusal.reason is not None and self._route == "/api/":
            self.server.state.metrics.reject(refusal.reason)
        self._send(refusal.status, refusal.body(), "application/json", headers=refusal.headers, close=refusal.close)

    def _server_timing(self):
        """Where this request's time went, in ms: queue and inference when a worker answered."""
        stages = [f"{name};dur={ms:.1f}" for name, ms in self._stage_timing_ms.items()]
        stages.append(f"total;dur={(time.perf_counter() - self._started_s) * 1000:.1f}")
        return ", ".join(stages)

    def _unread_body(self):
        headers = getattr(self, "headers", None)
        if self._body_read or headers is None:
            return False
        return headers.get("Content-Length", "0").strip() not in ("", "0") or "Transfer-Encoding" in headers

    def _send_json(self, status, payload):
        self._send(status, json.dumps(payload).encode(), "application/json")

    def _send(self, status, body, content_type, headers=None, close=False):
        # A body we did not read would be parsed as the next request: close instead.
        close = close or self.server.state.draining or self._unread_body()
        self._responded = True
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Request-ID", self._request_id)
        self.send_header("Server-Timing", self._server_timing())
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        self.wfile.flush()  # on the wire before the request stops counting as in flight
        self._finish(status, len(body))

    def _finish(self, status, size):
        duration_s = time.perf_counter() - self._started_s
        metrics = self.server.state.metrics
        metrics.requests.inc(self._route, str(status))
        metrics.request_duration.observe(duration_s, self._route)
        path = getattr(self, "path", None)
        log_access(remote=self.client_address[0], method=self.command or "-",
                   path=urlsplit(path).path if path else "-",
                   status=status, bytes=size, duration_ms=round(duration_s * 1000, 1),
                   request_id=self._request_id, **self._log)
