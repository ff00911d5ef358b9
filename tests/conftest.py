"""Fixtures only; the helpers they use (and every test module uses) live in support.py.

The servers here are shared by every module that asks for the same settings:
starting detserve loads the model in each worker, and that, not the tests,
was most of the suite's time. A test that changes a server's state for good
(kills or replaces a worker, drains, sends a signal) starts its own; one that
changes it for a moment (SIGSTOPs the worker) puts it back before it ends.
Each shared server runs from the first test that asks for it to the last
one, not to the end of the session, so idle models do not pile up in memory:
a test names the shared servers it uses among its fixtures (or its fixtures'),
where collection sees them, never through request.getfixturevalue.
"""

import contextlib
import uuid

import pytest

from support import ServerProcess

_last_user = {}  # shared server fixture -> node id of the last collected test that uses it
_running = {}    # shared server fixture -> its ServerProcess, while it runs


@pytest.hookimpl(trylast=True)  # after -k and -m have deselected what will not run
def pytest_collection_modifyitems(items):
    for item in items:
        for name in getattr(item, "fixturenames", ()):
            if name in SHARED_SERVERS:
                _last_user[name] = item.nodeid


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item, nextitem):
    try:
        return (yield)  # the test's own fixtures first: a browser tab may still be talking to the server
    finally:
        for name, last_user in _last_user.items():
            if last_user == item.nodeid and name in _running:
                _running.pop(name).stop()


@contextlib.contextmanager
def _shared(name, *args, **settings):
    with ServerProcess(*args, **settings) as srv:
        _running[name] = srv
        yield srv
        _running.pop(name, None)


@pytest.fixture(scope="session")
def server():
    """A 2-worker server with the default settings, for tests that do not change its state."""
    with _shared("server", "--workers", "2") as srv:
        yield srv


@pytest.fixture(scope="session")
def models_server():
    """Two workers serving yolov3-tiny (the default, first) and yolov4-tiny: the docs' example server
    (its answers with no model asked are the default server's) and the page's model tests."""
    with _shared("models_server", "--workers", "2", "--models", "yolov3-tiny,yolov4-tiny") as srv:
        yield srv


@pytest.fixture(scope="session")
def json_log_server():
    """One worker (so every request meets the same worker), JSON logs, bodies up to 24 MiB (room for 20 MB)."""
    with _shared("json_log_server", "--workers", "1", "--log-format", "json", "--max-body-mb", "24") as srv:
        yield srv


@pytest.fixture(scope="session")
def batching_server():
    """One worker that waits up to 300 ms to gather up to 4 requests in a forward pass."""
    with _shared("batching_server", "--workers", "1", "--max-batch", "4", "--max-wait-ms", "300") as srv:
        yield srv


@pytest.fixture(scope="session")
def keyed_server():
    """One worker behind an API key (from DETSERVE_API_KEY), which is srv.api_key."""
    api_key = "sk-detserve-" + uuid.uuid4().hex
    with _shared("keyed_server", "--workers", "1", env={"DETSERVE_API_KEY": api_key}) as srv:
        srv.api_key = api_key
        yield srv


@pytest.fixture(scope="session")
def tight_server():
    """One worker, one request at a time, room for one waiting request, bodies up to 1 MB:
    easy to overload (SIGSTOP its worker; SIGCONT it before the test ends) and to overfill."""
    with _shared("tight_server", "--workers", "1", "--queue-size", "1", "--max-batch", "1",
                 "--max-body-mb", "1") as srv:
        yield srv


@pytest.fixture(scope="session")
def quick_timeout_server():
    """Two workers; a client that is idle or slow for 1 s (its head, its body) is disconnected."""
    with _shared("quick_timeout_server", "--workers", "2", "--client-timeout-s", "1", "--head-timeout-s", "1") as srv:
        yield srv


@pytest.fixture(scope="session")
def bounded_body_server():
    """One worker; bodies up to 4 MiB, 16 MiB of them held at once, slow clients given 30 s."""
    with _shared("bounded_body_server", "--workers", "1", "--max-body-mb", "4", "--client-timeout-s", "30",
                 "--max-body-buffer-mb", "16") as srv:
        yield srv


SHARED_SERVERS = {"server", "models_server", "json_log_server", "batching_server", "keyed_server", "tight_server",
                  "quick_timeout_server", "bounded_body_server"}
