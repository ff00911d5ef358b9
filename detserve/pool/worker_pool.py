"""WorkerPool: what the front end sees of the workers (submit, readiness) and their start and stop.

    handler threads ──submit──▶ RequestQueue (bounded in requests; bytes by the body budget)
                                     │ Dispatcher thread: a request goes to the
                                     │ ready worker with the fewest outstanding
                                     ▼
        task pipe 0 … task pipe N-1  (one per worker, each written by its own
                                     TaskSender thread: header + raw body bytes)
                                     ▼
                               worker processes (the target given to the pool)
                                     ▼
        result pipe 0 … result pipe N-1 ──▶ Supervisor thread: resolves each
                                     request's PendingRequest, notices a death
                                     or a hang at once and replaces the worker.

Why one pipe pair per worker instead of one shared multiprocessing.Queue: a
shared queue's reader lock is held by whichever idle worker is blocked in
get(); SIGKILL that worker and the lock is never released, so every other
worker (and the replacement) hangs for ever. Private pipes die with their
worker, and the front end knows exactly which requests each worker held.
"""

import multiprocessing
import threading
import time

from ..busy_flags import BusyFlags
from ..refusals import shutting_down
from .dispatcher import Dispatcher
from .request_queue import RequestQueue
from .supervisor import Supervisor
from .worker_slot import SlotState, WorkerSlot

WORKER_STOP_TIMEOUT_S = 5.0
# A request that finds the queue full waits this long for room before its 503.
# Clients that ignore Retry-After and resend at once would otherwise turn the
# server's CPU into refusals (thousands a second) instead of detections; held
# for a moment, each connection costs one refusal a second at most, and a
# request that finds room in that moment is simply served. Short beside any
# client's time-out, and beside --request-timeout-s, which it counts towards.
QUEUE_FULL_WAIT_S = 1.0


class WorkerPool:
    """worker_target(index, task_conn, result_conn, busy_flags, config) is what each worker process runs."""

    def __init__(self, config, worker_target, metrics):
        self.config = config
        self._worker_target = worker_target
        self._mp_context = multiprocessing.get_context("spawn")
        self._busy_flags = BusyFlags(self._mp_context, config.workers)
        self._changed = threading.Condition()  # guards the queue and the slots
        self._stopping = threading.Event()
        self._queue = RequestQueue(config.queue_size)
        self._slots = [WorkerSlot(i) for i in range(config.workers)]
        self._dispatcher = Dispatcher(self._queue, self._slots, self._changed, self._stopping, config.max_batch)
        self._supervisor = Supervisor(self._slots, self._changed, self._stopping, self._spawn, self._busy_flags,
                                      config.request_timeout_s, metrics)

    # -- lifecycle ---------------------------------------------------------------------
    def start(self):
        for slot in self._slots:
            self._spawn(slot)
        self._supervisor.start()
        self._dispatcher.start()

    def stop(self):
        """Stop every worker (one STOP each), kill what does not exit in time. Bounded."""
        with self._changed:
            self._stopping.set()
            leftovers = self._queue.take_all()
            self._changed.notify_all()
            # The supervisor may reap a slot meanwhile; keep our own references.
            live = [(slot, slot.process, bool(slot.outstanding)) for slot in self._slots if slot.process is not None]
        for pending in leftovers:
            pending.fail(shutting_down)
        for slot, process, busy in live:
            if busy:
                process.kill()  # the drain already gave it its time
            else:
                slot.send_stop()
        deadline_s = time.monotonic() + WORKER_STOP_TIMEOUT_S
        for _, process, _ in live:
            process.join(max(0.0, deadline_s - time.monotonic()))
            if process.is_alive():
                process.kill()
                process.join()
        self._supervisor.join(timeout=2)
        self._dispatcher.join(timeout=1)
        for slot in self._slots:
            if slot.process is not None and slot.process.is_alive():  # spawned while we stopped
                slot.process.kill()
                slot.process.join()
            for pending in list(slot.outstanding.values()):
                pending.fail(shutting_down)

    def kill_workers(self):
        """SIGKILL every worker now: for a forced exit, which waits for nothing."""
        for slot in self._slots:
            slot.kill()

    def _spawn(self, slot):
        with self._changed:
            if self._stopping.is_set():
                return
            slot.spawn(self._mp_context, self._worker_target, (self._busy_flags, self.config))

    # -- what the front end asks ---------------------------------------------------------
    def submit(self, pending, queue_full_wait_s=QUEUE_FULL_WAIT_S):
        """Queue pending for a worker, waiting up to queue_full_wait_s for room; or raise its Refusal."""
        give_up_at_s = time.monotonic() + queue_full_wait_s
        with self._changed:
            while self._queue.is_full() and not self._stopping.is_set():
                remaining_s = give_up_at_s - time.monotonic()
                if remaining_s <= 0:
                    break
                self._changed.wait(remaining_s)
            if self._stopping.is_set():
                raise shutting_down(pending.header.query_image_id)
            self._queue.put(pending)
            self._changed.notify_all()

    def queue_depth(self):
        return len(self._queue)

    def ready_count(self):
        return sum(1 for slot in self._slots if slot.state is SlotState.READY)

    def worker_pids(self):
        return [slot.process.pid for slot in self._slots if slot.process is not None]

    def model_load_s(self):
        """{(worker index, model name): seconds} of every ready worker's models."""
        return {(str(slot.index), model): seconds for slot in self._slots for model, seconds in slot.model_load_s.items()}

    @property
    def all_ready(self):
        return self._supervisor.all_ready

    @property
    def ready_at_s(self):
        return self._supervisor.ready_at_s

    @property
    def fatal(self):
        return self._supervisor.fatal

    @property
    def fatal_error(self):
        return self._supervisor.fatal_error
