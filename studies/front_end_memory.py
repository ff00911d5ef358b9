"""The front end's memory at its worst: every connection open, every answer and body byte of both budgets held.

`python -m studies.front_end_memory [--deployment]` starts detserve and fills
what the front end bounds, all at once:

1. Answers: annotated answers of a noise PNG (a 1 MB upload whose JPEG is as
   large as an annotated answer gets, about 15 MB), each read by a client
   that takes it just above the minimum rate the server enforces, so none is
   dropped and each is held for minutes; more of them until one is refused
   with 503 because --max-answer-buffer-mb is held. Their bodies stay charged
   to the body budget while their answers are written.
2. Bodies: the workers stopped with SIGSTOP, bodies of --max-body-mb sent whole
   (a body is charged as it arrives, and one that stops arriving is dropped
   within seconds, so the bodies that hold the budget longest are complete
   ones waiting for a worker), and one of the rest, until
   --max-body-buffer-mb is held.
3. Connections: the rest of --max-connections with request heads of just
   under 32 KiB that never end (the head timeout raised so that they stay).

It prints the front end's resident memory (VmRSS, and the peak VmHWM) idle and
filled beside the ceiling detserve.memory_sizing states, and what the kernel
holds in the server's socket queues (not resident memory, but charged to a
container's memory cgroup). With --deployment, the settings of
manifests/deployment.yml (one worker, DETSERVE_MAX_PIXELS, the body and
answer budgets, the connection bound) instead of the defaults.
"""

import argparse
import dataclasses
import os
import signal
import socket
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import yaml

from bench.proc_stats import peak_rss_mb, rss_mb
from bench.server_process import REPO_ROOT, ServerProcess
from detserve import memory_sizing
from detserve.config import ENV_PREFIX, Config

HEAD_FILLER_BYTES = 31 * 1024
MIB = 1 << 20
# Above the server's 64 KiB/s minimum with room to spare, so no reader is dropped.
READ_RATE_BYTES_PER_S = 80 * 1024
READ_BYTES = 8 * 1024
# A small receive window: the answer waits in the server, not in this client's kernel.
READER_RCVBUF_BYTES = 64 * 1024
NOISE_PERIOD_PX = 64  # each row repeats every 64 px: PNG compresses it ~50x, JPEG cannot
ANNOTATED_SIDE_PX = 4096  # an annotated answer holds at most 4096 x 4096 pixels
DEPLOYMENT = REPO_ROOT / "manifests" / "deployment.yml"
SETTINGS = ("workers", "max_body_mb", "max_body_buffer_mb", "max_answer_buffer_mb", "max_connections",
            "max_pixels", "max_batch")


def noise_png(side_px):
    """A square PNG of about 1 MB at 4096 px whose annotated JPEG is as large as they come (~0.9 bytes a pixel)."""
    tile = np.random.default_rng(18).integers(0, 256, (side_px, NOISE_PERIOD_PX, 3), dtype=np.uint8)
    image = np.tile(tile, (1, side_px // NOISE_PERIOD_PX, 1))
    ok, encoded = cv2.imencode(".png", image, [cv2.IMWRITE_PNG_COMPRESSION, 9])
    assert ok
    return encoded.tobytes()


class AnswerReader(threading.Thread):
    """One client asking for an annotated answer and reading it at READ_RATE_BYTES_PER_S until stopped."""

    def __init__(self, port, body):
        super().__init__(daemon=True)
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, READER_RCVBUF_BYTES)
        self.sock.settimeout(60)
        self.sock.connect(("127.0.0.1", port))
        self.sock.sendall(b"POST /api/?format=jpeg HTTP/1.1\r\nHost: s\r\nContent-Type: image/png\r\n"
                          b"Content-Length: %d\r\n\r\n" % len(body) + body)
        self.status, self.length = self._read_head()
        self.received_bytes = 0
        self.dropped = False
        self.stopping = threading.Event()

    def _read_head(self):
        head = b""
        while b"\r\n\r\n" not in head:
            byte = self.sock.recv(1)
            if not byte:
                raise ConnectionError("closed before the answer's head")
            head += byte
        lines = head.split(b"\r\n")
        length = next(int(line.split(b":")[1]) for line in lines if line.lower().startswith(b"content-length:"))
        return int(lines[0].split()[1]), length

    def run(self):
        started_s = time.monotonic()
        while not self.stopping.is_set() and self.received_bytes < self.length:
            try:
                chunk = self.sock.recv(READ_BYTES)
            except OSError:
                chunk = b""
            if not chunk:
                self.dropped = self.received_bytes < self.length
                return
            self.received_bytes += len(chunk)
            due_s = started_s + self.received_bytes / READ_RATE_BYTES_PER_S
            self.stopping.wait(max(0.0, due_s - time.monotonic()))

    def close(self):
        self.stopping.set()
        self.join(timeout=5)
        self.sock.close()


def held_upload(port, body_bytes):
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.sendall(b"POST /api/ HTTP/1.1\r\nHost: b\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n" % body_bytes)
    sock.sendall(b"{" + b" " * (body_bytes - 2) + b"}")  # whole: it waits for the stopped worker
    return sock


def unfinished_head(port):
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    lines = [b"GET /healthz HTTP/1.1", b"Host: b"] + [b"X-Filler-%03d: %s" % (i, b"a" * 980) for i in range(31)]
    sock.sendall(b"\r\n".join(lines)[:HEAD_FILLER_BYTES] + b"\r\n")  # no blank line: the head never ends
    return sock


def socket_queues_mb(port):
    """MiB the kernel holds in the send and receive queues of the server's sockets on port (/proc/net/tcp)."""
    total_bytes = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[1].split(":")[1], 16) == port:
            tx_hex, rx_hex = fields[4].split(":")
            total_bytes += int(tx_hex, 16) + int(rx_hex, 16)
    return total_bytes / MIB


def fill_answer_budget(port, body):
    """AnswerReaders holding answers until one more is refused; (readers, the refused one's status)."""
    readers = []
    while True:
        reader = AnswerReader(port, body)
        if reader.status != 200:
            reader.sock.close()
            return readers, reader.status
        reader.start()
        readers.append(reader)


def fill_body_budget(port, config, bodies_held_bytes):
    """Whole uploads, waiting for the stopped workers, until the body budget is held; their sockets."""
    room_bytes = config.max_body_buffer_bytes - bodies_held_bytes
    sizes = [config.max_body_bytes] * (room_bytes // config.max_body_bytes)
    if room_bytes % config.max_body_bytes > 1024:
        sizes.append(room_bytes % config.max_body_bytes - 1024)  # a little short of the last byte
    return [held_upload(port, size) for size in sizes]


def measure(config):
    """Fill every bound of a server with config's settings; a dict of what was held and measured."""
    side_px = min(ANNOTATED_SIDE_PX, int(config.max_pixels ** 0.5)) // NOISE_PERIOD_PX * NOISE_PERIOD_PX
    body = noise_png(side_px)
    args = [f"--{name.replace('_', '-')}={getattr(config, name)}" for name in SETTINGS]
    args += ["--client-timeout-s", "120", "--head-timeout-s", "120"]
    with ServerProcess(*args) as server:
        front_end = server.proc.pid
        figures = {"idle_mb": rss_mb(front_end), "side_px": side_px, "upload_bytes": len(body)}
        readers, figures["refused_status"] = fill_answer_budget(server.port, body)
        workers = server.worker_pids()
        for worker in workers:
            os.kill(worker, signal.SIGSTOP)
        try:
            sockets = fill_body_budget(server.port, config, len(readers) * len(body))
            figures["uploads"] = len(sockets)
            heads = config.max_connections - len(readers) - len(sockets)
            sockets += [unfinished_head(server.port) for _ in range(heads)]
            time.sleep(3)  # let every handler thread take in what the kernel buffered
            figures.update(filled_mb=rss_mb(front_end), peak_mb=peak_rss_mb(front_end), heads=heads,
                           socket_queues_mb=socket_queues_mb(server.port), answers=len(readers),
                           answer_bytes=readers[0].length if readers else 0,
                           dropped=sum(reader.dropped for reader in readers))
            for sock in sockets:
                sock.close()
            for reader in readers:
                reader.close()
        finally:
            for worker in workers:
                os.kill(worker, signal.SIGCONT)
    return figures


def deployment_config():
    """The Config manifests/deployment.yml gives its pod (DETSERVE_WORKERS from its CPU limit)."""
    container = yaml.safe_load(DEPLOYMENT.read_text())["spec"]["template"]["spec"]["containers"][0]
    environment = {var["name"]: var["value"] for var in container["env"] if "value" in var}
    environment[ENV_PREFIX + "WORKERS"] = str(memory_sizing.workers_for_cpus(container["resources"]["limits"]["cpu"]))
    return memory_sizing.config_from_environment(environment)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m studies.front_end_memory", description=__doc__.split("\n\n")[0])
    parser.add_argument("--deployment", action="store_true", help="the settings of manifests/deployment.yml")
    for name in SETTINGS:
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(getattr(Config, name)))
    args = parser.parse_args(argv)
    config = deployment_config() if args.deployment else Config()
    config = dataclasses.replace(config, **{name: getattr(args, name) for name in SETTINGS
                                            if getattr(args, name) is not None})
    figures = measure(config)
    print(" ".join(f"--{name.replace('_', '-')} {getattr(config, name):.10g}" for name in SETTINGS))
    print(f"held: {figures['answers']} annotated answers of {figures['answer_bytes'] / MIB:.1f} MiB "
          f"({figures['side_px']} px noise, {figures['upload_bytes'] / 1e6:.2f} MB PNG; the next one: "
          f"{figures['refused_status']}, {figures['dropped']} reader(s) dropped), {figures['uploads']} whole uploads "
          f"waiting for the stopped worker(s), {figures['heads']} unfinished 31 KiB heads")
    print(f"front end RSS: idle {figures['idle_mb']:.0f} MiB, filled {figures['filled_mb']:.0f} MiB, "
          f"peak {figures['peak_mb']:.0f} MiB; ceiling {memory_sizing.front_end_ceiling_mib(config):.0f} MiB; "
          f"kernel socket queues {figures['socket_queues_mb']:.0f} MiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
