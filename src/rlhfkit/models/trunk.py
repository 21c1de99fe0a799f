"""The transformer trunk under a head, run with position ids from the attention mask.

Reward models, value models and the policy's value head all need the trunk's last hidden
states. Position ids come from the attention mask (cumulative sum), so a token's hidden
state does not depend on how much padding sits to its left (N detail: left padding).
"""

from __future__ import annotations

import torch
from torch import nn

from rlhfkit.core import position_ids_from_mask
from rlhfkit.errors import RlhfkitError


def trunk(model: nn.Module) -> nn.Module:
    """The transformer under the head: `model.transformer` (GPT-2), `model.model` (Llama), ...

    Found through transformers' `base_model`; a PEFT wrapper is unwrapped first.
    """
    if hasattr(model, "get_base_model"):  # peft.PeftModel: the transformers model inside
        model = model.get_base_model()
    base = getattr(model, "base_model", None)
    if base is None:
        raise RlhfkitError(f"{type(model).__name__} has no transformer trunk (base_model)")
    return base


def score_head(model: nn.Module) -> nn.Linear:
    """The scalar head of a sequence-classification model (`model.score` for GPT-2, Llama, ...)."""
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()
    head = getattr(model, "score", None)
    if head is None:
        raise RlhfkitError(f"{type(model).__name__} has no 'score' head: not a reward model "
                           "(load it with AutoModelForSequenceClassification, num_labels=1)")
    return head


def trunk_hidden_states(model: nn.Module, input_ids: torch.Tensor,
                        attention_mask: torch.Tensor) -> torch.Tensor:
    """Last hidden states of `model`'s trunk, position ids from the mask: (B, L) -> (B, L, H).

    Any padding side works: padded positions are masked out as keys, and real tokens get
    positions 0, 1, 2, ... whatever padding precedes them.
    """
    out = trunk(model)(input_ids=input_ids, attention_mask=attention_mask,
                       position_ids=position_ids_from_mask(attention_mask), use_cache=False)
    return out.last_hidden_state


def fuse_activations(model: nn.Module) -> nn.Module:
    """Swap transformers' `NewGELUActivation` (GPT-2's `gelu_new`, written as seven tensor
    ops, each a pass over memory, and as many again in the backward) for `GELUTanh`: the
    same function, 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))), in one fused kernel. It is
    ~2.5× faster forward and backward on CPU; outputs differ only in float rounding
    (≤ 3e-7). The saved config still says `gelu_new`, so a reloaded model is unchanged.
    Returns `model`, changed in place."""
    from transformers.activations import GELUTanh, NewGELUActivation
    for parent in model.modules():
        for name, child in parent.named_children():
            if type(child) is NewGELUActivation:
                setattr(parent, name, GELUTanh())
    return model


# Under bf16 autocast on CPU the attention inputs arrive in bf16, and torch's CPU
# flash-attention kernel is slow in bf16: forward + backward of a (16, 4, 49, 64) causal
# attention took 10.3 ms in bf16 against 2.8 ms with the same inputs cast to float32
# (AMX Xeon, 2 threads; 20.3 against 5.7 ms with 8 heads). It was a third of a bf16
# training step of a 3.45 M GPT-2. Attention is also the part of the model where float32
# matters most (softmax over long rows), so on CPU it runs in float32.
FP32_ATTENTION = "rlhfkit_sdpa"


def sdpa_fp32_on_cpu(module, query, key, value, attention_mask, **kwargs):
    """transformers' SDPA attention; bf16/fp16 tensors on CPU are computed in float32.

    Shapes as transformers' attention functions: query (B, H, Lq, D), key and value
    (B, Hkv, Lk, D), attention_mask (B, 1, Lq, Lk) or None -> ((B, Lq, H, D), None).
    float32 tensors, and every tensor on a GPU, go to SDPA as they are.
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    if query.device.type != "cpu" or query.dtype == torch.float32:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    if attention_mask is not None and attention_mask.is_floating_point():
        attention_mask = attention_mask.float()
    with torch.autocast("cpu", enabled=False):  # autocast would cast them back to bf16
        out, weights = sdpa_attention_forward(module, query.float(), key.float(),
                                              value.float(), attention_mask, **kwargs)
    return out.to(query.dtype), weights


def fp32_cpu_attention(model: nn.Module) -> nn.Module:
    """Make a model that uses transformers' "sdpa" attention use `sdpa_fp32_on_cpu`: the
    same results in float32 and on GPUs, float32 attention under bf16 autocast on CPU.
    Not saved: a saved config keeps the model's own attention setting. Returns `model`."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
    config = getattr(model, "config", None)
    if getattr(config, "_attn_implementation", None) != "sdpa":
        return model
    if FP32_ATTENTION not in AttentionInterface._global_mapping:
        AttentionInterface.register(FP32_ATTENTION, sdpa_fp32_on_cpu)
        # the masks SDPA takes (without this transformers would pass no mask at all)
        AttentionMaskInterface.register(FP32_ATTENTION, sdpa_mask)
    model.set_attn_implementation(FP32_ATTENTION)
    return model
