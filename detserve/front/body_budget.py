"""BodyBudget: the request-body bytes the front end may hold at once, across all connections.

A request reserves its declared Content-Length before a byte of its body is
read and gives it back when its answer is written, so however many clients
upload at once, the front end's body memory stays under --max-body-buffer-mb.
"""

import threading

from ..protocol import RejectReason, Refusal, retry_headers


class BodyBudget:
    def __init__(self, max_bytes):
        self.max_bytes = max_bytes
        self._reserved_bytes = 0
        self._lock = threading.Lock()

    def reserve(self, length):
        """Reserve length bytes, or raise the 503 Refusal that says the budget is spent."""
        with self._lock:
            if self._reserved_bytes + length > self.max_bytes:
                held_mb = self._reserved_bytes / 2**20
                raise Refusal(503, f"overloaded: {held_mb:.0f} MB of request bodies are being read or waiting "
                                   f"(--max-body-buffer-mb {self.max_bytes / 2**20:g}); retry after "
                                   f"{retry_headers()['Retry-After']} s", RejectReason.OVERLOAD,
                              headers=retry_headers(), close=True)
            self._reserved_bytes += length

    def release(self, length):
        with self._lock:
            self._reserved_bytes -= length
