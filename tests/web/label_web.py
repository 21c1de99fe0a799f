"""Helpers of the web tests: a real `rlhfkit label` server in its own process, a real
headless Chromium driven by Selenium, bounded waits. The fixtures are in conftest.py.

The browser is Debian's `chromium` with `chromium-driver` (`scripts/ensure_browser.sh`, run
by `make test`, installs them). Where they are missing, the browser tests are skipped with
a reason saying so; a browser that is installed but fails to start is a failure.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

CHROMIUM = os.environ.get("RLHFKIT_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("RLHFKIT_CHROMEDRIVER", "/usr/bin/chromedriver")
CHROME_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", "--window-size=1280,860"]
START_SECONDS = 30   # bound on every wait for a server to come up
NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback only


# ---------------------------------------------------------------------------- the server

class LabelServer:
    """`python -m rlhfkit label ...` in a subprocess; `url` once it listens."""

    def __init__(self, args: list[str], cwd: Path):
        self.args, self.cwd = args, cwd
        self.process: subprocess.Popen | None = None
        self.url = ""
        self.output: list[str] = []

    def start(self, port: int = 0) -> LabelServer:
        command = [sys.executable, "-m", "rlhfkit", "label", *self.args, f"port={port}"]
        self.process = subprocess.Popen(command, cwd=self.cwd, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True)
        # A reader thread: waits stay bounded, and a chatty server never blocks on a full pipe.
        threading.Thread(target=self._read, daemon=True).start()
        self.url = wait_for(self._printed_url, START_SECONDS, "the server to print its URL")
        self._wait_healthy(time.monotonic() + START_SECONDS)
        return self

    def _read(self) -> None:
        for line in self.process.stdout:
            self.output.append(line)

    def _printed_url(self) -> str | None:
        found = re.search(r"open (http://\S+)", "".join(self.output))
        if found:
            return found.group(1)
        if self.process.poll() is not None:
            time.sleep(0.2)   # let the reader catch the last lines
            raise AssertionError("the server did not start:\n" + "".join(self.output))
        return None

    @property
    def port(self) -> int:
        return int(re.search(r":(\d+)/", self.url).group(1))

    def _wait_healthy(self, deadline: float) -> None:
        base = self.url.split("?")[0]
        token = re.search(r"token=([\w.~-]+)", self.url)
        headers = {"X-Rlhfkit-Token": token.group(1)} if token else {}
        request = urllib.request.Request(base + "healthz", headers=headers)
        while time.monotonic() < deadline:
            try:
                with NO_PROXY.open(request, timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(0.05)
        raise AssertionError("the server never answered /healthz")

    def kill(self) -> None:
        """SIGKILL: no clean shutdown, as in a crash or a power cut of the process."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None


# ---------------------------------------------------------------------------- the browser

def browser_missing() -> str | None:
    """Why there is no browser to test with, or None."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[dev]')"
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not (os.path.isfile(path) and os.access(path, os.X_OK)):
            return (f"{path} not found: install Debian's {package} (scripts/ensure_browser.sh, "
                    "run by `make test`, does it where apt-get works)")
    return None


def start_chrome(profile: str):
    """A headless Chromium (Debian's, through its chromedriver) with a fresh profile."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROME_FLAGS + [f"--user-data-dir={profile}"]:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    os.environ.setdefault("SE_OFFLINE", "true")   # Selenium Manager must not download drivers
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    driver.set_page_load_timeout(30)
    return driver


def console_errors(driver) -> list[str]:
    """The browser console's errors since the last call (warnings and logs left out)."""
    return [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def wait_for(condition, timeout: float = 10.0, what: str = "a condition"):
    """Poll `condition()` until it is truthy (bounded); return its value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.03)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")
