"""What crosses the process boundary between the front end and a worker, and how the server exits.

Front end -> worker, on the worker's own task pipe: a TaskHeader as JSON
bytes, then the raw request body, both with ``send_bytes``. Nothing a client
sent is ever unpickled: a worker that read body bytes where it expected a
header gets a parse error, not code. STOP_MESSAGE in place of a header tells
the worker to stop.
Worker -> front end, on the worker's own result pipe (pickled; only workers
write there): WorkerReady or WorkerBootFailed once, then one list of Result
per batch.

Two ids, two names: ``task_id`` is the front end's integer that matches a
Result to its waiting request on the pipes; ``request_id`` is the client's
``X-Request-ID`` (or one made for it), which travels only for the worker's log
lines. The refusals both sides give live in ``refusals``; the busy flags the
workers share, in ``busy_flags``.
"""

import enum
import json
from dataclasses import asdict, dataclass, field
from typing import Dict, Optional, Tuple

from .refusals import RejectReason

STOP = None
STOP_MESSAGE = b"STOP"
JSON_MEDIA_TYPE = "application/json"
IMAGE_MEDIA_TYPES = ("image/jpeg", "image/png")
FORM_MEDIA_TYPE = "multipart/form-data"  # an upload form: curl -F, HTML forms, DeepStack's clients
MAX_IMAGE_ID_CHARS = 256
# The per-request options a client may send, as query parameters or JSON fields;
# the front end passes the query's raw strings on, the worker validates both.
DETECTION_OPTION_NAMES = ("model", "confidence", "nms", "nms_mode", "classes", "max_detections", "max_side")
# agnostic: one NMS over every box, whatever its class (detserve's answers from the start);
# per_class: boxes suppress only boxes of their own class, as darknet and YOLOv5 do.
NMS_MODES = ("agnostic", "per_class")
# What a detection answer can be: the front end picks one from Accept or ?format=.
OUTPUT_MEDIA_TYPES = {"json": JSON_MEDIA_TYPE, "jpeg": "image/jpeg"}


class ExitCode(enum.IntEnum):
    """How the server process (and a worker that cannot boot) exits."""

    OK = 0
    CONFIG_ERROR = 2
    WORKER_BOOT_ERROR = 3
    FORCED = 130


@dataclass(frozen=True)
class TaskHeader:
    """What the worker needs to know of one request besides its body; sent as JSON, by field name."""

    task_id: int
    request_id: str  # the client's X-Request-ID, for the worker's log lines
    media_type: str  # the body's Content-Type without parameters
    query_image_id: Optional[str]
    enqueued_at_s: float  # time.monotonic(), which every process on the host shares
    deadline_at_s: float  # the same clock: past it nobody waits for the answer
    query_options: dict = field(default_factory=dict)  # {DETECTION_OPTION_NAMES: raw query string}
    output_format: str = "json"  # a key of OUTPUT_MEDIA_TYPES
    wire_format: str = "native"  # which of worker.formats parses the body and builds the answer
    model: Optional[str] = None  # the model to run; None: the server's default
    format_fields: dict = field(default_factory=dict)  # what the front end read for the format (format_fields)


def encode_task_header(header):
    return json.dumps(asdict(header)).encode()


def decode_task_header(data):
    """The TaskHeader in data, or STOP."""
    if data == STOP_MESSAGE:
        return STOP
    return TaskHeader(**json.loads(data))


@dataclass(frozen=True)
class Result:
    task_id: int
    status: int
    body: bytes
    image_id: Optional[str] = None
    error: Optional[str] = None
    reject_reason: Optional[RejectReason] = None  # set exactly when error is
    queue_wait_s: float = 0.0
    inference_s: float = 0.0  # the model's forward passes in this batch and their post-processing, in total
    batch_size: int = 0  # images of this batch that ran through its model, with this request's
    # (images, seconds) of each of those forward passes (at most --max-batch images each), in order
    forward_passes: Tuple[Tuple[int, float], ...] = field(default_factory=tuple)
    labels: Tuple[str, ...] = field(default_factory=tuple)
    content_type: str = JSON_MEDIA_TYPE
    headers: Tuple[Tuple[str, str], ...] = field(default_factory=tuple)  # copied onto the answer as they are
    images_run: int = 1  # images of this request that went through the model (several for a multi-image one)
    model: Optional[str] = None  # the model its images ran through; None if none ran

    @classmethod
    def failure(cls, task_id, refusal, **timings):
        """The Result of a task that was refused: the one place a failure Result is built.

        It carries the refusal, not an error body: the front end words the body in
        the wire format the request came in.
        """
        return cls(task_id, refusal.status, b"", image_id=refusal.image_id, error=refusal.message,
                   reject_reason=refusal.reason, headers=tuple(refusal.headers.items()), **timings)


@dataclass(frozen=True)
class WorkerReady:
    worker_index: int
    pid: int
    model_load_s: Dict[str, float]  # model name -> the seconds of its load and first forward pass


@dataclass(frozen=True)
class WorkerBootFailed:
    worker_index: int
    reason: str
