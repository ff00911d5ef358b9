"""The worker's one boundary between an exception and an answer.

Whatever a request's bytes make our code raise becomes that request's
answer (or one image's, in a multi-image request), never the worker's end:
a Refusal is answered as it is, about the image it concerns; running out of
memory is a 413 (one oversized image must not take the worker, and its
neighbours' requests, down); anything else is a bug of ours, logged with the
client's request id and answered 500 naming it.
"""

import contextlib
import logging

from ..refusals import Refusal, internal_error, out_of_memory

log = logging.getLogger("detserve.worker")


@contextlib.contextmanager
def refusal_boundary(request_id, image_id, doing):
    """Turn any exception of the block into the Refusal it deserves; doing says what, for the log."""
    try:
        yield
    except Refusal as refusal:
        raise (refusal if refusal.image_id is not None or image_id is None else refusal.for_image(image_id))
    except MemoryError:
        raise out_of_memory(image_id) from None
    except Exception:
        log.exception("request %s: unexpected error %s", request_id, doing)
        raise internal_error(request_id, image_id) from None
