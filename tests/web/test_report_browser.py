"""The demo's report.html in a real headless Chromium: it loads from disk with no console
error, every figure decodes, every link of the top bar lands on a section, a screenshot is
taken. The report comes from a real `rlhfkit demo fast=true` run (about 15 s on 2 cores)."""

import pytest

from label_web import console_errors, wait_for
from rlhfkit.config import load_config
from rlhfkit.demo import DemoConfig, main as demo


@pytest.fixture(scope="module")
def demo_report(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "demo"
    assert demo(load_config(DemoConfig, None, [f"out={out}", "fast=true", "threads=1"])) == 0
    return out / "report.html"


def test_the_demo_report_renders_in_a_real_browser(chrome, demo_report, tmp_path):
    console_errors(chrome)                  # start from an empty console
    chrome.get(demo_report.as_uri())
    wait_for(lambda: chrome.execute_script("return document.readyState") == "complete", 20,
             "the report to load")
    page = chrome.execute_script(
        "const images = Array.from(document.images);"
        "return {title: document.title,"
        " images: images.length,"
        " broken: images.filter((i) => !i.complete || i.naturalWidth === 0).map((i) => i.alt),"
        " anchors: Array.from(document.querySelectorAll('nav a')).map((a) => a.hash.slice(1)),"
        " ids: Array.from(document.querySelectorAll('[id]')).map((e) => e.id),"
        " scripts: document.scripts.length,"
        " text: document.body.innerText.length}")
    assert page["title"].startswith("rlhfkit demo: sentiment")
    assert page["images"] >= 5 and page["broken"] == []
    assert page["anchors"] and set(page["anchors"]) <= set(page["ids"])
    assert page["scripts"] == 0 and page["text"] > 2000
    assert console_errors(chrome) == []
    shot = tmp_path / "report.png"
    assert chrome.save_screenshot(str(shot)) and shot.read_bytes().startswith(b"\x89PNG")
