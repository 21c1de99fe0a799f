"""The first stage of RLHF: supervised fine-tuning (SFT) on demonstrations.

    rlhfkit sft model=gpt2 data=demos.jsonl out=runs/sft

The model learns to continue each prompt with its demonstrated completion. The loss is the
cross-entropy of the completion tokens only (the prompt is context, not a target):

    tokens      [BOS] user: hi <eos> assistant:   hello   <eos>
    loss_mask     0     0   0    0       0          1       1
    logits at t predict token t+1:  L = −Σ_t m_{t+1} · log π(x_{t+1} | x_≤t) / Σ_t m_{t+1}

at temperature 1 (training matches the data distribution, not a sampling temperature).

One run, top to bottom (`train`):

    1. data        tokenizer, then demonstrations and the held-out set (a bad file fails
                   here, in a second, before any model is loaded or any folder written)
    2. run folder  config.yaml, log.txt, metrics.jsonl; or the last checkpoint to resume
    3. model       the causal LM (from the checkpoint when resuming); a check that its
                   attention keeps packed examples apart (`packing_works`)
    4. optimizer   AdamW, warmup then linear/cosine decay over every optimizer step
    5. train       each optimizer step: grad_accum micro-batches, the loss of each one
                   divided by the token count of the whole step (so accumulation gives the
                   gradient of one big batch), gradient clipping, step. Short examples
                   share a row (packing: position ids restart with each example), so
                   a micro-batch pads little
    6. evaluate    held-out loss and perplexity before training, every eval_every steps
                   and at the end
    7. checkpoint  every save_every steps, atomically, with optimizer/scheduler/RNG state
    8. save        the final model and tokenizer in OUT/model (plain Hugging Face format)

Dropout stays as the model was saved (on for GPT-2 style models): SFT is ordinary
supervised learning, where dropout regularises a small demonstration set (InstructGPT
trained its SFT models with dropout 0.2). `dropout=false` switches it off. The RL stage
switches it off in every model regardless.

Resuming is bit-exact: the examples of step s are a pure function of (seed, s), and the
checkpoint holds the optimizer, the schedule and every random state (dropout draws).

Guard rails: a step whose loss or gradient is not finite is skipped (no optimizer update)
with a warning naming the model and the term; `log.max_bad_steps` in a row stop the run,
naming the last good checkpoint and what to try. Examples longer than the model's context
are cut to it; running out of memory names the batch settings to lower.

This module also holds the pieces the reward-model recipe shares with it: the held-out
split, the step plan, checkpoint writing and restoring.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from rlhfkit.checkpoint import (latest_checkpoint, list_checkpoints, load_trainer_state,
                                save_checkpoint, save_trainer_state, write_folder)
from rlhfkit.config import assert_same_config
from rlhfkit.core import logprobs_from_logits, masked_sum, reduce_loss
from rlhfkit.data import collate_packed_sft, collate_sft, load_sft, tokenize_sft
from rlhfkit.errors import ConfigError, DataError, RlhfkitError
from rlhfkit.metrics import METRICS_FILE, MetricsLogger
from rlhfkit.models import disable_dropout, load_causal_lm, load_tokenizer
from rlhfkit.models.lora import add_lora, load_lora_adapter, trainable_parameters
from rlhfkit import distributed
from rlhfkit.recipes.common import (autocast, clip_grad_norm, describe_config,
                                    enable_gradient_checkpointing, fit_context,
                                    make_optimizer, make_scheduler, model_context,
                                    nonfinite_grad, nonfinite_parameter, out_of_memory_hint,
                                    prepare_run_dir, seed_everything, setup_logging,
                                    start_world, use_bf16)
from rlhfkit.recipes.ppo import save_model, truncate_jsonl
from rlhfkit.recipes.sft_config import SFTConfig, SFTOptimConfig  # noqa: F401 (re-exported)

log = logging.getLogger("rlhfkit")

# Options that may differ when a run is resumed: none of them changes what is computed.
RESUME_MAY_CHANGE = ("resume", "overwrite", "stop_after", "device", "log")


# ---------------------------------------------------------------------------- shared pieces

def held_out_split(n: int, fraction: float, seed: int, source: str) -> tuple[list[int], list[int]]:
    """Indices (train, held-out) of `n` rows: a seeded random `fraction` is held out (at
    least one row when fraction > 0), the same on every run with the same seed."""
    if fraction <= 0:
        return list(range(n)), []
    n_eval = max(1, round(n * fraction))
    if n - n_eval < 1:
        raise DataError(source, None, None, f"{n} row(s) are too few to hold out {n_eval} for "
                        "evaluation; give eval_data=... or set eval_fraction=0")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    return sorted(order[n_eval:]), sorted(order[:n_eval])


def load_splits(load, cfg, tokenizer) -> tuple[list, list]:
    """(training records, held-out records) read with `load` (load_sft, load_preferences):
    `eval_data` when given, else a held-out `eval_fraction` of `data`."""
    records = load(cfg.data, tokenizer, split=cfg.split)
    if cfg.eval_data:
        return records, load(cfg.eval_data, tokenizer, split=cfg.eval_split)
    train_idx, eval_idx = held_out_split(len(records), cfg.eval_fraction, cfg.seed, cfg.data)
    return [records[i] for i in train_idx], [records[i] for i in eval_idx]


@functools.lru_cache(maxsize=2)
def _epoch_order(n: int, seed: int, epoch: int,
                 groups: tuple[tuple[int, ...], ...] | None = None) -> tuple[int, ...]:
    """A seeded shuffle of the n examples; with `groups`, a shuffle of the groups, each
    group's examples kept together and shuffled among themselves (so data that is one big
    group is still shuffled)."""
    generator = torch.Generator().manual_seed(seed + 1000 * epoch)
    if groups is None:
        return tuple(torch.randperm(n, generator=generator).tolist())
    order = []
    for g in torch.randperm(len(groups), generator=generator).tolist():
        members = groups[g]
        order += members if len(members) == 1 else [
            members[j] for j in torch.randperm(len(members), generator=generator).tolist()]
    return tuple(order)


@dataclass(frozen=True)
class StepPlan:
    """Which training examples each optimizer step uses.

    Every epoch is one seeded shuffle of the n examples, cut into micro-batches of
    `batch_size` (the last one may be smaller), grouped `grad_accum` to an optimizer step:

        epoch 0 order   7 2 9 0 | 4 1 8 6 | 3 5        n=10, batch_size=4, grad_accum=2
        steps           [  step 0: 2 micro  ] [ step 1 ]

    With `groups` (tuples of example indices that partition 0..n-1) the shuffle moves whole
    groups, so a group's examples stay next to each other (and mostly in one micro-batch):
    the reward model's pairs that share responses, which it then scores once. Within a
    group the examples are shuffled too.

    The examples of step s are a pure function of (seed, s), so a resumed run needs no
    data-loader state.
    """
    n: int
    batch_size: int
    grad_accum: int
    seed: int
    groups: tuple[tuple[int, ...], ...] | None = None

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(math.ceil(self.n / self.batch_size) / self.grad_accum)

    def total_steps(self, epochs: int, max_steps: int | None) -> int:
        return max_steps if max_steps is not None else epochs * self.steps_per_epoch

    def epoch(self, step: int) -> float:
        """Epochs completed after `step` optimizer steps (fractional)."""
        return step / self.steps_per_epoch

    def micro_batches(self, step: int) -> list[list[int]]:
        """Example indices of each micro-batch of optimizer step `step` (0-based)."""
        epoch, k = divmod(step, self.steps_per_epoch)
        order = _epoch_order(self.n, self.seed, epoch, self.groups)
        per_step = self.batch_size * self.grad_accum
        rows = list(order[k * per_step:(k + 1) * per_step])
        return [rows[i:i + self.batch_size] for i in range(0, len(rows), self.batch_size)]

    def local_micro_batches(self, step: int, world: distributed.World) -> list[list[int]]:
        """This process's micro-batches of step `step`: the r-th block of grad_accum / W
        (the last, short step of an epoch may leave a process none)."""
        per_rank = self.grad_accum // world.world_size
        return self.micro_batches(step)[world.rank * per_rank:(world.rank + 1) * per_rank]


def open_run(cfg) -> tuple[Path, Path | None]:
    """Create (or reopen, with resume=true) the run folder; log to it. Returns the folder
    and the checkpoint to resume from (None: start from the beginning)."""
    run_dir = prepare_run_dir(cfg.out, cfg.overwrite, cfg.resume, cfg)
    setup_logging(run_dir)
    resume_from = None
    if cfg.resume:
        assert_same_config(run_dir / "config.yaml", cfg, ignore=RESUME_MAY_CHANGE)
        resume_from = latest_checkpoint(run_dir)
        if resume_from is None:
            log.warning("no whole checkpoint in %s: starting from the beginning", run_dir)
    return run_dir, resume_from


def write_checkpoint(run_dir: Path, step: int, model, tokenizer, optimizer, scheduler,
                     keep_last: int, guard: "BadSteps | None" = None) -> Path:
    """RUN_DIR/checkpoints/step-NNNNNN/{model/, optimizer.pt, scheduler.pt, rng.pt, ...},
    written atomically (see rlhfkit.checkpoint). Weights that are no longer finite are
    never checkpointed: the last good checkpoint must stay the newest one."""
    if guard is not None:
        guard.check_weights(model, step)

    def write(folder: Path) -> None:
        model.save_pretrained(folder / "model")
        tokenizer.save_pretrained(folder / "model")
        save_trainer_state(folder, optimizer, scheduler, extra={
            "step": step, "bad_in_a_row": guard.in_a_row if guard else 0})
    return distributed.on_main(save_checkpoint, run_dir, step, write, keep_last)


def restore(run_dir: Path, folder: Path | None, optimizer, scheduler) -> dict:
    """Load optimizer, schedule and random states from `folder`; drop the metric lines a
    killed run wrote after it. Returns {"step": optimizer steps done, "bad_in_a_row": ...}."""
    state = {"step": 0, "bad_in_a_row": 0}
    if folder is not None:
        state.update(load_trainer_state(folder, optimizer, scheduler))
        log.info("resumed from %s (step %d)", folder, state["step"])
    # -1 without a checkpoint: the step-0 evaluation will be written again
    distributed.on_main(truncate_jsonl, run_dir / METRICS_FILE,
                        state["step"] if folder is not None else -1)
    return state


def save_final(model, tokenizer, folder: Path, lora_save: str = "merged") -> Path:
    """Save model and tokenizer to `folder`, replacing it whole (written beside, then
    renamed, so a kill never leaves half a model under the final name). A LoRA model is
    saved merged (a plain Hugging Face folder) or as its adapter (`lora_save`)."""
    def write(tmp: Path) -> None:
        save_model(model, tmp, tokenizer, lora_save)  # (checkpoints hold a LoRA adapter)
    checkpoints = list_checkpoints(folder.parent, verify=False)
    return distributed.on_main(write_folder, folder, write, "the final model",
                               checkpoints[-1] if checkpoints else None)


@dataclass
class BadSteps:
    """Counts optimizer steps skipped for a non-finite loss or gradient; `limit` in a row
    stop the run with a message naming the last good checkpoint and what to try."""
    run_dir: Path
    model_name: str             # "the SFT model", "the reward model"
    limit: int
    lr: float
    in_a_row: int = 0
    skipped: int = 0

    def record(self, step: int, problem: str | None) -> None:
        if problem is None:
            self.in_a_row = 0
            return
        self.in_a_row += 1
        self.skipped += 1
        log.warning("step %d skipped (no optimizer update): %s", step, problem)
        if self.in_a_row >= self.limit:
            self.stop(f"{self.in_a_row} optimizer steps in a row had non-finite values "
                      f"(last, at step {step}: {problem})")

    def check_weights(self, model, step: int) -> None:
        bad = nonfinite_parameter(model)
        if bad is not None:
            self.stop(f"the weights of {self.model_name} are not finite after step {step} "
                      f"(first: {bad}), so no checkpoint was written of them")

    def stop(self, what: str) -> None:
        last = latest_checkpoint(self.run_dir, quiet=True)
        kept = f"the last good checkpoint, {last}, is intact" if last else "no checkpoint yet"
        raise RlhfkitError(
            f"stopped: {what}; {kept}. Try a lower learning rate (optim.lr, now {self.lr:g}), "
            "a longer warmup (optim.warmup_steps) or gradient clipping (optim.max_grad_norm), "
            "and dtype=float32 if you train in 16 bits; then start again with overwrite=true "
            "(resume=true continues from that checkpoint with the same settings)")


def guarded_step(model, optimizer, scheduler, max_grad_norm: float | None, loss: torch.Tensor,
                 loss_name: str, guard: BadSteps, step: int) -> float | None:
    """After the backward pass: clip the gradient and take the optimizer step, unless the
    loss or the gradient is not finite (then no update, a warning naming the cause). The
    schedule steps either way, so the learning rate stays a function of the step number.
    Returns the gradient norm before clipping, or None when skipped."""
    problem, grad_norm = None, None
    if not bool(torch.isfinite(loss)):  # the loss of the whole step, the same on every rank
        problem = f"the {loss_name} of {guard.model_name} is {float(loss)}"
    else:
        params = trainable_parameters(model)
        distributed.all_reduce_grads(params)  # every rank's share of the step, summed
        grad_norm = clip_grad_norm(params, max_grad_norm)
        if not bool(torch.isfinite(grad_norm)):
            problem = (f"the gradient of {guard.model_name} is not finite (first at "
                       f"{nonfinite_grad(model.named_parameters())})")
    if problem is None:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    scheduler.step()
    guard.record(step + 1, problem)
    return None if problem else float(grad_norm)


def training_state(cfg, model, n_items: int, run_dir: Path, resume_from: Path | None,
                   what: str, groups: tuple[tuple[int, ...], ...] | None = None):
    """What the SFT and reward-model loops share: the step plan, AdamW and its schedule over
    every optimizer step of the run, restored from `resume_from` when resuming, and the guard
    against non-finite steps (`groups`: examples kept together, see StepPlan). Returns
    (plan, optimizer, scheduler, step, guard, total_steps, stop_at)."""
    world = distributed.world()
    if cfg.grad_accum % world.world_size:
        raise ConfigError(f"grad_accum: {cfg.grad_accum} micro-batches per step do not divide "
                          f"over {world.world_size} processes; use a multiple of "
                          f"{world.world_size} (the examples per step, batch_size × grad_accum, "
                          "stay the same on any number of processes)")
    plan = StepPlan(n_items, cfg.batch_size, cfg.grad_accum, cfg.seed, groups)
    total_steps = plan.total_steps(cfg.epochs, cfg.max_steps)
    params = trainable_parameters(model)
    optimizer = make_optimizer([{"params": params}], cfg.optim)
    scheduler = make_scheduler(optimizer, cfg.optim, total_steps)
    state = restore(run_dir, resume_from, optimizer, scheduler)
    guard = BadSteps(run_dir, what, cfg.log.max_bad_steps, cfg.optim.lr, state["bad_in_a_row"])
    stop_at = min(total_steps, cfg.stop_after or total_steps)
    return plan, optimizer, scheduler, state["step"], guard, total_steps, stop_at


def with_lora(model, cfg, resume_from: Path | None, task: str):
    """The model itself, or with LoRA adapters: new ones, or those of the checkpoint."""
    if not cfg.lora.enabled:
        return model
    if resume_from is not None:
        return load_lora_adapter(model, resume_from / "model")
    return add_lora(model, cfg.lora, task)


def prepare_model(model, cfg, device) -> None:
    """Dropout as asked, gradient checkpointing, the device, train mode; every process
    starts from rank 0's weights and then draws its own dropout masks."""
    if not cfg.dropout:
        disable_dropout(model)
    if cfg.compute.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    model.to(device).train()
    world = distributed.world()
    if world.distributed:
        distributed.broadcast_parameters(model)
        seed_everything(cfg.seed + world.rank)


def to_device(batch: dict, device) -> dict:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


# ---------------------------------------------------------------------------- the loss

def completion_logprobs(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """log π(x_{t+1} | x_≤t) of every next token at temperature 1, and the mask of those
    that are loss targets (completion tokens and the final EOS).

    Shapes: input_ids, attention_mask, position_ids, loss_mask (B, L) -> (B, L-1), (B, L-1).
    The logits at position t predict token t+1, so targets and mask are shifted by one. The
    last position predicts nothing, and causal attention keeps it from changing the others,
    so the model runs without it.
    """
    mask = batch["attention_mask"]  # None for packed rows (position ids restart instead)
    logits = model(input_ids=batch["input_ids"][:, :-1],
                   attention_mask=None if mask is None else mask[:, :-1],
                   position_ids=batch["position_ids"][:, :-1], use_cache=False).logits  # (B, L-1, V)
    targets = batch["input_ids"][:, 1:]                                         # (B, L-1)
    logprobs = logprobs_from_logits(logits, targets, temperature=1.0)           # (B, L-1)
    return logprobs, batch["loss_mask"][:, 1:]


def target_count(items) -> int:
    """Loss targets of tokenized examples (a row's first token is never one: nothing
    predicts it)."""
    return sum(sum(item.loss_mask[1:]) for item in items)


@torch.no_grad()
def packing_works(model, items, pad_id: int, device) -> bool:
    """Whether `model` keeps packed examples apart: the two shortest of `items`, packed in
    one row (`collate_packed_sft`), must get the log-probs each gets alone in a padded batch.
    Attention models of transformers build their masks from the restarting position ids;
    a recurrent model (Mamba, RWKV) or custom attention code carries one example into the
    next, and fails this."""
    # longest first, the order pack_rows puts them in
    pair = sorted(items[:64], key=lambda item: len(item.input_ids))[:2][::-1]
    if len(pair) < 2:
        return True
    was_training = model.training
    model.eval()
    padded = to_device(collate_sft(pair, pad_id), device)
    packed = to_device(collate_packed_sft(pair, sum(len(item.input_ids) for item in pair)),
                       device)
    lp_padded, mask = completion_logprobs(model, padded)          # (2, L-1)
    lp_packed, packed_mask = completion_logprobs(model, packed)   # (1, L0+L1-1)
    model.train(was_training)
    alone = lp_padded[mask.bool()].float()
    together = lp_packed[packed_mask.bool()].float()
    return alone.shape == together.shape and torch.allclose(alone, together, atol=1e-3)


def sft_step(model, items, micro_batches: list[list[int]], local: list[list[int]], pad_id: int,
             device, bf16: bool = False, pack: bool = False) -> tuple[torch.Tensor, int]:
    """Backward of one optimizer step's loss, the token mean over all its micro-batches.

    Each micro-batch's summed NLL is divided by the token count of the whole step
    (`reduce_loss` with a global normalizer), so the accumulated gradient is that of one
    big batch, however the step is cut — over micro-batches and over processes (this one
    runs `local`, its share of `micro_batches`). Returns (the step's loss, summed over
    processes, and its token count).
    """
    normalizer = max(target_count(items[i] for rows in micro_batches for i in rows), 1)
    total = 0.0
    for rows in local:
        examples = [items[i] for i in rows]
        batch = to_device(collate_packed_sft(examples) if pack else collate_sft(examples, pad_id),
                          device)
        with autocast(bf16, device):
            logprobs, mask = completion_logprobs(model, batch)
        loss = reduce_loss(-logprobs, mask, "token_mean", normalizer)
        loss.backward()
        total += float(loss.detach())
    return torch.tensor(distributed.all_reduce_sum([total])[0]), normalizer


@torch.no_grad()
def evaluate_sft(model, items, batch_size: int, pad_id: int, device) -> dict[str, float]:
    """Held-out loss (token mean of the completion NLL over the whole set) and
    perplexity = exp(loss). Run in eval mode (no dropout)."""
    was_training = model.training
    model.eval()
    world = distributed.world()
    items = items[world.rank::world.world_size]  # each process scores its share
    nll, count = 0.0, 0
    for start in range(0, len(items), batch_size):
        batch = to_device(collate_sft(items[start:start + batch_size], pad_id), device)
        logprobs, mask = completion_logprobs(model, batch)
        nll += float(masked_sum(-logprobs, mask))
        count += int(mask.sum())
    nll, count = distributed.all_reduce_sum([nll, count])
    model.train(was_training)
    loss = nll / max(count, 1)
    return {"eval/loss": loss, "eval/perplexity": math.exp(min(loss, 700.0))}


# ---------------------------------------------------------------------------- the recipe

@dataclass
class SFTRun:
    """What a finished run holds (tests and notebooks read it)."""
    run_dir: Path
    model: torch.nn.Module
    tokenizer: object
    step: int
    first_eval: dict | None     # held-out metrics before training (None when resumed)
    last_eval: dict | None      # held-out metrics at the end
    train_loss: float | None    # loss of the last optimizer step


def train(cfg: SFTConfig) -> SFTRun:
    """Run (or resume) SFT; returns the finished run. See the module docstring."""
    started = time.perf_counter()
    setup_logging()  # console only, until the run folder exists
    world, device = start_world(cfg)
    bf16 = use_bf16(cfg.compute, device)

    # 1. data: one tokenization (rlhfkit.data), prompt tokens masked out of the loss, at
    #    most the model's context
    tokenizer = load_tokenizer(cfg.model, cfg.trust_remote_code)
    train_examples, eval_examples = load_splits(load_sft, cfg, tokenizer)
    max_length = fit_context(cfg.max_length, model_context(cfg.model, cfg.trust_remote_code),
                             "max_length", cfg.model)
    train_items, _ = tokenize_sft(train_examples, tokenizer, max_length)
    eval_items = tokenize_sft(eval_examples, tokenizer, max_length)[0] if eval_examples else []
    pad_id = tokenizer.pad_token_id

    # 2. run folder (or the checkpoint to resume from)
    run_dir, resume_from = open_run(cfg)
    log.info("rlhfkit sft on %s: %d training, %d held-out examples; config in %s", device,
             len(train_items), len(eval_items), run_dir / "config.yaml")
    log.debug("config:\n%s", describe_config(cfg))

    # 3. model
    seed_everything(cfg.seed)
    source = resume_from / "model" if resume_from and not cfg.lora.enabled else cfg.model
    model = load_causal_lm(source, tokenizer, dtype=cfg.dtype,
                           trust_remote_code=cfg.trust_remote_code)
    model = with_lora(model, cfg, resume_from, "causal_lm")
    prepare_model(model, cfg, device)

    pack = cfg.packing and packing_works(model, train_items, pad_id, device)
    if cfg.packing and not pack:
        log.warning("packing: %s attends across packed examples (its attention does not "
                    "follow restarting position ids), so batches are padded instead",
                    cfg.model)

    # 4. optimizer and schedule over every optimizer step of the run
    plan, optimizer, scheduler, step, guard, total_steps, stop_at = training_state(
        cfg, model, len(train_items), run_dir, resume_from, "the SFT model")
    memory = (f"batch_size (now {cfg.batch_size}; raise grad_accum to keep the examples per "
              f"step) or max_length (now {max_length})")
    log.info("%d optimizer steps (%d per epoch) of up to %d examples (%d × %d)", total_steps,
             plan.steps_per_epoch, cfg.batch_size * cfg.grad_accum, cfg.batch_size,
             cfg.grad_accum)

    first_eval = last_eval = None
    train_loss = None
    with MetricsLogger(run_dir, rank0=world.is_main, tensorboard=cfg.log.tensorboard,
                       wandb=cfg.log.wandb, config=cfg) as logger:
        if step == 0 and eval_items:
            with out_of_memory_hint("evaluating the SFT model", memory):
                first_eval = last_eval = evaluate_sft(model, eval_items, cfg.batch_size, pad_id,
                                                      device)
            logger.log(0, first_eval)
            log.info("step 0: held-out loss %.4f, perplexity %.2f", first_eval["eval/loss"],
                     first_eval["eval/perplexity"])
        from tqdm.auto import tqdm
        # closed even when the run stops with an error, so the error is the last line
        with tqdm(total=total_steps, initial=step, desc="sft", unit="step",
                  disable=None if world.is_main else True) as bar:
            while step < stop_at:
                # 5. one optimizer step
                t0 = time.perf_counter()
                lr = scheduler.get_last_lr()[0]
                with out_of_memory_hint("training the SFT model", memory):
                    loss, n_tokens = sft_step(model, train_items, plan.micro_batches(step),
                                              plan.local_micro_batches(step, world), pad_id,
                                              device, bf16, pack)
                grad_norm = guarded_step(model, optimizer, scheduler, cfg.optim.max_grad_norm, loss,
                                         "loss (completion cross-entropy)", guard, step)
                step += 1
                metrics = {}  # a skipped step logs no training values: none of them is sound
                if grad_norm is not None:
                    train_loss = float(loss)
                    metrics = {"loss": train_loss, "lr": lr, "grad_norm": grad_norm,
                               "epoch": plan.epoch(step), "tokens": n_tokens,
                               "tokens_per_s": n_tokens / (time.perf_counter() - t0)}
                # 6. evaluate
                if eval_items and (step % cfg.log.eval_every == 0 or step == total_steps):
                    with out_of_memory_hint("evaluating the SFT model", memory):
                        last_eval = evaluate_sft(model, eval_items, cfg.batch_size, pad_id, device)
                    metrics.update(last_eval)
                    log.info("step %d: held-out loss %.4f, perplexity %.2f", step,
                             last_eval["eval/loss"], last_eval["eval/perplexity"])
                if metrics:
                    logger.log(step, metrics)
                bar.update(1)
                if train_loss is not None:
                    bar.set_postfix(loss=f"{train_loss:.4f}")
                # 7. checkpoint
                if step % cfg.log.save_every == 0 or step == stop_at:
                    write_checkpoint(run_dir, step, model, tokenizer, optimizer, scheduler,
                                     cfg.log.keep_last, guard)

    if step < total_steps:
        log.info("sft stopped after step %d of %d (stop_after); continue with resume=true",
                 step, total_steps)
        return SFTRun(run_dir, model, tokenizer, step, first_eval, last_eval, train_loss)

    # 8. the final model, in plain Hugging Face format
    final = save_final(model, tokenizer, run_dir / "model", cfg.lora.save)
    summary = f"sft: {step} steps in {time.perf_counter() - started:.1f}s"
    if train_loss is not None:
        summary += f", train loss {train_loss:.4f}"
    if guard.skipped:
        summary += f", {guard.skipped} step(s) skipped for non-finite values"
    if last_eval is not None:
        before = f"{first_eval['eval/loss']:.4f} -> " if first_eval else ""
        summary += (f", held-out loss {before}{last_eval['eval/loss']:.4f} "
                    f"(perplexity {last_eval['eval/perplexity']:.2f})")
    log.info("%s; model saved to %s", summary, final)
    return SFTRun(run_dir, model, tokenizer, step, first_eval, last_eval, train_loss)


def main(cfg: SFTConfig) -> int:
    """`rlhfkit sft`: the command-line entry point."""
    return distributed.run_then_shutdown(train, cfg)
