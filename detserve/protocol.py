"""What crosses the process boundary, and the closed sets every process shares.

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
``X-Request-ID`` (or one made for it), which only the front end sees.
"""

import enum
import json
from dataclasses import dataclass, field
from typing import Optional, Tuple

STOP = None
STOP_MESSAGE = b"STOP"
JSON_MEDIA_TYPE = "application/json"
IMAGE_MEDIA_TYPES = ("image/jpeg", "image/png")
MAX_IMAGE_ID_CHARS = 256
RETRY_AFTER_S = 1
# The per-request options a client may send, as query parameters or JSON fields;
# the front end passes the query's raw strings on, the worker validates both.
DETECTION_OPTION_NAMES = ("confidence", "nms", "classes", "max_detections", "max_side")
# What a detection answer can be: the front end picks one from Accept or ?format=.
OUTPUT_MEDIA_TYPES = {"json": JSON_MEDIA_TYPE, "jpeg": "image/jpeg"}


class ExitCode(enum.IntEnum):
    """How the server process (and a worker that cannot boot) exits."""

    OK = 0
    CONFIG_ERROR = 2
    WORKER_BOOT_ERROR = 3
    FORCED = 130


class RejectReason(enum.Enum):
    """Why a detection request was not answered with detections: a metric label each."""

    OVERLOAD = "overload"
    DEADLINE = "deadline"
    BAD_INPUT = "bad_input"
    DRAINING = "draining"
    WORKER_DIED = "worker_died"
    WORKER_STUCK = "worker_stuck"
    UNAUTHORIZED = "unauthorized"
    INFERENCE_ERROR = "inference_error"
    INTERNAL_ERROR = "internal_error"


class Refusal(Exception):
    """A request answered with an error: raised where the check is, answered in one place.

    ``close`` asks the front end to close the connection after the answer
    (when the body was not read, or the client should not try again on it).
    """

    def __init__(self, status, message, reason=RejectReason.BAD_INPUT, image_id=None, headers=None, close=False):
        super().__init__(message)
        self.status = status
        self.message = message
        self.reason = reason
        self.image_id = image_id
        self.headers = headers or {}
        self.close = close

    def body(self):
        return error_body(self.message, self.image_id)


def error_body(message, image_id=None):
    """The JSON body of every error answer: a reason a user can act on, and the id if known."""
    return json.dumps({"error": message, "id": image_id}).encode()


def retry_headers():
    return {"Retry-After": str(RETRY_AFTER_S)}


# The refusals that more than one process or module gives, worded once.
def shutting_down():
    return Refusal(503, "the server is shutting down; retry", RejectReason.DRAINING, headers=retry_headers())


def overloaded(why, close=False):
    """503 with Retry-After: the server has no room for this request now; why says which bound."""
    return Refusal(503, f"overloaded: {why}; retry after {RETRY_AFTER_S} s", RejectReason.OVERLOAD,
                   headers=retry_headers(), close=close)


def internal_error(request_id, image_id=None, close=False):
    """500 for a bug of ours, naming the request id its log line carries."""
    return Refusal(500, f"internal server error; see the server log for request id {request_id}",
                   RejectReason.INTERNAL_ERROR, image_id=image_id, close=close)


def past_deadline():
    return Refusal(504, "the request waited past its deadline", RejectReason.DEADLINE)


def worker_died():
    return Refusal(503, "the worker processing this request died; retry", RejectReason.WORKER_DIED)


def worker_hung():
    return Refusal(504, "the worker processing this request hung and was replaced", RejectReason.WORKER_STUCK)


@dataclass(frozen=True)
class TaskHeader:
    task_id: int
    request_id: str  # the client's X-Request-ID, for the worker's log lines
    media_type: str
    query_image_id: Optional[str]
    enqueued_at_s: float  # time.monotonic(), which every process on the host shares
    deadline_s: float
    query_options: dict = field(default_factory=dict)  # {DETECTION_OPTION_NAMES: raw query string}
    output_format: str = "json"  # a key of OUTPUT_MEDIA_TYPES


def encode_task_header(header):
    return json.dumps([header.task_id, header.request_id, header.media_type, header.query_image_id,
                       header.enqueued_at_s, header.deadline_s, header.query_options,
                       header.output_format]).encode()


def decode_task_header(data):
    """The TaskHeader in data, or STOP."""
    if data == STOP_MESSAGE:
        return STOP
    return TaskHeader(*json.loads(data))


@dataclass(frozen=True)
class Result:
    task_id: int
    status: int
    body: bytes
    image_id: Optional[str] = None
    error: Optional[str] = None
    reject_reason: Optional[RejectReason] = None
    queue_wait_s: float = 0.0
    inference_s: float = 0.0
    batch_size: int = 0
    labels: Tuple[str, ...] = field(default_factory=tuple)
    content_type: str = JSON_MEDIA_TYPE
    headers: Tuple[Tuple[str, str], ...] = field(default_factory=tuple)  # copied onto the answer as they are
    images_run: int = 1  # images of this request that went through the model (several for a multi-image one)

    @classmethod
    def failure(cls, task_id, refusal, image_id=None, **timings):
        """The Result of a task that was refused: the one place a failure answer is built."""
        image_id = refusal.image_id if refusal.image_id is not None else image_id
        return cls(task_id, refusal.status, error_body(refusal.message, image_id), image_id=image_id,
                   error=refusal.message, reject_reason=refusal.reason, **timings)


@dataclass(frozen=True)
class WorkerReady:
    worker_index: int
    pid: int
    load_time_s: float


@dataclass(frozen=True)
class WorkerBootFailed:
    worker_index: int
    reason: str


class BusyFlags:
    """Which workers are busy right now, shared by every worker process.

    A worker sets its flag from a batch's start until its pipe is empty; each
    worker reads the count to choose its OpenCV threads; the pool clears the
    flag of a worker that died.
    """

    def __init__(self, mp_context, workers):
        self._flags = mp_context.RawArray("b", workers)

    def mark_busy(self, worker_index):
        self._flags[worker_index] = 1

    def mark_idle(self, worker_index):
        self._flags[worker_index] = 0

    def busy_count(self):
        return sum(self._flags)
