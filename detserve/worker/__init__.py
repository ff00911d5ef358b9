"""Everything that runs in a worker process, and the only code that may import OpenCV or numpy.

``main.worker_main`` is the process's entry point; it imports the rest (and
so OpenCV) in its boot step, where a failure is reported as a boot failure.
"""
