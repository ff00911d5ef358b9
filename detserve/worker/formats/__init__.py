"""The wire formats a worker reads and answers: one module each, the same two functions.

The module of a TaskHeader's ``wire_format`` parses the task's body and builds
its answer; everything between (options, decoding, the forward pass) is the
same for every format. Each module provides:
- ``parse(body, header, config)``: the ParsedRequest, or raise the Refusal
  the whole task gets (config: the worker's Config, for its limits and key);
- ``answer(task, timings)``: the Result of a TaskJob whose images ran.
A format's refusals are worded in the front end (front/formats/), which
knows how its clients expect an error to look.
"""

from . import deepstack, native, open_inference

WORKER_FORMATS = {module.NAME: module for module in (native, deepstack, open_inference)}
