"""How many CPUs this process may really use, and how many OpenCV threads a batch gets.

Affinity alone over-counts inside a container: a pod limited to 2 CPUs on a
64-core node sees 64 cores, and 64 threads under a 2-CPU quota are throttled
hard. So the cgroup quota (v2 ``cpu.max``, v1 ``cfs_quota_us``) caps it.
"""

import math
import os
from pathlib import Path

CGROUP_V2_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")
CGROUP_V1_QUOTA = Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us")
CGROUP_V1_PERIOD = Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us")


def _cgroup_quota_cpus():
    try:
        quota, period = CGROUP_V2_CPU_MAX.read_text().split()[:2]
        if quota != "max":
            return max(1, math.ceil(int(quota) / int(period)))
    except (OSError, ValueError):
        pass
    try:
        quota = int(CGROUP_V1_QUOTA.read_text())
        period = int(CGROUP_V1_PERIOD.read_text())
        if quota > 0:
            return max(1, math.ceil(quota / period))
    except (OSError, ValueError):
        pass
    return None


def available_cpus():
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    quota = _cgroup_quota_cpus()
    return min(cpus, quota) if quota else cpus


def threads_for_batch(cpus, busy_workers, fixed_threads=0):
    """All CPUs for a worker that is alone, one each when every worker is busy.

    Latency at low load wants every core on one image; throughput at high load
    wants one single-threaded worker per core (measured: docs/performance.md).
    """
    if fixed_threads:
        return fixed_threads
    return max(1, cpus // max(1, busy_workers))
