"""detserve: an object-detection HTTP service (YOLOv3-tiny on OpenCV) with a pool of worker processes.

The tree is the diagram: front/ and pool/ run in the main process and never
import OpenCV or numpy; worker/ is everything that runs in a worker process.

    client ──HTTP──▶ front/  (main process; one handler thread per connection)
                       │ http_server.DetectionHTTPServer accepts (connection_table:
                       │ the longest-idle connection gives way at the limit);
                       │ probe_server answers the probes on a port of their own;
                       │ handler routes; admission checks auth, framing, media type
                       │ and refuses with a typed Refusal; body_reader reads the raw
                       │ body, charged to body_budget as it arrives; answers leave
                       │ through answer_writer at a minimum rate
                       ▼
                     pool/   (main process)
                       │ WorkerPool.submit ─▶ RequestQueue (bounded: requests, bytes)
                       │ Dispatcher thread ─▶ WorkerSlot.assign ─▶ TaskSender thread
                       ▼                       (one per worker: header + raw body bytes)
          task pipe 0 … task pipe N-1
                       ▼
                     worker/ (one process per slot, spawned)
                       │ main.worker_main: boot (load the model once), then loop:
                       │ batch_collection takes 1 task and what else is queued;
                       │ batch_runner parses (request_parsing), checks the header
                       │ (image_header), decodes, runs detector in one forward pass
                       ▼
          result pipe 0 … result pipe N-1
                       ▼
                     pool/supervisor.Supervisor thread (main process): resolves each
                       PendingRequest, notices a death or a hang at once, fails only
                       what that worker held and spawns a replacement

- server.run composes these parts, owns the signals and is the one place
  that decides to exit (HaltServer).
- protocol holds what crosses the process boundary (TaskHeader, Result,
  WorkerReady, WorkerBootFailed, BusyFlags) and the closed sets every process
  shares (RejectReason, Refusal, ExitCode).
- config, metrics, logs and model_files serve every part.
"""

__version__ = "0.1.0"
