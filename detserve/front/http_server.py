"""DetectionHTTPServer: the listening socket, one handler thread per connection, and their bounds.

Two things a flood of connections must not do: grow threads and memory
without limit (beyond --max-connections a new connection gets a short 503
from the accepting thread itself, no handler thread), and make the accept
loop spin when the process is out of file descriptors (it backs off, keeps
serving the connections it has, and tries again).
"""

import errno
import logging
import socket
import sys
import threading
import time
import uuid
from http.server import ThreadingHTTPServer

from .. import __version__
from ..logs import log_access
from ..refusals import overloaded
from .formats import native
from .handler import DetectionRequestHandler

log = logging.getLogger("detserve.http")

# accept() fails like this when descriptors or kernel memory run out; the listening
# socket stays readable, so without a pause the accept loop would spin at 100% CPU.
RESOURCE_ERRNOS = frozenset([errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM])
ACCEPT_BACKOFF_S = (0.05, 1.0)  # first and longest pause after such a failure


class DetectionHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 1024  # the listen backlog: a burst of connections is queued, not reset

    def __init__(self, address, state):
        self.state = state  # ServerState, read by every handler
        self._open_connections = 0
        self._connections_lock = threading.Lock()
        self._accept_backoff_s = 0.0
        super().__init__(address, DetectionRequestHandler)

    # -- accepting ---------------------------------------------------------------------
    def get_request(self):
        try:
            accepted = super().get_request()
        except OSError as exc:
            if exc.errno in RESOURCE_ERRNOS:
                self._back_off_accepting(exc)
            raise  # socketserver skips this round and polls again
        self._accept_backoff_s = 0.0
        return accepted

    def _back_off_accepting(self, exc):
        first_s, longest_s = ACCEPT_BACKOFF_S
        if not self._accept_backoff_s:
            log.warning("cannot accept connections (%s); pausing accepts and serving the open ones", exc)
        self._accept_backoff_s = min(longest_s, max(first_s, self._accept_backoff_s * 2))
        time.sleep(self._accept_backoff_s)

    def process_request(self, request, client_address):
        with self._connections_lock:
            over_capacity = self._open_connections >= self.state.config.max_connections
            if not over_capacity:
                self._open_connections += 1
        if over_capacity:
            self._refuse_connection(request, client_address)
            return
        try:
            super().process_request(request, client_address)  # starts the handler thread
        except BaseException:
            self._connection_closed()
            raise

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._connection_closed()

    def _connection_closed(self):
        with self._connections_lock:
            self._open_connections -= 1

    def _refuse_connection(self, request, client_address):
        """Answer 503 from this thread, without reading the request: cheap and bounded."""
        refusal = overloaded("too many open connections (--max-connections)", close=True)
        body = native.error_body(refusal)
        request_id = uuid.uuid4().hex
        head = (f"HTTP/1.1 503 Service Unavailable\r\nServer: detserve/{__version__}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
                + "".join(f"{name}: {value}\r\n" for name, value in refusal.headers.items())
                + f"X-Request-ID: {request_id}\r\nConnection: close\r\n\r\n")
        try:
            request.setblocking(False)  # a full send buffer must not stall the accept loop
            request.send(head.encode() + body)
            request.shutdown(socket.SHUT_WR)
            while request.recv(65536):  # what already arrived; unread input would turn the close into a reset
                pass
        except OSError:
            pass
        self.shutdown_request(request)
        self.state.metrics.reject(refusal.reason)
        self.state.metrics.requests.inc("other", "503", "")
        log_access(remote=client_address[0], method="-", path="-", status=503, bytes=len(body), duration_ms=0.0,
                   request_id=request_id, image_id=None, batch_size=None, error=refusal.message)

    def handle_error(self, request, client_address):
        # A client that resets its connection is routine: one log line, not a traceback
        # on stderr (which would also break --log-format json).
        log.warning("connection from %s ended with an error: %r", client_address[0], sys.exc_info()[1])
