"""The labelling page in a real headless Chromium, against a real server process.

1. Twenty pairs sampled from a tiny GPT-2 are labelled by clicks and by keys, with undo,
   tie and skip on the way; the server is killed (SIGKILL) in the middle and started again,
   the page sends its pending choice once the server is back, and at the end the JSONL holds
   exactly the twenty expected judgements, which `rlhfkit reward` trains on.
2. Prompts and responses holding HTML and script show as text, run nothing, and the page
   fits a phone's screen.
"""

import json
import os
import shutil

import pytest

pytest.importorskip("selenium", reason="browser tests skipped: selenium is not installed "
                                       "(pip install -e '.[dev]')")

from label_web import console_errors, wait_for  # noqa: E402
from selenium.common.exceptions import NoAlertPresentException  # noqa: E402
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402

from rlhfkit.cli import main as cli  # noqa: E402
from rlhfkit.data import load_preferences  # noqa: E402
from rlhfkit.label import read_pairs  # noqa: E402

PROMPTS = ["The cat", "A dog likes", "My friend sees", "The old man", "Our teacher",
           "The movie was", "This book", "The weather", "The robot builds", "What is 3 + 4?"]


class LabelPage:
    """What a person sees and does on the page, read from and done to the real DOM."""

    def __init__(self, driver):
        self.driver = driver

    def state(self) -> str:
        return self.driver.execute_script("return document.body.dataset.state")

    def shown(self) -> tuple[str, str, str]:
        """(pair id, left response, right response), the texts exactly as displayed."""
        return tuple(self.driver.execute_script(
            "const t = (id) => document.getElementById(id).textContent;"
            "return [document.getElementById('task').dataset.pairId || '',"
            "        t('left'), t('right')];"))

    def wait_state(self, *states: str, timeout: float = 10) -> str:
        return wait_for(lambda: self.state() if self.state() in states else None, timeout,
                        f"page state in {states} (now {self.state()!r})")

    def wait_other_pair(self, pair_id: str, timeout: float = 10) -> None:
        """Until the page shows a pair other than `pair_id`, or says it is done."""
        wait_for(lambda: self.state() == "done" or
                 (self.state() == "ready" and self.shown()[0] != pair_id), timeout,
                 f"a pair other than {pair_id}")

    def wait_pair(self, pair_id: str) -> None:
        wait_for(lambda: self.state() == "ready" and self.shown()[0] == pair_id, 10,
                 f"pair {pair_id} again")

    def click(self, element_id: str) -> None:
        self.driver.find_element(By.ID, element_id).click()

    def press(self, key: str) -> None:
        ActionChains(self.driver).send_keys(key).perform()

    def start(self, url: str, name: str) -> None:
        self.driver.get(url)
        self.wait_state("name")
        assert console_errors(self.driver) == []
        self.driver.find_element(By.ID, "annotator").send_keys(name, Keys.ENTER)
        self.wait_state("ready")


def save_screenshot(driver, path) -> None:
    """Save a PNG (and copy it to $RLHFKIT_SCREENSHOTS when set, to look at or publish)."""
    assert driver.save_screenshot(str(path))
    data = path.read_bytes()
    assert data.startswith(b"\x89PNG") and len(data) > 5000
    if os.environ.get("RLHFKIT_SCREENSHOTS"):
        shutil.copy(path, os.environ["RLHFKIT_SCREENSHOTS"])


def rows(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def sample_twenty_pairs(model_dir, folder):
    prompts = folder / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    out = folder / "pairs.jsonl"
    assert cli(["sample-pairs", f"model={model_dir}", f"prompts={prompts}", f"out={out}",
                "pairs_per_prompt=2", "sampling.max_new_tokens=10", "sampling.device=cpu"]) == 0
    pairs = read_pairs(out)
    assert len(pairs) == 20
    return out, pairs


def test_twenty_pairs_by_clicks_and_keys_survive_a_server_crash(chrome, label_server,
                                                                tiny_gpt2_dir, tmp_path):
    pairs_file, pairs = sample_twenty_pairs(tiny_gpt2_dir, tmp_path)
    out, args = tmp_path / "prefs.jsonl", [f"pairs={pairs_file}", "out=prefs.jsonl"]
    server = label_server(args)
    page = LabelPage(chrome)
    page.start(server.url, "ana")
    expected = {}   # pair id -> (chosen, rejected), as the person saw and picked them

    # 1. ten judgements by clicking, one of them taken back and given again
    for i in range(10):
        pair_id, left, right = page.shown()
        side = "left" if i % 2 == 0 else "right"
        page.click(f"choose-{side}")
        page.wait_other_pair(pair_id)
        if i == 3:
            page.click("undo")
            page.wait_pair(pair_id)
            assert page.shown() == (pair_id, left, right)     # same pair, same sides
            side = "left"
            page.click("choose-left")
            page.wait_other_pair(pair_id)
        expected[pair_id] = (left, right) if side == "left" else (right, left)
    assert len(rows(out)) == 10      # each one on disk before the next pair was shown

    # 2. the server dies in the middle; the next choice waits for it
    port = server.port
    server.kill()
    pair_id, left, right = page.shown()
    page.press("1")
    page.wait_state("offline")
    expected[pair_id] = (left, right)
    outage = console_errors(chrome)
    assert all("ERR_CONNECTION_REFUSED" in message for message in outage), outage

    # 3. it comes back on the same port: the page sends the pending choice by itself
    label_server(args, port=port)
    page.wait_other_pair(pair_id, timeout=20)

    # 4. the rest by keys; a tie and a skip are taken back with undo
    for key in ("t", "s"):
        pair_id = page.shown()[0]
        page.press(key)
        page.wait_other_pair(pair_id)
        page.press("u")
        page.wait_pair(pair_id)
    for i in range(20):
        if page.state() == "done":
            break
        pair_id, left, right = page.shown()
        page.press("2" if i % 2 else "1")
        expected[pair_id] = (right, left) if i % 2 else (left, right)
        page.wait_other_pair(pair_id)
    page.wait_state("done")
    assert chrome.find_element(By.ID, "progress").text.startswith("20 / 20 labelled")
    assert "All done" in chrome.find_element(By.ID, "message").text
    save_screenshot(chrome, tmp_path / "label-done.png")
    assert console_errors(chrome) == []

    check_judgements(out, pairs, expected, tiny_gpt2_dir)


def check_judgements(out, pairs, expected: dict, model_dir) -> None:
    """The JSONL holds exactly one judgement per pair, the one the person made, and
    `rlhfkit reward` trains on it."""
    written = rows(out)
    assert len(written) == 20 and {r["pair_id"] for r in written} == {p.pair_id for p in pairs}
    for row in written:
        assert (row["chosen"], row["rejected"]) == expected[row["pair_id"]]
        assert row["annotator"] == "ana" and row["label"] in ("a", "b")
    assert rows(out.with_name("prefs.ties_skips.jsonl")) == []   # the tie and skip were undone
    assert len(load_preferences(out)) == 20
    assert cli(["reward", f"model={model_dir}", f"data={out}", f"out={out.parent / 'rm'}",
                "max_steps=2", "batch_size=10", "eval_fraction=0", "device=cpu"]) == 0
    assert (out.parent / "rm" / "model" / "config.json").exists()


def test_html_and_script_show_as_text_and_the_page_fits_a_phone(chrome, label_server, tmp_path):
    hostile = "<script>alert(1)</script>"
    other = "<img src=x onerror=alert(2)> & &amp; <a href='javascript:alert(3)'>link</a>"
    prompt = "<b>Which</b> is better? </div><script>alert(4)</script>"
    pairs_file = tmp_path / "pairs.jsonl"
    pairs_file.write_text(
        json.dumps({"prompt": prompt, "response_a": hostile, "response_b": other}) + "\n" +
        json.dumps({"prompt": "A second prompt, for the phone", "response_a": " An answer. " * 12,
                    "response_b": " Another one. " * 15}) + "\n")
    server = label_server([f"pairs={pairs_file}", "out=prefs.jsonl"])
    page = LabelPage(chrome)
    page.start(server.url, "eve")
    shown = chrome.execute_script(
        "return {prompt: document.getElementById('prompt').textContent,"
        " left: document.getElementById('left').textContent,"
        " right: document.getElementById('right').textContent,"
        " scripts: document.scripts.length, images: document.images.length,"
        " links: document.links.length,"
        " nested: document.querySelectorAll('#prompt *, #left *, #right *').length}")
    assert shown["prompt"] == prompt and {shown["left"], shown["right"]} == {hostile, other}
    assert (shown["scripts"], shown["images"], shown["links"], shown["nested"]) == (1, 0, 0, 0)
    try:
        chrome.switch_to.alert
        raise AssertionError("an alert opened: a response ran as script")
    except NoAlertPresentException:
        pass
    assert console_errors(chrome) == []     # a blocked script would be a CSP error here
    pair_id = page.shown()[0]
    page.press("1" if shown["left"] == hostile else "2")
    page.wait_other_pair(pair_id)
    assert rows(tmp_path / "prefs.jsonl")[0]["chosen"] == hostile   # stored verbatim

    # a phone: 390 css px wide, touch screen
    chrome.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                           {"width": 390, "height": 844, "deviceScaleFactor": 2, "mobile": True})
    try:
        chrome.refresh()
        page.wait_state("ready")    # the name was remembered
        layout = chrome.execute_script(
            "const box = (id) => document.getElementById(id).getBoundingClientRect();"
            "return {scroll: document.documentElement.scrollWidth, width: innerWidth,"
            " leftBottom: box('left').bottom, rightTop: box('right').top,"
            " button: box('choose-right').right, buttonHeight: box('choose-left').height}")
        assert layout["width"] == 390 and layout["scroll"] <= layout["width"]
        assert layout["leftBottom"] < layout["rightTop"]             # stacked, not squeezed
        assert layout["button"] <= 390 and layout["buttonHeight"] >= 40   # a thumb can hit it
        save_screenshot(chrome, tmp_path / "label-phone.png")
    finally:
        chrome.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
    assert console_errors(chrome) == []
