"""Advantage estimators: how much better an action was than expected.

Token level (PPO with a critic):  `gae`.
Sequence level (critic-free; one advantage per response, broadcast over its tokens):
`reinforce_advantages`, `rloo_advantages`, `grpo_advantages`, gathered in
`SEQUENCE_ADVANTAGES`.

Group layout, the same everywhere in rlhfkit: `scores` of shape (B,) hold B/G contiguous
groups of G samples of the same prompt: [p0 s0, p0 s1, ..., p0 s(G−1), p1 s0, ...].
"""

from __future__ import annotations

from typing import Callable

import torch

from rlhfkit.core._checks import check_group_size, check_ndim, check_same_shape
from rlhfkit.core.rewards import discounted_returns


def gae(rewards: torch.Tensor, values: torch.Tensor, response_mask: torch.Tensor,
        gamma: float, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalized Advantage Estimation (Schulman et al. 2015, "High-Dimensional
    Continuous Control Using Generalized Advantage Estimation", eqs. 11–16).

        δ_t = r_t + γ·V_{t+1} − V_t
        A_t = δ_t + γλ·A_{t+1}
        returns_t = A_t + V_t            (the λ-return: the value function's target)

    The episode ends at the last response token, so the value after it is 0. Positions
    outside the mask hold no reward and no value, and get A = returns = 0; appending pad
    columns therefore never changes a result. λ = 1 gives A_t = G_t − V_t (rewards-to-go
    minus the baseline); λ = 0 gives the one-step TD residual δ_t.

    Shapes: rewards, values, response_mask (B, T) -> advantages (B, T), returns (B, T).
    Responses are right-padded: the masked positions of a row are its first tokens.
    """
    check_same_shape(rewards=rewards, values=values, response_mask=response_mask)
    for name, x in (("gamma", gamma), ("lam", lam)):
        if not 0.0 <= x <= 1.0:
            raise ValueError(f"{name}: expected a number in [0, 1], got {x}")
    mask = response_mask.bool()
    zero = torch.zeros((), dtype=values.dtype, device=values.device)
    r, v = torch.where(mask, rewards, zero), torch.where(mask, values, zero)
    advantages = torch.zeros_like(v)
    next_value = torch.zeros_like(v[:, 0])
    next_advantage = torch.zeros_like(v[:, 0])
    for t in reversed(range(v.shape[1])):
        delta = r[:, t] + gamma * next_value - v[:, t]
        next_advantage = delta + gamma * lam * next_advantage
        advantages[:, t] = next_advantage
        next_value = v[:, t]
    advantages = torch.where(mask, advantages, zero)
    return advantages, advantages + v


def reinforce_advantages(scores: torch.Tensor, group_size: int = 1) -> torch.Tensor:
    """REINFORCE with a mean baseline (Williams 1992): A_i = s_i − mean_j s_j over the batch.

    `group_size` is unused (the baseline spans the whole batch); it only keeps the
    signature of `SEQUENCE_ADVANTAGES`. Shapes: (B,) -> (B,).
    """
    check_ndim(scores, 1, "scores", "(B,)")
    return scores - scores.mean()


def rloo_advantages(scores: torch.Tensor, group_size: int) -> torch.Tensor:
    """REINFORCE Leave-One-Out (Kool et al. 2019; Ahmadian et al. 2024, "Back to Basics").

        A_i = s_i − (1 / (G − 1)) Σ_{j ≠ i in the group} s_j

    The baseline of a sample is the mean score of the *other* samples of its prompt, so it
    does not depend on the sample itself and the gradient stays unbiased.
    Shapes: scores (B,) in the group layout, B divisible by G >= 2 -> (B,).
    """
    check_ndim(scores, 1, "scores", "(B,)")
    check_group_size(scores.shape[0], group_size)
    if group_size < 2:
        raise ValueError("group_size: RLOO needs at least 2 samples per prompt, got 1")
    groups = scores.view(-1, group_size)  # (B/G, G)
    baseline = (groups.sum(-1, keepdim=True) - groups) / (group_size - 1)
    return (groups - baseline).reshape(-1)


def grpo_advantages(scores: torch.Tensor, group_size: int, scale: bool = True,
                    eps: float = 1e-6) -> torch.Tensor:
    """Group Relative Policy Optimization advantages (Shao et al. 2024, DeepSeekMath §4.1).

        A_i = (s_i − mean_g) / (std_g + eps)     (scale=True)
        A_i =  s_i − mean_g                      (scale=False; Dr. GRPO, Liu et al. 2025)

    std_g is the *unbiased* sample standard deviation of the group (Bessel's correction,
    as torch.std and the DeepSeekMath/TRL implementations). A group whose scores are all
    equal carries no signal and gets advantages of exactly 0, never NaN.
    Shapes: scores (B,) in the group layout, B divisible by G >= 2 -> (B,).
    """
    check_ndim(scores, 1, "scores", "(B,)")
    check_group_size(scores.shape[0], group_size)
    if group_size < 2:
        raise ValueError("group_size: GRPO needs at least 2 samples per prompt, got 1")
    groups = scores.view(-1, group_size)  # (B/G, G)
    centred = groups - groups.mean(-1, keepdim=True)
    if scale:
        centred = centred / (groups.std(-1, keepdim=True) + eps)
    flat = (groups.amax(-1, keepdim=True) == groups.amin(-1, keepdim=True))
    return torch.where(flat, torch.zeros_like(centred), centred).reshape(-1)


SEQUENCE_ADVANTAGES: dict[str, Callable[[torch.Tensor, int], torch.Tensor]] = {
    "reinforce": reinforce_advantages,
    "rloo": rloo_advantages,
    "grpo": grpo_advantages,
}


# ---- one advantage function per algorithm --------------------------------------------------
# Every estimator maps per-token rewards (B, T) — the score at the last token plus any KL
# penalty — to (advantages (B, T), returns (B, T) or None). Sequence-level estimators use the
# episode return Σ_t γ^t r_t, and give every token of a response its sequence's advantage.

def _episode_return(rewards: torch.Tensor, response_mask: torch.Tensor, gamma: float) -> torch.Tensor:
    return discounted_returns(rewards, response_mask, gamma)[:, 0]


def _broadcast(seq_advantages: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    return torch.where(response_mask.bool(), seq_advantages[:, None],
                       torch.zeros((), dtype=seq_advantages.dtype, device=seq_advantages.device))


def ppo_advantages(rewards, values, response_mask, *, gamma, lam, group_size):
    """PPO: GAE over the critic's values; returns are the value targets."""
    if values is None:
        raise ValueError("values: PPO's advantages need a value function (a critic or a value head)")
    return gae(rewards, values, response_mask, gamma, lam)


def reinforce_with_baseline(rewards, values, response_mask, *, gamma, lam, group_size):
    """REINFORCE with a baseline: with a learned value, A_t = G_t − V(s_t) (GAE at λ = 1,
    and the value learns G_t); without one, the batch-mean episode return is the baseline."""
    if values is not None:
        return gae(rewards, values, response_mask, gamma, 1.0)
    seq = reinforce_advantages(_episode_return(rewards, response_mask, gamma))
    return _broadcast(seq, response_mask), None


def rloo_estimator(rewards, values, response_mask, *, gamma, lam, group_size):
    """RLOO: leave-one-out baseline over the G samples of each prompt."""
    seq = rloo_advantages(_episode_return(rewards, response_mask, gamma), group_size)
    return _broadcast(seq, response_mask), None


def grpo_estimator(rewards, values, response_mask, *, gamma, lam, group_size):
    """GRPO: episode returns normalised within each group of G samples."""
    seq = grpo_advantages(_episode_return(rewards, response_mask, gamma), group_size)
    return _broadcast(seq, response_mask), None


ADVANTAGE_ESTIMATORS = {
    "ppo": ppo_advantages,
    "reinforce": reinforce_with_baseline,
    "rloo": rloo_estimator,
    "grpo": grpo_estimator,
}
