"""From one score per sequence to a reward per token, and rewards-to-go.

The trajectory of one response: the state s_t is the prompt plus the response tokens
before t, the action a_t is response token t. Index convention used everywhere in
rlhfkit (T = response length of the batch, responses right-padded):

    t                  0        1        2        3        4     5
    response token     a_0      a_1      a_2      EOS      pad   pad
    response_mask      1        1        1        1        0     0
    logprobs[t]        log π(a_t | s_t): the logits at the position *before* token t
    values[t]          V(s_t): the value of the state in which a_t is chosen
    rewards[t]         −β·kl_0  −β·kl_1  −β·kl_2  −β·kl_3   0     0
                                                   + score
                                                     ^ the last response token: the EOS,
                                                       or the last token of a truncated
                                                       response. The reward model read
                                                       its score at this same token.
"""

from __future__ import annotations

import torch

from rlhfkit.core._checks import check_ndim, check_same_shape


def last_token_index(response_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last masked position of each row. Shapes: (B, T) -> (B,) long.

    Raises if a row has no response token: such a row has no place for its score.
    """
    check_ndim(response_mask, 2, "response_mask", "(B, T)")
    has_token = response_mask.bool().any(-1)
    if not bool(has_token.all()):
        row = int((~has_token).nonzero()[0])
        raise ValueError(f"response_mask: row {row} has no response token, so its score has "
                         f"no token to go to")
    positions = torch.arange(response_mask.shape[1], device=response_mask.device)
    return (positions * response_mask.bool()).argmax(-1)


def per_token_rewards(scores: torch.Tensor, kl: torch.Tensor, response_mask: torch.Tensor,
                      kl_coef: float | torch.Tensor) -> torch.Tensor:
    """Per-token rewards of RLHF (Ziegler et al. 2019; Ouyang et al. 2022, eq. 2).

        r_t = −β · kl_t · m_t  +  score · [t = last response token]

    See the module docstring for the index convention. Shapes: scores (B,), kl and
    response_mask (B, T) -> rewards (B, T), 0 outside the mask.
    """
    check_same_shape(kl=kl, response_mask=response_mask)
    if scores.shape != kl.shape[:1]:
        raise ValueError(f"scores: expected shape ({kl.shape[0]},), one score per sequence, "
                         f"got {tuple(scores.shape)}")
    mask = response_mask.bool()
    zero = torch.zeros((), dtype=kl.dtype, device=kl.device)
    rewards = torch.where(mask, -kl_coef * kl, zero)
    last = last_token_index(response_mask)
    rows = torch.arange(kl.shape[0], device=kl.device)
    rewards[rows, last] += scores.to(rewards.dtype)
    return rewards


def discounted_returns(rewards: torch.Tensor, response_mask: torch.Tensor,
                       gamma: float) -> torch.Tensor:
    """Rewards-to-go: G_t = Σ_{k >= t} γ^(k−t) r_k (the REINFORCE return of action a_t).

    Positions outside the mask contribute no reward and get G = 0. Shapes: (B, T) -> (B, T).
    """
    check_same_shape(rewards=rewards, response_mask=response_mask)
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"gamma: expected a discount in [0, 1], got {gamma}")
    mask = response_mask.bool()
    r = torch.where(mask, rewards, torch.zeros((), dtype=rewards.dtype, device=rewards.device))
    returns = torch.zeros_like(r)
    running = torch.zeros_like(r[:, 0])
    for t in reversed(range(r.shape[1])):
        running = r[:, t] + gamma * running
        returns[:, t] = running
    return torch.where(mask, returns, torch.zeros_like(returns))


def apply_missing_eos_penalty(scores: torch.Tensor, has_eos: torch.Tensor,
                              penalty: float) -> torch.Tensor:
    """Subtract `penalty` from the score of every response that never emitted EOS
    (the N+ "EOS trick": without it PPO learns to ramble until truncated).

    Shapes: scores (B,), has_eos (B,) bool -> (B,).
    """
    check_same_shape(scores=scores, has_eos=has_eos)
    return scores - penalty * (~has_eos.bool()).to(scores.dtype)
