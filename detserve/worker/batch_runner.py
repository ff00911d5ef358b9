"""Run one batch in a worker: drop expired tasks, parse and decode, forward passes per model, answer.

Requests whose deadline passed while they waited are dropped before
inference, so a backlog never makes the worker do work nobody waits for.
The images of every task in the batch that asked for one model (a
multi-image request brings several) go through that model in forward passes
of at most --max-batch images each, in order. A pass's memory grows with its
images (about 25 MB each at 416x416, whatever their size in the upload), so
the bound is what keeps 16 tiny PNGs in one 1 KB request from doubling a
worker; on the CPUs measured a larger pass is not faster per image either.
Each image keeps its own options, which act after the pass, so an image's
answer is the same whatever else shares its batch.
"""

import logging
import time

import cv2

from . import cpu_budget
from ..protocol import Result
from ..refusals import Refusal, inference_failed, internal_error, past_deadline
from .failures import refusal_boundary
from .formats import WORKER_FORMATS
from .detector import PostProcessing
from .task_preparation import TaskPreparation

log = logging.getLogger("detserve.worker")


class BatchRunner:
    def __init__(self, detectors, busy_flags, config):
        """detectors: {model name: Detector}, every model this worker serves."""
        self.detectors = detectors
        self.busy_flags = busy_flags
        self.config = config
        self.cpus = cpu_budget.available_cpus()
        self.preparation = TaskPreparation(config, detectors)
        self._last_inference_s = 0.0  # how long the previous batch's forward passes took

    def run(self, tasks):
        """One Result per task (matched by task_id); the images that decode go through their models in passes.

        No request crosses this: whatever one task's bytes make our code raise
        becomes that task's answer (worker/failures), and the worker lives on. Only
        the model itself failing is allowed to end a worker, and not from here.
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
        # Decoding took time: a task whose client has stopped waiting does not go through the model.
        now_s = time.monotonic()
        for job in [job for job in jobs if now_s > job.header.deadline_at_s]:
            jobs.remove(job)
            image_id = None if job.several else job.entries[0].image_id
            results.append(Result.failure(job.header.task_id, past_deadline(image_id), queue_wait_s=job.queue_wait_s))
        if jobs:
            self._last_inference_s = 0.0  # each forward pass below adds its own
        for model in dict.fromkeys(job.model for job in jobs):  # one forward pass per model, in arrival order
            results.extend(self._detect([job for job in jobs if job.model == model], model))
        if len(results) != len(tasks):
            raise RuntimeError(f"a batch of {len(tasks)} tasks produced {len(results)} results")
        return results

    def _prepare(self, header, body, started_s, queue_wait_s):
        """The TaskJob of one task, or raise the Refusal it gets instead."""
        # A task that cannot finish before its deadline gets its 504 now: its client
        # gets one at the deadline anyway, and the worker's time goes to one it can serve.
        if started_s + self._last_inference_s > header.deadline_at_s:
            raise past_deadline(header.query_image_id)
        with refusal_boundary(header.request_id, None, "reading its body"):
            return self.preparation.prepare(header, body, queue_wait_s)

    def _detect(self, tasks, model):
        """The Results of tasks that all run through model, their images in passes of at most --max-batch."""
        images = [job for task in tasks for job in task.image_jobs()]
        passes = ()
        try:
            if images:
                passes = self._forward(self.detectors[model], images)
                self._last_inference_s += sum(seconds for _, seconds in passes)
        except Exception as exc:  # every request of a failed batch gets the error
            log.exception("inference failed for request ids %s", ", ".join(t.header.request_id for t in tasks))
            return [Result.failure(task.header.task_id,
                                   inference_failed(exc).for_image(None if task.several else task.entries[0].image_id),
                                   queue_wait_s=task.queue_wait_s, batch_size=len(images), model=model)
                    for task in tasks]
        return [self._answer(task, passes, len(images)) for task in tasks]

    def _forward(self, detector, images):
        """Run images through detector in passes of at most --max-batch; set each one's detections.

        Returns ((images, seconds), ...): each pass's size and compute time, in order.
        """
        cv2.setNumThreads(cpu_budget.threads_for_batch(
            self.cpus, self.busy_flags.busy_count(), self.config.cv_threads))
        passes, most = [], self.config.max_batch
        for start in range(0, len(images), most):
            passes.append((len(images[start:start + most]), self._forward_pass(detector, images[start:start + most])))
        return tuple(passes)

    def _forward_pass(self, detector, images):
        """Run images through detector in one pass; set each one's detections; return the seconds it took."""
        started = time.perf_counter()
        per_image = detector.detect_batch(
            [job.network_pixels for job in images], [job.original_size_px for job in images],
            [PostProcessing(job.options.confidence, job.options.nms, job.options.nms_mode) for job in images])
        if len(per_image) != len(images):
            raise RuntimeError(f"{len(images)} images produced {len(per_image)} answers")
        for job, detections in zip(images, per_image):
            job.detections = job.options.select(detections)
        return time.perf_counter() - started

    def _answer(self, task, passes, batch_size):
        """This task's Result, in its wire format; a failure to build it (drawing, encoding) is this task's alone."""
        timings = {"queue_wait_s": task.queue_wait_s, "inference_s": sum(seconds for _, seconds in passes),
                   "batch_size": batch_size if task.image_jobs() else 0, "model": task.model,
                   "forward_passes": passes if task.image_jobs() else ()}
        image_id = None if task.several else task.entries[0].image_id
        try:
            with refusal_boundary(task.header.request_id, image_id, "building its answer"):
                return WORKER_FORMATS[task.header.wire_format].answer(task, timings)
        except Refusal as refusal:
            return Result.failure(task.header.task_id, refusal, **timings)
