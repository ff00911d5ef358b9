"""PendingRequest: one accepted detection request, from the queue to its answer."""

import threading
import time

from ..protocol import Result, TaskHeader


class PendingRequest:
    """Held by the queue, then by the worker slot it was sent to; waited on by its handler thread."""

    __slots__ = ("task_id", "request_id", "media_type", "query_image_id", "body", "enqueued_at_s", "deadline_s",
                 "query_options", "output_format", "_done", "result")

    def __init__(self, task_id, request_id, media_type, query_image_id, body, deadline_s,
                 query_options=None, output_format="json"):
        self.task_id = task_id
        self.request_id = request_id
        self.media_type = media_type
        self.query_image_id = query_image_id
        self.body = body  # dropped once it is handed to a worker's sender
        self.enqueued_at_s = time.monotonic()
        self.deadline_s = deadline_s
        self.query_options = query_options or {}  # raw strings: the worker validates them
        self.output_format = output_format
        self._done = threading.Event()
        self.result = None

    def header(self):
        return TaskHeader(self.task_id, self.request_id, self.media_type, self.query_image_id,
                          self.enqueued_at_s, self.deadline_s, self.query_options, self.output_format)

    def resolve(self, result):
        """Answer this request; the first answer wins (a late one from a dead worker is ignored)."""
        if self.result is None:
            self.result = result
            self._done.set()

    def fail(self, refusal):
        self.resolve(Result.failure(self.task_id, refusal, image_id=self.query_image_id))

    def wait(self, timeout_s):
        """Return the Result, or None if none came within timeout_s."""
        return self.result if self._done.wait(max(0.0, timeout_s)) else None
