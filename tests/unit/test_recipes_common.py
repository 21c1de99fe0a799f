"""Pieces of the SFT and reward-model recipes: step plan, held-out split, the SFT loss,
gradient accumulation, config defaults and command registration."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from rlhfkit.cli import commands
from rlhfkit.config import check_config_class, load_config
from rlhfkit.data import (PreferencePair, SFTExample, collate_packed_sft, collate_sft,
                          tokenize_preferences, tokenize_sft)
from rlhfkit.errors import DataError
from rlhfkit.models import disable_dropout, init_reward_model, load_policy
from rlhfkit.models.tiny import ARCHS, SIZES
from rlhfkit.recipes import init_model, reward_model, sft


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models on shared cores: one intra-op thread never waits for a busy core."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ---------------------------------------------------------------------------- data plan

@pytest.mark.parametrize("n, batch_size, grad_accum",
                         [(10, 4, 2), (10, 3, 1), (7, 8, 3), (1, 1, 1)])
def test_step_plan_covers_each_example_once_per_epoch(n, batch_size, grad_accum):
    plan = sft.StepPlan(n, batch_size, grad_accum, seed=3)
    epochs = []
    for epoch in range(2):
        seen = []
        for step in range(epoch * plan.steps_per_epoch, (epoch + 1) * plan.steps_per_epoch):
            micro = plan.micro_batches(step)
            assert 1 <= len(micro) <= grad_accum
            assert all(1 <= len(rows) <= batch_size for rows in micro)
            seen += [i for rows in micro for i in rows]
        assert sorted(seen) == list(range(n))
        epochs.append(seen)
    if n > 3:
        assert epochs[0] != epochs[1]  # reshuffled every epoch
    assert plan.micro_batches(5) == sft.StepPlan(n, batch_size, grad_accum, 3).micro_batches(5)
    assert plan.total_steps(epochs=3, max_steps=None) == 3 * plan.steps_per_epoch
    assert plan.total_steps(epochs=3, max_steps=7) == 7


def groups_of(keys: list) -> tuple[tuple[int, ...], ...]:
    """Indices of equal keys, in order of first appearance: "pqp" -> ((0, 2), (1,))."""
    groups: dict = {}
    for i, key in enumerate(keys):
        groups.setdefault(key, []).append(i)
    return tuple(map(tuple, groups.values()))


def test_grouped_step_plan_keeps_groups_together_and_covers_each_example_once():
    keys = [k for k in "abcdefgh" for _ in range(3)] + ["i"]     # 8 groups of 3, 1 of 1
    groups = groups_of(keys)
    assert groups[0] == (0, 1, 2) and groups[-1] == (24,) and len(groups) == 9
    plan = sft.StepPlan(len(keys), batch_size=6, grad_accum=1, seed=0, groups=groups)
    orders = []
    for epoch in range(2):
        steps = range(epoch * plan.steps_per_epoch, (epoch + 1) * plan.steps_per_epoch)
        order = [i for step in steps for rows in plan.micro_batches(step) for i in rows]
        assert sorted(order) == list(range(len(keys)))
        # each group is one contiguous run of the order
        runs = [keys[i] for n, i in enumerate(order) if n == 0 or keys[order[n - 1]] != keys[i]]
        assert sorted(runs) == sorted(set(keys))
        orders.append(order)
    assert orders[0] != orders[1]
    # groups of one example shuffle exactly as the plain plan does
    singles = groups_of(list(range(10)))
    assert (sft.StepPlan(10, 4, 1, 3, singles).micro_batches(1)
            == sft.StepPlan(10, 4, 1, 3).micro_batches(1))
    # one group of everything (every pair shares one response) is still shuffled, per epoch
    one = sft.StepPlan(20, 20, 1, 0, groups_of([""] * 20))
    first, second = one.micro_batches(0)[0], one.micro_batches(1)[0]
    assert sorted(first) == list(range(20)) and first != list(range(20)) and first != second


def test_step_plan_by_hand():
    plan = sft.StepPlan(10, batch_size=4, grad_accum=2, seed=0)
    assert plan.steps_per_epoch == 2  # micro-batches 4, 4, 2 -> steps [4, 4], [2]
    assert [len(r) for r in plan.micro_batches(0)] == [4, 4]
    assert [len(r) for r in plan.micro_batches(1)] == [2]
    assert plan.epoch(3) == 1.5


def test_held_out_split_is_seeded_disjoint_and_refuses_too_few_rows():
    train, held = sft.held_out_split(20, 0.25, seed=0, source="d.jsonl")
    assert len(held) == 5 and sorted(train + held) == list(range(20))
    assert (train, held) == sft.held_out_split(20, 0.25, seed=0, source="d.jsonl")
    assert held != sft.held_out_split(20, 0.25, seed=1, source="d.jsonl")[1]
    assert sft.held_out_split(20, 0.0, seed=0, source="d.jsonl") == (list(range(20)), [])
    assert len(sft.held_out_split(3, 0.01, seed=0, source="d.jsonl")[1]) == 1  # at least one
    with pytest.raises(DataError, match=r"d.jsonl: 1 row\(s\) are too few"):
        sft.held_out_split(1, 0.5, seed=0, source="d.jsonl")


# ---------------------------------------------------------------------------- losses

@pytest.fixture(scope="module")
def policy(tiny_gpt2_dir):
    model, tokenizer = load_policy(tiny_gpt2_dir)
    disable_dropout(model)
    return model, tokenizer


def test_sft_loss_is_cross_entropy_of_completion_tokens_only(policy):
    model, tokenizer = policy
    examples = [SFTExample("What is 2 + 2?", " The answer is 4."),
                SFTExample("Hi", " Hello there, my friend.")]
    items, _ = tokenize_sft(examples, tokenizer, 64)
    batch = collate_sft(items, tokenizer.pad_token_id)
    logprobs, mask = sft.completion_logprobs(model, batch)
    ours = -(logprobs * mask).sum() / mask.sum()
    # by hand: cross-entropy of each completion token (and the EOS) given what precedes it
    losses = []
    for item in items:
        ids = torch.tensor([item.input_ids])
        logits = model(input_ids=ids).logits[0]
        for t in range(1, len(item.input_ids)):
            if item.loss_mask[t]:
                losses.append(F.cross_entropy(logits[t - 1], ids[0, t]))
    assert mask.sum() == len(losses) == sft.target_count(items)
    torch.testing.assert_close(ours, torch.stack(losses).mean())


def grads(model) -> list[torch.Tensor]:
    out = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    model.zero_grad(set_to_none=True)
    return out


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_packed_sft_step_gives_the_padded_loss_and_gradient(arch, tiny_gpt2_dir, tiny_llama_dir):
    """Six examples of very different lengths, packed into fewer rows: position ids that
    restart per example must keep each example to itself in attention (GPT-2's learned
    positions, Llama's rotary ones), so loss and gradient are those of padding."""
    model, tokenizer = load_policy(tiny_gpt2_dir if arch == "gpt2" else tiny_llama_dir)
    disable_dropout(model)
    examples = [SFTExample(f"Question {i}?", " ok" if i % 3 else " a much longer answer "
                           "with many more tokens in it, and then some") for i in range(6)]
    items, _ = tokenize_sft(examples, tokenizer, 64)
    assert len(collate_packed_sft(items)["input_ids"]) < len(items)
    everything = [list(range(6))]
    loss_padded, count = sft.sft_step(model, items, everything, everything,
                                      tokenizer.pad_token_id, "cpu")
    padded = grads(model)
    loss_packed, count_packed = sft.sft_step(model, items, everything, everything,
                                             tokenizer.pad_token_id, "cpu", pack=True)
    packed = grads(model)
    assert count == count_packed
    torch.testing.assert_close(loss_packed, loss_padded, atol=1e-6, rtol=1e-5)
    for a, b in zip(padded, packed, strict=True):
        torch.testing.assert_close(b, a, atol=1e-6, rtol=1e-4)
    assert sft.packing_works(model, items, tokenizer.pad_token_id, "cpu")


def test_packing_check_catches_a_model_that_carries_one_example_into_the_next(
        tiny_tokenizer):
    """A recurrent model (Mamba) reads the previous example's state: packing would change
    its loss, and the check must say so (SFT then pads)."""
    from transformers import MambaConfig, MambaForCausalLM
    torch.manual_seed(0)
    model = MambaForCausalLM(MambaConfig(vocab_size=len(tiny_tokenizer), hidden_size=32,
                                         state_size=4, num_hidden_layers=2)).eval()
    examples = [SFTExample("A question?", " yes"), SFTExample("Another one?", " no")]
    items, _ = tokenize_sft(examples, tiny_tokenizer, 64)
    assert not sft.packing_works(model, items, tiny_tokenizer.pad_token_id, "cpu")


def test_sft_gradient_accumulation_equals_one_big_batch(policy):
    model, tokenizer = policy
    examples = [SFTExample(f"Question {i}?", " short" if i % 2 else " a much longer answer "
                           "with many more tokens in it") for i in range(4)]
    items, _ = tokenize_sft(examples, tokenizer, 64)
    loss_one, _ = sft.sft_step(model, items, [[0, 1, 2, 3]], [[0, 1, 2, 3]],
                               tokenizer.pad_token_id, "cpu")
    one = grads(model)
    cut = [[0, 3], [1], [2]]
    loss_two, _ = sft.sft_step(model, items, cut, cut, tokenizer.pad_token_id, "cpu")
    two = grads(model)
    torch.testing.assert_close(loss_one, loss_two)
    for a, b in zip(one, two):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-4)
    # two "ranks" each run their share with the step's global normaliser: their gradients
    # add up to the full-batch gradient (the all-reduce SUM of data parallelism)
    sft.sft_step(model, items, cut, cut[:1], tokenizer.pad_token_id, "cpu")
    first = grads(model)
    sft.sft_step(model, items, cut, cut[1:], tokenizer.pad_token_id, "cpu")
    second = grads(model)
    for a, b, c in zip(one, first, second):
        torch.testing.assert_close(a, b + c, atol=1e-6, rtol=1e-4)


def test_reward_gradient_accumulation_equals_one_big_batch(tiny_gpt2_dir, policy):
    _, tokenizer = policy
    torch.manual_seed(0)
    model = disable_dropout(init_reward_model(tiny_gpt2_dir, tokenizer))
    pairs = [PreferencePair("Say something.", " good" * (i + 1), " bad", 0.5 if i else None)
             for i in range(4)]
    items, _ = tokenize_preferences(pairs, tokenizer, 64)
    whole, cut = [[0, 1, 2, 3]], [[0], [1, 2, 3]]
    stats_one = reward_model.reward_step(model, items, whole, whole, tokenizer.pad_token_id,
                                         "cpu", center_coef=0.1)
    one = grads(model)
    stats_two = reward_model.reward_step(model, items, cut, cut, tokenizer.pad_token_id,
                                         "cpu", center_coef=0.1)
    two = grads(model)
    assert stats_one == pytest.approx(stats_two, abs=1e-6)
    for a, b in zip(one, two):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-4)
    # per-"rank" shares of the step add up to it, statistics included
    shares = [reward_model.reward_step(model, items, cut, [rows], tokenizer.pad_token_id,
                                       "cpu", center_coef=0.1) for rows in cut]
    for key in stats_one:
        assert sum(s[key] for s in shares) == pytest.approx(stats_one[key], abs=1e-6)


def test_one_forward_scores_equal_separate_forwards(tiny_gpt2_dir, policy):
    """Chosen and rejected concatenated in one pass score as they do alone."""
    _, tokenizer = policy
    torch.manual_seed(0)
    model = disable_dropout(init_reward_model(tiny_gpt2_dir, tokenizer)).eval()
    pairs = [PreferencePair("Say something.", " a long and friendly answer", " no"),
             PreferencePair("Hello?", " hi", " go away, I am busy right now")]
    items, _ = tokenize_preferences(pairs, tokenizer, 64)
    with torch.no_grad():
        chosen, rejected, _ = reward_model.score_all(model, items, 2, tokenizer.pad_token_id,
                                                     "cpu")
        alone = [reward_model.score_all(model, [item], 1, tokenizer.pad_token_id, "cpu")
                 for item in items]
    torch.testing.assert_close(chosen, torch.cat([a[0] for a in alone]), atol=1e-5, rtol=0)
    torch.testing.assert_close(rejected, torch.cat([a[1] for a in alone]), atol=1e-5, rtol=0)


# ---------------------------------------------------------------------------- configs

def test_stage_optimizer_defaults_survive_overrides_of_other_fields():
    required = ["model=m", "data=d.jsonl", "out=o"]
    cfg = load_config(sft.SFTConfig, None, required + ["optim.schedule=cosine"])
    assert cfg.optim.lr == 2e-5 and cfg.optim.warmup_steps == 10
    assert cfg.optim.schedule == "cosine"
    cfg = load_config(reward_model.RewardModelConfig, None, required + ["optim.eps=1e-8"])
    assert cfg.optim.lr == 1e-5 and cfg.dropout is False and cfg.center_coef == 0.0


def test_commands_are_registered_with_valid_configs():
    by_name = {c.name: c for c in commands()}
    for name in ("init-model", "sft", "reward"):
        check_config_class(by_name[name].config_class())
        assert callable(by_name[name].runner())
    assert init_model.ARCH_CHOICES == ARCHS
    assert init_model.SIZE_CHOICES == tuple(SIZES)


# ---------------------------------------------------------------------------- gradient norm

def _grads(*values):
    params = [torch.nn.Parameter(torch.zeros(len(v))) for v in values]
    for p, v in zip(params, values):
        p.grad = torch.tensor(v)
    return params


def test_clip_grad_norm_by_hand_and_as_torch_clips():
    from rlhfkit.recipes.common import clip_grad_norm
    params = _grads([3.0, 0.0], [0.0, 4.0, 0.0])          # total norm sqrt(9 + 16) = 5
    params.append(torch.nn.Parameter(torch.ones(2)))        # no gradient: left out
    assert float(clip_grad_norm(params, None)) == pytest.approx(5.0)
    assert params[0].grad.tolist() == [3.0, 0.0]            # max_norm None: not clipped
    assert float(clip_grad_norm(params, 1.0)) == pytest.approx(5.0)  # the norm before clipping
    assert params[0].grad.tolist() == pytest.approx([0.6, 0.0], abs=1e-6)
    assert params[1].grad.tolist() == pytest.approx([0.0, 0.8, 0.0], abs=1e-6)
    ours, theirs = _grads([1.0, -2.0], [0.5]), _grads([1.0, -2.0], [0.5])
    assert float(clip_grad_norm(ours, 10.0)) == pytest.approx(
        float(torch.nn.utils.clip_grad_norm_(theirs, 10.0)))
    assert all(torch.equal(a.grad, b.grad) for a, b in zip(ours, theirs))  # under max_norm


def test_clip_grad_norm_leaves_nonfinite_gradients_as_they_were():
    from rlhfkit.recipes.common import clip_grad_norm, nonfinite_grad
    params = _grads([3.0, float("nan")], [4.0])
    assert not torch.isfinite(clip_grad_norm(params, 1.0))
    assert params[1].grad.tolist() == [4.0]                 # not multiplied by NaN
    assert nonfinite_grad([("a", params[0]), ("b", params[1])]) == "a"
