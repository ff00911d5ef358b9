"""Batch collection: wait for the first task, then take more until the batch is full
or max_wait has passed since the first one arrived.
"""

import time

from ..protocol import STOP, decode_task_header


def collect_batch(task_conn, max_batch, max_wait_s):
    """Return (tasks, stop): up to max_batch (header, body) pairs, and whether to stop after them.

    Blocks for the first task. With max_wait_s == 0 it takes only what is
    already queued, so a lone request never waits for company.
    """
    tasks = []
    first_header = _receive_header(task_conn)
    if first_header is STOP:
        return tasks, True
    tasks.append((first_header, task_conn.recv_bytes()))
    batch_deadline = time.monotonic() + max_wait_s
    while len(tasks) < max_batch:
        if not task_conn.poll(max(0.0, batch_deadline - time.monotonic())):
            break
        header = _receive_header(task_conn)
        if header is STOP:
            return tasks, True
        tasks.append((header, task_conn.recv_bytes()))
    return tasks, False


def _receive_header(task_conn):
    try:
        return decode_task_header(task_conn.recv_bytes())
    except EOFError:  # the front end is gone: nobody waits for our answers
        return STOP
