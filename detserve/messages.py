"""The typed messages that cross the process boundary between front end and workers.

Front end -> worker, on the worker's own task pipe: a TaskHeader as JSON
bytes, then the raw request body, both with ``send_bytes``. Nothing a client
sent is ever unpickled: a worker that read body bytes where it expected a
header gets a parse error, not code. STOP_MESSAGE in place of a header tells
the worker to stop.
Worker -> front end, on the worker's own result pipe (pickled; only workers
write there): WorkerReady or WorkerBootFailed once, then one list of Result
per batch.
"""

import json
from dataclasses import dataclass, field
from typing import Optional, Tuple

STOP = None
STOP_MESSAGE = b"STOP"
JSON_MEDIA_TYPE = "application/json"
IMAGE_MEDIA_TYPES = ("image/jpeg", "image/png")
MAX_IMAGE_ID_CHARS = 256


def error_body(message, image_id=None):
    """The JSON body of every error answer: a reason a user can act on, and the id if known."""
    return json.dumps({"error": message, "id": image_id}).encode()


@dataclass(frozen=True)
class TaskHeader:
    request_id: int
    media_type: str
    query_image_id: Optional[str]
    enqueued_at_s: float  # time.monotonic(), which every process on the host shares
    deadline_s: float


def encode_task_header(header):
    return json.dumps([header.request_id, header.media_type, header.query_image_id,
                       header.enqueued_at_s, header.deadline_s]).encode()


def decode_task_header(data):
    """The TaskHeader in data, or STOP."""
    if data == STOP_MESSAGE:
        return STOP
    return TaskHeader(*json.loads(data))


@dataclass(frozen=True)
class Result:
    request_id: int
    status: int
    body: bytes
    image_id: Optional[str] = None
    error: Optional[str] = None
    reject_reason: Optional[str] = None  # "bad_input" or "deadline", for metrics
    queue_wait_s: float = 0.0
    inference_s: float = 0.0
    batch_size: int = 0
    labels: Tuple[str, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class WorkerReady:
    worker_index: int
    pid: int
    load_time_s: float


@dataclass(frozen=True)
class WorkerBootFailed:
    worker_index: int
    reason: str
