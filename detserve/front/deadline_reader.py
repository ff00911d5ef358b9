"""Line reads from a client socket that share one deadline.

http.server reads the request line and headers with readline(), and a socket
timeout applies to each recv: a client that sends one header byte just inside
the timeout, again and again, holds its connection (and a thread) for as long
as it likes. Here every readline until the deadline shares one clock (the
handler sets it from --head-timeout-s).

The same reader is what a body is first read through, so it also tells the
handler when a body's first bytes arrive (on_bytes): until then a connection
has not sent its request, and may give way to a newer one.
"""

import time


class DeadlineLineReader:
    """Wraps a connection's buffered reader; readline() honours deadline_s when set."""

    def __init__(self, buffered, sock):
        self._buffered = buffered
        self._sock = sock
        self.deadline_s = None
        self.on_bytes = None  # called once, then cleared, when a peek or read1 returns bytes

    def readline(self, limit=-1):
        if self.deadline_s is None:
            return self._buffered.readline(limit)
        line = bytearray()
        while limit < 0 or len(line) < limit:
            remaining_s = self.deadline_s - time.monotonic()
            if remaining_s <= 0:
                raise TimeoutError("the request line and headers did not arrive within the head timeout")
            self._sock.settimeout(remaining_s)
            available = self._buffered.peek(1)  # at most one recv, bounded by the time left
            if not available:
                break
            newline = available.find(b"\n")
            take = len(available) if newline < 0 else newline + 1
            if limit >= 0:
                take = min(take, limit - len(line))
            line += self._buffered.read(take)  # already buffered: does not block
            if line.endswith(b"\n"):
                break
        return bytes(line)

    def peek(self, size=0):
        return self._noticed(self._buffered.peek(size))

    def read1(self, size=-1):
        return self._noticed(self._buffered.read1(size))

    def _noticed(self, data):
        if data and self.on_bytes is not None:
            on_bytes, self.on_bytes = self.on_bytes, None
            on_bytes()
        return data

    def __getattr__(self, name):
        return getattr(self._buffered, name)
