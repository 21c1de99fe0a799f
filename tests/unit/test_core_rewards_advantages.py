"""Per-token rewards, rewards-to-go, GAE and the sequence-level advantages."""

import pytest
import torch
from hypothesis import given, settings, strategies as st

from rlhfkit.core import (SEQUENCE_ADVANTAGES, apply_missing_eos_penalty, discounted_returns,
                          gae, grpo_advantages, per_token_rewards, reinforce_advantages,
                          rloo_advantages)

FAST = settings(max_examples=40, deadline=None)


def right_padded_mask(lengths, t):
    return (torch.arange(t)[None, :] < torch.tensor(lengths)[:, None]).long()


# ---- per-token rewards -------------------------------------------------------------------

def test_per_token_rewards_by_hand():
    kl = torch.tensor([[0.1, 0.2, 0.3, 9.0], [0.5, -0.5, 9.0, 9.0]])
    mask = right_padded_mask([3, 2], 4)
    rewards = per_token_rewards(torch.tensor([1.0, 2.0]), kl, mask, kl_coef=0.1)
    expected = torch.tensor([[-0.01, -0.02, -0.03 + 1.0, 0.0], [-0.05, 0.05 + 2.0, 0.0, 0.0]])
    assert torch.allclose(rewards, expected)


def test_score_goes_to_the_last_response_token_never_a_pad():
    """The classic bug: reading (or placing) the reward at a pad token."""
    mask = right_padded_mask([2, 5, 1], 5)  # row 1 was truncated: no EOS, all tokens real
    rewards = per_token_rewards(torch.tensor([3.0, 4.0, 5.0]), torch.zeros(3, 5), mask, 0.05)
    assert rewards.nonzero().tolist() == [[0, 1], [1, 4], [2, 0]]
    assert (rewards[mask == 0] == 0).all()


def test_per_token_rewards_bad_input():
    with pytest.raises(ValueError, match=r"scores: expected shape \(2,\)"):
        per_token_rewards(torch.zeros(3), torch.zeros(2, 4), torch.ones(2, 4), 0.1)
    with pytest.raises(ValueError, match="row 1 has no response token"):
        per_token_rewards(torch.zeros(2), torch.zeros(2, 4), right_padded_mask([2, 0], 4), 0.1)


def test_missing_eos_penalty_only_hits_rambling_responses():
    scores = apply_missing_eos_penalty(torch.tensor([1.0, 1.0]), torch.tensor([True, False]), 1.0)
    assert scores.tolist() == [1.0, 0.0]


# ---- rewards-to-go and GAE ---------------------------------------------------------------

def test_rewards_to_go_by_hand():
    r = torch.tensor([[1.0, 2.0, 3.0, 7.0]])
    G = discounted_returns(r, right_padded_mask([3], 4), gamma=0.5)
    assert torch.allclose(G, torch.tensor([[2.75, 3.5, 3.0, 0.0]]))


def test_gae_by_hand():
    r = torch.tensor([[0.0, 0.0, 1.0]])
    v = torch.tensor([[0.5, 0.25, 0.5]])
    adv, ret = gae(r, v, torch.ones(1, 3), gamma=1.0, lam=0.5)
    # δ = [0 + 0.25 − 0.5, 0 + 0.5 − 0.25, 1 + 0 − 0.5] = [−0.25, 0.25, 0.5]
    # A_2 = 0.5; A_1 = 0.25 + 0.5·0.5 = 0.5; A_0 = −0.25 + 0.5·0.5 = 0
    assert torch.allclose(adv, torch.tensor([[0.0, 0.5, 0.5]]))
    assert torch.allclose(ret, adv + v)


@FAST
@given(seed=st.integers(0, 10_000), gamma=st.floats(0.5, 1.0))
def test_gae_limits_lambda_1_is_rewards_to_go_minus_values_lambda_0_is_td(seed, gamma):
    g = torch.Generator().manual_seed(seed)
    r, v = torch.randn(3, 6, generator=g, dtype=torch.float64), torch.randn(3, 6, generator=g, dtype=torch.float64)
    mask = right_padded_mask([6, 4, 1], 6)
    adv1, _ = gae(r, v, mask, gamma, lam=1.0)
    assert torch.allclose(adv1, (discounted_returns(r, mask, gamma) - v) * mask)
    adv0, _ = gae(r, v, mask, gamma, lam=0.0)
    vm = v * mask
    next_v = torch.cat([vm[:, 1:], torch.zeros(3, 1, dtype=v.dtype)], 1)
    assert torch.allclose(adv0, (r + gamma * next_v - v) * mask)


@FAST
@given(seed=st.integers(0, 10_000), pad=st.integers(1, 4))
def test_gae_padding_never_changes_a_result(seed, pad):
    g = torch.Generator().manual_seed(seed)
    r, v = torch.randn(2, 5, generator=g), torch.randn(2, 5, generator=g)
    mask = right_padded_mask([5, 3], 5)
    junk = torch.randn(2, pad, generator=g) * 100
    maskp = torch.cat([mask, torch.zeros(2, pad, dtype=mask.dtype)], 1)
    adv, ret = gae(r, v, mask, 1.0, 0.95)
    advp, retp = gae(torch.cat([r, junk], 1), torch.cat([v, junk], 1), maskp, 1.0, 0.95)
    assert torch.allclose(advp[:, :5], adv, atol=1e-6) and torch.allclose(retp[:, :5], ret, atol=1e-6)
    assert (advp[:, 5:] == 0).all() and (retp[:, 5:] == 0).all()
    # junk in the masked-out tail of a row changes nothing either
    r2, v2 = r.clone(), v.clone()
    r2[1, 3:], v2[1, 3:] = 1e6, -1e6
    adv2, ret2 = gae(r2, v2, mask, 1.0, 0.95)
    assert torch.allclose(adv2, adv) and torch.allclose(ret2, ret)


def test_gae_rejects_bad_discount():
    with pytest.raises(ValueError, match="lam: expected a number in"):
        gae(torch.zeros(1, 2), torch.zeros(1, 2), torch.ones(1, 2), 1.0, 1.5)


# ---- sequence-level advantages -----------------------------------------------------------

def test_rloo_by_hand():
    adv = rloo_advantages(torch.tensor([1.0, 2.0, 3.0, 4.0, 4.0, 4.0]), group_size=3)
    assert torch.allclose(adv, torch.tensor([-1.5, 0.0, 1.5, 0.0, 0.0, 0.0]))


@FAST
@given(seed=st.integers(0, 10_000), groups=st.integers(1, 4), g_size=st.integers(2, 6))
def test_rloo_is_scaled_group_centring(seed, groups, g_size):
    s = torch.randn(groups * g_size, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    centred = (s.view(groups, g_size) - s.view(groups, g_size).mean(-1, keepdim=True)).reshape(-1)
    assert torch.allclose(rloo_advantages(s, g_size), centred * g_size / (g_size - 1))


def test_grpo_by_hand_and_zero_spread_groups_give_zeros_not_nan():
    adv = grpo_advantages(torch.tensor([1.0, 2.0, 3.0, 0.1, 0.1, 0.1]), group_size=3)
    # group 1: mean 2, unbiased std 1
    assert torch.allclose(adv[:3], torch.tensor([-1.0, 0.0, 1.0]), atol=1e-5)
    assert (adv[3:] == 0).all()
    unscaled = grpo_advantages(torch.tensor([1.0, 3.0]), group_size=2, scale=False)
    assert unscaled.tolist() == [-1.0, 1.0]


def test_reinforce_mean_baseline():
    assert reinforce_advantages(torch.tensor([1.0, 2.0, 6.0])).tolist() == [-2.0, -1.0, 3.0]


def test_group_size_that_does_not_divide_is_refused():
    for name, fn in SEQUENCE_ADVANTAGES.items():
        if name == "reinforce":
            continue
        with pytest.raises(ValueError, match="group_size: 4 does not divide the batch of 6"):
            fn(torch.zeros(6), 4)
        with pytest.raises(ValueError, match="at least 2 samples"):
            fn(torch.zeros(6), 1)
