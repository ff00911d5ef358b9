"""Hostile input: hundreds of malformed requests, each answered with a 4xx JSON error,
while the server stays up and keeps giving correct detections.

A JPEG whose entropy-coded data is damaged is not among them: libjpeg repairs
such data and decodes a (damaged) picture, so the service answers 200 for it,
as any decoder-based service would. Truncation, broken headers and damaged
PNGs (whose chunks carry CRCs) are all refused.
"""

import functools
import json
import random
import struct

import cv2
import numpy as np
import pytest

from support import assert_still_serving, b64, camera_jpeg, png_claiming, raw_exchange

SEED = 20261127


@functools.lru_cache(maxsize=1)
def camera_png():
    """The sample JPEG's pixels, encoded as a PNG."""
    return cv2.imencode(".png", cv2.imdecode(np.frombuffer(camera_jpeg(), np.uint8), cv2.IMREAD_COLOR))[1].tobytes()


def as_json(image_bytes, image_id="fuzz"):
    return json.dumps({"id": image_id, "image": b64(image_bytes)}).encode()


def jpeg_with_frame_size(width, height):
    """The sample JPEG with its start-of-frame header rewritten to claim width x height."""
    data = bytearray(camera_jpeg())
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def header_segments(data):
    """Byte offsets of the JPEG marker segments before the image data."""
    offsets, pos = [], 2
    while data[pos + 1] != 0xDA:
        offsets.append(pos)
        pos += 2 + struct.unpack(">H", data[pos + 2:pos + 4])[0]
    return offsets


def malformed_requests():
    """(name, content type, body, declared Content-Length or None, chunked) for every case."""
    rng = random.Random(SEED)
    cases = []
    jpeg, png = camera_jpeg(), camera_png()

    def add(name, body, content_type="application/json", length=None, chunked=False):
        cases.append((name, content_type, body, length, chunked))

    for i in range(20):
        add(f"random-bytes-raw-{i}", rng.randbytes(rng.randrange(1, 5000)), "image/jpeg")
        add(f"random-bytes-b64-{i}", as_json(rng.randbytes(rng.randrange(1, 5000))))
    for i in range(25):
        cut = rng.randrange(1, len(jpeg) - 2)
        add(f"truncated-jpeg-raw-{i}", jpeg[:cut], "image/jpeg")
        add(f"truncated-jpeg-b64-{i}", as_json(jpeg[:rng.randrange(1, len(jpeg) - 2)]))
    for i in range(15):
        add(f"truncated-png-{i}", png[:rng.randrange(1, len(png) - 1)], "image/png")
    for i in range(15):
        damaged = bytearray(png)
        damaged[rng.randrange(8, len(png))] ^= 1 << rng.randrange(8)
        add(f"bit-flipped-png-{i}", as_json(bytes(damaged)))
    segments = header_segments(jpeg)
    for i, offset in enumerate(segments):
        broken = bytearray(jpeg)
        broken[offset] = 0x00  # the marker's 0xFF
        add(f"jpeg-broken-marker-{i}", bytes(broken), "image/jpeg")
        broken = bytearray(jpeg)
        broken[offset + 2:offset + 4] = b"\x00\x01"  # a segment length below its own size
        add(f"jpeg-broken-length-{i}", bytes(broken), "image/jpeg")
    add("jpeg-zero-width", as_json(jpeg_with_frame_size(0, 100)))
    add("jpeg-zero-height", as_json(jpeg_with_frame_size(100, 0)))
    for i, (w, h) in enumerate([(65535, 65535), (40000, 2000), (10000, 10000)]):
        add(f"jpeg-huge-dimensions-{i}", jpeg_with_frame_size(w, h), "image/jpeg")
    for i, (w, h) in enumerate([(100000, 100000), (2**31 - 1, 2), (70000, 70000), (1 << 20, 1 << 10)]):
        add(f"png-huge-dimensions-{i}", as_json(png_claiming(w, h)))
    for depth in (1000, 10000, 100000, 500000):
        add(f"nested-arrays-{depth}", b"[" * depth + b"]" * depth)
        add(f"nested-objects-{depth}", b'{"a":' * depth + b"1" + b"}" * depth)
    add("enormous-base64-of-zeros", json.dumps({"id": "big", "image": "A" * 5_000_000}).encode())
    add("enormous-array", b"[" + b"1," * 2_000_000 + b"1]")
    add("enormous-id", json.dumps({"id": "x" * 100_000, "image": "AAAA"}).encode())
    for i, value in enumerate([None, 1, 1.5, True, [], {}, ["a"], {"a": 1}]):
        add(f"id-of-wrong-type-{i}", json.dumps({"id": value, "image": b64(jpeg)}).encode())
        add(f"image-of-wrong-type-{i}", json.dumps({"id": "t", "image": value}).encode())
    for i, text in enumerate([b"", b"null", b"0", b'"just a string"', b"true", b'"{\\"id\\": 1}"', b"{}", b"[]"]):
        add(f"json-not-an-object-{i}", text)
    for i in range(12):
        add(f"invalid-utf8-{i}", b'{"id": "' + bytes([rng.randrange(0x80, 0x100)]) * 3 + b'", "image": "AA"}')
    for i in range(20):
        garbage = bytes(rng.choice(b'{}[]":,abc\\ 0123456789') for _ in range(rng.randrange(1, 300)))
        add(f"json-garbage-{i}", garbage)
    add("data-url-not-base64", json.dumps({"id": "d", "image": "data:image/jpeg,abcd"}).encode())
    add("base64-with-bad-characters", json.dumps({"id": "d", "image": "ab$%^&*()cd"}).encode())
    add("base64-non-ascii", json.dumps({"id": "d", "image": "ÄÖÜ"}).encode())
    for i in range(5):
        body = as_json(jpeg)
        add(f"content-length-too-short-{i}", body, length=rng.randrange(1, len(body) - 1))
    for i in range(3):
        add(f"content-length-too-long-{i}", b'{"id": "x"}', length=5000)
        add(f"chunked-{i}", as_json(jpeg[:100]), chunked=True)
    add("wrong-content-type", as_json(jpeg), "text/plain")
    add("multipart", b"--x\r\n\r\n--x--", "multipart/form-data; boundary=x")
    return cases


def send_raw(port, content_type, body, declared_length, chunked):
    """Send one request on a fresh connection; return the RawResponse."""
    head = [b"POST /api/ HTTP/1.1", b"Host: 127.0.0.1", b"Content-Type: " + content_type.encode()]
    if chunked:
        head.append(b"Transfer-Encoding: chunked")
        payload = b"%x\r\n" % len(body) + body + b"\r\n0\r\n\r\n"
    else:
        head.append(b"Content-Length: %d" % (len(body) if declared_length is None else declared_length))
        payload = body
    return raw_exchange(port, b"\r\n".join(head) + b"\r\n\r\n", timeout_s=30, body=payload)


@pytest.fixture
def fuzz_server(quick_timeout_server):
    """The shared server that gives up on a client after 1 s: a body promised and never sent costs a second."""
    return quick_timeout_server


def test_hundreds_of_malformed_requests_each_get_a_4xx_json_error(fuzz_server):
    pids_before = fuzz_server.worker_pids()
    assert len(pids_before) == 2
    cases = malformed_requests()
    assert len(cases) >= 200
    failures = []
    for name, content_type, body, length, chunked in cases:
        response = send_raw(fuzz_server.port, content_type, body, length, chunked)
        payload = response.json() if response.header("Content-Type") == "application/json" else None
        if not (400 <= response.status < 500 and payload and payload.get("error")):
            failures.append((name, response.status, response.body[:200]))
    assert not failures, failures
    # The server is still up, and a valid request right after gets its correct detections.
    assert_still_serving(fuzz_server)
    assert fuzz_server.proc.poll() is None
    assert fuzz_server.worker_pids() == pids_before
    assert "worker" not in " ".join(line for line in fuzz_server.lines if "died" in line)


def hidden_frame_jpeg(width, height):
    """A 16x16 JPEG with a second, huge frame header hidden behind an FF 00 'marker'.

    libjpeg skips the FF 00 as garbage and reads the huge frame; a parser that
    walked over FF 00 as a segment would read only the small one.
    """
    small = cv2.imencode(".jpg", np.full((16, 16, 3), 128, np.uint8))[1].tobytes()
    sof = small.index(b"\xff\xc0")
    sof_segment = small[sof:sof + 2 + struct.unpack(">H", small[sof + 2:sof + 4])[0]]
    huge = sof_segment[:5] + struct.pack(">HH", height, width) + sof_segment[9:]
    app1 = b"\xff\xe1" + struct.pack(">H", 2 + len(sof_segment))  # hides the small frame from libjpeg
    inner = huge + app1
    wrapper = b"\xff\x00" + struct.pack(">H", 2 + len(inner)) + inner
    return small[:sof] + wrapper + small[sof:]


def many_scans_jpeg(scans):
    """A valid progressive JPEG with one of its scans repeated: each repeat re-walks the image."""
    image = np.random.default_rng(1).integers(0, 255, (256, 256, 3), np.uint8)
    data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])[1].tobytes()
    last_scan = data.rindex(b"\xff\xda")
    return data[:-2] + data[last_scan:-2] * scans + b"\xff\xd9"


@pytest.mark.parametrize("data, reason", [
    (hidden_frame_jpeg(20000, 20000), "invalid marker"),
    (many_scans_jpeg(500), "scans"),
], ids=["frame-hidden-behind-ff00", "500-scans"])
def test_jpegs_built_to_exhaust_a_worker_are_refused(fuzz_server, data, reason):
    status, _, payload = fuzz_server.request("/api/?id=hostile", data, headers={"Content-Type": "image/jpeg"})
    assert status == 400 and reason in payload["error"]


def test_a_progressive_jpeg_with_ordinary_scans_is_served(fuzz_server):
    data = many_scans_jpeg(0)
    status, _, payload = fuzz_server.request("/api/?id=progressive", data, headers={"Content-Type": "image/jpeg"})
    assert status == 200 and payload["id"] == "progressive"
