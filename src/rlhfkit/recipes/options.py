"""Config sections the stages share: optimizer, compute, checkpoints and evaluation, LoRA.

They live here, apart from the code that uses them, because this module imports no torch:
`rlhfkit <stage> --help` builds its option list from the config classes, and should print
in a fraction of a second, not after the seconds torch and transformers take to import.
Keep every config module (this one, `sft_config`, `reward_config`, `ppo_config`) that light;
`tests/unit/test_cli.py` checks that each stage's `--help` imports neither.
"""

from __future__ import annotations

from dataclasses import dataclass

from rlhfkit.config import option

DTYPES = ("float32", "bfloat16", "float16", "auto")  # the `dtype` option of sft and reward
SAVE_MODES = ("merged", "adapter")  # how a LoRA model is saved (`lora.save`)


@dataclass
class OptimConfig:
    lr: float = option(3e-6, "peak learning rate (AdamW)", gt=0)
    weight_decay: float = option(0.0, "AdamW weight decay", ge=0)
    beta1: float = option(0.9, "AdamW beta1", ge=0, lt=1)
    beta2: float = option(0.999, "AdamW beta2", ge=0, lt=1)
    eps: float = option(1e-5, "AdamW epsilon (1e-5 as in the N implementation details, #17)", gt=0)
    max_grad_norm: float | None = option(1.0, "clip the gradient norm to this (null: off)", gt=0)
    schedule: str = option("linear", "learning-rate decay after warmup",
                           choices=("constant", "linear", "cosine"))
    warmup_steps: int = option(0, "optimizer steps of linear warmup from 0", ge=0)


@dataclass
class ComputeConfig:
    precision: str = option("auto", "fp32, or bf16 autocast (weights, optimizer state and loss "
                                    "math stay fp32); auto: bf16 on a GPU that supports it, "
                                    "fp32 on CPU", choices=("auto", "fp32", "bf16"))
    gradient_checkpointing: bool = option(False, "recompute activations in the backward pass "
                                                 "(less memory, ~30% more time)")
    fsdp: bool = option(False, "shard parameters, gradients and optimizer state over the "
                               "processes (FSDP2), for models that do not fit one device "
                               "(rl stage; not with LoRA)")
    timeout: float = option(600.0, "seconds a process waits for the others (rendezvous, "
                                   "collectives) before it fails instead of hanging", gt=0)


@dataclass
class TrainLogConfig:
    eval_every: int = option(100, "evaluate on the held-out set every N optimizer steps "
                                  "(also before training and at the end)", gt=0)
    save_every: int = option(500, "write a checkpoint every N optimizer steps (and at the end)",
                             gt=0)
    keep_last: int = option(2, "checkpoints kept", gt=0)
    max_bad_steps: int = option(3, "stop after this many skipped (non-finite loss or gradient) "
                                   "optimizer steps in a row", gt=0)
    tensorboard: bool = option(False, "mirror metrics to TensorBoard")
    wandb: bool = option(False, "mirror metrics to Weights & Biases")


@dataclass
class LoraConfig:
    """The `lora` section of a config: LoRA on or off, and its shape."""

    r: int = option(0, "LoRA rank; 0: train every weight (no LoRA)", ge=0)
    alpha: float = option(16.0, "LoRA scale numerator: the update B·A is multiplied by alpha / r",
                          gt=0)
    dropout: float = option(0.0, "dropout on the LoRA input (SFT and reward training only: RL "
                                 "turns every dropout off, this one too)", ge=0, lt=1)
    target_modules: list[str] = option([], "names of the layers that get adapters, e.g. "
                                           "[q_proj, v_proj] (default: every linear layer of "
                                           "the transformer, not the output head)")
    save: str = option("merged", "how the final model is saved: merged (a plain Hugging Face "
                                 "folder) or adapter (adapter weights only, base needed to load)",
                       choices=SAVE_MODES)

    @property
    def enabled(self) -> bool:
        return self.r > 0
