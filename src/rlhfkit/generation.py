"""Sampling responses from a causal LM with a KV cache.

A hand-written loop rather than `model.generate()`: it keeps exactly the pieces RLHF
needs — left-padded prompts with position ids from the attention mask, temperature /
top-k / top-p, a dedicated `torch.Generator` (so a resumed run draws the same tokens), and
a stop as soon as every row has emitted EOS — and nothing else.

Tokens are drawn by the exponential race (the Gumbel-max trick): with probabilities p and
independent E_v ~ Exp(1), argmax_v p_v / E_v is a sample of p. The noise of a step is drawn
for the whole *global* batch (`total_rows`) and each process keeps its own rows
(`row_offset`), so row i of a rollout gets the same tokens whether it is sampled by one
process or by rank r of many — the data-parallel run equals the single-process one.

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
    """transformers 5.2x renamed `past_key_values` to `cache`; accept both. A PEFT wrapper
    passes the keyword on to the model inside, so that model's signature decides."""
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def _output_cache(out):
    return out["cache"] if "cache" in out.keys() else out["past_key_values"]


def preallocated_cache(model, max_length: int):
    """A KV cache allocated once for `max_length` positions (transformers' `StaticCache`),
    written in place at every step instead of growing by concatenation; None (the model's
    own growing cache) for models that do not support one."""
    if not getattr(model, "_can_compile_fullgraph", False):  # HF's flag for static caches
        return None
    try:
        from transformers import StaticCache
        return StaticCache(config=model.config, max_cache_len=max_length)
    except (ImportError, TypeError, ValueError, AttributeError, NotImplementedError):
        return None


@torch.no_grad()
def sample_responses(model, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor,
                     sampling: Sampling, eos_token_id: int, pad_token_id: int,
                     generator: torch.Generator | None = None, row_offset: int = 0,
                     total_rows: int | None = None, agree=None,
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sample one response per prompt row.

    Shapes: prompt_ids, prompt_mask (B, P), left-padded ->
    response_ids (B, T) long, response_mask (B, T) long, has_eos (B,) bool.
    These B rows are rows [row_offset, row_offset + B) of a global batch of `total_rows`
    (default B): the sampling noise is drawn for all of them, on the generator's device.
    `eos_token_id` < 0 never stops a row: every response has max_new_tokens tokens.
    `agree(done) -> bool` turns this process's "every row stopped" into the verdict of all
    processes (`distributed.all_ranks_agree`): sharded (FSDP) models need every rank to run
    the same forward passes.
    The model must be in eval mode (no dropout) — the caller's job, checked here.

    Everything a step writes is allocated once, before the loop: the KV cache, the
    attention mask of prompt + all new tokens (step t sets column P+t and passes a view of
    the first P+t+1 columns) and the (B, max_new_tokens) token buffer. No forward pass is
    run after the last token.
    """
    if model.training:
        raise RuntimeError("sample_responses: the model is in training mode (dropout on); "
                           "call model.eval() first")
    (batch, prompt_len), device = prompt_ids.shape, prompt_ids.device
    steps = sampling.max_new_tokens
    mask = torch.zeros(batch, prompt_len + steps, dtype=torch.long, device=device)
    mask[:, :prompt_len] = prompt_mask
    tokens = torch.full((batch, steps), pad_token_id, dtype=torch.long, device=device)
    positions = position_ids_from_mask(mask[:, :prompt_len])
    cache = {_cache_kwarg(model): preallocated_cache(model, prompt_len + steps)}
    out = model(input_ids=prompt_ids, attention_mask=mask[:, :prompt_len],
                position_ids=positions, use_cache=True, logits_to_keep=1, **cache)
    next_position = positions[:, -1:] + 1
    finished = torch.zeros(batch, dtype=torch.bool, device=device)
    # Stopping early needs the host to read `finished`: every step on CPU, where that is
    # free; every 8 steps on an accelerator, where each read waits for the device.
    check_every = 1 if device.type == "cpu" else 8
    for t in range(steps):
        token = next_token(out.logits[:, -1], sampling, generator, row_offset, total_rows)
        if eos_token_id >= 0:
            token.masked_fill_(finished, pad_token_id)
            finished |= token == eos_token_id
        tokens[:, t] = token
        if t + 1 == steps or (eos_token_id >= 0 and (t + 1) % check_every == 0
                              and (agree or bool)(bool(finished.all()))):
            break
        mask[:, prompt_len + t] = 1
        cache = {_cache_kwarg(model): _output_cache(out)}
        out = model(input_ids=token[:, None], attention_mask=mask[:, :prompt_len + t + 1],
                    position_ids=next_position, use_cache=True, logits_to_keep=1, **cache)
        next_position = next_position + 1
    response_ids = tokens[:, :_steps_taken(tokens[:, :t + 1], eos_token_id, finished)]
    return response_ids, response_mask_after_eos(response_ids, eos_token_id), finished


def _steps_taken(tokens: torch.Tensor, eos_token_id: int, finished: torch.Tensor) -> int:
    """The response length T: the step at which the last row emitted its EOS when every row
    did (a check every k steps may have run past it: those columns are all pad), else all
    the steps run. Shapes: tokens (B, t), finished (B,)."""
    if eos_token_id < 0 or not bool(finished.all()):
        return tokens.shape[1]
    first_eos = (tokens == eos_token_id).long().argmax(-1)     # (B,): every row has one
    return int(first_eos.max()) + 1


def next_token(logits: torch.Tensor, sampling: Sampling, generator: torch.Generator | None,
               row_offset: int = 0, total_rows: int | None = None) -> torch.Tensor:
    """One token per row from the last position's logits (B, V): greedy at temperature 0,
    else filtered (top-k, top-p) and drawn by `sample_tokens`. -> (B,) long."""
    logits = logits.float()
    if sampling.temperature <= 0:
        return logits.argmax(-1)
    logits = filter_logits(logits / sampling.temperature, sampling.top_k, sampling.top_p)
    return sample_tokens(logits, generator, row_offset, total_rows)


def sample_tokens(logits: torch.Tensor, generator: torch.Generator | None, row_offset: int = 0,
                  total_rows: int | None = None) -> torch.Tensor:
    """One token per row by the exponential race: argmax_v softmax(logits)_v / E_v with
    E ~ Exp(1) drawn for rows [0, total_rows) and sliced to this process's rows.
    Shapes: logits (B, V) already divided by the temperature -> (B,) long."""
    rows, vocab = logits.shape
    gen_device = generator.device if generator is not None else logits.device
    noise = torch.empty(total_rows or rows, vocab, device=gen_device).exponential_(
        generator=generator)[row_offset:row_offset + rows].to(logits.device)
    # E = 0 has probability ~2^-24 per draw; it would turn a filtered token's 0/0 into NaN
    return (torch.softmax(logits, -1) / noise.clamp_min_(1e-20)).argmax(-1)


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
