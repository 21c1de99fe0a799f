"""Configuration of the SFT stage: `rlhfkit sft --config FILE key=value ...`.

Light to import (no torch), so that `rlhfkit sft --help` is instant; the stage is in `sft`.
"""

from __future__ import annotations

from dataclasses import dataclass

from rlhfkit.config import REQUIRED, option
from rlhfkit.errors import ConfigError
from rlhfkit.recipes.options import DTYPES, ComputeConfig, LoraConfig, OptimConfig, TrainLogConfig


@dataclass
class SFTOptimConfig(OptimConfig):
    lr: float = option(2e-5, "peak learning rate (AdamW)", gt=0)
    warmup_steps: int = option(10, "optimizer steps of linear warmup from 0", ge=0)


@dataclass
class SFTConfig:
    model: str = option(REQUIRED, "the causal LM to fine-tune: folder or hub id")
    data: str = option(REQUIRED, "demonstrations (JSONL/JSON/CSV/Parquet with `messages`, "
                                 "`prompt` + `completion`, or `text`), datasets folder, or hub id")
    out: str = option(REQUIRED, "run folder: metrics, checkpoints, the final model in OUT/model")
    eval_data: str | None = option(None, "held-out demonstrations (default: hold out "
                                          "eval_fraction of `data`)")
    eval_fraction: float = option(0.05, "share of `data` held out for evaluation when eval_data "
                                        "is not given (0: no evaluation)", ge=0, lt=1)
    split: str = option("train", "split of `data` (datasets folders and hub ids)")
    eval_split: str = option("test", "split of `eval_data` (datasets folders and hub ids)")
    max_length: int = option(512, "tokens per example; longer ones lose the start of the prompt",
                             gt=1)
    batch_size: int = option(8, "examples per forward/backward pass (micro-batch)", gt=0)
    grad_accum: int = option(1, "micro-batches per optimizer step, over all processes "
                                "(gradient accumulation; each of W processes runs "
                                "grad_accum / W)", gt=0)
    packing: bool = option(True, "put several short examples in one row as long as the "
                                 "micro-batch's longest, each attending only to itself "
                                 "(position ids restart per example): the same loss with less "
                                 "padding; falls back to padding for a model whose attention "
                                 "cannot keep packed examples apart")
    epochs: int = option(1, "passes over the training data", gt=0)
    max_steps: int | None = option(None, "optimizer steps in all; overrides epochs", gt=0)
    stop_after: int | None = option(None, "end this session once the run has done this "
                                          "many optimizer steps in all (a checkpoint is written; "
                                          "resume=true continues the same schedule)", gt=0)
    dropout: bool = option(True, "keep the model's dropout while training (false: switch it off)")
    optim: SFTOptimConfig = option(SFTOptimConfig, "optimizer")
    seed: int = option(0, "random seed (held-out split, data order, dropout)")
    device: str = option("auto", "auto, cpu, cuda, cuda:N")
    dtype: str = option("float32", "weights dtype", choices=DTYPES)
    trust_remote_code: bool = option(False, "allow models that ship their own Python code")
    resume: bool = option(False, "continue the run in `out` from its last checkpoint")
    overwrite: bool = option(False, "replace a run that already exists in `out`")
    log: TrainLogConfig = option(TrainLogConfig, "evaluation, checkpoints and metric mirrors")
    compute: ComputeConfig = option(ComputeConfig, "precision, memory and many processes")
    lora: LoraConfig = option(LoraConfig, "train LoRA adapters instead of every weight")

    def validate(self) -> None:
        if self.compute.fsdp:
            raise ConfigError("compute.fsdp: sharded training is available in the RL stage "
                              "(rlhfkit ppo); for sft use data parallelism, LoRA or "
                              "compute.gradient_checkpointing")
