"""Sampling responses from a causal LM with a KV cache.

A hand-written loop rather than `model.generate()`: it keeps exactly the pieces RLHF
needs — left-padded prompts with position ids from the attention mask, temperature /
top-k / top-p, a dedicated `torch.Generator` (so a resumed run draws the same tokens), and
a stop as soon as every row has emitted EOS — and nothing else.

Tokens are drawn by inverse-CDF sampling: one uniform u per row, and the token whose slice
of the cumulative probabilities holds u. The uniforms of a step are drawn for the whole
*global* batch (`total_rows`) and each process keeps its own rows (`row_offset`), so row i
of a rollout gets the same tokens whether it is sampled by one process or by rank r of
many — the data-parallel run equals the single-process one.

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
    run after the last token. Rows that have stopped leave the batch (`_drop_stopped`)
    once a quarter of those still running have, so a step costs what its live rows cost;
    each row keeps its own uniform, whichever rows run beside it.
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
    cache_kwarg = _cache_kwarg(model)  # once: inspect.signature costs as much as a sampling step
    out = model(input_ids=prompt_ids, attention_mask=mask[:, :prompt_len],
                position_ids=positions, use_cache=True, logits_to_keep=1,
                **{cache_kwarg: preallocated_cache(model, prompt_len + steps)})
    next_position = positions[:, -1:] + 1
    finished = torch.zeros(batch, dtype=torch.bool, device=device)
    live = torch.arange(batch, device=device)   # (B',): the rows still in the batch
    # Stopping early needs the host to read `finished`: every step on CPU, where that is
    # free; every 8 steps on an accelerator, where each read waits for the device.
    check_every = 1 if device.type == "cpu" else 8
    for t in range(steps):
        token = next_token(out.logits[:, -1], sampling, generator, row_offset,
                           total_rows or batch, live)
        if eos_token_id >= 0:
            token.masked_fill_(finished[live], pad_token_id)
            finished[live] |= token == eos_token_id
        tokens[live, t] = token
        check = eos_token_id >= 0 and (t + 1) % check_every == 0
        if t + 1 == steps or (check and (agree or bool)(bool(finished.all()))):
            break
        cache = _output_cache(out)
        if check:
            live, keep = _drop_stopped(live, finished, cache)
            token, mask, next_position = token[keep], mask[keep], next_position[keep]
        mask[:, prompt_len + t] = 1
        out = model(input_ids=token[:, None], attention_mask=mask[:, :prompt_len + t + 1],
                    position_ids=next_position, use_cache=True, logits_to_keep=1,
                    **{cache_kwarg: cache})
        next_position = next_position + 1
    response_ids = tokens[:, :_steps_taken(tokens[:, :t + 1], eos_token_id, finished)]
    return response_ids, response_mask_after_eos(response_ids, eos_token_id), finished


def _drop_stopped(live: torch.Tensor, finished: torch.Tensor, cache
                  ) -> tuple[torch.Tensor, torch.Tensor | slice]:
    """The rows to keep running, once at least a quarter of the live rows have stopped
    (each drop copies the KV cache, so not at every stop) and some still run (a sharded
    model steps on with its rows until every process is done): (new live rows (B'',),
    their positions among the old ones). The cache is shrunk in place. Shapes: live (B',),
    finished (B,)."""
    stopped = finished[live]
    n_stopped = int(stopped.sum())
    if not hasattr(cache, "reorder_cache") or n_stopped == len(live) or 4 * n_stopped < len(live):
        return live, slice(None)
    keep = (~stopped).nonzero().squeeze(-1)
    cache.reorder_cache(keep)
    return live[keep], keep


def _steps_taken(tokens: torch.Tensor, eos_token_id: int, finished: torch.Tensor) -> int:
    """The response length T: the step at which the last row emitted its EOS when every row
    did (a check every k steps may have run past it: those columns are all pad), else all
    the steps run. Shapes: tokens (B, t), finished (B,)."""
    if eos_token_id < 0 or not bool(finished.all()):
        return tokens.shape[1]
    first_eos = (tokens == eos_token_id).long().argmax(-1)     # (B,): every row has one
    return int(first_eos.max()) + 1


def next_token(logits: torch.Tensor, sampling: Sampling, generator: torch.Generator | None,
               row_offset: int = 0, total_rows: int | None = None,
               rows: torch.Tensor | None = None) -> torch.Tensor:
    """One token per row from the last position's logits (B', V): greedy at temperature 0,
    else filtered (top-k, top-p) and drawn by `sample_tokens`. -> (B',) long."""
    logits = logits.float()
    if sampling.temperature <= 0:
        return logits.argmax(-1)
    logits = filter_logits(logits / sampling.temperature, sampling.top_k, sampling.top_p)
    return sample_tokens(logits, generator, row_offset, total_rows, rows)


def sample_tokens(logits: torch.Tensor, generator: torch.Generator | None, row_offset: int = 0,
                  total_rows: int | None = None, rows: torch.Tensor | None = None
                  ) -> torch.Tensor:
    """One token per row by inverse-CDF sampling: with c = cumsum(softmax(logits)) and one
    u ~ U[0, 1) per row, the token is the first v with c_v > u · c_V. The uniforms are
    drawn for rows [0, total_rows) and sliced to this process's rows [row_offset,
    row_offset + B), of which `rows` (B',) are the ones in `logits` (default: all B).
    Shapes: logits (B', V) already divided by the temperature -> (B',) long.

    One number per row, not one per row and token as the exponential race (argmax p / E)
    draws: at 1,024 rows and 1,000 tokens those draws took half of the sampling time."""
    n_rows, vocab = logits.shape
    gen_device = generator.device if generator is not None else logits.device
    u = torch.rand(total_rows or n_rows, device=gen_device, generator=generator)
    u = (u[row_offset:row_offset + n_rows] if rows is None else
         u[row_offset + rows.to(gen_device)]).to(logits.device)
    cdf = torch.softmax(logits, -1).cumsum_(-1)                              # (B', V)
    # c_V (about 1) scales u, so float rounding in the sum cannot push u past the end;
    # a token of probability 0 (filtered) spans no width and is never the first c_v > x
    x = (u * cdf[:, -1]).unsqueeze(-1)                                       # (B', 1)
    return torch.searchsorted(cdf, x, right=True).squeeze(-1).clamp_max_(vocab - 1)


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
