"""A worker's peak memory after one large upload, with --decode-reduction auto and off.

`python -m studies.decode_memory [IMAGE]` upscales IMAGE (default
inputfolder/camera.jpg) to 12, 24 and 40 megapixels (JPEG q90) and, for each
size and setting, starts a fresh one-worker server on 127.0.0.1, reads the
worker's peak resident memory (VmHWM in /proc/PID/status) once it is ready,
posts the image three times as a raw image/jpeg body, and reads it again.
A fresh server per measurement, because VmHWM only ever grows. A progressive
40 MP JPEG and a 16 MP RGB and a 40 MP grey PNG close the table: PNG (like
a JPEG too narrow to reduce) always decodes in full, to BGR, so it is the
worst case that --max-pixels still bounds (a 40 MP RGB PNG costs more than a
request's decoding budget; a grey one of the same pixels fits it).
"""

import argparse
import sys
import urllib.request

import cv2

from bench.proc_stats import peak_rss_mb
from bench.server_process import REPO_ROOT, ServerProcess

SIZES_PX = {"12 MP": (4032, 3024), "24 MP": (6000, 4000), "40 MP": (7744, 5163)}  # 40 MP: just under the cap
UPLOADS = 3
JPEG_QUALITY = 90


def post(url, data, media_type):
    request = urllib.request.Request(url + "?id=memory", data=data, headers={"Content-Type": media_type})
    with urllib.request.urlopen(request, timeout=120) as response:
        response.read()
        return response.status


def measure(setting, data, media_type="image/jpeg"):
    """(peak MB when ready, peak MB after the uploads) of a fresh one-worker server's worker."""
    with ServerProcess("--workers", "1", "--decode-reduction", setting) as server:
        (worker_pid,) = server.worker_pids()
        ready_mb = peak_rss_mb(worker_pid)
        for _ in range(UPLOADS):
            status = post(server.api_url, data, media_type)
            if status != 200:
                raise RuntimeError(f"upload answered {status}")
        return ready_mb, peak_rss_mb(worker_pid)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m studies.decode_memory", description=__doc__.split("\n")[0])
    parser.add_argument("image", nargs="?", default=str(REPO_ROOT / "inputfolder" / "camera.jpg"))
    args = parser.parse_args(argv)
    source = cv2.imread(args.image)
    if source is None:
        sys.exit(f"cannot read {args.image}")
    print(f"{'upload':<18} {'bytes':>10} {'setting':<7} {'peak when ready MB':>18} {'peak after MB':>13} {'growth MB':>9}")
    for label, size_px in SIZES_PX.items():
        resized = cv2.resize(source, size_px, interpolation=cv2.INTER_LINEAR)
        data = cv2.imencode(".jpg", resized, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])[1].tobytes()
        del resized
        for setting in ("auto", "off"):
            ready_mb, after_mb = measure(setting, data)
            print(f"{label:<18} {len(data):>10,} {setting:<7} {ready_mb:>18.1f} {after_mb:>13.1f} "
                  f"{after_mb - ready_mb:>9.1f}", flush=True)
    # libjpeg keeps a progressive JPEG's whole coefficient array whatever the scale.
    resized = cv2.resize(source, SIZES_PX["40 MP"], interpolation=cv2.INTER_LINEAR)
    data = cv2.imencode(".jpg", resized, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY,
                                          cv2.IMWRITE_JPEG_PROGRESSIVE, 1])[1].tobytes()
    del resized
    for setting in ("auto", "off"):
        ready_mb, after_mb = measure(setting, data)
        print(f"{'40 MP progressive':<18} {len(data):>10,} {setting:<7} {ready_mb:>18.1f} {after_mb:>13.1f} "
              f"{after_mb - ready_mb:>9.1f}", flush=True)
    for label, size_px, grey in (("16 MP", (4608, 3456), False), ("40 MP grey", SIZES_PX["40 MP"], True)):
        # Small so that it fits --max-body-mb: a PNG's size says nothing of its pixels.
        resized = cv2.resize(source, (size_px[0] // 16, size_px[1] // 16), interpolation=cv2.INTER_AREA)
        resized = cv2.resize(resized, size_px, interpolation=cv2.INTER_NEAREST)
        if grey:
            resized = cv2.cvtColor(resized, cv2.COLOR_BGR2GRAY)
        data = cv2.imencode(".png", resized, [cv2.IMWRITE_PNG_COMPRESSION, 9])[1].tobytes()
        del resized
        ready_mb, after_mb = measure("auto", data, "image/png")
        print(f"{label + ' PNG':<18} {len(data):>10,} {'auto':<7} {ready_mb:>18.1f} {after_mb:>13.1f} "
              f"{after_mb - ready_mb:>9.1f}", flush=True)


if __name__ == "__main__":
    main()
