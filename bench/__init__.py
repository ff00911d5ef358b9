"""detserve's load client: measure the service the way users will.

Data flow::

    images.load_folder ──▶ loadgen.run_load ──▶ stats.summarize ──▶ report
         (base64 once)      (threads, one kept-     (percentiles,      (text, JSON,
                             alive connection        Summary)           CSV)
                             each; check.answer
                             judges every reply)

``sweep`` repeats ``run_load`` over thread counts; ``plot`` draws a sweep's
results; ``upscale`` makes a large-image set from a folder; ``overload``
reduces a no-back-off run (bench's own or ``wrk``'s) to goodput, refusals
and time-outs; ``proc_stats`` reads a process's memory and CPU time from
/proc; ``server_process`` starts detserve for the tests and the studies.
``run_load`` is importable so that the studies (``studies/`` in a checkout,
not installed) drive load in-process.
"""

from bench.images import Image, load_folder
from bench.loadgen import run_load
from bench.stats import Summary

__all__ = ["Image", "Summary", "load_folder", "run_load"]
