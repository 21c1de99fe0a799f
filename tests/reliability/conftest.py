"""Fixtures of the reliability tests (helpers live in harness.py)."""

from __future__ import annotations

import logging

import pytest

from harness import ForkServer


@pytest.fixture(scope="session")
def forkserver(tmp_path_factory):
    server = ForkServer(tmp_path_factory.mktemp("forkserver"))
    yield server
    server.close()


@pytest.fixture(autouse=True)
def close_log_handlers():
    """In-process runs attach a log file of their run folder to the rlhfkit logger: close it
    after each test, so no test writes into another one's folder."""
    yield
    logger = logging.getLogger("rlhfkit")
    for handler in list(logger.handlers):
        handler.close()
        logger.removeHandler(handler)
