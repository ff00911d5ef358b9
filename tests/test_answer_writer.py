"""The minimum send rate on a real socket pair (AF_UNIX, where the kernel says exactly what the
reader has taken): a reader below the rate is dropped after the grace, one above it gets every
byte, and the connection writer coalesces small writes and refuses to go on after a failure.
The same bound on a real server and TCP is in tests/test_connection_bounds.py."""

import socket
import threading
import time

import pytest

from detserve.front.answer_writer import MinimumRateWriter, SlowReader, send_at_minimum_rate

KIB = 1024


def reader(sock, read_bytes, every_s, into):
    """Read read_bytes every every_s seconds until EOF or an error; append to into."""
    def run():
        while True:
            try:
                chunk = sock.recv(read_bytes)
            except OSError:
                return
            if not chunk:
                return
            into.append(chunk)
            time.sleep(every_s)
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_a_reader_below_the_rate_is_dropped_after_the_grace_and_one_above_it_is_not():
    answer = bytes(range(256)) * (4 * KIB)  # 1 MiB: more than the socket buffers hold
    for read_bytes, should_finish in ((64 * KIB, True), (4 * KIB, False)):  # ~640 KiB/s and ~40 KiB/s
        server_end, client_end = socket.socketpair()
        received = []
        thread = reader(client_end, read_bytes, 0.1, received)
        started_s = time.monotonic()
        try:
            if should_finish:
                send_at_minimum_rate(server_end, [answer], min_rate_bytes_per_s=128 * KIB, grace_s=0.5)
            else:
                with pytest.raises(SlowReader):
                    send_at_minimum_rate(server_end, [answer], min_rate_bytes_per_s=128 * KIB, grace_s=0.5)
                dropped_after_s = time.monotonic() - started_s
        finally:
            server_end.close()
        thread.join(timeout=30)
        client_end.close()
        if should_finish:
            assert b"".join(received) == answer
        else:
            # At 40 KiB/s against 128 KiB/s the reader falls behind within a second of the grace.
            assert 0.5 <= dropped_after_s < 5, dropped_after_s
            assert len(b"".join(received)) < len(answer)


def test_the_writer_sends_small_writes_together_and_stops_after_a_failure():
    server_end, client_end = socket.socketpair()
    writer = MinimumRateWriter(server_end, 64 * KIB)
    writer.write(b"HTTP/1.1 200 OK\r\n\r\n")
    writer.write(b"small body")
    client_end.settimeout(0.2)
    with pytest.raises(socket.timeout):
        client_end.recv(100)  # nothing leaves before the flush
    writer.flush()
    assert client_end.recv(100) == b"HTTP/1.1 200 OK\r\n\r\nsmall body"
    client_end.close()
    with pytest.raises(OSError):
        writer.write(b"x" * (128 * KIB))  # more than the buffer: sent at once, to a closed peer
    with pytest.raises(BrokenPipeError):
        writer.write(b"more")
    writer.flush()  # a finished connection's flush is a no-op, not a second failure
    server_end.close()
