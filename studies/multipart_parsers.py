"""The worker's multipart parser against the standard library's email parser: `python -m studies.multipart_parsers`.

Builds a body the way `requests` does for `files={"image": ...}, data={...}`
with an image part of --mb megabytes (default 19.5, under the front end's
20 MB limit; random bytes, as dense in CR and LF as JPEG data), parses it
--rounds times with each parser, and prints the median time and the peak of
memory allocated while parsing (tracemalloc, so the copies each one makes).
Both must return the same image bytes. Then the time the scan takes to refuse
hostile bodies of 2 and 20 MB (the boundary never appearing, a part never
closed, a preamble of 20 MB of CRLFs, 10,000 empty parts): ten times the
bytes should take about ten times as long. No server: this measures the parse only.
"""

import argparse
import email.parser
import email.policy
import random
import statistics
import sys
import time
import tracemalloc

from detserve.refusals import Refusal
from detserve.worker.multipart import parse_form

BOUNDARY = "5a60fe3dcfd3846431dea061e9e755eb"
CONTENT_TYPE = f"multipart/form-data; boundary={BOUNDARY}"


def form_body(image_bytes):
    """The body `requests` sends for files={"image": image_bytes}, data={"api_key": "", "min_confidence": 0.45}."""
    head = (f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="api_key"\r\n\r\n\r\n'
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="min_confidence"\r\n\r\n0.45\r\n'
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="image"; filename="image"\r\n\r\n')
    return head.encode() + image_bytes + f"\r\n--{BOUNDARY}--\r\n".encode()


def scan_image(body):
    return parse_form(body, CONTENT_TYPE).image().content


def email_image(body):
    """The image bytes as the email package finds them (the Content-Type put in front, as it needs)."""
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {CONTENT_TYPE}\r\n\r\n".encode() + body)
    for part in message.iter_parts():
        if part.get_param("name", header="content-disposition") == "image":
            return part.get_payload(decode=True)
    raise ValueError("email found no image part")


def hostile_bodies(size_bytes):
    """(name, body) of bodies the scan must refuse, each about size_bytes long."""
    noise = random.Random(1).randbytes(size_bytes)
    dash = f"--{BOUNDARY}".encode()
    empty_part = dash + b'\r\nContent-Disposition: form-data; name="x"\r\n\r\n\r\n'
    return (("boundary never appears", noise),
            ("image part never closed", form_body(noise)[:-len(BOUNDARY) - 8]),
            ("preamble of CRLFs, no boundary", b"\r\n" * (size_bytes // 2)),
            ("empty parts, as many as fit", empty_part * (size_bytes // len(empty_part))))


def time_refusal(body):
    started = time.perf_counter()
    try:
        parse_form(body, CONTENT_TYPE)
    except Refusal:
        return time.perf_counter() - started
    raise AssertionError("a hostile body was accepted")


def measure(parse, body, rounds):
    """(median seconds, peak bytes allocated during one parse, the image it returned)."""
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        image = parse(body)
        times.append(time.perf_counter() - started)
    tracemalloc.start()
    parse(body)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return statistics.median(times), peak, image


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=19.5, help="size of the image part in MB")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    image = random.Random(0).randbytes(int(args.mb * 1024 * 1024))
    body = form_body(image)
    print(f"body: {len(body) / 2**20:.1f} MiB, {args.rounds} rounds, median time and peak allocation of one parse")
    for name, parse in (("bytes.find scan (detserve.worker.multipart)", scan_image),
                        ("email.parser.BytesParser(policy=HTTP)", email_image)):
        seconds, peak, found = measure(parse, body, args.rounds)
        if found != image:
            print(f"{name}: returned different image bytes", file=sys.stderr)
            return 1
        print(f"{name:46} {seconds * 1000:9.1f} ms  peak {peak / 2**20:7.1f} MiB "
              f"({peak / len(body):.1f} x the body)")
    print("refusing hostile bodies with the scan (median of 3):")
    small, large = hostile_bodies(2 * 2**20), hostile_bodies(20 * 2**20)
    for (name, small_body), (_, large_body) in zip(small, large):
        small_ms, large_ms = (1000 * statistics.median(time_refusal(b) for _ in range(3))
                              for b in (small_body, large_body))
        print(f"  {name:34} 2 MiB {small_ms:7.2f} ms   20 MiB {large_ms:7.2f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
