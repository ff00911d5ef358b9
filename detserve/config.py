"""The server's configuration: one object built from CLI flags with environment fallbacks.

Every flag ``--some-flag`` also reads ``DETSERVE_SOME_FLAG`` so that a
Kubernetes manifest can set it; a flag on the command line wins.
"""

import argparse
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Optional

from . import model_files
from .model_files import DEFAULT_MODEL_DIR
from .protocol import NMS_MODES

ENV_PREFIX = "DETSERVE_"
PROBE_PORT_OFF = "off"
# auto: reduced-scale decoding of large JPEGs (worker/image_decoding.jpeg_reduction); off: exact reproduction.
DECODE_REDUCTION_CHOICES = ("auto", "off")


@dataclass(frozen=True)
class Config:
    host: str = "0.0.0.0"
    port: int = 5050
    # /healthz, /readyz and /metrics on a listener of their own, so a flood of the API
    # port cannot starve them; None: only on the API port.
    probe_port: Optional[int] = 5051
    workers: int = 2
    # Measured on a 2-core CPU with `python -m detserve.calibrate`: per image,
    # batch 2 costs 4% more than batch 1 and batch 4 costs 14% more, so one image
    # per forward pass and never wait. Other CPUs may differ: calibrate there.
    max_batch: int = 1
    max_wait_ms: float = 0.0
    queue_size: int = 64
    request_timeout_s: float = 30.0
    drain_timeout_s: float = 20.0
    client_timeout_s: float = 10.0
    head_timeout_s: float = 5.0
    max_body_mb: float = 20.0
    # Bounds the front end's memory: bodies being read or held, across all
    # connections (8 maximal bodies by default); and connections, each a thread.
    max_body_buffer_mb: float = 160.0
    max_answer_buffer_mb: float = 64.0
    max_connections: int = 256
    max_pixels: int = 40_000_000
    max_images: int = 16
    decode_reduction: str = "auto"
    confidence: float = 0.3
    nms: float = 0.1
    nms_mode: str = "agnostic"
    models: str = model_files.DEFAULT_MODELS  # as written; model_choices is what it means
    model_dir: str = str(DEFAULT_MODEL_DIR)
    cv_threads: int = 0
    api_key: str = ""
    allow_origin: str = ""  # comma-separated origins whose pages may POST here from a browser
    log_format: str = "text"

    @property
    def max_body_bytes(self):
        return int(self.max_body_mb * 1024 * 1024)

    @property
    def max_body_buffer_bytes(self):
        return int(self.max_body_buffer_mb * 1024 * 1024)

    @property
    def allowed_origins(self):
        return frozenset(origin.strip() for origin in self.allow_origin.split(",") if origin.strip())

    @property
    def max_answer_buffer_bytes(self):
        return int(self.max_answer_buffer_mb * 1024 * 1024)

    @property
    def max_wait_s(self):
        return self.max_wait_ms / 1000.0

    @property
    def model_choices(self):
        """The models to serve, as model_files.ModelChoice, the default first (load_config has checked them)."""
        return model_files.parse_model_choices(self.models)

    def public_view(self):
        """The settings as a dict that is safe to log: the API key is never shown."""
        view = {f.name: getattr(self, f.name) for f in fields(self)}
        view["api_key"] = "set" if self.api_key else "unset"
        if self.probe_port is None:
            view["probe_port"] = PROBE_PORT_OFF
        return view


HELP = {
    "host": "address to listen on",
    "port": "port to listen on (0 picks a free port)",
    "probe_port": "port of a second listener that answers only /healthz, /readyz and /metrics, with its own "
                  "connection bound, for probes and scrapes (0 picks a free port; off: none, the API port "
                  "answers them as always)",
    "workers": "worker processes, each loading every --models model (its memory: docs/deployment.md, the sizing rule)",
    "max_batch": "most images one worker runs in one forward pass (a multi-image request runs in passes of "
                 "at most this many), and most requests it takes into one batch",
    "max_wait_ms": "how long a worker waits for more requests to fill a batch (0: take only what is queued)",
    "queue_size": "requests waiting for a worker; one that finds it full waits up to 1 s for room, then gets 503",
    "request_timeout_s": "deadline of a request, from arrival; past it the client gets 504",
    "drain_timeout_s": "on SIGTERM/SIGINT, how long accepted requests may take to finish",
    "client_timeout_s": "a kept-alive connection idle this long is closed, and a request body must arrive "
                        "within this",
    "head_timeout_s": "a new connection's request line and headers must arrive within this of connecting "
                      "(on a kept-alive connection, within this of their first byte)",
    "max_body_mb": "largest request body accepted, in MiB (413 above it)",
    "max_body_buffer_mb": "request body MiB the front end holds at once, across all connections "
                          "(a body that would pass it is refused with 503 before it is read)",
    "max_answer_buffer_mb": "answer bytes the front end holds at once until they are written, across all "
                            "connections, counting answers over 16 KiB (one that would pass it is refused with 503)",
    "max_connections": "open client connections (each has a thread); at the limit a new one takes the place of "
                       "the one that has waited longest for a request, and gets 503 only if every one is busy",
    "max_pixels": "largest image accepted, width x height (413 above it), checked before decoding",
    "max_images": "most images in one multi-image request {\"images\": [...]} (413 above it)",
    "decode_reduction": "auto: decode a large JPEG at 1/2, 1/4 or 1/8 scale while both sides stay >= 624 px "
                        "(boxes stay in the original's pixels); off: always decode in full",
    "confidence": "confidence threshold for a detection",
    "nms": "non-maximum suppression IoU threshold",
    "nms_mode": "agnostic: a box suppresses any overlapping box of lower confidence; "
                "per_class: only one of its own class (darknet's and YOLOv5's way)",
    "models": "comma-separated models to load, the first the default: "
              f"{', '.join(model_files.MODELS)}, each optionally at another input size, NAME@SIZE "
              f"(SIZE a multiple of {model_files.INPUT_SIZE_STEP_PX} from {model_files.MIN_INPUT_SIZE_PX} "
              f"to {model_files.MAX_INPUT_SIZE_PX}, e.g. yolov4-tiny@320)",
    "model_dir": "folder with every model's files (yolov3-tiny.cfg, yolov3-tiny.weights, coco.names, ...); "
                 "`python -m detserve.model_files --models ...` fetches them",
    "cv_threads": "OpenCV threads per forward pass (0: adapt to how many workers are busy)",
    "log_format": "access log format",
    "allow_origin": "comma-separated origins (scheme://host[:port]) whose web pages may send detection requests "
                    "from a browser; any other cross-site browser request is refused with 403",
}


def _env_default(name, default):
    return os.environ.get(ENV_PREFIX + name.upper(), default)


def build_parser():
    parser = argparse.ArgumentParser(
        prog="python -m detserve",
        description="Object-detection HTTP service (darknet YOLO models on OpenCV). "
                    "Every flag also reads DETSERVE_<FLAG> from the environment; flags win.",
    )
    for field in fields(Config):
        if field.name == "api_key":
            continue
        flag = "--" + field.name.replace("_", "-")
        # An environment value is a string; argparse converts defaults that are strings too.
        kwargs = {"default": _env_default(field.name, field.default), "type": field.type,
                  "help": f"{HELP[field.name]} (env {ENV_PREFIX}{field.name.upper()}, default %(default)s)"}
        if field.name == "log_format":
            kwargs["choices"] = ("text", "json")
        if field.name == "decode_reduction":
            kwargs["choices"] = DECODE_REDUCTION_CHOICES
        if field.name == "nms_mode":
            kwargs["choices"] = NMS_MODES
        if field.name == "probe_port":
            kwargs["type"] = port_or_off
        parser.add_argument(flag, **kwargs)
    parser.add_argument(
        "--api-key-file", default=_env_default("api_key_file", None),
        help="file holding the API key; when a key is set (here or in DETSERVE_API_KEY), "
             "/api/ requires 'Authorization: Bearer <key>'")
    return parser


def port_or_off(text):
    """A --probe-port value: a port number, or "off" (None)."""
    if text.strip().lower() == PROBE_PORT_OFF:
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is neither a port number nor {PROBE_PORT_OFF!r}") from None


def load_config(argv=None):
    """Parse argv (and the environment) into a validated Config; exits with usage on error."""
    parser = build_parser()
    args = parser.parse_args(argv)
    values = {f.name: getattr(args, f.name) for f in fields(Config) if f.name != "api_key"}
    api_key = os.environ.get(ENV_PREFIX + "API_KEY", "")
    if args.api_key_file:
        try:
            api_key = Path(args.api_key_file).read_text().strip()
        except OSError as exc:
            parser.error(f"cannot read --api-key-file: {exc}")
        if not api_key:
            parser.error(f"--api-key-file {args.api_key_file} is empty")
    config = Config(api_key=api_key, **values)
    problem = validate(config)
    if problem:
        parser.error(problem)
    return config


def validate(config):
    """Return a message for the first setting that cannot work, or None."""
    if not 0 <= config.port <= 65535:
        return "--port must be between 0 and 65535"
    if config.probe_port is not None:
        if not 0 <= config.probe_port <= 65535:
            return f"--probe-port must be between 0 and 65535, or {PROBE_PORT_OFF}"
        if config.probe_port == config.port != 0:
            return f"--probe-port must differ from --port (or be {PROBE_PORT_OFF})"
    positive = ("workers", "max_batch", "queue_size", "request_timeout_s", "drain_timeout_s",
                "client_timeout_s", "head_timeout_s", "max_body_mb", "max_body_buffer_mb", "max_answer_buffer_mb",
                "max_connections", "max_pixels", "max_images")
    for name in positive:
        if getattr(config, name) <= 0:
            return f"--{name.replace('_', '-')} must be greater than 0"
    if config.max_body_buffer_mb < config.max_body_mb:
        return "--max-body-buffer-mb must be at least --max-body-mb, or the largest body could never be read"
    if config.max_wait_ms < 0 or config.cv_threads < 0:
        return "--max-wait-ms and --cv-threads cannot be negative"
    if not (0 < config.confidence < 1 and 0 < config.nms <= 1):
        return "--confidence must be in (0, 1) and --nms in (0, 1]"
    try:
        config.model_choices
    except ValueError as exc:
        return str(exc)
    return None
