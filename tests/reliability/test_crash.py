"""Kill it anywhere and lose nothing: SFT, reward-model and PPO runs are killed with SIGKILL
again and again — at random moments and at exact moments inside checkpoint writes — and
resumed with `resume=true` each time; the finished run equals, bit for bit, a run that was
never stopped.

Each recipe gets one run folder and a kill plan:

    pause  the writer stops at a named moment (RLHFKIT_TEST_PAUSE_AT, see
           rlhfkit.checkpoint._test_pause) and the test SIGKILLs it there:
             weights@N        checkpoint N: models written, optimizer/RNG state not yet
             files@N          every file written and fsynced, no COMPLETE marker
             written@step-N   marker written, folder not yet renamed into place
             renamed@N        renamed, older checkpoints not yet pruned
             pruning@N        an old checkpoint moved to the trash, not yet deleted
             written@model    the final model folder written, not yet renamed
    random SIGKILL after a random delay, a random share of the time the rest of the run
           takes (anywhere: start-up, loading, a training step, the metrics file, a
           checkpoint write, the truncation on resume)
    corrupt flip a byte in the newest checkpoint, then start: it must be skipped with a
           message naming it, and the run must resume from the one before

After every kill: no folder under a final checkpoint name is partial or damaged, and the
next start resumes from the newest whole checkpoint (its log says which). The processes are
real (forked from a server that imported torch once, see _forkserver.py), the models real
tiny GPT-2s, the files real files. Set RLHFKIT_CRASH_SEED to replay the random delays and
RLHFKIT_CRASH_RANDOM_KILLS to kill more often (4 per recipe by default).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from harness import preference_rows, prompt_rows, sft_rows, wait_for_text, write_jsonl
from rlhfkit.checkpoint import PAUSE_ENV, latest_checkpoint, list_checkpoints, verify_checkpoint
from rlhfkit.config import load_config
from rlhfkit.metrics import read_metrics
from rlhfkit.recipes import ppo
from rlhfkit.recipes.common import prepare_run_dir
from rlhfkit.recipes.ppo_config import PPOConfig
from rlhfkit.recipes.sft import SFTConfig


SEED = int(os.environ.get("RLHFKIT_CRASH_SEED", time.time_ns() % 2**32))
# Random kills per recipe; RLHFKIT_CRASH_RANDOM_KILLS=50 makes a long soak run.
RANDOM_KILLS = int(os.environ.get("RLHFKIT_CRASH_RANDOM_KILLS", 4))
REWARD_CODE = '''
def spaces(prompts, responses):
    return [10 * r.count(" ") / max(len(r), 1) for r in responses]
'''
CHECKPOINT_PAUSES = ["weights@2", "files@3", "written@step-000004", "renamed@5", "pruning@6"]


@dataclass
class Recipe:
    name: str
    argv: list[str]
    final: str                      # the folder of the final model
    weights: list[str]              # safetensors files compared bit for bit
    plan: list[tuple[str, object]]
    jsonl: list[str] = field(default_factory=lambda: ["metrics.jsonl"])


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("crash_inputs")
    write_jsonl(root / "sft.jsonl", sft_rows())
    write_jsonl(root / "prefs.jsonl", preference_rows(48, seed=1))
    write_jsonl(root / "prefs_eval.jsonl", preference_rows(16, seed=2))
    write_jsonl(root / "prompts.jsonl", prompt_rows(32))
    (root / "reward.py").write_text(REWARD_CODE)
    return root


def recipe(name: str, model: Path, d: Path, out: Path, rng: random.Random) -> Recipe:
    randoms = [("random", rng.uniform(0.05, 1.0)) for _ in range(RANDOM_KILLS)]
    common = [f"out={out}", "device=cpu", "log.save_every=1", "log.keep_last=2"]
    if name == "sft":  # dropout on: the resumed run must restore every random state
        argv = ["sft", f"model={model}", f"data={d / 'sft.jsonl'}", "eval_fraction=0.25",
                "batch_size=4", "max_steps=16", "optim.lr=5e-3", "optim.warmup_steps=2",
                "log.eval_every=4", *common]
        return Recipe(name, argv, "model", ["model/model.safetensors"],
                      [*pauses(), *randoms, ("corrupt", None), ("pause", "written@model")])
    if name == "reward":
        argv = ["reward", f"model={model}", f"data={d / 'prefs.jsonl'}",
                f"eval_data={d / 'prefs_eval.jsonl'}", "batch_size=4", "max_steps=16",
                "optim.lr=1e-3", "log.eval_every=4", *common]
        return Recipe(name, argv, "model", ["model/model.safetensors"],
                      [*pauses(), *randoms, ("pause", "written@model")])
    argv = ["ppo", f"policy={model}", f"prompts={d / 'prompts.jsonl'}",
            f"reward.functions=[{d / 'reward.py'}:spaces]", "value.kind=critic",
            f"value.model={model}", "optim.lr=3e-3", "batch.num_updates=12",
            "batch.prompts_per_update=8", "batch.micro_batch_size=4",
            "batch.forward_batch_size=8", "sampling.max_new_tokens=8",
            "reward.missing_eos_penalty=null", "log.sample_every=1", *common]
    return Recipe(name, argv, "policy", ["policy/model.safetensors", "value/model.safetensors"],
                  [*pauses(), *randoms, ("pause", "written@policy")],
                  ["metrics.jsonl", "samples.jsonl"])


def pauses() -> list[tuple[str, str]]:
    return [("pause", p) for p in CHECKPOINT_PAUSES]


# ---------------------------------------------------------------------------- checks

def assert_no_partial_checkpoint_under_a_final_name(run_dir: Path) -> None:
    for folder in list_checkpoints(run_dir, verify=False):
        assert verify_checkpoint(folder) is None, (folder, verify_checkpoint(folder))


def assert_resumed_from(log: Path, expected: Path | None, must_have_resumed: bool) -> None:
    if not log.exists() and not must_have_resumed:
        return  # a random kill that landed before the process had even opened its log
    text = log.read_text(errors="replace")
    if expected is None:
        assert "resumed from" not in text, text[-2000:]
    elif must_have_resumed or "resumed from" in text:
        assert f"resumed from {expected} " in text, (expected, text[-3000:])


def flip_a_byte(folder: Path) -> Path:
    target = next(p for p in sorted(folder.rglob("*.safetensors")))
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF
    target.write_bytes(bytes(data))
    return target


def assert_same_run(whole: Path, cut: Path, r: Recipe) -> None:
    """The killed-and-resumed run equals the run that never stopped: final weights (and the
    critic of the last checkpoint), metrics and samples."""
    last_whole, last_cut = latest_checkpoint(whole), latest_checkpoint(cut)
    assert last_whole.name == last_cut.name
    for name in r.weights:
        a_dir, b_dir = (whole, cut) if name.startswith(r.final) else (last_whole, last_cut)
        a, b = load_file(a_dir / name), load_file(b_dir / name)
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), f"{r.name}: {name}:{key} differs (seed {SEED})"
    for name in r.jsonl:
        assert strip_times(whole / name) == strip_times(cut / name), f"{r.name}: {name} differs"
    # the model's config too: the reward model stores its score mean and std there
    config = f"{r.final}/config.json"
    assert (whole / config).read_text() == (cut / config).read_text()


def strip_times(path: Path) -> list[dict]:
    rows = (read_metrics(path) if path.name == "metrics.jsonl" else
            [json.loads(line) for line in path.read_text().splitlines()])
    return [{k: v for k, v in row.items()
             if not k.startswith(("time", "tokens_per_s", "pairs_per_s"))} for row in rows]


# ---------------------------------------------------------------------------- the test

def run_with_kills(server, r: Recipe, out: Path, logs: Path, seconds: float, steps: int) -> dict:
    """Follow the kill plan, then let the run finish. `seconds` is how long the whole run
    took uninterrupted, `steps` its number of steps. Returns the figures."""
    figures = {"kills": 0, "pause_kills": 0, "random_kills": 0, "random_in_a_write": 0,
               "starts": 0, "ended_before_kill": 0, "corrupt_skipped": 0}
    for i, (kind, arg) in enumerate([*r.plan, ("finish", None)]):
        if kind == "corrupt":
            damaged = flip_a_byte(latest_checkpoint(out))
            kind = "finish-corrupt"
        expected = latest_checkpoint(out, quiet=True)
        argv = r.argv + (["resume=true"] if (out / "config.yaml").exists() else [])
        log = logs / f"{r.name}-{i:02d}-{kind}.log"
        env = {PAUSE_ENV: arg} if kind == "pause" else {}
        pid = server.start(argv, log, env)
        figures["starts"] += 1
        if kind == "pause":
            wait_for_text(log, f"rlhfkit-test: paused at {arg}", server, pid)
            assert server.kill(pid), f"{r.name}: not running at {arg}"
            figures["kills"] += 1
            figures["pause_kills"] += 1
        elif kind == "random":
            done = int(expected.name.split("-")[1]) if expected else 0
            time.sleep(arg * seconds * (steps - done) / steps)
            killed = server.kill(pid)
            figures["kills"] += killed
            figures["random_kills"] += killed
            # killed inside a checkpoint or model write: it left its temporary folder
            figures["random_in_a_write"] += killed and any(out.rglob(f".tmp-*-{pid}"))
            if not killed:  # it finished first: the run is whole; later starts resume at its end
                figures["ended_before_kill"] += 1
                assert server.wait(pid) == 0, log.read_text()[-3000:]
        elif kind == "finish-corrupt":  # starts, skips the damaged checkpoint, runs to the end
            assert server.wait(pid) == 0, log.read_text()[-3000:]
            text = log.read_text()
            assert f"skipping checkpoint {damaged.parent.parent}" in text or \
                f"skipping checkpoint {damaged.parent}" in text, text[-3000:]
            assert "does not match its checksum" in text
            figures["corrupt_skipped"] += 1
        else:
            assert server.wait(pid) == 0, log.read_text()[-3000:]
        assert_no_partial_checkpoint_under_a_final_name(out)
        assert_resumed_from(log, expected, must_have_resumed=kind == "pause")
    return figures


@pytest.mark.parametrize("name", ["sft", "reward", "ppo"])
def test_sigkill_anywhere_then_resume_equals_a_run_that_never_stopped(
        name, forkserver, inputs, tiny_gpt2_dir, tmp_path, record_property):
    rng = random.Random(f"{SEED}-{name}")
    whole = recipe(name, tiny_gpt2_dir, inputs, tmp_path / "whole", rng)
    cut = recipe(name, tiny_gpt2_dir, inputs, tmp_path / "cut", rng)
    started = time.monotonic()
    assert forkserver.run(whole.argv, tmp_path / "whole.log") == 0, \
        (tmp_path / "whole.log").read_text()[-3000:]
    seconds = time.monotonic() - started
    (tmp_path / "logs").mkdir()
    steps = int(latest_checkpoint(tmp_path / "whole").name.split("-")[1])
    figures = run_with_kills(forkserver, cut, tmp_path / "cut", tmp_path / "logs", seconds, steps)
    assert_same_run(tmp_path / "whole", tmp_path / "cut", cut)
    figures["seconds"] = round(time.monotonic() - started, 1)
    print(f"{name}: {json.dumps(figures)} (RLHFKIT_CRASH_SEED={SEED})")
    record_property("crash_figures", figures)
    assert figures["pause_kills"] == len(CHECKPOINT_PAUSES) + 1
    # 6 at exact moments + 4 random (a random delay may outlast a short rest of the run)
    assert figures["kills"] >= 7, figures  # 3 recipes x >= 7: at least 21 kill points
    # no process ever reached for the network: local folders and files need none
    assert forkserver.netlog.read_text() == ""


# ---------------------------------------------------------------------------- edges, in-process

def test_a_run_killed_before_its_first_checkpoint_resumes_from_the_start_without_duplicates(
        inputs, tiny_gpt2_dir, tmp_path):
    """Metrics a killed run logged before any checkpoint are dropped on resume, not logged
    twice (the resumed run starts over and logs them again)."""
    args = ["batch.num_updates=2", "log.save_every=1000", "value.kind=head", "device=cpu",
            "batch.prompts_per_update=4", "batch.micro_batch_size=4", "sampling.max_new_tokens=4",
            f"policy={tiny_gpt2_dir}", f"prompts={inputs / 'prompts.jsonl'}",
            f"reward.functions=[{inputs / 'reward.py'}:spaces]", "log.sample_every=1"]
    cut = load_config(PPOConfig, None, [*args, f"out={tmp_path / 'cut'}"])
    whole = load_config(PPOConfig, None, [*args, f"out={tmp_path / 'whole'}"])
    ppo.train(whole)
    # the state a SIGKILL after update 1 leaves: its metrics and samples, no checkpoint
    ppo.train(cut)
    for name in ("metrics.jsonl", "samples.jsonl"):
        path = tmp_path / "cut" / name
        path.write_text(path.read_text().splitlines()[0] + "\n")
    shutil.rmtree(tmp_path / "cut" / "checkpoints")
    shutil.rmtree(tmp_path / "cut" / "policy")
    cut.resume = True
    ppo.train(cut)
    for name in ("metrics.jsonl", "samples.jsonl"):
        assert strip_times(tmp_path / "whole" / name) == strip_times(tmp_path / "cut" / name)


def test_a_run_killed_while_saving_its_config_can_be_started_again(tmp_path):
    cfg = load_config(SFTConfig, None, ["model=m", "data=d.jsonl", f"out={tmp_path / 'run'}"])
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / ".config.yaml.x1y2.tmp").write_text("mod")  # what the kill left
    assert (prepare_run_dir(cfg.out, False, False, cfg) / "config.yaml").is_file()
