"""StrictRequestHandler: http.server's request handler, reading heads strictly and closing politely.

This is the HTTP/1.1 hygiene every route shares, and knows nothing of
detection: the request line and headers are parsed per RFC 9112
(request_head), bounded in bytes and, with the keep-alive wait, in time
(one --client-timeout-s deadline); a bad head is answered and the connection
closed; and a connection closed with input still unread is drained for a
moment first, so the kernel does not turn the close into a reset that
destroys the answer just written (nginx's lingering close).

A subclass routes: every method, known or not, arrives at route_request.
"""

import http.client
import socket
import time
from http.server import BaseHTTPRequestHandler

from .deadline_reader import DeadlineLineReader
from .request_head import MAX_HEAD_BYTES, HeadError, parse_head

LINGER_S = 1.0
LINGER_MAX_BYTES = 1 << 20


class StrictRequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Errors found before the request line is parsed still get status and headers
    # (http.server's HTTP/0.9 default would send a bare body nobody can read).
    default_request_version = "HTTP/1.1"
    # Headers and body leave in one write, and without Nagle's algorithm: a
    # second small write would otherwise wait for the client's delayed ACK
    # (~40 ms on Linux), more than the whole inference at low load.
    disable_nagle_algorithm = True
    wbufsize = 64 * 1024  # coalesces headers and body; a subclass flushes once per answer

    # -- what a subclass provides ------------------------------------------------------
    def client_timeout_s(self):
        raise NotImplementedError

    def start_request(self):
        """Reset per-request state before a new request line is read."""

    def route_request(self, method):
        raise NotImplementedError

    def unread_body(self):
        """Whether this request's body (if it has one) was left unread."""
        return False

    def answered(self):
        return False

    # -- reading a request ---------------------------------------------------------------
    def setup(self):
        self.timeout = self.client_timeout_s()
        super().setup()
        self.rfile = DeadlineLineReader(self.rfile, self.connection)

    def handle_one_request(self):
        self.headers = self.path = self.command = None  # never a previous request's, if this one fails
        self.request_version = self.default_request_version
        # An idle keep-alive and the request line and headers share one deadline.
        self.rfile.deadline_s = time.monotonic() + self.timeout
        self.start_request()
        try:
            self.raw_requestline = self.rfile.readline(MAX_HEAD_BYTES + 1)
            if not self.raw_requestline:
                self.close_connection = True
                return
            if self.parse_request():
                self.rfile.deadline_s = None
                self.connection.settimeout(self.timeout)  # not what was left of the head's deadline
                self.route_request(self.command)
                self.wfile.flush()
        except TimeoutError:  # a read or a write timed out: discard this connection
            self.close_connection = True

    def parse_request(self):
        """Parse the request line and headers strictly; on a bad head answer and close."""
        self.close_connection = True
        try:
            head = self.raw_requestline + self._read_header_lines(MAX_HEAD_BYTES - len(self.raw_requestline))
            self.command, self.path, self.request_version, fields = parse_head(head)
        except HeadError as error:
            self.send_error(error.status, error.message)
            return False
        self.requestline = self.raw_requestline.decode("latin-1").rstrip("\r\n")
        self.headers = http.client.HTTPMessage()
        for name, value in fields:
            self.headers[name] = value  # appends: a repeated header stays repeated
        connection = self.headers.get("Connection", "").lower()
        if self.request_version == "HTTP/1.1":
            self.close_connection = connection == "close"
        else:
            self.close_connection = connection != "keep-alive"
        return True

    def _read_header_lines(self, budget_bytes):
        """The header lines up to and with the blank line, refusing a head over budget_bytes."""
        lines = []
        while True:
            line = self.rfile.readline(max(0, budget_bytes) + 1)
            budget_bytes -= len(line)
            lines.append(line)
            if budget_bytes < 0:
                raise HeadError(431, f"the request line and headers are more than {MAX_HEAD_BYTES:,} bytes; "
                                     "send fewer or shorter headers")
            if line in (b"\r\n", b"\n", b""):
                return b"".join(lines)

    # -- closing -------------------------------------------------------------------------
    def finish(self):
        if self.close_connection and self.answered() and (self.unread_body() or self.headers is None):
            self._linger()
        super().finish()

    def _linger(self):
        try:
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_WR)  # the answer is complete; we only read now
            deadline_s = time.monotonic() + LINGER_S
            drained = 0
            while drained < LINGER_MAX_BYTES and time.monotonic() < deadline_s:
                self.connection.settimeout(max(0.01, deadline_s - time.monotonic()))
                chunk = self.connection.recv(65536)
                if not chunk:
                    break
                drained += len(chunk)
        except OSError:
            pass  # the client went away first: nothing left to protect

    def log_request(self, code="-", size="-"):
        pass  # a subclass writes its own access line, with more fields

    def log_message(self, format, *args):
        pass  # http.server's own messages are replaced by the subclass's access log
