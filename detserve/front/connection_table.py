"""ConnectionTable: one listener's open connections, bounded; at the bound the longest-waiting one gives way.

A connection is either waiting for a request (from its accept, or from its
last answer, until its request head is complete and, if it declares a body,
until the body's first bytes arrive) or busy with one (reading its body,
waiting for a worker, writing its answer). A waiting connection
costs its client nothing to keep, so if waiting ones could hold every slot, a
few hundred sockets that send nothing would lock everyone out. Here a new
connection at the bound takes the slot of the connection that has been
waiting longest: its socket is shut down, which ends its handler thread's
read at once. nginx reuses idle keep-alive connections the same way when it
runs short. A body that trickles in costs its client little more: 256 uploads
at 24 KiB/s (6 MiB/s in all, just over the body reader's floor) held every
slot and 35 of 37 other requests got 503. So when none is waiting, the upload
arriving slowest gives way instead, if it has been arriving for
SLOW_BODY_GRACE_S at under SLOW_BODY_BYTES_PER_S on average: under pressure,
holding a slot costs an uplink of 1 Mbit/s per connection. Only when every
connection is busy otherwise (or uploading faster) is a new one refused.

Every change of a connection's state happens under the table's lock, and a
socket leaves the table before it is closed: an eviction therefore never
shuts down a socket that was closed (and whose descriptor may be another
connection's by now).
"""

import socket
import threading
import time

# 1 Mbit/s: slower than this, an upload of more than 1.25 MB cannot arrive within the
# default --client-timeout-s anyway, and a detection body is rarely larger.
SLOW_BODY_BYTES_PER_S = 128 * 1024
# How long a body must have been arriving before its rate is judged: its first chunks
# may come in one burst, or after a pause.
SLOW_BODY_GRACE_S = 1.0


class Connection:
    """One open connection's state in its table."""

    __slots__ = ("sock", "accepted_at_s", "waiting_since_s", "evicted", "body_started_at_s", "body_bytes")

    def __init__(self, sock, now_s):
        self.sock = sock
        self.accepted_at_s = now_s
        self.waiting_since_s = now_s  # None while busy with a request
        self.evicted = False          # set once, when a newer connection took its slot
        self.body_started_at_s = None  # while its body arrives: when the first bytes did
        self.body_bytes = 0            # how much of that body has arrived


class ConnectionTable:
    def __init__(self, max_connections):
        self.max_connections = max_connections
        self._open = {}     # socket -> Connection
        self._lock = threading.Lock()

    def __len__(self):
        return len(self._open)

    def open(self, sock):
        """Add sock, waiting for its first request; at the bound, evict the longest-waiting connection first
        (none waiting: the slowest upload).

        Returns the new Connection, or None when every connection is busy
        (the caller refuses sock).
        """
        now_s = time.monotonic()
        with self._lock:
            if len(self._open) >= self.max_connections and not self._evict_one():
                return None
            connection = self._open[sock] = Connection(sock, now_s)
            return connection

    def find(self, sock):
        """sock's Connection, or None if it is no longer in the table (it was evicted)."""
        with self._lock:
            return self._open.get(sock)

    def close(self, sock):
        """Remove sock (before it is closed); no harm if an eviction removed it already."""
        with self._lock:
            self._open.pop(sock, None)

    def request_started(self, connection, body_pending=False):
        """connection's request head is complete: busy until waiting() again. False if it was evicted.

        With body_pending (a body is declared and none of it has come) it has
        not sent its request yet: it stays evictable, as waiting since now,
        until body_arrived.
        """
        with self._lock:
            if connection.evicted:
                return False
            connection.waiting_since_s = time.monotonic() if body_pending else None
            connection.body_started_at_s = None
            return True

    def body_arrived(self, connection):
        """The first bytes of connection's body are in: busy until waiting() again, and its rate watched."""
        with self._lock:
            if not connection.evicted:
                connection.waiting_since_s = None
                connection.body_started_at_s, connection.body_bytes = time.monotonic(), 0

    def body_progress(self, connection, arrived_bytes):
        """arrived_bytes of connection's body are in (the handler tells, chunk by chunk)."""
        connection.body_bytes = arrived_bytes  # one int, read under the lock only by _evict

    def body_complete(self, connection):
        """connection's body is read (or given up on): busy with the request, never evicted for its rate."""
        with self._lock:
            connection.body_started_at_s = None

    def waiting(self, connection):
        """connection has answered its request and waits for the next one (evictable from now on)."""
        with self._lock:
            if not connection.evicted:
                connection.waiting_since_s = time.monotonic()
                connection.body_started_at_s = None

    def _evict_one(self):
        """Evict the longest-waiting connection, else the slowest upload; False if neither is there."""
        waiting = [c for c in self._open.values() if c.waiting_since_s is not None]
        victim = min(waiting, key=lambda c: c.waiting_since_s) if waiting else self._slowest_upload()
        if victim is None:
            return False
        victim.evicted = True
        del self._open[victim.sock]
        try:
            victim.sock.shutdown(socket.SHUT_RDWR)  # its handler's blocked read returns at once
        except OSError:
            pass  # the client is gone already
        return True

    def _slowest_upload(self):
        """The connection whose body arrives slowest, if under SLOW_BODY_BYTES_PER_S after the grace; else None."""
        now_s = time.monotonic()
        rates = [(c.body_bytes / (now_s - c.body_started_at_s), c) for c in self._open.values()
                 if c.body_started_at_s is not None and now_s - c.body_started_at_s >= SLOW_BODY_GRACE_S]
        rate, slowest = min(rates, key=lambda pair: pair[0], default=(None, None))
        return slowest if slowest is not None and rate < SLOW_BODY_BYTES_PER_S else None
