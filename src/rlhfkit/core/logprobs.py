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


# Rows of logits turned into float32 at once: bounds the temporary copy at 2**24 floats
# (64 MiB) whatever B, T and V are, yet small batches go through in one kernel call.
CHUNK_ELEMENTS = 2 ** 24


def _row_chunks(logits: torch.Tensor):
    """Slices of the batch dimension holding at most CHUNK_ELEMENTS logits (>= 1 row)."""
    rows = max(1, CHUNK_ELEMENTS // max(1, logits.shape[1] * logits.shape[2]))
    for start in range(0, logits.shape[0], rows):
        yield slice(start, start + rows)


def _check_tokens(logits: torch.Tensor, tokens: torch.Tensor) -> None:
    if tokens.shape != logits.shape[:2]:
        raise ValueError(f"tokens: expected shape {tuple(logits.shape[:2])} (the first two "
                         f"dimensions of logits), got {tuple(tokens.shape)}")
    if tokens.is_floating_point():
        raise ValueError(f"tokens: expected an integer tensor of token ids, got {tokens.dtype}")


def logprobs_and_entropy(logits: torch.Tensor, tokens: torch.Tensor, temperature: float,
                         with_entropy: bool = True, entropy_grad: bool = True,
                         ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log π(a_t | s_t) of the given tokens and the entropy H_t of π(· | s_t), from one
    scaled copy of the logits and one log-normaliser:

        log π(a_t) = z_t[a_t] / τ − logsumexp_v(z_t[v] / τ)
        H_t        = logsumexp(z_t / τ) − Σ_v π_v · z_t[v] / τ

    Shapes: logits (B, T, V), tokens (B, T) integer -> ((B, T) float32, (B, T) float32 or
    None when `with_entropy` is False). `entropy_grad=False`: the entropy is returned
    without a graph (only logged), the log-probs keep theirs.

    Memory: the (B, T, V) logits are never copied whole. They are turned into float32 a
    few rows at a time (at most CHUNK_ELEMENTS numbers), so the extra memory is one such
    chunk, not a full log-softmax tensor (which would double the largest tensor of an RLHF
    step).
    """
    _check_logits(logits, temperature)
    _check_tokens(logits, tokens)
    tokens = tokens.long()
    logprobs, entropies = [], []
    for rows in _row_chunks(logits):
        scaled = logits[rows].float() / temperature                   # (b, T, V) float32
        log_norm = torch.logsumexp(scaled, dim=-1)                    # (b, T)
        logprobs.append(scaled.gather(-1, tokens[rows].unsqueeze(-1)).squeeze(-1) - log_norm)
        if with_entropy:
            entropies.append(_entropy(scaled, log_norm, entropy_grad))
    cat = lambda parts: parts[0] if len(parts) == 1 else torch.cat(parts)
    return cat(logprobs), cat(entropies) if with_entropy else None


def logprobs_from_logits(logits: torch.Tensor, tokens: torch.Tensor,
                         temperature: float) -> torch.Tensor:
    """log π(a_t | s_t) of the given tokens under softmax(logits / τ).

        log π(a_t) = z_t[a_t] / τ − logsumexp_v(z_t[v] / τ)

    Shapes: logits (B, T, V), tokens (B, T) integer -> (B, T) float32. Memory: see
    `logprobs_and_entropy` (at most one chunk of float32 logits besides the input).
    """
    return logprobs_and_entropy(logits, tokens, temperature, with_entropy=False)[0]


def entropy_from_logits(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Entropy of π(· | s_t) = softmax(z_t / τ) at every position.

        H_t = −Σ_v π_v log π_v = logsumexp(z_t / τ) − Σ_v π_v · z_t[v] / τ

    Shapes: logits (B, T, V) -> (B, T) float32. Computed a few rows at a time, as above.
    """
    _check_logits(logits, temperature)
    rows = []
    for chunk in _row_chunks(logits):
        scaled = logits[chunk].float() / temperature
        rows.append(_entropy(scaled, torch.logsumexp(scaled, dim=-1), grad=True))
    return rows[0] if len(rows) == 1 else torch.cat(rows)


def _entropy(scaled: torch.Tensor, log_norm: torch.Tensor, grad: bool) -> torch.Tensor:
    """H = log_norm − Σ_v π_v · scaled_v from the scaled logits (b, T, V) and their
    logsumexp (b, T) -> (b, T). With a graph, π comes from softmax, whose backward is one
    kernel; without one, from exp(scaled − log_norm), which reuses the normaliser instead
    of a second pass over the vocabulary for softmax's own."""
    if grad and torch.is_grad_enabled():
        return log_norm - (torch.softmax(scaled, dim=-1) * scaled).sum(-1)
    with torch.no_grad():
        probs = (scaled - log_norm.unsqueeze(-1)).exp_()
        return log_norm - torch.linalg.vecdot(probs, scaled)
