"""Supervision with a stand-in worker: a real WorkerPool, real processes and pipes, no model.

WorkerPool takes the worker's entry point as a parameter; here it is
standin_worker, which speaks the real protocol and dies, hangs or fails to
boot on request, so death, hang, boot failure and back-off take seconds.
"""

import json
import os
import re
import signal
import time
from pathlib import Path

import pytest

from detserve.config import Config
from detserve.metrics import ServerMetrics
from detserve.pool.pending import PendingRequest
from detserve.pool.worker_pool import WorkerPool
from detserve.pool.worker_slot import PIPE_BUFFER_BYTES
from detserve.protocol import TaskHeader
from detserve.refusals import RejectReason, Refusal
from standin_worker import BOOT_CONTROL_ENV, BOOT_FAILURE_REASON, BOOT_LOG_ENV, standin_worker
from support import EVENT_TIMEOUT_S, wait_until

REQUEST_DEADLINE_S = 60


class Pools:
    """Starts stand-in pools for one test and stops every one of them after it."""

    def __init__(self, boot_control, boot_log):
        self.boot_control = boot_control  # write "fail", "crash" or "slow SECS" here to steer the next boots
        self.boot_log = boot_log
        self._started = []

    def start(self, workers=1, **config_fields):
        """A started WorkerPool of stand-ins, and the ServerMetrics it records into."""
        metrics = ServerMetrics(["person"], workers)
        pool = WorkerPool(Config(port=0, workers=workers, **config_fields), standin_worker, metrics)
        self._started.append(pool)
        pool.start()
        return pool, metrics

    def boots(self):
        """(pid, monotonic seconds) of every stand-in boot so far, in order."""
        lines = self.boot_log.read_text().splitlines() if self.boot_log.exists() else []
        return [(int(pid), float(at_s)) for pid, at_s in (line.split() for line in lines)]

    def stop_all(self):
        for pool in self._started:
            pool.stop()


@pytest.fixture
def pools(tmp_path, monkeypatch):
    # The spawned stand-ins inherit this environment.
    monkeypatch.setenv(BOOT_CONTROL_ENV, str(tmp_path / "boot-control"))
    monkeypatch.setenv(BOOT_LOG_ENV, str(tmp_path / "boots.log"))
    started = Pools(tmp_path / "boot-control", tmp_path / "boots.log")
    try:
        yield started
    finally:
        started.stop_all()


_task_ids = iter(range(1, 1_000_000))


def submit(pool, body, image_id=None):
    task_id = next(_task_ids)
    now_s = time.monotonic()
    header = TaskHeader(task_id=task_id, request_id=f"request-{task_id}", media_type="application/json",
                        query_image_id=image_id or body.decode(), enqueued_at_s=now_s,
                        deadline_at_s=now_s + REQUEST_DEADLINE_S)
    pending = PendingRequest(header, body)
    pool.submit(pending)
    return pending


def answer(pending):
    result = pending.wait(EVENT_TIMEOUT_S)
    assert result is not None, f"request {pending.task_id} was never answered"
    return result


def wait_ready(pool):
    assert pool.all_ready.wait(EVENT_TIMEOUT_S), "the stand-in workers never became ready"
    assert not pool.fatal.is_set()


def assert_answered_ok(result, pending):
    assert result.status == 200, result
    assert result.task_id == pending.task_id
    assert json.loads(result.body)["id"] == pending.header.query_image_id


def pid_is_gone(pid):
    """The process exited and was reaped (a zombie still has a /proc entry)."""
    return not Path(f"/proc/{pid}").exists()


# -- answers --------------------------------------------------------------------------------------
def test_a_request_is_answered_and_counted(pools):
    pool, metrics = pools.start(workers=1)
    wait_ready(pool)
    pending = submit(pool, b"ok", "first")
    assert_answered_ok(answer(pending), pending)
    assert metrics.images.value() == 1
    assert pool.ready_count() == 1 and pool.queue_depth() == 0


def test_requests_queued_while_the_workers_boot_are_answered_once_they_are_ready(pools):
    pools.boot_control.write_text("slow 1")
    pool, metrics = pools.start(workers=1)
    pending = submit(pool, b"ok", "early")
    assert not pool.all_ready.is_set()  # the stand-in sleeps a second before it is ready
    assert_answered_ok(answer(pending), pending)
    assert pool.all_ready.is_set()


# -- a worker that dies -------------------------------------------------------------------------
def test_a_dead_worker_fails_only_its_own_requests_and_is_replaced(pools):
    pool, metrics = pools.start(workers=2)
    wait_ready(pool)
    first_pid, second_pid = pool.worker_pids()
    # Ties go to the first slot: "slow" occupies worker 0, so "die" goes to worker 1.
    survivor_request = submit(pool, b"slow")
    victim_request = submit(pool, b"die")

    died = answer(victim_request)
    assert died.status == 503 and died.reject_reason is RejectReason.WORKER_DIED
    assert "died" in died.error and died.image_id == "die"
    assert_answered_ok(answer(survivor_request), survivor_request)

    wait_until(lambda: pool.ready_count() == 2 and second_pid not in pool.worker_pids(), "a ready replacement")
    new_first_pid, new_second_pid = pool.worker_pids()
    assert new_first_pid == first_pid and new_second_pid != second_pid
    assert pid_is_gone(second_pid)
    assert metrics.worker_restarts.value() == 1
    assert not pool.fatal.is_set()
    after = [submit(pool, b"ok", f"after-{i}") for i in range(4)]  # two each: the replacement serves too
    for pending in after:
        assert_answered_ok(answer(pending), pending)


# -- a worker that hangs --------------------------------------------------------------------------
def test_a_hung_worker_is_killed_after_the_request_timeout_and_replaced(pools):
    pool, metrics = pools.start(workers=1, request_timeout_s=0.5)
    wait_ready(pool)
    (hung_pid,) = pool.worker_pids()
    hung = answer(submit(pool, b"hang"))
    assert hung.status == 504 and hung.reject_reason is RejectReason.WORKER_STUCK
    assert "hung" in hung.error

    wait_until(lambda: pool.ready_count() == 1 and hung_pid not in pool.worker_pids(), "a ready replacement")
    assert pid_is_gone(hung_pid)
    assert metrics.worker_restarts.value() == 1
    pending = submit(pool, b"ok", "after-hang")
    assert_answered_ok(answer(pending), pending)


def test_a_large_body_for_a_stopped_worker_does_not_hold_up_the_others(pools):
    """Each worker's tasks are written by a thread of its own: a body bigger than a pipe holds, for a
    worker that reads nothing, must not stop the next request from reaching another worker."""
    pool, metrics = pools.start(workers=2)
    wait_ready(pool)
    first_pid, _ = pool.worker_pids()
    os.kill(first_pid, signal.SIGSTOP)  # alive, reading nothing: its task pipe fills and stays full
    try:
        big = submit(pool, b"\0" * (3 * PIPE_BUFFER_BYTES), "big")  # ties go to the first slot
        meanwhile = submit(pool, b"ok", "meanwhile")
        assert_answered_ok(answer(meanwhile), meanwhile)
        assert big.wait(0) is None
    finally:
        os.kill(first_pid, signal.SIGCONT)
    assert_answered_ok(answer(big), big)
    assert metrics.worker_restarts.value() == 0


def test_a_slow_answer_within_the_timeout_is_not_a_hang(pools):
    pool, metrics = pools.start(workers=1, request_timeout_s=10)
    wait_ready(pool)
    (pid,) = pool.worker_pids()
    pending = submit(pool, b"slow")
    assert_answered_ok(answer(pending), pending)
    assert pool.worker_pids() == [pid] and metrics.worker_restarts.value() == 0


# -- boot failures ---------------------------------------------------------------------------------
@pytest.mark.parametrize("how, reason", [
    ("fail", BOOT_FAILURE_REASON),
    ("crash", "exited with code 1 before it was ready"),
], ids=["reports-the-failure", "exits-silently"])
def test_a_boot_failure_at_start_is_fatal_with_the_reason(pools, how, reason):
    pools.boot_control.write_text(how)
    pool, metrics = pools.start(workers=2)
    assert pool.fatal.wait(EVENT_TIMEOUT_S), "a worker that cannot boot did not stop the pool"
    assert "could not start" in pool.fatal_error and reason in pool.fatal_error
    assert not pool.all_ready.is_set()
    wait_until(lambda: pool.worker_pids() == [], "both failed workers reaped")
    time.sleep(0.5)  # give a wrong respawn the time to happen: there must be none
    assert pool.worker_pids() == []
    assert len(pools.boots()) == 2  # each slot tried once; nothing respawned in a loop
    assert metrics.worker_restarts.value() == 0


def test_a_replacement_that_cannot_boot_is_retried_with_backoff_then_fatal(pools, caplog):
    caplog.set_level("WARNING", logger="detserve.pool")
    pool, metrics = pools.start(workers=2)
    wait_ready(pool)
    pools.boot_control.write_text("fail")  # from now on, every boot fails
    died = answer(submit(pool, b"die"))  # worker 0 dies; its replacements cannot boot
    assert died.reject_reason is RejectReason.WORKER_DIED

    pending = submit(pool, b"ok", "meanwhile")
    assert_answered_ok(answer(pending), pending)  # the other worker serves meanwhile

    assert pool.fatal.wait(EVENT_TIMEOUT_S), "the failing replacement was retried for ever"
    assert BOOT_FAILURE_REASON in pool.fatal_error
    retries_s = [float(m) for m in re.findall(r"retrying in ([\d.]+) s", caplog.text)]
    assert retries_s == [0.5, 1.0, 2.0]
    boots = pools.boots()
    assert len(boots) == 2 + 4  # the two first workers, then four replacements: the fourth failure is fatal
    # Back-off means waiting at least that long before the next try (more on a busy machine is fine).
    replacement_boots_s = [at_s for _, at_s in boots[2:]]
    gaps_s = [later - earlier for earlier, later in zip(replacement_boots_s, replacement_boots_s[1:])]
    assert all(gap_s >= delay_s for gap_s, delay_s in zip(gaps_s, retries_s)), (gaps_s, retries_s)
    assert metrics.worker_restarts.value() == 1


def test_a_boot_failure_streak_is_reset_by_a_successful_boot(pools, caplog):
    caplog.set_level("WARNING", logger="detserve.pool")
    pool, metrics = pools.start(workers=1)
    wait_ready(pool)
    pools.boot_control.write_text("fail")
    answer(submit(pool, b"die"))
    wait_until(lambda: "retrying in 1.0 s" in caplog.text, "a second failed replacement")
    pools.boot_control.unlink()  # the next replacement boots
    wait_until(lambda: pool.ready_count() == 1, "a ready replacement")
    assert not pool.fatal.is_set()

    pools.boot_control.write_text("fail")
    caplog.clear()
    answer(submit(pool, b"die"))
    wait_until(lambda: "retrying in" in caplog.text, "a failed replacement")
    assert re.findall(r"retrying in ([\d.]+) s", caplog.text)[0] == "0.5"  # the back-off starts over
    assert not pool.fatal.is_set()


# -- stopping -----------------------------------------------------------------------------------------
def test_stop_answers_every_waiting_request_with_503_and_ends_every_process(pools):
    pool, metrics = pools.start(workers=1)
    wait_ready(pool)
    pids = pool.worker_pids()
    held = [submit(pool, b"hang"), submit(pool, b"ok")]  # the worker's credit: both sent to it
    queued = [submit(pool, b"ok", f"queued-{i}") for i in range(3)]
    wait_until(lambda: pool.queue_depth() == 3, "three requests waiting in the queue")

    pool.stop()
    for pending in held + queued:
        result = answer(pending)
        assert result.status == 503 and result.reject_reason is RejectReason.DRAINING, result
        assert "shutting down" in result.error
    assert all(pid_is_gone(pid) for pid in pids)
    with pytest.raises(Refusal) as refused:
        submit(pool, b"ok", "too-late")
    assert refused.value.status == 503 and refused.value.reason is RejectReason.DRAINING


def test_stop_with_idle_workers_ends_them_cleanly(pools):
    pool, metrics = pools.start(workers=2)
    wait_ready(pool)
    pids = pool.worker_pids()
    pool.stop()
    assert all(pid_is_gone(pid) for pid in pids)
    assert metrics.worker_restarts.value() == 0  # a worker that was told to stop is not replaced
    assert not pool.fatal.is_set()
