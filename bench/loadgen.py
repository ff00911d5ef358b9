"""Driving load: THREADS threads, each with its own kept-alive HTTP connection,
sending images until the run's budget is spent, and one RequestRecord per request.

    main thread: start threads, tick progress, turn Ctrl-C into a stop
    thread i:    warm-up requests ──▶ barrier (clock starts) ──▶ counted requests
                 (one http.client connection for both, reopened if the server closes it)

The clock starts only when every thread has finished its warm-up, so neither
warm-up requests nor the connections they open are counted.

A refusal (503) is counted as ``http_503`` and, by default, the thread sends
its next image at once: Retry-After is ignored, which is what an overload
benchmark wants (``--no-backoff`` says so explicitly). With
``honor_retry_after`` a thread waits the Retry-After seconds of a refusal
before its next request, as a well-behaved client does. Bodies are spliced
from bytes (the images were base64-encoded before), so the client spends as
little CPU per request as it can: on a small machine it shares the cores with
the server it measures.
"""

import http.client
import select
import socket
import threading
import time
import urllib.parse
import uuid
from dataclasses import dataclass

from bench.check import CONNECTION, TIMEOUT, Verdict, judge
from bench.stats import summarize

DEFAULT_TIMEOUT_S = 60.0
PROGRESS_INTERVAL_S = 0.25
REQUEST_HEADERS = {
    "Content-Type": "application/json",
    "Accept": "application/json",
    "User-Agent": "detserve-bench",
}

# A uuid and base64 need no JSON escaping, so the body is three splices, not json.dumps of ~100 KB.
_BODY_BEFORE_ID = b'{"id": "'
_BODY_BEFORE_IMAGE = b'", "image": "'
_BODY_END = b'"}'


@dataclass(frozen=True)
class RequestRecord:
    """One counted request: what was sent, how long it took, and the verdict on the reply."""
    id: str
    image: str
    thread: int
    start_s: float  # since the clock started, after warm-up
    latency_ms: float
    status: int = None  # None when no reply came (timeout, connection)
    error: str = None  # a kind from bench.check, None on success
    detail: str = ""
    labels: tuple = ()

    @property
    def ok(self):
        return self.error is None


@dataclass(frozen=True)
class Progress:
    """A snapshot handed to the progress callback a few times a second."""
    threads: int
    warming_up: bool
    done: int
    errors: int
    total: int  # None when the run is bounded by a duration
    elapsed_s: float
    duration_s: float


@dataclass(frozen=True)
class Target:
    scheme: str
    host: str
    port: int
    path: str

    @classmethod
    def parse(cls, url):
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"URL {url!r} is not an http:// or https:// address, e.g. http://127.0.0.1:5050/api/")
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            raise ValueError(f"URL {url!r} has an invalid port") from None
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        return cls(parts.scheme, parts.hostname, port, path)


class Connection:
    """One HTTP/1.1 connection kept alive between requests and reopened when the server closes it.

    The timeout is one deadline per request shared by connecting, sending and
    waiting for the reply, not a fresh allowance for every socket operation.
    """

    def __init__(self, target, timeout_s):
        connection_class = http.client.HTTPSConnection if target.scheme == "https" else http.client.HTTPConnection
        self._conn = connection_class(target.host, target.port, timeout=timeout_s)
        self._timeout_s = timeout_s
        self.opened = 0

    def post(self, path, body):
        """Return (status, headers, body) or raise TimeoutError, OSError or http.client.HTTPException."""
        deadline = time.perf_counter() + self._timeout_s
        try:
            if self._conn.sock is not None and _readable_while_idle(self._conn.sock):
                # The server closed it while idle (keep-alive timeout): reopen now rather than
                # send into a dead socket and count the server's housekeeping as an error.
                self._conn.close()
            if self._conn.sock is None:
                self.opened += 1
                self._conn.timeout = _remaining_s(deadline)
                self._conn.connect()
            sock = self._conn.sock  # kept: http.client drops it from the connection on "Connection: close"
            sock.settimeout(_remaining_s(deadline))
            self._conn.request("POST", path, body, REQUEST_HEADERS)
            sock.settimeout(_remaining_s(deadline))
            response = self._conn.getresponse()
            sock.settimeout(_remaining_s(deadline))
            return response.status, response.headers, response.read()
        except BaseException:
            # A half-read reply would be taken for the next request's answer.
            self._conn.close()
            raise

    def close(self):
        self._conn.close()


def _remaining_s(deadline):
    remaining = deadline - time.perf_counter()
    if remaining <= 0:
        raise TimeoutError("deadline passed")
    return remaining


def _readable_while_idle(sock):
    # poll, where there is one, because select() cannot watch descriptors past 1023.
    if hasattr(select, "poll"):
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        return bool(poller.poll(0))
    readable, _, _ = select.select([sock], [], [], 0)
    return bool(readable)


class _Budget:
    """Hands out images in folder order, round and round, until a count or a deadline is reached."""

    def __init__(self, images, count=None, duration_s=None):
        self._images = images
        self._count = count
        self._duration_s = duration_s
        self._deadline = None
        self._handed = 0
        self._stopped = threading.Event()  # an Event, so that a pause for Retry-After ends at a stop
        self._lock = threading.Lock()

    def start_clock(self, t0):
        if self._duration_s is not None:
            self._deadline = t0 + self._duration_s

    def stop(self):
        self._stopped.set()

    def pause(self, pause_s):
        """Wait pause_s, or less if the budget's deadline or a stop comes first."""
        if self._deadline is not None:
            pause_s = min(pause_s, self._deadline - time.perf_counter())
        if pause_s > 0:
            self._stopped.wait(pause_s)

    def next_image(self):
        with self._lock:
            if (self._stopped.is_set() or (self._count is not None and self._handed >= self._count)
                    or (self._deadline is not None and time.perf_counter() >= self._deadline)):
                return None
            image = self._images[self._handed % len(self._images)]
            self._handed += 1
            return image


class _Run:
    """The shared state of one run: budgets, the clock, and the records the threads produce."""

    def __init__(self, images, target, threads, count, duration_s, warmup, timeout_s, on_record,
                 honor_retry_after=False):
        self.target = target
        self.honor_retry_after = honor_retry_after
        self.threads = threads
        self.timeout_s = timeout_s
        self.on_record = on_record
        self.warmup = warmup
        self.count = count
        self.duration_s = duration_s
        self.warmup_budget = _Budget(images, count=warmup)
        self.budget = _Budget(images, count=count, duration_s=duration_s)
        self.barrier = threading.Barrier(threads, action=self._start_clock)
        self.lock = threading.Lock()
        self.t0 = None
        self.last_end = None
        self.records = []
        self.errors = 0
        self.warmup_requests = 0
        self.warmup_errors = 0
        self.connections_opened = 0
        self.failure = None

    def _start_clock(self):
        self.t0 = time.perf_counter()
        self.budget.start_clock(self.t0)

    def stop(self):
        self.warmup_budget.stop()
        self.budget.stop()

    def worker(self, thread_index):
        connection = Connection(self.target, self.timeout_s)
        try:
            while (image := self.warmup_budget.next_image()) is not None:
                self.warmup_budget.pause(self._request(connection, image, thread_index, counted=False))
            self.barrier.wait()
            while (image := self.budget.next_image()) is not None:
                self.budget.pause(self._request(connection, image, thread_index, counted=True))
        except threading.BrokenBarrierError:
            pass  # another thread failed; its error is the one reported
        except BaseException as exc:
            self.failure = exc
            self.stop()
            self.barrier.abort()
        finally:
            connection.close()
            with self.lock:
                self.connections_opened += connection.opened

    def _request(self, connection, image, thread_index, counted):
        """Send one image and record the verdict; return the seconds to pause before the next one."""
        request_id = str(uuid.uuid4())
        body = b"".join((_BODY_BEFORE_ID, request_id.encode(), _BODY_BEFORE_IMAGE, image.b64, _BODY_END))
        status = None
        start = time.perf_counter()
        try:
            status, headers, reply = connection.post(self.target.path, body)
        except (TimeoutError, socket.timeout):  # distinct classes before Python 3.10
            verdict = Verdict(TIMEOUT, f"no complete reply within {self.timeout_s:g} s")
        except (OSError, http.client.HTTPException) as exc:
            verdict = Verdict(CONNECTION, f"{type(exc).__name__}: {exc}".rstrip(": "))
        end = time.perf_counter()
        pause_s = 0.0
        if status is not None:
            verdict = judge(status, headers, reply, request_id)
            if self.honor_retry_after and status == 503:
                pause_s = _retry_after_s(headers)
        with self.lock:
            if not counted:
                self.warmup_requests += 1
                self.warmup_errors += verdict.error is not None
                return pause_s
            record = RequestRecord(
                id=request_id, image=image.name, thread=thread_index, start_s=start - self.t0,
                latency_ms=(end - start) * 1000, status=status,
                error=verdict.error, detail=verdict.detail, labels=verdict.labels)
            self.records.append(record)
            self.errors += not record.ok
            self.last_end = end if self.last_end is None else max(self.last_end, end)
            if self.on_record is not None:
                self.on_record(record)
        return pause_s

    def progress(self):
        if self.t0 is None:
            return Progress(threads=self.threads, warming_up=True, done=self.warmup_requests,
                            errors=self.warmup_errors, total=self.warmup, elapsed_s=0.0, duration_s=None)
        return Progress(threads=self.threads, warming_up=False, done=len(self.records), errors=self.errors,
                        total=self.count, elapsed_s=time.perf_counter() - self.t0, duration_s=self.duration_s)


def _retry_after_s(headers):
    """Retry-After in seconds; 0 when absent or an HTTP date (detserve sends seconds)."""
    try:
        return max(0.0, float(headers.get("Retry-After", "")))
    except ValueError:
        return 0.0


def run_load(images, url, threads, *, repeat=1, duration_s=None, warmup=0, timeout_s=DEFAULT_TIMEOUT_S,
             on_record=None, progress=None, honor_retry_after=False):
    """Send images to url from `threads` threads and return the Summary of the counted requests.

    The run is bounded by `duration_s` if given (requests in flight at the end
    still finish and count), else by `repeat` passes over the images. `warmup`
    requests go first and are not counted. `on_record(record)` is called for
    each counted request, one call at a time; `progress(Progress)` is called
    from the calling thread a few times a second and once at the end.
    Ctrl-C stops handing out images; the Summary then covers what finished
    and says interrupted=True. A 503 is followed at once by the next request
    unless `honor_retry_after`, which waits its Retry-After seconds first.
    """
    if not images:
        raise ValueError("no images to send")
    if threads < 1:
        raise ValueError(f"threads must be at least 1, not {threads}")
    if duration_s is None and repeat < 1:
        raise ValueError(f"repeat must be at least 1, not {repeat}")
    if duration_s is not None and duration_s <= 0:
        raise ValueError(f"duration must be positive, not {duration_s}")
    target = Target.parse(url)
    count = None if duration_s is not None else len(images) * repeat
    run = _Run(images, target, threads, count, duration_s, warmup, timeout_s, on_record, honor_retry_after)
    workers = [threading.Thread(target=run.worker, args=(i,), name=f"bench-{i}", daemon=True)
               for i in range(threads)]
    for w in workers:
        w.start()
    interrupted = False
    while any(w.is_alive() for w in workers):
        try:
            for w in workers:
                w.join(PROGRESS_INTERVAL_S / threads)
            if progress is not None:
                progress(run.progress())
        except KeyboardInterrupt:
            if interrupted:
                raise  # a second Ctrl-C: stop waiting for requests in flight
            interrupted = True
            run.stop()
    if run.failure is not None:
        raise run.failure
    if progress is not None:
        progress(run.progress())
    wall_s = (run.last_end - run.t0) if run.records else 0.0
    return summarize(run.records, wall_s, url=url, threads=threads, images=len(images),
                     warmup_requests=run.warmup_requests, warmup_errors=run.warmup_errors,
                     connections_opened=run.connections_opened, interrupted=interrupted)
