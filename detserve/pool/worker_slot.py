"""WorkerSlot: one position in the pool, the worker process in it, and what it holds.

A slot outlives its processes: when a worker dies, the slot fails the
requests that worker held and a replacement is spawned into it.
"""

import enum
import fcntl
import os
import signal
import time

from .task_sender import TaskSender
from ..protocol import encode_task_header

PIPE_BUFFER_BYTES = 1 << 20  # lets the next request's body wait in the pipe while the worker computes
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)


class SlotState(enum.Enum):
    EMPTY = "empty"          # no process: not started yet, waiting to be replaced, or stopped
    STARTING = "starting"    # spawned, loading the model
    READY = "ready"          # takes tasks
    STUCK = "stuck"          # made no progress, was killed; its exit is still to be reaped


class WorkerSlot:
    """Not locked itself: the pool's condition guards state and outstanding."""

    def __init__(self, index):
        self.index = index
        self.state = SlotState.EMPTY
        self.process = None
        self.result_conn = None           # the worker's result pipe, read by the supervisor
        self._sender = None               # writes tasks to the worker's task pipe
        self.outstanding = {}             # task_id -> PendingRequest sent to this worker
        self.boot_failure_reason = None   # what the worker said when it could not load the model
        self.consecutive_boot_failures = 0  # workers that started but could not load the model
        self.consecutive_spawn_errors = 0   # workers that could not be started at all
        self.respawn_at_s = None          # time.monotonic() when an EMPTY slot is due a new worker
        self.model_load_s = {}  # model name -> seconds, as this slot's worker reported them
        self.last_progress_s = 0.0        # last time this worker answered, or got work while idle

    # -- process lifecycle ---------------------------------------------------------
    def spawn(self, mp_context, target, args):
        """Start a worker running target(index, task_conn, result_conn, *args). Raises OSError."""
        task_recv, task_send = mp_context.Pipe(duplex=False)
        result_recv, result_send = mp_context.Pipe(duplex=False)
        try:
            fcntl.fcntl(task_send.fileno(), F_SETPIPE_SZ, PIPE_BUFFER_BYTES)
        except OSError:
            pass  # above /proc/sys/fs/pipe-max-size: the default buffer still works, a little slower
        process = mp_context.Process(target=target, name=f"detserve-worker-{self.index}", daemon=True,
                                     args=(self.index, task_recv, result_send, *args))
        try:
            process.start()
        except BaseException:
            task_send.close()
            result_recv.close()
            raise
        finally:
            task_recv.close()  # the child has its own copies
            result_send.close()
        self.process, self.result_conn = process, result_recv
        self._sender = TaskSender(task_send, f"detserve-sender-{self.index}")
        self.state = SlotState.STARTING
        self.boot_failure_reason = None
        self.respawn_at_s = None

    def mark_ready(self, model_load_s):
        self.state = SlotState.READY
        self.consecutive_boot_failures = 0
        self.model_load_s = dict(model_load_s)

    def was_ready(self):
        """Whether this incarnation loaded the model (a death after that is not a boot failure)."""
        return self.state in (SlotState.READY, SlotState.STUCK)

    def kill(self):
        process = self.process  # the supervisor may reap it meanwhile
        if process is None:
            return
        try:
            os.kill(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def send_stop(self):
        self._sender.send_stop()  # queued behind anything still being written

    def detach(self):
        """After the process exited: close its pipes and return the requests it held."""
        orphans = list(self.outstanding.values())
        self.outstanding.clear()
        self._sender.close()
        self.result_conn.close()
        self.process = self.result_conn = None
        self.state = SlotState.EMPTY
        return orphans

    # -- work --------------------------------------------------------------------------
    def takes_work(self, credit):
        return self.state is SlotState.READY and len(self.outstanding) < credit

    def assign(self, pending, now_s):
        if not self.outstanding:
            self.last_progress_s = now_s  # the watchdog's clock starts with the first task
        self.outstanding[pending.task_id] = pending
        # Queued for this worker's sender, never written here: a large body to a
        # busy worker must not hold up the other workers' tasks.
        self._sender.send_task(encode_task_header(pending.header), pending.body)
        pending.body = None

    def complete(self, task_ids, now_s):
        """The PendingRequests (or None, if already failed) that these answers belong to."""
        self.last_progress_s = now_s
        return [self.outstanding.pop(task_id, None) for task_id in task_ids]

    def is_stuck(self, now_s, limit_s):
        return self.state is SlotState.READY and bool(self.outstanding) and now_s - self.last_progress_s > limit_s

    def due_respawn(self, now_s):
        return self.state is SlotState.EMPTY and self.respawn_at_s is not None and now_s >= self.respawn_at_s

    def schedule_respawn(self, delay_s):
        self.respawn_at_s = time.monotonic() + delay_s
