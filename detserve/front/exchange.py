"""DetectionExchange: one detection request, from its head to its answer, in any wire format.

    admit (the format's auth, draining, framing) ─▶ the format's media type
      ─▶ the query and Accept, read once ─▶ the format's task fields (model, format fields)
      ─▶ read the body, charged to the body budget as it arrives ─▶ TaskHeader + body to the pool
      ─▶ wait for the worker's Result until the deadline ─▶ the handler writes it, held in the answer budget

The body's bytes stay charged until the answer is written, and the answer's
from when it arrives until the client has it (or is dropped for reading too
slowly), so the two budgets count every byte the front end holds for a request. What differs between wire
formats (paths, media types, the fields they add, how errors look) is the
format module's (front/formats); the exchange never asks which one it runs.
"""

import time
from urllib.parse import urlsplit

from ..pool.pending import PendingRequest
from ..protocol import TaskHeader
from ..refusals import deadline_exceeded
from . import admission, request_options


class DetectionExchange:
    def __init__(self, state):
        self.state = state  # ServerState

    def run(self, http, wire_format, params, write_result):
        """Run one request; write_result(result) writes its answer while the body is still reserved.

        http is the request's handler: its headers, path and request_id, and
        receive_body(length, reservation) to read the body. Raises the Refusal of a request
        refused on the way.
        """
        state, config = self.state, self.state.config
        arrived_s = time.monotonic()
        body_length, auth_fields = admission.admit(http.headers, config, state.draining, wire_format.authorize)
        media_type = wire_format.media_type(http.headers)
        options = request_options.parse(urlsplit(http.path).query, http.headers.get("Accept"))
        # Before the body: a request for a model the server does not run reads none of it.
        format_header = wire_format.task_fields(http.headers, options, params, state.model_names)
        format_header["format_fields"] = {**format_header.get("format_fields", {}), **auth_fields}
        with state.body_budget.reading(body_length) as reservation:  # charged as the body arrives
            body = http.receive_body(body_length, reservation)
            header = TaskHeader(**{
                "task_id": state.next_task_id(), "request_id": http.request_id, "media_type": media_type,
                "query_image_id": options.image_id, "enqueued_at_s": time.monotonic(),
                "deadline_at_s": arrived_s + config.request_timeout_s, "query_options": options.detection_options,
                "output_format": options.output_format, "wire_format": wire_format.NAME,
                **format_header})  # a format may set any of these its own way (DeepStack answers JSON only)
            pending = PendingRequest(header, body)
            del body  # the pending request holds it until a sender has written it to a worker
            state.pool.submit(pending)
            result = pending.wait(header.deadline_at_s - time.monotonic())
            if result is None:
                raise deadline_exceeded(config.request_timeout_s, options.image_id)
            # Held until the slowest reader has it, or is dropped.
            with state.answer_budget.holding(len(result.body), result.image_id):
                write_result(result)
