"""PendingRequest: one accepted detection request, from the queue to its answer."""

import threading

from ..protocol import Result


class PendingRequest:
    """Held by the queue, then by the worker slot it was sent to; waited on by its handler thread.

    The request's handler thread waits; the supervisor (an answer, a death),
    the dispatcher (an expired deadline) and a stopping pool may each resolve
    it, so resolving is under a lock and the first answer wins.
    """

    __slots__ = ("header", "body", "_done", "_lock", "result")

    def __init__(self, header, body):
        self.header = header  # protocol.TaskHeader, sent to the worker ahead of the body
        self.body = body  # dropped once it is handed to a worker's sender
        self._done = threading.Event()
        self._lock = threading.Lock()
        self.result = None

    @property
    def task_id(self):
        return self.header.task_id

    @property
    def deadline_at_s(self):
        return self.header.deadline_at_s

    def resolve(self, result):
        """Answer this request; the first answer wins (a late one from a dead worker is ignored)."""
        with self._lock:
            if self.result is not None:
                return
            self.result = result
        self._done.set()

    def fail(self, refusal_for):
        """Answer with the Refusal refusal_for(image_id) builds for this request's image id."""
        self.resolve(Result.failure(self.task_id, refusal_for(self.header.query_image_id)))

    def wait(self, timeout_s):
        """Return the Result, or None if none came within timeout_s."""
        return self.result if self._done.wait(max(0.0, timeout_s)) else None
