"""The demo pipeline end to end, at tiny sizes: every stage runs on real files and models,
and the report is written from them."""

import json
import subprocess
import sys

import pytest

from rlhfkit.config import load_config
from rlhfkit.demo import DemoConfig, agreement, main, same_prompt_pairs


def test_fast_sentiment_demo_writes_every_stage_and_the_report(tmp_path):
    out = tmp_path / "demo"
    # threads=2: the two RL runs go on side by side in two processes, as in `make demo`
    assert main(load_config(DemoConfig, None, [f"out={out}", "fast=true", "threads=2"])) == 0
    for stage in ("sft/model", "reward/model", "ppo/policy", "ppo_overopt/policy"):
        assert (out / stage / "config.json").exists(), stage
    assert (out / "ppo_overopt.yaml").exists()
    # each side-by-side run's own log and progress went to its output file, not the console
    assert "policy saved to" in (out / "ppo_overopt.out").read_text()
    pairs = (out / "data" / "pairs.jsonl").read_text().splitlines()
    assert pairs and all({"prompt", "chosen", "rejected"} <= json.loads(p).keys() for p in pairs)
    report = json.loads((out / "eval.json").read_text())
    for key in ("gold", "kl_to_sft", "distinct_2", "max_sentence_share"):
        assert key in report["before"] and key in report["after"] and key in report["ppo_overopt"]
    assert report["before"]["kl_to_sft"] == 0.0 and report["after"]["kl_to_sft"] > 0
    # even at these sizes the whole pipeline works: the gold score (never trained on) rose
    assert report["after"]["gold"] > report["before"]["gold"] + 0.1, report
    assert 0.0 <= report["reward_model_gold_accuracy"] <= 1.0
    # the labeler's noiseless length-biased score orders most pairs as gold, not all
    assert 0.8 < report["labeler_gold_agreement"] < 1.0
    gaps = report["reward_model_gold_accuracy_by_gap"]
    assert list(gaps) == ["0.0-0.05", "0.05-0.2", "0.2-0.5", "0.5-inf"]
    assert sum(g["pairs"] for g in gaps.values()) > 100
    # every stage is timed, the report too, and the total counts the time between them
    assert "8. report" in report["stage_seconds"]
    assert report["seconds"] >= sum(report["stage_seconds"].values()) - 0.5
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") >= 5 and "Samples before and after" in page
    assert "stage_seconds" in page and "labeler_gold_agreement" in page
    ppo_rows = [json.loads(line) for line in (out / "ppo" / "metrics.jsonl").read_text().splitlines()]
    assert all("gold/mean" in row for row in ppo_rows)
    assert (out / "figures" / "reward_vs_kl.png").exists()


def test_agreement_counts_pairs_ordered_as_gold_by_hand():
    gold_a, gold_b = [0.9, 0.1, 0.5, 0.3, 0.2], [0.1, 0.8, 0.5, 0.1, 0.4]
    # pair 3 is a gold tie (left out); 1 and 2 agree, 4 disagrees, 5 ties in the scores
    assert agreement(gold_a, gold_b, [2, 0, 7, 0, 1], [1, 3, 0, 5, 1]) == 0.5
    assert agreement([0.2], [0.2], [1], [0]) == 0.0  # nothing left to count


def test_reward_model_check_pairs_only_samples_of_one_prompt():
    prompts = ["a", "b", "c"] * 4  # 3 prompts, 4 samples each, as the check lays them out
    pairs = same_prompt_pairs(3, 4)
    assert len(pairs) == len(set(pairs)) == 3 * 6
    assert all(a != b and prompts[a] == prompts[b] for a, b in pairs)


def test_demo_refuses_an_occupied_folder_and_an_unknown_task(tmp_path):
    (tmp_path / "other.txt").write_text("someone else's run")
    for args, message in [([f"out={tmp_path}"], "already holds files; pass overwrite=true"),
                          (["task=poetry"], "task: expected one of sentiment, arithmetic")]:
        done = subprocess.run([sys.executable, "-m", "rlhfkit", "demo", *args],
                              capture_output=True, text=True)
        assert done.returncode == 2 and message in done.stderr
        assert len(done.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("start_method", ["fork", "spawn"])
def test_side_by_side_rl_runs_stop_and_name_the_run_that_failed(tmp_path, monkeypatch,
                                                                start_method):
    """With two free cores the demo's two RL runs go on in two processes (forked on Linux,
    started afresh elsewhere); one that fails stops the stage with an error that names its
    folder and shows the end of its output."""
    import torch

    from rlhfkit import demo
    from rlhfkit.demo import run_rl
    from rlhfkit.errors import RlhfkitError
    from rlhfkit.recipes.ppo_config import PPOConfig
    monkeypatch.setattr(demo, "RL_START_METHOD", start_method)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "The acting was"}\n')
    (tmp_path / "no_model").mkdir()
    configs = [load_config(PPOConfig, None, [f"policy={tmp_path / 'no_model'}", f"prompts={prompts}",
                                             f"out={tmp_path / name}", "reward.functions=[len]",
                                             "value.kind=head"])
               for name in ("ppo", "ppo_overopt")]
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with pytest.raises(RlhfkitError, match=r"the RL run in '.*' failed \(exit \d+\)") as failed:
            run_rl(configs, tmp_path)
    finally:
        torch.set_num_threads(threads)
    assert (tmp_path / "ppo.yaml").exists() and (tmp_path / "ppo_overopt.out").exists()
    # the failed run's own one-line error, which the child wrote into its output file
    assert "error: no tokenizer files in" in str(failed.value)
