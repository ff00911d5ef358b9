"""BusyFlags: which workers are busy right now, in memory every worker process shares.

A worker sets its flag from a batch's start until its pipe is empty; each
worker reads the count to choose its OpenCV threads; the pool clears the
flag of a worker that died.
"""


class BusyFlags:
    def __init__(self, mp_context, workers):
        self._flags = mp_context.RawArray("b", workers)

    def mark_busy(self, worker_index):
        self._flags[worker_index] = 1

    def mark_idle(self, worker_index):
        self._flags[worker_index] = 0

    def busy_count(self):
        return sum(self._flags)
