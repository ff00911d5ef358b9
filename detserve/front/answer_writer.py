"""Writing answers to a client at a minimum rate: a client that reads too slowly is dropped.

A socket timeout bounds each send, not the answer: a client that reads 16 KiB
every few seconds keeps every send progressing, and so keeps a multi-megabyte
answer (and its thread) held for as long as it likes. Here an answer must
reach the client at MIN_SEND_RATE_BYTES_PER_S on average, counted from the
first send after a grace of SEND_GRACE_S (a slow start, a pause); nginx bounds
the same peer with send_timeout. "Reach" is what the client's TCP has taken:
the bytes handed to the kernel less those its send queue still holds (SIOCOUTQ
on Linux), so a large kernel send buffer (4 MB on loopback) is not mistaken
for a fast reader. A slow reader's connection is reset when it is closed, so
the kernel drops its copy of the answer too (nginx's reset_timedout_connection):
after a graceful close the kernel would go on holding, and trickling, megabytes.

MinimumRateWriter is a connection's write side for http.server (write, flush,
close): it coalesces small writes, so headers and a small body leave in one
send, and sends everything else through send_at_minimum_rate.
"""

import fcntl
import socket
import struct
import termios
import time

# 512 kbit/s. A client below it for longer than the grace is dropped: at this rate
# a 13 MB annotated answer is held 200 s; at the 4 KiB/s of a hostile reader, ~5 s.
MIN_SEND_RATE_BYTES_PER_S = 64 * 1024
SEND_GRACE_S = 5.0
# How often a send blocked on a full buffer looks again at what the client has taken.
RATE_CHECK_INTERVAL_S = 0.5


class SlowReader(TimeoutError):
    """The client took its answer slower than the minimum rate: the connection is to be closed."""


def unacknowledged_bytes(sock):
    """Bytes handed to sock's kernel that the peer has not taken yet (0 where the kernel cannot say)."""
    try:
        return struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0"))[0]
    except OSError:
        return 0


def reset_on_close(sock):
    """Make sock's close a reset (SO_LINGER 0): what its send queue holds is discarded, not delivered."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass


def send_at_minimum_rate(sock, chunks, min_rate_bytes_per_s=MIN_SEND_RATE_BYTES_PER_S, grace_s=SEND_GRACE_S):
    """Send every bytes-like object in chunks, in order, or raise SlowReader.

    By t seconds after the first send the client must have taken at least
    (t - grace_s) x min_rate_bytes_per_s of these bytes. Returns once the last
    byte is handed to the kernel. The socket's own timeout is left as it was found.
    """
    started_s = time.monotonic()
    handed_bytes = 0
    previous_timeout_s = sock.gettimeout()
    try:
        for chunk in chunks:
            with memoryview(chunk) as whole, whole.cast("B") as view:
                offset = 0
                while offset < len(view):
                    taken_bytes = max(0, handed_bytes - unacknowledged_bytes(sock))
                    due_s = started_s + grace_s + taken_bytes / min_rate_bytes_per_s
                    now_s = time.monotonic()
                    if now_s >= due_s:
                        reset_on_close(sock)
                        raise SlowReader(f"the client took {taken_bytes:,} bytes in {now_s - started_s:.1f} s, "
                                         f"slower than {min_rate_bytes_per_s / 1024:g} KiB/s")
                    sock.settimeout(min(due_s - now_s, RATE_CHECK_INTERVAL_S))
                    try:
                        sent = sock.send(view[offset:])  # as much as the kernel takes now
                    except socket.timeout:
                        continue  # the buffer stayed full: look again at what the client took
                    offset += sent
                    handed_bytes += sent
    finally:
        sock.settimeout(previous_timeout_s)


class MinimumRateWriter:
    """The write side of one connection: buffered up to buffer_bytes, sent at the minimum rate.

    After a failed send (a slow reader, a reset) what was buffered is dropped
    and every later write raises BrokenPipeError: the connection is finished.
    """

    def __init__(self, sock, buffer_bytes):
        self._sock = sock
        self._buffer_bytes = buffer_bytes
        self._pending = bytearray()
        self._broken = False
        self.closed = False

    def write(self, data):
        if self.closed:
            raise ValueError("write to a closed connection writer")
        if self._broken:
            raise BrokenPipeError("this connection's answer could not be sent")
        if len(self._pending) + len(data) <= self._buffer_bytes:
            self._pending += data
        else:
            pending, self._pending = self._pending, bytearray()
            self._send((pending, data))  # one rate clock for the whole answer
        return len(data)

    def flush(self):
        if self._pending and not self._broken:
            pending, self._pending = self._pending, bytearray()
            self._send((pending,))

    def close(self):
        self.closed = True

    def _send(self, chunks):
        try:
            send_at_minimum_rate(self._sock, chunks)
        except OSError:
            self._broken = True
            self._pending = bytearray()
            raise
