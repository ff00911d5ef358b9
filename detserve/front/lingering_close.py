"""LingeringCloser: close connections whose answer has been sent without destroying the answer, all on one thread.

Closing a socket with input still unread makes the kernel send a reset, and a
reset can reach the client before it has read the answer just written: a
client refused past the connection limit saw a broken pipe instead of its 503.
So such a connection is closed the way nginx's lingering close does it: shut
its write side (the answer is complete), read and discard what the client
still sends until it closes, for at most LINGER_S and LINGER_MAX_BYTES, then
close. One thread with a selector does this for every connection handed to
it, so the accept loop that hands them over never waits on a client, and a
flood of refusals costs one thread and at most MAX_LINGERING descriptors
(beyond that the connection lingering longest is closed at once).
"""

import collections
import selectors
import socket
import threading
import time

# How long and how much a closing connection may still send us. A client that sent
# its whole request before reading has finished sending well within this.
LINGER_S = 1.0
LINGER_MAX_BYTES = 1 << 20
MAX_LINGERING = 128


class LingeringCloser:
    def __init__(self, linger_s=LINGER_S, max_bytes=LINGER_MAX_BYTES, max_sockets=MAX_LINGERING):
        self.linger_s = linger_s
        self.max_bytes = max_bytes
        self.max_sockets = max_sockets
        self._selector = selectors.DefaultSelector()
        self._wakeup_receiver, self._wakeup_sender = socket.socketpair()
        for end in (self._wakeup_receiver, self._wakeup_sender):
            end.setblocking(False)
        self._selector.register(self._wakeup_receiver, selectors.EVENT_READ)
        self._handed = collections.deque()  # sockets handed over, not yet registered (any thread appends)
        # socket -> [deadline_s, bytes drained]; handed over in deadline order, so the oldest is first.
        self._lingering = collections.OrderedDict()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="detserve-linger", daemon=True)

    def start(self):
        self._thread.start()

    def close_after_answer(self, sock):
        """sock's answer is sent: shut its write side, drain what it still sends, close it. Returns at once."""
        try:
            sock.shutdown(socket.SHUT_WR)
            sock.setblocking(False)
        except OSError:
            sock.close()
            return
        self._handed.append(sock)
        self._wake()

    def stop(self):
        self._stopping = True
        self._wake()
        if self._thread.ident is not None:  # started (a listener that failed to bind never starts it)
            self._thread.join(timeout=2)
        for sock in list(self._lingering) + list(self._handed):
            sock.close()
        self._selector.close()
        self._wakeup_receiver.close()
        self._wakeup_sender.close()

    def _wake(self):
        try:
            self._wakeup_sender.send(b"\0")
        except OSError:
            pass  # a wake-up is already pending (or we are stopping)

    def _run(self):
        buffer = bytearray(65536)
        while not self._stopping:
            timeout_s = None
            if self._lingering:
                timeout_s = max(0.0, next(iter(self._lingering.values()))[0] - time.monotonic())
            for key, _ in self._selector.select(timeout_s):
                if key.fileobj is self._wakeup_receiver:
                    self._take_handed()
                else:
                    self._drain(key.fileobj, buffer)
            self._close_expired()

    def _take_handed(self):
        try:
            while self._wakeup_receiver.recv(4096):
                pass
        except BlockingIOError:
            pass
        while self._handed:
            sock = self._handed.popleft()
            if len(self._lingering) >= self.max_sockets:
                self._close(next(iter(self._lingering)))
            self._lingering[sock] = [time.monotonic() + self.linger_s, 0]
            self._selector.register(sock, selectors.EVENT_READ)

    def _drain(self, sock, buffer):
        if sock not in self._lingering:  # closed earlier in this round, to make room for a newer one
            return
        try:
            received = sock.recv_into(buffer)
        except BlockingIOError:
            return
        except OSError:
            received = 0
        state = self._lingering[sock]
        state[1] += received
        if not received or state[1] >= self.max_bytes:
            self._close(sock)

    def _close_expired(self):
        now_s = time.monotonic()
        while self._lingering:
            sock, (deadline_s, _) = next(iter(self._lingering.items()))
            if deadline_s > now_s:
                break
            self._close(sock)

    def _close(self, sock):
        del self._lingering[sock]
        self._selector.unregister(sock)
        sock.close()
