"""StrictRequestHandler: http.server's request handler, reading heads strictly and closing politely.

This is the HTTP/1.1 hygiene every route shares, and knows nothing of
detection: the request line and headers are parsed per RFC 9112
(request_head) and bounded in bytes and in time: a new connection's head must
be complete within the server's head_timeout_s of its accept (--head-timeout-s);
a kept-alive connection may wait up to --client-timeout-s for its next
request's first byte, and then has head_timeout_s for the rest of the head.
Each deadline is one clock for the whole head, not a timeout per read. A bad
head is answered and the connection closed. Answers leave through a
MinimumRateWriter, so a client that reads too slowly is dropped. A connection
closed with input still unread is drained for a moment first, so the kernel
does not turn the close into a reset that destroys the answer just written
(nginx's lingering close).

The server is a BoundedHTTPServer: its ConnectionTable learns here when a
connection starts a request (from then on it keeps its slot, unless its body
arrives too slowly while every slot is taken) and when it waits for the next
one (from then on a newer connection may take its slot, which ends the wait
at once). A subclass routes: every method, known or not,
arrives at route_request.
"""

import http.client
import logging
import socket
import time
from http.server import BaseHTTPRequestHandler

from .answer_writer import MinimumRateWriter, SlowReader
from .deadline_reader import DeadlineLineReader
from .lingering_close import LINGER_MAX_BYTES, LINGER_S
from .request_head import MAX_HEAD_BYTES, HeadError, parse_head

log = logging.getLogger("detserve.http")


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

    def declares_body(self):
        """Whether the request's head says a body follows (a length other than 0, or any transfer coding)."""
        return self.headers is not None and (
            self.headers.get("Content-Length", "0").strip() not in ("", "0") or "Transfer-Encoding" in self.headers)

    def answered(self):
        return False

    # -- reading a request ---------------------------------------------------------------
    def setup(self):
        self.timeout = self.client_timeout_s()
        super().setup()
        self.rfile = DeadlineLineReader(self.rfile, self.connection)
        self.wfile.close()  # http.server's buffered writer: answers leave through ours
        self.wfile = MinimumRateWriter(self.connection, self.wbufsize)
        self._slot = self.server.connections.find(self.request)  # None: evicted before this thread began
        self._requests_started = 0

    def handle_one_request(self):
        self.headers = self.path = self.command = None  # never a previous request's, if this one fails
        self.request_version = self.default_request_version
        self.close_connection = True
        self.start_request()
        self.rfile.on_bytes = None  # a body a previous request left unread closed its connection
        if self._slot is None or self._slot.evicted:
            return
        try:
            if not self._wait_for_request():
                return
            self.raw_requestline = self.rfile.readline(MAX_HEAD_BYTES + 1)
            if not self.raw_requestline or self._slot.evicted:
                return
            if self.parse_request():
                if not self._request_started():
                    self.close_connection = True
                    return
                self._requests_started += 1
                self.rfile.deadline_s = None
                self.connection.settimeout(self.timeout)  # not what was left of the head's deadline
                self.route_request(self.command)
                self.wfile.flush()
        except SlowReader as exc:
            log.warning("closed the connection from %s: %s", self.client_address[0], exc)
            self.close_connection = True
        except TimeoutError:  # a read or a write timed out: discard this connection
            self.close_connection = True
        except OSError:
            if not self._slot.evicted:
                raise
            self.close_connection = True  # we shut it down ourselves: nothing to report

    def _request_started(self):
        """Tell the table the head is complete; a body still to come keeps the connection evictable."""
        table = self.server.connections
        if self.headers.get("Content-Length", "0").strip() in ("", "0"):
            return table.request_started(self._slot)
        self.rfile.on_bytes = lambda: table.body_arrived(self._slot)
        return table.request_started(self._slot, body_pending=True)

    def body_progress(self, arrived_bytes):
        """A subclass reading a body tells how much has arrived: at the bound, the slowest upload gives way."""
        self.server.connections.body_progress(self._slot, arrived_bytes)

    def body_complete(self):
        """The body is read, or given up on: the connection keeps its slot while the request runs."""
        self.server.connections.body_complete(self._slot)

    def _wait_for_request(self):
        """Set the head's deadline; on a kept-alive connection first wait for the next request's first byte.

        False when the connection is to be closed instead (the client closed
        it, kept it idle too long, or a newer connection took its slot).
        """
        head_timeout_s = self.server.head_timeout_s
        if not self._requests_started:
            self.rfile.deadline_s = self._slot.accepted_at_s + head_timeout_s
            return True
        self.server.connections.waiting(self._slot)
        self.rfile.deadline_s = None
        self.connection.settimeout(self.timeout)
        if not self.rfile.peek(1) or self._slot.evicted:  # the idle wait: --client-timeout-s
            return False
        self.rfile.deadline_s = time.monotonic() + head_timeout_s
        return True

    def parse_request(self):
        """Parse the request line and headers strictly; on a bad head answer and close."""
        self.close_connection = True
        try:
            head = self.raw_requestline + self._read_header_lines(MAX_HEAD_BYTES - len(self.raw_requestline))
            self.command, self.path, self.request_version, fields = parse_head(head)
        except HeadError as error:
            if not self._slot.evicted:  # an evicted connection's head was cut short by us: nobody to answer
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

    # -- answering ----------------------------------------------------------------------
    def write_answer(self, status, body, content_type, headers, close):
        """Status, headers and body in one flush; close asks for the connection to end after it.

        A body left unread would be parsed as the next request, and a drain wants
        every connection to end: a subclass passes close for those.
        """
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers.items():
            self.send_header(name, value)
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
        self.wfile.flush()  # on the wire before the request stops counting as in flight

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
