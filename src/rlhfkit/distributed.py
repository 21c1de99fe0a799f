"""One init path for many processes: `torchrun` and `accelerate launch` both set RANK,
WORLD_SIZE and LOCAL_RANK (and MASTER_ADDR/MASTER_PORT); rlhfkit reads them here.

Data parallelism in rlhfkit, the same for every recipe:

    every rank        holds the same global batch plan (which examples / prompts a step uses)
    rank r            computes its share of the rows (SFT, reward model: micro-batches;
                      PPO: generation, scoring and the no-grad passes of its prompts)
    PPO only          the rollouts are all-gathered (token ids and per-token floats, small),
                      so advantages, whitening and metrics are computed over the global batch
                      by every rank, identically
    loss              each rank's loss is divided by the *global* normaliser (token count
                      or row count of the whole mini-batch), so the gradients of the ranks
                      add up — an all-reduce SUM — to the full-batch gradient
    writes            only rank 0 writes logs, metrics, reports and checkpoints

A single process is the world of size 1: the same code runs, every collective a no-op.
"""

from __future__ import annotations

import datetime
import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from rlhfkit.errors import ConfigError, RlhfkitError

log = logging.getLogger("rlhfkit")


@dataclass(frozen=True)
class World:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def env_world() -> World:
    """The process's place as torchrun / accelerate launch describe it (1 process without)."""
    try:
        return World(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                     int(os.environ.get("LOCAL_RANK", 0)))
    except ValueError as err:
        raise ConfigError(f"RANK, WORLD_SIZE and LOCAL_RANK must be integers: {err}") from None


def init(device: str = "auto", timeout_s: float = 600.0) -> tuple[World, torch.device]:
    """Join the process group (when WORLD_SIZE > 1) and pick this rank's device: backend
    nccl on CUDA (cuda:LOCAL_RANK), gloo on CPU. A collective that waits longer than
    `timeout_s` (a rank died, or never arrived) raises on every rank instead of hanging."""
    world = env_world()
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and world.distributed:
        device = f"cuda:{world.local_rank}"
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world.distributed and not dist.is_initialized():
        missing = [k for k in ("MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
        if missing:
            raise ConfigError(f"WORLD_SIZE={world.world_size} but {' and '.join(missing)} not "
                              "set: launch with `torchrun --nproc_per_node N ...` or "
                              "`accelerate launch ...`, which set them")
        backend = "nccl" if dev.type == "cuda" else "gloo"
        try:
            dist.init_process_group(backend, rank=world.rank, world_size=world.world_size,
                                    timeout=datetime.timedelta(seconds=timeout_s))
        except Exception as err:  # noqa: BLE001 - a rendezvous failure has many types
            raise RlhfkitError(
                f"rank {world.rank}: could not join the {world.world_size}-process group at "
                f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']} within {timeout_s:g} s "
                f"({type(err).__name__}: {err}); check that every rank was started with the "
                "same MASTER_ADDR/MASTER_PORT and can reach it") from None
    return world, dev


def world() -> World:
    """The current world: from the process group when one is joined, else a single process."""
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size(), env_world().local_rank)
    return World()


def shutdown(wait_for_all: bool = False) -> None:
    """Leave the process group (at the end of a command: torch warns about one left open).

    `wait_for_all` meets every rank at a barrier first, so that no rank tears its gloo
    threads down while another still has work in flight with it (a rank that left first
    has aborted a peer at exit with "terminate called without an active exception"). Only
    on success: after an error the other ranks may never arrive."""
    if dist.is_available() and dist.is_initialized():
        if wait_for_all:
            dist.barrier()
        dist.destroy_process_group()


def run_then_shutdown(train, cfg) -> int:
    """A command's entry point: `train(cfg)`, then leave the process group (after a barrier
    when training returned, at once when it raised). Returns 0, the exit status."""
    finished = False
    try:
        train(cfg)
        finished = True
    finally:
        shutdown(wait_for_all=finished)
    return 0


def shard(n: int, w: World | None = None) -> slice:
    """Rows [rank·n/W, (rank+1)·n/W) of n global rows; n must divide by the world size."""
    w = w or world()
    if n % w.world_size:
        raise ConfigError(f"{n} rows do not divide over {w.world_size} processes")
    size = n // w.world_size
    return slice(w.rank * size, (w.rank + 1) * size)


def all_gather_rows(x: torch.Tensor, pad_value=0, pad_left: bool = False) -> torch.Tensor:
    """Concatenate every rank's x along dim 0, rank order. Shapes (B_r, L_r, ...) with equal
    B_r; dim 1 (if any) may differ between ranks and is padded to the longest with
    `pad_value` — on the left for left-padded prompts, else on the right."""
    if not world().distributed:
        return x
    if x.dim() >= 2:
        length = torch.tensor([x.shape[1]], device=x.device)
        dist.all_reduce(length, op=dist.ReduceOp.MAX)
        extra = int(length) - x.shape[1]
        if extra:
            pad = x.new_full((x.shape[0], extra, *x.shape[2:]), pad_value)
            x = torch.cat([pad, x] if pad_left else [x, pad], 1)
    parts = [torch.empty_like(x) for _ in range(world().world_size)]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


def all_gather_objects(obj) -> list:
    """Every rank's picklable obj, rank order (texts, small lists)."""
    if not world().distributed:
        return [obj]
    out = [None] * world().world_size
    dist.all_gather_object(out, obj)
    return out


def all_reduce_grads(parameters) -> None:
    """Sum the gradients of `parameters` over ranks, in one flat buffer per dtype and device
    (one collective instead of one per tensor). A parameter without a gradient on this rank
    (it took no rows) counts as zeros, so every rank makes the same collective calls.
    Sharded (FSDP) parameters were reduced by FSDP already, as a mean: made a sum here."""
    w, parameters = world(), list(parameters)
    if not w.distributed:
        return
    params = [p for p in parameters if p.requires_grad and not is_sharded(p)]
    for p in parameters:
        if is_sharded(p) and p.grad is not None:
            p.grad.mul_(w.world_size)
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    groups: dict = {}
    for p in params:
        groups.setdefault((p.grad.dtype, p.grad.device), []).append(p.grad)
    for grads in groups.values():
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        offset = 0
        for g in grads:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()


def broadcast_parameters(module: torch.nn.Module) -> None:
    """Make every rank start from rank 0's weights (they are loaded from the same folder,
    but a randomly initialised head — a fresh value head — must agree too)."""
    if not world().distributed:
        return
    for tensor in list(module.parameters()) + list(module.buffers()):
        dist.broadcast(tensor.data, src=0)


def on_main(fn, *args):
    """Run `fn(*args)` on rank 0 only (writing a file, a checkpoint); every rank waits for it
    and returns its result, and an error on rank 0 is raised on every rank, so no rank
    hangs waiting for one that failed."""
    if not world().distributed:
        return fn(*args)
    result, error = None, None
    if world().is_main:
        try:
            result = fn(*args)
        except Exception as err:  # noqa: BLE001 - passed on to the other ranks, then re-raised
            error = err
    result, message = all_gather_objects(
        (result, None if error is None else f"{type(error).__name__}: {error}"))[0]
    if error is not None:
        raise error
    if message is not None:
        raise RlhfkitError(f"rank 0 failed: {message}")
    return result


def collective_device() -> torch.device:
    """Where small tensors for collectives live: the GPU under nccl, the CPU under gloo."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sum(values: list[float]) -> list[float]:
    """Elementwise sum over ranks of a list of floats (one collective)."""
    if not world().distributed:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=collective_device())
    dist.all_reduce(t)
    return t.tolist()


def all_ranks_agree(flag: bool) -> bool:
    """True on every rank when `flag` is True on every rank (e.g. 'every row hit EOS')."""
    if not world().distributed:
        return flag
    t = torch.tensor([int(flag)], device=collective_device())
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t)


# ---------------------------------------------------------------------------- FSDP2

def shard_model(model: torch.nn.Module, root: torch.nn.Module | None = None) -> None:
    """FSDP2 (`fully_shard`), in place, on a transformers model: each transformer block (the
    classes transformers lists in `_no_split_modules`) is one unit, and `root` (default the
    model; the trunk for a model run through its trunk, like a critic) holds the rest. Each
    rank then keeps 1/W of those parameters, gradients and optimizer state; a forward pass
    gathers one block at a time. Heads outside `root` (a critic's score head, the value
    head) stay whole on every rank and are all-reduced like data-parallel parameters."""
    from torch.distributed.fsdp import fully_shard
    blocks = set(getattr(model, "_no_split_modules", None) or [])
    if not blocks:
        raise ConfigError(f"compute.fsdp: {type(model).__name__} does not name its "
                          "transformer blocks (_no_split_modules), so rlhfkit cannot shard it")
    for module in model.modules():
        if type(module).__name__ in blocks:
            fully_shard(module)
    fully_shard(root if root is not None else model)


def is_sharded(tensor) -> bool:
    from torch.distributed.tensor import DTensor
    return isinstance(tensor, DTensor)


def full_state_dict(model: torch.nn.Module | None) -> dict | None:
    """The whole state dict of a sharded model, on the CPU of rank 0 (None elsewhere, and
    None for a model that is not sharded: it saves itself). Every rank must call it."""
    if model is None or not any(is_sharded(p) for p in model.parameters()):
        return None
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True,
                                                                 cpu_offload=True))
    return state if world().is_main else None


def full_optimizer_state(modules: torch.nn.Module, optimizer) -> dict | None:
    """The optimizer state keyed by parameter name — gathered whole on rank 0 when sharded,
    None on the other ranks — so a checkpoint resumes on any number of processes, sharded
    or not. Every rank must call it."""
    from torch.distributed.checkpoint.state_dict import (StateDictOptions,
                                                         get_optimizer_state_dict)
    gather = world().distributed
    state = get_optimizer_state_dict(modules, optimizer, options=StateDictOptions(
        full_state_dict=gather, cpu_offload=gather))
    return state if world().is_main else None


def load_full_optimizer_state(modules: torch.nn.Module, optimizer, state: dict) -> None:
    """Load a state saved by `full_optimizer_state` into the (sharded or whole) optimizer."""
    from torch.distributed.checkpoint.state_dict import (StateDictOptions,
                                                         set_optimizer_state_dict)
    set_optimizer_state_dict(modules, optimizer, state,
                             options=StateDictOptions(full_state_dict=world().distributed))
