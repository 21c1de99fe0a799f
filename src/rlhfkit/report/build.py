"""`build_report`: one self-contained HTML page from a run folder, and `rlhfkit report`.

    rlhfkit report run_dir=runs/ppo            -> runs/ppo/report.html, runs/ppo/figures/*.png

A run folder holds what the recipes write: metrics.jsonl (one line per update),
samples.jsonl (samples with per-token rewards, values, advantages and KL), config.yaml, and
optionally eval.json (a before/after comparison). A folder of runs (sft/, reward/, ppo/, ...)
works too: every subfolder with a metrics.jsonl becomes a section, in the order the runs
started, and runs with a "gold/..." signal share one proxy-vs-gold-vs-KL figure.

The page reads top to bottom like the lecture: what happened (summary), how it happened
(every training signal, with what a healthy curve looks like), what the policy wrote
(samples at the first and last update), and why, token by token (rewards, values,
advantages and KL on real trajectories).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from rlhfkit.config import REQUIRED, option
from rlhfkit.errors import DataError, RlhfkitError
from rlhfkit.metrics import METRICS_FILE, read_metrics
from rlhfkit.report.html import esc, eval_html, image_html, page_html, table_html
from rlhfkit.report.plots import numeric_keys, plot_metrics, plot_reward_vs_kl, series
from rlhfkit.report.signals import SUMMARY_KEYS, describe, group_by_key, group_named
from rlhfkit.report.tokens import token_view_html

__all__ = ["build_report", "Run", "find_runs", "read_samples", "ReportConfig", "main"]

REPORT_FILE = "report.html"
SAMPLES_FILE = "samples.jsonl"
EVAL_FILE = "eval.json"
PROMPT_CHARS = 200       # prompts in sample tables keep their end: the part the model continues


@dataclass
class Run:
    """One run folder of the report: its name (the section title), path and metrics rows."""
    name: str
    path: Path
    rows: list[dict]


# ---------------------------------------------------------------------------- reading

def find_runs(root: Path, names: Sequence[str] = ()) -> list[Run]:
    """The runs to report. `names` (folders relative to `root`, or absolute) are taken in the
    given order; without names, `root` itself and each subfolder holding a metrics.jsonl,
    ordered by the time of their first logged update (the order the pipeline ran them)."""
    if names:
        paths = [root / n for n in names]   # an absolute name replaces root in the join
        for path in paths:
            if not (path / METRICS_FILE).is_file():
                raise RlhfkitError(f"{path}: no {METRICS_FILE} in this run folder (runs=...)")
    else:
        paths = [root] if (root / METRICS_FILE).is_file() else []
        paths += sorted(p for p in root.iterdir() if p.is_dir() and (p / METRICS_FILE).is_file())
    if not paths:
        raise RlhfkitError(f"{root}: no {METRICS_FILE} here or in its subfolders "
                           "(has a run logged to this folder?)")
    runs = [Run(p.name if p != root else root.resolve().name, p, read_metrics(p)) for p in paths]
    if not names:
        runs.sort(key=lambda r: r.rows[0].get("time", 0) if r.rows else 0)
    return runs


def read_samples(run_dir: Path) -> list[dict]:
    """Rows of RUN_DIR/samples.jsonl ([] without one). A last line cut short by a crash is
    skipped; any other malformed line is a DataError naming the file and line."""
    path = run_dir / SAMPLES_FILE
    if not path.is_file():
        return []
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    rows = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            if number == len(lines):
                break  # a write cut short by a crash, not a malformed file
            raise DataError(path, number, None, f"not valid JSON ({err.msg})") from None
        if isinstance(row, dict):
            rows.append(row)
    return rows


def read_eval(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise DataError(path, err.lineno, None, f"not valid JSON ({err.msg})") from None
    return data if isinstance(data, dict) else {"eval": data}


# ---------------------------------------------------------------------------- run sections

def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m" if hours else (f"{minutes}m {secs:02d}s" if minutes else f"{secs}s")


def _first_last(rows: list[dict], key: str) -> tuple:
    _, values = series(rows, key)
    return (values[0], values[-1]) if values else (None, None)


def summary_html(run: Run) -> str:
    """Facts line (updates, wall time, start), then first vs last value of the key signals."""
    rows = run.rows
    if not rows:
        return '<p class="note">metrics.jsonl has no rows yet.</p>'
    facts = [f"{len(rows)} updates logged (steps {rows[0].get('step')}–{rows[-1].get('step')})"]
    if "time" in rows[0] and "time" in rows[-1]:
        # Each line is written at the end of its update: add the first update's own time.
        wall = rows[-1]["time"] - rows[0]["time"] + float(rows[0].get("time/update") or 0)
        started = time.strftime("%Y-%m-%d %H:%M", time.localtime(rows[0]["time"]))
        facts += [f"wall time {_duration(wall)}", f"started {started}"]
    present = numeric_keys(rows)
    keys = [k for k in SUMMARY_KEYS if k in present] or present[:12]
    table = []
    for key in keys:
        first, last = _first_last(rows, key)
        table.append({"signal": key, "first": first, "last": last, "change": last - first})
    return f"<p>{esc(' · '.join(facts))}</p>" + table_html(table)


def figures_html(run: Run, fig_dir: Path) -> str:
    """Every figure of the run with its group's intro and one line per signal it plots."""
    if not run.rows:
        return ""
    parts = []
    groups = group_by_key(numeric_keys(run.rows))
    for path in plot_metrics(run.rows, fig_dir):
        group = group_named(path.stem)
        lines = "".join(f"<li><code>{esc(k)}</code>: {esc(describe(k))}</li>"
                        for k in groups.get(path.stem, []))
        parts.append(f"<h3>{esc(group.title)}</h3><p>{esc(group.intro)}</p>"
                     f"{image_html(path, group.title)}<ul class=\"signals\">{lines}</ul>")
    return "\n".join(parts)


def _steps(samples: list[dict]) -> tuple:
    steps = sorted({s.get("step") for s in samples if isinstance(s.get("step"), int)})
    return (steps[0], steps[-1]) if steps else (None, None)


def samples_html(samples: list[dict]) -> str:
    """Prompt, response, score and KL of the samples at the first and the last logged step."""
    first, last = _steps(samples)
    if first is None:
        return '<p class="note">No samples.jsonl in this run.</p>'
    parts = []
    for step in dict.fromkeys([first, last]):
        rows = [{"prompt": _tail(s.get("prompt", "")), "response": s.get("response", ""),
                 "score": s.get("score"), "KL": s.get("kl")}
                for s in samples if s.get("step") == step]
        parts.append(f"<h3>Samples at update {esc(step)}</h3>{table_html(rows)}")
    return "\n".join(parts)


def _tail(text) -> str:
    text = str(text)
    return text if len(text) <= PROMPT_CHARS else "…" + text[-PROMPT_CHARS:]


def token_views_html(samples: list[dict], count: int) -> str:
    """`count` samples of the last step, then up to 2 of the first step for contrast."""
    first, last = _steps(samples)
    if first is None or count <= 0:
        return ""
    picks = [(last, s) for s in samples if s.get("step") == last and s.get("tokens")][:count]
    if first != last:
        picks += [(first, s) for s in samples if s.get("step") == first and s.get("tokens")][:min(2, count)]
    intro = ("<p>Each response token, four times: coloured by its reward, its value, its "
             "advantage and its KL to the reference. Watch the score arrive at the last token "
             "and GAE carry it back along the response as advantages.</p>")
    views = [token_view_html(s, f"update {step}, sample {i + 1}")
             for i, (step, s) in enumerate(picks)]
    return intro + "\n".join(views)


def run_body(run: Run, fig_dir: Path, token_views: int) -> str:
    """The body of one run's section: summary, figures, samples, token views, eval, config."""
    samples = read_samples(run.path)
    parts = [f'<p class="note">{esc(run.path)}</p>', summary_html(run),
             figures_html(run, fig_dir), samples_html(samples)]
    views = token_views_html(samples, token_views)
    if views:
        parts.append(f"<h3>Token-level view: rewards, values, advantages, KL</h3>{views}")
    evaluation = read_eval(run.path / EVAL_FILE)
    if evaluation is not None:
        parts.append(f"<h3>Evaluation before and after</h3>{eval_html(evaluation)}")
    config = run.path / "config.yaml"
    if config.is_file():
        text = config.read_text(encoding="utf-8", errors="replace")
        parts.append(f"<details><summary>config.yaml</summary><pre>{esc(text)}</pre></details>")
    return "\n".join(p for p in parts if p)


REWARD_VS_KL_TEXT = (
    "<p>Reward against KL to the reference, one colour per run: solid lines are the proxy "
    "reward the policy is trained on, dashed lines a gold judge it never sees. Gao et al. "
    "(2022) found the gold reward rises, peaks and then falls as KL grows, while the proxy "
    "keeps rising: past the peak the policy is exploiting the reward model, not getting "
    "better. The KL penalty is what keeps a run left of the peak. (Gao et al. plot against "
    "√KL; the shape of the story is the same.)</p>")


def _slug(name: str) -> str:
    """Letters, digits and dashes: safe as an HTML id and as a folder name."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "section"


def _anchor(name: str, taken: set[str]) -> str:
    """A unique id for a section title."""
    base = _slug(name)
    anchor, n = base, 2
    while anchor in taken:
        anchor, n = f"{base}-{n}", n + 1
    taken.add(anchor)
    return anchor


def build_report(run_dir: str | Path, out: str | Path | None = None, title: str | None = None,
                 runs: Sequence[str] = (), extra_sections: Sequence[tuple[str, str]] = (),
                 token_views: int = 3) -> Path:
    """Write a self-contained HTML report of a run (or a folder of runs); return its path.

    run_dir         a run folder, or a folder whose subfolders are runs (see `find_runs`)
    out             the HTML file (default RUN_DIR/report.html); PNGs go to RUN_DIR/figures/
    runs            subfolders to include, in this order (default: every run found)
    extra_sections  (title, html) pairs appended as they are: trusted HTML from the caller
    token_views     samples of the last update drawn token by token
    """
    root = Path(run_dir)
    if not root.is_dir():
        raise RlhfkitError(f"{root}: no such run folder")
    found = find_runs(root, runs)
    taken: set[str] = set()
    sections = []
    for run in found:
        fig_dir = root / "figures" if run.path == root else root / "figures" / _slug(run.name)
        sections.append((_anchor(run.name, taken), f"Run: {run.name}", run_body(run, fig_dir, token_views)))
    figure = plot_reward_vs_kl({r.name: r.rows for r in found}, root / "figures" / "reward_vs_kl.png")
    if figure is not None:
        body = REWARD_VS_KL_TEXT + image_html(figure, "proxy and gold reward against KL")
        sections.append((_anchor("proxy-gold-kl", taken), "Proxy vs gold reward vs KL", body))
    evaluation = read_eval(root / EVAL_FILE) if all(r.path != root for r in found) else None
    if evaluation is not None:
        sections.append((_anchor("evaluation", taken), "Evaluation before and after", eval_html(evaluation)))
    sections += [(_anchor(name, taken), name, body) for name, body in extra_sections]
    title = title or f"rlhfkit report: {root.resolve().name}"
    subtitle = f"{', '.join(r.name for r in found)} · built {time.strftime('%Y-%m-%d %H:%M')}"
    path = Path(out) if out else root / REPORT_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page_html(title, subtitle, sections), encoding="utf-8")
    return path


# ---------------------------------------------------------------------------- `rlhfkit report`

@dataclass
class ReportConfig:
    """Options of `rlhfkit report`."""

    run_dir: str = option(REQUIRED, "run folder (or a folder of run folders: sft/, reward/, ppo/ ...)")
    out: str | None = option(None, "HTML file to write (null: RUN_DIR/report.html)")
    title: str | None = option(None, "page title (null: 'rlhfkit report: <folder name>')")
    runs: list[str] = option([], "subfolders to include, in order (empty: every run found)")
    token_views: int = option(3, "samples of the last update drawn token by token", ge=0)


def main(cfg: ReportConfig) -> int:
    """`rlhfkit report`: rebuild the report from what the run folder holds."""
    path = build_report(cfg.run_dir, cfg.out, cfg.title, cfg.runs, token_views=cfg.token_views)
    print(f"report written to {path}")
    return 0
