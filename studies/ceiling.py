"""The raw pipeline ceiling: what this machine can do with no server in the way.

`python -m studies.ceiling FOLDER` sends the images the load client sends
(the same JSON bodies with base64) through a worker's own path
(detserve.worker.pipeline: parsing, options, decoding, the forward pass,
post-processing, the JSON answer) in bare processes, without pipes or HTTP:

- throughput: PROCESSES processes x 1 OpenCV thread (default one per CPU),
  all starting together, for DURATION seconds: images per second in total;
- best single-image latency: one process with every CPU on one image at a
  time: the median time per image.

A server can only approach these figures: they are the yardstick of
studies.perf, which runs this with --json.
"""

import argparse
import json
import multiprocessing
import statistics
import sys
import time
from dataclasses import asdict, dataclass

from bench.images import ImageFolderError, load_folder
from detserve.model_files import DEFAULT_MODEL_DIR
from detserve.worker.pipeline import Pipeline, available_cpus, load_detector


@dataclass(frozen=True)
class Ceiling:
    processes: int
    throughput_img_per_s: float
    single_image_latency_ms: float  # median, every CPU on one image
    single_image_threads: int


def _json_bodies(images):
    return [b'{"id": "' + image.name.encode() + b'", "image": "' + image.b64 + b'"}' for image in images]


def _load_pipeline(model_dir, cv_threads):
    """A worker's path in this process; cv_threads 0: every CPU, as a lone worker takes them."""
    return Pipeline(load_detector(model_dir), cv_threads=cv_threads)


def _answer(pipeline, body):
    answer = pipeline.run_one(body, "application/json")
    if answer.status != 200:  # a ceiling of refusals would be no ceiling
        raise RuntimeError(f"the pipeline answered {answer.status}: {answer.error}")


def _throughput_process(bodies, model_dir, start_barrier, duration_s, counts, index):
    pipeline = _load_pipeline(model_dir, cv_threads=1)
    for body in bodies:  # warm: every image shape once
        _answer(pipeline, body)
    start_barrier.wait()
    deadline = time.perf_counter() + duration_s
    done = 0
    while time.perf_counter() < deadline:
        _answer(pipeline, bodies[done % len(bodies)])
        done += 1
    counts[index] = done


def measure_throughput(bodies, model_dir, processes, duration_s):
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(processes + 1)
    counts = ctx.Array("i", processes)
    workers = [ctx.Process(target=_throughput_process, args=(bodies, model_dir, barrier, duration_s, counts, i))
               for i in range(processes)]
    for worker in workers:
        worker.start()
    barrier.wait()
    started = time.perf_counter()
    for worker in workers:
        worker.join()
    elapsed_s = time.perf_counter() - started  # includes the last image each process finished
    if any(worker.exitcode for worker in workers):
        raise RuntimeError("a ceiling process failed")
    return sum(counts) / elapsed_s


def _latency_process(bodies, model_dir, rounds, result):
    pipeline = _load_pipeline(model_dir, cv_threads=0)
    for body in bodies:
        _answer(pipeline, body)
    timings = []
    for _ in range(rounds):
        for body in bodies:
            started = time.perf_counter()
            _answer(pipeline, body)
            timings.append((time.perf_counter() - started) * 1000)
    result.value = statistics.median(timings)


def measure_single_image_latency(bodies, model_dir, rounds=5):
    ctx = multiprocessing.get_context("spawn")
    result = ctx.Value("d", 0.0)
    process = ctx.Process(target=_latency_process, args=(bodies, model_dir, rounds, result))
    process.start()
    process.join()
    if process.exitcode:
        raise RuntimeError("the latency process failed")
    return result.value


def measure(folder, model_dir, processes=None, duration_s=10.0, rounds=5):
    cpus = available_cpus()
    processes = processes or cpus
    bodies = _json_bodies(load_folder(folder))
    return Ceiling(
        processes=processes,
        throughput_img_per_s=measure_throughput(bodies, model_dir, processes, duration_s),
        single_image_latency_ms=measure_single_image_latency(bodies, model_dir, rounds),
        single_image_threads=cpus,
    )


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m studies.ceiling", description=__doc__.split("\n\n")[0])
    parser.add_argument("folder")
    parser.add_argument("--processes", type=int, default=None, help="default: one per CPU")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of the throughput run")
    parser.add_argument("--model-dir", default=str(DEFAULT_MODEL_DIR))
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object instead")
    args = parser.parse_args(argv)
    try:
        ceiling = measure(args.folder, args.model_dir, args.processes, args.duration)
    except ImageFolderError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(asdict(ceiling)))
        return 0
    print(f"raw pipeline ceiling: {ceiling.throughput_img_per_s:.1f} img/s "
          f"({ceiling.processes} processes x 1 thread, {args.duration:g} s)")
    print(f"best single-image latency: {ceiling.single_image_latency_ms:.1f} ms "
          f"(1 process x {ceiling.single_image_threads} threads, median)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
