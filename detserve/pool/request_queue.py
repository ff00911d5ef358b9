"""The bounded queue between the handler threads and the workers, counted in requests and bytes."""

from collections import deque

from ..protocol import RejectReason, Refusal, retry_headers

# --queue-size full of 20 MB bodies would be 1.3 GB in the front end: bound the
# bytes too, at a few maximal bodies; ordinary images never reach it.
QUEUED_BODIES_BUDGET = 8


def overloaded(why):
    return Refusal(503, f"overloaded: {why}; retry after {retry_headers()['Retry-After']} s",
                   RejectReason.OVERLOAD, headers=retry_headers())


class RequestQueue:
    """FIFO of PendingRequest. Not locked itself: the pool's condition guards every call."""

    def __init__(self, max_requests, max_body_bytes):
        self.max_requests = max_requests
        self.max_bytes = QUEUED_BODIES_BUDGET * max_body_bytes
        self._items = deque()
        self._bytes = 0

    def __len__(self):
        return len(self._items)

    def put(self, pending):
        """Append pending, or raise the overload Refusal that says which bound it hit."""
        if len(self._items) >= self.max_requests:
            raise overloaded(f"the queue is full ({self.max_requests} requests waiting)")
        if self._bytes + len(pending.body) > self.max_bytes:
            raise overloaded(f"the queue holds {self._bytes / 2**20:.0f} MB of images already")
        self._bytes += len(pending.body)
        self._items.append(pending)

    def pop(self):
        pending = self._items.popleft()
        self._bytes -= len(pending.body)
        return pending

    def take_all(self):
        items = list(self._items)
        self._items.clear()
        self._bytes = 0
        return items
