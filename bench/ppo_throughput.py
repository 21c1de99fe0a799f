#!/usr/bin/env python3
"""Throughput of rlhfkit's RL stage on a folder of tiny offline models (issue #7).

The same work as the TRL baselines in shared/bench/ (`trl_ppo_baseline.py`,
`trl_grpo_baseline.py`) on the folder `make_tiny_models.py OUT` writes:

    ppo   64 rollouts x exactly 32 new tokens per update (no stop token), 4 PPO epochs x 4
          mini-batches of 16 (16 AdamW steps), temperature 0.7, k1 KL 0.05 in the reward,
          fp32, a separate value model started from OUT/value (TRL 1.12 PPOTrainer).
    grpo  16 prompts x 4 completions x 32 tokens, 4 passes x 4 mini-batches of 16
          (16 AdamW steps), k3 KL 0.05 as a loss, fp32 (TRL 1.16 GRPOTrainer).

Printed: the per-update median time (updates 2..N; the first is warm-up) split into
generation, scoring + reference + old-policy/value passes, and training; generated tokens/s;
the training phase's achieved matmul FLOP/s and its fraction of this machine's matmul peak
(a 2048x2048 product timed in this process before and after the run, the better time
kept); peak RSS; and a last line `RESULT {json}`.

    python bench/ppo_throughput.py --models ../bench-models/tiny-s --updates 20
    python bench/ppo_throughput.py --models DIR --shared-value-head --bf16   # fast settings
    python bench/ppo_throughput.py --models DIR --algo grpo

Each update also records the CPU time other processes used meanwhile (`foreign_cpu_cores`):
on a 2-core machine one busy neighbour can slow a 2-thread torch run many times over.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TQDM_DISABLE", "1")

PHASES = ("time/generate", "time/score", "time/forward", "time/train", "time/update")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", required=True, help="folder written by make_tiny_models.py")
    p.add_argument("--algo", choices=("ppo", "grpo"), default="ppo")
    p.add_argument("--updates", type=int, default=10, help="updates (>= 2; the first is warm-up)")
    p.add_argument("--batch-size", type=int, default=64, help="rollouts per update")
    p.add_argument("--group-size", type=int, default=4, help="grpo: completions per prompt")
    p.add_argument("--response-length", type=int, default=32)
    p.add_argument("--num-ppo-epochs", type=int, default=4)
    p.add_argument("--num-mini-batches", type=int, default=4)
    p.add_argument("--micro-batch-size", type=int, default=None,
                   help="rows per forward/backward (default: the whole mini-batch)")
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--kl-coef", type=float, default=0.05)
    p.add_argument("--learning-rate", type=float, default=3e-6)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--bf16", action="store_true", help="bf16 autocast, fp32 master weights")
    p.add_argument("--shared-value-head", action="store_true",
                   help="value head on the policy trunk (value.kind=head) instead of a critic")
    p.add_argument("--stop-at-eos", action="store_true", help="end responses at EOS (default: "
                   "always --response-length tokens, as the baselines)")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any further rlhfkit config override (repeatable)")
    p.add_argument("--out", default=None, help="run folder (default: a temporary one)")
    p.add_argument("--json-out", default=None, help="also write the RESULT dict here")
    p.add_argument("--peak-seconds", type=float, default=1.0,
                   help="time spent measuring the matmul peak (per dtype, before and after the run)")
    p.add_argument("--compare-generate", action="store_true",
                   help="also time transformers' generate() on the same model and batch")
    p.add_argument("--profile", default=None, metavar="FILE",
                   help="write a cProfile of the whole training run to FILE")
    return p.parse_args(argv)


# ---------------------------------------------------------------------------- set-up

def stage_models(models: Path, where: Path) -> Path:
    """rlhfkit reads a model and its tokenizer from one folder; make_tiny_models.py keeps the
    tokenizer apart. Link both into where/{policy,reward,value} (no copies)."""
    for name in ("policy", "reward", "value"):
        folder = where / name
        folder.mkdir(parents=True, exist_ok=True)
        for source in [*(models / name).iterdir(), *(models / "tokenizer").iterdir()]:
            link = folder / source.name
            if not link.exists():
                link.symlink_to(source.resolve())
    return where


def build_config(a: argparse.Namespace, staged: Path, run_dir: Path):
    """The rlhfkit config doing the baselines' work (see the module docstring)."""
    from rlhfkit.config import load_config
    from rlhfkit.recipes.ppo_config import PPOConfig
    group = a.group_size if a.algo == "grpo" else 1
    mini = a.batch_size // a.num_mini_batches
    overrides = [
        f"policy={staged / 'policy'}", f"prompts={Path(a.models) / 'prompts.jsonl'}",
        f"out={run_dir}", "overwrite=true", "device=cpu", f"algo={a.algo}", f"seed={a.seed}",
        f"reward.model={staged / 'reward'}", "reward.normalize=false",
        "reward.missing_eos_penalty=null",
        f"batch.prompts_per_update={a.batch_size // group}", f"batch.samples_per_prompt={group}",
        f"batch.num_mini_batches={a.num_mini_batches}",
        f"batch.micro_batch_size={a.micro_batch_size or mini}",
        f"batch.forward_batch_size={a.batch_size}", f"batch.num_updates={a.updates}",
        f"loss.num_epochs={a.num_ppo_epochs}", f"kl.coef={a.kl_coef}",
        f"sampling.max_new_tokens={a.response_length}", f"sampling.temperature={a.temperature}",
        f"sampling.stop_at_eos={str(a.stop_at_eos).lower()}",
        f"optim.lr={a.learning_rate}", "optim.max_grad_norm=null",  # TRL 1.12 PPO: no clipping
        "log.sample_every=100000", "log.save_every=100000", "log.num_samples=0",
    ]
    if a.algo == "ppo":
        overrides += ["value.kind=head"] if a.shared_value_head else \
            ["value.kind=critic", f"value.model={staged / 'value'}"]
    cfg = load_config(PPOConfig, None, overrides + list(a.set))
    if a.bf16:
        set_bf16(cfg)
    return cfg


def set_bf16(cfg) -> None:
    """Turn on bf16 autocast where this rlhfkit version has the setting."""
    for holder in (cfg, getattr(cfg, "compute", None)):
        if holder is not None and hasattr(holder, "precision"):
            holder.precision = "bf16"
            return
    raise SystemExit("--bf16: this rlhfkit has no `precision` setting in its PPO config yet")


def precision_of(cfg) -> str:
    for holder in (cfg, getattr(cfg, "compute", None)):
        if holder is not None and hasattr(holder, "precision"):
            return str(holder.precision)
    return "fp32"


# ---------------------------------------------------------------------------- measures

def matmul_peak(dtype_name: str, n: int = 2048, seconds: float = 1.0) -> float:
    """FLOP/s of an n x n x n matrix product in `dtype` (best of repeated timings)."""
    import torch
    dtype = getattr(torch, dtype_name)
    x, y = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    torch.mm(x, y)  # warm-up (oneDNN / AMX kernels are set up on the first call)
    best, spent = float("inf"), 0.0
    while spent < seconds:
        t = time.perf_counter()
        torch.mm(x, y)
        dt = time.perf_counter() - t
        best, spent = min(best, dt), spent + dt
    return 2 * n ** 3 / best


def matmul_peaks(cfg, seconds: float) -> tuple[float, float]:
    """(fp32 peak, peak of the precision the run trains in) in FLOP/s."""
    peak32 = matmul_peak("float32", seconds=seconds)
    if precision_of(cfg) != "bf16":
        return peak32, peak32
    return peak32, matmul_peak("bfloat16", seconds=seconds)


def forward_flops_per_row(cfg_model, length: int, kept: int, with_lm_head: bool) -> float:
    """Matmul FLOPs of one GPT-style forward over a row of `length` tokens: 24·d² per token
    per layer (qkv, proj, 4x MLP), 4·L·d per token per layer (QKᵀ and AV against all L keys),
    and 2·d·V for each of the `kept` positions whose logits are computed."""
    d, n_layer = cfg_model.n_embd, cfg_model.n_layer
    per_token = n_layer * (24 * d * d + 4 * length * d)
    head = 2 * d * cfg_model.vocab_size * kept if with_lm_head else 2 * d * length
    return length * per_token + head


def train_flops_per_update(parts, prompt_len: float) -> float:
    """Matmul FLOPs of the training phase of one update: forward + backward (= 3 forwards)
    of the policy (logits of T+1 positions) and, with a separate critic, of the critic, over
    num_epochs passes of the rollout batch. Gradient-free embedding lookups are not counted."""
    cfg = parts.cfg
    rows = cfg.batch.prompts_per_update * cfg.batch.samples_per_prompt
    t = cfg.sampling.max_new_tokens
    length = int(round(prompt_len)) + t
    per_row = forward_flops_per_row(parts.lm.config, length, t + 1, True)
    if parts.critic is not None:
        per_row += forward_flops_per_row(parts.critic.config, length, 0, False)
    return 3 * per_row * rows * cfg.num_epochs


def compare_generate(parts, reps: int = 5) -> dict:
    """Generated tokens/s of rlhfkit's `sample_responses` and of transformers' `generate()`
    on the same policy and batch (the first rollout-batch-sized slice of the prompts):
    exactly max_new_tokens tokens per row, same temperature, no top-k/top-p. Medians."""
    import torch
    from rlhfkit.data import collate_prompts
    from rlhfkit.generation import Sampling, sample_responses
    cfg, lm, pad = parts.cfg, parts.lm, parts.tokenizer.pad_token_id
    n_rows = cfg.batch.prompts_per_update * cfg.batch.samples_per_prompt
    batch = collate_prompts(parts.prompt_tokens[:n_rows], pad)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    s = cfg.sampling
    sampling = Sampling(s.max_new_tokens, s.temperature)

    def ours():
        sample_responses(lm, ids, mask, sampling, -1, pad, torch.Generator().manual_seed(0))

    def theirs():
        lm.generate(input_ids=ids, attention_mask=mask, do_sample=True,
                    temperature=s.temperature, top_k=0, top_p=1.0,
                    max_new_tokens=s.max_new_tokens, min_new_tokens=s.max_new_tokens,
                    pad_token_id=pad)

    times = {"rlhfkit": [], "transformers": []}
    with torch.no_grad():
        for _ in range(reps + 1):  # the first round is warm-up
            for name, fn in (("rlhfkit", ours), ("transformers", theirs)):
                t = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t)
    tokens = n_rows * s.max_new_tokens
    rates = {k: tokens / statistics.median(v[1:]) for k, v in times.items()}
    return {"generate_tokens_per_s_rlhfkit_loop": rates["rlhfkit"],
            "generate_tokens_per_s_transformers": rates["transformers"],
            "generate_speedup_vs_transformers": rates["rlhfkit"] / rates["transformers"]}


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cpu_sample() -> tuple[float, float]:
    """(CPU seconds the whole machine was busy, CPU seconds of this process)."""
    with open("/proc/stat") as f:
        fields = [float(v) for v in f.readline().split()[1:]]
    hz = os.sysconf("SC_CLK_TCK")
    busy = (sum(fields[:8]) - fields[3] - fields[4]) / hz  # all but idle and iowait
    own = resource.getrusage(resource.RUSAGE_SELF)
    return busy, own.ru_utime + own.ru_stime


# ---------------------------------------------------------------------------- run

def run(a: argparse.Namespace) -> dict:
    import torch
    torch.set_num_threads(a.threads)
    import rlhfkit
    from rlhfkit.metrics import read_metrics
    from rlhfkit.recipes import ppo

    tmp = tempfile.TemporaryDirectory(prefix="rlhfkit-bench-")
    staged = stage_models(Path(a.models).resolve(), Path(tmp.name) / "models")
    run_dir = Path(a.out) if a.out else Path(tmp.name) / "run"
    cfg = build_config(a, staged, run_dir)

    # Time every update from outside, with the CPU other processes used meanwhile.
    samples, prompt_lens, first = [cpu_sample()], [], {}
    one_update = ppo.one_update

    def timed_update(p, logger):
        one_update(p, logger)
        samples.append(cpu_sample())
        first.setdefault("parts", p)

    collect = ppo.collect_rollout

    def measured_collect(p):
        rollout = collect(p)
        prompt_lens.append(rollout.prompt_ids.shape[1])
        return rollout

    # The peak is measured before and after the run and the better figure kept: on a shared
    # host it drifts (72 to 118 GFLOP/s within a minute here), and the lower figure would
    # flatter the training phase's fraction of it.
    peaks = matmul_peaks(cfg, a.peak_seconds)
    ppo.one_update, ppo.collect_rollout = timed_update, measured_collect
    t0 = time.perf_counter()
    try:
        if a.profile:
            import cProfile
            cProfile.runctx("ppo.train(cfg)", globals(), {"ppo": ppo, "cfg": cfg}, a.profile)
        else:
            ppo.train(cfg)
    finally:
        ppo.one_update, ppo.collect_rollout = one_update, collect
    total_s = time.perf_counter() - t0
    rows = read_metrics(run_dir)
    rss = peak_rss_mib()  # before the second peak measurement's matrices
    peaks = tuple(map(max, peaks, matmul_peaks(cfg, a.peak_seconds)))
    return summarize(a, cfg, rows, samples, prompt_lens, first["parts"], total_s, peaks, rss,
                     rlhfkit, torch)


def summarize(a, cfg, rows, samples, prompt_lens, parts, total_s, peaks, rss, rlhfkit, torch
              ) -> dict:
    """The RESULT dict: medians over updates 2..N."""
    def med(key):
        return statistics.median(r[key] for r in rows[1:])
    upd = [r["time/update"] for r in rows]
    foreign = [max(0.0, (b1 - b0) - (o1 - o0)) / u for (b0, o0), (b1, o1), u
               in zip(samples[:-1], samples[1:], upd)]
    own_cpu = [o1 - o0 for (_, o0), (_, o1) in zip(samples[:-1], samples[1:])]
    n_rows = cfg.batch.prompts_per_update * cfg.batch.samples_per_prompt
    tokens = statistics.fmean(r["response/length"] for r in rows[1:]) * n_rows
    flops = train_flops_per_update(parts, statistics.fmean(prompt_lens[1:]))
    train_s = med("time/train")
    peak32, peak = peaks
    res = {
        "library": "rlhfkit", "rlhfkit": rlhfkit.__version__, "torch": torch.__version__,
        "algo": cfg.algo, "threads": torch.get_num_threads(), "precision": precision_of(cfg),
        "value": ("head" if a.shared_value_head else "critic") if cfg.algo == "ppo" else None,
        "stop_at_eos": a.stop_at_eos, "models": str(a.models),
        "policy_params": sum(q.numel() for q in parts.lm.parameters()),
        "updates": len(rows), "rollouts_per_update": n_rows, "padded_prompt_len_mean": statistics.fmean(prompt_lens[1:]),
        "total_wall_s": total_s, "first_update_s": upd[0],
        "update_s_median": med("time/update"), "update_s_min": min(upd[1:]),
        "update_s_max": max(upd[1:]),
        "generate_s_median": med("time/generate"), "score_s_median": med("time/score"),
        "forward_s_median": med("time/forward"),
        "rollout_phase_s_median": statistics.median(
            r["time/generate"] + r["time/score"] + r["time/forward"] for r in rows[1:]),
        "train_s_median": train_s,
        "generated_tokens_per_update": tokens,
        "generate_tokens_per_s": tokens / med("time/generate"),
        "end_to_end_tokens_per_s": tokens / med("time/update"),
        "train_flops_per_update": flops, "train_flops_per_s": flops / train_s,
        "matmul_peak_flops_fp32": peak32, "matmul_peak_flops": peak,
        "train_flops_fraction": flops / train_s / peak,
        "peak_rss_mib": rss,
        "score_first3": statistics.fmean(r["score/mean"] for r in rows[:3]),
        "score_last3": statistics.fmean(r["score/mean"] for r in rows[-3:]),
        "per_update_score": [r["score/mean"] for r in rows],
        "own_cpu_s_median": statistics.median(own_cpu[1:]),
        "foreign_cpu_cores_max": max(foreign[1:] or foreign),
        "noisy_updates": [k + 1 for k, f in enumerate(foreign) if f > 0.1],
        "per_update_s": upd, "per_update_foreign_cpu_cores": foreign,
        "loadavg": open("/proc/loadavg").read().split()[:3],
    }
    if a.compare_generate:
        res.update(compare_generate(parts))
    return res


def report(res: dict) -> None:
    r = res
    print(f"\n== rlhfkit {r['rlhfkit']} {r['algo'].upper()} on CPU ({r['threads']} threads), "
          f"torch {r['torch']}, {r['precision']}, value: {r['value']}, "
          f"{r['policy_params'] / 1e6:.2f} M params/model")
    print(f"{r['updates']} updates x {r['rollouts_per_update']} rollouts; padded prompt "
          f"{r['padded_prompt_len_mean']:.1f} tokens; {r['generated_tokens_per_update']:.0f} "
          f"new tokens/update")
    print(f"time per update (median):   {r['update_s_median']:8.3f} s  (min {r['update_s_min']:.3f},"
          f" max {r['update_s_max']:.3f}; first {r['first_update_s']:.3f})")
    print(f"  generate:                 {r['generate_s_median']:8.3f} s")
    print(f"  score + ref/old/values:   {r['score_s_median'] + r['forward_s_median']:8.3f} s  "
          f"(reward model {r['score_s_median']:.3f}, policy/ref/value passes "
          f"{r['forward_s_median']:.3f})")
    print(f"  train:                    {r['train_s_median']:8.3f} s")
    print(f"generate tokens/s:          {r['generate_tokens_per_s']:8.0f}  "
          f"(end to end {r['end_to_end_tokens_per_s']:.0f})")
    print(f"train matmul FLOP/s:        {r['train_flops_per_s'] / 1e9:8.1f} G = "
          f"{100 * r['train_flops_fraction']:.1f} % of the {r['matmul_peak_flops'] / 1e9:.0f} "
          f"GFLOP/s {r['precision']} matmul peak measured here")
    if "generate_speedup_vs_transformers" in r:
        print(f"generate() comparison:      {r['generate_tokens_per_s_rlhfkit_loop']:8.0f} tokens/s "
              f"(rlhfkit) vs {r['generate_tokens_per_s_transformers']:.0f} (transformers "
              f"generate()): {r['generate_speedup_vs_transformers']:.2f}x")
    print(f"peak RSS:                   {r['peak_rss_mib']:8.0f} MiB")
    print(f"score: first 3 updates {r['score_first3']:.4f}, last 3 {r['score_last3']:.4f}")
    if r["noisy_updates"]:
        print(f"MACHINE NOT QUIET: updates {r['noisy_updates']} saw up to "
              f"{r['foreign_cpu_cores_max']:.2f} other busy cores; timings are not comparable")


def main(argv=None) -> int:
    a = parse_args(argv)
    if a.updates < 2:
        raise SystemExit("--updates: at least 2 (the first update is warm-up)")
    res = run(a)
    report(res)
    if a.json_out:
        Path(a.json_out).write_text(json.dumps(res, indent=1))
    print("RESULT " + json.dumps(res), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
