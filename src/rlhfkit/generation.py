"""Sampling responses from a causal LM with a KV cache.

A hand-written loop rather than `model.generate()`: it keeps exactly the pieces RLHF
needs — left-padded prompts with position ids from the attention mask, temperature /
top-k / top-p, a dedicated `torch.Generator` (so a resumed run draws the same tokens), and
a stop as soon as every row has emitted EOS — and nothing else.

Layout of the result (T = number of steps taken, at most max_new_tokens):

    response_ids   a_0  a_1  a_2  EOS  pad  pad      right-padded, pad after the first EOS
    response_mask   1    1    1    1    0    0       the EOS itself counts (its log-prob is
                                                     trained, so the model learns to stop)
    has_eos        True                              False when cut at max_new_tokens
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch

from rlhfkit.core import position_ids_from_mask


@dataclass
class Sampling:
    """How responses are drawn. temperature 0 means greedy decoding."""
    max_new_tokens: int = 32
    temperature: float = 0.7
    top_k: int = 0      # 0: off
    top_p: float = 1.0  # 1.0: off


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Set logits outside the top-k tokens, or outside the smallest set whose probability
    reaches top_p (nucleus sampling, Holtzman et al. 2020), to −inf. Shapes: (B, V)."""
    if top_k and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        cumulative = torch.softmax(sorted_logits, -1).cumsum(-1)
        # drop a token when the tokens ranked above it already reach top_p
        drop_sorted = (cumulative - torch.softmax(sorted_logits, -1)) >= top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def _cache_kwarg(model) -> str:
    """transformers 5.2x renamed `past_key_values` to `cache`; accept both."""
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def _output_cache(out):
    return out["cache"] if "cache" in out.keys() else out["past_key_values"]


@torch.no_grad()
def sample_responses(model, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor,
                     sampling: Sampling, eos_token_id: int, pad_token_id: int,
                     generator: torch.Generator | None = None,
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sample one response per prompt row.

    Shapes: prompt_ids, prompt_mask (B, P), left-padded ->
    response_ids (B, T) long, response_mask (B, T) long, has_eos (B,) bool.
    The model must be in eval mode (no dropout) — the caller's job, checked here.
    """
    if model.training:
        raise RuntimeError("sample_responses: the model is in training mode (dropout on); "
                           "call model.eval() first")
    batch, device = prompt_ids.shape[0], prompt_ids.device
    cache_name = _cache_kwarg(model)
    mask = prompt_mask.long()
    positions = position_ids_from_mask(mask)
    out = model(input_ids=prompt_ids, attention_mask=mask, position_ids=positions,
                use_cache=True, logits_to_keep=1)
    next_position = positions[:, -1:] + 1
    finished = torch.zeros(batch, dtype=torch.bool, device=device)
    tokens = []
    for _ in range(sampling.max_new_tokens):
        logits = out.logits[:, -1].float()
        if sampling.temperature > 0:
            logits = filter_logits(logits / sampling.temperature, sampling.top_k, sampling.top_p)
            token = torch.multinomial(torch.softmax(logits, -1), 1, generator=generator)[:, 0]
        else:
            token = logits.argmax(-1)
        token = torch.where(finished, torch.full_like(token, pad_token_id), token)
        tokens.append(token)
        finished |= token == eos_token_id
        if bool(finished.all()):
            break
        mask = torch.cat([mask, torch.ones(batch, 1, dtype=mask.dtype, device=device)], 1)
        out = model(input_ids=token[:, None], attention_mask=mask, position_ids=next_position,
                    use_cache=True, logits_to_keep=1, **{cache_name: _output_cache(out)})
        next_position = next_position + 1
    response_ids = torch.stack(tokens, 1)
    return response_ids, response_mask_after_eos(response_ids, eos_token_id), finished


def response_mask_after_eos(response_ids: torch.Tensor, eos_token_id: int) -> torch.Tensor:
    """1 up to and including the first EOS of each row, 0 after it (all 1 without EOS).
    Shapes: (B, T) -> (B, T) long."""
    is_eos = (response_ids == eos_token_id).long()
    eos_before = is_eos.cumsum(-1) - is_eos  # EOS tokens strictly before position t
    return (eos_before == 0).long()


@torch.no_grad()
def generate_texts(model, tokenizer, prompts: list[str], sampling: Sampling,
                   generator: torch.Generator | None = None, batch_size: int = 128,
                   max_prompt_length: int = 256) -> tuple[list[str], list[bool]]:
    """Sample one response text per prompt, in batches: (responses, stopped at EOS?).

    Prompts are encoded as everywhere in rlhfkit (`rlhfkit.data.encode_prompt`) and
    left-padded; responses are decoded without the EOS and the padding after it.
    """
    from rlhfkit.data import collate_prompts, tokenize_prompts
    device = next(model.parameters()).device
    tokens, _ = tokenize_prompts(prompts, tokenizer, max_prompt_length)
    texts, stopped = [], []
    for start in range(0, len(prompts), batch_size):
        batch = collate_prompts(tokens[start:start + batch_size], tokenizer.pad_token_id)
        ids, mask, has_eos = sample_responses(
            model, batch["input_ids"].to(device), batch["attention_mask"].to(device), sampling,
            tokenizer.eos_token_id, tokenizer.pad_token_id, generator)
        lengths = (mask.sum(-1) - has_eos.long()).tolist()
        texts += tokenizer.batch_decode([row[:n] for row, n in zip(ids.tolist(), lengths)],
                                        skip_special_tokens=True)
        stopped += has_eos.tolist()
    return texts, stopped
