"""Configuration of the RL stage: `rlhfkit ppo --config FILE key=value ...`.

Batch vocabulary (printed at the start of every run):

    rollout batch  = prompts_per_update × samples_per_prompt   trajectories sampled per update
    mini-batch     = rollout batch / num_mini_batches          rows per optimizer step
    micro-batch    = micro_batch_size                          rows per forward/backward
    gradient accumulation = mini-batch / micro-batch
    optimizer steps per update = num_epochs × num_mini_batches
"""

from __future__ import annotations

from dataclasses import dataclass

from rlhfkit.config import REQUIRED, option
from rlhfkit.errors import ConfigError
from rlhfkit.recipes.options import ComputeConfig, LoraConfig, OptimConfig

ALGOS = ("ppo", "reinforce", "rloo", "grpo")
# The names of rlhfkit.core.KL_ESTIMATORS and rlhfkit.core.REDUCTIONS, spelled out so that
# this module imports no torch (test_ppo_config checks that they agree).
KL_KINDS = ("k1", "k2", "k3")
REDUCTIONS = ("token_mean", "sequence_mean")


@dataclass
class RewardConfig:
    model: str | None = option(None, "reward model folder or hub id (a sequence classifier with "
                                     "one label; its tokenizer may differ from the policy's)")
    functions: list[str] = option([], "reward functions 'module:fn' or 'file.py:fn', called as "
                                      "fn(prompts, responses) -> list[float]")
    weights: list[float] = option([], "weights of [model, *functions] in the summed score "
                                      "(default: 1 each)")
    normalize: bool = option(True, "normalise reward-model scores with the mean/std stored in "
                                   "its config by `rlhfkit reward`")
    clip: float | None = option(None, "clip scores to [-clip, clip] (null: off)", gt=0)
    missing_eos_penalty: float | None = option(1.0, "subtract this from the score of responses "
                                                    "that never emit EOS (null: off)", ge=0)


@dataclass
class ValueConfig:
    kind: str = option("critic", "critic: a separate value model (InstructGPT, N+); head: a value "
                                 "head on the policy's trunk (the lecture; faster)",
                       choices=("critic", "head"))
    model: str | None = option(None, "folder the critic starts from (default: reward.model)")
    lr: float | None = option(None, "learning rate of the value function (default: optim.lr)", gt=0)


@dataclass
class SamplingConfig:
    max_prompt_length: int = option(128, "prompts longer than this many tokens lose their start", gt=0)
    on_long_prompt: str = option("truncate", "what to do with a too-long prompt",
                                 choices=("truncate", "error"))
    max_new_tokens: int = option(32, "maximum response length in tokens", gt=0)
    temperature: float = option(0.7, "sampling temperature (also used in every log-prob)", gt=0)
    top_k: int = option(0, "sample from the k most likely tokens (0: off)", ge=0)
    top_p: float = option(1.0, "nucleus sampling mass (1.0: off)", gt=0, le=1)
    stop_at_eos: bool = option(True, "end a response at the stop token (false: always "
                                     "max_new_tokens tokens)")
    stop_token: str | None = option(None, "the token that ends a response (default: the "
                                          "tokenizer's EOS)")


@dataclass
class BatchConfig:
    prompts_per_update: int = option(16, "prompts sampled per update", gt=0)
    samples_per_prompt: int = option(1, "responses per prompt (the group size G; >= 2 for rloo, grpo)", gt=0)
    num_mini_batches: int = option(1, "optimizer steps per epoch over the rollout batch", gt=0)
    micro_batch_size: int = option(8, "rows per forward/backward pass (gradient accumulation)", gt=0)
    forward_batch_size: int = option(32, "rows per no-grad pass (reference, old log-probs, values)", gt=0)
    num_updates: int = option(100, "rollout-and-train iterations", gt=0)


@dataclass
class LossConfig:
    num_epochs: int | None = option(None, "passes over each rollout batch (default: 4 for ppo, "
                                          "1 for reinforce, rloo, grpo)", gt=0)
    clip_eps: float = option(0.2, "PPO ratio clip epsilon", gt=0)
    value_clip_eps: float | None = option(0.2, "value clip around the old values (null: off)", gt=0)
    vf_coef: float = option(0.1, "weight of the value loss", ge=0)
    ent_coef: float = option(0.0, "weight of the entropy bonus (entropy is logged always)", ge=0)
    gamma: float = option(1.0, "discount factor", ge=0, le=1)
    lam: float = option(0.95, "GAE lambda", ge=0, le=1)
    whiten_advantages: bool | None = option(None, "normalise advantages over the rollout batch "
                                                  "(default: on for ppo, reinforce)")
    reduction: str = option("token_mean", "how per-token losses are averaged", choices=REDUCTIONS)
    baseline: str = option("mean", "REINFORCE baseline: the batch mean, or a learned value",
                           choices=("mean", "value"))
    early_stop_kl: float | None = option(None, "stop the epochs of an update once the approximate "
                                               "KL to the rollout policy exceeds this (null: off)", gt=0)


@dataclass
class KLConfig:
    coef: float = option(0.05, "KL coefficient beta (initial value when adaptive)", ge=0)
    estimator: str | None = option(None, "per-token KL estimator (default: k1 in the reward, "
                                         "k3 as a loss)", choices=KL_KINDS + (None,))
    placement: str = option("auto", "KL penalty in the per-token reward or as a loss term "
                                    "(auto: loss for grpo, reward otherwise)",
                            choices=("auto", "reward", "loss"))
    adaptive: bool = option(False, "adapt beta toward `target` (Ziegler et al. 2019)")
    target: float = option(6.0, "target KL per sequence for the adaptive controller", gt=0)
    horizon: float = option(10000.0, "horizon of the adaptive controller", gt=0)


@dataclass
class LogConfig:
    sample_every: int = option(10, "show and save sample responses every N updates", gt=0)
    num_samples: int = option(4, "samples shown and saved each time", ge=0)
    save_every: int = option(50, "write a checkpoint every N updates (and at the end)", gt=0)
    keep_last: int = option(2, "checkpoints kept", gt=0)
    max_bad_updates: int = option(3, "stop after this many skipped (non-finite) updates in a row", gt=0)
    gold: str | None = option(None, "a function 'module:fn' or 'file.py:fn' scored on every rollout "
                                    "and logged as gold/mean, never trained on (e.g. a held-out "
                                    "judge, to watch for reward hacking)")
    tensorboard: bool = option(False, "mirror metrics to TensorBoard")
    wandb: bool = option(False, "mirror metrics to Weights & Biases")


@dataclass
class PPOConfig:
    policy: str = option(REQUIRED, "the policy to train: folder or hub id of a causal LM (the SFT model)")
    prompts: str = option(REQUIRED, "prompt file (JSONL/JSON/CSV/Parquet with `prompt` or "
                                    "`messages`), datasets folder, or hub id")
    out: str = option(REQUIRED, "run folder: metrics, samples, checkpoints, final models")
    algo: str = option("ppo", "RL algorithm", choices=ALGOS)
    ref: str | None = option(None, "frozen reference model for the KL penalty (default: policy)")
    seed: int = option(0, "random seed")
    device: str = option("auto", "auto, cpu, cuda, cuda:N")
    dtype: str = option("float32", "weights dtype", choices=("float32", "bfloat16", "float16", "auto"))
    trust_remote_code: bool = option(False, "allow models that ship their own Python code")
    resume: bool = option(False, "continue the run in `out` from its last checkpoint")
    overwrite: bool = option(False, "replace a run that already exists in `out`")
    reward: RewardConfig = option(RewardConfig, "where scores come from")
    value: ValueConfig = option(ValueConfig, "the value function (ppo, reinforce with baseline=value)")
    sampling: SamplingConfig = option(SamplingConfig, "response sampling")
    batch: BatchConfig = option(BatchConfig, "batch sizes")
    loss: LossConfig = option(LossConfig, "PPO / policy-gradient loss")
    kl: KLConfig = option(KLConfig, "KL penalty to the reference model")
    optim: OptimConfig = option(OptimConfig, "optimizer")
    log: LogConfig = option(LogConfig, "logging and checkpoints")
    compute: ComputeConfig = option(ComputeConfig, "precision, memory and many processes")
    lora: LoraConfig = option(LoraConfig, "LoRA adapters on the policy and the critic (the "
                                          "reference is then the policy with adapters off)")

    def validate(self) -> None:
        if self.compute.fsdp and self.lora.enabled:
            raise ConfigError("compute.fsdp: not with LoRA (lora.r > 0) yet; LoRA models are "
                              "small enough for data parallelism: set compute.fsdp=false")
        if not self.reward.model and not self.reward.functions:
            raise ConfigError("reward: give reward.model or reward.functions (or both)")
        n_sources = int(bool(self.reward.model)) + len(self.reward.functions)
        if self.reward.weights and len(self.reward.weights) != n_sources:
            raise ConfigError(f"reward.weights: {len(self.reward.weights)} weights for "
                              f"{n_sources} reward sources")
        if self.algo in ("rloo", "grpo") and self.batch.samples_per_prompt < 2:
            raise ConfigError(f"batch.samples_per_prompt: {self.algo} compares samples of the "
                              f"same prompt and needs >= 2, got {self.batch.samples_per_prompt}")
        if (self.uses_value and self.value.kind == "critic"
                and not (self.value.model or self.reward.model)):
            raise ConfigError("value.model: a separate critic starts from a model folder (the "
                              "reward model by default); set value.model or value.kind=head")
        self.batch_plan()  # raises if the sizes do not divide

    # ---- derived settings, computed in one place ------------------------------------------
    @property
    def uses_value(self) -> bool:
        return self.algo == "ppo" or (self.algo == "reinforce" and self.loss.baseline == "value")

    @property
    def num_epochs(self) -> int:
        return self.loss.num_epochs or (4 if self.algo == "ppo" else 1)

    @property
    def whiten(self) -> bool:
        if self.loss.whiten_advantages is not None:
            return self.loss.whiten_advantages
        return self.algo in ("ppo", "reinforce")

    @property
    def kl_in_loss(self) -> bool:
        return self.kl.placement == "loss" or (self.kl.placement == "auto" and self.algo == "grpo")

    @property
    def kl_estimator(self) -> str:
        return self.kl.estimator or ("k3" if self.kl_in_loss else "k1")

    def batch_plan(self, world_size: int = 1) -> dict[str, int]:
        """Every derived batch size; raises ConfigError when they do not divide exactly.
        With W processes each generates rollout/W rows and trains on mini/W rows of every
        mini-batch, micro_batch_size at a time."""
        b = self.batch
        rollout = b.prompts_per_update * b.samples_per_prompt
        if rollout % b.num_mini_batches:
            raise ConfigError(f"batch.num_mini_batches: {b.num_mini_batches} does not divide the "
                              f"rollout batch of {rollout} (prompts_per_update × samples_per_prompt)")
        mini = rollout // b.num_mini_batches
        if mini % world_size:
            raise ConfigError(f"the world size {world_size} (processes) does not divide the "
                              f"mini-batch of {mini} rows (rollout batch {rollout} / "
                              f"batch.num_mini_batches {b.num_mini_batches}); pick sizes that "
                              "divide")
        local_mini = mini // world_size
        if local_mini % b.micro_batch_size:
            per = f"the {local_mini} rows each of {world_size} processes takes from " \
                  if world_size > 1 else ""
            raise ConfigError(f"batch.micro_batch_size: {b.micro_batch_size} does not divide "
                              f"{per}the mini-batch of {mini} rows")
        plan = {"prompts per update": b.prompts_per_update,
                "samples per prompt": b.samples_per_prompt, "rollout batch": rollout,
                "mini-batch": mini}
        if world_size > 1:
            plan.update({"processes": world_size, "mini-batch per process": local_mini})
        return plan | {
            "micro-batch": b.micro_batch_size,
            "gradient accumulation": local_mini // b.micro_batch_size,
            "epochs per update": self.num_epochs,
            "optimizer steps per update": self.num_epochs * b.num_mini_batches,
            "updates": b.num_updates,
            "optimizer steps in all": b.num_updates * self.num_epochs * b.num_mini_batches}
