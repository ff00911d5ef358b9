"""Run one batch in a worker: drop expired tasks, parse and decode, one forward pass, answer.

Requests whose deadline passed while they waited are dropped before
inference, so a backlog never makes the worker do work nobody waits for.
Every image of every task in the batch (a multi-image request brings
several) goes through one forward pass; each keeps its own options, which
act after it.
"""

import logging
import time

import cv2

from . import answers, cpu_budget
from ..protocol import RejectReason, Refusal, Result, internal_error, past_deadline
from .task_preparation import TaskPreparation, out_of_memory

log = logging.getLogger("detserve.worker")


class BatchRunner:
    def __init__(self, detector, busy_flags, config):
        self.detector = detector
        self.busy_flags = busy_flags
        self.config = config
        self.cpus = cpu_budget.available_cpus()
        self.preparation = TaskPreparation(config, detector.labels)
        self.class_ids = {label: i for i, label in enumerate(detector.labels)}
        self._last_inference_s = 0.0  # how long the previous batch's forward pass took

    def run(self, tasks):
        """One Result per task (matched by task_id); one forward pass for all images that decode.

        This is the boundary no request crosses: whatever one task's bytes make our
        code raise becomes that task's answer, and the worker lives on. Only the
        model itself failing is allowed to end a worker, and not from here.
        """
        try:
            return self._run(tasks)
        except Exception:
            log.exception("batch of %d failed (request ids %s)", len(tasks),
                          ", ".join(header.request_id for header, _ in tasks))
            return [Result.failure(header.task_id, internal_error(header.request_id)) for header, _ in tasks]

    def _run(self, tasks):
        started_s = time.monotonic()
        results, jobs = [], []
        for header, body in tasks:
            queue_wait_s = started_s - header.enqueued_at_s
            try:
                jobs.append(self._prepare(header, body, started_s, queue_wait_s))
            except Refusal as refusal:
                results.append(Result.failure(header.task_id, refusal, queue_wait_s=queue_wait_s))
        if jobs:
            results.extend(self._detect(jobs))
        if len(results) != len(tasks):
            raise RuntimeError(f"a batch of {len(tasks)} tasks produced {len(results)} results")
        return results

    def _prepare(self, header, body, started_s, queue_wait_s):
        """The TaskJob of one task, or raise the Refusal it gets instead."""
        # A task that cannot finish before its deadline gets its 504 now: its client
        # gets one at the deadline anyway, and the worker's time goes to one it can serve.
        if started_s + self._last_inference_s > header.deadline_s:
            raise past_deadline()
        try:
            return self.preparation.prepare(header, body, queue_wait_s)
        except Refusal:
            raise
        except MemoryError:  # one oversized request must not take the worker (and its neighbours) down
            raise out_of_memory() from None
        except Exception:  # a bug of ours that these bytes found: their answer, not the worker's end
            log.exception("request %s: unexpected error reading its body", header.request_id)
            raise internal_error(header.request_id) from None

    def _detect(self, tasks):
        images = [job for task in tasks for job in task.image_jobs()]
        inference_s = 0.0
        try:
            if images:
                inference_s = self._last_inference_s = self._forward(images)
        except Exception as exc:  # every request of a failed batch gets the error
            log.exception("inference failed for request ids %s", ", ".join(t.header.request_id for t in tasks))
            refusal = Refusal(500, f"inference failed: {type(exc).__name__}", RejectReason.INFERENCE_ERROR)
            return [Result.failure(task.header.task_id, refusal, queue_wait_s=task.queue_wait_s,
                                   batch_size=len(images)) for task in tasks]
        return [self._answer(task, inference_s, len(images)) for task in tasks]

    def _forward(self, images):
        """Run images through the model in one pass; set each one's detections; return the seconds it took."""
        cv2.setNumThreads(cpu_budget.threads_for_batch(
            self.cpus, self.busy_flags.busy_count(), self.config.cv_threads))
        started = time.perf_counter()
        per_image = self.detector.detect_batch(
            [job.network_pixels for job in images], [job.original_size_px for job in images],
            [(job.options.confidence, job.options.nms) for job in images])
        if len(per_image) != len(images):
            raise RuntimeError(f"{len(images)} images produced {len(per_image)} answers")
        for job, detections in zip(images, per_image):
            job.detections = job.options.select(detections)
        return time.perf_counter() - started

    def _answer(self, task, inference_s, batch_size):
        """This task's Result; a failure to build it (drawing, encoding) is this task's alone."""
        image_jobs = task.image_jobs()
        timings = {"queue_wait_s": task.queue_wait_s, "inference_s": inference_s,
                   "batch_size": batch_size if image_jobs else 0}
        try:
            if task.several:
                return answers.several_answer(task, timings)
            if not image_jobs:
                return Result.failure(task.header.task_id, task.entries[0], **timings)
            return answers.single_answer(task, image_jobs[0], timings, self.class_ids)
        except MemoryError:
            return Result.failure(task.header.task_id, out_of_memory(), **timings)
        except Exception:
            log.exception("request %s: unexpected error building its answer", task.header.request_id)
            return Result.failure(task.header.task_id, internal_error(task.header.request_id), **timings)
