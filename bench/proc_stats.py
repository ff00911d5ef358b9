"""What the kernel counts for a process, read from /proc (Linux): resident memory, its peak, CPU time.

The one reader of these figures for the studies and the tests. Sizes are MiB
(the kernel counts KiB), as the studies print them and the tests compare them.
"""

import os
from pathlib import Path


def rss_mb(pid):
    """The process's resident set size now (VmRSS)."""
    return _status_kib(pid, "VmRSS") / 1024


def peak_rss_mb(pid):
    """The largest resident set size the process has had (VmHWM): it only ever grows."""
    return _status_kib(pid, "VmHWM") / 1024


def cpu_time_s(pid):
    """User + system CPU time of the whole process (every thread), from /proc/PID/stat."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()  # the command name may hold spaces and parentheses
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _status_kib(pid, key):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    # A zombie has no memory lines: a figure of 0 would read as a process that shrank.
    raise ProcessLookupError(f"/proc/{pid}/status has no {key}: the process has exited")
