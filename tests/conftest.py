"""Fixtures only; the helpers they use (and every test module uses) live in support.py."""

import pytest

from support import ServerProcess


@pytest.fixture(scope="session")
def server():
    """One shared 2-worker server for tests that do not change its state."""
    with ServerProcess("--workers", "2") as srv:
        yield srv
