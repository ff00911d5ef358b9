"""The HTTP front end: parse HTTP, admit or refuse, hand raw bodies to the pool, answer.

It does no JSON, base64 or image work on request bodies: those run in the
workers, in parallel. What it checks are the things only HTTP knows (method,
path, auth, lengths, content type) so that a bad request is refused before
it costs a worker anything.
"""

import hmac
import json
import logging
import re
import sys
import time
import uuid
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from . import __version__, page
from .deadline_reader import DeadlineLineReader
from .logs import log_access
from .metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from .messages import IMAGE_MEDIA_TYPES, JSON_MEDIA_TYPE, MAX_IMAGE_ID_CHARS, error_body
from .worker_pool import PendingRequest, QueueFull

log = logging.getLogger("detserve.http")

ACCEPTED_MEDIA_TYPES = (JSON_MEDIA_TYPE, *IMAGE_MEDIA_TYPES)
API_PATHS = ("/api/", "/api")
GET_ROUTES = ("/", "/healthz", "/readyz", "/metrics")
CLIENT_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
CONTENT_LENGTH = re.compile(r"[ \t]*[0-9]{1,12}[ \t]*")  # ASCII digits only: int() would take '²'
READ_CHUNK_BYTES = 1 << 20
RETRY_AFTER_S = 1

WELCOME_TEXT = (
    "detserve: object detection with YOLOv3-tiny.\n"
    "POST /api/ with JSON {\"id\": \"...\", \"image\": \"<base64 JPEG or PNG>\"}\n"
    "  -> {\"id\": \"...\", \"detections\": [{\"label\", \"confidence\", \"bbox\": [x, y, w, h]}]}\n"
    "GET /healthz (liveness), /readyz (readiness), /metrics (Prometheus).\n"
)


class DetectionHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 1024  # the listen backlog: a burst of connections is queued, not reset

    def __init__(self, address, service):
        self.service = service
        super().__init__(address, DetectionRequestHandler)

    def handle_error(self, request, client_address):
        # A client that resets its connection is routine: one log line, not a traceback
        # on stderr (which would also break --log-format json).
        log.warning("connection from %s ended with an error: %r", client_address[0], sys.exc_info()[1])


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
        self.timeout = self.server.service.config.client_timeout_s
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

    def _route_request(self, method):
        self._started_s = time.perf_counter()
        self.rfile.deadline_s = None
        self.connection.settimeout(self.timeout)  # not what was left of the header deadline
        self._request_id = self._pick_request_id()
        try:
            self._dispatch(method)
        except OSError:
            raise  # the client went away; http.server closes the connection
        except Exception:  # a bug of ours: log it, answer in JSON, never show a stack trace
            log.exception("unexpected error handling %s %s", method, self.path)
            if not self._responded:
                self._send_error(500, "internal server error; see the server log for request id "
                                      f"{self._request_id}", reason="internal_error", close=True)

    def _dispatch(self, method):
        path = urlsplit(self.path).path
        if path in API_PATHS:
            self._route = "/api/"
            if method == "POST":
                return self._detect()
            return self._refuse_method("POST")
        if path in GET_ROUTES:
            self._route = path
            if method in ("GET", "HEAD"):
                return getattr(self, "_get_" + (path.strip("/") or "root"))()
            return self._refuse_method("GET, HEAD")
        if path.startswith(page.ASSET_PREFIX):
            self._route = page.ASSET_PREFIX  # one metrics label for every asset, known or not
            if method not in ("GET", "HEAD"):
                return self._refuse_method("GET, HEAD")
            return self._send_asset(page.find_asset(path), path)
        self._send_error(404, f"no such path {path!r}; the API is POST /api/")

    def _refuse_method(self, allowed):
        self._send_error(405, f"{self.command} is not allowed here; use {allowed}",
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
            return self._send_error(404, f"no such page asset {path!r}")
        self._send(200, asset.body, asset.content_type, headers=asset.headers)

    def _get_healthz(self):
        service = self.server.service
        if service.fatal_error:
            return self._send_json(503, {"status": "failing", "reason": service.fatal_error})
        self._send_json(200, {"status": "ok"})

    def _get_readyz(self):
        ready, reason = self.server.service.readiness()
        body = {"status": "ready" if ready else "not ready", "workers_ready": self.server.service.pool.ready_count(),
                "workers": self.server.service.config.workers}
        if not ready:
            body["reason"] = reason
        self._send_json(200 if ready else 503, body)

    def _get_metrics(self):
        self._send(200, self.server.service.metrics.render().encode(), METRICS_CONTENT_TYPE)

    # -- POST /api/ -------------------------------------------------------------------------------
    def _detect(self):
        # In flight from arrival until the answer is on the wire, so that a drain
        # waits for a body that is still arriving and for the last write.
        with self.server.service.track_in_flight():
            self._admit_and_answer()

    def _admit_and_answer(self):
        service = self.server.service
        config = service.config
        arrived_s = time.monotonic()
        if config.api_key and not self._authorized(config.api_key):
            return self._send_error(401, "missing or wrong API key; send 'Authorization: Bearer <key>'",
                                    reason="unauthorized", close=True,
                                    headers={"WWW-Authenticate": 'Bearer realm="detserve"'})
        if service.draining:
            return self._send_error(503, "the server is shutting down; retry on another instance",
                                    reason="draining", close=True, headers={"Retry-After": str(RETRY_AFTER_S)})
        length, refusal = self._body_length(config.max_body_bytes)
        if refusal:
            status, message = refusal
            return self._send_error(status, message, reason="bad_input", close=True)
        media_type = self._media_type()
        if media_type not in ACCEPTED_MEDIA_TYPES:
            return self._send_error(415, f"Content-Type {media_type!r} is not accepted; send application/json "
                                         "(or a raw image/jpeg or image/png body)",
                                    reason="bad_input", close=True)
        query_image_id = self._query_image_id()
        if query_image_id is not None and len(query_image_id) > MAX_IMAGE_ID_CHARS:
            return self._send_error(400, f"?id= is longer than {MAX_IMAGE_ID_CHARS} characters",
                                    reason="bad_input", close=True)
        if self.headers.get("Expect", "").lower() == "100-continue":
            # Only now, after every check a refusal could come from, invite the body.
            self.wfile.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            self.wfile.flush()
        body = self._read_body(length)
        self._body_read = True
        if body is None:
            return self._send_error(400, f"the body ended before its Content-Length of {length:,} bytes "
                                         f"(or took longer than {config.client_timeout_s:g} s to arrive)",
                                    reason="bad_input", close=True)
        pending = PendingRequest(service.next_request_id(), media_type, query_image_id, body,
                                 arrived_s + config.request_timeout_s)
        try:
            service.pool.submit(pending)
        except QueueFull as exc:
            return self._send_error(503, f"overloaded: {exc}; retry after {RETRY_AFTER_S} s",
                                    reason="draining" if service.draining else "overload",
                                    image_id=query_image_id, headers={"Retry-After": str(RETRY_AFTER_S)})
        result = pending.wait(pending.deadline_s - time.monotonic())
        if result is None:
            return self._send_error(504, f"no answer within the {config.request_timeout_s:g} s deadline",
                                    reason="deadline", image_id=query_image_id)
        self._log.update(image_id=result.image_id, batch_size=result.batch_size or None, error=result.error)
        self._stage_timing_ms.update(queue=result.queue_wait_s * 1000, inference=result.inference_s * 1000)
        if result.reject_reason:
            service.metrics.rejections.inc(result.reject_reason)
        self._send(result.status, result.body, "application/json")

    def _body_length(self, max_body_bytes):
        """(length, None) for an acceptable body, or (None, (status, message))."""
        if "Transfer-Encoding" in self.headers:
            # Any Transfer-Encoding: a proxy and this server could otherwise disagree
            # about where the body ends (request smuggling).
            return None, (411, "Transfer-Encoding (chunked bodies) is not supported; send a Content-Length")
        lengths = self.headers.get_all("Content-Length") or []
        if not lengths:
            return None, (411, "Content-Length is required")
        if len(lengths) > 1:
            return None, (400, "more than one Content-Length header")
        if not CONTENT_LENGTH.fullmatch(lengths[0]):
            return None, (400, f"Content-Length {lengths[0][:40]!r} is not a number")
        length = int(lengths[0])
        if length > max_body_bytes:
            return None, (413, f"the body is {length:,} bytes, more than the "
                               f"{max_body_bytes:,}-byte limit (--max-body-mb)")
        return length, None

    def _authorized(self, api_key):
        scheme, _, provided = self.headers.get("Authorization", "").partition(" ")
        # compare_digest takes the same time wherever the strings differ.
        return scheme.lower() == "bearer" and hmac.compare_digest(provided.strip().encode(), api_key.encode())

    def _media_type(self):
        raw = self.headers.get("Content-Type")
        if raw is None:  # a bare `curl --data-binary` without -H: assume the documented JSON
            return JSON_MEDIA_TYPE
        return raw.split(";", 1)[0].strip().lower()

    def _query_image_id(self):
        values = parse_qs(urlsplit(self.path).query).get("id")
        return values[0] if values else None

    def _read_body(self, length):
        """Read exactly length bytes within --client-timeout-s in total, or return None."""
        # Grown as bytes arrive, never allocated from the declared length: headers
        # alone must not make the server hold 20 MB per connection.
        body = bytearray()
        deadline_s = time.monotonic() + self.server.service.config.client_timeout_s
        try:
            while len(body) < length:
                remaining_s = deadline_s - time.monotonic()
                if remaining_s <= 0:
                    return None
                self.connection.settimeout(remaining_s)  # a trickle of bytes cannot reset the clock
                chunk = self.rfile.read1(min(length - len(body), READ_CHUNK_BYTES))
                if not chunk:
                    return None
                body += chunk
        except OSError:  # includes socket.timeout
            return None
        finally:
            self.connection.settimeout(self.timeout)
        return body

    # -- answering --------------------------------------------------------------------------------
    def send_error(self, code, message=None, explain=None):
        """http.server calls this for malformed requests; answer JSON, never HTML."""
        if not self._request_id:
            self._request_id = self._pick_request_id() if getattr(self, "headers", None) else uuid.uuid4().hex
        self._started_s = self._started_s or time.perf_counter()
        self._send_error(code, message or HTTPStatus(code).phrase, reason="bad_input", close=True)

    def _send_error(self, status, message, reason=None, close=False, image_id=None, headers=None):
        self._log["error"] = message
        if image_id is not None:
            self._log["image_id"] = image_id
        if reason and self._route == "/api/":
            self.server.service.metrics.rejections.inc(reason)
        self._send(status, error_body(message, image_id), "application/json", headers=headers, close=close)

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
        close = close or self.server.service.draining or self._unread_body()
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
        metrics = self.server.service.metrics
        metrics.requests.inc(self._route, str(status))
        metrics.request_duration.observe(duration_s, self._route)
        path = getattr(self, "path", None)
        log_access(remote=self.client_address[0], method=self.command or "-",
                   path=urlsplit(path).path if path else "-",
                   status=status, bytes=size, duration_ms=round(duration_s * 1000, 1),
                   request_id=self._request_id, **self._log)
