"""AnswerBudget: the answer bytes the front end holds until they are written, across all connections.

A worker's answer can be tens of times larger than its upload (an annotated
JPEG), and it is held until the client has taken it: without a bound, slow
readers turn answers into memory. An answer holds its length from the moment
it is to be written until the write ends (sent, or the client dropped for
reading too slowly); an answer that would pass --max-answer-buffer-mb is
refused with 503 instead, and its bytes let go at once.
"""

import contextlib

from ..refusals import RejectReason, Refusal, overloaded
from .body_budget import ByteBudget


class AnswerBudget(ByteBudget):
    def refusal(self, held_bytes, length):
        if length > self.max_bytes:  # it would never fit: no Retry-After
            return Refusal(503, f"the answer is {length / 2**20:.1f} MB, more than the "
                                f"--max-answer-buffer-mb {self.max_bytes / 2**20:g} the server holds for answers",
                           RejectReason.OVERLOAD)
        return overloaded(f"{held_bytes / 2**20:.0f} MB of answers are waiting to be written to clients "
                          f"(--max-answer-buffer-mb {self.max_bytes / 2**20:g})")

    @contextlib.contextmanager
    def holding(self, length):
        """Hold length bytes while the answer is written, or raise the 503 Refusal if they do not fit."""
        self.take(length)
        try:
            yield
        finally:
            self.give_back(length)
