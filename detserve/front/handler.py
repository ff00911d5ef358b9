"""DetectionRequestHandler: route one HTTP request, refuse it or answer it, and log it once.

Every refusal is a Refusal raised where its check is (admission, body
budget, body reader, pool, a route, a worker's answer) and turned into an
answer, a metric and a log line here, in _refuse, in the words of the
route's wire format. How a head is read and a connection closed is
StrictRequestHandler's; what each GET path answers is get_routes' (and,
for a wire format's fixed routes, the format's); how a detection request
is run is the exchange's.
"""

import logging
import re
import time
import uuid
from http import HTTPStatus
from urllib.parse import urlsplit

from .. import __version__
from ..logs import log_access
from ..refusals import Refusal, http_error, internal_error, method_not_allowed, not_found
from . import formats, get_routes, page
from .body_reader import read_body
from .exchange import DetectionExchange
from .get_routes import GET_ROUTES
from .strict_handler import StrictRequestHandler

log = logging.getLogger("detserve.http")

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
        self.request_id = None
        self._route = "other"  # the metrics label
        self._model = ""  # the model that ran, for the metrics; "" when none did
        self._wire_format = formats.DEFAULT_FORMAT  # whose words a refusal is answered in
        self._detection_route = False  # refusals of detection routes count in detserve_rejected_total
        self._log = {"image_id": None, "batch_size": None, "error": None}

    def parse_request(self):
        self._started_s = time.perf_counter()  # not while a keep-alive idled
        return super().parse_request()

    def answered(self):
        return self._responded

    def unread_body(self):
        return not self._body_read and self.declares_body()

    # -- routing ---------------------------------------------------------------------------
    def route_request(self, method):
        self.request_id = self._pick_request_id()
        try:
            self._dispatch(method)
        except Refusal as refusal:
            self._refuse(refusal)
        except OSError:
            raise  # the client went away; http.server closes the connection
        except Exception:  # a bug of ours: log it, answer in JSON, never show a stack trace
            log.exception("unexpected error handling %s %s (request id %s)", method, self.path, self.request_id)
            if not self._responded:
                self._refuse(internal_error(self.request_id, self._log["image_id"], close=True))

    def _dispatch(self, method):
        path = urlsplit(self.path).path
        self._wire_format = formats.owner_of(path)
        fixed_route = formats.fixed_route_for(path)
        if fixed_route is not None:  # a format's route that no worker answers (before its detection paths)
            self._wire_format, route = fixed_route
            self._route = route.label
            self._check_method(method, route.methods)
            return self._send_answer(route.answer(self.server.state, self.headers))
        detection_route = formats.route_for(path)
        if detection_route is not None:
            self._wire_format, self._route, params = detection_route
            self._detection_route = True
            self._check_method(method, ("POST",))
            return self._detect(params)
        if path in GET_ROUTES:
            self._route = path
            self._check_method(method, ("GET", "HEAD"))
            return self._send_answer(GET_ROUTES[path](self.server.state, self.headers))
        if path.startswith(page.ASSET_PREFIX):
            self._route = page.ASSET_PREFIX  # one metrics label for every asset, known or not
            self._check_method(method, ("GET", "HEAD"))
            return self._send_answer(get_routes.asset(page.find_asset(path), path))
        raise not_found(self._wire_format.no_route_message(path))

    def _check_method(self, method, allowed):
        if method not in allowed:
            raise method_not_allowed(method, allowed)

    def _pick_request_id(self):
        sent = self.headers.get("X-Request-ID", "")
        return sent if CLIENT_REQUEST_ID.match(sent) else uuid.uuid4().hex

    # -- a detection route ----------------------------------------------------------------------
    def _detect(self, params):
        # In flight from arrival until the answer is on the wire, so that a drain
        # waits for a body that is still arriving and for the last write.
        state = self.server.state
        with state.track_in_flight():
            try:
                DetectionExchange(state).run(self, self._wire_format, params, self._send_result)
            except Refusal as refusal:
                self._refuse(refusal)

    def receive_body(self, length, reservation):
        """The request's body, charged to reservation as it arrives (the exchange asks, after admitting it)."""
        if self.headers.get("Expect", "").lower() == "100-continue" and self.request_version == "HTTP/1.1":
            # Only now, after every check a refusal could come from, invite the body.
            self.wfile.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            self.wfile.flush()
        try:
            body = read_body(self.rfile, self.connection, length, self.client_timeout_s(), reservation,
                             self.body_progress)
        finally:
            self.body_complete()
        self._body_read = True
        return body

    def _send_result(self, result):
        """Write a worker's (or the pool's) Result: its body, or its refusal in the route's words."""
        self._log.update(image_id=result.image_id, batch_size=result.batch_size or None)
        self._model = result.model or ""
        self._stage_timing_ms.update(queue=result.queue_wait_s * 1000, inference=result.inference_s * 1000)
        headers = dict(result.headers)
        if result.model is not None:
            headers["X-Model"] = result.model  # which model answered, whatever the format's body says
        if result.error is not None:
            raise Refusal(result.status, result.error, result.reject_reason, result.image_id, headers)
        self._send(result.status, result.body, result.content_type, headers=headers)

    # -- answering --------------------------------------------------------------------------------
    def send_error(self, code, message=None, explain=None):
        """http.server calls this for malformed requests; answer JSON, never HTML."""
        if not self.request_id:
            self.request_id = self._pick_request_id() if self.headers is not None else uuid.uuid4().hex
        self._started_s = self._started_s or time.perf_counter()
        self._refuse(http_error(code, message or HTTPStatus(code).phrase))

    def _refuse(self, refusal):
        """Answer a Refusal: the error body in the route's words, its metric and its log fields."""
        self._log["error"] = refusal.message
        if refusal.image_id is not None:
            self._log["image_id"] = refusal.image_id
        if refusal.reason is not None and self._detection_route:
            self.server.state.metrics.reject(refusal.reason)
        self._send(refusal.status, self._wire_format.error_body(refusal), self._wire_format.ERROR_CONTENT_TYPE,
                   headers=refusal.headers, close=refusal.close)

    def _server_timing(self):
        """Where this request's time went, in ms: queue and inference when a worker answered."""
        stages = [f"{name};dur={ms:.1f}" for name, ms in self._stage_timing_ms.items()]
        stages.append(f"total;dur={(time.perf_counter() - self._started_s) * 1000:.1f}")
        return ", ".join(stages)

    def _send_answer(self, answer):
        self._send(answer.status, answer.body, answer.content_type, headers=answer.headers)

    def _send(self, status, body, content_type, headers=None, close=False):
        self._responded = True
        identity = {"X-Request-ID": self.request_id, "Server-Timing": self._server_timing()}
        self.write_answer(status, body, content_type, {**identity, **(headers or {})},
                          close or self.server.state.draining or self.unread_body())
        self._finish(status, len(body))

    def _finish(self, status, size):
        duration_s = time.perf_counter() - self._started_s
        metrics = self.server.state.metrics
        metrics.count_request(self._route, status, self._model)
        metrics.request_duration.observe(duration_s, self._route)
        path = getattr(self, "path", None)
        log_access(remote=self.client_address[0], method=self.command or "-",
                   path=urlsplit(path).path if path else "-",
                   status=status, bytes=size, duration_ms=round(duration_s * 1000, 1),
                   request_id=self.request_id, **self._log)
