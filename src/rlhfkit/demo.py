"""`rlhfkit demo`: the whole RLHF pipeline on a built-in world, from nothing, on a CPU.

    1. data       a synthetic corpus, prompts for RL and held-out prompts for evaluation
    2. base model a byte-level BPE tokenizer and a random tiny GPT-2, trained offline
    3. SFT        supervised fine-tuning on the corpus (the demonstrations)
    4. feedback   (sentiment) 4 SFT samples per prompt; a simulated, biased human labels
                  each of their 6 pairs
    5. reward     (sentiment) a Bradley–Terry reward model on those labels, its score
                  summed over the review's tokens
    6. RL         PPO (or the chosen algorithm) against the reward, KL-penalised to the SFT
                  model, its scores clipped, with an entropy bonus; for sentiment also an
                  over-optimised run with a tiny KL coefficient, no clipping and no bonus,
                  side by side on the second core
    7. evaluate   held-out prompts, before and after: the gold score (VADER, never trained
                  on), diversity, KL; the reward model's accuracy against gold
    8. report     OUT/report.html: every run's curves, token-level views, the samples

Every stage is an ordinary rlhfkit recipe run on files in OUT, so each can be rerun or
inspected on its own with the `rlhfkit` command line.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import math
import os
import random
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from rlhfkit.config import load_config, option, save_config
from rlhfkit.errors import RlhfkitError
from rlhfkit.recipes.ppo_config import ALGOS

log = logging.getLogger("rlhfkit")


@dataclass
class DemoConfig:
    task: str = option("sentiment", "built-in task", choices=("sentiment", "arithmetic"))
    algo: str | None = option(None, "RL algorithm (default: ppo for sentiment, grpo for arithmetic)",
                              choices=ALGOS + (None,))
    out: str = option("runs/demo", "folder for every stage's run and the report")
    overwrite: bool = option(False, "replace a demo that already exists in `out`")
    fast: bool = option(False, "tiny sizes that finish in seconds (for tests), not a real result")
    labeler_bias: str = option("length", "the simulated annotator's systematic bias (sentiment): "
                                         "length favours longer answers, first_sentence skims, "
                                         "none reads like the gold judge",
                               choices=("length", "first_sentence", "none"))
    kl_coef: float | None = option(None, "KL coefficient of the main RL run (default: 0.2 for "
                                         "sentiment, 0.02 for arithmetic)", ge=0)
    reward_clip: float | None = option(1.75, "clip the main run's (normalised) reward-model "
                                             "scores to [-c, c]: once a review is clearly good, "
                                             "more reward-model score earns nothing, so the "
                                             "policy stays diverse (null: off)", gt=0)
    ent_coef: float = option(0.05, "entropy bonus of the main RL run (sentiment): keeps more of "
                                   "the SFT model's variety of phrasing (the over-optimised run "
                                   "has none)", ge=0)
    overopt_kl_coef: float = option(0.001, "KL coefficient of the over-optimised run (sentiment; "
                                           "its scores are not clipped)", ge=0)
    rm_pooling: str = option("sum", "how the reward model reads a review's score (sentiment): "
                                    "sum (summed over its tokens, as VADER adds up its words) "
                                    "or last (at its last token)",
                             choices=("last", "sum"))
    seed: int = option(0, "random seed")
    threads: int | None = option(None, "torch threads (default: the cores not busy elsewhere)", gt=0)


@dataclass(frozen=True)
class Sizes:
    """The budget of each stage."""
    model_size: str = "small"
    sft_examples: int = 20_000
    sft_steps: int = 400
    sft_batch: int = 32
    pairs: int = 16_000            # response pairs shown to the simulated labeler
    responses_per_prompt: int = 4  # K samples per prompt, all K(K-1)/2 pairs labelled
    rm_steps: int = 500
    rm_batch: int = 96             # pairs per step: 500 steps are 3 passes over the pairs
    rl_updates: int = 40
    rl_rollouts: int = 32          # responses per update
    rl_mini_batches: int = 1
    rl_lr: float = 3e-4
    eval_prompts: int = 256
    max_new_tokens: int = 32


FULL = Sizes()
FAST = Sizes("tiny", sft_examples=4000, sft_steps=150, pairs=1200, responses_per_prompt=4,
             rm_steps=100, rm_batch=32, rl_updates=15, rl_rollouts=32, rl_lr=1e-3,
             eval_prompts=64, max_new_tokens=16)
# Arithmetic: examples are short, so SFT takes big batches to learn the sums themselves
# (and their noise); answers are a few tokens, so RL can afford many rollouts per update.
# RL's learning rate is a third of the sentiment task's: at 3e-4 each step sharpens the
# sums it samples but blurs others the model knew (greedy accuracy fell from 91 % to 81 %);
# at 1e-4 greedy accuracy holds, and 480 updates sharpen sampling to it. Evaluation takes
# 2,048 problems: on 256, one GRPO run's gain read +28.5 points, on 2,048 +31.5.
ARITHMETIC = dataclasses.replace(FULL, sft_steps=1200, sft_batch=256, rl_updates=480,
                                 rl_rollouts=256, rl_mini_batches=4, max_new_tokens=8,
                                 rl_lr=1e-4, eval_prompts=2048)   # 8-token answers: cheap


# ---------------------------------------------------------------------------- set-up

def prepare_out(cfg: DemoConfig) -> Path:
    out = Path(cfg.out)
    if out.exists() and any(out.iterdir()):
        if not cfg.overwrite:
            raise RlhfkitError(f"'{out}' already holds files; pass overwrite=true to replace them")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    free_mb = shutil.disk_usage(out).free / 2**20
    if free_mb < 300:
        raise RlhfkitError(f"only {free_mb:.0f} MiB free in '{out}'; the demo needs about 300 MiB")
    save_config(cfg, out / "demo.yaml")
    return out


def busy_cores(seconds: float = 0.5) -> float:
    """Cores kept busy by other processes right now, from two reads of /proc/stat (the load
    average lags by a minute, so it would count processes that just ended)."""
    def read():
        with open("/proc/stat") as f:
            values = [int(v) for v in f.readline().split()[1:]]
        return sum(values), values[3] + values[4]  # total, idle + iowait
    try:
        total0, idle0 = read()
        time.sleep(seconds)
        total1, idle1 = read()
    except (OSError, ValueError, IndexError):
        return os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    busy = 1.0 - (idle1 - idle0) / max(total1 - total0, 1)
    return busy * (os.cpu_count() or 1)


def pin_threads(cfg: DemoConfig) -> None:
    """Use the cores nobody else is using; on a 2-core machine a busy core slows every stage
    many times over, so say so."""
    import torch
    cores = os.cpu_count() or 1
    busy = busy_cores()
    threads = cfg.threads or max(1, cores - int(round(busy)))
    torch.set_num_threads(threads)
    log.info("torch threads: %d of %d cores (%.1f cores busy elsewhere)", threads, cores, busy)
    if busy > 0.5:
        log.warning("another process is using %.1f cores: stage times will be slower than on "
                    "an idle machine", busy)


def write_jsonl(path: Path, rows) -> Path:
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return path


class Stages:
    """Times each stage and prints one line per stage; `wall` is the time since the
    pipeline began, set-up between the stages included."""

    def __init__(self):
        self.times: dict[str, float] = {}
        self.start = time.perf_counter()

    def wall(self) -> float:
        return round(time.perf_counter() - self.start, 1)

    def run(self, name: str, fn, *args, **kwargs):
        log.info("== %s", name)
        start = time.perf_counter()
        result = fn(*args, **kwargs)
        self.times[name] = round(time.perf_counter() - start, 1)
        log.info("== %s done in %.1f s", name, self.times[name])
        return result


# ---------------------------------------------------------------------------- stages

def make_data(task, out: Path, sizes: Sizes, seed: int) -> dict[str, Path]:
    """Corpus text (for the tokenizer), SFT rows, RL prompts and held-out prompts."""
    data = out / "data"
    data.mkdir()
    corpus = task.make_sft_corpus(sizes.sft_examples, seed)
    (data / "corpus.txt").write_text("\n".join(r["prompt"] + r["completion"] for r in corpus) + "\n")
    rl_prompts = task.make_prompts(2000, seed + 1)
    eval_prompts = task.make_prompts(sizes.eval_prompts, seed + 2)
    return {"corpus": data / "corpus.txt", "sft": write_jsonl(data / "sft.jsonl", corpus),
            "prompts": write_jsonl(data / "prompts.jsonl", ({"prompt": p} for p in rl_prompts)),
            "eval_prompts": write_jsonl(data / "eval_prompts.jsonl",
                                        ({"prompt": p} for p in eval_prompts))}


def build_base(task, files, out: Path, sizes: Sizes, seed: int) -> Path:
    from rlhfkit.models import build_tiny_model
    return build_tiny_model("gpt2", sizes.model_size, files["corpus"], out / "base", seed=seed,
                            vocab_size=1000, split_digits=task.name == "arithmetic")


def run_sft(files, out: Path, sizes: Sizes, seed: int) -> Path:
    from rlhfkit.recipes.sft import SFTConfig, train
    cfg = load_config(SFTConfig, None, [
        f"model={out / 'base'}", f"data={files['sft']}", f"out={out / 'sft'}", f"seed={seed}",
        f"max_steps={sizes.sft_steps}", f"batch_size={sizes.sft_batch}", "optim.lr=3e-3",
        "optim.warmup_steps=20", "optim.schedule=cosine", "max_length=96", "eval_fraction=0.02",
        "log.eval_every=200", "dropout=false", "log.save_every=100000", "device=cpu"])
    train(cfg)
    return out / "sft" / "model"


def label_pairs(bias: str, files, out: Path, sizes: Sizes, seed: int) -> Path:
    """Sample K = `sizes.responses_per_prompt` responses per prompt from the SFT model and
    have the simulated human label each of their K(K-1)/2 pairs, as InstructGPT's labelers
    ranked K = 4..9 responses: 6 pairs from 4 samples instead of 1 from 2, so `sizes.pairs`
    labels cost a third of the sampling, and the reward model, which scores each response
    once for all its pairs (`group_shared_responses`), a third of the forward passes. (At
    K = 8, 28 pairs share 8 responses: cheaper still, but the 16,000 labels then rest on
    4,576 responses, and the reward model ordered 1-3 points fewer held-out pairs as gold.)"""
    import torch

    from rlhfkit.generation import Sampling, generate_texts
    from rlhfkit.models import load_policy
    from rlhfkit.tasks.sentiment import Labeler
    model, tok = load_policy(out / "sft" / "model")
    model.eval()
    rng = random.Random(seed)
    prompts = [json.loads(line)["prompt"] for line in open(files["prompts"])]
    k = sizes.responses_per_prompt
    chosen_prompts = [rng.choice(prompts) for _ in range(-(-sizes.pairs // math.comb(k, 2)))]
    gen = torch.Generator().manual_seed(seed)
    sampling = Sampling(sizes.max_new_tokens, temperature=1.0)
    # Big batches pay each step's fixed overhead once per 1024 rows (~15 % faster than 256)
    samples = [generate_texts(model, tok, chosen_prompts, sampling, gen, batch_size=1024)[0]
               for _ in range(k)]
    pairs = [(prompt, samples[i][n], samples[j][n]) for n, prompt in enumerate(chosen_prompts)
             for i, j in itertools.combinations(range(k), 2)][:sizes.pairs]
    rows = Labeler(bias=bias, seed=seed).label_pairs(*map(list, zip(*pairs)))
    rows = [r for r in rows if r["chosen"].strip() and r["rejected"].strip()]  # no empty answers
    log.info("labelled %d pairs (%d dropped: ties, identical or empty responses)", len(rows),
             sizes.pairs - len(rows))
    return write_jsonl(out / "data" / "pairs.jsonl", rows)


def run_reward(files, out: Path, sizes: Sizes, seed: int, pooling: str = "last") -> Path:
    from rlhfkit.recipes.reward_model import RewardModelConfig, train
    cfg = load_config(RewardModelConfig, None, [
        f"model={out / 'sft' / 'model'}", f"data={out / 'data' / 'pairs.jsonl'}",
        f"out={out / 'reward'}", f"seed={seed}", f"max_steps={sizes.rm_steps}",
        f"batch_size={sizes.rm_batch}",
        "optim.lr=1e-3", "optim.warmup_steps=20", "max_length=96", "eval_fraction=0.05",
        f"pooling={pooling}",
        # held-out accuracy at steps 0, 250 and 500 (an evaluation of 800 pairs takes 1 s);
        # the mean and std of 4,096 scores are plenty (all pairs took 16 s)
        "log.eval_every=250", "log.save_every=100000", "device=cpu", "stats_pairs=2048"])
    train(cfg)
    return out / "reward" / "model"


def rl_config(task, algo: str, files, out: Path, sizes: Sizes, seed: int, name: str,
              kl_coef: float, reward_clip: float | None = None, ent_coef: float = 0.0):
    from rlhfkit.recipes.ppo_config import PPOConfig
    clip = "null" if reward_clip is None else reward_clip
    reward = ([f"reward.model={out / 'reward' / 'model'}", f"reward.clip={clip}"]
              if task.reward_fn is None else
              [f"reward.functions=[{task.reward_fn.__module__}:{task.reward_fn.__name__}]",
               "value.kind=head"])
    group = 8 if algo in ("rloo", "grpo") else 1
    micro = min(256, sizes.rl_rollouts // sizes.rl_mini_batches)
    return load_config(PPOConfig, None, reward + [
        f"policy={out / 'sft' / 'model'}", f"prompts={files['prompts']}", f"out={out / name}",
        f"algo={algo}", f"seed={seed}", f"kl.coef={kl_coef}", f"loss.ent_coef={ent_coef}",
        "device=cpu",
        f"batch.num_updates={sizes.rl_updates}",
        f"batch.prompts_per_update={sizes.rl_rollouts // group}",
        f"batch.samples_per_prompt={group}", f"batch.micro_batch_size={micro}",
        f"batch.forward_batch_size={micro}", f"batch.num_mini_batches={sizes.rl_mini_batches}",
        f"sampling.max_new_tokens={sizes.max_new_tokens}", f"optim.lr={sizes.rl_lr}",
        "optim.schedule=constant", f"log.gold={task.eval_fn.__module__}:{task.eval_fn.__name__}",
        "log.sample_every=10", "log.save_every=100000"])


# How the side-by-side RL processes start: forked on Linux; fork is unsafe with macOS's
# system frameworks, so elsewhere they start afresh and import torch themselves.
RL_START_METHOD = "fork" if sys.platform == "linux" else "spawn"


def run_rl(configs: list, out: Path) -> None:
    """Run the RL configs; two of them side by side, one process per core, when two cores
    are free: a tiny model keeps a second core only partly busy (here a PPO update of the
    demo took 0.7 s on two cores, 1.1 s on one), so two runs at once take about 1.6x one
    run instead of 2x. On Linux the processes are forked from this one, so they start with
    torch and transformers already imported (a new interpreter spent 6-7 s on its imports,
    two of them at once on two cores)."""
    import multiprocessing

    import torch

    from rlhfkit.recipes.ppo import train
    threads = torch.get_num_threads()
    if len(configs) == 1 or threads < len(configs):
        for cfg in configs:
            train(cfg)
        return
    context = multiprocessing.get_context(RL_START_METHOD)
    runs = []
    for cfg in configs:
        name = Path(cfg.out).name
        save_config(cfg, out / f"{name}.yaml")
        output = out / f"{name}.out"
        proc = context.Process(target=rl_process, name=name,
                               args=(str(out / f"{name}.yaml"), str(output),
                                     threads // len(configs)))
        proc.start()
        runs.append((cfg, proc, output))
    try:
        follow_runs(runs)
    finally:
        for _, proc, _ in runs:
            if proc.is_alive():
                proc.terminate()
            proc.join()
    # a run that failed on its own (exit > 0) first: the other one may have been terminated
    # above because of it (exit < 0, the signal)
    failed = sorted((run for run in runs if run[1].exitcode != 0),
                    key=lambda run: run[1].exitcode < 0)
    if failed:
        cfg, proc, output = failed[0]
        tail = output.read_text(errors="replace").splitlines()[-15:]
        raise RlhfkitError(f"the RL run in '{cfg.out}' failed (exit {proc.exitcode}); the "
                           f"end of its output ({output}):\n" + "\n".join(tail))


def rl_process(config_path: str, output: str, threads: int) -> None:
    """The body of a side-by-side RL process: `rlhfkit ppo --config CONFIG_PATH` on
    `threads` torch threads, its output (Python's and C's) in the file `output`."""
    import torch

    from rlhfkit.cli import main as cli_main
    log_file = open(output, "w", buffering=1)
    os.dup2(log_file.fileno(), 1)
    os.dup2(log_file.fileno(), 2)
    sys.stdout = sys.stderr = log_file
    torch.set_num_threads(threads)
    sys.exit(cli_main(["ppo", "--config", config_path]))  # multiprocessing flushes the file


def follow_runs(runs) -> None:
    """One progress bar over the updates of runs going on in other processes, read from
    their metrics.jsonl; stops as soon as one run fails."""
    from tqdm import tqdm

    from rlhfkit.metrics import metrics_path, read_metrics

    def updates(cfg) -> int:
        return len(read_metrics(cfg.out)) if metrics_path(cfg.out).is_file() else 0
    names = " + ".join(Path(cfg.out).name for cfg, _, _ in runs)
    with tqdm(total=sum(cfg.batch.num_updates for cfg, _, _ in runs), desc=names,
              unit="update") as bar:
        while any(proc.is_alive() for _, proc, _ in runs):
            if any(proc.exitcode not in (None, 0) for _, proc, _ in runs):
                return
            time.sleep(0.5)
            bar.update(sum(updates(cfg) for cfg, _, _ in runs) - bar.n)
        bar.update(sum(updates(cfg) for cfg, _, _ in runs) - bar.n)


# ---------------------------------------------------------------------------- evaluation

def sample_with_kl(policy, ref, tok, prompts: list[str], max_new_tokens: int, seed: int,
                   batch_size: int = 128) -> tuple[list[str], list[float]]:
    """Responses at temperature 0.7 and each one's KL to the reference: Σ_t log π/π_ref of
    the sampled tokens (the k1 estimate, summed over the response). Sampling and scoring run
    without a graph."""
    import torch

    from rlhfkit.data import collate_prompts, tokenize_prompts
    from rlhfkit.generation import Sampling, sample_responses
    from rlhfkit.recipes.ppo import decode_responses
    from rlhfkit.rollout import score_tokens
    gen = torch.Generator().manual_seed(seed)
    tokens, _ = tokenize_prompts(prompts, tok, 128)
    texts, kls = [], []
    for start in range(0, len(prompts), batch_size):
        batch = collate_prompts(tokens[start:start + batch_size], tok.pad_token_id)
        ids, mask, has_eos = sample_responses(policy, batch["input_ids"], batch["attention_mask"],
                                              Sampling(max_new_tokens, 0.7), tok.eos_token_id,
                                              tok.pad_token_id, gen)
        chunk = {"prompt_ids": batch["input_ids"], "prompt_mask": batch["attention_mask"],
                 "response_ids": ids, "response_mask": mask}
        lp, _, _ = score_tokens(policy, chunk, 0.7)
        ref_lp, _, _ = score_tokens(ref, chunk, 0.7)
        kls += ((lp - ref_lp) * mask).sum(-1).tolist()
        texts += decode_responses(tok, ids, mask, has_eos)
    return texts, kls


def policy_metrics(task, prompts, texts, kls) -> dict[str, float]:
    from rlhfkit.tasks.sentiment import distinct_n, max_sentence_share
    gold = task.eval_fn(prompts, texts)
    out = {"gold": sum(gold) / len(gold), "kl_to_sft": sum(kls) / len(kls),
           "length_words": sum(len(t.split()) for t in texts) / len(texts)}
    if task.name == "sentiment":
        out["distinct_2"] = distinct_n(texts, 2)
        out["max_sentence_share"] = max_sentence_share(texts)
    return {k: round(v, 4) for k, v in out.items()}


GOLD_GAPS = (0.0, 0.05, 0.2, 0.5)  # |gold_a - gold_b| buckets of the reward model's accuracy


def agreement(gold_a, gold_b, a, b) -> float:
    """Share of pairs that scores `a`, `b` order as the gold scores do; pairs the gold scores
    as ties are left out (a tie of `a` and `b` counts as wrong). Lists of equal length."""
    kept = [x != y and (ga > gb) == (x > y)
            for ga, gb, x, y in zip(gold_a, gold_b, a, b) if ga != gb]
    return round(sum(kept) / max(len(kept), 1), 4)


EVAL_RESPONSES = 8  # samples per held-out prompt in the reward-model check: 28 pairs each


def same_prompt_pairs(n: int, k: int) -> list[tuple[int, int]]:
    """All k(k-1)/2 pairs of the k samples of each of n prompts, as row indices of a batch
    that holds the prompts k times over (sample j of prompt i in row j * n + i)."""
    return [(i + a * n, i + b * n) for i in range(n)
            for a, b in itertools.combinations(range(k), 2)]


def reward_model_check(task, out: Path, prompts: list[str], sft, tok, sizes: Sizes, seed: int,
                       bias: str) -> dict:
    """How well the reward model orders held-out response pairs as the gold score does, on
    every pair of `EVAL_RESPONSES` SFT samples per held-out prompt (256 prompts: 7,168
    pairs from 2,048 responses; the same responses as 1,024 disjoint pairs gave figures
    that moved by about ±1 point from one draw to the next, all pairs by ±0.4). Returns

    - `reward_model_gold_accuracy`: the share ordered as gold (gold ties left out);
    - `labeler_gold_agreement`: the same share for the simulated labeler's own score
      without its noise, the most a perfect model of its labels could reach (its bias
      keeps it below 1);
    - `reward_model_gold_accuracy_by_gap`: accuracy and pair count by |gold_a - gold_b|:
      where the reward model goes wrong, close pairs or clear ones."""
    import torch

    from rlhfkit.data import collate_prompts, encode_prompts, encode_responses
    from rlhfkit.generation import Sampling, generate_texts
    from rlhfkit.models import load_reward_model, score_sequences
    from rlhfkit.tasks.sentiment import Labeler
    rm, rm_tok = load_reward_model(out / "reward" / "model")
    rm.eval()
    n = len(prompts)
    prompts = prompts * EVAL_RESPONSES  # sample j of held-out prompt i is row j * n + i
    gen = torch.Generator().manual_seed(seed + 7)
    sampling = Sampling(sizes.max_new_tokens, temperature=1.0)
    responses, _ = generate_texts(sft, tok, prompts, sampling, gen, batch_size=1024)
    rows = [p + r for p, r in zip(encode_prompts(prompts, rm_tok),
                                  encode_responses(responses, rm_tok))]
    batches = [collate_prompts(rows[i:i + 512], rm_tok.pad_token_id)
               for i in range(0, len(rows), 512)]
    with torch.no_grad():
        rm_score = [s for b in batches
                    for s in score_sequences(rm, b["input_ids"], b["attention_mask"]).tolist()]
    gold = task.eval_fn(prompts, responses)
    labeler = Labeler(bias=bias)
    label = [labeler.score(p, r) for p, r in zip(prompts, responses)]
    pairs = same_prompt_pairs(n, EVAL_RESPONSES)

    def accuracy(score, picked=pairs):
        first, second = zip(*picked) if picked else ((), ())
        return agreement([gold[i] for i in first], [gold[i] for i in second],
                         [score[i] for i in first], [score[i] for i in second])
    by_gap = {}
    for lo, hi in zip(GOLD_GAPS, GOLD_GAPS[1:] + (math.inf,)):
        picked = [(a, b) for a, b in pairs if lo <= abs(gold[a] - gold[b]) < hi]
        by_gap[f"{lo}-{hi}"] = {"accuracy": accuracy(rm_score, picked), "pairs": len(picked)}
    return {"reward_model_gold_accuracy": accuracy(rm_score),
            "labeler_gold_agreement": accuracy(label),
            "reward_model_gold_accuracy_by_gap": by_gap}


def evaluate(task, files, out: Path, sizes: Sizes, seed: int, runs: list[str],
             bias: str) -> dict:
    """Before (SFT) and after (each RL run) on held-out prompts; writes OUT/eval.json."""
    from rlhfkit.models import load_causal_lm, load_tokenizer
    tok = load_tokenizer(out / "sft" / "model")
    sft = load_causal_lm(out / "sft" / "model", tok).eval()
    prompts = [json.loads(line)["prompt"] for line in open(files["eval_prompts"])]
    before_texts, before_kls = sample_with_kl(sft, sft, tok, prompts, sizes.max_new_tokens, seed)
    report = {"before": policy_metrics(task, prompts, before_texts, before_kls)}
    after_texts = {}
    for name in runs:
        policy = load_causal_lm(out / name / "policy", tok).eval()
        after_texts[name], kls = sample_with_kl(policy, sft, tok, prompts, sizes.max_new_tokens, seed)
        report["after" if name == runs[0] else name] = policy_metrics(task, prompts, after_texts[name], kls)
    if (out / "reward" / "model").exists():
        report.update(reward_model_check(task, out, prompts, sft, tok, sizes, seed, bias))
    gold_before = task.eval_fn(prompts[:12], before_texts[:12])
    gold_after = task.eval_fn(prompts[:12], after_texts[runs[0]][:12])
    report["samples"] = [{"prompt": p, "SFT": b, "gold SFT": round(gb, 3), runs[0]: a,
                          f"gold {runs[0]}": round(ga, 3)}
                         for p, b, a, gb, ga in zip(prompts, before_texts, after_texts[runs[0]],
                                                    gold_before, gold_after)]
    (out / "eval.json").write_text(json.dumps(report, indent=1))
    return report


# ---------------------------------------------------------------------------- the pipeline

def main(cfg: DemoConfig) -> int:
    stages = Stages()
    from rlhfkit.recipes.common import seed_everything, setup_logging
    from rlhfkit.tasks import get_task
    task = get_task(cfg.task)
    algo = cfg.algo or task.algorithm
    out = prepare_out(cfg)
    setup_logging(out)
    pin_threads(cfg)
    seed_everything(cfg.seed)
    sizes = FAST if cfg.fast else ARITHMETIC if task.name == "arithmetic" else FULL
    files = stages.run("1. data", make_data, task, out, sizes, cfg.seed)
    stages.run("2. tokenizer and base model", build_base, task, files, out, sizes, cfg.seed)
    stages.run("3. SFT", run_sft, files, out, sizes, cfg.seed)
    kl_coef = cfg.kl_coef if cfg.kl_coef is not None else 0.02 if task.reward_fn else 0.2
    runs = [algo]
    if task.reward_fn is None:
        stages.run("4. human feedback (simulated)", label_pairs, cfg.labeler_bias, files, out,
                   sizes, cfg.seed)
        stages.run("5. reward model", run_reward, files, out, sizes, cfg.seed,
                   cfg.rm_pooling)
        runs.append(f"{algo}_overopt")   # the same run with a tiny KL coefficient, unclipped
    ent_coef = 0.0 if task.reward_fn else cfg.ent_coef
    configs = [rl_config(task, algo, files, out, sizes, cfg.seed, algo, kl_coef, cfg.reward_clip,
                         ent_coef)]
    if len(runs) > 1:
        configs.append(rl_config(task, algo, files, out, sizes, cfg.seed, runs[1],
                                 cfg.overopt_kl_coef))
    stages.run(f"6. {' and '.join(runs)}", run_rl, configs, out)
    report = stages.run("7. evaluation", evaluate, task, files, out, sizes, cfg.seed, runs,
                        cfg.labeler_bias)
    report["stage_seconds"] = stages.times
    (out / "eval.json").write_text(json.dumps(report, indent=1))   # the report shows it
    from rlhfkit.report import build_report
    page = stages.run("8. report", build_report, out, runs=runs,
                      title=f"rlhfkit demo: {task.name}, {algo}")
    report["seconds"] = stages.wall()
    (out / "eval.json").write_text(json.dumps(report, indent=1))   # with the report's time
    log.info("\n%s", summary_lines(report, stages.times, report["seconds"]))
    log.info("report: %s", page)
    return 0


def summary_lines(report: dict, times: dict, total: float) -> str:
    before, after = report["before"], report["after"]
    lines = [f"{'':22}{'SFT':>10}{'after RL':>10}"]
    for key in before:
        lines.append(f"{key:22}{before[key]:>10}{after[key]:>10}")
    if "reward_model_gold_accuracy" in report:
        lines.append(f"reward-model accuracy against gold: {report['reward_model_gold_accuracy']} "
                     f"(the labeler's own noiseless preference: {report['labeler_gold_agreement']})")
    stage_times = ", ".join(f"{name.split(' ', 1)[1]} {seconds} s" for name, seconds in times.items())
    lines.append(f"time: {total:.0f} s ({stage_times})")
    return "\n".join(lines)
