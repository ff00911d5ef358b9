"""One-off measurements of detserve, run from a checkout: `python -m studies.NAME` at the repository root.

Not the load client (that is `bench`, installed with detserve) and not
shipped in the package: each study is a script that reports figures.

ceiling           the raw pipeline: the worker's own path in bare processes, no server
perf              detserve against that ceiling: small images, 12 MP images, overload
decode_accuracy   detections with --decode-reduction auto against off
decode_memory     a worker's peak memory after one large upload, auto against off
decode_cost       what decoding each kind of PNG and JPEG costs, beside what the decode budget prices it at
decode_attacks    images built to be costly to decode, and an innocent request after them, against a server
front_end_memory  the front end's memory with every connection, body and answer byte it allows
worker_memory     a worker's peak memory by images per forward pass and by the largest image
multi_image       one 16-image request against 16 single requests
multipart_parsers the worker's multipart parser against the standard library's email parser
frigate_latency   Frigate's DeepStack requests at 1, 2 and 4 cameras: the share answered within 100 ms
open_inference    the Open Inference route against the native one: throughput and latency
soak              thousands of requests, and the resident memory of every process
models            each model's worker memory, load time and forward pass per image
models_served     every model on one server, chosen by ?model=: img/s at 8 clients, p50 at 1, worker memory

A study drives the server through bench (ServerProcess, run_load) or, when it
needs what a worker does without the server, detserve.worker.pipeline (a
study of one part of the worker, that part); no study imports another.
"""
