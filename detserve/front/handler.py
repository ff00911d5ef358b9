"""DetectionRequestHandler: route one HTTP request, refuse it or answer it, and log it once.

Every refusal is a Refusal raised where its check is (admission, body
budget, body reader, pool, a route) and turned into an answer, a metric and a
log line here, in _refuse. How a head is read and a connection closed is
StrictRequestHandler's; what each GET path answers is get_routes'.
"""

import logging
import re
import time
import uuid
from http import HTTPStatus
from urllib.parse import urlsplit

from .. import __version__
from ..logs import log_access
from ..pool.pending import PendingRequest
from ..protocol import RejectReason, Refusal, internal_error
from . import admission, answer_options, get_routes, page
from .body_reader import read_body
from .get_routes import GET_ROUTES
from .strict_handler import StrictRequestHandler

log = logging.getLogger("detserve.http")

API_PATHS = ("/api/", "/api")
CLIENT_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")


class DetectionRequestHandler(StrictRequestHandler):
    def version_string(self):
        return f"detserve/{__version__}"  # not the Python version: nothing for a scanner to match

    def client_timeout_s(self):
        return self.server.state.config.client_timeout_s

    def start_request(self):
        self._started_s = time.perf_counter()  # restarted when a request line arrives
        self._body_read = False
        self._stage_timing_ms = {}  # queue and inference, once a worker has answered
        self._responded = False
        self._request_id = None
        self._route = "other"
        self._log = {"image_id": None, "batch_size": None, "error": None}

    def parse_request(self):
        self._started_s = time.perf_counter()  # not while a keep-alive idled
        return super().parse_request()

    def answered(self):
        return self._responded

    def unread_body(self):
        if self._body_read or self.headers is None:
            return False
        return self.headers.get("Content-Length", "0").strip() not in ("", "0") or "Transfer-Encoding" in self.headers

    # -- routing ---------------------------------------------------------------------------
    def route_request(self, method):
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
                self._refuse(internal_error(self._request_id, close=True))

    def _dispatch(self, method):
        path = urlsplit(self.path).path
        if path in API_PATHS:
            self._route = "/api/"
            self._check_method(method, ("POST",))
            return self._detect()
        if path in GET_ROUTES:
            self._route = path
            self._check_method(method, ("GET", "HEAD"))
            return self._send_answer(GET_ROUTES[path](self.server.state, self.headers))
        if path.startswith(page.ASSET_PREFIX):
            self._route = page.ASSET_PREFIX  # one metrics label for every asset, known or not
            self._check_method(method, ("GET", "HEAD"))
            return self._send_answer(get_routes.asset(page.find_asset(path), path))
        raise Refusal(404, f"no such path {path!r}; the API is POST /api/", reason=None)

    def _check_method(self, method, allowed):
        if method not in allowed:
            raise Refusal(405, f"{method} is not allowed here; use {', '.join(allowed)}", reason=None,
                          headers={"Allow": ", ".join(allowed)})

    def _pick_request_id(self):
        sent = self.headers.get("X-Request-ID", "")
        return sent if CLIENT_REQUEST_ID.match(sent) else uuid.uuid4().hex

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
        arrived_s = time.monotonic()
        query = urlsplit(self.path).query
        admitted = admission.admit(self.headers, query, state.config, state.draining)
        output_format = answer_options.output_format(query, self.headers.get("Accept"))
        state.body_budget.reserve(admitted.body_length)  # before a byte of the body is read
        try:
            self._read_and_answer(admitted, query, output_format, arrived_s)
        finally:
            state.body_budget.release(admitted.body_length)

    def _read_and_answer(self, admitted, query, output_format, arrived_s):
        state = self.server.state
        config = state.config
        if self.headers.get("Expect", "").lower() == "100-continue" and self.request_version == "HTTP/1.1":
            # Only now, after every check a refusal could come from, invite the body.
            self.wfile.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            self.wfile.flush()
        body = read_body(self.rfile, self.connection, admitted.body_length, config.client_timeout_s)
        self._body_read = True
        pending = PendingRequest(state.next_task_id(), self._request_id, admitted.media_type,
                                 admitted.query_image_id, body, arrived_s + config.request_timeout_s,
                                 answer_options.query_options(query), output_format)
        del body  # the pending request holds it until a sender has written it to a worker
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
            self._request_id = self._pick_request_id() if self.headers is not None else uuid.uuid4().hex
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

    def _send_answer(self, answer):
        self._send(answer.status, answer.body, answer.content_type, headers=answer.headers)

    def _send(self, status, body, content_type, headers=None, close=False):
        # A body we did not read would be parsed as the next request: close instead.
        close = close or self.server.state.draining or self.unread_body()
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
