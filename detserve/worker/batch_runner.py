"""Run one batch in a worker: drop expired tasks, parse and decode, one forward pass, answer.

Requests whose deadline passed while they waited are dropped before
inference, so a backlog never makes the worker do work nobody waits for.
"""

import json
import logging
import time

import cv2

from . import cpu_budget
from ..protocol import RejectReason, Refusal, Result, past_deadline
from .image_decoding import decode_image
from .request_parsing import parse_body

log = logging.getLogger("detserve.worker")



def out_of_memory():
    return Refusal(413, "the request needs more memory than this worker has; send a smaller image")


def internal_error(header):
    return Refusal(500, f"internal server error; see the server log for request id {header.request_id}",
                   RejectReason.INTERNAL_ERROR)


class BatchRunner:
    def __init__(self, detector, busy_flags, config):
        self.detector = detector
        self.busy_flags = busy_flags
        self.config = config
        self.cpus = cpu_budget.available_cpus()
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
            return [Result.failure(header.task_id, internal_error(header)) for header, _ in tasks]

    def _run(self, tasks):
        started_s = time.monotonic()
        results = []
        images, accepted = [], []
        for header, body in tasks:
            queue_wait_s = started_s - header.enqueued_at_s
            try:
                image_id, image = self._prepare(header, body, started_s)
            except Refusal as refusal:
                results.append(Result.failure(header.task_id, refusal, queue_wait_s=queue_wait_s))
                continue
            images.append(image)
            accepted.append((header, image_id, queue_wait_s))
        if images:
            results.extend(self._detect(images, accepted))
        if len(results) != len(tasks):
            raise RuntimeError(f"a batch of {len(tasks)} tasks produced {len(results)} results")
        return results

    def _prepare(self, header, body, started_s):
        """(image id, decoded image) of one task, or raise the Refusal it gets instead."""
        # A task that cannot finish before its deadline gets its 504 now: its client
        # gets one at the deadline anyway, and the worker's time goes to one it can serve.
        if started_s + self._last_inference_s > header.deadline_s:
            raise past_deadline()
        try:
            request = parse_body(body, header.media_type, header.query_image_id)
            return request.image_id, decode_image(request, self.config.max_pixels, self.config.decode_reduction)
        except Refusal:
            raise
        except MemoryError:  # one oversized request must not take the worker (and its neighbours) down
            raise out_of_memory() from None
        except Exception:  # a bug of ours that these bytes found: their answer, not the worker's end
            log.exception("request %s: unexpected error reading its image", header.request_id)
            raise internal_error(header) from None

    def _detect(self, images, accepted):
        try:
            cv2.setNumThreads(cpu_budget.threads_for_batch(
                self.cpus, self.busy_flags.busy_count(), self.config.cv_threads))
            started = time.perf_counter()
            per_image = self.detector.detect_batch([image.pixels for image in images],
                                                   [image.original_size_px for image in images])
            inference_s = time.perf_counter() - started
            self._last_inference_s = inference_s
        except Exception as exc:  # every request of a failed batch gets the error
            log.exception("inference failed for request ids %s",
                          ", ".join(header.request_id for header, _, _ in accepted))
            refusal = Refusal(500, f"inference failed: {type(exc).__name__}", RejectReason.INFERENCE_ERROR)
            return [Result.failure(header.task_id, refusal, image_id=image_id, queue_wait_s=wait_s,
                                   batch_size=len(images))
                    for header, image_id, wait_s in accepted]
        results = []
        for (header, image_id, wait_s), detections in zip(accepted, per_image):
            body = json.dumps({"id": image_id, "detections": [d.as_json() for d in detections]}).encode()
            results.append(Result(header.task_id, 200, body, image_id=image_id, queue_wait_s=wait_s,
                                  inference_s=inference_s, batch_size=len(images),
                                  labels=tuple(d.label for d in detections)))
        return results
