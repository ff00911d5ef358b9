"""Every way a request is refused: the one catalogue of statuses, reasons and headers.

A check raises the Refusal this module builds for it, where the check is, in
whichever process it runs; one place per side answers it (the front end's
handler, the worker's failures boundary). A check chooses the words a user
can act on; the status, the metric reason and the headers of each kind of
refusal are decided here, once. A Refusal knows the image it is about from
the start (``image_id``), or is given one by ``for_image``, which returns a
new Refusal: nothing edits a refusal after it is built.
"""

import enum

RETRY_AFTER_S = 1


class RejectReason(enum.Enum):
    """Why a detection request was not answered with detections: a metric label each."""

    OVERLOAD = "overload"
    DEADLINE = "deadline"
    BAD_INPUT = "bad_input"
    DRAINING = "draining"
    WORKER_DIED = "worker_died"
    WORKER_STUCK = "worker_stuck"
    UNAUTHORIZED = "unauthorized"
    CROSS_SITE = "cross_site"
    INFERENCE_ERROR = "inference_error"
    INTERNAL_ERROR = "internal_error"


class Refusal(Exception):
    """A request answered with an error: raised where the check is, answered in one place.

    ``close`` asks the front end to close the connection after the answer
    (when the body was not read, or the client should not try again on it).
    ``reason`` is None for refusals that are not about detection (404, 405).
    """

    def __init__(self, status, message, reason=RejectReason.BAD_INPUT, image_id=None, headers=None, close=False):
        super().__init__(message)
        self.status = status
        self.message = message
        self.reason = reason
        self.image_id = image_id
        self.headers = dict(headers or {})
        self.close = close

    def for_image(self, image_id):
        """This refusal about image_id (a new Refusal; this one is left as it is)."""
        return Refusal(self.status, self.message, self.reason, image_id, self.headers, self.close)


def retry_headers():
    return {"Retry-After": str(RETRY_AFTER_S)}


# -- what the client sent -------------------------------------------------------------------
def bad_request(message, image_id=None, close=False):
    return Refusal(400, message, image_id=image_id, close=close)


def too_large(message, image_id=None, close=False):
    """413: the body, an image or its decoding costs more than a request may."""
    return Refusal(413, message, image_id=image_id, close=close)


def out_of_memory(image_id=None):
    return too_large("the request needs more memory than this worker has; send a smaller image", image_id)


def length_required(message):
    return Refusal(411, message, close=True)


def unsupported_media_type(message):
    return Refusal(415, message, close=True)


def not_acceptable(message):
    return Refusal(406, message)


def unauthorized(message, challenge='Bearer realm="detserve"'):
    return Refusal(401, message, RejectReason.UNAUTHORIZED, headers={"WWW-Authenticate": challenge}, close=True)


def cross_site(origin):
    return Refusal(403, f"a page at {origin[:100]!r} may not send work to this server from a browser; "
                        "its operator can allow that origin with --allow-origin", RejectReason.CROSS_SITE, close=True)


def not_found(message):
    return Refusal(404, message, reason=None)


def method_not_allowed(method, allowed):
    return Refusal(405, f"{method} is not allowed here; use {', '.join(allowed)}", reason=None,
                   headers={"Allow": ", ".join(allowed)})


def http_error(status, message):
    """A malformed request found by HTTP parsing itself (http.server's send_error)."""
    return Refusal(status, message, close=True)


# -- what the server can do now -----------------------------------------------------------------
def overloaded(why, close=False, image_id=None):
    """503 with Retry-After: the server has no room for this request now; why says which bound."""
    return Refusal(503, f"overloaded: {why}; retry after {RETRY_AFTER_S} s", RejectReason.OVERLOAD,
                   image_id=image_id, headers=retry_headers(), close=close)


def draining():
    """503 at admission once a drain began: another instance can take it at once."""
    return Refusal(503, "the server is shutting down; retry on another instance", RejectReason.DRAINING,
                   headers=retry_headers(), close=True)


def shutting_down(image_id=None):
    """503 for accepted work the stopping server will not run."""
    return Refusal(503, "the server is shutting down; retry", RejectReason.DRAINING, image_id=image_id,
                   headers=retry_headers())


def deadline_exceeded(timeout_s, image_id=None):
    """504 in the front end: no answer came within --request-timeout-s."""
    return Refusal(504, f"no answer within the {timeout_s:g} s deadline", RejectReason.DEADLINE, image_id=image_id)


def past_deadline(image_id=None):
    """504 for work skipped because its deadline passed (or would, before it could finish)."""
    return Refusal(504, "the request waited past its deadline", RejectReason.DEADLINE, image_id=image_id)


def worker_died(image_id=None):
    return Refusal(503, "the worker processing this request died; retry", RejectReason.WORKER_DIED,
                   image_id=image_id)


def worker_hung(image_id=None):
    return Refusal(504, "the worker processing this request hung and was replaced", RejectReason.WORKER_STUCK,
                   image_id=image_id)


# -- our own failures -----------------------------------------------------------------------------
def internal_error(request_id, image_id=None, close=False):
    """500 for a bug of ours, naming the request id its log line carries."""
    return Refusal(500, f"internal server error; see the server log for request id {request_id}",
                   RejectReason.INTERNAL_ERROR, image_id=image_id, close=close)


def inference_failed(exc):
    return Refusal(500, f"inference failed: {type(exc).__name__}", RejectReason.INFERENCE_ERROR)
