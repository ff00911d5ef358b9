"""Large buffers go back to the system when freed: the front end's malloc mmap threshold, fixed (glibc).

glibc serves an allocation above its mmap threshold (128 KiB at start) with a
mapping of its own and unmaps it when freed, but it raises the threshold to
the size of each such block freed, up to 32 MiB. After the first large answer
is freed, the next ones come from the heap instead, and a freed block in the
middle of a heap stays resident. The front end's answers (up to 15 MB) and
bodies (up to 20 MiB) are exactly such blocks: measured with 24 clients
reading annotated answers slowly, the front end peaked at 182 MiB and kept
100 MiB after they had gone, against 136 and 47 MiB with the threshold fixed.
Fixing it at 1 MiB (which also turns its adjustment off) makes every buffer
past 1 MiB a mapping of its own: resident while held, returned when freed,
so the front end's memory follows what its budgets count. Small allocations,
the many, are untouched. Where the C library has no mallopt (macOS) nothing
changes.
"""

import ctypes

M_MMAP_THRESHOLD = -3  # glibc's malloc.h
MMAP_THRESHOLD_BYTES = 1 << 20


def return_large_buffers_to_the_system():
    """Fix this process's mmap threshold at MMAP_THRESHOLD_BYTES; False where the C library cannot."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    return mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1
