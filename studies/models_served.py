"""Every model served side by side: `python -m studies.models_served [inputfolder]`.

One server on 127.0.0.1 loads every model measured (`--models
yolov3-tiny,yolov4-tiny,yolov4-tiny@320,yolov3-tiny@608`, the server's
other settings its defaults: 2 workers, one request per forward pass), and
each request picks its model with `?model=`, so every model meets the same
server, the same workers and the same machine. Per round and model: the p50
latency of one client sending each image twice, one request after another, then the
throughput of 8 clients for --duration-s (bench's load client, kept-alive
connections, the JSON body with base64 it always sends); the models take
turns within a round, starting one later each round. Prints the medians over
--rounds, each model's ratio to yolov3-tiny, and each worker's resident
memory (VmRSS, VmHWM) at the end: a worker holds every model, so its memory
is theirs together (each model's alone: `python -m studies.models`).
"""

import argparse
import statistics
import sys

from bench.images import ImageFolderError, load_folder
from bench.loadgen import run_load
from bench.proc_stats import peak_rss_mb, rss_mb
from bench.server_process import REPO_ROOT, ServerProcess

MODELS = ["yolov3-tiny", "yolov4-tiny", "yolov4-tiny@320", "yolov3-tiny@608"]
BASELINE = MODELS[0]
MANY_CLIENTS = 8
ALONE_PASSES = 2  # the 1-client p50 is over every image twice


def check_models_answer(server, images):
    """Each model answers, and names itself in X-Model: the figures are of the model they say."""
    for model in MODELS:
        body = b'{"id": "check", "image": "' + images[0].b64 + b'"}'
        status, headers, payload = server.request(f"/api/?model={model}", body,
                                                  headers={"Content-Type": "application/json"})
        if status != 200 or headers.get("X-Model") != model:
            raise RuntimeError(f"?model={model}: {status}, X-Model {headers.get('X-Model')}: {payload}")


def measure_round(url, images, order, duration_s):
    """{model: (p50 ms at 1 client, img/s at MANY_CLIENTS)} for one round, models in `order`."""
    figures = {}
    for model in order:
        model_url = f"{url}?model={model}"
        alone = run_load(images, model_url, 1, repeat=ALONE_PASSES, warmup=1)
        loaded = run_load(images, model_url, MANY_CLIENTS, duration_s=duration_s)  # warm: the 1-client run came first
        for summary in (alone, loaded):
            if summary.errors:
                raise RuntimeError(f"{model}: {summary.errors_by_kind}")
        figures[model] = (alone.latency_p50_ms, loaded.throughput_img_per_s)
    return figures


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m studies.models_served", description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", nargs="?", default=str(REPO_ROOT / "inputfolder"), help="folder of sample images")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration-s", type=float, default=2.0, help="each 8-client run's length")
    args = parser.parse_args(argv)
    try:
        images = load_folder(args.folder)
    except ImageFolderError as exc:
        sys.exit(f"error: {exc}")

    with ServerProcess("--models", ",".join(MODELS)) as server:
        check_models_answer(server, images)
        rounds = []
        for index in range(args.rounds):
            order = MODELS[index % len(MODELS):] + MODELS[:index % len(MODELS)]
            rounds.append(measure_round(server.api_url, images, order, args.duration_s))
        workers = [(pid, rss_mb(pid), peak_rss_mb(pid)) for pid in sorted(server.worker_pids())]
        startup_s = server.startup_s

    medians = {model: (statistics.median(r[model][0] for r in rounds), statistics.median(r[model][1] for r in rounds))
               for model in MODELS}
    base_p50_ms, base_per_s = medians[BASELINE]
    print(f"one server, --models {','.join(MODELS)} (ready in {startup_s:.1f} s); {len(images)} images; "
          f"medians of {args.rounds} rounds ({MANY_CLIENTS} clients for {args.duration_s:g} s each)")
    print(f"{'?model=':<18}{'img/s at 8':>11}{'p50 ms at 1':>13}{'img/s ratio':>13}{'p50 ratio':>11}")
    for model, (p50_ms, per_s) in medians.items():
        print(f"{model:<18}{per_s:>11.1f}{p50_ms:>13.1f}{per_s / base_per_s:>13.2f}{p50_ms / base_p50_ms:>11.2f}")
    print("\nworker memory at the end, MB (every model loaded in each)")
    for pid, rss, peak in workers:
        print(f"  worker pid {pid}: RSS {rss:.0f}, peak {peak:.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
