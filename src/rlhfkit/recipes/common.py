"""Pieces every recipe shares: optimizer and schedule, device, seeds, the run folder."""

from __future__ import annotations

import logging
import math
import random
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from rlhfkit.config import config_to_dict, option, save_config
from rlhfkit.errors import ConfigError, RlhfkitError

log = logging.getLogger("rlhfkit")


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


def make_optimizer(param_groups, cfg: OptimConfig) -> torch.optim.AdamW:
    """AdamW over `param_groups` (a list of dicts with 'params' and optionally 'lr')."""
    return torch.optim.AdamW(param_groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2),
                             eps=cfg.eps, weight_decay=cfg.weight_decay)


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
    holds a run is refused unless `overwrite` (start again) or `resume` (continue it)."""
    run_dir = Path(out)
    holds_run = (run_dir / "config.yaml").exists()
    if resume:
        if not holds_run:
            raise RlhfkitError(f"cannot resume: '{run_dir}' holds no run (no config.yaml)")
        return run_dir
    if holds_run or (run_dir.exists() and any(run_dir.iterdir())):
        if not overwrite:
            raise RlhfkitError(f"'{run_dir}' already holds files; pass overwrite=true to replace "
                               "them, or resume=true to continue that run")
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir / "config.yaml")
    return run_dir


def setup_logging(run_dir: Path | None = None) -> None:
    """Log to the console (INFO) and, with a run folder, to RUN_DIR/log.txt."""
    root = logging.getLogger("rlhfkit")
    root.setLevel(logging.DEBUG)  # DEBUG (e.g. the full config) goes to the file only
    root.handlers.clear()
    console = logging.StreamHandler(sys.stderr)
    console.setLevel(logging.INFO)
    console.setFormatter(logging.Formatter("%(message)s"))
    root.addHandler(console)
    if run_dir is not None:
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
