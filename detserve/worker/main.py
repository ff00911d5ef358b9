"""One worker process: load every configured model once, then collect, run and answer batches until told to stop.

The worker owns no HTTP: it reads (TaskHeader, body) pairs from its task pipe
and writes lists of Result to its result pipe. Importing this module loads
nothing heavy, so the front end can hand worker_main to the pool; OpenCV is
imported in the boot step, where a broken install or a model that cannot
load is reported to the pool as a boot failure.
"""

import ctypes
import os
import signal
import sys
import time

from .. import logs
from ..protocol import ExitCode, WorkerBootFailed, WorkerReady
from .batch_collection import collect_batch

# After a batch this large, freed heap pages are handed back to the system: glibc
# keeps them otherwise (its mmap threshold rises after the first big free), and a
# single 20 MB request would leave the worker that much larger for good.
RELEASE_MEMORY_AFTER_BYTES = 4 << 20


def worker_main(worker_index, task_conn, result_conn, busy_flags, config):
    # Shutdown is the front end's decision (it sends STOP); Ctrl-C in a terminal
    # reaches the whole process group and must not kill accepted work.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    logs.configure(config.log_format)  # so a worker's lines match the server's, JSON included
    runner = _boot(worker_index, result_conn, busy_flags, config)
    stop = False
    while not stop:
        try:
            tasks, stop = collect_batch(task_conn, config.max_batch, config.max_wait_s)
        except (EOFError, OSError):
            return
        if not tasks:
            continue
        # Busy from a batch's start until the pipe is empty, not just during the
        # forward pass: a worker between two batches still has work, and a
        # neighbour that counted it idle would take both CPUs and oversubscribe.
        busy_flags.mark_busy(worker_index)
        result_conn.send(runner.run(tasks))
        batch_bytes = sum(len(body) for _, body in tasks)
        tasks = None  # the bodies are garbage now, not held until the next batch arrives
        if batch_bytes >= RELEASE_MEMORY_AFTER_BYTES:
            release_freed_memory()
        if not task_conn.poll(0):
            busy_flags.mark_idle(worker_index)


def release_freed_memory():
    """Return freed heap memory to the system (glibc's malloc_trim); elsewhere, nothing."""
    malloc_trim = getattr(ctypes.CDLL(None), "malloc_trim", None)  # the process's own C library
    if malloc_trim is not None:  # not glibc: its allocator returns memory by itself, or never
        malloc_trim(0)


def _boot(worker_index, result_conn, busy_flags, config):
    """Load every configured model, run one forward pass on each, and report ready; on any failure report it and exit."""
    # OpenCV's own pixel limit, read when cv2 is first imported: a second guard
    # behind the header check, applied to the frame size libjpeg/libpng really read.
    os.environ["OPENCV_IO_MAX_IMAGE_PIXELS"] = str(config.max_pixels)
    try:
        from .batch_runner import BatchRunner

        detectors, model_load_s = load_models(config)
    except BaseException as exc:  # a model that cannot load is fatal for the server, not a respawn loop
        reason = " ".join(f"{type(exc).__name__}: {exc}".split())  # OpenCV's messages span lines
        result_conn.send(WorkerBootFailed(worker_index, reason))
        sys.exit(ExitCode.WORKER_BOOT_ERROR)
    result_conn.send(WorkerReady(worker_index, os.getpid(), model_load_s))
    return BatchRunner(detectors, busy_flags, config)


def load_models(config):
    """({model name: Detector}, {model name: seconds}) for config.model_choices, the default first.

    A model's load time includes its first forward pass: OpenCV builds the network there.
    """
    from .detector import Detector

    detectors, load_times_s = {}, {}
    for choice in config.model_choices:
        started_s = time.perf_counter()
        detector = Detector(config.model_dir, choice)
        detector.warm_up()
        load_times_s[choice.name] = time.perf_counter() - started_s
        detectors[choice.name] = detector
    return detectors, load_times_s
