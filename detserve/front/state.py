"""ServerState: what every request handler reads about the server (config, pool, metrics, budgets, drain)."""

import contextlib
import itertools
import threading

from ..metrics import GaugeReadings
from .answer_budget import AnswerBudget
from .body_budget import BodyBudget


class ServerState:
    def __init__(self, config, pool, metrics, labels=(), models=({"name": "yolov3-tiny", "default": True},)):
        self.config = config
        self.labels = tuple(labels)  # the default model's class labels, for GET /api/labels
        self.models = tuple(models)  # what GET /api/models lists of each served model, the default first
        self.model_names = tuple(model["name"] for model in self.models)
        self.pool = pool
        self.metrics = metrics
        self.body_budget = BodyBudget(config.max_body_buffer_bytes)
        self.answer_budget = AnswerBudget(config.max_answer_buffer_bytes)
        self.draining = False  # set once by server.run on the first SIGTERM/SIGINT
        self._in_flight = 0
        self._in_flight_lock = threading.Lock()
        self._task_ids = itertools.count(1)

    def next_task_id(self):
        return next(self._task_ids)

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

    @property
    def fatal_error(self):
        return self.pool.fatal_error

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

    def gauge_readings(self):
        return GaugeReadings(queue_depth=self.pool.queue_depth(), in_flight=self._in_flight,
                             workers_ready=self.pool.ready_count(), model_load_s=self.pool.model_load_s())
