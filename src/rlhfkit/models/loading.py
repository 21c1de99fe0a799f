"""Load any Hugging Face causal LM and its tokenizer, ready for RLHF.

Two fixes every RLHF stage needs are made here, once:
- a pad token distinct from EOS (if pad == EOS, masking padding also hides the EOS the
  model must learn to emit, and it never learns to stop; N detail, trl#734);
- left padding, so a batch of prompts ends at the same column and generation appends
  after the last real token.

`name_or_path` is a local folder or a Hub id; a Hub id is passed straight to
`from_pretrained`, so it works for online users and needs nothing special here.
"""

from __future__ import annotations

import pickle

from pathlib import Path

import torch
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer, PretrainedConfig

from rlhfkit.errors import ConfigError, RlhfkitError
from rlhfkit.models.trunk import fp32_cpu_attention, fuse_activations

PAD_TOKEN = "<|pad|>"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
DTYPES = {"auto": "auto", "float32": torch.float32, "bfloat16": torch.bfloat16,
          "float16": torch.float16}


def resolve_path(name_or_path) -> str:
    """Return `name_or_path` as a string; raise RlhfkitError if it is a missing local folder.

    Anything that exists, or that looks like a path (absolute, `./`, `~`, more than one
    `/`), is a local folder; `org/name` that does not exist locally is a Hub id.
    """
    text = str(name_or_path)
    path = Path(text).expanduser()
    if path.exists():
        return str(path)
    looks_local = (path.is_absolute() or text.startswith((".", "~")) or text.count("/") != 1
                   or "\\" in text or isinstance(name_or_path, Path))
    if looks_local:
        raise RlhfkitError(f"model folder not found: '{text}'")
    return text


def torch_dtype(dtype) -> torch.dtype | str:
    """Map "auto" | "float32" | "bfloat16" | "float16" (or a torch.dtype) for from_pretrained."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ConfigError(f"dtype: got {dtype!r}, expected one of {', '.join(DTYPES)}")
    return DTYPES[dtype]


def from_pretrained(auto_class, name_or_path, **kwargs):
    """`auto_class.from_pretrained`; a missing or unreachable model is a one-line RlhfkitError."""
    name = resolve_path(name_or_path)
    try:
        model = auto_class.from_pretrained(name, **kwargs)
    except OSError as err:  # transformers raises OSError for a missing repo, file or network
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise RlhfkitError(f"could not load '{name}': {first_line}") from err
    except pickle.UnpicklingError as err:  # torch.load(weights_only=True) refused a pickle
        raise RlhfkitError(f"refused to load '{name}': its weights file holds Python objects, "
                           "not plain tensors (nothing was run); use a safetensors file") from err
    except ValueError as err:
        if "trust_remote_code" not in str(err):
            raise
        raise RlhfkitError(f"'{name}' ships its own Python code, which runs only with "
                           "trust_remote_code=true: pass it only if you trust that code") from err
    if not isinstance(model, torch.nn.Module):  # a tokenizer
        return model
    # GPT-2's gelu_new as one fused kernel (same function, ~2.5x faster), and attention in
    # float32 under bf16 autocast on CPU (3-4x faster there): models/trunk.py
    return fp32_cpu_attention(fuse_activations(model))


def load_tokenizer(name_or_path, trust_remote_code: bool = False):
    """Load a tokenizer with a pad token distinct from EOS and left padding.

    A tokenizer with no pad token, or with pad == EOS (GPT-2, Llama), gets a new special
    token `<|pad|>`; the model's embedding must then grow (`load_causal_lm` does it).
    """
    folder = Path(resolve_path(name_or_path))
    # Without this check transformers 5 silently builds an empty GPT-2 tokenizer (1 token).
    if folder.is_dir() and not any((folder / f).is_file() for f in TOKENIZER_FILES):
        raise RlhfkitError(f"no tokenizer files in '{name_or_path}' "
                           "(save the tokenizer next to the model)")
    tokenizer = from_pretrained(AutoTokenizer, name_or_path, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token is None or tokenizer.pad_token_id == tokenizer.eos_token_id:
        tokenizer.add_special_tokens({"pad_token": PAD_TOKEN})
    tokenizer.padding_side = "left"
    return tokenizer


def fit_to_tokenizer(model, tokenizer) -> None:
    """Grow the embedding if the tokenizer has ids the model lacks; set the pad id everywhere.

    Models whose embedding is already larger than the tokenizer (vocab padded to a multiple
    of 64, as Qwen or Pythia) are left as they are.
    """
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(len(tokenizer))
    model.config.pad_token_id = tokenizer.pad_token_id
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id


def load_causal_lm(name_or_path, tokenizer, dtype="auto", trust_remote_code: bool = False):
    """Load an `AutoModelForCausalLM` that agrees with `tokenizer` (embedding size, pad id).

    `tokenizer` should come from `load_tokenizer`. Dropout is left as saved: RL code calls
    `disable_dropout`, SFT may keep it.
    """
    model = from_pretrained(AutoModelForCausalLM, name_or_path, dtype=torch_dtype(dtype),
                            trust_remote_code=trust_remote_code)
    fit_to_tokenizer(model, tokenizer)
    return model


def load_policy(name_or_path, dtype="auto", trust_remote_code: bool = False):
    """Load a causal LM and its tokenizer from one folder or Hub id: `(model, tokenizer)`."""
    tokenizer = load_tokenizer(name_or_path, trust_remote_code=trust_remote_code)
    model = load_causal_lm(name_or_path, tokenizer, dtype=dtype,
                           trust_remote_code=trust_remote_code)
    return model, tokenizer


def _is_dropout_name(name: str) -> bool:
    return "dropout" in name or name.endswith("pdrop")


def _zero_config_dropout(config: PretrainedConfig) -> None:
    for name, value in list(vars(config).items()):
        if isinstance(value, PretrainedConfig):  # nested text/vision configs
            _zero_config_dropout(value)
        elif isinstance(value, float) and _is_dropout_name(name):
            setattr(config, name, 0.0)


def disable_dropout(model: nn.Module) -> nn.Module:
    """Set every dropout probability in `model` to 0, so train-mode passes are deterministic.

    With dropout on, log-probabilities recomputed during the PPO update differ from the
    rollout's and the ratio is not 1 before any update (N+ detail). Covers `nn.Dropout`
    modules, float attributes that attention code reads directly (Llama's
    `attention_dropout`) and the config fields (so a saved model stays dropout-free).
    """
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
        for name, value in list(vars(module).items()):
            if isinstance(value, float) and _is_dropout_name(name):
                setattr(module, name, 0.0)
    if isinstance(getattr(model, "config", None), PretrainedConfig):
        _zero_config_dropout(model.config)
    return model
