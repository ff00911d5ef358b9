"""Run one batch in a worker: drop expired tasks, parse and decode, one forward pass, answer.

Requests whose deadline passed while they waited are dropped before
inference, so a backlog never makes the worker do work nobody waits for.
"""

import json
import time
import traceback

import cv2

from . import cpu_budget
from .messages import Result, error_body
from .request_parsing import BadRequest, decode_image, parse_body


class BatchRunner:
    def __init__(self, detector, busy_flags, config):
        self.detector = detector
        self.busy_flags = busy_flags
        self.config = config
        self.cpus = cpu_budget.available_cpus()

    def run(self, tasks):
        """Answer every task of one batch; one forward pass for all images that decode."""
        started_s = time.monotonic()
        results = []
        images, accepted = [], []
        for header, body in tasks:
            queue_wait_s = started_s - header.enqueued_at_s
            if started_s > header.deadline_s:
                results.append(Result(header.request_id, 504, error_body("the request waited past its deadline"),
                                      error="deadline passed in queue", reject_reason="deadline",
                                      queue_wait_s=queue_wait_s))
                continue
            try:
                request = parse_body(body, header.media_type, header.query_image_id)
                images.append(decode_image(request, self.config.max_pixels, self.config.decode_reduction))
                accepted.append((header, request.image_id, queue_wait_s))
                continue
            except BadRequest as exc:
                refusal = exc
            except MemoryError:  # one oversized request must not take the worker (and its neighbours) down
                refusal = BadRequest(413, "the request needs more memory than this worker has; send a smaller image")
            results.append(Result(header.request_id, refusal.status, error_body(refusal.message, refusal.image_id),
                                  image_id=refusal.image_id, error=refusal.message, reject_reason="bad_input",
                                  queue_wait_s=queue_wait_s))
        if images:
            results.extend(self._detect(images, accepted))
        return results

    def _detect(self, images, accepted):
        try:
            cv2.setNumThreads(cpu_budget.threads_for_batch(
                self.cpus, sum(self.busy_flags), self.config.cv_threads))
            started = time.perf_counter()
            per_image = self.detector.detect_batch([image.pixels for image in images],
                                                   [image.original_size_px for image in images])
            inference_s = time.perf_counter() - started
        except Exception as exc:  # every request of a failed batch gets the error
            traceback.print_exc()
            message = f"inference failed: {type(exc).__name__}"
            return [Result(header.request_id, 500, error_body(message, image_id), image_id=image_id,
                           error=message, reject_reason="inference_error", queue_wait_s=wait_s,
                           batch_size=len(images))
                    for header, image_id, wait_s in accepted]
        results = []
        for (header, image_id, wait_s), detections in zip(accepted, per_image):
            body = json.dumps({"id": image_id, "detections": [d.as_json() for d in detections]}).encode()
            results.append(Result(header.request_id, 200, body, image_id=image_id, queue_wait_s=wait_s,
                                  inference_s=inference_s, batch_size=len(images),
                                  labels=tuple(d.label for d in detections)))
        return results
