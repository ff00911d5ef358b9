"""AnswerBudget: the answer bytes the front end holds until they are written, across all connections.

A worker's answer can be tens of times larger than its upload (an annotated
JPEG), and it is held until the client has taken it: without a bound, slow
readers turn answers into memory. An answer holds its length from the moment
it is to be written until the write ends (sent, or the client dropped for
reading too slowly); an answer that would pass --max-answer-buffer-mb is
refused with 503 instead, and its bytes let go at once.

A small answer (JSON detections, DeepStack's, Open Inference's tensors: at most
SMALL_ANSWER_BYTES) is not counted: each connection writes at most one answer
at a time, so --max-connections bounds them, and they are part of each
connection's share of the front end's memory. Counted, they could be locked out:
two readers taking 5.6 MB annotated answers at 80 KiB/s (just over the writer's
floor) held a budget set to their size plus 100 bytes, and every JSON,
DeepStack and Open Inference answer got 503 after its worker had run it; at the
default 64 MiB, a dozen such readers and answer sizes picked to fill it do the
same. Only the large answers, the annotated pictures, share the budget.
"""

import contextlib

from ..refusals import RejectReason, Refusal, overloaded
from .body_budget import ByteBudget

# About 180 detections as JSON, or Open Inference's outputs for 16 images of 10 each.
SMALL_ANSWER_BYTES = 16 * 1024


class AnswerBudget(ByteBudget):
    def refusal(self, held_bytes, length):
        if length > self.max_bytes:  # it would never fit: no Retry-After
            return Refusal(503, f"the answer is {length / 2**20:.1f} MB, more than the "
                                f"--max-answer-buffer-mb {self.max_bytes / 2**20:g} the server holds for answers",
                           RejectReason.OVERLOAD)
        return overloaded(f"{held_bytes / 2**20:.0f} MB of answers are waiting to be written to clients "
                          f"(--max-answer-buffer-mb {self.max_bytes / 2**20:g})")

    @contextlib.contextmanager
    def holding(self, length, image_id=None):
        """Hold length bytes while the answer is written, or raise the 503 Refusal (about image_id) if they do not fit.

        An answer of at most SMALL_ANSWER_BYTES holds nothing (see the module's docstring).
        """
        if length <= SMALL_ANSWER_BYTES:
            yield
            return
        try:
            self.take(length)
        except Refusal as refusal:
            raise refusal.for_image(image_id) from None
        try:
            yield
        finally:
            self.give_back(length)
