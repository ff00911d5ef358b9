"""The server's lifecycle: start, serve, drain, stop; and the state the handlers read.

Shutdown is a state, not an exception. The first SIGTERM or SIGINT turns
readiness to 503 and refuses new work with 503, lets every accepted request
finish within --drain-timeout-s, stops the workers with one STOP each and
exits 0. A second signal stops at once. Signal handlers only queue the
signal; the main thread's loop acts on it (as gunicorn's arbiter does).
"""

import contextlib
import itertools
import logging
import os
import queue
import signal
import threading
import time
from pathlib import Path

from . import logs, model_files
from .http_front import DetectionHTTPServer
from .metrics import ServerMetrics
from .worker_pool import WorkerPool

log = logging.getLogger("detserve.server")

EXIT_OK = 0
EXIT_CONFIG_ERROR = 2
EXIT_WORKER_BOOT_ERROR = 3
EXIT_FORCED = 130
MAIN_LOOP_TICK_S = 0.2


class DetectionService:
    """What request handlers need: config, pool, metrics, and the drain state."""

    def __init__(self, config, labels):
        self.config = config
        self.draining = False
        self._in_flight = 0
        self._in_flight_lock = threading.Lock()
        self._request_ids = itertools.count(1)
        self.pool = WorkerPool(config)
        self.metrics = ServerMetrics(
            labels,
            read_queue_depth=self.pool.queue_depth,
            read_in_flight=lambda: self._in_flight,
            read_workers_ready=self.pool.ready_count,
            read_model_load_s=self.pool.model_load_times_s,
            workers=config.workers,
        )
        self.pool.metrics = self.metrics

    @property
    def fatal_error(self):
        return self.pool.fatal_error

    def next_request_id(self):
        return next(self._request_ids)

    @property
    def in_flight(self):
        return self._in_flight

    @contextlib.contextmanager
    def track_in_flight(self):
        with self._in_flight_lock:
            self._in_flight += 1
        try:
            yield
        finally:
            with self._in_flight_lock:
                self._in_flight -= 1

    def readiness(self):
        """(ready, reason): ready only when every worker is loaded and we are not draining."""
        if self.draining:
            return False, "draining: the server is shutting down"
        if self.pool.fatal_error:
            return False, self.pool.fatal_error
        ready = self.pool.ready_count()
        if ready < self.config.workers:
            return False, f"{ready} of {self.config.workers} workers have the model loaded"
        return True, None


def run(config):
    logs.configure(config.log_format)
    try:
        model_files.verify(config.model_dir)
    except model_files.ModelFileError as exc:
        log.error("%s", exc)
        return EXIT_CONFIG_ERROR
    labels = (Path(config.model_dir) / model_files.NAMES.name).read_text().split("\n")
    service = DetectionService(config, [label for label in labels if label.strip()])
    try:
        httpd = DetectionHTTPServer((config.host, config.port), service)
    except OSError as exc:
        log.error("cannot listen on %s:%s: %s", config.host, config.port, exc)
        return EXIT_CONFIG_ERROR

    signals = queue.SimpleQueue()  # put() is safe inside a signal handler
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda num, frame: signals.put(num))

    started_s = time.monotonic()
    host, port = httpd.server_address[:2]
    log.info("listening on http://%s:%d (pid %d); settings %s", host, port, os.getpid(), config.public_view())
    serve_thread = threading.Thread(target=httpd.serve_forever, name="detserve-http", daemon=True)
    serve_thread.start()
    service.pool.start()
    try:
        exit_code = _serve(service, signals, started_s)
    finally:
        httpd.shutdown()
        httpd.server_close()
        service.pool.stop()  # answers whatever is still waiting (503 "shutting down")
        _wait_for_answers_written(service)
    log.info("stopped (exit code %d)", exit_code)
    return exit_code


def _wait_for_answers_written(service, timeout_s=2.0):
    """Handler threads are daemons: give them a moment to write the answers stop() just gave them."""
    deadline_s = time.monotonic() + timeout_s
    while service.in_flight and time.monotonic() < deadline_s:
        time.sleep(0.01)


def _serve(service, signals, started_s):
    ready_logged = False
    while True:
        if not ready_logged and service.pool.all_ready.is_set():
            ready_logged = True
            log.info("ready: %d workers in %.2f s", service.config.workers, service.pool.ready_at_s - started_s)
        if service.pool.fatal.is_set():
            log.error("stopping: %s", service.pool.fatal_error)
            return EXIT_WORKER_BOOT_ERROR
        try:
            signum = signals.get(timeout=MAIN_LOOP_TICK_S)
        except queue.Empty:
            continue
        log.info("%s received: draining (up to %g s); send it again to stop at once",
                 signal.Signals(signum).name, service.config.drain_timeout_s)
        return _drain(service, signals)


def _drain(service, signals):
    service.draining = True
    deadline_s = time.monotonic() + service.config.drain_timeout_s
    while service.in_flight > 0 and time.monotonic() < deadline_s:
        try:
            signum = signals.get(timeout=0.05)
        except queue.Empty:
            continue
        log.warning("%s received again: stopping now with %d request(s) in flight",
                    signal.Signals(signum).name, service.in_flight)
        for pid in service.pool.worker_pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        os._exit(EXIT_FORCED)
    if service.in_flight:
        log.warning("drain timeout: %d request(s) still in flight get 503", service.in_flight)
    else:
        log.info("drained: every accepted request was answered")
    return EXIT_OK

