"""detserve: an object-detection HTTP service (darknet YOLO models on OpenCV) with a pool of worker processes.

The tree is the diagram: front/ and pool/ run in the main process and never
import OpenCV or numpy; worker/ is everything that runs in a worker process.

    client ──HTTP──▶ front/  (main process; one handler thread per connection)
                       │ http_server.DetectionHTTPServer accepts (connection_table:
                       │ the longest-idle connection gives way at the limit);
                       │ probe_server answers the probes on a port of their own;
                       │ handler routes; exchange runs a detection request in any
                       │ of formats/: admission (cross-site, auth, framing),
                       │ request_options, body_reader (charged to body_budget as
                       │ the body arrives), submit, wait; answers leave through
                       │ answer_writer at a minimum rate
                       ▼
                     pool/   (main process)
                       │ WorkerPool.submit ─▶ RequestQueue (bounded in requests)
                       │ Dispatcher thread ─▶ WorkerSlot.assign ─▶ TaskSender thread
                       ▼                       (one per worker: header + raw body bytes)
          task pipe 0 … task pipe N-1
                       ▼
                     worker/ (one process per slot, spawned)
                       │ main.worker_main: boot (load every configured model once), then loop:
                       │ batch_collection takes 1 task and what else is queued;
                       │ batch_runner: task_preparation parses (formats/), checks the
                       │ header (image_header), decodes; detector runs passes of at
                       │ most --max-batch; formats/ builds each answer; failures maps exceptions
                       ▼
          result pipe 0 … result pipe N-1
                       ▼
                     pool/supervisor.Supervisor thread (main process): resolves each
                       PendingRequest, notices a death or a hang at once, fails only
                       what that worker held and spawns a replacement

- server.run composes these parts, owns the signals and is the one place
  that decides to exit (HaltServer).
- protocol holds what crosses the process boundary (TaskHeader, Result,
  WorkerReady, WorkerBootFailed) and ExitCode; refusals is the catalogue of
  every Refusal and its RejectReason; busy_flags is the shared-memory flags.
- config, metrics, logs and model_files serve every part; memory_sizing
  states what the front end and a worker may hold, for sizing a pod.
"""

__version__ = "0.1.0"
