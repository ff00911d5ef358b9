"""How much memory a detserve needs, from its settings: the front end's ceiling, a worker's, the whole server's.

Every figure is MiB of resident memory, measured on this machine by the study
named beside it. A pod's memory limit is sized from server_mib
(manifests/deployment.yml; tests/test_manifests.py checks it):

    front end <= 35 + 1.125 x --max-body-buffer-mb + --max-answer-buffer-mb
                 + 3 x --max-batch x the largest answer + 0.15 x --max-connections
    worker    <= 80 + for each --models model: its share once ready + its growth per image
                 x --max-batch (model_files.worker_share_mib; a pass holds at most --max-batch images)
                 + --max-batch x (6.5 bytes x --max-pixels + 2.75 x --max-body-mb)
    server    <= front end + --workers x worker + 12 (the resource tracker)

Standard library only, like the front end it sizes.
"""

import math
from dataclasses import fields

from . import model_files
from .config import ENV_PREFIX, Config, port_or_off

MIB = 1 << 20

# -- the front end (python -m studies.front_end_memory) ----------------------------------------
FRONT_END_IDLE_MIB = 35  # the idle process, measured at 26-28 MiB
# A body buffer grows by at most an eighth over the bytes in it.
BODY_BUFFER_OVERHEAD = 1.125
# Answers held while written are counted by their length; past 1 MiB each is a mapping of its
# own, gone when freed (front/large_buffers), so what is held is what is resident.
ANSWER_BUFFER_OVERHEAD = 1.0
# Answers no budget counts yet, for each answer a batch sends: the message being read from a
# worker and its unpickled copy, and one that has arrived and is being let go (refused with 503
# because the answer budget is held, or its client gone).
ANSWERS_IN_TRANSIT = 3
# The largest answer there is: an annotated JPEG of noise at its bound of 4096 x 4096 pixels
# (worker/annotation.py) is 15.0 MB at quality 90, 0.9 bytes a pixel.
MAX_ANNOTATED_PIXELS = 4096 * 4096
ANNOTATED_ANSWER_BYTES_PER_PIXEL = 0.9
# A connection's thread, its 64 KiB write buffer, its read buffer and a request head of at most 32 KiB.
CONNECTION_MIB = 0.15

# -- a worker (python -m studies.worker_memory; each model's share is in its model_files entry) ---
WORKER_BASE_MIB = 80  # Python, numpy and OpenCV imported, no model loaded
# Decoding the largest image holds its pixels (3 bytes each, BGR), the decoder's buffers and, for
# an annotated answer, the drawn copy and its JPEG: measured 6.1-6.2 bytes a pixel at 16 MP
# (a noise PNG, as JSON and annotated), 5.6 for a 40 MP PNG, 2.9 for a progressive 40 MP JPEG.
DECODE_BYTES_PER_PIXEL = 6.5
# A request's body in the worker: the bytes read from the pipe, their unpickled copy and the
# image base64 in them decodes to (three quarters of their size).
BODY_COPIES_IN_WORKER = 2.75
OTHER_PROCESSES_MIB = 12  # multiprocessing's resource tracker, a process of its own (11 MiB measured)


def largest_answer_mib(config):
    """The largest answer a worker can send: an annotated JPEG of noise, of at most MAX_ANNOTATED_PIXELS."""
    return min(config.max_pixels, MAX_ANNOTATED_PIXELS) * ANNOTATED_ANSWER_BYTES_PER_PIXEL / MIB


def front_end_ceiling_mib(config):
    """The front end's resident memory at its worst: both budgets held, every connection open, answers in transit."""
    in_transit_mib = ANSWERS_IN_TRANSIT * config.max_batch * largest_answer_mib(config)
    return (FRONT_END_IDLE_MIB + BODY_BUFFER_OVERHEAD * config.max_body_buffer_mb
            + ANSWER_BUFFER_OVERHEAD * config.max_answer_buffer_mb + in_transit_mib
            + CONNECTION_MIB * config.max_connections)


def worker_mib(config):
    """One worker's resident memory at its worst: every model grown for the largest pass, the largest requests."""
    images_per_pass = config.max_batch  # a multi-image request runs in passes of at most --max-batch images
    models_mib = sum(model_files.worker_share_mib(choice, images_per_pass) for choice in config.model_choices)
    request_mib = config.max_pixels * DECODE_BYTES_PER_PIXEL / MIB + BODY_COPIES_IN_WORKER * config.max_body_mb
    return WORKER_BASE_MIB + models_mib + config.max_batch * request_mib


def server_mib(config):
    """Everything a server with config holds at its worst: the front end, every worker, the resource tracker."""
    return front_end_ceiling_mib(config) + config.workers * worker_mib(config) + OTHER_PROCESSES_MIB


def config_from_environment(environment):
    """The Config DETSERVE_* variables make ({name: text}, as a container's env gives them); others are ignored."""
    values = {}
    for field in fields(Config):
        text = environment.get(ENV_PREFIX + field.name.upper())
        if text is not None:
            values[field.name] = port_or_off(text) if field.name == "probe_port" else field.type(text)
    return Config(**values)


def workers_for_cpus(cpu_quantity):
    """DETSERVE_WORKERS from a Kubernetes CPU quantity ("1", "1500m"), as the Downward API hands it: rounded up."""
    text = str(cpu_quantity)
    return math.ceil(int(text[:-1]) / 1000 if text.endswith("m") else float(text))
