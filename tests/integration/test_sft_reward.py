"""SFT and reward-model recipes end to end: real tiny models, real files, real subprocesses.

    reward model   learns a synthetic preference (chosen responses hold more of a target
                   word) to >= 90 % held-out accuracy from ~50 % untrained; saves so plain
                   transformers scores identically, with the score stats PPO normalises with
    SFT            lowers the held-out loss and memorises its training completions
    resume         stopped after k steps and resumed == never stopped, bit for bit
    command line   bad input: exit code 2, one line naming file, line and field
"""

from __future__ import annotations

import json
import logging
import os
import random
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from rlhfkit.cli import main as cli_main
from rlhfkit.config import load_config
from rlhfkit.data import (PreferencePair, collate_preferences, collate_prompts,
                          collate_unique_responses, encode_prompt, load_preferences,
                          tokenize_preferences)
from rlhfkit.errors import ConfigError
from rlhfkit.generation import Sampling, sample_responses
from rlhfkit.metrics import read_metrics
from rlhfkit.models import (get_score_stats, init_reward_model, load_reward_model,
                            load_tokenizer, pooling_of, score_sequences)
from rlhfkit.recipes import reward_model, sft

RLHFKIT = str(Path(sys.executable).with_name("rlhfkit"))


# Learning tests on 2 shared cores: one intra-op thread avoids spin-waiting on a core
# another process holds (20x faster here); subprocesses get OMP_NUM_THREADS=1.
@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def close_log_handlers():
    """Recipes log to the console stream of the moment and to RUN_DIR/log.txt; close both
    so later tests neither write to a captured stream that is gone nor keep files open."""
    yield
    logger = logging.getLogger("rlhfkit")
    for handler in list(logger.handlers):
        handler.close()
        logger.removeHandler(handler)


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def same_weights(a: Path, b: Path) -> None:
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert wa.keys() == wb.keys()
    for name in wa:
        assert torch.equal(wa[name], wb[name]), name


def metric_rows(run_dir: Path, drop=("time", "tokens_per_s", "pairs_per_s")) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in drop} for row in read_metrics(run_dir)]


# ---------------------------------------------------------------------------- data

TARGET = "wonderful"
FILLER = ["the", "a", "house", "road", "tree", "river", "song", "bread", "box", "stone",
          "city", "garden", "quiet", "red", "blue", "old"]
SUBJECTS = ["the cat", "a dog", "my friend", "the old man", "our teacher", "a small bird",
            "the movie", "this book", "the weather", "her brother", "the robot", "a farmer"]


def preference_rows(n: int, seed: int, margins: bool = False) -> list[dict]:
    """Pairs whose chosen response holds the target word more often (1-3 times) than the
    rejected one (0-2 times); both are 8 words, so only the count tells them apart."""
    rng = random.Random(seed)

    def response(count: int) -> str:
        words = [rng.choice(FILLER) for _ in range(8 - count)] + [TARGET] * count
        rng.shuffle(words)
        return " " + " ".join(words) + "."

    rows = []
    for i in range(n):
        chosen_count = rng.randint(1, 3)
        row = {"prompt": f"Describe {rng.choice(SUBJECTS)}.",
               "chosen": response(chosen_count),
               "rejected": response(rng.randint(0, chosen_count - 1))}
        if margins and i % 2 == 0:  # the margin column, present on half of the rows
            row["margin"] = 0.5
        rows.append(row)
    return rows


def sft_rows(seed: int = 0) -> list[dict]:
    """24 prompt/completion pairs; each completion is a random sentence about the prompt's
    subject, so it can be memorised but not guessed."""
    rng = random.Random(seed)
    verbs = ["likes", "sees", "finds", "wants", "loves", "reads", "watches", "builds"]
    objects = ["a red apple", "the long road", "some warm bread", "an old song",
               "the blue sea", "a quiet garden", "the city lights", "a funny story"]
    tails = ["every day.", "in the evening.", "with great joy.", "near the house."]
    return [{"prompt": f"What does {s} do on {day}?",
             "completion": f" {s.capitalize()} {rng.choice(verbs)} {rng.choice(objects)} "
                           f"{rng.choice(tails)}"}
            for s in SUBJECTS for day in ("Monday", "Friday")]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    write_jsonl(root / "prefs_train.jsonl", preference_rows(300, seed=1))
    write_jsonl(root / "prefs_eval.jsonl", preference_rows(200, seed=2))
    write_jsonl(root / "prefs_margin.jsonl", preference_rows(48, seed=3, margins=True))
    write_jsonl(root / "sft.jsonl", sft_rows())
    return root


# ---------------------------------------------------------------------------- reward model

def reward_cfg(backbone, data_dir: Path, out: Path, *overrides: str):
    return load_config(reward_model.RewardModelConfig, None, [
        f"model={backbone}", f"data={data_dir / 'prefs_train.jsonl'}",
        f"eval_data={data_dir / 'prefs_eval.jsonl'}", f"out={out}", "device=cpu",
        "batch_size=16", "max_steps=25", "optim.lr=1e-3", "log.eval_every=100", *overrides])


@pytest.fixture(scope="module")
def rm_run(tiny_gpt2_dir, data_dir, tmp_path_factory):
    return reward_model.train(reward_cfg(tiny_gpt2_dir, data_dir,
                                         tmp_path_factory.mktemp("rm") / "run"))


def untrained_accuracy(backbone, tokenizer, items, seed: int) -> float:
    torch.manual_seed(seed)  # the head is drawn from torch's global generator
    model = init_reward_model(backbone, tokenizer)
    metrics = reward_model.evaluate_reward(model, items, 50, tokenizer.pad_token_id, "cpu", 0.0)
    return metrics["eval/accuracy"]


def test_reward_model_learns_held_out_preferences(rm_run, tiny_gpt2_dir, data_dir):
    untrained, trained = rm_run.first_eval, rm_run.last_eval
    print(f"held-out accuracy: untrained {untrained['eval/accuracy']:.3f}, "
          f"trained {trained['eval/accuracy']:.3f} (margin {trained['eval/margin']:.2f})")
    # Untrained models are at chance: 200 held-out pairs, so 0.3-0.7 is ±5.7 standard errors
    # of a coin flip. A random head is a random function of the text and may lean either way
    # on one seed (the run's seed 0 is the furthest from 0.5 of seeds 0-7); over head seeds
    # the accuracy centres on 0.5.
    tokenizer = rm_run.tokenizer
    items = tokenize_preferences(load_preferences(data_dir / "prefs_eval.jsonl", tokenizer),
                                 tokenizer, 512)[0]
    by_seed = [untrained_accuracy(tiny_gpt2_dir, tokenizer, items, seed) for seed in range(4)]
    print("untrained held-out accuracy for head seeds 0-3:", by_seed)
    assert by_seed[0] == untrained["eval/accuracy"]  # the recipe's step-0 evaluation
    assert all(0.3 <= a <= 0.7 for a in by_seed)
    assert 0.4 <= sum(by_seed) / len(by_seed) <= 0.6
    assert trained["eval/accuracy"] >= 0.9
    assert trained["eval/margin"] > 1.0 and trained["eval/loss"] < untrained["eval/loss"]
    assert trained["eval/chosen_mean"] > trained["eval/rejected_mean"]
    rows = read_metrics(rm_run.run_dir)
    assert rows[0]["step"] == 0 and rows[0]["eval/accuracy"] == untrained["eval/accuracy"]
    assert rows[-1]["step"] == 25 and rows[-1]["eval/accuracy"] == trained["eval/accuracy"]
    assert {"loss", "accuracy", "margin", "lr", "grad_norm", "eval/chosen_std",
            "eval/rejected_std"} <= rows[-1].keys()


def test_reward_model_loads_in_plain_transformers_with_identical_scores(rm_run, data_dir):
    folder = rm_run.run_dir / "model"
    plain = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    tokenizer = rm_run.tokenizer
    pairs = load_preferences(data_dir / "prefs_eval.jsonl", tokenizer)[:32]
    batch = collate_preferences(tokenize_preferences(pairs, tokenizer, 512)[0],
                                tokenizer.pad_token_id)
    ids, mask = batch["rejected_input_ids"], batch["rejected_attention_mask"]  # right-padded
    with torch.no_grad():
        theirs = plain(input_ids=ids, attention_mask=mask).logits[:, 0]
        ours = score_sequences(rm_run.model.eval(), ids, mask)
        reloaded, _ = load_reward_model(folder)
        ours_reloaded = score_sequences(reloaded.eval(), ids, mask)
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=0)
    torch.testing.assert_close(ours_reloaded, ours, atol=1e-5, rtol=0)

    # The stats PPO normalises with: mean and std of the scores of every training response.
    mean, std = get_score_stats(plain)
    assert (mean, std) == rm_run.score_stats
    train_pairs = load_preferences(data_dir / "prefs_train.jsonl", tokenizer)
    items = tokenize_preferences(train_pairs, tokenizer, 512)[0]
    scores = []
    with torch.no_grad():
        for start in range(0, len(items), 100):
            b = collate_preferences(items[start:start + 100], tokenizer.pad_token_id)
            for side in ("chosen", "rejected"):
                scores.append(plain(input_ids=b[f"{side}_input_ids"],
                                    attention_mask=b[f"{side}_attention_mask"]).logits[:, 0])
    scores = torch.cat(scores)
    assert len(scores) == 600
    assert mean == pytest.approx(float(scores.mean()), abs=1e-4)
    assert std == pytest.approx(float(scores.std()), abs=1e-4)


@pytest.mark.parametrize("pooling", ["last", "sum"])
def test_scoring_each_distinct_response_once_gives_the_two_pass_loss_and_gradient(
        tiny_gpt2_dir, pooling):
    """K = 3 responses to each of 4 prompts, all 3 pairs of each: the grouped batch scores 12
    rows instead of 24, and its Bradley-Terry loss and gradient are those of scoring the
    chosen and the rejected row of every pair apart (collate_preferences), padded or
    packed; read at the last token or summed over every token."""
    rng = random.Random(0)
    rows = []
    for subject in SUBJECTS[:4]:
        # short and long responses, so that packing puts several in one row
        responses = [" " + " ".join(rng.choice(FILLER) for _ in range(n)) + "."
                     for n in (1, 16, 2)]
        rows += [{"prompt": f"Describe {subject}.", "chosen": responses[i],
                  "rejected": responses[j]} for i, j in ((0, 1), (0, 2), (2, 1))]
    tokenizer = load_tokenizer(tiny_gpt2_dir)
    pairs = [PreferencePair(**row) for row in rows]
    items = tokenize_preferences(pairs, tokenizer, 64)[0]
    torch.manual_seed(0)
    model = init_reward_model(tiny_gpt2_dir, tokenizer, pooling=pooling).eval()

    def loss_and_grad(chosen, rejected):
        loss, _ = reward_model.reward_model_loss(chosen, rejected, None, 0.0)
        model.zero_grad()
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]

    grouped = collate_unique_responses(items, tokenizer.pad_token_id)
    assert grouped["input_ids"].shape[0] == 12
    loss, grads = loss_and_grad(*reward_model.score_pairs(model, grouped))
    apart = collate_preferences(items, tokenizer.pad_token_id)
    loss_apart, grads_apart = loss_and_grad(
        score_sequences(model, apart["chosen_input_ids"], apart["chosen_attention_mask"]),
        score_sequences(model, apart["rejected_input_ids"], apart["rejected_attention_mask"]))
    torch.testing.assert_close(loss, loss_apart, atol=1e-6, rtol=0)
    for g, g_apart in zip(grads, grads_apart, strict=True):   # float sums in another order
        torch.testing.assert_close(g, g_apart, atol=1e-5, rtol=1e-4)
    # packed several to a row (position ids restarting per response): the same again
    packed = collate_unique_responses(items, tokenizer.pad_token_id, pack=True)
    assert packed["input_ids"].shape[0] < 12
    loss_packed, grads_packed = loss_and_grad(*reward_model.score_pairs(model, packed))
    torch.testing.assert_close(loss_packed, loss_apart, atol=1e-6, rtol=0)
    for g, g_apart in zip(grads_packed, grads_apart, strict=True):
        torch.testing.assert_close(g, g_apart, atol=1e-5, rtol=1e-4)
    assert reward_model.packing_works(model, items, tokenizer.pad_token_id, "cpu")


def test_sum_pooled_reward_model_learns_and_reloads_with_its_pooling(tiny_gpt2_dir, data_dir,
                                                                    tmp_path):
    run = reward_model.train(reward_cfg(tiny_gpt2_dir, data_dir, tmp_path / "run",
                                        "pooling=sum"))
    print("sum pooling, held-out accuracy:", run.first_eval["eval/accuracy"], "->",
          run.last_eval["eval/accuracy"])
    assert run.last_eval["eval/accuracy"] >= 0.9
    reloaded, tokenizer = load_reward_model(run.run_dir / "model")
    assert pooling_of(reloaded) == "sum"
    # the score is the head summed over the real tokens, by hand from plain transformers
    plain = AutoModelForSequenceClassification.from_pretrained(run.run_dir / "model").eval()
    pairs = load_preferences(data_dir / "prefs_eval.jsonl", tokenizer)[:16]
    batch = collate_preferences(tokenize_preferences(pairs, tokenizer, 512)[0],
                                tokenizer.pad_token_id)
    ids, mask = batch["chosen_input_ids"], batch["chosen_attention_mask"]  # right-padded
    with torch.no_grad():
        hidden = plain.transformer(input_ids=ids, attention_mask=mask).last_hidden_state
        by_hand = (plain.score(hidden).squeeze(-1) * mask).sum(-1)
        torch.testing.assert_close(score_sequences(reloaded.eval(), ids, mask), by_hand,
                                   atol=1e-4, rtol=0)
        last = plain(input_ids=ids, attention_mask=mask).logits[:, 0]
    assert not torch.allclose(by_hand, last, atol=1e-2)  # a different reading from transformers'


def test_reward_model_resume_is_bit_exact(tiny_gpt2_dir, data_dir, tmp_path):
    # margins on half the rows, gradient accumulation, warmup + linear decay
    common = [f"data={data_dir / 'prefs_margin.jsonl'}", "eval_fraction=0.25", "batch_size=6",
              "grad_accum=2", "max_steps=5", "optim.warmup_steps=2", "center_coef=0.01"]
    whole = reward_model.train(reward_cfg(tiny_gpt2_dir, data_dir, tmp_path / "whole", *common))
    cut = reward_cfg(tiny_gpt2_dir, data_dir, tmp_path / "cut", *common, "stop_after=2")
    stopped = reward_model.train(cut)
    assert stopped.step == 2 and not (tmp_path / "cut" / "model").exists()
    resumed = reward_model.train(reward_cfg(tiny_gpt2_dir, data_dir, tmp_path / "cut", *common,
                                            "resume=true"))
    assert resumed.step == whole.step == 5
    same_weights(tmp_path / "whole" / "model", tmp_path / "cut" / "model")
    assert resumed.score_stats == whole.score_stats
    assert metric_rows(tmp_path / "cut") == metric_rows(tmp_path / "whole")


# ---------------------------------------------------------------------------- SFT

def sft_cfg(model, data_dir: Path, out: Path, *overrides: str):
    return load_config(sft.SFTConfig, None, [
        f"model={model}", f"data={data_dir / 'sft.jsonl'}", f"out={out}", "device=cpu",
        "eval_fraction=0.25", "batch_size=6", "optim.lr=5e-3", "optim.warmup_steps=5",
        "log.eval_every=1000", *overrides])


def greedy(model, tokenizer, prompt: str) -> str:
    batch = collate_prompts([encode_prompt(prompt, tokenizer)], tokenizer.pad_token_id)
    ids, mask, _ = sample_responses(model, batch["input_ids"], batch["attention_mask"],
                                    Sampling(max_new_tokens=40, temperature=0.0),
                                    tokenizer.eos_token_id, tokenizer.pad_token_id)
    return tokenizer.decode(ids[0][mask[0].bool()], skip_special_tokens=True)


def test_sft_lowers_held_out_loss_and_memorises_completions(tiny_gpt2_dir, data_dir, tmp_path):
    cfg = sft_cfg(tiny_gpt2_dir, data_dir, tmp_path / "run", "max_steps=120")
    run = sft.train(cfg)
    before, after = run.first_eval["eval/loss"], run.last_eval["eval/loss"]
    print(f"held-out loss {before:.3f} -> {after:.3f}, train loss {run.train_loss:.3f}")
    assert after < 0.5 * before
    assert run.last_eval["eval/perplexity"] == pytest.approx(torch.tensor(after).exp().item())

    # The final model is a plain HF folder; greedy decoding reproduces training completions.
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "model").eval()
    train_examples, _ = sft.load_splits(sft.load_sft, cfg, run.tokenizer)
    assert len(train_examples) == 18
    reproduced = [ex for ex in train_examples if greedy(model, run.tokenizer, ex.prompt)
                  == ex.completion]
    print(f"{len(reproduced)} of {len(train_examples)} training completions reproduced")
    assert len(reproduced) >= len(train_examples) // 2
    rows = read_metrics(tmp_path / "run")
    assert rows[0]["step"] == 0 and rows[-1]["step"] == 120 and "eval/loss" in rows[-1]
    for name in ("model.safetensors", "config.json", "tokenizer.json"):
        assert (tmp_path / "run" / "model" / name).is_file()


def test_sft_without_held_out_set(tiny_gpt2_dir, data_dir, tmp_path):
    run = sft.train(sft_cfg(tiny_gpt2_dir, data_dir, tmp_path / "run", "eval_fraction=0",
                            "max_steps=1"))
    assert run.step == 1 and run.first_eval is None and run.last_eval is None
    assert [row["step"] for row in read_metrics(tmp_path / "run")] == [1]


def test_sft_resume_is_bit_exact(tiny_gpt2_dir, data_dir, tmp_path):
    # dropout on (the SFT default): the resumed run must restore the random state too
    common = ["batch_size=4", "grad_accum=2", "max_steps=6", "optim.warmup_steps=2",
              "log.save_every=2", "log.eval_every=3"]
    whole = sft.train(sft_cfg(tiny_gpt2_dir, data_dir, tmp_path / "whole", *common))
    assert whole.model.config.resid_pdrop > 0
    stopped = sft.train(sft_cfg(tiny_gpt2_dir, data_dir, tmp_path / "cut", *common,
                                "stop_after=3"))
    assert stopped.step == 3
    resumed = sft.train(sft_cfg(tiny_gpt2_dir, data_dir, tmp_path / "cut", *common,
                                "resume=true"))
    assert resumed.step == 6
    same_weights(tmp_path / "whole" / "model", tmp_path / "cut" / "model")
    assert metric_rows(tmp_path / "cut") == metric_rows(tmp_path / "whole")


def test_sft_and_reward_model_with_lora_learn_resume_and_save_merged(tiny_gpt2_dir, data_dir,
                                                                      tmp_path):
    """LoRA in the first two stages: the adapters learn, a run stopped and resumed from its
    adapter checkpoint ends exactly like one that never stopped, and the final model is a
    plain folder (merged) — for the reward model with its score statistics."""
    common = ["lora.r=8", "optim.lr=1e-2", "max_steps=30", "log.save_every=10"]
    whole = sft.train(sft_cfg(tiny_gpt2_dir, data_dir, tmp_path / "whole", *common))
    # a random tiny model: the frozen embeddings and head cap how far adapters can take it
    assert whole.last_eval["eval/loss"] < 0.95 * whole.first_eval["eval/loss"]
    sft.train(sft_cfg(tiny_gpt2_dir, data_dir, tmp_path / "cut", *common, "stop_after=10"))
    assert (tmp_path / "cut/checkpoints/step-000010/model/adapter_config.json").is_file()
    sft.train(sft_cfg(tiny_gpt2_dir, data_dir, tmp_path / "cut", *common, "resume=true"))
    same_weights(tmp_path / "whole" / "model", tmp_path / "cut" / "model")
    assert not (tmp_path / "whole/model/adapter_config.json").exists()  # merged by default

    rm = reward_model.train(reward_cfg(tiny_gpt2_dir, data_dir, tmp_path / "rm", "lora.r=8",
                                       "optim.lr=1e-2", "max_steps=40"))
    assert rm.last_eval["eval/accuracy"] >= 0.8
    model, _ = load_reward_model(tmp_path / "rm/model")  # plain transformers, no peft
    assert rm.score_stats is not None
    assert get_score_stats(model) == pytest.approx(rm.score_stats)
    with pytest.raises(ConfigError, match="lora.save: a reward model is saved merged"):
        reward_cfg(tiny_gpt2_dir, data_dir, tmp_path / "x", "lora.r=8", "lora.save=adapter")


def test_resume_refuses_a_changed_config(tiny_gpt2_dir, data_dir, tmp_path):
    sft.train(sft_cfg(tiny_gpt2_dir, data_dir, tmp_path / "run", "max_steps=2"))
    with pytest.raises(ConfigError, match="optim.lr 0.005 vs 0.001"):
        sft.train(sft_cfg(tiny_gpt2_dir, data_dir, tmp_path / "run", "max_steps=2",
                          "optim.lr=1e-3", "resume=true"))


# ---------------------------------------------------------------------------- command line

BAD_PREFERENCES = {
    # name: (file contents, expected message after the file name)
    "malformed_jsonl": ('{"prompt": "a", "chosen": " x", "rejected": " y"}\n{"prompt": "b", \n',
                        ":2: invalid JSON"),
    "missing_chosen": ('{"prompt": "a", "chosen": " x", "rejected": " y"}\n'
                       '{"prompt": "b", "rejected": " y"}\n',
                       ":2: field 'chosen': missing (the row has: prompt, rejected)"),
    "empty_file": ("", ": no rows"),
    "chosen_equals_rejected": ('{"prompt": "a", "chosen": " same", "rejected": " same"}\n',
                               ":1: field 'rejected': identical to 'chosen'"),
    "non_string_field": ('{"prompt": "a", "chosen": 5, "rejected": " y"}\n',
                         ":1: field 'chosen': expected a string, got int"),
}


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run([RLHFKIT, *args], capture_output=True, text=True, timeout=120,
                          env=env)


SUBPROCESS_CASES = ("malformed_jsonl", "missing_chosen")


@pytest.fixture(scope="module")
def cli_results(tiny_gpt2_dir, tmp_path_factory) -> dict:
    """`rlhfkit reward` as a real subprocess on two bad files and with an unknown option, all
    at once. Each process spends seconds importing torch on shared cores, so the other bad
    files go through the same entry point in-process below."""
    root = tmp_path_factory.mktemp("cli")
    calls = {}
    for name in SUBPROCESS_CASES:
        (root / f"{name}.jsonl").write_text(BAD_PREFERENCES[name][0], encoding="utf-8")
        calls[name] = ("reward", f"model={tiny_gpt2_dir}", f"data={root / name}.jsonl",
                       f"out={root / name}")
    calls["unknown_option"] = ("reward", f"model={tiny_gpt2_dir}", "data=x.jsonl", "out=y",
                               "optim.lrr=1e-3")
    with ThreadPoolExecutor(max_workers=len(calls)) as pool:
        futures = {name: pool.submit(run_cli, *args) for name, args in calls.items()}
    return {"root": root, **{name: f.result() for name, f in futures.items()}}


def assert_one_line_error(returncode: int, stderr: str, expected: str) -> None:
    assert returncode == 2, stderr
    assert "Traceback" not in stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: ") and expected in lines[0], lines[0]


@pytest.mark.parametrize("name", SUBPROCESS_CASES)
def test_reward_cli_subprocess_bad_data_is_one_line_exit_2(cli_results, name):
    result, path = cli_results[name], cli_results["root"] / f"{name}.jsonl"
    assert_one_line_error(result.returncode, result.stderr,
                          f"{path}{BAD_PREFERENCES[name][1]}")
    assert result.stdout == ""
    assert not (cli_results["root"] / name).exists()  # no run folder left behind


def test_reward_cli_subprocess_unknown_option_is_one_line_exit_2(cli_results):
    result = cli_results["unknown_option"]
    assert_one_line_error(result.returncode, result.stderr,
                          "unknown option 'optim.lrr'; did you mean 'optim.lr'?")


# The same entry point in-process (a subprocess costs seconds of imports on shared cores).

@pytest.mark.parametrize("name", list(BAD_PREFERENCES))
def test_reward_cli_bad_data_is_one_line_exit_2(tiny_gpt2_dir, tmp_path, capsys, name):
    path = tmp_path / f"{name}.jsonl"
    path.write_text(BAD_PREFERENCES[name][0], encoding="utf-8")
    code = cli_main(["reward", f"model={tiny_gpt2_dir}", f"data={path}",
                     f"out={tmp_path / 'run'}"])
    assert_one_line_error(code, capsys.readouterr().err, f"{path}{BAD_PREFERENCES[name][1]}")
    assert not (tmp_path / "run").exists()


def test_sft_and_init_model_cli_bad_input_is_one_line_exit_2(tiny_gpt2_dir, tiny_corpus,
                                                             tmp_path, capsys):
    bad = write_jsonl(tmp_path / "sft_bad.jsonl", [{"prompt": "a", "completion": " b"},
                                                   {"prompt": "c", "completion": 5}])
    code = cli_main(["sft", f"model={tiny_gpt2_dir}", f"data={bad}", f"out={tmp_path / 'o'}"])
    assert_one_line_error(code, capsys.readouterr().err,
                          f"{bad}:2: field 'completion': expected a string, got int")
    code = cli_main(["init-model", "arch=gpt3", f"corpus={tiny_corpus}", f"out={tmp_path}"])
    assert_one_line_error(code, capsys.readouterr().err,
                          "arch: expected one of gpt2, llama, got 'gpt3'")
    code = cli_main(["init-model", f"corpus={tmp_path / 'none.txt'}", f"out={tmp_path / 'm'}"])
    assert_one_line_error(code, capsys.readouterr().err, "none.txt: no such file")


def test_init_model_cli_writes_a_plain_hf_folder(tiny_corpus, tmp_path, capsys):
    folder = tmp_path / "llama"
    assert cli_main(["init-model", "arch=llama", "size=tiny", f"corpus={tiny_corpus}",
                     f"out={folder}", "vocab_size=500"]) == 0
    out = capsys.readouterr().out.strip()
    assert out.startswith("llama tiny: ") and out.endswith(f"written to {folder}")
    model = AutoModelForCausalLM.from_pretrained(folder)
    assert model.config.model_type == "llama" and model.config.hidden_size == 64
    assert model.config.vocab_size <= 500
    # a second call refuses to write over it
    assert cli_main(["init-model", f"corpus={tiny_corpus}", f"out={folder}"]) == 2
    assert "overwrite=true" in capsys.readouterr().err


def test_sft_cli_runs_and_ends_with_a_summary_line(tiny_gpt2_dir, data_dir, tmp_path, capsys):
    assert cli_main(["sft", f"model={tiny_gpt2_dir}", f"data={data_dir / 'sft.jsonl'}",
                     f"out={tmp_path / 'run'}", "max_steps=2", "eval_fraction=0.25",
                     "device=cpu"]) == 0
    summary = [line for line in capsys.readouterr().err.splitlines() if line.startswith("sft: ")]
    assert len(summary) == 1 and summary[0].startswith("sft: 2 steps in ")
    assert "held-out loss" in summary[0]
    assert (tmp_path / "run" / "model" / "model.safetensors").is_file()
