"""A tiny stand-in for detserve's worker process: the real protocol, no model, no OpenCV.

WorkerPool spawns ``standin_worker`` in place of ``worker_main``, so the
supervision tests run in milliseconds. It reads tasks with the real
``collect_batch`` and answers with real ``Result`` lists; what it does is
chosen by each request's body:

    b"ok"    answer 200 at once
    b"slow"  answer 200 after SLOW_ANSWER_S
    b"die"   exit (code 1) without answering
    b"hang"  never answer, never exit

and its boot by the file named in $STANDIN_BOOT_CONTROL, read at each boot
(absent: boot at once):

    "fail"       report WorkerBootFailed and exit ExitCode.WORKER_BOOT_ERROR, as worker_main does
    "crash"      exit (code 1) before saying anything
    "slow SECS"  wait SECS, then report ready

Every boot appends "PID MONOTONIC_S" to the file named in $STANDIN_BOOT_LOG, if set.
"""

import json
import os
import sys
import time
from pathlib import Path

from detserve.protocol import ExitCode, Result, WorkerBootFailed, WorkerReady
from detserve.worker.batch_collection import collect_batch

BOOT_CONTROL_ENV = "STANDIN_BOOT_CONTROL"
BOOT_LOG_ENV = "STANDIN_BOOT_LOG"
BOOT_FAILURE_REASON = "the stand-in was told to fail"
SLOW_ANSWER_S = 1.5


def standin_worker(worker_index, task_conn, result_conn, busy_flags, config):
    _boot(worker_index, result_conn)
    stop = False
    while not stop:
        try:
            tasks, stop = collect_batch(task_conn, config.max_batch, config.max_wait_s)
        except (EOFError, OSError):
            return
        if tasks:
            result_conn.send([_answer(header, body) for header, body in tasks])


def _boot(worker_index, result_conn):
    if os.environ.get(BOOT_LOG_ENV):
        with open(os.environ[BOOT_LOG_ENV], "a") as boot_log:
            boot_log.write(f"{os.getpid()} {time.monotonic()}\n")
    control = Path(os.environ.get(BOOT_CONTROL_ENV, "/nonexistent"))
    how = control.read_text().split() if control.exists() else []
    if how == ["fail"]:
        result_conn.send(WorkerBootFailed(worker_index, BOOT_FAILURE_REASON))
        sys.exit(ExitCode.WORKER_BOOT_ERROR)
    if how == ["crash"]:
        os._exit(1)
    if how[:1] == ["slow"]:
        time.sleep(float(how[1]))
    result_conn.send(WorkerReady(worker_index, os.getpid(), {"stand-in": 0.001}))


def _answer(header, body):
    if body == b"die":
        os._exit(1)
    if body == b"hang":
        while True:
            time.sleep(60)
    if body == b"slow":
        time.sleep(SLOW_ANSWER_S)
    return Result(header.task_id, 200, json.dumps({"id": header.query_image_id, "detections": []}).encode(),
                  image_id=header.query_image_id, batch_size=1)
