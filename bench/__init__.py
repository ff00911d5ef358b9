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
and time-outs; ``perf`` puts small images, large images and overload side
by side. ``run_load`` is importable so that other benchmarks can drive load
in-process.
"""

from bench.images import Image, load_folder
from bench.loadgen import run_load
from bench.stats import Summary

__all__ = ["Image", "Summary", "load_folder", "run_load"]
