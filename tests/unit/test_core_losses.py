"""PPO policy and value losses, REINFORCE, Bradley–Terry and the loss reductions."""

import math

import pytest
import torch
from hypothesis import given, settings, strategies as st

from rlhfkit.core import (explained_variance, policy_gradient_loss, ppo_policy_loss,
                          ppo_value_loss, reduce_loss, reward_model_loss)

FAST = settings(max_examples=40, deadline=None)
E = math.e


# ---- PPO policy loss ---------------------------------------------------------------------

@pytest.mark.parametrize("log_ratio, adv, expected_loss, clipped", [
    (1.0, +1.0, -1.2, True),        # ρ = e > 1.2, A > 0: the clip caps the gain
    (1.0, -1.0, E, False),          # ρ = e, A < 0: the unclipped (pessimistic) term is active
    (-1.0, +1.0, -1 / E, False),    # ρ = 1/e < 0.8, A > 0: unclipped is the pessimistic one
    (-1.0, -1.0, 0.8, True),        # ρ = 1/e, A < 0: the clip caps the gain at 1 − ε
])
def test_ppo_clip_is_on_the_right_side(log_ratio, adv, expected_loss, clipped):
    logprobs = torch.tensor([[log_ratio]], requires_grad=True)
    loss, metrics = ppo_policy_loss(logprobs, torch.zeros(1, 1), torch.tensor([[adv]]),
                                    torch.ones(1, 1), clip_eps=0.2)
    assert loss.item() == pytest.approx(expected_loss, rel=1e-6)
    assert metrics["clip_frac"].item() == float(clipped)
    loss.backward()
    # a clipped token gives no gradient; an unclipped one gives −A·ρ
    expected_grad = 0.0 if clipped else -adv * math.exp(log_ratio)
    assert logprobs.grad.item() == pytest.approx(expected_grad, rel=1e-6)


@FAST
@given(seed=st.integers(0, 10_000), reduction=st.sampled_from(["token_mean", "sequence_mean"]))
def test_at_ratio_1_ppo_gradient_is_the_reinforce_gradient(seed, reduction):
    g = torch.Generator().manual_seed(seed)
    lp = torch.randn(3, 5, generator=g)
    adv, mask = torch.randn(3, 5, generator=g), (torch.rand(3, 5, generator=g) < 0.7)
    mask[:, 0] = True
    lp_ppo, lp_pg = lp.clone().requires_grad_(), lp.clone().requires_grad_()
    loss, metrics = ppo_policy_loss(lp_ppo, lp.detach(), adv, mask, 0.2, reduction)
    loss.backward()
    policy_gradient_loss(lp_pg, adv, mask, reduction).backward()
    assert torch.allclose(lp_ppo.grad, lp_pg.grad, atol=1e-6)
    assert metrics["ratio_mean"].item() == pytest.approx(1.0)
    assert metrics["approx_kl"].item() == 0.0 and metrics["clip_frac"].item() == 0.0


def test_ppo_policy_loss_bad_clip():
    with pytest.raises(ValueError, match="clip_eps: expected a number > 0"):
        ppo_policy_loss(torch.zeros(1, 2), torch.zeros(1, 2), torch.zeros(1, 2), torch.ones(1, 2), 0)


# ---- PPO value loss ----------------------------------------------------------------------

def test_value_loss_by_hand():
    values, old, returns = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    loss, metrics = ppo_value_loss(values, old, returns, torch.ones(1, 2), clip_eps=0.2)
    # token 0: unclipped (1−0)² = 1, clipped (0.2−0)² = 0.04 -> 1 (unclipped active)
    # token 1: unclipped (0−1)² = 1, clipped (0−1)² = 1 -> 1
    assert loss.item() == pytest.approx(0.5 * 1.0)
    values = torch.tensor([[0.5, 0.0]])
    returns = torch.tensor([[1.0, 0.0]])
    loss, metrics = ppo_value_loss(values, old, returns, torch.ones(1, 2), clip_eps=0.2)
    # token 0: unclipped 0.25, clipped (0.2−1)² = 0.64 -> the clipped term is active
    assert loss.item() == pytest.approx(0.5 * (0.64 + 0.0) / 2)
    assert metrics["value_clip_frac"].item() == 0.5
    unclipped, _ = ppo_value_loss(values, old, returns, torch.ones(1, 2), clip_eps=None)
    assert unclipped.item() == pytest.approx(0.5 * 0.25 / 2)


# ---- reductions: micro-batches and ranks sum to the full batch ---------------------------

@FAST
@given(seed=st.integers(0, 10_000), reduction=st.sampled_from(["token_mean", "sequence_mean"]),
       split=st.integers(1, 5))
def test_micro_batches_with_the_global_normalizer_sum_to_the_full_batch_loss(seed, reduction, split):
    g = torch.Generator().manual_seed(seed)
    b, t = 6, 7
    lp, old = torch.randn(b, t, generator=g) * 0.3, torch.randn(b, t, generator=g) * 0.3
    adv, vals, rets = (torch.randn(b, t, generator=g) for _ in range(3))
    mask = torch.rand(b, t, generator=g) < 0.7
    mask[:, 0] = True
    normalizer = mask.sum() if reduction == "token_mean" else b

    def losses(rows, norm):
        pg, _ = ppo_policy_loss(lp[rows], old[rows], adv[rows], mask[rows], 0.2, reduction, norm)
        vf, _ = ppo_value_loss(vals[rows], old[rows], rets[rows], mask[rows], 0.2, reduction, norm)
        return pg, vf

    full = losses(slice(0, b), None)
    parts = [losses(slice(0, split), normalizer), losses(slice(split, b), normalizer)]
    for i in range(2):
        assert (parts[0][i] + parts[1][i]).item() == pytest.approx(full[i].item(), abs=1e-5)


def test_reductions_by_hand_and_unknown_reduction():
    per_token = torch.tensor([[1.0, 3.0, 0.0], [5.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    assert reduce_loss(per_token, mask, "token_mean").item() == pytest.approx(3.0)
    assert reduce_loss(per_token, mask, "sequence_mean").item() == pytest.approx((2.0 + 5.0) / 2)
    with pytest.raises(ValueError, match="reduction: expected one of token_mean, sequence_mean"):
        reduce_loss(per_token, mask, "sum")


# ---- Bradley–Terry -----------------------------------------------------------------------

def test_bradley_terry_by_hand():
    loss, m = reward_model_loss(torch.zeros(4), torch.zeros(4))
    assert loss.item() == pytest.approx(math.log(2))
    chosen, rejected = torch.tensor([2.0, 0.0]), torch.tensor([0.0, 1.0])
    loss, m = reward_model_loss(chosen, rejected)
    expected = (-math.log(1 / (1 + math.exp(-2))) - math.log(1 / (1 + math.exp(1)))) / 2
    assert loss.item() == pytest.approx(expected)
    assert m["accuracy"].item() == 0.5 and m["margin"].item() == pytest.approx(0.5)
    with_margin, _ = reward_model_loss(chosen, rejected, margin=torch.tensor([2.0, 0.0]))
    assert with_margin.item() == pytest.approx((math.log(2) - math.log(1 / (1 + math.exp(1)))) / 2)
    centred, _ = reward_model_loss(chosen, rejected, center_coef=0.1)
    assert centred.item() == pytest.approx(expected + 0.1 * (4 + 1) / 2)


def test_bradley_terry_is_stable_for_huge_margins():
    loss, _ = reward_model_loss(torch.tensor([-1000.0]), torch.tensor([1000.0]))
    assert math.isfinite(loss.item()) and loss.item() == pytest.approx(2000.0)


def test_explained_variance_limits():
    rets = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    mask = torch.ones(1, 4)
    assert explained_variance(rets, rets, mask).item() == pytest.approx(1.0)
    assert explained_variance(torch.full((1, 4), 2.5), rets, mask).item() == pytest.approx(0.0)
