"""Screenshots of the labelling page for the README: a laptop and a phone.

    rlhfkit sample-pairs model=runs/demo/sft/model prompts=runs/demo/data/eval_prompts.jsonl \
        out=/tmp/pairs.jsonl
    python scripts/label_screenshot.py /tmp/pairs.jsonl docs/images

Starts `rlhfkit label` on a free loopback port with a throw-away output file, opens it in
Debian's headless Chromium (through Selenium), labels three pairs so the progress shows,
and writes OUT_DIR/label.png (1280x720) and OUT_DIR/label-phone.png (390 css px wide).
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--window-size=1280,720", "--hide-scrollbars"]


def start_server(pairs: Path, work: Path) -> tuple[subprocess.Popen, str]:
    """`rlhfkit label` on port 0; returns the process and the URL it printed."""
    server = subprocess.Popen([sys.executable, "-m", "rlhfkit", "label", f"pairs={pairs}",
                               f"out={work / 'prefs.jsonl'}", "port=0"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for _ in range(50):   # the URL is the second line it prints
        line = server.stdout.readline()
        found = re.search(r"open (http://\S+)", line)
        if found:
            return server, found.group(1)
    server.kill()
    raise SystemExit("the label server did not start")


def wait_state(driver, state: str) -> None:
    for _ in range(200):
        if driver.execute_script("return document.body.dataset.state") == state:
            return
        time.sleep(0.05)
    raise SystemExit(f"the page never reached state {state!r}")


def main(pairs: Path, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as work:
        server, url = start_server(pairs, Path(work))
        options = webdriver.ChromeOptions()
        options.binary_location = "/usr/bin/chromium"
        for flag in FLAGS + [f"--user-data-dir={work}/profile"]:
            options.add_argument(flag)
        driver = webdriver.Chrome(options=options, service=Service("/usr/bin/chromedriver"))
        try:
            driver.get(url)
            wait_state(driver, "name")
            driver.find_element(By.ID, "annotator").send_keys("ana", Keys.ENTER)
            for key in "121":
                wait_state(driver, "ready")
                ActionChains(driver).send_keys(key).perform()
                time.sleep(0.3)
            wait_state(driver, "ready")
            driver.save_screenshot(str(out_dir / "label.png"))
            driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                                   {"width": 390, "height": 844, "deviceScaleFactor": 1,
                                    "mobile": True})
            driver.refresh()
            wait_state(driver, "ready")
            driver.save_screenshot(str(out_dir / "label-phone.png"))
        finally:
            driver.quit()
            server.kill()
    print(f"wrote {out_dir / 'label.png'} and {out_dir / 'label-phone.png'}")


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3):
        raise SystemExit(__doc__)
    main(Path(sys.argv[1]), Path(sys.argv[2] if len(sys.argv) == 3 else "docs/images"))
