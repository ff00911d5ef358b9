"""Logging: lifecycle messages and one access-log line per request, as text or JSON.

Access lines never carry image data or the API key: only the fields named in
ACCESS_FIELDS are written.
"""

import json
import logging
import re
import sys
import time

ACCESS_FIELDS = ("remote", "method", "path", "status", "bytes", "duration_ms",
                 "request_id", "image_id", "batch_size", "error")
access_log = logging.getLogger("detserve.access")
# Printable ASCII without space or '"': written bare. Anything else (a newline or an
# escape sequence in a client's image id or path) is JSON-quoted, so one request
# stays one line and a client cannot forge a second one.
BARE_TEXT = re.compile(r'[!#-~]+')


def _text_value(value):
    text = str(value)
    return text if BARE_TEXT.fullmatch(text) else json.dumps(text)


class TextFormatter(logging.Formatter):
    def format(self, record):
        fields = getattr(record, "access", None)
        if fields is None:
            line = f"detserve: {record.getMessage()}"
            return line + "\n" + self.formatException(record.exc_info) if record.exc_info else line
        request_line = json.dumps(f'{fields["method"]} {fields["path"]}')  # the path is the client's
        line = (f'{fields["remote"]} {request_line} {fields["status"]} {fields["bytes"]}B '
                f'{fields["duration_ms"]:.1f}ms rid={_text_value(fields["request_id"])}')
        for key in ("image_id", "batch_size", "error"):
            if fields.get(key) not in (None, ""):
                line += f" {key}={_text_value(fields[key])}"
        return line


class JsonFormatter(logging.Formatter):
    def format(self, record):
        entry = {"ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
                 + f".{int(record.msecs):03d}Z"}
        fields = getattr(record, "access", None)
        if fields is None:
            entry.update(level=record.levelname.lower(), logger=record.name, message=record.getMessage())
            if record.exc_info:  # the traceback stays inside this one JSON line
                entry["exception"] = self.formatException(record.exc_info)
        else:
            entry.update({"level": "info", "logger": record.name,
                          **{k: fields.get(k) for k in ACCESS_FIELDS}})
        return json.dumps(entry)


def configure(log_format):
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    root = logging.getLogger("detserve")
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    root.propagate = False


def log_access(**fields):
    access_log.info("access", extra={"access": fields})
