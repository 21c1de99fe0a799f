"""The second stage of RLHF: a reward model trained on human preference pairs.

    rlhfkit reward model=runs/sft/model data=prefs.jsonl out=runs/rm

The reward model is the SFT model's trunk with a fresh scalar head (a Hugging Face
`...ForSequenceClassification` with one label). It scores prompt + response at the last
real token (the EOS), and learns that chosen responses score higher than rejected ones with
the Bradley–Terry loss (Ouyang et al. 2022, eq. 1):

    L = −log σ(r(x, y_chosen) − r(x, y_rejected) − m)  +  center_coef · (r_c + r_r)²

m is the pair's `margin` when the data has that column (Llama 2), else 0; the centring
term (Eisenstein et al. 2023) keeps scores near 0 and is off by default.

One run, top to bottom (`train`):

    1. data        tokenizer, preference pairs and the held-out pairs (a bad file fails
                   here, before any model is loaded or any folder written)
    2. run folder  config.yaml, log.txt, metrics.jsonl; or the last checkpoint to resume
    3. model       init_reward_model(backbone): trunk + head drawn with std 1/sqrt(H+1)
    4. optimizer   AdamW, warmup then linear/cosine decay
    5. train       per micro-batch: its distinct chosen and rejected rows in ONE forward
                   pass (both see the same weights and the same padding; a response in
                   several pairs is scored once), the loss of the pair mean weighted by its
                   share of the step. Pairs that share a response stay together in the
                   data order (group_shared_responses), so K responses ranked by a labeler
                   cost K rows, not K(K-1) (InstructGPT §3.5). Short rows share a
                   row (packing, as in SFT), so a micro-batch pads little
    6. evaluate    held-out accuracy, loss, mean margin r_c − r_r, mean/std of chosen and
                   rejected scores: before training, every eval_every steps, at the end
    7. checkpoint  every save_every steps, atomically, with optimizer/scheduler/RNG state
    8. score stats mean and std of the final model's scores on every training response
                   (chosen and rejected), stored in its config with set_score_stats, so PPO
                   can normalise rewards to mean 0, std 1 (N+ implementation details)
    9. save        OUT/model in plain Hugging Face format, with the tokenizer

Dropout is off by default (`dropout=false`): the scores PPO reads come from the model in
eval mode, so the model is trained as the very function it will be used as, and resuming
needs no dropout randomness. One epoch is the default, as in InstructGPT (a reward model
overfits after one pass over its comparisons).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from rlhfkit import distributed
from rlhfkit.core import reward_model_loss
from rlhfkit.data import (TokenizedPair, collate_unique_responses, load_preferences,
                          response_groups, tokenize_preferences)
from rlhfkit.metrics import MetricsLogger
from rlhfkit.models import (get_score_stats, init_reward_model, load_reward_model,
                            load_tokenizer, score_packed, score_sequences, set_score_stats)
from rlhfkit.recipes.common import (autocast, describe_config, fit_context,
                                    model_context, out_of_memory_hint,
                                    seed_everything, setup_logging, start_world, use_bf16)
from rlhfkit.recipes.reward_config import RewardModelConfig, RewardOptimConfig  # noqa: F401
from rlhfkit.recipes.sft import (guarded_step, load_splits, open_run,
                                 prepare_model, save_final, to_device, training_state,
                                 with_lora, write_checkpoint)

log = logging.getLogger("rlhfkit")


# ---------------------------------------------------------------------------- scoring

def score_pairs(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores of the chosen and of the rejected rows, in one forward pass over the batch's
    distinct rows (`collate_unique_responses`).

    Shapes: input_ids, attention_mask (U, L) -> scores (U,) -> chosen (B,), rejected (B,)
    through chosen_index, rejected_index (B,); U <= 2B. A packed batch (attention_mask
    None) is scored with `score_packed`.
    """
    if batch["attention_mask"] is None:   # packed (collate_unique_responses(pack=True))
        scores = score_packed(model, batch["input_ids"], batch["position_ids"],
                              batch["last_token"])                              # (U,)
    else:
        scores = score_sequences(model, batch["input_ids"], batch["attention_mask"])  # (U,)
    return scores[batch["chosen_index"]], scores[batch["rejected_index"]]


@torch.no_grad()
def packing_works(model, items, pad_id: int, device) -> bool:
    """Whether `model` keeps packed rows apart: the two shortest distinct rows of `items`,
    packed in one row, must score as they do padded (see `sft.packing_works`)."""
    distinct = {tuple(ids) for item in items[:64]
                for ids in (item.chosen_input_ids, item.rejected_input_ids)}
    rows = [list(ids) for ids in sorted(distinct, key=len)[:2]]
    if len(rows) < 2:
        return True
    was_training = model.training
    model.eval()
    pair = [TokenizedPair(*rows)]
    alone = score_pairs(model, to_device(collate_unique_responses(pair, pad_id), device))
    together = score_pairs(model, to_device(collate_unique_responses(
        pair, pad_id, pack=True, length=len(rows[0]) + len(rows[1])), device))
    model.train(was_training)
    return torch.allclose(torch.cat(alone), torch.cat(together), atol=1e-3)


def reward_step(model, items, micro_batches: list[list[int]], local: list[list[int]],
                pad_id: int, device, center_coef: float, bf16: bool = False,
                pack: bool = False) -> dict[str, float]:
    """Backward of one optimizer step's loss, the mean over all its pairs: each micro-batch's
    pair-mean loss is weighted by its share of the step's pairs, so accumulation — over
    micro-batches and over processes (this one runs `local`, its share of `micro_batches`)
    — gives the gradient of one big batch. Returns the step's loss, accuracy and mean
    margin, summed over processes. `pack`: the micro-batch's rows packed several to a row."""
    n_pairs = sum(len(rows) for rows in micro_batches)
    totals = {"loss": 0.0, "accuracy": 0.0, "margin": 0.0}
    for rows in local:
        batch = to_device(collate_unique_responses([items[i] for i in rows], pad_id, pack),
                          device)
        with autocast(bf16, device):
            chosen, rejected = score_pairs(model, batch)
        loss, stats = reward_model_loss(chosen, rejected, batch["margin"], center_coef)
        share = len(rows) / n_pairs
        (loss * share).backward()
        totals["loss"] += float(loss.detach()) * share
        totals["accuracy"] += float(stats["accuracy"]) * share
        totals["margin"] += float(stats["margin"]) * share
    return dict(zip(totals, distributed.all_reduce_sum(list(totals.values()))))


@torch.no_grad()
def score_all(model, items, batch_size: int, pad_id: int, device):
    """Chosen scores (N,), rejected scores (N,) and margins (N,) or None, in eval mode. With
    many processes each scores every W-th pair and all get every score (in rank order).
    Pairs are batched in order of length, so a batch pads little (scores do not depend on
    the padding), and returned in their own order."""
    was_training = model.training
    model.eval()
    has_margin = any(item.margin is not None for item in items)
    world = distributed.world()
    items = items[world.rank::world.world_size]
    order = sorted(range(len(items)), key=lambda i: max(len(items[i].chosen_input_ids),
                                                        len(items[i].rejected_input_ids)))
    chosen, rejected, margins = [torch.zeros(0)], [torch.zeros(0)], [torch.zeros(0)]
    for start in range(0, len(items), batch_size):
        batch = to_device(collate_unique_responses(
            [items[i] for i in order[start:start + batch_size]], pad_id), device)
        c, r = score_pairs(model, batch)
        chosen.append(c.float().cpu())
        rejected.append(r.float().cpu())
        margins.append(torch.zeros(len(c)) if batch["margin"] is None else batch["margin"].cpu())
    model.train(was_training)
    unsort = torch.argsort(torch.tensor(order, dtype=torch.long))
    local = [torch.cat(x)[unsort] for x in (chosen, rejected, margins)]
    parts = distributed.all_gather_objects(local)
    chosen, rejected, margins = (torch.cat([part[i] for part in parts]) for i in range(3))
    return chosen, rejected, margins if has_margin else None


def evaluate_reward(model, items, batch_size: int, pad_id: int, device,
                    center_coef: float) -> dict[str, float]:
    """Held-out accuracy (share of pairs with r_c > r_r), loss, mean margin r_c − r_r, and
    the distribution of chosen and rejected scores."""
    chosen, rejected, margin = score_all(model, items, batch_size, pad_id, device)
    loss, stats = reward_model_loss(chosen, rejected, margin, center_coef)
    spread = (lambda x: float(x.std())) if len(chosen) > 1 else (lambda x: 0.0)
    return {"eval/loss": float(loss), "eval/accuracy": float(stats["accuracy"]),
            "eval/margin": float(stats["margin"]),
            "eval/chosen_mean": float(chosen.mean()), "eval/chosen_std": spread(chosen),
            "eval/rejected_mean": float(rejected.mean()), "eval/rejected_std": spread(rejected)}


def log_eval(step: int, metrics: dict[str, float]) -> None:
    log.info("step %d: held-out accuracy %.3f, margin %.3f, loss %.4f", step,
             metrics["eval/accuracy"], metrics["eval/margin"], metrics["eval/loss"])


def store_score_stats(model, items, cfg: RewardModelConfig, pad_id: int, device) -> None:
    """Step 8: mean and std of the scores of training responses (chosen and rejected),
    stored in the model's config for PPO's reward normalisation."""
    if cfg.stats_pairs is not None and cfg.stats_pairs < len(items):
        pick = torch.randperm(len(items), generator=torch.Generator().manual_seed(cfg.seed + 7))
        items = [items[i] for i in pick[:cfg.stats_pairs].tolist()]
    chosen, rejected, _ = score_all(model, items, cfg.batch_size, pad_id, device)
    scores = torch.cat([chosen, rejected])                                     # (2N,)
    mean, std = float(scores.mean()), float(scores.std()) if len(scores) > 1 else 0.0
    if not std > 0:
        log.warning("every training response scores %.4g: no score std stored, so PPO will "
                    "not normalise this model's scores", mean)
        return
    set_score_stats(model, mean, std)
    log.info("score stats on %d training responses: mean %.4f, std %.4f", len(scores), mean, std)


# ---------------------------------------------------------------------------- the recipe

@dataclass
class RewardRun:
    """What a finished run holds (tests and notebooks read it)."""
    run_dir: Path
    model: torch.nn.Module
    tokenizer: object
    step: int
    first_eval: dict | None     # held-out metrics of the untrained model (None when resumed)
    last_eval: dict | None      # held-out metrics at the end
    score_stats: tuple[float, float] | None


def train(cfg: RewardModelConfig) -> RewardRun:
    """Run (or resume) reward-model training; returns the finished run."""
    started = time.perf_counter()
    setup_logging()  # console only, until the run folder exists
    world, device = start_world(cfg)
    bf16 = use_bf16(cfg.compute, device)

    # 1. data: prompt + response tokenized as the policy will generate it
    tokenizer = load_tokenizer(cfg.model, cfg.trust_remote_code)
    train_pairs, eval_pairs = load_splits(load_preferences, cfg, tokenizer)
    max_length = fit_context(cfg.max_length, model_context(cfg.model, cfg.trust_remote_code),
                             "max_length", cfg.model)
    train_items, _ = tokenize_preferences(train_pairs, tokenizer, max_length)
    eval_items = (tokenize_preferences(eval_pairs, tokenizer, max_length)[0]
                  if eval_pairs else [])
    pad_id = tokenizer.pad_token_id

    # 2. run folder (or the checkpoint to resume from)
    run_dir, resume_from = open_run(cfg)
    log.info("rlhfkit reward on %s: %d training, %d held-out pairs; config in %s", device,
             len(train_items), len(eval_items), run_dir / "config.yaml")
    log.debug("config:\n%s", describe_config(cfg))

    # 3. model: the backbone's trunk plus a new scalar head (seeded), or the checkpoint
    seed_everything(cfg.seed)
    load = dict(dtype=cfg.dtype, trust_remote_code=cfg.trust_remote_code)
    if resume_from is not None and not cfg.lora.enabled:
        model, _ = load_reward_model(resume_from / "model", **load)
    else:  # LoRA: the adapters and the trained head come from the checkpoint
        model = init_reward_model(cfg.model, tokenizer, pooling=cfg.pooling, **load)
    model = with_lora(model, cfg, resume_from, "seq_cls")
    prepare_model(model, cfg, device)
    pack = cfg.packing and packing_works(model, train_items, pad_id, device)
    if cfg.packing and not pack:
        log.warning("packing: %s attends across packed rows (its attention does not follow "
                    "restarting position ids), so batches are padded instead", cfg.model)

    # 4. optimizer and schedule over every optimizer step of the run
    groups = response_groups(train_items) if cfg.group_shared_responses else None
    plan, optimizer, scheduler, step, guard, total_steps, stop_at = training_state(
        cfg, model, len(train_items), run_dir, resume_from, "the reward model", groups)
    memory = (f"batch_size (now {cfg.batch_size} pairs = {2 * cfg.batch_size} rows; raise "
              f"grad_accum to keep the pairs per step) or max_length (now {max_length})")
    log.info("%d optimizer steps (%d per epoch) of up to %d pairs (%d × %d)", total_steps,
             plan.steps_per_epoch, cfg.batch_size * cfg.grad_accum, cfg.batch_size,
             cfg.grad_accum)

    first_eval = last_eval = None
    with MetricsLogger(run_dir, rank0=world.is_main, tensorboard=cfg.log.tensorboard,
                       wandb=cfg.log.wandb, config=cfg) as logger:
        if step == 0 and eval_items:
            with out_of_memory_hint("evaluating the reward model", memory):
                first_eval = last_eval = evaluate_reward(model, eval_items, cfg.batch_size,
                                                         pad_id, device, cfg.center_coef)
            logger.log(0, first_eval)
            log_eval(0, first_eval)
        from tqdm.auto import tqdm
        # closed even when the run stops with an error, so the error is the last line
        with tqdm(total=total_steps, initial=step, desc="reward", unit="step",
                  disable=None if world.is_main else True) as bar:
            while step < stop_at:
                # 5. one optimizer step
                t0 = time.perf_counter()
                lr = scheduler.get_last_lr()[0]
                rows = plan.micro_batches(step)
                with out_of_memory_hint("training the reward model", memory):
                    stats = reward_step(model, train_items, rows,
                                        plan.local_micro_batches(step, world), pad_id, device,
                                        cfg.center_coef, bf16, pack)
                grad_norm = guarded_step(model, optimizer, scheduler, cfg.optim.max_grad_norm,
                                         torch.tensor(stats["loss"]), "loss (Bradley-Terry)", guard,
                                         step)
                step += 1
                n_pairs = sum(len(r) for r in rows)
                metrics = {}  # a skipped step logs no training values: none of them is sound
                if grad_norm is not None:
                    metrics = {**stats, "lr": lr, "grad_norm": grad_norm, "epoch": plan.epoch(step),
                               "pairs_per_s": n_pairs / (time.perf_counter() - t0)}
                    bar.set_postfix(loss=f"{stats['loss']:.4f}", acc=f"{stats['accuracy']:.2f}")
                # 6. evaluate
                if eval_items and (step % cfg.log.eval_every == 0 or step == total_steps):
                    with out_of_memory_hint("evaluating the reward model", memory):
                        last_eval = evaluate_reward(model, eval_items, cfg.batch_size, pad_id,
                                                    device, cfg.center_coef)
                    metrics.update(last_eval)
                    log_eval(step, last_eval)
                if metrics:
                    logger.log(step, metrics)
                bar.update(1)
                # 7. checkpoint
                if step % cfg.log.save_every == 0 or step == stop_at:
                    write_checkpoint(run_dir, step, model, tokenizer, optimizer, scheduler,
                                     cfg.log.keep_last, guard)

    if step < total_steps:
        log.info("reward stopped after step %d of %d (stop_after); continue with resume=true",
                 step, total_steps)
        return RewardRun(run_dir, model, tokenizer, step, first_eval, last_eval, None)

    # 8. score statistics for PPO's reward normalisation
    with out_of_memory_hint("scoring the training pairs", memory):
        store_score_stats(model, train_items, cfg, pad_id, device)
    # 9. the reward model, loadable with plain AutoModelForSequenceClassification
    final = save_final(model, tokenizer, run_dir / "model")
    summary = f"reward: {step} steps in {time.perf_counter() - started:.1f}s"
    if guard.skipped:
        summary += f", {guard.skipped} step(s) skipped for non-finite values"
    if last_eval is not None:
        before = f"{first_eval['eval/accuracy']:.3f} -> " if first_eval else ""
        summary += (f", held-out accuracy {before}{last_eval['eval/accuracy']:.3f}, "
                    f"margin {last_eval['eval/margin']:.3f}")
    log.info("%s; reward model saved to %s", summary, final)
    return RewardRun(run_dir, model, tokenizer, step, first_eval, last_eval,
                     get_score_stats(model))


def main(cfg: RewardModelConfig) -> int:
    """`rlhfkit reward`: the command-line entry point."""
    return distributed.run_then_shutdown(train, cfg)
