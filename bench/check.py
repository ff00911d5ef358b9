"""Judging one reply against the API contract: what counts as success, and each kind of error.

Error kinds, as they appear in summaries and CSV files:

- ``http_<status>``  the server answered with a status other than 200
- ``invalid_body``   a 200 whose body is not the documented JSON
- ``wrong_id``       a 200 whose ``id`` is not the one sent
- ``timeout``        no complete reply within ``--timeout``
- ``connection``     refused, reset or closed before a complete reply
"""

import json
from dataclasses import dataclass

TIMEOUT = "timeout"
CONNECTION = "connection"
INVALID_BODY = "invalid_body"
WRONG_ID = "wrong_id"
DETAIL_MAX_CHARS = 200


@dataclass(frozen=True)
class Verdict:
    error: str = None  # one of the kinds above, None on success
    detail: str = ""
    labels: tuple = ()  # one per detection, in the server's order


def http_error_kind(status):
    return f"http_{status}"


def judge(status, headers, body, sent_id):
    """Return the Verdict on one complete HTTP reply (headers: a mapping) to a request that carried sent_id."""
    if status != 200:
        detail = _error_detail(body)
        if headers.get("Retry-After"):
            detail += f" (Retry-After: {headers['Retry-After']})"
        return Verdict(http_error_kind(status), detail)
    content_type = headers.get("Content-Type", "")
    if not content_type.startswith("application/json"):
        return Verdict(INVALID_BODY, f"Content-Type is {content_type or 'missing'}, not application/json")
    try:
        answer = json.loads(body)
    except ValueError:
        return Verdict(INVALID_BODY, "body is not JSON: " + _snippet(body))
    problem = _contract_problem(answer)
    if problem:
        return Verdict(INVALID_BODY, problem)
    if answer["id"] != sent_id:
        return Verdict(WRONG_ID, f"sent id {sent_id}, got {answer['id']!r}")
    return Verdict(labels=tuple(d["label"] for d in answer["detections"]))


def _contract_problem(answer):
    """Say what in a parsed 200 body breaks the documented shape, or return None."""
    if not isinstance(answer, dict):
        return f"body is a JSON {type(answer).__name__}, not an object"
    if not isinstance(answer.get("id"), str):
        return "no string 'id' in the body"
    detections = answer.get("detections")
    if not isinstance(detections, list):
        return "no list 'detections' in the body"
    for d in detections:
        if not (isinstance(d, dict) and isinstance(d.get("label"), str)
                and _is_number(d.get("confidence")) and _is_box(d.get("bbox"))):
            return "a detection lacks label (str), confidence (number) or bbox ([x, y, w, h]): " + _snippet(
                json.dumps(d).encode())
    return None


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_box(value):
    return isinstance(value, list) and len(value) == 4 and all(_is_number(v) for v in value)


def _error_detail(body):
    """The server's own error message when it sent the documented error JSON, else the start of the body."""
    try:
        message = json.loads(body).get("error")
    except (ValueError, AttributeError):
        message = None
    return str(message)[:DETAIL_MAX_CHARS] if message else _snippet(body)


def _snippet(body):
    text = body.decode("utf-8", "replace").strip()
    return text[:DETAIL_MAX_CHARS] + ("..." if len(text) > DETAIL_MAX_CHARS else "")
