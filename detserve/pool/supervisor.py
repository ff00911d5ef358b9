"""The supervisor thread: routes answers home, notices deaths and hangs, replaces workers.

It waits on every worker's result pipe and process sentinel at once, so an
answer is delivered and a death is noticed the moment either happens.
"""

import logging
import multiprocessing.connection
import threading
import time

from ..protocol import WorkerBootFailed, WorkerReady
from ..refusals import shutting_down, worker_died, worker_hung
from .worker_slot import SlotState

log = logging.getLogger("detserve.pool")

TICK_S = 0.25  # how often hangs and due respawns are checked when nothing else happens
# A replacement that fails to start is retried after 0.5 s, 1 s, 2 s; the
# fourth failure in a row is fatal (the server exits instead of looping).
RESPAWN_BACKOFF_S = 0.5
MAX_CONSECUTIVE_BOOT_FAILURES = 4
# A worker that cannot even be started (no descriptors, no memory for the fork)
# says nothing about the model: that is retried for as long as it lasts, every
# few seconds at most, while the other workers go on serving.
LONGEST_SPAWN_RETRY_S = 5.0
# An error in this thread would leave requests unanswered: it is logged and the
# loop goes on; this many in a row means it cannot recover, which is fatal.
MAX_CONSECUTIVE_ERRORS = 20


class Supervisor(threading.Thread):
    def __init__(self, slots, changed, stopping, spawn, busy_flags, request_timeout_s, metrics):
        super().__init__(name="detserve-supervisor", daemon=True)
        self._slots = slots                  # every WorkerSlot, shared with the dispatcher
        self._changed = changed              # the pool's condition: guards slots, notified on new credit
        self._stopping = stopping            # threading.Event set by WorkerPool.stop()
        self._spawn = spawn                  # spawn(slot): start a worker in slot, raises OSError
        self._busy_flags = busy_flags        # a dead worker's flag must not count as busy
        self._request_timeout_s = request_timeout_s
        self._metrics = metrics
        self._all_ready_once = False          # every worker was ready once: later boot failures are retried
        self.all_ready = threading.Event()
        self.ready_at_s = None               # time.monotonic() when every worker was last ready
        self.fatal = threading.Event()
        self.fatal_error = None

    def run(self):
        errors_in_a_row = 0
        while not (self._stopping.is_set() and not self._any_worker_alive()):
            try:
                self._supervise_once()
                errors_in_a_row = 0
            except Exception:  # this thread must not die quietly: requests would hang
                errors_in_a_row += 1
                log.exception("supervisor error (%d in a row)", errors_in_a_row)
                if errors_in_a_row >= MAX_CONSECUTIVE_ERRORS:
                    self._declare_fatal("the worker supervisor keeps failing; see the log")
                    return
                time.sleep(TICK_S)

    def _supervise_once(self):
        results_ready, exited = self._wait_for_events()
        for slot in results_ready:
            self._receive(slot)
        for slot in exited:
            self._reap(slot)
        self._kill_stuck_workers()
        self._respawn_due_workers()

    def _any_worker_alive(self):
        with self._changed:
            return any(slot.process is not None and slot.process.is_alive() for slot in self._slots)

    # -- named steps -------------------------------------------------------------------
    def _wait_for_events(self):
        """(slots with an answer to read, slots whose process exited), after at most one tick."""
        with self._changed:
            by_conn = {slot.result_conn: slot for slot in self._slots if slot.result_conn is not None}
            by_sentinel = {slot.process.sentinel: slot for slot in self._slots if slot.process is not None}
        try:
            ready = multiprocessing.connection.wait([*by_conn, *by_sentinel], TICK_S)
        except OSError:
            ready = []
        return [by_conn[obj] for obj in ready if obj in by_conn], [by_sentinel[obj] for obj in ready if obj in by_sentinel]

    def _receive(self, slot):
        """Handle one message from slot's worker; False if the pipe is closed."""
        try:
            message = slot.result_conn.recv()
        except (EOFError, OSError):
            return False  # the sentinel reports the death
        if isinstance(message, list):
            self._deliver(slot, message)
        elif isinstance(message, WorkerReady):
            self._on_ready(slot, message)
        elif isinstance(message, WorkerBootFailed):
            slot.boot_failure_reason = message.reason
        return True

    def _deliver(self, slot, results):
        with self._changed:
            pendings = slot.complete([result.task_id for result in results], time.monotonic())
            self._changed.notify_all()  # credit is free again
        self._metrics.record_results(results)
        for pending, result in zip(pendings, results):
            if pending is not None:
                pending.resolve(result)

    def _on_ready(self, slot, message):
        with self._changed:
            slot.mark_ready(message.model_load_s)
            self._changed.notify_all()
            all_ready = all(s.state is SlotState.READY for s in self._slots)
            self._all_ready_once = self._all_ready_once or all_ready
        log.info("worker %d (pid %d) ready; %s loaded in %.2f s", slot.index, message.pid,
                 ", ".join(message.model_load_s), sum(message.model_load_s.values()))
        if all_ready:
            self.ready_at_s = time.monotonic()
            self.all_ready.set()

    def _reap(self, slot):
        process = slot.process
        process.join(1)  # the sentinel fired: it is exiting; wait for its exit code
        while slot.result_conn.poll() and self._receive(slot):
            pass  # answers it sent before dying still count
        with self._changed:
            stuck, was_ready = slot.state is SlotState.STUCK, slot.was_ready()
            orphans = slot.detach()
            self._busy_flags.mark_idle(slot.index)
        stopping = self._stopping.is_set()
        refusal_for = shutting_down if stopping else worker_hung if stuck else worker_died
        for pending in orphans:
            pending.fail(refusal_for)
        if stopping:
            return
        if was_ready:
            log.warning("worker %d (pid %d) %s (exit code %s); %d request(s) failed; starting a replacement",
                        slot.index, process.pid, "hung" if stuck else "died", process.exitcode, len(orphans))
            self._metrics.worker_restarts.inc()
            self.all_ready.clear()
            self._try_spawn(slot)
            return
        reason = slot.boot_failure_reason or f"exited with code {process.exitcode} before it was ready"
        self._boot_failed(slot, f"worker {slot.index} could not start: {reason}")

    def _kill_stuck_workers(self):
        now_s = time.monotonic()
        with self._changed:
            stuck = [slot for slot in self._slots if slot.is_stuck(now_s, self._request_timeout_s)]
            for slot in stuck:
                slot.state = SlotState.STUCK
        for slot in stuck:
            log.warning("worker %d (pid %d) made no progress for %.1f s; killing it",
                        slot.index, slot.process.pid, self._request_timeout_s)
            slot.kill()

    def _respawn_due_workers(self):
        now_s = time.monotonic()
        for slot in self._slots:
            if slot.due_respawn(now_s):
                self._try_spawn(slot)

    # -- spawning and giving up --------------------------------------------------------------
    def _try_spawn(self, slot):
        try:
            self._spawn(slot)
            slot.consecutive_spawn_errors = 0
        except OSError as exc:  # fork/pipe failures come exactly when memory or fds run short
            slot.consecutive_spawn_errors += 1
            delay_s = min(LONGEST_SPAWN_RETRY_S, RESPAWN_BACKOFF_S * 2 ** (slot.consecutive_spawn_errors - 1))
            log.warning("worker %d could not be started (%s); retrying in %.1f s", slot.index, exc, delay_s)
            slot.schedule_respawn(delay_s)

    def _boot_failed(self, slot, reason):
        """At start-up a boot failure is fatal; later, retry with back-off, then give up."""
        slot.consecutive_boot_failures += 1
        if not self._all_ready_once or slot.consecutive_boot_failures >= MAX_CONSECUTIVE_BOOT_FAILURES:
            self._declare_fatal(reason)
            return
        delay_s = RESPAWN_BACKOFF_S * 2 ** (slot.consecutive_boot_failures - 1)
        log.warning("%s; retrying in %.1f s", reason, delay_s)
        slot.schedule_respawn(delay_s)

    def _declare_fatal(self, reason):
        log.error("%s", reason)
        self.fatal_error = reason
        self.fatal.set()
