"""One thread per worker that writes its tasks to its pipe, in order.

A body larger than the pipe's buffer blocks the writer until the worker reads
it. With one writer per worker, a busy or hung worker holds up only its own
tasks, never the dispatcher; and STOP is queued behind the tasks already
sent, so it can never land in the middle of a body.
"""

import queue
import threading

from ..protocol import STOP_MESSAGE

_CLOSE = object()


class TaskSender:
    def __init__(self, task_conn, name):
        self._conn = task_conn
        self._items = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def send_task(self, header_bytes, body):
        self._items.put((header_bytes, body))

    def send_stop(self):
        self._items.put((STOP_MESSAGE, None))

    def close(self):
        """Finish what is queued (unless the worker is gone), then close the pipe."""
        self._items.put(_CLOSE)

    def _run(self):
        try:
            while True:
                item = self._items.get()
                if item is _CLOSE:
                    return
                header_bytes, body = item
                self._conn.send_bytes(header_bytes)
                if body is not None:
                    self._conn.send_bytes(body)
        except (OSError, ValueError):
            pass  # the worker is gone: the supervisor fails everything it held
        finally:
            self._conn.close()
