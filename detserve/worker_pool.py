"""The worker pool: spawn, feed, reap and replace the worker processes.

    handler threads ──submit──▶ bounded queue (in the front end)
                                     │ dispatcher thread: a request goes to the
                                     │ ready worker with the fewest outstanding,
                                     │ at most 2 x max_batch each
                                     ▼
        task pipe 0 … task pipe N-1  (one per worker, each written by its own
                                     sender thread: header + raw body bytes)
                                     ▼
                               worker processes
                                     ▼
        result pipe 0 … result pipe N-1 ──▶ collector thread: waits on every
                                     result pipe and every process sentinel at
                                     once, resolves each request's PendingRequest,
                                     notices a death at once and replaces it
                                     (with back-off if the replacement fails).

Why one pipe pair per worker instead of one shared multiprocessing.Queue: a
shared queue's reader lock is held by whichever idle worker is blocked in
get(); SIGKILL that worker and the lock is never released, so every other
worker (and the replacement) hangs for ever. Private pipes die with their
worker, and the front end knows exactly which requests each worker held.
"""

import fcntl
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import threading
import time
from collections import deque
from dataclasses import dataclass, field

from .messages import Result, TaskHeader, WorkerBootFailed, WorkerReady, encode_task_header, error_body
from .task_sender import TaskSender
from .worker import worker_main

log = logging.getLogger("detserve.pool")

COLLECTOR_TICK_S = 0.25
PIPE_BUFFER_BYTES = 1 << 20  # lets the next request's body wait in the pipe while the worker computes
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
WORKER_STOP_TIMEOUT_S = 5.0
# A replacement that fails to start is retried after 0.5 s, 1 s, 2 s; the
# fourth failure in a row is fatal (the server exits instead of looping).
RESPAWN_BACKOFF_S = 0.5
MAX_CONSECUTIVE_BOOT_FAILURES = 4
MAX_CONSECUTIVE_COLLECTOR_ERRORS = 20
QUEUED_BODIES_BUDGET = 8  # maximal bodies' worth of bytes the queue may hold


class QueueFull(Exception):
    """The request queue is at --queue-size; the caller answers 503."""


class PendingRequest:
    """One accepted detection request, waited on by its handler thread."""

    __slots__ = ("request_id", "media_type", "query_image_id", "body", "enqueued_at_s", "deadline_s",
                 "_done", "result")

    def __init__(self, request_id, media_type, query_image_id, body, deadline_s):
        self.request_id = request_id
        self.media_type = media_type
        self.query_image_id = query_image_id
        self.body = body
        self.enqueued_at_s = time.monotonic()
        self.deadline_s = deadline_s
        self._done = threading.Event()
        self.result = None

    def header(self):
        return TaskHeader(self.request_id, self.media_type, self.query_image_id,
                          self.enqueued_at_s, self.deadline_s)

    def resolve(self, result):
        if self.result is None:
            self.result = result
            self._done.set()

    def wait(self, timeout_s):
        """Return the Result, or None if none came within timeout_s."""
        return self.result if self._done.wait(max(0.0, timeout_s)) else None


def failure(pending, status, message, reason):
    return Result(pending.request_id, status, error_body(message, pending.query_image_id),
                  image_id=pending.query_image_id, error=message, reject_reason=reason)


@dataclass
class WorkerSlot:
    index: int
    process: multiprocessing.Process = None
    sender: TaskSender = None
    result_conn: multiprocessing.connection.Connection = None
    ready: bool = False
    ever_ready: bool = False  # this incarnation reported ready
    boot_failure: str = None
    consecutive_boot_failures: int = 0
    respawn_at_s: float = None
    stuck: bool = False
    load_time_s: float = 0.0
    last_progress_s: float = 0.0
    outstanding: dict = field(default_factory=dict)


class WorkerPool:
    def __init__(self, config, metrics=None):
        self.config = config
        self.metrics = metrics
        self._ctx = multiprocessing.get_context("spawn")
        self._busy_flags = self._ctx.RawArray("b", config.workers)
        self._slots = [WorkerSlot(i) for i in range(config.workers)]
        self._queue = deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._credit_per_worker = 2 * config.max_batch
        # --queue-size full of 20 MB bodies would be 1.3 GB in the front end: bound
        # the bytes too, at a few maximal bodies; ordinary images never reach it.
        self._max_queued_bytes = QUEUED_BODIES_BUDGET * config.max_body_bytes
        self._queued_bytes = 0
        self.all_ready = threading.Event()
        self.ready_at_s = None  # time.monotonic() when every worker was last ready
        self._started = False  # every worker was ready once: later boot failures are retried
        self.fatal_error = None
        self.fatal = threading.Event()

    # -- lifecycle ---------------------------------------------------------------
    def start(self):
        for slot in self._slots:
            self._spawn(slot)
        self._collector = threading.Thread(target=self._collect_loop, name="detserve-collector", daemon=True)
        self._dispatcher = threading.Thread(target=self._dispatch_loop, name="detserve-dispatcher", daemon=True)
        self._collector.start()
        self._dispatcher.start()

    def stop(self):
        """Stop every worker (one STOP each), kill what does not exit in time. Bounded."""
        with self._cond:
            self._stopping = True
            leftovers = list(self._queue)
            self._queue.clear()
            self._queued_bytes = 0
            self._cond.notify_all()
            # The collector may reap a slot meanwhile; keep our own references.
            live = [(slot.process, slot.sender, bool(slot.outstanding))
                    for slot in self._slots if slot.process is not None]
        for pending in leftovers:
            pending.resolve(failure(pending, 503, "the server is shutting down; retry", "draining"))
        for process, sender, busy in live:
            if busy:
                process.kill()  # the drain already gave it its time
            else:
                sender.send_stop()  # queued behind anything still being written
        deadline = time.monotonic() + WORKER_STOP_TIMEOUT_S
        for process, _, _ in live:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                process.kill()
                process.join()
        self._collector.join(timeout=2)
        self._dispatcher.join(timeout=1)
        for slot in self._slots:
            if slot.process is not None and slot.process.is_alive():  # spawned while we stopped
                slot.process.kill()
                slot.process.join()
            for pending in list(slot.outstanding.values()):
                pending.resolve(failure(pending, 503, "the server is shutting down; retry", "draining"))

    # -- what the front end asks ---------------------------------------------------
    def submit(self, pending):
        with self._cond:
            if self._stopping:
                raise QueueFull("the server is shutting down")
            if len(self._queue) >= self.config.queue_size:
                raise QueueFull(f"the queue is full ({self.config.queue_size} requests waiting)")
            if self._queued_bytes + len(pending.body) > self._max_queued_bytes:
                raise QueueFull(f"the queue holds {self._queued_bytes / 2**20:.0f} MB of images already")
            self._queued_bytes += len(pending.body)
            self._queue.append(pending)
            self._cond.notify_all()

    def queue_depth(self):
        return len(self._queue)

    def ready_count(self):
        return sum(1 for slot in self._slots if slot.ready)

    def worker_pids(self):
        return [slot.process.pid for slot in self._slots if slot.process is not None]

    def model_load_times_s(self):
        return {(str(slot.index),): slot.load_time_s for slot in self._slots if slot.load_time_s}

    # -- dispatcher thread -----------------------------------------------------------
    def _slot_with_credit(self):
        candidates = [s for s in self._slots
                      if s.ready and not s.stuck and len(s.outstanding) < self._credit_per_worker]
        return min(candidates, key=lambda s: len(s.outstanding), default=None)

    def _dispatch_loop(self):
        while True:
            with self._cond:
                while not self._stopping and not (self._queue and self._slot_with_credit()):
                    self._cond.wait()
                if self._stopping:
                    return
                pending = self._queue.popleft()
                self._queued_bytes -= len(pending.body)
                now = time.monotonic()
                expired = now > pending.deadline_s
                if not expired:
                    slot = self._slot_with_credit()
                    if not slot.outstanding:
                        slot.last_progress_s = now  # the watchdog's clock starts with the first task
                    slot.outstanding[pending.request_id] = pending
                    # Queued for this worker's sender, never written here: a large body
                    # to a busy worker must not hold up the other workers' tasks.
                    slot.sender.send_task(encode_task_header(pending.header()), pending.body)
                    pending.body = None
            if expired:  # its client already has a 504: do no work for it
                pending.resolve(failure(pending, 504, "the request waited past its deadline", "deadline"))

    # -- collector thread ------------------------------------------------------------
    def _collect_loop(self):
        errors_in_a_row = 0
        while True:
            with self._cond:
                if self._stopping and not any(s.process and s.process.is_alive() for s in self._slots):
                    return
            try:
                self._collect_once()
                errors_in_a_row = 0
            except Exception:  # this thread must not die quietly: requests would hang
                errors_in_a_row += 1
                log.exception("collector error (%d in a row)", errors_in_a_row)
                if errors_in_a_row >= MAX_CONSECUTIVE_COLLECTOR_ERRORS:
                    self._declare_fatal("the worker supervisor keeps failing; see the log")
                    return
                time.sleep(COLLECTOR_TICK_S)

    def _collect_once(self):
        with self._cond:
            by_conn = {s.result_conn: s for s in self._slots if s.result_conn is not None}
            by_sentinel = {s.process.sentinel: s for s in self._slots if s.process is not None}
        try:
            ready = multiprocessing.connection.wait(list(by_conn) + list(by_sentinel), COLLECTOR_TICK_S)
        except OSError:
            ready = []
        for obj in ready:
            if obj in by_conn:
                self._receive(by_conn[obj])
        for obj in ready:
            if obj in by_sentinel:
                self._reap(by_sentinel[obj])
        self._kill_stuck_workers()
        self._respawn_due()

    def _receive(self, slot):
        """Handle one message from slot's worker; False if the pipe is closed."""
        try:
            message = slot.result_conn.recv()
        except (EOFError, OSError):
            return False  # the sentinel reports the death
        if isinstance(message, list):
            self._complete(slot, message)
        elif isinstance(message, WorkerReady):
            self._on_ready(slot, message)
        elif isinstance(message, WorkerBootFailed):
            slot.boot_failure = message.reason
        return True

    def _on_ready(self, slot, message):
        with self._cond:
            slot.ready = slot.ever_ready = True
            slot.consecutive_boot_failures = 0
            slot.load_time_s = message.load_time_s
            self._cond.notify_all()
            all_ready = all(s.ready for s in self._slots)
            self._started = self._started or all_ready
        log.info("worker %d (pid %d) ready; model loaded in %.2f s",
                 slot.index, message.pid, message.load_time_s)
        if all_ready:
            self.ready_at_s = time.monotonic()
            self.all_ready.set()

    def _complete(self, slot, results):
        with self._cond:
            slot.last_progress_s = time.monotonic()
            pendings = [slot.outstanding.pop(r.request_id, None) for r in results]
            self._cond.notify_all()  # credit is free again
        if self.metrics is not None:
            self._record(results)
        for pending, result in zip(pendings, results):
            if pending is not None:
                pending.resolve(result)

    def _record(self, results):
        m = self.metrics
        batch = [r for r in results if r.batch_size]
        if batch:
            m.batch_size.observe(batch[0].batch_size)
            m.inference.observe(batch[0].inference_s)
        for result in results:
            m.queue_wait.observe(result.queue_wait_s)
            if result.status == 200:
                m.images.inc()
                for label in result.labels:
                    m.detections.inc(label)

    def _reap(self, slot):
        process = slot.process
        process.join(1)  # the sentinel fired: it is exiting; wait for its exit code
        while slot.result_conn.poll() and self._receive(slot):
            pass  # answers it sent before dying still count
        with self._cond:
            orphans = list(slot.outstanding.values())
            slot.outstanding.clear()
            stuck, stopping = slot.stuck, self._stopping
            slot.ready = slot.stuck = False
            self._busy_flags[slot.index] = 0
            slot.process = None
        if stopping:
            status, message, reason = 503, "the server is shutting down; retry", "draining"
        elif stuck:
            status, message, reason = 504, "the worker processing this request hung and was replaced", "worker_stuck"
        else:
            status, message, reason = 503, "the worker processing this request died; retry", "worker_died"
        for pending in orphans:
            pending.resolve(failure(pending, status, message, reason))
        slot.sender.close()
        slot.result_conn.close()
        slot.result_conn = None
        if stopping:
            return
        if slot.ever_ready:
            log.warning("worker %d (pid %d) %s (exit code %s); %d request(s) failed; starting a replacement",
                        slot.index, process.pid, "hung" if stuck else "died", process.exitcode, len(orphans))
            if self.metrics is not None:
                self.metrics.worker_restarts.inc()
            self.all_ready.clear()
            self._try_spawn(slot)
            return
        reason_text = slot.boot_failure or f"exited with code {process.exitcode} before it was ready"
        self._boot_failed(slot, f"worker {slot.index} could not start: {reason_text}")

    def _boot_failed(self, slot, reason):
        """At start-up a boot failure is fatal; later, retry with back-off, then give up."""
        slot.consecutive_boot_failures += 1
        if not self._started or slot.consecutive_boot_failures >= MAX_CONSECUTIVE_BOOT_FAILURES:
            self._declare_fatal(reason)
            return
        delay_s = RESPAWN_BACKOFF_S * 2 ** (slot.consecutive_boot_failures - 1)
        log.warning("%s; retrying in %.1f s", reason, delay_s)
        slot.respawn_at_s = time.monotonic() + delay_s

    def _respawn_due(self):
        now = time.monotonic()
        for slot in self._slots:
            if slot.process is None and slot.respawn_at_s is not None and now >= slot.respawn_at_s:
                slot.respawn_at_s = None
                self._try_spawn(slot)

    def _try_spawn(self, slot):
        try:
            self._spawn(slot)
        except OSError as exc:  # fork/pipe failures come exactly when memory or fds run short
            self._boot_failed(slot, f"worker {slot.index} could not be started: {exc}")

    def _declare_fatal(self, reason):
        log.error("%s", reason)
        self.fatal_error = reason
        self.fatal.set()

    def _kill_stuck_workers(self):
        limit_s = self.config.request_timeout_s
        now = time.monotonic()
        with self._cond:
            stuck = [s for s in self._slots
                     if s.ready and not s.stuck and s.outstanding and now - s.last_progress_s > limit_s]
            for slot in stuck:
                slot.stuck = True
        for slot in stuck:
            log.warning("worker %d (pid %d) made no progress for %.1f s; killing it",
                        slot.index, slot.process.pid, limit_s)
            try:
                os.kill(slot.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    # -- spawning ------------------------------------------------------------------------
    def _spawn(self, slot):
        task_recv, task_send = self._ctx.Pipe(duplex=False)
        result_recv, result_send = self._ctx.Pipe(duplex=False)
        try:
            fcntl.fcntl(task_send.fileno(), F_SETPIPE_SZ, PIPE_BUFFER_BYTES)
        except OSError:
            pass  # above /proc/sys/fs/pipe-max-size: the default buffer still works, a little slower
        process = self._ctx.Process(
            target=worker_main, name=f"detserve-worker-{slot.index}", daemon=True,
            args=(slot.index, task_recv, result_send, self._busy_flags, self.config))
        try:
            process.start()
        except BaseException:
            task_send.close()
            result_recv.close()
            raise
        finally:
            task_recv.close()  # the child has its own copies
            result_send.close()
        with self._cond:
            slot.process, slot.result_conn = process, result_recv
            slot.sender = TaskSender(task_send, f"detserve-sender-{slot.index}")
            slot.ready = slot.stuck = slot.ever_ready = False
            slot.boot_failure = None
            if self._stopping:  # stop() may have taken its list already
                process.kill()
