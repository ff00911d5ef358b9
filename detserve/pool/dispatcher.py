"""The dispatcher thread: hands each queued request to the ready worker with the fewest outstanding.

Each worker holds at most CREDIT_PER_BATCH x max_batch requests: enough that
its next batch is already in its pipe when the current one ends, few enough
that a slow or dying worker strands only a few requests.
"""

import threading
import time

from ..refusals import past_deadline

CREDIT_PER_BATCH = 2


class Dispatcher(threading.Thread):
    def __init__(self, queue, slots, changed, stopping, max_batch):
        super().__init__(name="detserve-dispatcher", daemon=True)
        self._queue = queue          # RequestQueue, filled by WorkerPool.submit
        self._slots = slots          # every WorkerSlot, shared with the supervisor
        self._changed = changed      # the pool's condition: notified on a new request or new credit
        self._stopping = stopping    # threading.Event set by WorkerPool.stop()
        self._credit = CREDIT_PER_BATCH * max_batch

    def run(self):
        while True:
            with self._changed:
                while not self._stopping.is_set() and not (self._queue and self._slot_with_credit()):
                    self._changed.wait()
                if self._stopping.is_set():
                    return
                pending = self._queue.pop()
                self._changed.notify_all()  # a submitter waiting for room in the queue has it
                now_s = time.monotonic()
                expired = now_s > pending.deadline_at_s
                if not expired:
                    self._slot_with_credit().assign(pending, now_s)
            if expired:  # its client already has a 504: do no work for it
                pending.fail(past_deadline)

    def _slot_with_credit(self):
        candidates = [slot for slot in self._slots if slot.takes_work(self._credit)]
        return min(candidates, key=lambda slot: len(slot.outstanding), default=None)
