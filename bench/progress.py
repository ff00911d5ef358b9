"""The live progress line on stderr: rewritten in place while a run goes, wiped when it ends.

It stays silent when the stream is not a terminal, so logs and pipes get
only the final summary.
"""

import sys


class ProgressLine:
    """A callable for run_load's `progress`; call close() when the run returns."""

    def __init__(self, stream=None, enabled=None):
        self._stream = stream if stream is not None else sys.stderr
        self._enabled = self._stream.isatty() if enabled is None else enabled
        self._width = 0

    def __call__(self, progress):
        if not self._enabled:
            return
        self._write(_describe(progress))

    def close(self):
        if self._enabled and self._width:
            self._write("")
            self._stream.write("\r")
            self._stream.flush()
            self._width = 0

    def _write(self, text):
        # Padding to the previous width wipes what a longer earlier line left behind.
        self._stream.write("\r" + text.ljust(self._width))
        self._stream.flush()
        self._width = len(text)


def _describe(p):
    threads = f"{p.threads} thread" + ("" if p.threads == 1 else "s")
    if p.warming_up:
        return f"{threads}: warming up {p.done}/{p.total}"
    done = f"{p.done}/{p.total} done" if p.total is not None else f"{p.done} done"
    clock = f"{p.elapsed_s:.1f}/{p.duration_s:g} s" if p.duration_s is not None else f"{p.elapsed_s:.1f} s"
    rate = p.done / p.elapsed_s if p.elapsed_s > 0 else 0.0
    errors = f"{p.errors} error" + ("" if p.errors == 1 else "s")
    return f"{threads}: {done}  {rate:.1f} req/s  {errors}  {clock}"
