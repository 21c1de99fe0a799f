"""Log-probabilities and entropy of a language model's next-token distribution.

A causal LM is a policy: at step t its logits z_t (V numbers) define
π(a | s_t) = softmax(z_t / τ)_a, with τ the sampling temperature. The temperature is a
required argument and must equal the one used for sampling; otherwise π_old and the
sampling distribution differ, and the importance ratio is not 1 before the first update
(N implementation details #4).

Alignment: `logits[:, t]` must already be the logits that *predicted* `tokens[:, t]` (the
caller shifts by one: logits at position i of the full sequence score token i + 1).
"""

from __future__ import annotations

import torch

from rlhfkit.core._checks import check_ndim


def _check_logits(logits: torch.Tensor, temperature: float) -> None:
    check_ndim(logits, 3, "logits", "(B, T, V)")
    if not logits.is_floating_point():
        raise ValueError(f"logits: expected a floating-point tensor, got {logits.dtype}")
    if not temperature > 0:
        raise ValueError(f"temperature: expected a positive number, got {temperature}")


def logprobs_from_logits(logits: torch.Tensor, tokens: torch.Tensor,
                         temperature: float) -> torch.Tensor:
    """log π(a_t | s_t) of the given tokens under softmax(logits / τ).

        log π(a_t) = z_t[a_t] / τ − logsumexp_v(z_t[v] / τ)

    Shapes: logits (B, T, V), tokens (B, T) integer -> (B, T) float32.

    Memory: the (B, T, V) logits are never copied whole. The log-normaliser is computed one
    sequence at a time in float32, so the extra memory is one (T, V) slice, not a full
    log-softmax tensor (which would double the largest tensor of an RLHF step).
    """
    _check_logits(logits, temperature)
    if tokens.shape != logits.shape[:2]:
        raise ValueError(f"tokens: expected shape {tuple(logits.shape[:2])} (the first two "
                         f"dimensions of logits), got {tuple(tokens.shape)}")
    if tokens.is_floating_point():
        raise ValueError(f"tokens: expected an integer tensor of token ids, got {tokens.dtype}")
    picked = logits.gather(-1, tokens.long().unsqueeze(-1)).squeeze(-1).float() / temperature
    log_norm = torch.stack([torch.logsumexp(row.float() / temperature, dim=-1) for row in logits])
    return picked - log_norm


def entropy_from_logits(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Entropy of π(· | s_t) = softmax(z_t / τ) at every position.

        H_t = −Σ_v π_v log π_v = logsumexp(z_t / τ) − Σ_v π_v · z_t[v] / τ

    Shapes: logits (B, T, V) -> (B, T) float32. Computed one sequence at a time, as above.
    """
    _check_logits(logits, temperature)
    rows = []
    for row in logits:  # row: (T, V)
        scaled = row.float() / temperature
        probs = torch.softmax(scaled, dim=-1)
        rows.append(torch.logsumexp(scaled, dim=-1) - (probs * scaled).sum(-1))
    return torch.stack(rows)
