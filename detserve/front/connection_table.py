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
runs short. Only when every connection is busy is a new one refused.

Every change of a connection's state happens under the table's lock, and a
socket leaves the table before it is closed: an eviction therefore never
shuts down a socket that was closed (and whose descriptor may be another
connection's by now).
"""

import socket
import threading
import time


class Connection:
    """One open connection's state in its table."""

    __slots__ = ("sock", "accepted_at_s", "waiting_since_s", "evicted")

    def __init__(self, sock, now_s):
        self.sock = sock
        self.accepted_at_s = now_s
        self.waiting_since_s = now_s  # None while busy with a request
        self.evicted = False          # set once, when a newer connection took its slot


class ConnectionTable:
    def __init__(self, max_connections):
        self.max_connections = max_connections
        self._open = {}     # socket -> Connection
        self._lock = threading.Lock()

    def __len__(self):
        return len(self._open)

    def open(self, sock):
        """Add sock, waiting for its first request; at the bound, evict the longest-waiting connection first.

        Returns the new Connection, or None when every connection is busy
        (the caller refuses sock).
        """
        now_s = time.monotonic()
        with self._lock:
            if len(self._open) >= self.max_connections and not self._evict_longest_waiting():
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
            return True

    def body_arrived(self, connection):
        """The first bytes of connection's body are in: busy until waiting() again."""
        with self._lock:
            if not connection.evicted:
                connection.waiting_since_s = None

    def waiting(self, connection):
        """connection has answered its request and waits for the next one (evictable from now on)."""
        with self._lock:
            if not connection.evicted:
                connection.waiting_since_s = time.monotonic()

    def _evict_longest_waiting(self):
        waiting = [c for c in self._open.values() if c.waiting_since_s is not None]
        if not waiting:
            return False
        longest = min(waiting, key=lambda c: c.waiting_since_s)
        longest.evicted = True
        del self._open[longest.sock]
        try:
            longest.sock.shutdown(socket.SHUT_RDWR)  # its handler's blocked read returns at once
        except OSError:
            pass  # the client is gone already
        return True
