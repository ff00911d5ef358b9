"""BodyBudget: the request-body bytes the front end may hold at once, across all connections.

A request reserves its declared Content-Length before a byte of its body is
read and gives it back when its answer is written, so however many clients
upload at once, the front end's body memory stays under --max-body-buffer-mb.
"""

import contextlib
import threading

from ..refusals import overloaded


class BodyBudget:
    def __init__(self, max_bytes):
        self.max_bytes = max_bytes
        self._reserved_bytes = 0
        self._lock = threading.Lock()

    def reserve(self, length):
        """Reserve length bytes, or raise the 503 Refusal that says the budget is spent."""
        with self._lock:
            if self._reserved_bytes + length > self.max_bytes:
                raise overloaded(f"{self._reserved_bytes / 2**20:.0f} MB of request bodies are being read or "
                                 f"waiting (--max-body-buffer-mb {self.max_bytes / 2**20:g})", close=True)
            self._reserved_bytes += length

    @contextlib.contextmanager
    def reserved(self, length):
        """Hold length bytes for the block (or raise the 503 before it starts)."""
        self.reserve(length)
        try:
            yield
        finally:
            self.release(length)

    def release(self, length):
        with self._lock:
            self._reserved_bytes -= length
