"""Fixtures of the web tests: `label_server` (real server processes) and `chrome` (one
headless Chromium for the session). Without Debian's chromium and chromium-driver (which
`make test` installs through scripts/ensure_browser.sh where apt-get works) the browser
tests are skipped, and the reason says so; a browser that is there but fails to start is a
failure.
"""

import shutil
import tempfile

import pytest

from label_web import LabelServer, browser_missing, start_chrome


@pytest.fixture
def label_server(tmp_path):
    """A factory: `label_server(["pairs=...", "out=..."])` starts a server; all are killed
    at the end of the test."""
    servers: list[LabelServer] = []

    def start(args: list[str], port: int = 0) -> LabelServer:
        servers.append(LabelServer(args, tmp_path).start(port))
        return servers[-1]

    yield start
    for server in servers:
        server.kill()


@pytest.fixture(scope="session")
def chrome():
    """One headless Chromium for the whole session, with a fresh profile folder."""
    reason = browser_missing()
    if reason:
        pytest.skip(f"browser tests skipped: {reason}")
    profile = tempfile.mkdtemp(prefix="rlhfkit-chromium-")
    driver = start_chrome(profile)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)
