"""Reward model: a causal-LM trunk with a scalar head, scoring prompt + response.

It is a plain `AutoModelForSequenceClassification` with `num_labels=1`, so transformers
loads the reward models rlhfkit trains, and rlhfkit loads anyone else's. The score of a
sequence is the head's output at its last real token, the EOS:

    tokens   <pad> <pad>  user:  hi  <eos> assistant:  hello  <eos>
    mask       0     0      1    1    1       1          1      1
    score                                                       ^ read here

(N detail: read at the EOS, never at a pad.) With `pooling="sum"` the score is instead the
sum of the head's outputs at every attended token, r = Σ_t (w·h_t + b): a reward that adds
up over the text, as lexicon scores like VADER do (each token's part depends only on the
tokens before it, so a shared prompt adds the same amount to every response to it and
cancels in a comparison). The choice lives in `model.config.rlhfkit_pooling`; tools that
read only the last token (transformers' own `logits`) see the "last" score.

The statistics of the scores on reference responses (`set_score_stats`) live in
`model.config`, so they save with the model and PPO can normalise rewards to mean 0,
std 1 (N+ detail).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForSequenceClassification

from rlhfkit.errors import ConfigError, RlhfkitError
from rlhfkit.models.loading import (fit_to_tokenizer, from_pretrained, load_tokenizer,
                                    torch_dtype)
from rlhfkit.models.trunk import score_head, trunk, trunk_hidden_states


POOLINGS = ("last", "sum")


def init_reward_model(backbone_path_or_id, tokenizer, dtype="auto",
                      trust_remote_code: bool = False, pooling: str = "last"):
    """A new reward model: the trunk of a causal LM (usually the SFT model) plus a fresh head.

    The head is initialised normal with std 1/sqrt(H + 1) and bias 0 (N+ detail, after
    OpenAI's lm-human-preferences), drawn from torch's global RNG: seed it first.
    `pooling` ("last" or "sum") is how a sequence's score is read (see the module's text).
    """
    if pooling not in POOLINGS:
        raise ConfigError(f"pooling: got {pooling!r}, expected one of {', '.join(POOLINGS)}")
    model = from_pretrained(AutoModelForSequenceClassification, backbone_path_or_id,
                            num_labels=1, dtype=torch_dtype(dtype),
                            trust_remote_code=trust_remote_code)
    fit_to_tokenizer(model, tokenizer)
    head = score_head(model)
    with torch.no_grad():
        nn.init.normal_(head.weight, std=1.0 / math.sqrt(head.in_features + 1))
        if head.bias is not None:
            head.bias.zero_()
    if pooling != "last":  # "last" writes nothing: the config stays a plain classifier's
        model.config.rlhfkit_pooling = pooling
    return model


def pooling_of(model) -> str:
    """How `model` reads a sequence's score: "last" (the EOS) or "sum" (every token)."""
    pooling = getattr(model.config, "rlhfkit_pooling", "last")
    if pooling not in POOLINGS:
        raise RlhfkitError(f"rlhfkit_pooling in the reward model's config.json: got "
                           f"{pooling!r}, expected one of {', '.join(POOLINGS)}")
    return pooling


def _check_is_reward_model(name: str, trust_remote_code: bool) -> None:
    """Refuse folders that are not a one-output sequence classifier, before loading weights."""
    config = from_pretrained(AutoConfig, name, trust_remote_code=trust_remote_code)
    architectures = getattr(config, "architectures", None) or []
    if architectures and not any(a.endswith("ForSequenceClassification") for a in architectures):
        raise RlhfkitError(f"'{name}' holds a {architectures[0]}, not a reward model "
                           "(a ...ForSequenceClassification with num_labels=1)")
    if config.num_labels != 1:
        raise RlhfkitError(f"'{name}' has a head with {config.num_labels} outputs; a reward "
                           "model needs exactly one (num_labels=1)")


def load_reward_model(name_or_path, dtype="auto", trust_remote_code: bool = False):
    """Load a trained reward model and its own tokenizer: `(model, tokenizer)`.

    The tokenizer may differ from the policy's; the caller re-tokenizes text for it.
    """
    _check_is_reward_model(str(name_or_path), trust_remote_code)
    tokenizer = load_tokenizer(name_or_path, trust_remote_code=trust_remote_code)
    model = from_pretrained(AutoModelForSequenceClassification, name_or_path,
                            dtype=torch_dtype(dtype), trust_remote_code=trust_remote_code)
    if score_head(model).out_features != 1:
        raise RlhfkitError(f"'{name_or_path}' has a head with {score_head(model).out_features} "
                           "outputs; a reward model needs exactly one (num_labels=1)")
    fit_to_tokenizer(model, tokenizer)
    return model, tokenizer


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last attended token of each row, for any padding side: (B, L) -> (B,)."""
    positions = torch.arange(attention_mask.shape[-1], device=attention_mask.device)
    return (positions * attention_mask.long()).argmax(-1)


def score_sequences(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Reward-model scores, read at each row's last attended token (or summed over its
    attended tokens, `pooling="sum"`): (B, L) -> (B,) float32.

    Padding on either side and the other rows of the batch do not change a score, because
    position ids come from the mask. Gradients flow (reward-model training uses this);
    wrap in `torch.no_grad()` for scoring rollouts.
    """
    hidden = trunk_hidden_states(model, input_ids, attention_mask)        # (B, L, H)
    if pooling_of(model) == "sum":
        per_token = score_head(model)(hidden).squeeze(-1).float()         # (B, L)
        return (per_token * attention_mask).sum(-1)                       # (B,)
    rows = torch.arange(hidden.shape[0], device=hidden.device)
    last_hidden = hidden[rows, last_token_index(attention_mask)]         # (B, H)
    return score_head(model)(last_hidden).squeeze(-1).float()            # (B,)


def score_packed(model, input_ids: torch.Tensor, position_ids: torch.Tensor,
                 last_token: torch.Tensor) -> torch.Tensor:
    """Scores of sequences packed several to a row (`rlhfkit.data.pack_sequences`: position
    ids restart with each, no attention mask), read at each one's last token (or summed
    from its first, `pooling="sum"`, which starts last_token's position id before it):
    input_ids, position_ids (R, L), last_token (U, 2) (row, column) -> (U,) float32."""
    hidden = trunk(model)(input_ids=input_ids, position_ids=position_ids,
                          use_cache=False).last_hidden_state                 # (R, L, H)
    if pooling_of(model) == "sum":
        per_token = score_head(model)(hidden).squeeze(-1).float()            # (R, L)
        upto = nn.functional.pad(per_token.cumsum(-1), (1, 0))              # (R, L + 1)
        row, end = last_token[:, 0], last_token[:, 1]
        start = end - position_ids[row, end]
        return upto[row, end + 1] - upto[row, start]                         # (U,)
    last_hidden = hidden[last_token[:, 0], last_token[:, 1]]                 # (U, H)
    return score_head(model)(last_hidden).squeeze(-1).float()                # (U,)


def set_score_stats(model, mean: float, std: float) -> None:
    """Store the mean and std of scores on reference responses in `model.config`.

    They save with `save_pretrained`; PPO uses them to normalise rewards to about
    mean 0, std 1 (N+ detail: the RM is shifted so reference responses score 0).
    """
    if not std > 0:
        raise ConfigError(f"score std: got {std!r}, expected a positive number")
    model.config.rlhfkit_score_mean = float(mean)
    model.config.rlhfkit_score_std = float(std)


def get_score_stats(model) -> tuple[float, float] | None:
    """`(mean, std)` stored by `set_score_stats`, or None if the model has none."""
    mean = getattr(model.config, "rlhfkit_score_mean", None)
    std = getattr(model.config, "rlhfkit_score_std", None)
    if mean is None or std is None:
        return None
    return float(mean), float(std)
