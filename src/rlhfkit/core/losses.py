"""Losses: the reward model's Bradley–Terry loss and the policy-gradient family.

Loss reduction is an explicit argument, `reduction`:

    "token_mean"    Σ_{b,t} ℓ_bt·m_bt / N_tokens           (the default)
    "sequence_mean" Σ_b [Σ_t ℓ_bt·m_bt / Σ_t m_bt] / N_seqs

The default is the token mean, as in PPO for RLHF (OpenAI's lm-human-preferences, TRL,
N+): every token's gradient has the same weight whatever the length of its response. A
sequence mean gives the tokens of short responses more weight, a length bias (Liu et al.
2025, "Understanding R1-Zero-like training").

`normalizer` makes a reduction split-invariant: pass the token count (token_mean) or the
sequence count (sequence_mean) of the *whole* batch, and the losses of its micro-batches
(or ranks) sum to the full-batch loss, so gradient accumulation and data parallelism give
the gradient of one big batch. Left as None, the normaliser is the local count.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rlhfkit.core._checks import check_mask_not_empty, check_ndim, check_same_shape
from rlhfkit.core.masked import masked_mean, masked_var

REDUCTIONS = ("token_mean", "sequence_mean")


def reduce_loss(per_token: torch.Tensor, mask: torch.Tensor, reduction: str = "token_mean",
                normalizer: float | torch.Tensor | None = None) -> torch.Tensor:
    """Reduce a per-token loss (B, T) under `mask` (B, T) to a scalar; see the module
    docstring for the two reductions and the role of `normalizer`."""
    check_same_shape(per_token=per_token, mask=mask)
    check_ndim(per_token, 2, "per_token", "(B, T)")
    zero = torch.zeros((), dtype=per_token.dtype, device=per_token.device)
    kept = torch.where(mask.bool(), per_token, zero)
    if reduction == "token_mean":
        if normalizer is None:
            check_mask_not_empty(mask)
            normalizer = mask.sum()
        return kept.sum() / normalizer
    if reduction == "sequence_mean":
        per_seq = kept.sum(-1) / mask.sum(-1).clamp(min=1).to(per_token.dtype)
        return per_seq.sum() / (per_token.shape[0] if normalizer is None else normalizer)
    raise ValueError(f"reduction: expected one of {', '.join(REDUCTIONS)}, got {reduction!r}")


def policy_gradient_loss(logprobs: torch.Tensor, advantages: torch.Tensor,
                         response_mask: torch.Tensor, reduction: str = "token_mean",
                         normalizer: float | torch.Tensor | None = None) -> torch.Tensor:
    """The REINFORCE surrogate (Williams 1992): L = −reduce(A_t · log π(a_t | s_t)).

    Its gradient is the policy gradient −E[A ∇log π]. On-policy only: for reuse of the
    rollouts over several updates, use `ppo_policy_loss`. Shapes: (B, T) -> scalar.
    """
    check_same_shape(logprobs=logprobs, advantages=advantages, response_mask=response_mask)
    return reduce_loss(-advantages * logprobs, response_mask, reduction, normalizer)


def ppo_policy_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor,
                    advantages: torch.Tensor, response_mask: torch.Tensor, clip_eps: float,
                    reduction: str = "token_mean",
                    normalizer: float | torch.Tensor | None = None,
                    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO's clipped surrogate (Schulman et al. 2017, eq. 7), negated for minimisation.

        ρ_t = exp(log π(a_t) − log π_old(a_t))          importance ratio
        L   = reduce( max(−A_t·ρ_t, −A_t·clip(ρ_t, 1 − ε, 1 + ε)) )

    The ratio reweights actions sampled by π_old so that one batch of rollouts serves
    several updates (off-policy reuse); the clip removes the incentive to move ρ outside
    [1 − ε, 1 + ε]. At ρ = 1 the gradient equals the REINFORCE gradient −A·∇log π.

    Shapes: logprobs, old_logprobs, advantages, response_mask (B, T) -> (scalar, metrics).
    Metrics (detached, token means under the mask): `clip_frac` (share of tokens whose
    clipped term is the active one), `approx_kl` (½ (log ρ)², the estimator TRL logs),
    `ratio_mean`, `ratio_var`.
    """
    check_same_shape(logprobs=logprobs, old_logprobs=old_logprobs, advantages=advantages,
                     response_mask=response_mask)
    if not clip_eps > 0:
        raise ValueError(f"clip_eps: expected a number > 0, got {clip_eps}")
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_eps, 1.0 + clip_eps)
    loss = reduce_loss(torch.maximum(unclipped, clipped), response_mask, reduction, normalizer)
    with torch.no_grad():
        metrics = {
            "clip_frac": masked_mean((clipped > unclipped).float(), response_mask),
            "approx_kl": masked_mean(0.5 * log_ratio ** 2, response_mask),
            "ratio_mean": masked_mean(ratio, response_mask),
            "ratio_var": masked_mean((ratio - masked_mean(ratio, response_mask)) ** 2,
                                     response_mask),
        }
    return loss, metrics


def ppo_value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor,
                   response_mask: torch.Tensor, clip_eps: float | None,
                   reduction: str = "token_mean",
                   normalizer: float | torch.Tensor | None = None,
                   ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped value loss (the PPO2 baselines code; N implementation details #14).

        V_clip = clip(V, V_old − ε, V_old + ε)
        L      = ½ · reduce( max((V − R)², (V_clip − R)²) )

    With clip_eps None the loss is the plain ½·(V − R)². Shapes: (B, T) -> (scalar, metrics).
    Metrics: `value_clip_frac`, `value_error` (masked mean of (V − R)²).
    """
    check_same_shape(values=values, old_values=old_values, returns=returns,
                     response_mask=response_mask)
    unclipped = (values - returns) ** 2
    if clip_eps is None:
        squared = unclipped
        clip_frac = torch.zeros((), device=values.device)
    else:
        if not clip_eps > 0:
            raise ValueError(f"clip_eps: expected a number > 0 or None, got {clip_eps}")
        clipped_values = old_values + torch.clamp(values - old_values, -clip_eps, clip_eps)
        clipped = (clipped_values - returns) ** 2
        squared = torch.maximum(unclipped, clipped)
        with torch.no_grad():
            clip_frac = masked_mean((clipped > unclipped).float(), response_mask)
    loss = 0.5 * reduce_loss(squared, response_mask, reduction, normalizer)
    with torch.no_grad():
        metrics = {"value_clip_frac": clip_frac,
                   "value_error": masked_mean(unclipped.detach(), response_mask)}
    return loss, metrics


def reward_model_loss(chosen_scores: torch.Tensor, rejected_scores: torch.Tensor,
                      margin: torch.Tensor | None = None, center_coef: float = 0.0,
                      ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Bradley–Terry loss of a reward model on preference pairs (Ouyang et al. 2022, eq. 1).

        P(chosen ≻ rejected) = σ(r_c − r_r)
        L = mean_b( −log σ(r_c − r_r − m) )  +  center_coef · mean_b((r_c + r_r)²)

    m is an optional per-pair margin (Llama 2, Touvron et al. 2023, eq. 2); the centring
    term (Eisenstein et al. 2023) keeps scores near 0 without changing preferences.
    L is always positive: log 2 ≈ 0.693 at r_c = r_r, toward 0 as r_c − r_r grows.

    Shapes: chosen_scores, rejected_scores, margin (B,) -> (scalar, metrics).
    Metrics: `accuracy` (share of pairs with r_c > r_r), `margin` (mean r_c − r_r).
    """
    check_same_shape(chosen_scores=chosen_scores, rejected_scores=rejected_scores)
    check_ndim(chosen_scores, 1, "chosen_scores", "(B,)")
    if chosen_scores.numel() == 0:
        raise ValueError("chosen_scores: empty batch, no pair to compare")
    diff = chosen_scores - rejected_scores
    if margin is not None:
        check_same_shape(chosen_scores=chosen_scores, margin=margin)
        diff = diff - margin
    loss = -F.logsigmoid(diff).mean()
    if center_coef:
        loss = loss + center_coef * ((chosen_scores + rejected_scores) ** 2).mean()
    with torch.no_grad():
        metrics = {"accuracy": (chosen_scores > rejected_scores).float().mean(),
                   "margin": (chosen_scores - rejected_scores).mean()}
    return loss, metrics


def explained_variance(values: torch.Tensor, returns: torch.Tensor,
                       response_mask: torch.Tensor) -> torch.Tensor:
    """1 − Var(R − V) / Var(R) under the mask: 1 is a perfect value function, 0 is no
    better than a constant, negative is worse. Shapes: (B, T) -> scalar."""
    check_same_shape(values=values, returns=returns, response_mask=response_mask)
    var_returns = masked_var(returns, response_mask, unbiased=False)
    var_residual = masked_var(returns - values, response_mask, unbiased=False)
    return 1.0 - var_residual / var_returns.clamp(min=1e-12)
