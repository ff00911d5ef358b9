"""The bounded queue between the handler threads and the workers.

Its bytes are bounded before it, by the front end's body budget
(--max-body-buffer-mb), which every body reserves before it is read.
"""

from collections import deque

from ..refusals import overloaded


class RequestQueue:
    """FIFO of PendingRequest. Not locked itself: the pool's condition guards every call."""

    def __init__(self, max_requests):
        self.max_requests = max_requests
        self._items = deque()

    def __len__(self):
        return len(self._items)

    def is_full(self):
        return len(self._items) >= self.max_requests

    def put(self, pending):
        """Append pending, or raise the overload Refusal when the queue is full."""
        if self.is_full():
            raise overloaded(f"the queue is full (--queue-size {self.max_requests})",
                             image_id=pending.header.query_image_id)
        self._items.append(pending)

    def pop(self):
        return self._items.popleft()

    def take_all(self):
        items = list(self._items)
        self._items.clear()
        return items
