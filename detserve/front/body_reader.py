"""Read a request body of a known length, charged to its BodyReservation as it arrives, while it keeps arriving.

Three bounds, each with its own 400: the body ends early; the whole body takes
longer than --client-timeout-s (a trickle of bytes cannot reset that clock);
or it stops arriving, less than MIN_BODY_RATE_BYTES_PER_S over any
BODY_RATE_WINDOW_S (nginx's client_body_timeout bounds the same stall). The
last is what makes a stalled upload give its bytes back within seconds instead
of at the client timeout. The reservation is grown by a chunk only once bytes
are there to read: a connection waiting for its body holds nothing.
"""

import select
import time

from ..refusals import bad_request

READ_CHUNK_BYTES = 256 * 1024  # most taken off the socket at once (and reserved for that moment)
# 128 kbit/s, measured over windows of 2 s: a body that sends less than 32 KiB (or
# its rest) in any 2 s has stalled. A faster floor would refuse honest slow
# uploads; the client timeout already bounds how long a trickle can hold its bytes.
MIN_BODY_RATE_BYTES_PER_S = 16 * 1024
BODY_RATE_WINDOW_S = 2.0


def read_body(rfile, connection, length, timeout_s, reservation, on_progress=None):
    """Exactly length bytes, or raise a Refusal (400 as above; the budget's 503 if it has no room).

    rfile is the connection's buffered reader (it may hold the first bytes of
    the body, read with the head). The buffer grows as bytes arrive, never
    from the declared length. reservation is the BodyReservation each chunk is
    charged to.
    on_progress: see ArrivalClock. The socket's own timeout is left as it was found.
    """
    clock = ArrivalClock(length, timeout_s, on_progress)
    body = bytearray()
    previous_timeout_s = connection.gettimeout()
    buffered = True  # the head's read may have left body bytes in rfile's buffer
    readable = select.poll()
    readable.register(connection, select.POLLIN)
    try:
        while len(body) < length:
            wait_s = clock.due_s() - time.monotonic()
            if wait_s <= 0:
                raise clock.refusal(len(body))
            connection.settimeout(wait_s)
            try:
                chunk, buffered = _read_chunk(rfile, connection, readable, buffered, wait_s,
                                              min(length - len(body), READ_CHUNK_BYTES), reservation)
            except TimeoutError:
                continue  # the check above says which bound passed
            except OSError:  # a reset: the body ended
                break
            if chunk == b"":
                break
            if chunk:
                body += chunk
                clock.arrived(len(body))
    finally:
        connection.settimeout(previous_timeout_s)
    if len(body) < length:
        raise bad_request(f"the body ended after {len(body):,} of its Content-Length of {length:,} bytes",
                          close=True)
    return body


class ArrivalClock:
    """When a body must next have made progress: by its whole deadline, and within each rate window."""

    WINDOW_QUOTA_BYTES = int(MIN_BODY_RATE_BYTES_PER_S * BODY_RATE_WINDOW_S)

    def __init__(self, length, timeout_s, on_progress=None):
        """on_progress(arrived_bytes), if given, is told of every arrival (the connection table judges
        an upload's rate by it)."""
        self.length = length
        self.timeout_s = timeout_s
        self.on_progress = on_progress
        now_s = time.monotonic()
        self.deadline_s = now_s + timeout_s
        self._window_started_s, self._window_start_bytes = now_s, 0

    def due_s(self):
        return min(self.deadline_s, self._window_started_s + BODY_RATE_WINDOW_S)

    def arrived(self, arrived_bytes):
        """arrived_bytes of the body are in: a window whose quota (or the body's rest) is met starts anew."""
        if self.on_progress is not None:
            self.on_progress(arrived_bytes)
        if arrived_bytes - self._window_start_bytes >= min(self.WINDOW_QUOTA_BYTES,
                                                           self.length - self._window_start_bytes):
            self._window_started_s, self._window_start_bytes = time.monotonic(), arrived_bytes

    def refusal(self, arrived_bytes):
        """The 400 for a body past due: which of the two bounds it passed."""
        if time.monotonic() >= self.deadline_s:
            return bad_request(f"the body took longer than {self.timeout_s:g} s to arrive ({arrived_bytes:,} of "
                               f"{self.length:,} bytes; --client-timeout-s)", close=True)
        return bad_request(f"the body stopped arriving: less than {self.WINDOW_QUOTA_BYTES // 1024} KiB in "
                           f"{BODY_RATE_WINDOW_S:g} s ({arrived_bytes:,} of {self.length:,} bytes arrived; "
                           f"at least {MIN_BODY_RATE_BYTES_PER_S // 1024} KiB/s is needed)", close=True)


def _read_chunk(rfile, connection, readable, buffered, wait_s, want_bytes, reservation):
    """(chunk, whether rfile may still hold buffered bytes): b"" at the end, None if nothing came in wait_s.

    The reservation grows by want_bytes only once bytes are there to read, and
    shrinks back to what was read.
    """
    if buffered:
        if not rfile.peek(1):  # waits for bytes, into the connection's own read buffer
            return b"", buffered
    elif not readable.poll(wait_s * 1000):
        return None, buffered
    reservation.grow(want_bytes)
    chunk = b""
    try:
        if buffered:
            chunk = rfile.read1(want_bytes)
            buffered = len(chunk) == want_bytes  # less than asked for: rfile's buffer is empty now
        else:
            chunk = connection.recv(want_bytes)  # readable: returns at once
    finally:
        reservation.shrink(want_bytes - len(chunk))
    return chunk, buffered
