"""Numerical guard rails: a non-finite reward, loss or gradient skips the update with a
warning naming the model and the term; K in a row stop the run with the last good
checkpoint intact and a message saying what to try. Weights that are no longer finite are
never checkpointed.

PPO gets its NaNs the honest way, from a reward function; SFT and the reward model (which
have no reward function) get them from a fault injected into the loss or the gradient.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from harness import preference_rows, prompt_rows, sft_rows, write_jsonl
from rlhfkit.checkpoint import latest_checkpoint, list_checkpoints, verify_checkpoint
from rlhfkit.cli import main as cli_main
from rlhfkit.config import load_config
from rlhfkit.errors import RlhfkitError
from rlhfkit.metrics import read_metrics
from rlhfkit.recipes import ppo, reward_model, sft
from rlhfkit.recipes.ppo_config import PPOConfig

REWARDS = '''
CALLS = 0

def nan_from_third_call(prompts, responses):
    """Fine for two updates, then NaN for every response."""
    global CALLS
    CALLS += 1
    return [float("nan") if CALLS >= 3 else float(len(r)) for r in responses]

def huge(prompts, responses):
    """Finite, but its square overflows float32: the value loss becomes infinite."""
    return [1e30 for _ in responses]

def fine(prompts, responses):
    return [float(r.count(" ")) for r in responses]
'''


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # 2 shared cores: one thread avoids spin-waiting
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("guard_files")
    (root / "rewards.py").write_text(REWARDS)
    write_jsonl(root / "prompts.jsonl", prompt_rows(16))
    write_jsonl(root / "sft.jsonl", sft_rows())
    write_jsonl(root / "prefs.jsonl", preference_rows(32, seed=1))
    return root


def ppo_config(files, out, model, fn, *overrides):
    return load_config(PPOConfig, None, [
        f"policy={model}", f"prompts={files / 'prompts.jsonl'}", f"out={out}",
        f"reward.functions=[{files / 'rewards.py'}:{fn}]", "value.kind=critic",
        f"value.model={model}", "batch.num_updates=6", "batch.prompts_per_update=8",
        "batch.micro_batch_size=8", "sampling.max_new_tokens=6", "device=cpu",
        "reward.missing_eos_penalty=null", "log.save_every=1", "log.max_bad_updates=2",
        "log.sample_every=1000", *overrides])


def policy_weights(checkpoint: Path) -> dict:
    return load_file(checkpoint / "policy" / "model.safetensors")


# ---------------------------------------------------------------------------- PPO

def test_nan_rewards_skip_updates_then_stop_with_the_last_good_checkpoint_intact(
        files, tmp_path, tiny_gpt2_dir, capsys):
    """Updates 1-2 train; the reward function turns NaN at update 3: updates 3 and 4 are
    skipped with a warning naming it, and the second in a row stops the run (exit code 2,
    one line) naming the last good checkpoint, which is intact and holds the weights of
    update 2 (a skipped update changes nothing)."""
    out = tmp_path / "run"
    argv = ["ppo", *[f"{k}={v}" for k, v in [("policy", tiny_gpt2_dir),
            ("prompts", files / "prompts.jsonl"), ("out", out)]],
            f"reward.functions=[{files / 'rewards.py'}:nan_from_third_call]", "value.kind=critic",
            f"value.model={tiny_gpt2_dir}", "batch.num_updates=6", "batch.prompts_per_update=8",
            "batch.micro_batch_size=8", "sampling.max_new_tokens=6", "device=cpu",
            "reward.missing_eos_penalty=null", "log.save_every=1", "log.max_bad_updates=2"]
    assert cli_main(argv) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("error: stopped after 2 updates in a row with non-finite scores "
                            "(last: 8 of 8 scores from reward function")
    assert "nan_from_third_call" in error
    last = out / "checkpoints" / "step-000003"
    assert f"the last good checkpoint, {last}, is intact" in error
    assert "optim.lr, now 3e-06" in error and "reward.clip" in error
    log = (out / "log.txt").read_text()
    assert "update 3 skipped: 8 of 8 scores from reward function" in log
    assert "update 4 skipped" in log and "update 5" not in log
    assert verify_checkpoint(last) is None and latest_checkpoint(out) == last
    step2 = policy_weights(out / "checkpoints" / "step-000002")
    for name, value in policy_weights(last).items():
        assert torch.equal(value, step2[name]), name
    assert [r["step"] for r in read_metrics(out)] == [1, 2]  # nothing poisoned was logged


@pytest.mark.parametrize("value_kind, model_name", [("critic", "critic"), ("head", "value head")])
def test_an_overflowing_reward_names_the_value_loss_of_the_value_model(
        value_kind, model_name, files, tmp_path, tiny_gpt2_dir):
    """A finite reward of 1e30 gives a value loss of (1e30)^2 = inf in float32: every
    optimizer step is skipped naming the value loss and which value model, and K updates
    without a single step stop the run."""
    cfg = ppo_config(files, tmp_path, tiny_gpt2_dir, "huge", f"value.kind={value_kind}")
    with pytest.raises(RlhfkitError) as info:
        ppo.train(cfg)
    message = str(info.value)
    assert message.startswith("stopped after 2 updates in a row with non-finite losses or "
                              "gradients (last: every optimizer step was skipped (last: "
                              f"non-finite value loss of the {model_name} is inf")
    assert "policy loss" not in message  # the policy's loss stayed finite: not blamed
    log = (tmp_path / "log.txt").read_text()
    assert f"update 1: skipped an optimizer step: non-finite value loss of the {model_name}" in log
    assert "no checkpoint yet" in message or "is intact" in message


@pytest.fixture(scope="module")
def parts(files, tmp_path_factory, tiny_gpt2_dir):
    cfg = ppo_config(files, tmp_path_factory.mktemp("parts"), tiny_gpt2_dir, "fine")
    return ppo.build(cfg, torch.device("cpu"), None)


@pytest.mark.parametrize("model, parameter", [
    ("policy", "transformer.h.0.mlp.c_fc.weight"), ("critic", "model.score.weight")])
def test_a_nan_gradient_skips_the_step_naming_the_model_and_changes_nothing(
        model, parameter, parts, caplog):
    p = parts
    module = p.lm if model == "policy" else p.critic
    weight = dict(module.named_parameters())[parameter]
    before = {k: v.clone() for k, v in p.policy.state_dict().items()}
    handle = weight.register_hook(lambda grad: grad * float("nan"))
    try:
        rollout = ppo.collect_rollout(p)
        ppo.compute_advantages(rollout, p.cfg, 0.05)
        with caplog.at_level(logging.WARNING, logger="rlhfkit"):
            assert ppo.optimizer_step(p, torch.arange(8), rollout, 0.05) is None
    finally:
        handle.remove()
    assert f"non-finite gradient of the {model} (first at {parameter})" in caplog.text
    for name, value in p.policy.state_dict().items():
        assert torch.equal(value, before[name]), name
    assert all(q.grad is None for q in ppo.trainable(p))


def test_nan_log_probs_of_the_reference_model_are_named(parts):
    p = parts
    weight = p.ref.transformer.ln_f.weight
    saved = weight.detach().clone()
    with torch.no_grad():
        weight[0] = float("nan")
    try:
        problem = ppo.rollout_problem(p, ppo.collect_rollout(p))
    finally:
        with torch.no_grad():
            weight.copy_(saved)
    assert problem[1] == "model outputs"
    assert problem[0].endswith("log-probabilities of the reference model are not finite")


def test_weights_that_are_not_finite_are_never_checkpointed(parts, tmp_path):
    p = parts
    p.cfg.out = str(tmp_path)
    ppo.write_checkpoint(p)
    weight = p.critic.model.score.weight
    saved = weight.detach().clone()
    with torch.no_grad():
        weight[0, 0] = float("inf")
    try:
        p.update += 1
        with pytest.raises(RlhfkitError, match=r"the weights of the critic are not finite after "
                           r"update 1 \(first: model.score.weight\), so no checkpoint was"):
            ppo.write_checkpoint(p)
    finally:
        p.update -= 1
        with torch.no_grad():
            weight.copy_(saved)
    assert [c.name for c in list_checkpoints(tmp_path)] == ["step-000000"]


# ---------------------------------------------------------------------------- SFT, RM

def sft_config(files, out, model, *overrides):
    return load_config(sft.SFTConfig, None, [
        f"model={model}", f"data={files / 'sft.jsonl'}", f"out={out}", "device=cpu",
        "eval_fraction=0", "batch_size=4", "max_steps=6", "optim.lr=5e-3", "dropout=false",
        "log.save_every=1", "log.keep_last=10", "log.max_bad_steps=2", *overrides])


def nan_from(step_numbers, real):
    """`real`, with NaN outputs on the training calls numbered in `step_numbers` (1-based;
    calls under no_grad, such as the packing check at the start, are not counted)."""
    calls = {"n": 0}

    def wrapped(*args, **kwargs):
        calls["n"] += torch.is_grad_enabled()
        out = real(*args, **kwargs)
        if not torch.is_grad_enabled():
            return out
        if calls["n"] in step_numbers:
            first = out[0] if isinstance(out, tuple) else out
            return (first * float("nan"), *out[1:]) if isinstance(out, tuple) else first * float("nan")
        return out
    return wrapped


def test_sft_skips_a_nan_loss_and_changes_no_weight(files, tmp_path, tiny_gpt2_dir, monkeypatch):
    monkeypatch.setattr(sft, "completion_logprobs", nan_from({3}, sft.completion_logprobs))
    run = sft.train(sft_config(files, tmp_path, tiny_gpt2_dir))
    assert run.step == 6
    log = (tmp_path / "log.txt").read_text()
    assert ("step 3 skipped (no optimizer update): the loss (completion cross-entropy) of the "
            "SFT model is nan") in log
    assert "1 step(s) skipped for non-finite values" in log
    ckpt = lambda n: load_file(tmp_path / "checkpoints" / f"step-{n:06d}" / "model" / "model.safetensors")
    two, three, four = ckpt(2), ckpt(3), ckpt(4)
    assert all(torch.equal(three[k], two[k]) for k in two)          # the skipped step
    assert not all(torch.equal(four[k], three[k]) for k in three)   # training went on
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2, 4, 5, 6]


def test_sft_stops_after_k_bad_steps_with_the_last_good_checkpoint_intact(
        files, tmp_path, tiny_gpt2_dir, monkeypatch):
    monkeypatch.setattr(sft, "completion_logprobs", nan_from(set(range(3, 99)),
                                                             sft.completion_logprobs))
    with pytest.raises(RlhfkitError) as info:
        sft.train(sft_config(files, tmp_path, tiny_gpt2_dir))
    last = tmp_path / "checkpoints" / "step-000003"
    assert str(info.value).startswith(
        "stopped: 2 optimizer steps in a row had non-finite values (last, at step 4: the loss "
        f"(completion cross-entropy) of the SFT model is nan); the last good checkpoint, {last}, "
        "is intact. Try a lower learning rate (optim.lr, now 0.005)")
    assert latest_checkpoint(tmp_path) == last and verify_checkpoint(last) is None


def test_sft_skips_a_nan_gradient_naming_the_parameter(files, tmp_path, tiny_gpt2_dir,
                                                       monkeypatch):
    real_load = sft.load_causal_lm

    def load_with_a_poisoned_gradient(*args, **kwargs):
        model = real_load(*args, **kwargs)
        calls = {"n": 0}

        def hook(grad):  # the 2nd step's gradient (one micro-batch per step) is NaN
            calls["n"] += 1
            return grad * float("nan") if calls["n"] == 2 else grad
        model.transformer.h[1].attn.c_attn.weight.register_hook(hook)
        return model
    monkeypatch.setattr(sft, "load_causal_lm", load_with_a_poisoned_gradient)
    run = sft.train(sft_config(files, tmp_path, tiny_gpt2_dir, "max_steps=3"))
    assert run.step == 3
    assert ("step 2 skipped (no optimizer update): the gradient of the SFT model is not finite "
            "(first at transformer.h.1.attn.c_attn.weight)") in (tmp_path / "log.txt").read_text()


def test_reward_model_skips_a_nan_loss(files, tmp_path, tiny_gpt2_dir, monkeypatch):
    monkeypatch.setattr(reward_model, "score_pairs", nan_from({2}, reward_model.score_pairs))
    cfg = load_config(reward_model.RewardModelConfig, None, [
        f"model={tiny_gpt2_dir}", f"data={files / 'prefs.jsonl'}", f"out={tmp_path}",
        "device=cpu", "eval_fraction=0", "batch_size=8", "max_steps=3", "log.save_every=1"])
    run = reward_model.train(cfg)
    assert run.step == 3 and run.score_stats is not None
    assert ("step 2 skipped (no optimizer update): the loss (Bradley-Terry) of the reward model "
            "is nan") in (tmp_path / "log.txt").read_text()
