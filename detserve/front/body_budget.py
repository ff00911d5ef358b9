"""BodyBudget: the request-body bytes the front end holds at once, across all connections, charged as they arrive.

A body is charged by the bytes that have arrived, not by the Content-Length it
declares: a head that promises 20 MiB and sends nothing holds nothing, so a
few such heads cannot lock everyone else out. A body's reservation grows with
each chunk before the chunk is taken off the socket (so the bytes held never
pass --max-body-buffer-mb) and is given back whole when the request ends (its
answer written or refused). One case outlives its charge: a request whose
client got its 504 while it still waited in the queue keeps its body there
until the dispatcher drops it unsent (at most --queue-size such bodies). A body whose Content-Length could not fit beside
the bytes already held is refused before a byte of it is read; one that finds
the budget spent part-way is refused then. A body that stops arriving is
dropped by the body reader within seconds, and gives its bytes back.

ByteBudget is the counter both this budget and the answers' (answer_budget)
are made of.
"""

import contextlib
import threading

from ..refusals import overloaded


class ByteBudget:
    """A count of bytes held across threads, never past max_bytes; a subclass words the refusal."""

    def __init__(self, max_bytes):
        self.max_bytes = max_bytes
        self._held_bytes = 0
        self._lock = threading.Lock()

    @property
    def held_bytes(self):
        return self._held_bytes

    def take(self, length):
        """Hold length more bytes, or raise the 503 Refusal that says the budget is spent."""
        with self._lock:
            if self._held_bytes + length > self.max_bytes:
                raise self.refusal(self._held_bytes, length)
            self._held_bytes += length

    def give_back(self, length):
        with self._lock:
            self._held_bytes -= length

    def has_room_for(self, length):
        return self._held_bytes + length <= self.max_bytes

    def refusal(self, held_bytes, length):
        """The Refusal for length more bytes when held_bytes are held."""
        raise NotImplementedError


class BodyBudget(ByteBudget):
    def refusal(self, held_bytes, length):
        return overloaded(f"{held_bytes / 2**20:.0f} MB of request bodies are being read or waiting "
                          f"(--max-body-buffer-mb {self.max_bytes / 2**20:g})", close=True)

    @contextlib.contextmanager
    def reading(self, declared_length):
        """The BodyReservation of one body, for read_body to grow; everything it holds is given back on exit.

        Refused at once (503, before the body is read) when the bytes held now
        plus declared_length would pass the budget.
        """
        if not self.has_room_for(declared_length):
            raise self.refusal(self.held_bytes, declared_length)
        reservation = BodyReservation(self)
        try:
            yield reservation
        finally:
            reservation.give_back_all()


class BodyReservation:
    """The bytes one body holds in its BodyBudget: grown as chunks arrive, given back when the request ends."""

    def __init__(self, budget):
        self._budget = budget
        self.held_bytes = 0

    def grow(self, length):
        """Hold length more bytes for this body, or raise the budget's 503 Refusal."""
        self._budget.take(length)
        self.held_bytes += length

    def shrink(self, length):
        length = min(length, self.held_bytes)
        self._budget.give_back(length)
        self.held_bytes -= length

    def give_back_all(self):
        self.shrink(self.held_bytes)
