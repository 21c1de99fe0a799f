"""Pieces every recipe shares: optimizer and schedule, device, seeds, the run folder, and
the guard rails (non-finite values, the model's context, running out of memory)."""

from __future__ import annotations

import logging
import math
import random
import shutil
import sys
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from rlhfkit import distributed
from rlhfkit.config import config_to_dict, save_config
from rlhfkit.errors import ConfigError, RlhfkitError
from rlhfkit.recipes.options import ComputeConfig, OptimConfig

log = logging.getLogger("rlhfkit")


def use_bf16(compute: ComputeConfig, device: torch.device) -> bool:
    """Whether to autocast to bf16: asked for, or `auto` on a GPU with bf16 support."""
    if compute.precision == "auto":
        return device.type == "cuda" and torch.cuda.is_bf16_supported()
    return compute.precision == "bf16"


def autocast(enabled: bool, device: torch.device):
    """bf16 autocast on `device` (matmuls in bf16: AMX on CPU, tensor cores on GPU), or a
    no-op. Parameters stay fp32; rlhfkit's loss math casts logits and values to fp32."""
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=enabled)


def enable_gradient_checkpointing(model) -> None:
    """Turn on transformers' activation checkpointing. It only acts in train mode, so the
    RL stage runs its training passes in train mode (dropout is off there anyway)."""
    target = getattr(model, "lm", None) or getattr(model, "model", None) or model
    if not hasattr(target, "gradient_checkpointing_enable"):
        raise ConfigError(f"compute.gradient_checkpointing: {type(target).__name__} does not "
                          "support it")
    target.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def start_world(cfg) -> tuple[distributed.World, torch.device]:
    """Join the process group when launched by torchrun / accelerate launch, and pick this
    process's device (cuda:LOCAL_RANK, or the configured device)."""
    if cfg.device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device: '{cfg.device}' asked for, but no CUDA device is available")
    return distributed.init(cfg.device, cfg.compute.timeout)


def make_optimizer(param_groups, cfg: OptimConfig) -> torch.optim.AdamW:
    """AdamW over `param_groups` (a list of dicts with 'params' and optionally 'lr')."""
    # fused: one kernel over all parameters instead of a dozen ops per tensor, the same
    # update (4-6x faster a step on CPU: 16 steps an update add up on small models). The
    # fused kernel cannot mix sharded (FSDP) and whole tensors, so sharded runs loop.
    sharded = any(distributed.is_sharded(p) for g in param_groups for p in g["params"])
    return torch.optim.AdamW(param_groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2),
                             eps=cfg.eps, weight_decay=cfg.weight_decay, fused=not sharded)


class WarmupDecay:
    """The multiplier of the learning rate at optimizer step `s`: linear warmup over
    `warmup` steps, then constant, linear to 0 or cosine to 0 at `total` steps."""

    def __init__(self, schedule: str, warmup: int, total: int):
        self.schedule, self.warmup, self.total = schedule, warmup, max(total, 1)

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / (self.warmup + 1)
        progress = min((step - self.warmup) / max(self.total - self.warmup, 1), 1.0)
        if self.schedule == "linear":
            return 1.0 - progress
        if self.schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return 1.0


def make_scheduler(optimizer, cfg: OptimConfig, total_steps: int):
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, WarmupDecay(cfg.schedule, cfg.warmup_steps, total_steps))


def pick_device(name: str) -> torch.device:
    """"auto" picks CUDA when available, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device: '{name}' asked for, but no CUDA device is available")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def prepare_run_dir(out: str, overwrite: bool, resume: bool, cfg) -> Path:
    """Create the run folder and save the resolved config in it. A folder that already
    holds a run is refused unless `overwrite` (start again) or `resume` (continue it).
    With many processes rank 0 prepares it while the others wait, and an error reaches
    every rank."""
    return distributed.on_main(_prepare_run_dir, Path(out), overwrite, resume, cfg)


def _prepare_run_dir(run_dir: Path, overwrite: bool, resume: bool, cfg) -> Path:
    holds_run = (run_dir / "config.yaml").exists()
    if resume:
        if not holds_run:
            raise RlhfkitError(f"cannot resume: '{run_dir}' holds no run (no config.yaml)")
        return run_dir
    # A run killed while saving its config leaves only that temporary file: no run yet.
    debris = lambda p: p.name.startswith(".config.yaml.") and p.name.endswith(".tmp")
    if holds_run or (run_dir.exists() and not all(map(debris, run_dir.iterdir()))):
        if not overwrite:
            raise RlhfkitError(f"'{run_dir}' already holds files; pass overwrite=true to replace "
                               "them, or resume=true to continue that run")
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir / "config.yaml")
    return run_dir


def setup_logging(run_dir: Path | None = None) -> None:
    """Log to the console (INFO) and, with a run folder, to RUN_DIR/log.txt. With many
    processes only rank 0 writes the file; the others print warnings, marked with their rank."""
    world = distributed.world()
    root = logging.getLogger("rlhfkit")
    root.setLevel(logging.DEBUG)  # DEBUG (e.g. the full config) goes to the file only
    root.handlers.clear()
    console = logging.StreamHandler(sys.stderr)
    console.setLevel(logging.INFO if world.is_main else logging.WARNING)
    prefix = f"[rank {world.rank}] " if world.distributed else ""
    console.setFormatter(logging.Formatter(prefix + "%(message)s"))
    root.addHandler(console)
    if run_dir is not None and world.is_main:
        file = logging.FileHandler(run_dir / "log.txt")
        file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        root.addHandler(file)
    root.propagate = False


def describe_config(cfg) -> str:
    """The resolved config as indented `key: value` lines, for the start of a run."""
    lines = []

    def walk(node: dict, prefix: str) -> None:
        for key, value in node.items():
            if isinstance(value, dict):
                walk(value, f"{prefix}{key}.")
            else:
                lines.append(f"  {prefix}{key}: {value}")
    walk(config_to_dict(cfg), "")
    return "\n".join(lines)


# ---------------------------------------------------------------------------- guard rails

def model_context(name_or_path, trust_remote_code: bool = False) -> int | None:
    """The most tokens the model can attend to (n_positions, max_position_embeddings), read
    from its config alone; None when the config does not say."""
    from transformers import AutoConfig

    from rlhfkit.models.loading import from_pretrained
    config = from_pretrained(AutoConfig, name_or_path, trust_remote_code=trust_remote_code)
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    for name in ("n_positions", "max_position_embeddings", "n_ctx", "seq_length"):
        value = getattr(text, name, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def fit_context(length: int, context: int | None, option_name: str, model: str) -> int:
    """`length`, or the model's context when `length` is longer: learned position
    embeddings (GPT-2) have no row past the context, so a longer sequence would crash."""
    if context is None or length <= context:
        return length
    log.warning("%s=%d is longer than the context of '%s' (%d tokens): using %d", option_name,
                length, model, context, context)
    return context


def clip_grad_norm(parameters, max_norm: float | None) -> torch.Tensor:
    """The total gradient norm, clipped to `max_norm` (None: not clipped), as
    torch.nn.utils.clip_grad_norm_ does — except that a non-finite norm leaves every
    gradient as it was, instead of multiplying them all by NaN, so the parameter at fault
    can still be named (`nonfinite_grad`)."""
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return torch.zeros(())
    device = grads[0].device

    grads = [g.detach() for g in grads]
    sharded = any(distributed.is_sharded(g) for g in grads)
    if sharded:  # a sharded (FSDP) gradient's norm is reduced over its shards
        norms = [torch.linalg.vector_norm(g, 2.0) for g in grads]
        norms = [(n.full_tensor() if distributed.is_sharded(n) else n).to(device) for n in norms]
    else:  # one kernel over all gradients (one call per tensor was 2 % of a tiny model's step)
        norms = torch._foreach_norm(grads, 2.0)
    total = torch.linalg.vector_norm(torch.stack(norms), 2.0)
    if max_norm is not None and bool(torch.isfinite(total)):
        coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)
        if sharded:
            for g in grads:
                g.mul_(float(coef) if distributed.is_sharded(g) else coef.to(g.device))
        else:
            torch._foreach_mul_(grads, coef)
    return total


def nonfinite_grad(named_parameters) -> str | None:
    """Name of the first parameter whose gradient holds a NaN or an infinity, else None."""
    for name, param in named_parameters:
        if param.grad is not None and not bool(torch.isfinite(param.grad).all()):
            return name
    return None


def nonfinite_parameter(model: torch.nn.Module) -> str | None:
    """Name of the first parameter holding a NaN or an infinity, else None."""
    for name, param in model.named_parameters():
        if not bool(torch.isfinite(param).all()):
            return name
    return None


def is_out_of_memory(err: BaseException) -> bool:
    """CUDA's OutOfMemoryError, or an allocator's RuntimeError (CPU, cuBLAS, MPS)."""
    if isinstance(err, torch.OutOfMemoryError):
        return True
    text = str(err)
    return isinstance(err, RuntimeError) and ("out of memory" in text
                                              or "can't allocate memory" in text)


@contextmanager
def out_of_memory_hint(doing: str, lower: str):
    """Running out of memory inside the block becomes one line saying what was running and
    which batch settings to lower, instead of a traceback from deep inside torch."""
    try:
        yield
    except RuntimeError as err:  # torch.OutOfMemoryError is a RuntimeError
        if not is_out_of_memory(err):
            raise
        raise RlhfkitError(f"out of memory while {doing}: lower {lower}") from None
