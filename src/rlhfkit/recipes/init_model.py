"""`rlhfkit init-model`: a random tiny GPT-2 or Llama and a tokenizer trained on a text file.

    rlhfkit init-model arch=gpt2 size=tiny corpus=corpus.txt out=models/tiny

For tests, the demo and trying the pipeline on a laptop without downloading anything. The
folder is an ordinary Hugging Face folder (`AutoModelForCausalLM.from_pretrained` loads it),
so it can be the `model=` of `rlhfkit sft`. See `rlhfkit.models.tiny` for the sizes.

The config lives here without importing torch, so `rlhfkit init-model --help` is instant;
the choices below are checked against `rlhfkit.models.tiny` by a unit test.
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path

from rlhfkit.config import REQUIRED, option
from rlhfkit.errors import DataError, RlhfkitError

ARCH_CHOICES = ("gpt2", "llama")
SIZE_CHOICES = ("tiny", "small", "base")


@dataclass
class InitModelConfig:
    corpus: str = option(REQUIRED, "text file the tokenizer is trained on (one document a line)")
    out: str = option(REQUIRED, "folder to write the model and tokenizer to")
    arch: str = option("gpt2", "architecture", choices=ARCH_CHOICES)
    size: str = option("tiny", "model size, smallest first (hidden size, layers and context "
                               "in rlhfkit.models.tiny.SIZES)", choices=SIZE_CHOICES)
    vocab_size: int = option(1000, "largest tokenizer vocabulary (256 bytes and 3 special tokens "
                                   "at least; a small corpus may give fewer)", ge=259)
    seed: int = option(0, "seed of the random weights")
    overwrite: bool = option(False, "replace the files of a folder that is not empty")


def main(cfg: InitModelConfig) -> int:
    """Build the model; print one line saying what was written where."""
    corpus, out = Path(cfg.corpus), Path(cfg.out)
    if not corpus.is_file():
        raise DataError(corpus, None, None, "no such file")
    if not corpus.read_text(encoding="utf-8", errors="replace").strip():
        raise DataError(corpus, None, None, "the corpus is empty; the tokenizer needs text")
    if out.exists() and not out.is_dir():
        raise RlhfkitError(f"out: '{out}' is a file, not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not cfg.overwrite:
            raise RlhfkitError(f"'{out}' already holds files; pass overwrite=true to replace them")
        shutil.rmtree(out)

    from rlhfkit.models.tiny import build_tiny_model  # torch and transformers: only now
    build_tiny_model(cfg.arch, cfg.size, corpus, out, seed=cfg.seed, vocab_size=cfg.vocab_size)

    # Parameters as stored (a tied input/output embedding counts once).
    from safetensors import safe_open
    with safe_open(str(out / "model.safetensors"), framework="pt") as f:
        n_params = sum(math.prod(f.get_slice(name).get_shape()) for name in f.keys())
    vocab = json.loads((out / "config.json").read_text())["vocab_size"]
    print(f"{cfg.arch} {cfg.size}: {n_params:,} parameters, vocabulary {vocab}, written to {out}")
    return 0
