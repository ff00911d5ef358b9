"""ProbeHTTPServer: a listener of its own for /healthz, /readyz and /metrics (--probe-port).

A flood of the API port (idle sockets, slow uploads, every slot busy) must
not leave the kubelet's liveness probe unanswered, or a healthy pod is
restarted: the attack turns into restarts. So the probes and the metrics
scrape have their own port, as Triton and TorchServe keep theirs, with their
own small connection bound (PROBE_MAX_CONNECTIONS: a kubelet and a
Prometheus need a few) and the same strict heads, head timeout and
lingering close as the API port. Its answers are the API port's GET routes,
read from the same state; the API port keeps answering them too.

Probe answers are counted in detserve_http_requests_total like the API port's, but
not written to the access log: a probe every few seconds would drown it.
"""

import logging
import time
import uuid
from http import HTTPStatus
from urllib.parse import urlsplit

from .. import __version__
from ..refusals import http_error, internal_error, method_not_allowed, not_found
from .formats import native
from .get_routes import GET_ROUTES
from .http_server import BoundedHTTPServer
from .strict_handler import StrictRequestHandler

log = logging.getLogger("detserve.http")

PROBE_PATHS = ("/healthz", "/readyz", "/metrics")
# A kubelet opens one connection per probe and Prometheus keeps one; a few to spare.
PROBE_MAX_CONNECTIONS = 16


class ProbeRequestHandler(StrictRequestHandler):
    def version_string(self):
        return f"detserve/{__version__}"

    def client_timeout_s(self):
        return self.server.state.config.client_timeout_s

    def start_request(self):
        self._started_s = time.perf_counter()
        self._responded = False

    def answered(self):
        return self._responded

    def unread_body(self):
        # A probe has no body: one sent is never read, so the connection closes after the answer.
        return self.declares_body()

    def route_request(self, method):
        path = urlsplit(self.path).path
        if path not in PROBE_PATHS:
            return self._refuse(not_found(f"no such path {path[:100]!r} on the probe port, which answers only "
                                          f"{', '.join(PROBE_PATHS)}; the API has a port of its own"))
        if method not in ("GET", "HEAD"):
            return self._refuse(method_not_allowed(method, ("GET", "HEAD")))
        try:
            answer = GET_ROUTES[path](self.server.state, self.headers)
        except Exception:  # a bug of ours: a JSON 500 the log explains, as on the API port
            request_id = uuid.uuid4().hex
            log.exception("unexpected error answering %s on the probe port (request id %s)", path, request_id)
            return self._refuse(internal_error(request_id, close=True))
        self._send(answer.status, answer.body, answer.content_type, answer.headers, route=path)

    def send_error(self, code, message=None, explain=None):
        """http.server calls this for malformed requests; answer JSON, never HTML."""
        self._refuse(http_error(code, message or HTTPStatus(code).phrase))

    def _refuse(self, refusal):
        self._send(refusal.status, native.error_body(refusal), native.ERROR_CONTENT_TYPE, refusal.headers,
                   close=refusal.close)

    def _send(self, status, body, content_type, headers=None, close=False, route="other"):
        self._responded = True
        self.write_answer(status, body, content_type, headers or {},
                          close or self.server.state.draining or self.unread_body())
        metrics = self.server.state.metrics
        metrics.count_request(route, status)
        metrics.request_duration.observe(time.perf_counter() - self._started_s, route)


class ProbeHTTPServer(BoundedHTTPServer):
    def __init__(self, address, state):
        super().__init__(address, ProbeRequestHandler, state, PROBE_MAX_CONNECTIONS, state.config.head_timeout_s,
                         f"the probe port takes {PROBE_MAX_CONNECTIONS}")
