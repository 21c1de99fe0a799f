"""Trajectories: sample responses, then read off everything PPO needs about them.

One rollout batch holds B = prompts × samples_per_prompt trajectories, in the group layout
of `rlhfkit.core.advantages` (the G samples of a prompt are contiguous). The model input of
row b is its left-padded prompt followed by its right-padded response:

    input    <pad> <pad>  p0  p1  p2 | a0  a1  a2  EOS <pad>
    mask       0     0    1   1   1  | 1   1   1   1    0
    logits                        ^-- position P−1 predicts a0; position P+t−1 predicts a_t

so the logits, log-probs and values of response token t are read at position P−1+t. The
last position (the last response token) predicts nothing that is scored, and causal
attention keeps it from changing any earlier position, so the models run on the input
without its last column and keep their last T positions (`logits_to_keep=T`). Getting this
one-position shift wrong is the classic off-by-one of RLHF code; the tests pin it.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

from rlhfkit.core import position_ids_from_mask
from rlhfkit.core.logprobs import logprobs_and_entropy
from rlhfkit.models import PolicyWithValueHead, ValueModel


@dataclass
class Rollout:
    """A batch of trajectories. B rollouts, P prompt tokens, T response tokens."""
    prompts: list[str]                   # B prompt texts
    responses: list[str]                 # B response texts, up to (without) the EOS
    prompt_ids: torch.Tensor             # (B, P) left-padded prompt tokens
    prompt_mask: torch.Tensor            # (B, P) 1 on real prompt tokens
    response_ids: torch.Tensor           # (B, T) sampled tokens a_t, pad after the EOS
    response_mask: torch.Tensor          # (B, T) 1 up to and including the EOS
    has_eos: torch.Tensor                # (B,) False for responses cut at max_new_tokens
    logprobs: torch.Tensor               # (B, T) log π_old(a_t | s_t) at the sampling temperature
    ref_logprobs: torch.Tensor           # (B, T) log π_ref(a_t | s_t), same temperature
    values: torch.Tensor | None          # (B, T) V(s_t) before the update; None without a critic
    scores: torch.Tensor                 # (B,) sequence scores after normalisation and penalties
    raw_scores: torch.Tensor             # (B,) scores as the reward source gave them
    kl: torch.Tensor | None = None       # (B, T) per-token KL estimate, log π_old vs log π_ref
    rewards: torch.Tensor | None = None  # (B, T) per-token rewards (KL penalty + score at the end)
    advantages: torch.Tensor | None = None  # (B, T) advantages, whitened if asked
    returns: torch.Tensor | None = None  # (B, T) value targets (None without a critic)
    gold_scores: torch.Tensor | None = None  # (B,) a judge's scores, logged but never trained on

    def __len__(self) -> int:
        return len(self.prompts)

    def input_ids(self, rows=slice(None)) -> torch.Tensor:
        """(b, P+T) prompt + response ids of the given rows."""
        return torch.cat([self.prompt_ids[rows], self.response_ids[rows]], 1)

    def attention_mask(self, rows=slice(None)) -> torch.Tensor:
        """(b, P+T): pads on both sides are masked out."""
        return torch.cat([self.prompt_mask[rows], self.response_mask[rows]], 1)


# Fields with one entry per response token: (B, T).
TOKEN_FIELDS = ("response_ids", "response_mask", "logprobs", "ref_logprobs", "values", "kl",
                "rewards", "advantages", "returns")
# Fields with one entry per (left-padded) prompt token: (B, P).
PROMPT_FIELDS = ("prompt_ids", "prompt_mask")


def select(rollout: Rollout, rows: torch.Tensor) -> dict[str, torch.Tensor]:
    """The tensors of `rows` (a (b,) index tensor), padded only as far as these rows need:
    per-token ones trimmed to the longest response among them, the prompts to the longest
    prompt among them (the left-pad columns no row uses are dropped). Pad columns cost
    compute and change nothing: they are masked out as keys, and position ids come from
    the mask."""
    response_mask, prompt_mask = rollout.response_mask[rows], rollout.prompt_mask[rows]
    # one host sync for both lengths: longest response, longest prompt
    t, p = torch.stack([response_mask.sum(-1).max(), prompt_mask.sum(-1).max()]).tolist()
    start = prompt_mask.shape[1] - p     # prompts are left-padded: the last p columns
    out = {}
    for f in fields(rollout):
        value = getattr(rollout, f.name)
        if isinstance(value, torch.Tensor):
            value = value[rows]
            if f.name in TOKEN_FIELDS:
                value = value[:, :t]
            elif f.name in PROMPT_FIELDS:
                value = value[:, start:]
            out[f.name] = value
    return out


def _scored_input(prompt_ids, prompt_mask, response_ids, response_mask):
    """Prompt + response without the response's last token, and its mask: (b, P + T − 1).
    Its last T positions are the ones that predicted the T response tokens."""
    if response_ids.shape[1] < 1:  # logits_to_keep=0 would mean every position
        raise ValueError("response_ids: expected at least one response token per row")
    return (torch.cat([prompt_ids, response_ids[:, :-1]], 1),
            torch.cat([prompt_mask, response_mask[:, :-1]], 1))


def response_forward(model, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor,
                     response_ids: torch.Tensor, response_mask: torch.Tensor,
                     ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Logits that predicted each response token, and values V(s_t) when the model carries a
    value head. Shapes: prompt (b, P), response (b, T >= 1) -> logits (b, T, V), values (b, T)."""
    ids, mask = _scored_input(prompt_ids, prompt_mask, response_ids, response_mask)
    t = response_ids.shape[1]
    positions = position_ids_from_mask(mask)
    if isinstance(model, PolicyWithValueHead):
        logits, values = model(ids, mask, positions, logits_to_keep=t)
        return logits, values[:, -t:]
    out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False,
                logits_to_keep=t)
    return out.logits, None


def critic_values(critic: ValueModel, prompt_ids, prompt_mask, response_ids, response_mask):
    """V(s_t) from a separate critic, aligned with the response tokens: (b, T). The value
    of response token t is read where its logits are (position P−1+t): the last T positions
    of the same input as `response_forward`'s, and the head runs on those alone."""
    ids, mask = _scored_input(prompt_ids, prompt_mask, response_ids, response_mask)
    return critic.values(ids, mask, last=response_ids.shape[1])


@torch.no_grad()
def score_tokens(model, batch: dict[str, torch.Tensor], temperature: float,
                 critic: ValueModel | None = None, with_entropy: bool = False):
    """No-grad pass over a chunk of rollouts: (log-probs (b, T), values (b, T) or None,
    entropy (b, T) or None). The values come from the critic when given, else from the
    model's own head (if any). One forward pass per model; the log-probs and the entropy
    share one float32 copy of the logits."""
    args = (batch["prompt_ids"], batch["prompt_mask"], batch["response_ids"], batch["response_mask"])
    logits, values = response_forward(model, *args)
    logprobs, entropy = logprobs_and_entropy(logits, batch["response_ids"], temperature,
                                             with_entropy)
    del logits  # the (b, T, V) logits are not needed past this point
    if critic is not None:
        values = critic_values(critic, *args)
    return logprobs, values, entropy


def chunked(n: int, size: int):
    """Index tensors covering range(n) in chunks of `size`."""
    for start in range(0, n, size):
        yield torch.arange(start, min(start + size, n))
