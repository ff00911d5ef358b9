"""detserve as a subprocess on 127.0.0.1 for the benchmarks: started, timed to ready, stopped."""

import re
import subprocess
import sys
import threading
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
LISTENING = re.compile(r"listening on http://[^:]+:(\d+)")
READY = re.compile(r"ready: \d+ workers in ([\d.]+) s")
UNKNOWN_FLAG = re.compile(r"error: unrecognized arguments: (.*)")


class ServerRejectedArguments(RuntimeError):
    """The server exited at start because it does not know a flag it was given (an older server)."""


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


class ServerUnderTest:
    """detserve as a subprocess on a free port; stopped with SIGTERM on exit."""

    def __init__(self, workers, extra_args):
        self.args = [sys.executable, "-m", "detserve", "--host", "127.0.0.1", "--port", "0",
                     "--workers", str(workers), *extra_args]

    def __enter__(self):
        self.proc = subprocess.Popen(self.args, cwd=REPO_ROOT, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True)
        self.port = self.startup_s = None
        early_lines = []
        for line in self.proc.stderr:
            early_lines.append(line)
            if self.port is None and LISTENING.search(line):
                self.port = int(LISTENING.search(line).group(1))
            match = READY.search(line)
            if match:
                self.startup_s = float(match.group(1))
                break
        if self.startup_s is None:
            unknown = next((UNKNOWN_FLAG.search(line) for line in early_lines if UNKNOWN_FLAG.search(line)), None)
            self.proc.wait(timeout=60)
            if unknown:
                raise ServerRejectedArguments(f"this server does not know {unknown.group(1).strip()}")
            raise RuntimeError(f"detserve did not become ready (exit code {self.proc.poll()})")
        # Keep draining its log so a full pipe never blocks the server.
        threading.Thread(target=lambda: [None for _ in self.proc.stderr], daemon=True).start()
        return self

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}/api/"

    def worker_pids(self):
        return worker_pids(self.proc.pid)

    def __exit__(self, *exc):
        self.proc.terminate()
        self.proc.wait(timeout=60)
