"""Two attacks on decoding, measured against a server: what they cost it and what a user sees.

`PYTHONPATH=. python studies/decode_attacks.py` starts a one-worker server
from this tree on 127.0.0.1 (or measures the one at --url) and reports:

1. cheap-to-send, costly-to-decode PNGs: one multi-image body of 15 PNGs of
   40 MP, interlaced, 16-bit RGBA, every row Paeth-filtered, all zero (about
   400 KB each): how long its answer takes, how it is answered, and how long
   an innocent request sent half a second after it waits;
2. the annotated path's decodes: a 40 MP progressive photo as JSON, annotated,
   and annotated with max_side=968;
3. a very wide image asked for annotated: 100000x400 PNGs (RGB and gray) with
   ?format=jpeg: status, type, the answer's width, and the id of an error.

Each request is bounded by --timeout-s; the whole run stays under a minute
against a server that refuses the attacks, and about two against one that
decodes them.
"""

import argparse
import json
import struct
import sys
import threading
import time
import urllib.error
import urllib.request
import zlib
from base64 import b64encode
from pathlib import Path

import cv2
import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
ADAM7_PASSES = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))


def png_chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def interlaced_rgba16_paeth_zero_png(width, height):
    """All zero, every row of every Adam7 pass Paeth-filtered; compressed a block of rows at a time."""
    compressor, compressed = zlib.compressobj(9), []
    for x0, y0, dx, dy in ADAM7_PASSES:
        pass_w, pass_h = -(-(width - x0) // dx), -(-(height - y0) // dy)
        if pass_w > 0 and pass_h > 0:
            row = b"\x04" + bytes(pass_w * 8)
            for first in range(0, pass_h, 256):
                compressed.append(compressor.compress(row * min(256, pass_h - first)))
    compressed.append(compressor.flush())
    ihdr = struct.pack(">IIBBBBB", width, height, 16, 6, 0, 0, 1)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", b"".join(compressed))
            + png_chunk(b"IEND", b""))


def post(url, body, content_type, timeout_s):
    """(status, Content-Type, body bytes, seconds); status None when the request timed out."""
    request = urllib.request.Request(url, data=body, headers={"Content-Type": content_type})
    started_s = time.monotonic()
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return response.status, response.headers["Content-Type"], response.read(), time.monotonic() - started_s
    except urllib.error.HTTPError as error:
        return error.code, error.headers["Content-Type"], error.read(), time.monotonic() - started_s
    except (TimeoutError, urllib.error.URLError):
        return None, None, b"", time.monotonic() - started_s


def summary(status, content_type, body):
    if status is None:
        return "no answer (timed out)"
    if content_type == "image/jpeg":
        height, width = cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_COLOR).shape[:2]
        return f"{status} image/jpeg {width}x{height}, {len(body) / 1e6:.1f} MB"
    payload = json.loads(body)
    if "results" in payload:
        statuses = [r.get("status", 200) for r in payload["results"]]
        return f"{status}, results: " + ", ".join(f"{statuses.count(s)} x {s}" for s in sorted(set(statuses)))
    if "error" in payload:
        return f"{status} id={payload.get('id')!r}: {payload['error'][:150]}"
    return f"{status}, {len(payload.get('detections', []))} detections"


def attack_pngs(api_url, timeout_s):
    png = interlaced_rgba16_paeth_zero_png(7300, 5470)
    image = b64encode(png).decode()
    body = json.dumps({"images": [{"id": f"png{i}", "image": image} for i in range(15)]}).encode()
    print(f"1. 15 x 7300x5470 interlaced 16-bit RGBA Paeth zero PNGs ({len(png) / 1e3:.0f} KB each), "
          f"one {len(body) / 1e6:.1f} MB body")
    innocent = {}

    def send_innocent():
        time.sleep(0.5)
        innocent["answer"] = post(api_url + "?id=innocent", (REPO_ROOT / "inputfolder" / "camera.jpg").read_bytes(),
                                  "image/jpeg", timeout_s)
    thread = threading.Thread(target=send_innocent)
    thread.start()
    status, content_type, answer, seconds = post(api_url, body, "application/json", timeout_s)
    thread.join()
    print(f"   attack: {seconds:.2f} s, {summary(status, content_type, answer)}")
    status, content_type, answer, seconds = innocent["answer"]
    print(f"   innocent camera.jpg sent 0.5 s later: {seconds:.2f} s, {summary(status, content_type, answer)}")


def annotated_photo(api_url, timeout_s):
    camera = cv2.imread(str(REPO_ROOT / "inputfolder" / "camera.jpg"))
    photo = cv2.imencode(".jpg", cv2.resize(camera, (7744, 5163), interpolation=cv2.INTER_CUBIC),
                         [cv2.IMWRITE_JPEG_PROGRESSIVE, 1, cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()
    print(f"2. a 7744x5163 progressive photo (10 scans, {len(photo) / 1e6:.1f} MB)")
    for query in ("id=photo", "format=jpeg&id=photo", "format=jpeg&max_side=968&id=photo"):
        status, content_type, answer, seconds = post(f"{api_url}?{query}", photo, "image/jpeg", timeout_s)
        print(f"   ?{query:<34} {seconds:5.2f} s, {summary(status, content_type, answer)}")


def wide_png(api_url, timeout_s):
    print("3. 100000x400 PNGs asked for annotated (?format=jpeg&id=wide)")
    for name, pixels in (("RGB", np.full((400, 100_000, 3), 90, np.uint8)), ("gray", np.full((400, 100_000), 90, np.uint8))):
        png = cv2.imencode(".png", pixels)[1].tobytes()
        status, content_type, answer, seconds = post(f"{api_url}?format=jpeg&id=wide", png, "image/png", timeout_s)
        print(f"   {name:<5} {seconds:5.2f} s, {summary(status, content_type, answer)}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="a running server's base URL; default: start one from this tree")
    parser.add_argument("--timeout-s", type=float, default=40, help="bound on each request")
    args = parser.parse_args(argv)
    if args.url:
        return run(args.url.rstrip("/") + "/api/", args.timeout_s)
    sys.path.insert(0, str(REPO_ROOT))
    from bench.server_process import ServerProcess
    with ServerProcess("--workers", "1") as server:
        return run(server.api_url, args.timeout_s)


def run(api_url, timeout_s):
    attack_pngs(api_url, timeout_s)
    annotated_photo(api_url, timeout_s)
    wide_png(api_url, timeout_s)
    return 0


if __name__ == "__main__":
    sys.exit(main())
