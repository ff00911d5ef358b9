"""Read a request body of a known length within one deadline, growing the buffer as bytes arrive."""

import time

from ..refusals import bad_request

READ_CHUNK_BYTES = 1 << 20


def read_body(rfile, connection, length, timeout_s):
    """Exactly length bytes, read within timeout_s in total, or raise a 400 Refusal.

    The buffer grows as bytes arrive and is never allocated from the declared
    length: headers alone must not make the server hold 20 MB per connection.
    The socket's own timeout is left as it was found.
    """
    body = bytearray()
    previous_timeout_s = connection.gettimeout()
    deadline_s = time.monotonic() + timeout_s
    try:
        while len(body) < length:
            remaining_s = deadline_s - time.monotonic()
            if remaining_s <= 0:
                break
            connection.settimeout(remaining_s)  # a trickle of bytes cannot reset the clock
            chunk = rfile.read1(min(length - len(body), READ_CHUNK_BYTES))
            if not chunk:
                break
            body += chunk
    except OSError:  # includes socket.timeout
        pass
    finally:
        connection.settimeout(previous_timeout_s)
    if len(body) < length:
        raise bad_request(f"the body ended before its Content-Length of {length:,} bytes "
                          f"(or took longer than {timeout_s:g} s to arrive)", close=True)
    return body
