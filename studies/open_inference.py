"""The Open Inference Protocol's cost against the native API: `python -m studies.open_inference inputfolder`.

The same images, one per request, through POST /api/ (the raw JPEG body) and
through POST /v2/models/yolov3-tiny/infer (the binary form tritonclient sends:
a JSON header, then the image as one length-prefixed BYTES element; all
outputs asked for in binary), in one run against one server. Per round and
route: the p50 latency of one client sending the images one after another,
then the throughput of 8 clients for --duration-s; the routes alternate
within each round so that both see the same machine. Prints the medians over
--rounds and the ratio Open Inference / native. Bodies are built once, so a
client spends only the sending and reading; the client shares the cores with
the server it measures, as every study here does.
"""

import argparse
import http.client
import json
import statistics
import struct
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

from bench.server_process import ServerProcess

MODEL = "yolov3-tiny"
INFER_PATH = f"/v2/models/{MODEL}/infer"
NATIVE_PATH = "/api/"
MANY_CLIENTS = 8
HEADER_LENGTH = "Inference-Header-Content-Length"


def load_images(folder):
    paths = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in (".jpg", ".jpeg"))
    if not paths:
        raise SystemExit(f"error: no JPEG images in {folder}")
    return [path.read_bytes() for path in paths]


def native_request(image):
    return NATIVE_PATH, image, {"Content-Type": "image/jpeg"}


def open_inference_request(image):
    """The body tritonclient builds for one image with set_data_from_numpy(..., binary_data=True)."""
    element = struct.pack("<I", len(image)) + image
    header = json.dumps({"inputs": [{"name": "IMAGE", "shape": [1], "datatype": "BYTES",
                                     "parameters": {"binary_data_size": len(element)}}],
                         "parameters": {"binary_data_output": True}}).encode()
    return INFER_PATH, header + element, {"Content-Type": "application/octet-stream", HEADER_LENGTH: str(len(header))}


ROUTES = {"native /api/ (raw JPEG)": native_request, "Open Inference (binary)": open_inference_request}


def post(connection, request):
    path, body, headers = request
    started_s = time.perf_counter()
    connection.request("POST", path, body, headers)
    response = connection.getresponse()
    payload = response.read()
    if response.status != 200:
        raise RuntimeError(f"POST {path}: {response.status} {payload[:300]!r}")
    return time.perf_counter() - started_s, response, payload


def detection_count(response, payload):
    """How many detections an answer holds: the native JSON's, or num_detections of a binary tensor answer."""
    if response.getheader(HEADER_LENGTH) is None:
        return len(json.loads(payload)["detections"])
    header_length = int(response.getheader(HEADER_LENGTH))
    outputs = json.loads(payload[:header_length])["outputs"]
    if outputs[0]["name"] != "num_detections":
        raise RuntimeError(f"unexpected first output {outputs[0]['name']}")
    return struct.unpack_from("<i", payload, header_length)[0]


def check_same_answers(connect, images):
    """Both routes find as many objects in every image: the comparison is of the same work."""
    connection = connect()
    for index, image in enumerate(images):
        counts = [detection_count(*post(connection, build(image))[1:]) for build in ROUTES.values()]
        if counts[0] != counts[1]:
            raise RuntimeError(f"image {index}: {counts[0]} detections natively, {counts[1]} through /v2")
    connection.close()


def p50_one_client_ms(connect, requests):
    connection = connect()
    latencies_s = [post(connection, request)[0] for request in requests]
    connection.close()
    return statistics.median(latencies_s) * 1000


def throughput_per_s(connect, requests, clients, duration_s):
    """Requests answered per second by `clients` threads, each on its own kept-alive connection."""
    done, failures = [0] * clients, []
    stop_at_s = time.perf_counter() + duration_s

    def client(index):
        connection = connect()
        try:
            position = index
            while time.perf_counter() < stop_at_s:
                post(connection, requests[position % len(requests)])
                done[index] += 1
                position += 1
        except Exception as exc:  # reported after the run, not lost in a thread
            failures.append(exc)
        finally:
            connection.close()

    started_s = time.perf_counter()
    threads = [threading.Thread(target=client, args=(index,)) for index in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        raise failures[0]
    return sum(done) / (time.perf_counter() - started_s)


def measure(url, images, rounds, duration_s):
    parts = urlsplit(url)

    def connect():
        return http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)

    check_same_answers(connect, images)  # and the warm-up: every worker has run the model
    requests = {name: [build(image) for image in images] for name, build in ROUTES.items()}
    figures = {name: {"p50_ms": [], "per_s": []} for name in ROUTES}
    for _ in range(rounds):
        for name, built in requests.items():
            figures[name]["p50_ms"].append(p50_one_client_ms(connect, built * 2))
            figures[name]["per_s"].append(throughput_per_s(connect, built, MANY_CLIENTS, duration_s))
    return {name: {key: statistics.median(values) for key, values in row.items()} for name, row in figures.items()}


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m studies.open_inference", description=__doc__.split("\n\n")[0])
    parser.add_argument("folder")
    parser.add_argument("--url", help="a running server's base URL (http://host:port); default: start one")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration-s", type=float, default=5.0, help="each throughput run's length")
    args = parser.parse_args(argv)
    images = load_images(args.folder)
    if args.url:
        rows = measure(args.url, images, args.rounds, args.duration_s)
    else:
        with ServerProcess("--workers", str(args.workers)) as server:
            rows = measure(server.url, images, args.rounds, args.duration_s)
    print(f"{len(images)} images, one per request; medians of {args.rounds} rounds "
          f"({MANY_CLIENTS} clients for {args.duration_s:g} s each)")
    print(f"{'':28}{'img/s at 8':>12}{'p50 ms at 1':>13}")
    for name, row in rows.items():
        print(f"{name:28}{row['per_s']:>12.1f}{row['p50_ms']:>13.1f}")
    native, oip = rows.values()
    print(f"{'Open Inference / native':28}{oip['per_s'] / native['per_s']:>12.3f}{oip['p50_ms'] / native['p50_ms']:>13.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
