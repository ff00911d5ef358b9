"""The Result of a task whose images went through the forward pass: JSON, annotated JPEG or several.

Requests without options answer exactly as before: the same JSON, key order
and float repr (json.dumps of the same dict).
"""

import json

from ..protocol import OUTPUT_MEDIA_TYPES, Result
from ..refusals import Refusal
from .annotation import annotate_jpeg

# The whole response head must fit a proxy's buffer: nginx's default proxy_buffer_size
# is one 4 KiB page, and a head larger than that fails the request at the proxy. So
# X-Detections keeps the most confident detections that fit in 3 KiB (about 35) and
# X-Detections-Truncated says how many were left out; the JPEG itself is not limited.
MAX_DETECTIONS_HEADER_BYTES = 3 * 1024


def detections_json(detections):
    return [detection.as_json() for detection in detections]


def single_answer(task, job, timings):
    """The Result of a one-image task: its detections as JSON, or drawn on the image as JPEG."""
    labels = tuple(d.label for d in job.detections)
    if task.header.output_format == "json":
        body = json.dumps({"id": job.image_id, "detections": detections_json(job.detections)}).encode()
        return Result(task.header.task_id, 200, body, image_id=job.image_id, labels=labels, **timings)
    class_ids = {label: i for i, label in enumerate(task.labels)}
    jpeg = annotate_jpeg(job.full_pixels, job.original_size_px, job.detections, class_ids, job.options.max_side_px)
    return Result(task.header.task_id, 200, jpeg, image_id=job.image_id, labels=labels,
                  content_type=OUTPUT_MEDIA_TYPES[task.header.output_format],
                  headers=detections_headers(job.detections), **timings)


def several_answer(task, timings):
    """The Result of a multi-image task: 200 with one entry per image, in order, errors included."""
    entries, labels = [], []
    for entry in task.entries:
        if isinstance(entry, Refusal):
            entries.append({"id": entry.image_id, "error": entry.message, "status": entry.status})
            continue
        entries.append({"id": entry.image_id, "detections": detections_json(entry.detections)})
        labels.extend(d.label for d in entry.detections)
    body = json.dumps({"results": entries}).encode()
    return Result(task.header.task_id, 200, body, labels=tuple(labels), images_run=len(task.image_jobs()),
                  **timings)


def detections_headers(detections):
    """X-Detections (compact JSON, bounded), and X-Detections-Truncated when some did not fit."""
    items = [json.dumps(d.as_json(), separators=(",", ":")) for d in detections]
    budget = MAX_DETECTIONS_HEADER_BYTES - 2  # the brackets
    kept = set()
    for i in sorted(range(len(items)), key=lambda i: -detections[i].confidence):
        cost = len(items[i]) + (1 if kept else 0)  # a comma after the first
        if cost > budget:
            break
        kept.add(i)
        budget -= cost
    headers = [("X-Detections", "[" + ",".join(items[i] for i in sorted(kept)) + "]")]
    if len(kept) < len(items):
        headers.append(("X-Detections-Truncated", str(len(items) - len(kept))))
    return tuple(headers)
