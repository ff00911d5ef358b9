"""What a worker does with one request, in this process: the entry for code that measures the worker's path.

A study that needs "what a worker does" without the server (the raw
pipeline's ceiling, the detections of a reduced decode) calls this, never
the worker's parts one by one. A request goes through the worker's own
BatchRunner with a real TaskHeader, encoded and decoded as on the task pipe,
so body parsing, the per-request options, the decode (reduced or not), the
forward pass, post-processing and the JSON answer are the code a served
request runs. Only the pipes, the pool and HTTP are left out.

    pipeline = Pipeline(load_detector(), decode_reduction="off", cv_threads=1)
    answer = pipeline.run_one(jpeg_bytes, "image/jpeg", {"confidence": 0.05})
    answer.detections  # (Detection(label, confidence, bbox=(x, y, w, h)), ...)

available_cpus is the count a worker takes its OpenCV threads from, for a
study that sizes its processes the way the pool sizes its workers.
"""

import itertools
import json
import multiprocessing
import time
from dataclasses import dataclass
from typing import Optional, Tuple

from ..config import Config
from ..model_files import DEFAULT_MODEL, DEFAULT_MODEL_DIR, parse_model_choice
from ..busy_flags import BusyFlags
from ..protocol import TaskHeader, decode_task_header, encode_task_header
from .batch_runner import BatchRunner
from .cpu_budget import available_cpus
from .detector import Detection, Detector
from .image_decoding import decode_cost_ns, reduction_factor
from .image_header import ImageHeaderError, read_header

__all__ = ["Answer", "ImageFacts", "Pipeline", "available_cpus", "decode_price_ns", "load_detector"]
WORKER_INDEX = 0  # this process plays the one worker of a one-worker pool


def load_detector(model_dir=DEFAULT_MODEL_DIR, model=DEFAULT_MODEL.name):
    """The model loaded and run once, as a worker's boot does; Pipelines with other settings may share it.

    model: one --models entry, NAME or NAME@SIZE.
    """
    detector = Detector(model_dir, parse_model_choice(model))
    detector.warm_up()
    return detector


def decode_price_ns(image_bytes, factor=1):
    """What a worker's decode budget charges for decoding image_bytes at 1/factor scale; None if refused unread."""
    try:
        header = read_header(image_bytes)
    except ImageHeaderError:
        return None
    return decode_cost_ns(header, factor)


@dataclass(frozen=True)
class Answer:
    status: int
    detections: Tuple[Detection, ...]  # what the JSON answer holds; empty for a refusal
    error: Optional[str]  # the refusal's message; None for a 200
    elapsed_s: float  # the whole batch: parsing, decoding, forward pass, post-processing, the answer
    inference_s: float  # the forward pass and post-processing alone


@dataclass(frozen=True)
class ImageFacts:
    format: str  # "JPEG" or "PNG"
    size_px: Tuple[int, int]  # (width, height) as the header gives them
    decode_factor: int  # the decode reads the image at 1/decode_factor of its size (1: in full)


class Pipeline:
    """One worker's BatchRunner over a loaded detector (its only model); settings are Config fields (the flags)."""

    def __init__(self, detector, **settings):
        self.config = Config(models=detector.name, **settings)
        self._busy_flags = BusyFlags(multiprocessing.get_context(), 1)
        self._runner = BatchRunner({detector.name: detector}, self._busy_flags, self.config)
        self._task_ids = itertools.count(1)

    def run_one(self, body, media_type="image/jpeg", options=None):
        """The Answer a worker gives one request of one image.

        body: a raw JPEG or PNG (media_type image/jpeg or image/png) or a JSON
        {"id": ..., "image": base64} (application/json); options: query
        parameters as a client sends them, {name: value}, each value as text
        (str() is applied; classes as "person,car").
        """
        task_id, now_s = next(self._task_ids), time.monotonic()
        header = TaskHeader(task_id=task_id, request_id=f"pipeline-{task_id}", media_type=media_type,
                            query_image_id=None, enqueued_at_s=now_s,
                            deadline_at_s=now_s + self.config.request_timeout_s,
                            query_options={name: str(value) for name, value in (options or {}).items()})
        header = decode_task_header(encode_task_header(header))  # what a worker reads off its pipe
        self._busy_flags.mark_busy(WORKER_INDEX)  # as a worker does, so its OpenCV threads are chosen alike
        started_s = time.perf_counter()
        (result,) = self._runner.run([(header, body)])
        elapsed_s = time.perf_counter() - started_s
        self._busy_flags.mark_idle(WORKER_INDEX)
        if result.status != 200:
            return Answer(result.status, (), result.error, elapsed_s, result.inference_s)
        detections = tuple(Detection(d["label"], d["confidence"], tuple(d["bbox"]))
                           for d in json.loads(result.body)["detections"])
        return Answer(result.status, detections, None, elapsed_s, result.inference_s)

    def image_facts(self, image_bytes):
        """An image's format and size from its header, and the scale this pipeline's decode reads it at."""
        header = read_header(image_bytes)
        return ImageFacts(header.format, (header.width_px, header.height_px),
                          reduction_factor(header, self.config.decode_reduction))
