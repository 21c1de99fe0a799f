"""LoRA (Hu et al. 2021) through `peft`: train small adapters, keep the base weights frozen.

Each targeted weight W (d_out × d_in) gets a low-rank update that alone is trained:

    W' = W + (alpha / r) · B A        A: (r, d_in), random;  B: (d_out, r), zero at the start

B = 0 at the start, so the adapted model first computes exactly as its base model.

What this buys in RLHF:
- the KL reference is the policy's own base with the adapters switched off
  (`adapters_disabled`), so no second copy of the weights is kept in memory;
- the reward model and the critic may be LoRA too (`task="seq_cls"`: their score head is
  trained in full beside the adapters);
- the final model is saved merged (a plain Hugging Face folder, W' written into W) or as the
  adapter alone (`save_lora_model`), and a saved adapter is re-attached to resume a run
  (`load_lora_adapter`).

`peft` is optional (`pip install 'rlhfkit[lora]'`): it is imported only inside the functions
that need it, so `import rlhfkit.models` works without it.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from pathlib import Path

from torch import nn

from rlhfkit.errors import ConfigError, RlhfkitError
from rlhfkit.models.trunk import score_head
from rlhfkit.models.value import PolicyWithValueHead, ValueModel
from rlhfkit.recipes.options import SAVE_MODES, LoraConfig  # the config section, light to import

TASKS = {"causal_lm": "CAUSAL_LM", "seq_cls": "SEQ_CLS"}  # rlhfkit name -> peft TaskType
ADAPTER_CONFIG_FILE = "adapter_config.json"


def _import_peft():
    """The `peft` module, or a one-line RlhfkitError saying how to install it."""
    try:
        import peft
    except ImportError as err:
        raise RlhfkitError("LoRA needs peft: pip install 'rlhfkit[lora]'") from err
    return peft


def _peft_model(model: nn.Module):
    """The `peft.PeftModel` that is `model` or sits inside it (e.g. `PolicyWithValueHead.lm`),
    or None. Without peft installed nothing can be a PeftModel, so None."""
    try:
        from peft import PeftModel
    except ImportError:
        return None
    return next((m for m in model.modules() if isinstance(m, PeftModel)), None)


def is_lora(model: nn.Module) -> bool:
    """True if `model` is, or holds (as `PolicyWithValueHead.lm`, `ValueModel.model`), a peft model."""
    return _peft_model(model) is not None


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters the optimizer must update: those with `requires_grad`.

    With LoRA these are the adapters (plus a reward model's or critic's score head, plus a
    `PolicyWithValueHead`'s value head); without LoRA, every weight.
    """
    return [p for p in model.parameters() if p.requires_grad]


def _has_conv1d(model: nn.Module) -> bool:
    """GPT-2 stores its projections as transformers' `Conv1D` (weight shaped (d_in, d_out))."""
    from transformers.pytorch_utils import Conv1D
    return any(isinstance(m, Conv1D) for m in model.modules())


def add_lora(model: nn.Module, cfg: LoraConfig, task: str):
    """Wrap `model` in LoRA adapters and freeze everything else; return the peft model.

    `task`: "causal_lm" (a policy, `...ForCausalLM`) or "seq_cls" (a reward model or critic,
    `...ForSequenceClassification` with one label: its `score` head stays trainable in full,
    through peft's `modules_to_save`, and is saved with the adapter).

    The adapters are injected into `model` in place (its layers become LoRA layers); keep
    using the returned object; it is in `model`'s train/eval mode. A is drawn from torch's
    global RNG: seed it first for a reproducible run. B starts at zero, so the result first
    computes exactly as `model`.
    """
    peft = _import_peft()
    if not cfg.enabled:
        raise ConfigError(f"lora.r: add_lora needs a rank > 0, got {cfg.r} "
                          "(r = 0 means no LoRA: train the model itself)")
    if task not in TASKS:
        raise ConfigError(f"task: got {task!r}, expected one of {', '.join(TASKS)}")
    if is_lora(model):
        raise RlhfkitError(f"{type(model).__name__} already has LoRA adapters")
    if task == "seq_cls":
        score_head(model)  # a clear error if this is not a reward model / critic
    peft_cfg = peft.LoraConfig(
        task_type=TASKS[task], r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
        target_modules=list(cfg.target_modules) or "all-linear",
        # Conv1D weights are (d_in, d_out), the transpose of nn.Linear's: peft must know.
        fan_in_fan_out=_has_conv1d(model),
        # The head of a reward model / critic is new or task-specific: train it in full.
        modules_to_save=["score"] if task == "seq_cls" else None,
    )
    was_training = model.training
    try:
        peft_model = peft.get_peft_model(model, peft_cfg)
    except ValueError as err:  # peft: "Target modules {...} not found in the base model"
        if "not found" not in str(err) and "target" not in str(err).lower():
            raise
        raise ConfigError(f"lora.target_modules: {str(err).splitlines()[0]}") from err
    # The new wrapper and LoRA layers start in train mode whatever `model` was in; keep
    # `model`'s mode so an eval-mode policy stays fit for sampling (no dropout).
    return peft_model.train(was_training)


@contextlib.contextmanager
def adapters_disabled(model: nn.Module) -> Iterator[nn.Module]:
    """Inside the block, `model` computes as its base model: the KL reference, for free.

    `model` is a peft model or holds one (`PolicyWithValueHead`, `ValueModel`); the
    adapters (and a `seq_cls` model's trained score head) are switched off, nothing is
    copied, and they are on again on leaving, also after an exception. Gradients are not
    turned off: wrap the block in `torch.no_grad()` for reference log-probs.
    Raises RlhfkitError for a model without adapters (it has no "base" to fall back to;
    the caller keeps a separate reference model then).
    """
    peft_model = _peft_model(model)
    if peft_model is None:
        raise RlhfkitError(f"{type(model).__name__} has no LoRA adapters to disable "
                           "(without LoRA the reference must be a separate model)")
    with peft_model.disable_adapter():
        yield model


def _merged_copy(peft_model) -> nn.Module:
    """A plain transformers model with W + (alpha/r)·BA written into W, built on a deep copy.

    The copy costs one more model in memory for the time of the save, but the training model
    is never touched: merging in place and unmerging would leave rounding errors in W.
    """
    return copy.deepcopy(peft_model).merge_and_unload()


def save_lora_model(model: nn.Module, folder, how: str) -> Path:
    """Save a LoRA model `how` = "merged" | "adapter" into `folder`; return it as a Path.

    - "merged": a plain Hugging Face folder (config.json + model.safetensors) that
      `AutoModelForCausalLM` / `AutoModelForSequenceClassification.from_pretrained` loads
      without peft; its weights are the base weights plus the adapters' updates.
    - "adapter": peft's `adapter_config.json` + `adapter_model.safetensors` (small); load it
      on its base with `load_lora_adapter`.

    `model` is a peft model, or a `PolicyWithValueHead` / `ValueModel` holding one: their
    own extra files (the value head) are written too. Tokenizers are the caller's to save.
    An adapter folder holds no `config.json`, so a reward model's score statistics
    (`set_score_stats`, stored in its config) survive only a "merged" save.
    """
    if how not in SAVE_MODES:
        raise ConfigError(f"lora.save: got {how!r}, expected one of {', '.join(SAVE_MODES)}")
    peft_model = _peft_model(model)
    if peft_model is None:
        raise RlhfkitError(f"{type(model).__name__} has no LoRA adapters to save")
    folder = Path(folder)
    if how == "adapter":
        # PolicyWithValueHead / ValueModel save through `lm.save_pretrained`, which for a
        # peft model writes the adapter; peft writes safetensors by default.
        model.save_pretrained(folder)
        return folder
    merged = _merged_copy(peft_model)
    if isinstance(model, PolicyWithValueHead):
        PolicyWithValueHead(merged, model.value_head).save_pretrained(folder)
    elif isinstance(model, ValueModel):
        ValueModel(merged).save_pretrained(folder)
    elif model is peft_model:
        merged.save_pretrained(folder)
    else:
        raise RlhfkitError(f"save_lora_model: don't know how to save a {type(model).__name__}")
    return folder


def is_adapter_folder(folder) -> bool:
    """True if `folder` holds a saved LoRA adapter (`adapter_config.json`), not a full model."""
    return (Path(folder) / ADAPTER_CONFIG_FILE).is_file()


def load_lora_adapter(base_model: nn.Module, folder, trainable: bool = True):
    """Attach the adapter saved in `folder` to `base_model`; return the peft model.

    `base_model` must be the model the adapter was trained on (same architecture and
    weights), loaded as the same class (`...ForCausalLM` or `...ForSequenceClassification`).
    `trainable=True` to resume training (adapters get gradients), False for inference.
    """
    peft = _import_peft()
    if not is_adapter_folder(folder):
        raise RlhfkitError(f"no LoRA adapter in '{folder}' (missing {ADAPTER_CONFIG_FILE})")
    if is_lora(base_model):
        raise RlhfkitError(f"{type(base_model).__name__} already has LoRA adapters")
    was_training = base_model.training
    model = peft.PeftModel.from_pretrained(base_model, str(folder), is_trainable=trainable)
    return model.train(was_training)  # as in add_lora: keep the base model's mode
