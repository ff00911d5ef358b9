"""The GET routes: what each path answers, read from the server's state. A table, not branches.

Each route is a function (state, request headers) -> Answer; the handler
writes the Answer. With the wire formats' routes (front/formats: their
detection routes and the fixed answers some give, as FixedRoute) and the
page's assets, GET_ROUTES is every route the server answers, and what
openapi.json documents.
"""

import json
from dataclasses import dataclass, field
from typing import Callable, Tuple

from ..metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from ..protocol import JSON_MEDIA_TYPE
from ..refusals import not_found
from . import openapi, page
from .request_options import wants_html

WELCOME_TEXT = (
    "detserve: object detection with YOLOv3-tiny.\n"
    "POST /api/ with JSON {\"id\": \"...\", \"image\": \"<base64 JPEG or PNG>\"}\n"
    "  -> {\"id\": \"...\", \"detections\": [{\"label\", \"confidence\", \"bbox\": [x, y, w, h]}]}\n"
    "GET /healthz (liveness), /readyz (readiness), /metrics (Prometheus).\n"
)


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes
    content_type: str
    headers: dict = field(default_factory=dict)


@dataclass(frozen=True)
class FixedRoute:
    """A route a wire format answers from the server's state alone, without a worker."""

    label: str  # the metrics label: the route's template, never a client's value
    answer: Callable  # (state, request headers) -> Answer, or raise a Refusal
    methods: Tuple[str, ...] = ("GET", "HEAD")


def json_answer(status, payload):
    return Answer(status, json.dumps(payload).encode(), JSON_MEDIA_TYPE)


def root(state, headers):
    """The page for a browser; the short welcome text for everyone else (curl, old clients)."""
    if wants_html(headers.get("Accept")):
        return asset(page.index(), "/")
    # Vary: a cache must not hand the page to curl, or this text to a browser.
    return Answer(200, WELCOME_TEXT.encode(), "text/plain; charset=utf-8", {"Vary": "Accept"})


def asset(found, path):
    if found is None:
        raise not_found(f"no such page asset {path!r}")
    return Answer(200, found.body, found.content_type, found.headers)


def healthz(state, headers):
    if state.fatal_error:
        return json_answer(503, {"status": "failing", "reason": state.fatal_error})
    return json_answer(200, {"status": "ok"})


def readyz(state, headers):
    ready, reason = state.readiness()
    body = {"status": "ready" if ready else "not ready", "workers_ready": state.pool.ready_count(),
            "workers": state.config.workers}
    if not ready:
        body["reason"] = reason
    return json_answer(200 if ready else 503, body)


def metrics(state, headers):
    return Answer(200, state.metrics.render(state.gauge_readings()).encode(), METRICS_CONTENT_TYPE)


def labels(state, headers):
    return json_answer(200, list(state.labels))


def models(state, headers):
    return json_answer(200, list(state.models))


def openapi_document(state, headers):
    return Answer(200, openapi.document(state.model_names), JSON_MEDIA_TYPE)


GET_ROUTES = {"/": root, "/healthz": healthz, "/readyz": readyz, "/metrics": metrics,
              "/api/labels": labels, "/api/models": models, "/openapi.json": openapi_document}
