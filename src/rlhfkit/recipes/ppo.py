"""The RL stage of RLHF: PPO with GAE and a KL penalty, and the critic-free family
(REINFORCE with a baseline, RLOO, GRPO) on the same rollouts.

One update, as the lecture draws it:

    1. rollout    sample responses to a batch of prompts with the current policy π_old
    2. score      reward model and/or reward functions -> one score per response
    3. forward    log π_old and log π_ref of every sampled token; values V(s_t)
    4. advantage  per-token reward (score at the last token, −β·KL on every token)
                  -> GAE (ppo) or a sequence baseline (reinforce, rloo, grpo); whitening
    5. train      num_epochs × mini-batches × micro-batches of the clipped PPO loss
                  (+ value loss, − entropy bonus, + KL loss for grpo); the importance ratio
                  π/π_old lets each rollout batch serve several updates
    6. bookkeeping KL controller, metrics, samples, checkpoint

Dropout is off in every model, and every model stays in eval mode, training included: the
log-probs of step 3 and of the first step of 5 are then computed identically, and the
importance ratio is exactly 1 before the first update (N+ implementation details).

Guard rails: an update whose scores, log-probabilities or values are not finite is skipped,
and so is an optimizer step whose loss or gradient is not finite, each with a warning naming
the model (policy, reference, critic or value head) and the term (policy loss, value loss,
KL loss, entropy, gradient); `log.max_bad_updates` skipped updates in a row stop the run,
naming the last good checkpoint and what to try. Running out of memory names the batch
setting to lower.

Many processes (`torchrun`, `accelerate launch`; see rlhfkit.distributed): rank r samples,
scores and runs the no-grad passes of its share of the rollout batch, then the rollouts are
all-gathered, so step 4 runs over the global batch on every rank alike. In step 5 each rank
takes its share of every mini-batch, divides its loss by the mini-batch's global token
count, and the gradients are summed over ranks before clipping: the update equals that of
one process holding the whole batch. The random numbers of update u (sampling noise for
each global row, the mini-batch shuffle) are a pure function of (seed, u), so resuming with
another number of processes draws the same ones.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from rlhfkit import distributed
from rlhfkit.checkpoint import (latest_checkpoint, load_trainer_state, save_checkpoint,
                                save_trainer_state, write_folder)
from rlhfkit.config import assert_same_config
from rlhfkit.core import (ADVANTAGE_ESTIMATORS, AdaptiveKLController, FixedKLController,
                          apply_missing_eos_penalty, explained_variance, kl_estimate,
                          logprobs_and_entropy, masked_mean, masked_var, masked_whiten,
                          per_token_rewards, ppo_policy_loss, ppo_value_loss, reduce_loss)
from rlhfkit.data import collate_prompts, load_prompts, tokenize_prompts
from rlhfkit.errors import DataError, RlhfkitError
from rlhfkit.generation import Sampling, sample_responses
from rlhfkit.metrics import MetricsLogger, console_table
from rlhfkit.models import (PolicyWithValueHead, ValueModel, disable_dropout, load_causal_lm,
                            load_tokenizer)
from rlhfkit.models.loading import resolve_path
from rlhfkit.models.trunk import trunk
from rlhfkit.models.lora import (add_lora, adapters_disabled, is_lora, load_lora_adapter,
                                 save_lora_model, trainable_parameters)
from rlhfkit.models.value import VALUE_HEAD_FILE
from rlhfkit.recipes.common import (autocast, clip_grad_norm, describe_config,
                                    enable_gradient_checkpointing, make_optimizer,
                                    make_scheduler, model_context, nonfinite_grad,
                                    nonfinite_parameter, out_of_memory_hint, prepare_run_dir,
                                    seed_everything, setup_logging, start_world, use_bf16)
from rlhfkit.recipes.ppo_config import PPOConfig
from rlhfkit.rollout import Rollout, chunked, critic_values, response_forward, score_tokens, select
from rlhfkit.scoring import (FunctionScorer, RewardModelScorer, ScoreRequest, WeightedSum,
                             clip_scores, nonfinite_message, same_tokenizer)

log = logging.getLogger("rlhfkit")


@dataclass
class Parts:
    """Everything a run holds: models, optimizer, controllers, data, random generators."""
    cfg: PPOConfig
    device: torch.device
    tokenizer: object
    policy: torch.nn.Module                 # causal LM, or PolicyWithValueHead
    ref: torch.nn.Module | None             # frozen; None: the LoRA policy, adapters off
    critic: ValueModel | None
    scorer: WeightedSum
    gold: FunctionScorer | None             # logged as gold/mean, never trained on
    optimizer: torch.optim.Optimizer
    scheduler: object
    kl_ctl: FixedKLController | AdaptiveKLController
    prompt_texts: list[str]
    prompt_tokens: list[list[int]]
    world: distributed.World = field(default_factory=distributed.World)
    bf16: bool = False                      # autocast the forward passes to bf16
    update: int = 0                         # updates completed
    bad_in_a_row: int = 0                   # consecutive skipped updates
    last_skip: str | None = None            # why the last optimizer step was skipped
    timings: dict = field(default_factory=dict)

    @property
    def lm(self) -> torch.nn.Module:
        """The causal LM that samples (the policy without its value head)."""
        return self.policy.lm if isinstance(self.policy, PolicyWithValueHead) else self.policy

    def ref_forward(self, chunk: dict, temperature: float) -> torch.Tensor:
        """log π_ref of a chunk's response tokens: the reference model, or the LoRA
        policy's base with its adapters switched off (no second copy of the weights)."""
        if self.ref is not None:
            return score_tokens(self.ref, chunk, temperature)[0]
        with adapters_disabled(self.lm):
            return score_tokens(self.lm, chunk, temperature)[0]

    def autocast(self):
        return autocast(self.bf16, self.device)

    @property
    def sharded(self) -> bool:
        """FSDP: the policy (and critic, reference) are sharded over the processes."""
        return self.cfg.compute.fsdp and self.world.distributed

    @property
    def trained_modules(self) -> torch.nn.Module:
        """The models the optimizer updates, under one root (for gathered optimizer state)."""
        modules = {"policy": self.policy}
        if self.critic is not None:
            modules["critic"] = self.critic
        return torch.nn.ModuleDict(modules)


SAMPLING, SHUFFLE = 0, 1


def update_generator(seed: int, update: int, stream: int, device="cpu") -> torch.Generator:
    """The random stream `stream` (SAMPLING or SHUFFLE) of update `update`: a pure function
    of (seed, update), so a resumed run — on any number of processes — draws the same
    numbers without storing generator states."""
    return torch.Generator(device).manual_seed(seed + 1_000_003 * (2 * update + stream + 1))


# ---------------------------------------------------------------------------- set-up

def frozen(model: torch.nn.Module, device) -> torch.nn.Module:
    disable_dropout(model)
    return model.to(device).eval().requires_grad_(False)


def build_scorer(cfg: PPOConfig, tokenizer, device) -> WeightedSum:
    sources = []
    if cfg.reward.model:
        sources.append(RewardModelScorer(cfg.reward.model, tokenizer, normalize=cfg.reward.normalize,
                                         batch_size=cfg.batch.forward_batch_size, device=device,
                                         trust_remote_code=cfg.trust_remote_code))
    sources += [FunctionScorer(spec) for spec in cfg.reward.functions]
    weights = cfg.reward.weights or [1.0] * len(sources)
    return WeightedSum(list(zip(weights, sources)))


def build_models(cfg: PPOConfig, tokenizer, device, resume_from: Path | None):
    """Policy (trainable), reference (frozen; None with LoRA: the policy's own base, adapters
    off) and critic, from the configured folders or the checkpoint `resume_from`."""
    load = dict(dtype=cfg.dtype, trust_remote_code=cfg.trust_remote_code)
    lora = cfg.lora.enabled
    saved = resume_from / "policy" if resume_from else None
    lm = load_causal_lm(cfg.policy if lora or saved is None else saved, tokenizer, **load)
    if lora:  # the base stays frozen; only adapters train (a checkpoint holds the adapter)
        lm = load_lora_adapter(lm, saved) if saved else add_lora(lm, cfg.lora, "causal_lm")
    policy = lm
    if cfg.uses_value and cfg.value.kind == "head":
        policy = PolicyWithValueHead(lm)
        head_file = Path(saved or resolve_path(cfg.policy)) / VALUE_HEAD_FILE
        if head_file.is_file():
            policy.value_head.load_state_dict(load_file(str(head_file)))
    disable_dropout(policy)  # after add_lora: its dropout layers too
    policy.to(device).eval()
    ref = None
    if not lora or (cfg.ref and cfg.ref != cfg.policy):
        ref = frozen(load_causal_lm(cfg.ref or cfg.policy, tokenizer, **load), device)
    critic = None
    if cfg.uses_value and cfg.value.kind == "critic":
        critic = build_critic(cfg, tokenizer, resume_from)
        critic.to(device).eval()
    return policy, ref, critic


def build_critic(cfg: PPOConfig, tokenizer, resume_from: Path | None) -> ValueModel:
    """The separate critic (value.model, default the reward model), LoRA when the policy is."""
    source = cfg.value.model or cfg.reward.model
    if not same_tokenizer(load_tokenizer(source, cfg.trust_remote_code), tokenizer):
        raise RlhfkitError(f"value.model: the critic '{source}' uses another tokenizer than "
                           "the policy; give a critic with the policy's tokenizer "
                           "(value.model=...) or use value.kind=head")
    saved = resume_from / "value" if resume_from else None
    load = dict(dtype=cfg.dtype, trust_remote_code=cfg.trust_remote_code)
    critic = ValueModel.from_pretrained(source if cfg.lora.enabled or saved is None else saved,
                                        tokenizer, **load)
    if cfg.lora.enabled:
        critic.model = (load_lora_adapter(critic.model, saved) if saved
                        else add_lora(critic.model, cfg.lora, "seq_cls"))
    return disable_dropout(critic)


def shard_models(policy, ref, critic) -> None:
    """FSDP: the policy's LM and the reference are called whole (tied embeddings stay in
    one unit); the critic through its trunk, so the trunk is its root unit."""
    distributed.shard_model(policy.lm if isinstance(policy, PolicyWithValueHead) else policy)
    if ref is not None:
        distributed.shard_model(ref)
    if critic is not None:
        distributed.shard_model(critic.model, root=trunk(critic.model))


def load_data(cfg: PPOConfig, tokenizer) -> tuple[list[str], list[list[int]]]:
    """Prompt texts and token ids. A prompt plus its response must fit the policy's context
    (learned position embeddings have no row past it): longer prompts lose their start."""
    texts = load_prompts(cfg.prompts, tokenizer)
    s, context = cfg.sampling, model_context(cfg.policy, cfg.trust_remote_code)
    max_prompt = s.max_prompt_length
    if context is not None and s.max_prompt_length + s.max_new_tokens > context:
        max_prompt = context - s.max_new_tokens
        if max_prompt < 1:
            raise RlhfkitError(f"sampling.max_new_tokens: {s.max_new_tokens} leaves no room for "
                               f"a prompt in the {context}-token context of '{cfg.policy}'")
        log.warning("sampling.max_prompt_length=%d + max_new_tokens=%d is more than the %d-token "
                    "context of '%s': prompts keep their last %d tokens", s.max_prompt_length,
                    s.max_new_tokens, context, cfg.policy, max_prompt)
    try:
        tokens, _ = tokenize_prompts(texts, tokenizer, max_prompt, s.on_long_prompt)
    except DataError as err:  # name the file, not just the prompt's position in it
        raise DataError(cfg.prompts, None, "prompt", err.problem) from None
    return texts, tokens


def build(cfg: PPOConfig, device, resume_from: Path | None, data=None) -> Parts:
    """Every part of a run; `data` is (tokenizer, texts, tokens) when already loaded."""
    seed_everything(cfg.seed)  # the same on every rank: a fresh value head starts alike
    tokenizer = data[0] if data else load_tokenizer(cfg.policy, cfg.trust_remote_code)
    texts, tokens = data[1:] if data else load_data(cfg, tokenizer)
    policy, ref, critic = build_models(cfg, tokenizer, device, resume_from)
    for model in (policy, critic):
        if model is not None:
            distributed.broadcast_parameters(model)  # every rank starts from rank 0's weights
            if cfg.compute.gradient_checkpointing:
                enable_gradient_checkpointing(model)
    if cfg.compute.fsdp and distributed.world().distributed:
        shard_models(policy, ref, critic)  # before the optimizer: it holds the shards
    value_lr = cfg.value.lr or cfg.optim.lr
    train = trainable_parameters  # with LoRA: the adapters (and heads) only
    if isinstance(policy, PolicyWithValueHead):
        groups = [{"params": train(policy.lm)},
                  {"params": train(policy.value_head), "lr": value_lr}]
    else:
        groups = [{"params": train(policy)}]
        if critic is not None:
            groups.append({"params": train(critic), "lr": value_lr})
    optimizer = make_optimizer(groups, cfg.optim)
    total_steps = cfg.batch_plan()["optimizer steps in all"]
    scheduler = make_scheduler(optimizer, cfg.optim, total_steps)
    kl_ctl = (AdaptiveKLController(cfg.kl.coef, cfg.kl.target, cfg.kl.horizon) if cfg.kl.adaptive
              else FixedKLController(cfg.kl.coef))
    gold = FunctionScorer(cfg.log.gold) if cfg.log.gold else None
    return Parts(cfg, device, tokenizer, policy, ref, critic, build_scorer(cfg, tokenizer, device),
                 gold, optimizer, scheduler, kl_ctl, texts, tokens, distributed.world(),
                 use_bf16(cfg.compute, device))


# ---------------------------------------------------------------------------- 1–3: rollout

def prompt_indices(update: int, n_prompts: int, per_update: int, seed: int) -> list[int]:
    """Prompts of update `update`: consecutive slices of one shuffled order per epoch, so the
    data position is a pure function of the update number (resume needs no loader state)."""
    orders, out = {}, []
    for k in range(update * per_update, (update + 1) * per_update):
        epoch, offset = divmod(k, n_prompts)
        if epoch not in orders:
            gen = torch.Generator().manual_seed(seed + 1000 * epoch)
            orders[epoch] = torch.randperm(n_prompts, generator=gen).tolist()
        out.append(orders[epoch][offset])
    return out


def decode_responses(tokenizer, response_ids, response_mask, has_eos) -> list[str]:
    """Response texts without the EOS and the padding after it."""
    lengths = (response_mask.sum(-1) - has_eos.long()).tolist()
    return tokenizer.batch_decode([row[:n] for row, n in zip(response_ids.tolist(), lengths)],
                                  skip_special_tokens=True)


def stop_token_id(tokenizer, stop_token: str | None) -> int:
    """The id that ends a response: the EOS, or the configured `sampling.stop_token`."""
    if stop_token is None:
        return tokenizer.eos_token_id
    ids = tokenizer.convert_tokens_to_ids([stop_token])
    if not ids or ids[0] is None or ids[0] == tokenizer.unk_token_id:
        raise RlhfkitError(f"sampling.stop_token: {stop_token!r} is not a token of the policy's "
                           "tokenizer")
    return ids[0]


def collect_rollout(p: Parts) -> Rollout:
    """Steps 1–3 for this rank's rows of the rollout batch: sample, score, and compute old
    and reference log-probs and values; then gather every rank's rows (all of them, in
    global order, on every rank)."""
    cfg, dev = p.cfg, p.device
    group = cfg.batch.samples_per_prompt
    idx = prompt_indices(p.update, len(p.prompt_texts), cfg.batch.prompts_per_update, cfg.seed)
    idx = [i for i in idx for _ in range(group)]            # G contiguous samples per prompt
    rows = distributed.shard(len(idx), p.world)             # this rank's rows
    local_idx = idx[rows]
    batch = collate_prompts([p.prompt_tokens[i] for i in local_idx], p.tokenizer.pad_token_id)
    prompt_ids, prompt_mask = batch["input_ids"].to(dev), batch["attention_mask"].to(dev)
    s, b = cfg.sampling, cfg.batch
    t0 = time.perf_counter()
    eos = stop_token_id(p.tokenizer, s.stop_token) if s.stop_at_eos else -1  # -1: never stop
    # the whole rollout batch (of this rank) is generated at once
    with out_of_memory_hint(f"generating {len(local_idx)} responses at once",
                            f"batch.prompts_per_update (now {b.prompts_per_update}), "
                            f"batch.samples_per_prompt (now {group}) or sampling.max_new_tokens "
                            f"(now {s.max_new_tokens})"), p.autocast():
        response_ids, response_mask, has_eos = sample_responses(
            p.lm, prompt_ids, prompt_mask,
            Sampling(s.max_new_tokens, s.temperature, s.top_k, s.top_p),
            eos, p.tokenizer.pad_token_id, update_generator(cfg.seed, p.update, SAMPLING, dev),
            row_offset=rows.start, total_rows=len(idx),
            agree=distributed.all_ranks_agree if p.sharded else None)
    t1 = time.perf_counter()
    texts = [p.prompt_texts[i] for i in local_idx]
    responses = decode_responses(p.tokenizer, response_ids, response_mask, has_eos)
    request = ScoreRequest(texts, responses, prompt_ids, prompt_mask, response_ids,
                           response_mask, has_eos)
    no_grad_passes = f"batch.forward_batch_size (now {b.forward_batch_size})"
    with out_of_memory_hint(f"scoring with {p.scorer.name}", no_grad_passes), p.autocast():
        raw = p.scorer(request).to(dev).float()
    scores = raw
    if cfg.reward.missing_eos_penalty and s.stop_at_eos:
        scores = apply_missing_eos_penalty(scores, has_eos, cfg.reward.missing_eos_penalty)
    scores = clip_scores(scores, cfg.reward.clip)
    t2 = time.perf_counter()
    parts = {"prompt_ids": prompt_ids, "prompt_mask": prompt_mask,
             "response_ids": response_ids, "response_mask": response_mask}
    logprobs, ref_logprobs, values = [], [], []
    with out_of_memory_hint("computing old and reference log-probs and values",
                            no_grad_passes), p.autocast():
        for chunk_rows in chunked(len(local_idx), cfg.batch.forward_batch_size):
            chunk = {k: v[chunk_rows] for k, v in parts.items()}
            lp, val, _ = score_tokens(p.policy, chunk, s.temperature, p.critic)
            ref_lp = p.ref_forward(chunk, s.temperature)
            logprobs.append(lp), ref_logprobs.append(ref_lp), values.append(val)
    t3 = time.perf_counter()
    p.timings = {"time/generate": t1 - t0, "time/score": t2 - t1, "time/forward": t3 - t2}
    local = Rollout(texts, responses, prompt_ids, prompt_mask, response_ids, response_mask,
                    has_eos, torch.cat(logprobs), torch.cat(ref_logprobs),
                    torch.cat(values) if cfg.uses_value else None, scores, raw,
                    gold_scores=p.gold(request).to(dev) if p.gold else None)
    return gather_rollout(local, p.tokenizer.pad_token_id)


def gather_rollout(r: Rollout, pad_id: int) -> Rollout:
    """Every rank's rows, in global order, on every rank (one process: `r` itself). Prompts
    are left-padded and responses right-padded to the longest of all ranks; padding never
    changes a masked result, so the global batch is exactly the one-process batch."""
    if not distributed.world().distributed:
        return r
    gather = distributed.all_gather_rows
    texts = [t for part in distributed.all_gather_objects((r.prompts, r.responses))
             for t in zip(*part)]
    optional = lambda x: None if x is None else gather(x)
    return Rollout([t[0] for t in texts], [t[1] for t in texts],
                   gather(r.prompt_ids, pad_id, pad_left=True),
                   gather(r.prompt_mask, 0, pad_left=True), gather(r.response_ids, pad_id),
                   gather(r.response_mask), gather(r.has_eos.long()).bool(), gather(r.logprobs),
                   gather(r.ref_logprobs), optional(r.values), gather(r.scores),
                   gather(r.raw_scores), gold_scores=optional(r.gold_scores))


# ---------------------------------------------------------------------------- 4: advantages

def compute_advantages(rollout: Rollout, cfg: PPOConfig, kl_coef: float) -> None:
    """Fill kl, rewards, advantages and returns of the rollout (no gradients)."""
    mask = rollout.response_mask
    rollout.kl = kl_estimate(rollout.logprobs, rollout.ref_logprobs, cfg.kl_estimator) * mask
    beta_in_reward = 0.0 if cfg.kl_in_loss else kl_coef
    rollout.rewards = per_token_rewards(rollout.scores, rollout.kl, mask, beta_in_reward)
    estimator = ADVANTAGE_ESTIMATORS[cfg.algo]
    advantages, returns = estimator(rollout.rewards, rollout.values, mask, gamma=cfg.loss.gamma,
                                    lam=cfg.loss.lam, group_size=cfg.batch.samples_per_prompt)
    rollout.returns = returns
    rollout.advantages = masked_whiten(advantages, mask) if cfg.whiten else advantages


# ---------------------------------------------------------------------------- 5: train

def micro_batch_loss(p: Parts, mb: dict, normalizer, kl_coef: float) -> tuple[torch.Tensor, dict]:
    """The loss of one micro-batch, scaled so micro-batches sum to the mini-batch loss."""
    cfg = p.cfg
    args = (mb["prompt_ids"], mb["prompt_mask"], mb["response_ids"], mb["response_mask"])
    mask, reduction = mb["response_mask"], cfg.loss.reduction
    with p.autocast():
        logits, values = response_forward(p.policy, *args)
    ids, temperature = mb["response_ids"], cfg.sampling.temperature
    # log-probs and entropy from one float32 copy of the logits; without an entropy bonus
    # the entropy is only logged: no graph through a softmax over the vocabulary
    logprobs, token_entropy = logprobs_and_entropy(logits, ids, temperature,
                                                   entropy_grad=bool(cfg.loss.ent_coef))
    pg_loss, stats = ppo_policy_loss(logprobs, mb["logprobs"], mb["advantages"], mask,
                                     cfg.loss.clip_eps, reduction, normalizer)
    entropy = reduce_loss(token_entropy, mask, reduction, normalizer)
    loss = pg_loss - cfg.loss.ent_coef * entropy
    stats = {"loss/policy": pg_loss.detach(), "policy/entropy": entropy.detach(), **stats}
    if cfg.uses_value:
        if p.critic is not None:
            with p.autocast():
                values = critic_values(p.critic, *args)
        vf_loss, vf_stats = ppo_value_loss(values, mb["values"], mb["returns"], mask,
                                           cfg.loss.value_clip_eps, reduction, normalizer)
        loss = loss + cfg.loss.vf_coef * vf_loss
        stats.update({"loss/value": vf_loss.detach(), **vf_stats})
    if cfg.kl_in_loss:
        kl = kl_estimate(logprobs, mb["ref_logprobs"], cfg.kl_estimator)
        kl_loss = reduce_loss(kl, mask, reduction, normalizer)
        loss = loss + kl_coef * kl_loss
        stats["loss/kl"] = kl_loss.detach()
    return loss, stats


GLOBALLY_NORMALISED = ("loss/policy", "loss/value", "loss/kl", "policy/entropy")


def trainable(p: Parts) -> list[torch.nn.Parameter]:
    return [q for g in p.optimizer.param_groups for q in g["params"]]


def optimizer_step(p: Parts, rows: torch.Tensor, rollout: Rollout, kl_coef: float) -> dict | None:
    """One mini-batch (`rows` of the global rollout): this rank accumulates the gradients of
    its share, micro-batch by micro-batch; the gradients are summed over ranks, clipped and
    applied. None when skipped (on every rank alike)."""
    cfg = p.cfg
    mask = rollout.response_mask[rows]
    # the global normaliser: every rank divides by the count of the whole mini-batch
    normalizer = mask.sum() if cfg.loss.reduction == "token_mean" else len(rows)
    local_rows = rows[distributed.shard(len(rows), p.world)]
    stats_list, problem = [], None
    train_mode(p, True)
    for micro in local_rows.split(cfg.batch.micro_batch_size):
        with out_of_memory_hint("training (forward and backward of a micro-batch)",
                                f"batch.micro_batch_size (now {cfg.batch.micro_batch_size}; "
                                "the mini-batch stays the same through gradient accumulation)"):
            loss, stats = micro_batch_loss(p, select(rollout, micro), normalizer, kl_coef)
            if not torch.isfinite(loss):
                problem = problem or nonfinite_terms(p, stats)
            # backward even then (the step is skipped): sharded models need every rank's
            # passes, and the gradients are thrown away
            loss.backward()
        # loss terms already carry the mini-batch normaliser and add up over micro-batches
        # (and ranks); the other statistics are micro-batch means, weighted by their share
        stats_list.append({k: float(v) * (1 if k in GLOBALLY_NORMALISED else len(micro) / len(rows))
                           for k, v in stats.items()})
    train_mode(p, False)
    if not distributed.all_ranks_agree(problem is None):
        return skip(p, problem or "non-finite loss on another process")
    distributed.all_reduce_grads(trainable(p))
    grad_norm = clip_grad_norm(trainable(p), cfg.optim.max_grad_norm)
    if not torch.isfinite(grad_norm):
        return skip(p, nonfinite_gradient(p))
    p.optimizer.step()
    p.optimizer.zero_grad(set_to_none=True)
    p.scheduler.step()
    keys = list(stats_list[0])
    summed = dict(zip(keys, distributed.all_reduce_sum([sum(s[k] for s in stats_list)
                                                        for k in keys])))
    summed["grad_norm"] = float(grad_norm)
    return summed


def train_mode(p: Parts, on: bool) -> None:
    """Gradient checkpointing acts only in train mode; dropout is off in every model, so
    train and eval mode compute the same. Without checkpointing the models stay in eval."""
    if p.cfg.compute.gradient_checkpointing:
        for model in (p.policy, p.critic):
            if model is not None:
                model.train(on)


def value_model_name(p: Parts) -> str:
    return "critic" if p.critic is not None else "value head"


def nonfinite_terms(p: Parts, stats: dict) -> str:
    """Which loss terms of which model are NaN or infinite, e.g. 'value loss of the critic
    is inf'."""
    names = {"loss/policy": "policy loss of the policy",
             "loss/value": f"value loss of the {value_model_name(p)}",
             "loss/kl": "KL loss of the policy (against the reference model)",
             "policy/entropy": "entropy of the policy"}
    bad = [f"{names[k]} is {float(v)}" for k, v in stats.items()
           if k in names and not torch.isfinite(v)]
    return "non-finite " + ("; ".join(bad) if bad else "total loss")


def nonfinite_gradient(p: Parts) -> str:
    """Which model's gradient is NaN or infinite, and its first such parameter."""
    models = [("policy", p.lm)]
    if isinstance(p.policy, PolicyWithValueHead):
        models.append(("value head", p.policy.value_head))
    if p.critic is not None:
        models.append(("critic", p.critic))
    for name, model in models:
        bad = nonfinite_grad(model.named_parameters())
        if bad is not None:
            return f"non-finite gradient of the {name} (first at {bad})"
    return "non-finite gradient norm"


def skip(p: Parts, reason: str) -> None:
    p.optimizer.zero_grad(set_to_none=True)
    p.last_skip = reason
    log.warning("update %d: skipped an optimizer step: %s", p.update + 1, reason)
    p.timings["skipped_steps"] = p.timings.get("skipped_steps", 0) + 1
    return None


def train_on_rollout(p: Parts, rollout: Rollout, kl_coef: float) -> dict:
    """Step 5: num_epochs passes over the rollout in shuffled mini-batches."""
    cfg, n = p.cfg, len(rollout)
    mini = n // cfg.batch.num_mini_batches
    history = []
    shuffle = update_generator(cfg.seed, p.update, SHUFFLE)
    for _ in range(cfg.num_epochs):
        # one global order: rank r trains on its share of each mini-batch
        order = torch.randperm(n, generator=shuffle).to(rollout.response_ids.device)
        for start in range(0, n, mini):
            stats = optimizer_step(p, order[start:start + mini], rollout, kl_coef)
            if stats is not None:
                history.append(stats)
        if cfg.loss.early_stop_kl and history and history[-1]["approx_kl"] > cfg.loss.early_stop_kl:
            break
    if not history:
        return {}
    return {k: sum(h[k] for h in history) / len(history) for k in history[0]}


# ---------------------------------------------------------------------------- 6: bookkeeping

def rollout_metrics(r: Rollout, kl_coef: float) -> dict[str, float]:
    """Metrics of the rollout itself. Sign convention (docs/metrics.md): `kl/mean` is the
    mean over sequences of Σ_t (log π_old − log π_ref) estimates; `reward/non_score` is the
    mean over sequences of the summed −β·KL terms in the reward."""
    mask = r.response_mask
    seq_kl = (r.kl * mask).sum(-1)
    m = {"score/mean": r.scores.mean(), "score/std": r.scores.std() if len(r) > 1 else 0.0,
         "score/raw_mean": r.raw_scores.mean(), "kl/mean": seq_kl.mean(), "kl/coef": kl_coef,
         "reward/total": (r.rewards * mask).sum(-1).mean(),
         "reward/non_score": (r.rewards * mask).sum(-1).mean() - r.scores.mean(),
         "advantages/mean": masked_mean(r.advantages, mask),
         "advantages/std": masked_var(r.advantages, mask, unbiased=False).sqrt(),
         "response/length": mask.sum(-1).float().mean(),
         "response/no_eos_frac": (~r.has_eos).float().mean()}
    if r.gold_scores is not None:
        m["gold/mean"] = r.gold_scores.mean()
    if r.returns is not None:
        m["returns/mean"] = masked_mean(r.returns, mask)
        m["returns/std"] = masked_var(r.returns, mask, unbiased=False).sqrt()
        m["value/explained_variance"] = explained_variance(r.values, r.returns, mask)
    return {k: float(v) for k, v in m.items()}


def save_samples(p: Parts, r: Rollout) -> None:
    """Append the first samples, with token-level rewards, values, advantages and KL, to
    RUN_DIR/samples.jsonl (the report's token views read them), and print a table."""
    n = min(p.cfg.log.num_samples, len(r))
    rows = []
    with open(Path(p.cfg.out) / "samples.jsonl", "a", encoding="utf-8") as f:
        for b in range(n):
            length = int(r.response_mask[b].sum())
            per_token = lambda x: None if x is None else [round(float(v), 5) for v in x[b, :length]]
            row = {"step": p.update, "prompt": r.prompts[b], "response": r.responses[b],
                   "score": float(r.scores[b]), "kl": float((r.kl[b] * r.response_mask[b]).sum()),
                   "tokens": p.tokenizer.convert_ids_to_tokens(r.response_ids[b, :length].tolist()),
                   "rewards": per_token(r.rewards), "values": per_token(r.values),
                   "advantages": per_token(r.advantages), "token_kl": per_token(r.kl)}
            f.write(json.dumps(row) + "\n")
            rows.append({"prompt": row["prompt"][-40:], "response": row["response"],
                         "score": row["score"], "kl": row["kl"]})
    if rows:
        log.info("samples at update %d:\n%s", p.update,
                 console_table(rows, ["prompt", "response", "score", "kl"]))


def write_checkpoint(p: Parts) -> Path:
    # Weights that are no longer finite are never checkpointed: the newest checkpoint must
    # stay the last good one. (Each rank checks its shard; all stop if one finds a bad one.)
    for name, model in (("policy", p.policy), ("critic", p.critic)):
        bad = nonfinite_parameter(model) if model is not None else None
        if not distributed.all_ranks_agree(bad is None):
            stop_run(p, f"the weights of the {name} are not finite after update {p.update} "
                        f"(first: {bad or 'on another process'}), so no checkpoint was "
                        "written of them")
    # sharded (FSDP) models and optimizer state are gathered on rank 0 first, by all ranks
    policy_state, critic_state = map(distributed.full_state_dict, (p.policy, p.critic))
    optimizer_state = distributed.full_optimizer_state(p.trained_modules, p.optimizer)

    def write(folder: Path) -> None:
        save_model(p.policy, folder / "policy", p.tokenizer, "adapter", policy_state)
        if p.critic is not None:
            save_model(p.critic, folder / "value", p.tokenizer, "adapter", critic_state)
        save_trainer_state(folder, p.optimizer, p.scheduler,
                           extra={"update": p.update, "kl_ctl": p.kl_ctl.state_dict(),
                                  "bad_in_a_row": p.bad_in_a_row},
                           optimizer_state=optimizer_state)
    return distributed.on_main(save_checkpoint, p.cfg.out, p.update, write, p.cfg.log.keep_last)


def save_model(model, folder: Path, tokenizer, lora_save: str, state: dict | None = None) -> None:
    """A model and its tokenizer; a LoRA model as its adapter or merged (`lora_save`); a
    sharded model from its gathered `state` (`distributed.full_state_dict`)."""
    if is_lora(model):
        save_lora_model(model, folder, lora_save)
    elif state is not None:
        save_gathered(model, folder, state)
    else:
        model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def save_gathered(model, folder: Path, state: dict) -> None:
    """Save a sharded rlhfkit model from its gathered state dict, in the folder layout its
    own `save_pretrained` writes (transformers' files, plus the value head)."""
    part = lambda prefix: {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    if isinstance(model, PolicyWithValueHead):
        save_hf(model.lm, folder, part("lm."))
        save_file({k: v.contiguous() for k, v in part("value_head.").items()},
                  str(folder / VALUE_HEAD_FILE))
    elif isinstance(model, ValueModel):
        save_hf(model.model, folder, part("model."))
    else:
        save_hf(model, folder, state)


def save_hf(model, folder: Path, state: dict) -> None:
    """`save_pretrained` from a gathered state: the gathered copies of tied weights (GPT-2's
    output layer is its input embedding) are separate tensors, so keep only the first name."""
    first = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        first.setdefault(id(param), name)
    tied = {name for name, param in model.named_parameters(remove_duplicate=False)
            if first[id(param)] != name}
    model.save_pretrained(folder, state_dict={k: v for k, v in state.items() if k not in tied})


def restore(p: Parts, folder: Path) -> None:
    load = lambda state: distributed.load_full_optimizer_state(p.trained_modules,
                                                               p.optimizer, state)
    state = load_trainer_state(folder, p.optimizer, p.scheduler, load_optimizer=load)
    p.update, p.bad_in_a_row = state["update"], state["bad_in_a_row"]
    p.kl_ctl.load_state_dict(state["kl_ctl"])
    distributed.on_main(drop_lines_after, p.cfg.out, p.update)


def drop_lines_after(run_dir, update: int) -> None:
    """Metrics and samples a killed run logged after its last checkpoint will be logged
    again by the resumed run: drop them (all of them, update 0, without a checkpoint)."""
    truncate_jsonl(Path(run_dir) / "metrics.jsonl", update)
    truncate_jsonl(Path(run_dir) / "samples.jsonl", update)


def truncate_jsonl(path: Path, last_step: int) -> None:
    """Drop the lines a killed run wrote after its last checkpoint (they will be redone).
    The file is replaced atomically, so a kill during the truncation loses nothing."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line)["step"] <= last_step:
                kept.append(line)
        except (ValueError, KeyError, TypeError):
            break  # a line cut by the kill: everything after it is gone too
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(k + "\n" for k in kept), encoding="utf-8")
    os.replace(tmp, path)


def rollout_problem(p: Parts, r: Rollout) -> tuple[str, str] | None:
    """(what is not finite, its kind) for the scores, the policy's and the reference
    model's log-probs and the values of a rollout; None when all are finite."""
    problem = nonfinite_message(r.raw_scores, p.scorer.name)
    if problem:
        return problem, "scores"
    mask = r.response_mask.bool()
    for tensor, what in ((r.logprobs, "log-probabilities of the policy"),
                         (r.ref_logprobs, "log-probabilities of the reference model"),
                         (r.values, f"values of the {value_model_name(p)}")):
        bad = (~torch.isfinite(tensor) & mask).sum() if tensor is not None else 0
        if bad:
            return f"{int(bad)} {what} are not finite", "model outputs"
    return None


def stop_run(p: Parts, what: str) -> None:
    """Stop the run: what went wrong, the last good checkpoint, and what to try."""
    last = latest_checkpoint(p.cfg.out, quiet=True)
    kept = f"the last good checkpoint, {last}, is intact" if last else "no checkpoint yet"
    clip = f"now {p.cfg.reward.clip:g}" if p.cfg.reward.clip else "now off"
    raise RlhfkitError(
        f"stopped after {what}; {kept}. Try a lower learning rate (optim.lr, now "
        f"{p.cfg.optim.lr:g}), reward clipping (reward.clip, {clip}) and check "
        f"{p.scorer.name}; then start again with overwrite=true (resume=true continues from "
        "that checkpoint with the same settings)")


def bad_update(p: Parts, problem: str, kind: str) -> None:
    """Count an update skipped for non-finite values; max_bad_updates in a row stop the run."""
    p.bad_in_a_row += 1
    log.warning("update %d skipped: %s", p.update + 1, problem)
    if p.bad_in_a_row >= p.cfg.log.max_bad_updates:
        stop_run(p, f"{p.bad_in_a_row} updates in a row with non-finite {kind} (last: "
                    f"{problem})")


def one_update(p: Parts, logger: MetricsLogger) -> None:
    """Steps 1–6 once."""
    start, kl_coef = time.perf_counter(), p.kl_ctl.value
    rollout = collect_rollout(p)
    problem = rollout_problem(p, rollout)
    if problem:
        bad_update(p, *problem)
        p.update += 1
        return
    compute_advantages(rollout, p.cfg, kl_coef)
    t0 = time.perf_counter()
    train_stats = train_on_rollout(p, rollout, kl_coef)
    p.timings["time/train"] = time.perf_counter() - t0
    if train_stats:
        p.bad_in_a_row = 0
    else:
        bad_update(p, f"every optimizer step was skipped (last: {p.last_skip})",
                   "losses or gradients")
    metrics = rollout_metrics(rollout, kl_coef)
    p.kl_ctl.update(metrics["kl/mean"], len(rollout))
    n_tokens = int(rollout.response_mask.sum())
    p.timings["time/update"] = time.perf_counter() - start
    metrics.update(train_stats)
    metrics.update(p.timings)
    metrics["tokens_per_s"] = n_tokens / p.timings["time/update"]
    metrics["lr"] = p.scheduler.get_last_lr()[0]
    p.update += 1
    logger.log(p.update, metrics)
    if p.world.is_main and (p.update % p.cfg.log.sample_every == 0 or p.update == 1):
        save_samples(p, rollout)


def train(cfg: PPOConfig) -> Parts:
    """Run (or resume) the RL stage; returns the parts of the finished run."""
    setup_logging()  # console only, until the run folder exists
    # a bad prompt file fails here, before any model is loaded or any folder written
    tokenizer = load_tokenizer(cfg.policy, cfg.trust_remote_code)
    data = (tokenizer, *load_data(cfg, tokenizer))
    world, device = start_world(cfg)
    cfg.batch_plan(world.world_size)  # sizes that do not divide over the processes fail here
    run_dir = prepare_run_dir(cfg.out, cfg.overwrite, cfg.resume, cfg)
    setup_logging(run_dir)
    resume_from = None
    if cfg.resume:
        assert_same_config(run_dir / "config.yaml", cfg, ignore=("resume", "overwrite", "log"))
        resume_from = latest_checkpoint(run_dir)
        if resume_from is None:
            log.warning("no whole checkpoint in %s: starting from the beginning", run_dir)
    on = f"{world.world_size} processes ({device.type})" if world.distributed else device
    log.info("rlhfkit %s on %s; config in %s", cfg.algo, on, run_dir / "config.yaml")
    log.debug("config:\n%s", describe_config(cfg))
    p = build(cfg, device, resume_from, data)
    if resume_from is not None:
        restore(p, resume_from)
        log.info("resumed from %s (update %d)", resume_from, p.update)
    elif cfg.resume:
        distributed.on_main(drop_lines_after, run_dir, 0)
    log.info("batch plan: %s", ", ".join(f"{k} {v}" for k, v in
                                         cfg.batch_plan(world.world_size).items()))
    with MetricsLogger(run_dir, rank0=world.is_main, tensorboard=cfg.log.tensorboard,
                       wandb=cfg.log.wandb, config=cfg) as logger:
        from tqdm.auto import tqdm
        # closed even when the run stops with an error, so the error is the last line
        with tqdm(total=cfg.batch.num_updates, initial=p.update, desc=cfg.algo,
                  unit="update", disable=not world.is_main) as bar:
            while p.update < cfg.batch.num_updates:
                one_update(p, logger)
                bar.update(1)
                if p.update % cfg.log.save_every == 0 or p.update == cfg.batch.num_updates:
                    write_checkpoint(p)

    policy_state = distributed.full_state_dict(p.policy)  # all ranks, when sharded

    def write_final(folder: Path) -> None:
        save_model(p.policy, folder, p.tokenizer, cfg.lora.save, policy_state)
    final = distributed.on_main(write_folder, Path(cfg.out) / "policy", write_final,
                                "the final policy")
    log.info("policy saved to %s", final)
    return p


def main(cfg: PPOConfig) -> int:
    """`rlhfkit ppo`: the command-line entry point."""
    return distributed.run_then_shutdown(train, cfg)
