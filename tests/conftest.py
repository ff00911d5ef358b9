"""Shared test helpers: start a real detserve server as a subprocess on port 0.

The server prints ``detserve: listening on http://HOST:PORT`` and then
``detserve: ready ...`` on stderr; the helper waits for both, then hands the
test a base URL. Everything the server logs is kept so a test can read its
access log.
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

import pytest

from bench.server_process import worker_pids

REPO_ROOT = Path(__file__).resolve().parent.parent
INPUT_FOLDER = REPO_ROOT / "inputfolder"
LISTENING_LINE = re.compile(r"listening on http://[^:]+:(\d+)")
READY_LINE = r'detserve: ready|"message": "ready: '  # the text and the JSON log formats
START_TIMEOUT_S = 90


def sample_images():
    return sorted(p for p in INPUT_FOLDER.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))


class ServerProcess:
    """A detserve subprocess; use as a context manager."""

    def __init__(self, *args, env=None, wait_ready=True, preexec_fn=None):
        self.args = ["--host", "127.0.0.1", "--port", "0", *args]
        self.extra_env = env or {}
        self.wait_ready = wait_ready
        self.preexec_fn = preexec_fn  # runs in the child before exec, e.g. to lower its limits
        self.lines = []
        self._lines_changed = threading.Condition()
        self.port = None
        self.proc = None

    # -- lifecycle ---------------------------------------------------------
    def start(self):
        env = dict(os.environ)
        env.pop("DETSERVE_API_KEY", None)
        env.update(self.extra_env)
        env["PYTHONUNBUFFERED"] = "1"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "detserve", *self.args],
            cwd=REPO_ROOT, env=env, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            preexec_fn=self.preexec_fn,
        )
        threading.Thread(target=self._read_output, daemon=True).start()
        match = self.wait_for_line(LISTENING_LINE.pattern, timeout_s=START_TIMEOUT_S)
        self.port = int(LISTENING_LINE.search(match).group(1))
        if self.wait_ready:
            self.wait_for_line(READY_LINE, timeout_s=START_TIMEOUT_S)
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
                    raise AssertionError(
                        f"server exited ({self.proc.returncode}) before printing {pattern!r}:\n"
                        + "\n".join(self.lines[-40:]))
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"no line matching {pattern!r} in {timeout_s}s:\n"
                                         + "\n".join(self.lines[-40:]))
                self._lines_changed.wait(min(remaining, 0.2))

    def _more_output_possible(self):
        return not self.proc.stdout.closed and self.proc.returncode is None

    def stop(self, sig=signal.SIGTERM, timeout_s=30):
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
        return self.start()

    def __exit__(self, *exc):
        try:
            self.stop()
        except subprocess.TimeoutExpired:
            pass

    # -- talking to it -----------------------------------------------------
    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    def request(self, path, body=None, method=None, headers=None, timeout_s=60):
        """Return (status, headers, parsed JSON or text) for one HTTP request."""
        return http_request(self.url + path, body=body, method=method, headers=headers, timeout_s=timeout_s)

    def worker_pids(self):
        """PIDs of this server's worker processes."""
        return worker_pids(self.proc.pid)


def http_request(url, body=None, method=None, headers=None, timeout_s=60):
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


@pytest.fixture(scope="session")
def server():
    """One shared 2-worker server for tests that do not change its state."""
    with ServerProcess("--workers", "2") as srv:
        yield srv
