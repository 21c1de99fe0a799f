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


def _row_chunks(*tensors: torch.Tensor):
    """The tensors cut along the batch dimension into chunks of at most CHUNK_ELEMENTS
    logits (>= 1 row); the first tensor is the (B, T, V) logits. A batch that fits in one
    chunk is passed whole: slicing it would cost its gradient a zero-filled (B, T, V) copy."""
    logits = tensors[0]
    rows = max(1, CHUNK_ELEMENTS // max(1, logits.shape[1] * logits.shape[2]))
    if rows >= logits.shape[0]:
        yield tensors
        return
    for start in range(0, logits.shape[0], rows):
        yield tuple(t[start:start + rows] for t in tensors)


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
    log-softmax of the scaled logits:

        log π(a_t) = z_t[a_t] / τ − logsumexp_v(z_t[v] / τ)
        H_t        = −Σ_v π_v · log π_v

    Shapes: logits (B, T, V), tokens (B, T) integer -> ((B, T) float32, (B, T) float32 or
    None when `with_entropy` is False). `entropy_grad=False`: the entropy is returned
    without a graph (only logged), the log-probs keep theirs.

    Memory: the (B, T, V) logits are never copied whole. They are turned into float32 a
    few rows at a time (at most CHUNK_ELEMENTS numbers), so the extra memory is a few such
    chunks, not a full log-softmax tensor (which would double the largest tensor of an RLHF
    step).
    """
    _check_logits(logits, temperature)
    _check_tokens(logits, tokens)
    tokens = tokens.long()
    entropy_grad = with_entropy and entropy_grad
    logprobs, entropies = [], []
    for chunk, chunk_tokens in _row_chunks(logits, tokens):
        lp, h = _TokenLogprobs.apply(chunk, chunk_tokens, temperature, with_entropy, entropy_grad)
        logprobs.append(lp), entropies.append(h)
    cat = lambda parts: parts[0] if len(parts) == 1 else torch.cat(parts)
    return cat(logprobs), cat(entropies) if with_entropy else None


class _TokenLogprobs(torch.autograd.Function):
    """log π(a_t | s_t) and the entropy H_t, with their gradients written out:

        forward:  log π = log_softmax(z / τ),  π = exp(log π),
                  out = log π[a_t],  H_t = −Σ_v π_v · log π_v
        backward: ∂ out / ∂ z_v = (1[v = a_t] − π_v) / τ
                  ∂ H_t / ∂ z_v = −π_v · (log π_v + H_t) / τ

    Four passes over the (b, T, V) logits forward and one to three backward, where autograd
    through `logsumexp`, `gather` and the entropy's softmax took about ten (zero-filled
    gradients, exp(z − lse) again, the division's own backward): at (16, 32, 1024), 1.6 ms
    against 3.2 ms a forward and backward on 2 CPU threads. Kept for the backward: π, and
    log π when the entropy has a gradient (b, T, V) float32 each. `entropy_grad=False`:
    H comes without a graph (only logged). Shapes: logits (b, T, V), tokens (b, T) long ->
    ((b, T) float32, (b, T) float32 or None)."""

    @staticmethod
    def forward(ctx, logits, tokens, temperature, with_entropy, entropy_grad):
        log_probs = torch.log_softmax(logits.float() / temperature, dim=-1)   # (b, T, V)
        out = log_probs.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)          # (b, T)
        if not (with_entropy or ctx.needs_input_grad[0]):
            return out, None  # e.g. the reference model's log-probs: π is not needed
        probs = log_probs.exp()
        entropy = -torch.linalg.vecdot(probs, log_probs) if with_entropy else None
        ctx.temperature, ctx.dtype, ctx.entropy_grad = temperature, logits.dtype, entropy_grad
        if entropy_grad:
            ctx.save_for_backward(probs, tokens, log_probs, entropy)
        else:
            ctx.save_for_backward(probs, tokens)
            if entropy is not None:
                ctx.mark_non_differentiable(entropy)
        return out, entropy

    @staticmethod
    def backward(ctx, grad_out, grad_entropy):
        probs, tokens, *for_entropy = ctx.saved_tensors
        scale = (grad_out / ctx.temperature).unsqueeze(-1)                    # (b, T, 1)
        if ctx.entropy_grad and grad_entropy is not None:
            # π · (c1 + c2 · log π), c1 = −(g_out + g_H · H) / τ, c2 = −g_H / τ
            log_probs, entropy = for_entropy
            c2 = (-grad_entropy / ctx.temperature).unsqueeze(-1)
            grad = log_probs * c2
            grad.add_(c2 * entropy.unsqueeze(-1) - scale).mul_(probs)
        else:
            grad = probs * -scale
        grad.scatter_add_(-1, tokens.unsqueeze(-1), scale)
        return grad.to(ctx.dtype), None, None, None, None


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
    # the same function as the log-probs' (any token: its log-prob is not used)
    no_tokens = torch.zeros(logits.shape[:2], dtype=torch.long, device=logits.device)
    return logprobs_and_entropy(logits, no_tokens, temperature)[1]
