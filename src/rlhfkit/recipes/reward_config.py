"""Configuration of the reward-model stage: `rlhfkit reward --config FILE key=value ...`.

Light to import (no torch), so that `rlhfkit reward --help` is instant; the stage is in
`reward_model`.
"""

from __future__ import annotations

from dataclasses import dataclass

from rlhfkit.config import REQUIRED, option
from rlhfkit.errors import ConfigError
from rlhfkit.recipes.options import DTYPES, ComputeConfig, LoraConfig, OptimConfig, TrainLogConfig


@dataclass
class RewardOptimConfig(OptimConfig):
    lr: float = option(1e-5, "peak learning rate (AdamW)", gt=0)


@dataclass
class RewardModelConfig:
    model: str = option(REQUIRED, "the backbone: a causal LM folder or hub id (usually the SFT "
                                  "model, OUT/model of `rlhfkit sft`)")
    data: str = option(REQUIRED, "preference pairs (JSONL/JSON/CSV/Parquet with prompt + chosen + "
                                 "rejected [+ margin], chosen + rejected texts or chats), "
                                 "datasets folder, or hub id")
    out: str = option(REQUIRED, "run folder: metrics, checkpoints, the reward model in OUT/model")
    eval_data: str | None = option(None, "held-out pairs (default: hold out eval_fraction of "
                                          "`data`)")
    eval_fraction: float = option(0.05, "share of `data` held out for evaluation when eval_data "
                                        "is not given (0: no evaluation)", ge=0, lt=1)
    split: str = option("train", "split of `data` (datasets folders and hub ids)")
    eval_split: str = option("test", "split of `eval_data` (datasets folders and hub ids)")
    max_length: int = option(512, "tokens per prompt + response; longer pairs lose the start "
                                  "of the prompt", gt=1)
    batch_size: int = option(8, "pairs per forward/backward pass (2 × rows: chosen and rejected)",
                             gt=0)
    grad_accum: int = option(1, "micro-batches per optimizer step, over all processes "
                                "(gradient accumulation; each of W processes runs "
                                "grad_accum / W)", gt=0)
    epochs: int = option(1, "passes over the training pairs", gt=0)
    packing: bool = option(True, "put several short rows of a micro-batch in one row as "
                                 "long as its longest, each attending only to itself "
                                 "(position ids restart per row): the same scores with less "
                                 "padding; falls back to padding for a model whose attention "
                                 "cannot keep packed rows apart")
    group_shared_responses: bool = option(True, "shuffle groups of pairs that share a response, "
                                                "not single pairs, so a micro-batch scores each "
                                                "response once (K responses ranked for a prompt: "
                                                "K rows instead of K(K-1), as InstructGPT)")
    max_steps: int | None = option(None, "optimizer steps in all; overrides epochs", gt=0)
    stop_after: int | None = option(None, "end this session once the run has done this "
                                          "many optimizer steps in all (a checkpoint is written; "
                                          "resume=true continues the same schedule)", gt=0)
    center_coef: float = option(0.0, "weight of the reward-centring term mean((r_c + r_r)²)",
                                ge=0)
    stats_pairs: int | None = option(None, "training pairs scored at the end for the score "
                                           "mean/std PPO normalises with (null: all)", gt=0)
    dropout: bool = option(False, "keep the backbone's dropout while training")
    pooling: str = option("last", "how a sequence's score is read: last (the head at the last "
                                  "token, as transformers' classifiers) or sum (the head summed "
                                  "over every token: a reward that adds up over the text); "
                                  "saved in the model's config", choices=("last", "sum"))
    optim: RewardOptimConfig = option(RewardOptimConfig, "optimizer")
    seed: int = option(0, "random seed (head init, held-out split, data order)")
    device: str = option("auto", "auto, cpu, cuda, cuda:N")
    dtype: str = option("float32", "weights dtype", choices=DTYPES)
    trust_remote_code: bool = option(False, "allow models that ship their own Python code")
    resume: bool = option(False, "continue the run in `out` from its last checkpoint")
    overwrite: bool = option(False, "replace a run that already exists in `out`")
    log: TrainLogConfig = option(TrainLogConfig, "evaluation, checkpoints and metric mirrors")
    compute: ComputeConfig = option(ComputeConfig, "precision, memory and many processes")
    lora: LoraConfig = option(LoraConfig, "train LoRA adapters (and the score head) instead of "
                                          "every weight; the reward model is saved merged")

    def validate(self) -> None:
        if self.compute.fsdp:
            raise ConfigError("compute.fsdp: sharded training is available in the RL stage "
                              "(rlhfkit ppo); for the reward model use data parallelism, "
                              "LoRA or compute.gradient_checkpointing")
        if self.lora.enabled and self.lora.save != "merged":
            raise ConfigError("lora.save: a reward model is saved merged (its score mean and "
                              "std live in its config, which an adapter folder has not)")
