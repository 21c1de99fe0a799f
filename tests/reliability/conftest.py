"""Fixtures of the reliability tests (helpers live in harness.py)."""

from __future__ import annotations

import pytest

from harness import ForkServer


@pytest.fixture(scope="session")
def forkserver(tmp_path_factory):
    server = ForkServer(tmp_path_factory.mktemp("forkserver"))
    yield server
    server.close()
