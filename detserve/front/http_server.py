"""BoundedHTTPServer: a listening socket, a handler thread per connection, their bounds; DetectionHTTPServer.

What a flood of connections must not do: grow threads and memory without
limit, hold every slot with sockets that send nothing, or make the accept
loop spin when the process is out of file descriptors. So connections are
counted in a ConnectionTable: at the bound a new connection takes the slot of
the one that has waited longest for a request, and only when every
connection is busy is the new one refused, with a short 503 from the
accepting thread itself (no handler thread, the request unread), closed
lingering by the LingeringCloser so that the client reads it. When accept()
fails for want of descriptors the loop backs off, keeps serving the
connections it has, and tries again.
"""

import errno
import logging
import sys
import time
import uuid
from http.server import ThreadingHTTPServer

from .. import __version__
from ..logs import log_access
from ..refusals import overloaded
from .connection_table import ConnectionTable
from .formats import native
from .handler import DetectionRequestHandler
from .lingering_close import LingeringCloser

log = logging.getLogger("detserve.http")

# accept() fails like this when descriptors or kernel memory run out; the listening
# socket stays readable, so without a pause the accept loop would spin at 100% CPU.
RESOURCE_ERRNOS = frozenset([errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM])
ACCEPT_BACKOFF_S = (0.05, 1.0)  # first and longest pause after such a failure


class BoundedHTTPServer(ThreadingHTTPServer):
    """A ThreadingHTTPServer for a StrictRequestHandler: at most max_connections, heads within head_timeout_s.

    limit_name says in the 503 which bound refused the connection.
    """

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 1024  # the listen backlog: a burst of connections is queued, not reset

    def __init__(self, address, handler_class, state, max_connections, head_timeout_s, limit_name):
        self.state = state  # ServerState, read by every handler
        self.connections = ConnectionTable(max_connections)
        self.head_timeout_s = head_timeout_s  # read by StrictRequestHandler
        self._limit_name = limit_name
        self._accept_backoff_s = 0.0
        self._lingering = LingeringCloser()
        super().__init__(address, handler_class)
        self._lingering.start()

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
        if self.connections.open(request) is None:
            self._refuse_connection(request, client_address)
            return
        try:
            super().process_request(request, client_address)  # starts the handler thread
        except BaseException:
            self.connections.close(request)
            raise

    def shutdown_request(self, request):
        self.connections.close(request)  # out of the table before its descriptor can be reused
        super().shutdown_request(request)

    def _refuse_connection(self, request, client_address):
        """Answer 503 from this thread without reading the request, then close lingering (never waiting here)."""
        refusal = overloaded(f"too many open connections ({self._limit_name})", close=True)
        body = native.error_body(refusal)
        request_id = uuid.uuid4().hex
        head = (f"HTTP/1.1 503 Service Unavailable\r\nServer: detserve/{__version__}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
                + "".join(f"{name}: {value}\r\n" for name, value in refusal.headers.items())
                + f"X-Request-ID: {request_id}\r\nConnection: close\r\n\r\n")
        try:
            request.setblocking(False)  # a few hundred bytes into an empty send buffer: never blocks
            request.send(head.encode() + body)
        except OSError:
            request.close()
        else:
            self._lingering.close_after_answer(request)
        self.state.metrics.reject(refusal.reason)
        self.state.metrics.count_request("other", 503)
        log_access(remote=client_address[0], method="-", path="-", status=503, bytes=len(body), duration_ms=0.0,
                   request_id=request_id, image_id=None, batch_size=None, error=refusal.message)

    def server_close(self):
        super().server_close()
        self._lingering.stop()

    def handle_error(self, request, client_address):
        # A client that resets its connection is routine: one log line, not a traceback
        # on stderr (which would also break --log-format json).
        log.warning("connection from %s ended with an error: %r", client_address[0], sys.exc_info()[1])


class DetectionHTTPServer(BoundedHTTPServer):
    """The API's listener: every route, --max-connections connections."""

    def __init__(self, address, state):
        config = state.config
        super().__init__(address, DetectionRequestHandler, state, config.max_connections, config.head_timeout_s,
                         "--max-connections")
