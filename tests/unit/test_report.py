"""The HTML report: figures, escaping, token views and `rlhfkit report`, on synthetic runs."""

from __future__ import annotations

import base64
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

from rlhfkit.errors import RlhfkitError
from rlhfkit.report import (build_report, plot_metrics, readable_token, smooth, table_html,
                            token_colour, token_view_html)

SCRIPT = "<script>alert(1)</script>"
VALUE_KEYS = ("returns/mean", "value/explained_variance", "loss/value", "value_clip_frac",
              "value_error")


def metrics_row(step: int, critic: bool, gold: bool, overopt: bool = False) -> dict:
    """Plausible PPO numbers: the score rises, KL grows, entropy falls."""
    t = step / 20
    kl = (0.5 if not overopt else 3.0) * t
    row = {"step": step, "score/mean": 1.5 * t + 0.1 * math.sin(step), "score/std": 0.8 - 0.3 * t,
           "score/raw_mean": 1.5 * t + 0.05, "kl/mean": kl, "kl/coef": 0.05,
           "reward/total": 1.5 * t - 0.05 * kl, "reward/non_score": -0.05 * kl,
           "advantages/mean": 0.0, "response/length": 20 + 4 * t, "response/no_eos_frac": 0.3 * (1 - t),
           "loss/policy": -0.01 * math.cos(step), "policy/entropy": 2.5 - t, "clip_frac": 0.1,
           "approx_kl": 0.01, "ratio_mean": 1.0 + 0.01 * math.sin(step), "ratio_var": 0.001,
           "grad_norm": 1.0 + 0.2 * math.sin(step), "time/generate": 1.0, "time/score": 0.2,
           "time/forward": 0.3, "time/train": 0.8, "time/update": 2.4, "tokens_per_s": 300.0,
           "lr": 1e-5, "custom/thing": float(step), "time": 1_700_000_000.0 + 2.4 * step}
    if critic:
        row.update({"returns/mean": t, "value/explained_variance": t - 0.2, "loss/value": 1 - t / 2,
                    "value_clip_frac": 0.05, "value_error": 0.5 - t / 4})
    if gold:
        # over-optimised: the gold reward peaks and falls while the proxy keeps rising
        row["gold/mean"] = 0.8 * kl - (0.3 * kl * kl if overopt else 0.0)
    return row


def sample_row(step: int, response: str, tokens: list[str], critic: bool) -> dict:
    n = len(tokens)
    rewards = [-0.01 * (i % 3) for i in range(n - 1)] + [1.2]
    return {"step": step, "prompt": "Review: the film", "response": response, "score": 1.2,
            "kl": 0.3, "tokens": tokens, "rewards": rewards,
            "values": [0.1 * i for i in range(n)] if critic else None,
            "advantages": [(-1) ** i * 0.5 for i in range(n)], "token_kl": [0.02] * n}


def write_run(folder: Path, critic: bool = True, gold: bool = False, overopt: bool = False,
              updates: int = 20, keys: tuple[str, ...] = ()) -> Path:
    """A run folder; `keys` keeps only those metrics (fewer figures: faster tests)."""
    folder.mkdir(parents=True)
    rows = [metrics_row(s, critic, gold, overopt) for s in range(1, updates + 1)]
    if keys:
        rows = [{k: v for k, v in r.items() if k in ("step", "time", *keys)} for r in rows]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    tokens = ["Ġgreat", "Ġfilm", "!", "<|endoftext|>"]
    evil = ["<", "script", ">", "alert", "(", "1", ")</", "script", ">"]
    samples = [sample_row(1, " bad film", ["Ġbad", "Ġfilm"], critic),
               sample_row(updates, " great film!", tokens, critic),
               sample_row(updates, SCRIPT, evil, critic)]
    (folder / "samples.jsonl").write_text("".join(json.dumps(s) + "\n" for s in samples))
    (folder / "config.yaml").write_text("algo: ppo\nkl:\n  coef: 0.05\n")
    return folder


def write_eval(folder: Path) -> None:
    data = {"before": {"score": 0.1, "gold": 0.2}, "after": {"score": 1.4, "gold": 0.9},
            "samples": [{"prompt": "Review:", "before": "meh", "after": SCRIPT,
                         "gold_before": 0.1, "gold_after": 0.9}], "seed": 0}
    (folder / "eval.json").write_text(json.dumps(data))


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, str]:
    run = write_run(tmp_path_factory.mktemp("report") / "ppo", gold=True)
    write_eval(run)
    path = build_report(run)
    return run, path.read_text(encoding="utf-8")


def rlhfkit(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rlhfkit", *args], capture_output=True,
                          text=True, timeout=120)


# --- the page ---------------------------------------------------------------------------


def test_report_embeds_one_png_per_figure(built):
    run, page = built
    figures = sorted(p.name for p in (run / "figures").glob("*.png"))
    assert figures == sorted(["rewards.png", "kl.png", "policy.png", "value.png", "responses.png",
                              "optimisation.png", "speed.png", "other.png", "reward_vs_kl.png"])
    images = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) == len(figures)
    assert all(base64.b64decode(data)[:8] == b"\x89PNG\r\n\x1a\n" for data in images)


def test_report_is_self_contained_and_escapes_model_output(built):
    _, page = built
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page     # sample table and eval table
    assert "<script" not in page.lower()
    assert not re.search(r'(src|href)="(?!data:|#)', page)    # no external asset, no link out
    assert "<link" not in page.lower()


def test_report_has_every_section(built):
    _, page = built
    for text in ("1.5", "Samples at update 1", "Samples at update 20", "tokview",
                 "Evaluation before and after", "gold_after", "Proxy vs gold", "config.yaml",
                 "value/explained_variance", "custom/thing", "wall time"):
        assert text in page, text


# --- token views ------------------------------------------------------------------------


def test_token_colours_are_diverging_around_white():
    assert token_colour(0.0, 1.0)[0] == "#ffffff"
    positive, negative = token_colour(1.0, 1.0)[0], token_colour(-1.0, 1.0)[0]
    assert positive != negative
    assert int(positive[5:7], 16) > int(positive[1:3], 16)       # blue > red channel
    assert int(negative[1:3], 16) > int(negative[5:7], 16)       # red > blue channel
    assert token_colour(float("nan"), 1.0)[0] == token_colour(None, 1.0)[0] != "#ffffff"


def test_token_view_rows_hover_values_and_escaping():
    sample = sample_row(3, SCRIPT, ["<", "script", ">", "Ġhi"], critic=False)
    sample["advantages"] = [0.5, -0.5, 0.0, 0.25]
    view = token_view_html(sample)
    backgrounds = re.findall(r'class="chip" style="background:(#[0-9a-f]{6})', view)
    assert len(backgrounds) == 3 * 4                          # values row absent: critic-free
    advantages = backgrounds[4:8]
    assert advantages[0] != advantages[1] and advantages[2] == "#ffffff"
    assert "critic-free" in view and 'title="advantage of token 1' in view and "-0.5" in view
    assert "<script" not in view and "&lt;" in view


def test_readable_tokens():
    assert readable_token("Ġgood") == " good"
    assert readable_token("Ċ") == "\n"
    assert readable_token("▁good") == " good"
    assert readable_token("<|endoftext|>") == "<|endoftext|>"
    assert readable_token("Ã©") == "é"                       # a two-byte character in one token


# --- pieces -----------------------------------------------------------------------------


def test_smooth_has_no_lag_and_reduces_noise():
    line = [0.5 * i + 1 for i in range(600)]                 # > 512: crosses a block boundary
    assert smooth(line) == pytest.approx(line)               # a trend is kept, ends included
    noisy = [(-1.0) ** i for i in range(40)]
    assert max(abs(v) for v in smooth(noisy)) < 0.4                # edges keep the most
    assert smooth([1.0, 2.0]) == [1.0, 2.0]


def test_table_takes_any_rows_and_columns():
    table = table_html([{"a": 1, "b": "<x>"}, {"a": 2.123456, "c": None}])
    assert "<th>a</th><th>b</th><th>c</th>" in table and "&lt;x&gt;" in table and "2.123" in table
    chosen = table_html([{"a": 1, "b": 2}], ["b"])
    assert "<th>b</th>" in chosen and "<th>a" not in chosen


def test_plot_metrics_skips_absent_and_nonfinite(tmp_path):
    rows = [{"step": i, "kl/mean": float("nan") if i == 2 else 0.1 * i, "loss": 1.0 / i}
            for i in range(1, 6)]
    paths = plot_metrics(rows, tmp_path)
    assert [p.name for p in paths] == ["kl.png", "other.png"] and all(p.stat().st_size for p in paths)


def test_critic_free_run_builds_without_value_figure(tmp_path):
    run = write_run(tmp_path / "grpo", critic=False, updates=6)
    page = build_report(run, out=tmp_path / "page.html", token_views=1).read_text()
    assert not (run / "figures" / "value.png").exists() and (run / "figures" / "policy.png").exists()
    assert "critic-free" in page and not any(key in page for key in VALUE_KEYS)


def test_folder_of_runs_shares_one_gold_vs_kl_figure(tmp_path):
    few = ("score/mean", "kl/mean", "gold/mean")
    write_run(tmp_path / "ppo", gold=True, updates=5, keys=few)
    write_run(tmp_path / "ppo_overopt", gold=True, overopt=True, updates=5, keys=few)
    write_eval(tmp_path)
    page = build_report(tmp_path, runs=["ppo", "ppo_overopt"], token_views=0,
                        extra_sections=[("Notes", "<p>hand-written</p>")]).read_text()
    assert (tmp_path / "figures" / "reward_vs_kl.png").exists()
    assert (tmp_path / "figures" / "ppo" / "rewards.png").exists()
    assert (tmp_path / "figures" / "ppo-overopt" / "rewards.png").exists()
    assert page.index("Run: ppo<") < page.index("Run: ppo_overopt") < page.index("Proxy vs gold")
    assert "Evaluation before and after" in page and "<p>hand-written</p>" in page
    with pytest.raises(RlhfkitError, match="no metrics.jsonl"):
        build_report(tmp_path, runs=["sft"])


# --- the command ------------------------------------------------------------------------


def test_command_rebuilds_the_report(tmp_path):
    run = write_run(tmp_path / "run", updates=4, keys=("score/mean",))
    result = rlhfkit("report", f"run_dir={run}", f"out={tmp_path / 'r.html'}", "token_views=1")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "r.html").is_file() and "report written to" in result.stdout


def test_command_without_metrics_is_a_one_line_error(tmp_path):
    (tmp_path / "empty").mkdir()
    result = rlhfkit("report", f"run_dir={tmp_path / 'empty'}")
    assert result.returncode == 2
    assert len(result.stderr.splitlines()) == 1 and result.stderr.startswith("error: ")
    assert "no metrics.jsonl" in result.stderr and "Traceback" not in result.stderr
