"""DetectionHTTPServer: the listening socket and one handler thread per connection."""

import logging
import sys
from http.server import ThreadingHTTPServer

from .handler import DetectionRequestHandler

log = logging.getLogger("detserve.http")


class DetectionHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 1024  # the listen backlog: a burst of connections is queued, not reset

    def __init__(self, address, state):
        self.state = state  # ServerState, read by every handler
        super().__init__(address, DetectionRequestHandler)

    def handle_error(self, request, client_address):
        # A client that resets its connection is routine: one log line, not a traceback
        # on stderr (which would also break --log-format json).
        log.warning("connection from %s ended with an error: %r", client_address[0], sys.exc_info()[1])
