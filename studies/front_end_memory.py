"""The front end's memory at its worst: every connection open, every body byte of the budget held.

`python -m studies.front_end_memory` starts detserve (one worker, stopped with
SIGSTOP so nothing leaves the queue), then fills what the front end bounds:
bodies of --max-body-mb each, sent whole (a body is charged as it arrives, and
one that stops arriving is dropped within seconds, so the bodies that hold the
budget longest are complete ones waiting for a worker), until
--max-body-buffer-mb is held; and the rest of --max-connections with request
heads of just under 32 KiB that never end (the head timeout raised so that
they stay). It prints the front end's
resident memory (VmRSS, and the peak VmHWM) before and after, next to the
formula in docs/architecture.md: 35 MB + 1.125 x body budget + 0.15 MB x connections.
"""

import argparse
import os
import signal
import socket
import time

from bench.proc_stats import peak_rss_mb, rss_mb
from bench.server_process import ServerProcess

HEAD_FILLER_BYTES = 31 * 1024
MIB = 1 << 20


def formula_mb(body_buffer_mb, connections):
    return 35 + 1.125 * body_buffer_mb + 0.15 * connections


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


def measure(max_body_mb, body_buffer_mb, connections):
    args = ("--workers", "1", "--max-body-mb", str(max_body_mb), "--max-body-buffer-mb", str(body_buffer_mb),
            "--max-connections", str(connections), "--client-timeout-s", "120", "--head-timeout-s", "120")
    with ServerProcess(*args) as server:
        (worker,) = server.worker_pids()
        os.kill(worker, signal.SIGSTOP)
        front_end = server.proc.pid
        before_mb = rss_mb(front_end)
        uploads = int(body_buffer_mb // max_body_mb)
        sockets = [held_upload(server.port, int(max_body_mb * MIB)) for _ in range(uploads)]
        sockets += [unfinished_head(server.port) for _ in range(connections - uploads)]
        time.sleep(3)  # let every handler thread take in what the kernel buffered
        after_mb, peak = rss_mb(front_end), peak_rss_mb(front_end)
        for sock in sockets:
            sock.close()
        os.kill(worker, signal.SIGCONT)
    return before_mb, after_mb, peak, uploads


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m studies.front_end_memory", description=__doc__.split("\n\n")[0])
    parser.add_argument("--max-body-mb", type=float, default=20)
    parser.add_argument("--max-body-buffer-mb", type=float, default=160)
    parser.add_argument("--max-connections", type=int, default=256)
    args = parser.parse_args(argv)
    before, after, peak, uploads = measure(args.max_body_mb, args.max_body_buffer_mb, args.max_connections)
    print(f"--max-body-mb {args.max_body_mb:g} --max-body-buffer-mb {args.max_body_buffer_mb:g} "
          f"--max-connections {args.max_connections}: {uploads} held uploads, "
          f"{args.max_connections - uploads} unfinished 31 KiB heads")
    print(f"front end RSS: idle {before:.0f} MB, filled {after:.0f} MB, peak {peak:.0f} MB; "
          f"formula {formula_mb(args.max_body_buffer_mb, args.max_connections):.0f} MB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
