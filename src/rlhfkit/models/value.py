"""Value functions V(s_t): one scalar per token, the expected return from that token on.

Two options, both saved and loaded without loss (TRL lost its value head: trl#1650):

- `ValueModel`: a separate critic, initialised from the reward model (InstructGPT, N+
  detail). It is a sequence-classification model whose scalar head is applied to the
  hidden state of every token, not only the last one.
- `PolicyWithValueHead`: the lecture's choice, a `Linear(H, 1)` on the policy's own trunk,
  so one forward pass gives both the logits and the values.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoConfig, AutoModelForSequenceClassification

from rlhfkit.core import position_ids_from_mask
from rlhfkit.errors import RlhfkitError
from rlhfkit.models.loading import (fit_to_tokenizer, from_pretrained, load_causal_lm,
                                    load_tokenizer, resolve_path, torch_dtype)
from rlhfkit.models.trunk import score_head, trunk, trunk_hidden_states

logger = logging.getLogger(__name__)

VALUE_HEAD_FILE = "value_head.safetensors"


class ValueModel(nn.Module):
    """A critic: a sequence-classification model read at every token.

    At initialisation from a reward model, the value at the last real token equals the
    reward model's score of the sequence.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model  # an ...ForSequenceClassification with num_labels=1

    @property
    def config(self):
        return self.model.config

    def values(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
               last: int = 0) -> torch.Tensor:
        """Per-token values, position ids from the mask: (B, L) -> (B, L) float32, or
        (B, last) for the last `last` positions only (`last` > 0: the head runs on those
        alone, as `logits_to_keep` does for an LM).

        Values at padded positions are finite but meaningless; mask them.
        """
        hidden = trunk_hidden_states(self.model, input_ids, attention_mask)   # (B, L, H)
        if last > 0:
            hidden = hidden[:, -last:]                                        # (B, last, H)
        return score_head(self.model)(hidden).squeeze(-1).float()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.values(input_ids, attention_mask)

    def save_pretrained(self, out_dir) -> None:
        """Save as a plain sequence-classification model (transformers loads it)."""
        self.model.save_pretrained(out_dir)

    @classmethod
    def from_pretrained(cls, name_or_path, tokenizer=None, dtype="auto",
                        trust_remote_code: bool = False) -> "ValueModel":
        """Load a critic from a reward-model or saved value-model folder, or start one from
        a causal LM's trunk (the head is then new: zero-initialised, so V = 0 at first).

        `tokenizer` (default: the folder's own, via `load_tokenizer`) sets the pad id and
        the embedding size.
        """
        if tokenizer is None:
            tokenizer = load_tokenizer(name_or_path, trust_remote_code=trust_remote_code)
        config = from_pretrained(AutoConfig, name_or_path, trust_remote_code=trust_remote_code)
        is_classifier = any(a.endswith("ForSequenceClassification")
                            for a in getattr(config, "architectures", None) or [])
        if is_classifier and config.num_labels != 1:
            raise RlhfkitError(f"'{name_or_path}' has a head with {config.num_labels} outputs; "
                               "a value model needs exactly one (num_labels=1)")
        model = from_pretrained(AutoModelForSequenceClassification, name_or_path, num_labels=1,
                                dtype=torch_dtype(dtype), trust_remote_code=trust_remote_code)
        if not is_classifier:
            nn.init.zeros_(score_head(model).weight)
            if score_head(model).bias is not None:
                nn.init.zeros_(score_head(model).bias)
        fit_to_tokenizer(model, tokenizer)
        return cls(model)


class PolicyWithValueHead(nn.Module):
    """A causal LM plus a `value_head` Linear(H, 1) in float32 on the same trunk.

    The policy part saves as a plain Hugging Face folder, so transformers loads the trained
    policy directly; the head goes to `value_head.safetensors` beside it.
    """

    def __init__(self, lm: nn.Module, value_head: nn.Linear | None = None):
        super().__init__()
        self.lm = lm
        if value_head is None:
            hidden_size = lm.config.get_text_config().hidden_size
            # Zero init, as OpenAI did for the value head: V = 0 until the critic learns.
            value_head = nn.Linear(hidden_size, 1, dtype=torch.float32)
            nn.init.zeros_(value_head.weight)
            nn.init.zeros_(value_head.bias)
        self.value_head = value_head.to(device=lm.device, dtype=torch.float32)

    @property
    def config(self):
        return self.lm.config

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                position_ids: torch.Tensor | None = None, logits_to_keep: int = 0):
        """Logits and values from ONE trunk pass: (B, L) -> ((B, L, V), (B, L) float32).

        `logits_to_keep` = K > 0 computes logits for the last K positions only, (B, K, V);
        values always cover all L positions (the head is a cheap H -> 1 projection).

        The LM's own forward computes the logits (so model-specific logit scaling or
        soft-capping is kept); a forward hook on the trunk keeps its last hidden state
        for the value head. `position_ids` default to the cumulative sum of the mask.
        """
        if position_ids is None:
            position_ids = position_ids_from_mask(attention_mask)
        kept = {}

        def keep_hidden(module, args, output):
            kept["hidden"] = output[0]  # last_hidden_state, (B, L, H)

        handle = trunk(self.lm).register_forward_hook(keep_hidden)
        try:
            out = self.lm(input_ids=input_ids, attention_mask=attention_mask,
                          position_ids=position_ids, use_cache=False,
                          logits_to_keep=logits_to_keep)
        finally:
            handle.remove()
        values = self.value_head(kept["hidden"].float()).squeeze(-1)          # (B, L)
        return out.logits, values

    def generate(self, *args, **kwargs):
        """Sampling goes through the LM alone; the value head is not needed there."""
        return self.lm.generate(*args, **kwargs)

    def save_pretrained(self, out_dir) -> None:
        """Write the LM in plain HF format plus `value_head.safetensors`."""
        out_dir = Path(out_dir)
        self.lm.save_pretrained(out_dir)
        state = {k: v.detach().cpu().contiguous() for k, v in self.value_head.state_dict().items()}
        save_file(state, str(out_dir / VALUE_HEAD_FILE))

    @classmethod
    def from_pretrained(cls, name_or_path, tokenizer=None, dtype="auto",
                        trust_remote_code: bool = False) -> "PolicyWithValueHead":
        """Load the LM and, if the folder has one, its value head (else a zero head)."""
        if tokenizer is None:
            tokenizer = load_tokenizer(name_or_path, trust_remote_code=trust_remote_code)
        lm = load_causal_lm(name_or_path, tokenizer, dtype=dtype,
                            trust_remote_code=trust_remote_code)
        policy = cls(lm)
        head_file = Path(resolve_path(name_or_path)) / VALUE_HEAD_FILE
        if head_file.is_file():
            policy.value_head.load_state_dict(load_file(str(head_file)))
        else:
            logger.info("no %s in '%s': value head initialised to zero", VALUE_HEAD_FILE,
                        name_or_path)
        return policy
