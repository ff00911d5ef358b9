"""The server's lifecycle: compose the parts, start, serve, drain, stop; the one place that decides to exit.

Shutdown is a state, not an exception. The first SIGTERM or SIGINT turns
readiness to 503 and refuses new work with 503, lets every accepted request
finish within --drain-timeout-s, stops the workers with one STOP each and
exits 0. A second signal stops at once. Signal handlers only queue the
signal; the main thread's loop acts on it (as gunicorn's arbiter does).
Every way of ending is a HaltServer raised by a step of the loop and
handled in run().
"""

import logging
import os
import queue
import signal
import threading
import time

from . import logs, model_files
from .front.http_server import DetectionHTTPServer
from .front.large_buffers import return_large_buffers_to_the_system
from .front.probe_server import ProbeHTTPServer
from .front.state import ServerState
from .metrics import ServerMetrics
from .pool.worker_pool import WorkerPool
from .protocol import ExitCode
from .worker.main import worker_main

log = logging.getLogger("detserve.server")

MAIN_LOOP_TICK_S = 0.2
ANSWER_WRITE_GRACE_S = 2.0


class HaltServer(Exception):
    """Stop the server with exit_code; force: at once, without waiting for anything."""

    def __init__(self, reason, exit_code, force=False):
        super().__init__(reason)
        self.reason = reason
        self.exit_code = exit_code
        self.force = force


def run(config):
    logs.configure(config.log_format)
    return_large_buffers_to_the_system()  # before the first body or answer: see front/large_buffers
    try:
        state, httpd, probes = _compose(config)
    except HaltServer as halt:
        return halt.exit_code
    pool = state.pool
    signals = _queue_signals()
    started_s = time.monotonic()
    log.info("listening on %s (pid %d), probes on %s; settings %s", _url(httpd), os.getpid(),
             _url(probes) if probes else "the API port only", config.public_view())
    threading.Thread(target=httpd.serve_forever, name="detserve-http", daemon=True).start()
    if probes:
        threading.Thread(target=probes.serve_forever, name="detserve-probes", daemon=True).start()
    pool.start()
    exit_code = ExitCode.OK
    try:
        _serve(state, signals, started_s)
    except HaltServer as halt:
        if halt.force:
            pool.kill_workers()
            os._exit(halt.exit_code)
        exit_code = halt.exit_code
    finally:
        httpd.shutdown()
        httpd.server_close()
        pool.stop()  # answers whatever is still waiting (503 "shutting down")
        _wait_for_answers_written(state)
        if probes:
            probes.shutdown()
            probes.server_close()
    log.info("stopped (exit code %d)", exit_code)
    return exit_code


def _url(server):
    host, port = server.server_address[:2]
    return f"http://{host}:{port}"


def _compose(config):
    """Build every part, each handed what it uses: (ServerState, DetectionHTTPServer, ProbeHTTPServer or None)."""
    choices = config.model_choices
    try:
        model_files.verify(config.model_dir, model_files.models_of(choices))
    except model_files.ModelFileError as exc:
        log.error("%s", exc)
        raise HaltServer(str(exc), ExitCode.CONFIG_ERROR) from None
    labels = model_files.read_labels(config.model_dir, choices[0].model)  # the default model's
    listing = [model_files.describe(choice, config.model_dir, default=i == 0) for i, choice in enumerate(choices)]
    metrics = ServerMetrics(labels, config.workers, [choice.name for choice in choices])
    state = ServerState(config, WorkerPool(config, worker_main, metrics), metrics, labels, listing)
    try:
        httpd = DetectionHTTPServer((config.host, config.port), state)
    except OSError as exc:
        log.error("cannot listen on %s:%s: %s", config.host, config.port, exc)
        raise HaltServer(str(exc), ExitCode.CONFIG_ERROR) from None
    if config.probe_port is None:
        return state, httpd, None
    try:
        return state, httpd, ProbeHTTPServer((config.host, config.probe_port), state)
    except OSError as exc:
        httpd.server_close()
        log.error("cannot listen on %s:%s for the probes (--probe-port; off turns them off): %s",
                  config.host, config.probe_port, exc)
        raise HaltServer(str(exc), ExitCode.CONFIG_ERROR) from None


def _queue_signals():
    """SIGTERM and SIGINT only queue themselves (put() is safe in a signal handler); the loop acts."""
    signals = queue.SimpleQueue()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda num, frame: signals.put(num))
    return signals


def _serve(state, signals, started_s):
    """Serve until a signal or a fatal pool error; then drain. Ends only by raising HaltServer."""
    ready_logged = False
    while True:
        if not ready_logged and state.pool.all_ready.is_set():
            ready_logged = True
            log.info("ready: %d workers in %.2f s", state.config.workers, state.pool.ready_at_s - started_s)
        if state.pool.fatal.is_set():
            log.error("stopping: %s", state.pool.fatal_error)
            raise HaltServer(state.pool.fatal_error, ExitCode.WORKER_BOOT_ERROR)
        try:
            signum = signals.get(timeout=MAIN_LOOP_TICK_S)
        except queue.Empty:
            continue
        log.info("%s received: draining (up to %g s); send it again to stop at once",
                 signal.Signals(signum).name, state.config.drain_timeout_s)
        _drain(state, signals)
        raise HaltServer("drained", ExitCode.OK)


def _drain(state, signals):
    """Refuse new work and wait for accepted requests; a second signal raises a forced HaltServer."""
    state.draining = True
    deadline_s = time.monotonic() + state.config.drain_timeout_s
    while state.in_flight > 0 and time.monotonic() < deadline_s:
        try:
            signum = signals.get(timeout=0.05)
        except queue.Empty:
            continue
        log.warning("%s received again: stopping now with %d request(s) in flight",
                    signal.Signals(signum).name, state.in_flight)
        raise HaltServer("second signal", ExitCode.FORCED, force=True)
    if state.in_flight:
        log.warning("drain timeout: %d request(s) still in flight get 503", state.in_flight)
    else:
        log.info("drained: every accepted request was answered")


def _wait_for_answers_written(state):
    """Handler threads are daemons: give them a moment to write the answers stop() just gave them."""
    deadline_s = time.monotonic() + ANSWER_WRITE_GRACE_S
    while state.in_flight and time.monotonic() < deadline_s:
        time.sleep(0.01)
