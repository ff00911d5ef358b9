"""detserve as a subprocess on 127.0.0.1, port 0: the one launcher of the tests and the benchmarks.

The server prints ``listening on http://HOST:PORT (pid N), probes on
http://HOST:PORT`` and then ``ready: N workers in S s`` (in the text and the
JSON log formats alike); ServerProcess waits for both, keeps every line the server writes (a test reads its access
log from them) and keeps draining its output, so a full pipe never blocks
the server.
"""

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
LISTENING_LINE = re.compile(r"listening on http://[^:]+:(\d+)")
PROBES_LINE = re.compile(r"probes on http://[^:]+:(\d+)")
READY_LINE = re.compile(r"ready: \d+ workers in ([\d.]+) s")
# Loading the model in every worker takes seconds; on a loaded 2-core machine, tens.
START_TIMEOUT_S = 90


UNKNOWN_FLAG = re.compile(r"error: unrecognized arguments: (.*)")


class ServerFailed(AssertionError):
    """The server exited, or stayed silent, before printing a line someone waits for.

    An AssertionError, so that a test reports it as the failure it is.
    """


class ServerRejectedArguments(ServerFailed):
    """The server exited at start because it does not know a flag it was given (an older server)."""


class ServerProcess:
    """A detserve subprocess; use as a context manager, or start() and stop().

    args are detserve's flags (host and port are set here); env adds to (or,
    for DETSERVE_API_KEY, restores) the environment; preexec_fn runs in the
    child before detserve starts, e.g. to lower a resource limit. The probe
    listener gets a free port too (DETSERVE_PROBE_PORT=0, which an older
    server ignores), read into probe_port.
    """

    def __init__(self, *args, env=None, wait_ready=True, preexec_fn=None, start_timeout_s=START_TIMEOUT_S):
        self.args = ["--host", "127.0.0.1", "--port", "0", *args]
        self.extra_env = env or {}
        self.wait_ready = wait_ready
        self.preexec_fn = preexec_fn
        self.start_timeout_s = start_timeout_s
        self.lines = []                              # every line the server printed, stdout and stderr
        self._lines_changed = threading.Condition()  # notified on each new line and at EOF
        self.port = None
        self.probe_port = None                       # None: the server has no probe listener
        self.startup_s = None                        # what the ready line says: start to every worker ready
        self.proc = None

    # -- lifecycle ---------------------------------------------------------
    def start(self):
        env = dict(os.environ)
        env.pop("DETSERVE_API_KEY", None)  # a key in the caller's shell would turn on auth
        env["DETSERVE_PROBE_PORT"] = "0"  # never the fixed default: servers run side by side
        env.update(self.extra_env)
        env["PYTHONUNBUFFERED"] = "1"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "detserve", *self.args],
            cwd=REPO_ROOT, env=env, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, preexec_fn=self.preexec_fn,
        )
        threading.Thread(target=self._read_output, daemon=True).start()
        listening = self.wait_for_line(LISTENING_LINE.pattern, timeout_s=self.start_timeout_s)
        self.port = int(LISTENING_LINE.search(listening).group(1))
        probes = PROBES_LINE.search(listening)
        self.probe_port = int(probes.group(1)) if probes else None
        if self.wait_ready:
            ready = self.wait_for_line(READY_LINE.pattern, timeout_s=self.start_timeout_s)
            self.startup_s = float(READY_LINE.search(ready).group(1))
        return self

    def _read_output(self):
        for line in self.proc.stdout:
            with self._lines_changed:
                self.lines.append(line.rstrip("\n"))
                self._lines_changed.notify_all()
        with self._lines_changed:
            self._lines_changed.notify_all()

    def wait_for_line(self, pattern, timeout_s=30, start=0):
        """Return the first output line from index `start` on matching pattern."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout_s
        with self._lines_changed:
            while True:
                for line in self.lines[start:]:
                    if regex.search(line):
                        return line
                if self.proc.poll() is not None and not self._more_output_possible():
                    unknown = next(filter(None, map(UNKNOWN_FLAG.search, self.lines)), None)
                    if unknown:
                        raise ServerRejectedArguments(f"this server does not know {unknown.group(1).strip()}")
                    raise ServerFailed(
                        f"server exited ({self.proc.returncode}) before printing {pattern!r}:\n"
                        + "\n".join(self.lines[-40:]))
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise ServerFailed(f"no line matching {pattern!r} in {timeout_s}s:\n"
                                       + "\n".join(self.lines[-40:]))
                self._lines_changed.wait(min(remaining, 0.2))

    def _more_output_possible(self):
        return not self.proc.stdout.closed and self.proc.returncode is None

    def stop(self, sig=signal.SIGTERM, timeout_s=30):
        """Send sig and wait for the exit; SIGKILL (and re-raise) if it takes longer than timeout_s."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise

    def __enter__(self):
        try:
            return self.start()
        except BaseException:
            self.stop(signal.SIGKILL)  # a server that never became ready must not outlive the caller
            raise

    def __exit__(self, *exc):
        try:
            self.stop()
        except subprocess.TimeoutExpired:
            pass

    # -- talking to it -----------------------------------------------------
    @property
    def url(self):
        """The base URL, without a path: http://127.0.0.1:PORT."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_url(self):
        """The detection endpoint, as the load client takes it."""
        return self.url + "/api/"

    def request(self, path, body=None, method=None, headers=None, timeout_s=60):
        """Return (status, headers, parsed JSON or text) for one HTTP request."""
        return http_request(self.url + path, body=body, method=method, headers=headers, timeout_s=timeout_s)

    def worker_pids(self):
        """PIDs of this server's worker processes."""
        return worker_pids(self.proc.pid)


def http_request(url, body=None, method=None, headers=None, timeout_s=60):
    """Return (status, headers, payload): JSON parsed, anything else as text. A dict or list body is sent as JSON."""
    if isinstance(body, (dict, list)):
        body = json.dumps(body).encode()
        headers = {"Content-Type": "application/json", **(headers or {})}
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            status, resp_headers, raw = resp.status, resp.headers, resp.read()
    except urllib.error.HTTPError as err:
        status, resp_headers, raw = err.code, err.headers, err.read()
    content_type = resp_headers.get("Content-Type", "")
    payload = json.loads(raw) if content_type.startswith("application/json") else raw.decode("utf-8", "replace")
    return status, resp_headers, payload


def worker_pids(server_pid):
    """PIDs of a detserve server's worker processes, read from /proc (Linux)."""
    # A replacement worker is the child of the thread that spawned it: ask every thread.
    children = []
    for task in Path(f"/proc/{server_pid}/task").iterdir():
        children.extend(int(pid) for pid in _read_or_empty(task / "children").split())
    # Workers run multiprocessing's spawn_main; the resource tracker does not.
    return [pid for pid in children if b"spawn_main" in _read_or_empty(Path(f"/proc/{pid}/cmdline"), binary=True)]


def _read_or_empty(path, binary=False):
    """A /proc file, or empty if its thread or process ended since it was listed."""
    try:
        return path.read_bytes() if binary else path.read_text()
    except (FileNotFoundError, ProcessLookupError):
        return b"" if binary else ""
