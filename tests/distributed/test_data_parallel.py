"""Data parallelism with real processes: `torchrun` on the gloo backend.

Two processes must compute what one process computes with the same global batch: the same
per-update (per-step) losses and the same final weights, to 1e-5 — for PPO (with a separate
critic), GRPO, SFT and reward-model training. A checkpoint written by two processes resumes
in one. Bad set-ups fail on every rank with a clear message instead of hanging.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rlhfkit import cli
from rlhfkit.checkpoint import latest_checkpoint


REWARD = '''
import os
CALLS = 0

def spaces(prompts, responses):
    """10 x the share of spaces in a response."""
    global CALLS
    CALLS += 1
    crash = os.environ.get("RLHFKIT_TEST_CRASH_AT", "")
    rank = os.environ.get("RLHFKIT_TEST_CRASH_RANK")
    if crash == str(CALLS) and (rank is None or rank == os.environ.get("RANK", "0")):
        raise RuntimeError("killed for the test")
    return [10 * r.count(" ") / max(len(r), 1) for r in responses]
'''


@pytest.fixture(scope="module")
def files(tmp_path_factory, tiny_corpus):
    folder = tmp_path_factory.mktemp("dist_files")
    (folder / "reward.py").write_text(REWARD)
    lines = Path(tiny_corpus).read_text().splitlines()
    with open(folder / "prompts.jsonl", "w") as f:
        for line in lines[:64]:
            f.write(json.dumps({"prompt": " ".join(line.split()[:3])}) + "\n")
    with open(folder / "sft.jsonl", "w") as f:
        for line in lines[:48]:
            words = line.split()
            f.write(json.dumps({"prompt": " ".join(words[:3]),
                                "completion": " " + " ".join(words[3:])}) + "\n")
    with open(folder / "prefs.jsonl", "w") as f:
        for line in lines[:48]:
            words = line.split()
            f.write(json.dumps({"prompt": " ".join(words[:3]),
                                "chosen": " " + " ".join(words[3:]),
                                "rejected": " " + " ".join(reversed(words[3:]))}) + "\n")
    return folder


def run(args: list[str], processes: int = 1, env: dict | None = None,
        check: bool = True) -> subprocess.CompletedProcess:
    """`rlhfkit ARGS` under torchrun with `processes` real processes."""
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                f"--nproc_per_node={processes}", "-m", "rlhfkit"]
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
                **(env or {})}
    done = subprocess.run(launcher + args, capture_output=True, text=True, env=full_env,
                          timeout=240)
    if check and done.returncode != 0:
        raise AssertionError(f"rlhfkit {' '.join(args)} failed:\n{done.stderr[-3000:]}")
    return done


def run_here(args: list[str]) -> None:
    """`rlhfkit ARGS` as one process: this one (no second interpreter to start)."""
    assert cli.main(args) == 0, args


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = load_file(a), load_file(b)
    assert wa.keys() == wb.keys()
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], atol=1e-5, rtol=0, msg=key)


def assert_same_values(rows_a, rows_b, keys) -> None:
    assert len(rows_a) == len(rows_b)
    for ra, rb in zip(rows_a, rows_b):
        for key in keys:
            if key in ra or key in rb:
                # float32 sums in another order: 1e-5 absolute, or relative for values
                # far from 1 (a gradient norm of 10 differs in its 6th digit)
                assert ra[key] == pytest.approx(rb[key], abs=1e-5, rel=1e-5), (key, ra["step"])


def ppo_args(files, policy, out, *extra) -> list[str]:
    return [f"policy={policy}", f"prompts={files / 'prompts.jsonl'}", f"out={out}",
            f"reward.functions=[{files / 'reward.py'}:spaces]", "optim.lr=1e-3",
            "batch.num_updates=3", "batch.prompts_per_update=8", "batch.num_mini_batches=2",
            "sampling.max_new_tokens=8", "device=cpu", "log.save_every=1", *extra]


PPO_LOSSES = ("loss/policy", "loss/value", "loss/kl", "score/mean", "kl/mean", "grad_norm",
              "advantages/std", "value/explained_variance")


@pytest.mark.parametrize("algo,fsdp", [("ppo", False), ("grpo", False), ("ppo", True)])
def test_two_processes_train_like_one(files, tiny_gpt2_dir, tmp_path, algo, fsdp):
    """Data parallel, and FSDP (parameters, gradients and optimizer state sharded)."""
    extra = ([f"value.model={tiny_gpt2_dir}"] if algo == "ppo"
             else ["algo=grpo", "batch.prompts_per_update=4", "batch.samples_per_prompt=2"])
    extra += ["compute.fsdp=true"] if fsdp else []
    run_here(["ppo", *ppo_args(files, tiny_gpt2_dir, tmp_path / "one",
                               "batch.micro_batch_size=2", *extra)])
    run(["ppo", *ppo_args(files, tiny_gpt2_dir, tmp_path / "two", "batch.micro_batch_size=1",
                          *extra)], processes=2)
    one, two = metrics(tmp_path / "one"), metrics(tmp_path / "two")
    assert len(one) == 3
    assert_same_values(one, two, PPO_LOSSES)
    assert_same_weights(tmp_path / "one/policy/model.safetensors",
                        tmp_path / "two/policy/model.safetensors")
    if algo == "ppo":  # the critic was trained alike too
        last = lambda d: latest_checkpoint(d) / "value/model.safetensors"
        assert_same_weights(last(tmp_path / "one"), last(tmp_path / "two"))


def test_sft_and_reward_model_on_two_processes_train_like_one(files, tiny_gpt2_dir, tmp_path):
    common = ["max_steps=4", "batch_size=4", "eval_fraction=0.25", "dropout=false",
              "device=cpu", "log.eval_every=2"]
    for recipe, data in (("sft", "sft.jsonl"), ("reward", "prefs.jsonl")):
        args = [recipe, f"model={tiny_gpt2_dir}", f"data={files / data}", "optim.lr=1e-3",
                "optim.warmup_steps=0", *common]
        run_here(args + [f"out={tmp_path / recipe}-one", "grad_accum=2"])
        run(args + [f"out={tmp_path / recipe}-two", "grad_accum=2"], processes=2)
        one, two = metrics(tmp_path / f"{recipe}-one"), metrics(tmp_path / f"{recipe}-two")
        keys = ("loss", "grad_norm", "eval/loss", "eval/accuracy", "accuracy")
        assert_same_values(one, two, keys)
        assert_same_weights(tmp_path / f"{recipe}-one/model/model.safetensors",
                            tmp_path / f"{recipe}-two/model/model.safetensors")


@pytest.fixture(scope="module")
def uninterrupted(files, tiny_gpt2_dir, tmp_path_factory) -> Path:
    """4 PPO updates in one process, never stopped."""
    out = tmp_path_factory.mktemp("whole") / "run"
    run_here(["ppo", *ppo_args(files, tiny_gpt2_dir, out, "value.kind=head",
                               "batch.micro_batch_size=4", "batch.num_updates=4")])
    return out


@pytest.mark.parametrize("sharding,dies", [("compute.fsdp=false", "1"),
                                           ("compute.fsdp=true", None)])
def test_a_two_process_checkpoint_resumes_in_one_process(files, tiny_gpt2_dir, tmp_path,
                                                         uninterrupted, sharding, dies):
    """Data parallel: rank 1 alone dies in update 3 — every rank stops, and the checkpoint
    of update 2 is whole. FSDP: both ranks die there. Either checkpoint resumes in one
    process and ends where the uninterrupted run ends."""
    args = ppo_args(files, tiny_gpt2_dir, tmp_path / "run", "value.kind=head",
                    "batch.micro_batch_size=1", "batch.num_updates=4", "compute.timeout=30",
                    sharding)
    crash = {"RLHFKIT_TEST_CRASH_AT": "3"} | ({"RLHFKIT_TEST_CRASH_RANK": dies} if dies else {})
    died = run(["ppo", *args], processes=2, env=crash, check=False)
    assert died.returncode != 0 and "killed for the test" in died.stderr
    assert latest_checkpoint(tmp_path / "run").name == "step-000002"
    run_here(["ppo", *args, "resume=true"])  # one process: 4 micro-batches of 1 per mini-batch
    assert_same_values(metrics(tmp_path / "run"), metrics(uninterrupted), PPO_LOSSES)
    assert_same_weights(tmp_path / "run/policy/model.safetensors",
                        uninterrupted / "policy/model.safetensors")


def test_a_world_size_that_does_not_divide_the_batch_is_named(files, tiny_gpt2_dir, tmp_path):
    args = ppo_args(files, tiny_gpt2_dir, tmp_path / "run", "value.kind=head",
                    "batch.prompts_per_update=6", "batch.num_mini_batches=2",
                    "batch.micro_batch_size=1")
    done = run(["ppo", *args], processes=2, check=False)
    assert done.returncode != 0
    # every rank names the problem
    assert done.stderr.count("the world size 2 (processes) does not divide the mini-batch "
                             "of 3 rows") >= 2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_missing_rendezvous_fails_within_the_timeout(files, tiny_gpt2_dir, tmp_path,
                                                      monkeypatch, capsys):
    args = ["ppo", *ppo_args(files, tiny_gpt2_dir, tmp_path / "run", "value.kind=head",
                             "batch.micro_batch_size=1", "compute.timeout=3")]
    for key, value in {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0"}.items():
        monkeypatch.setenv(key, value)
    for key in ("MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    assert cli.main(args) == 2
    assert "MASTER_ADDR and MASTER_PORT not set" in capsys.readouterr().err
    # the other rank never arrives: an error after ~3 s, not a hang
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(free_port()))
    assert cli.main(args) == 2
    assert "could not join the 2-process group" in capsys.readouterr().err


def test_a_command_leaves_its_process_group_after_success_and_after_an_error(tmp_path):
    """`run_then_shutdown` meets the other ranks at a barrier when training returned (a
    one-process gloo group here, so the barrier returns) and leaves the group either way."""
    import torch.distributed as dist
    from rlhfkit.distributed import run_then_shutdown

    def join(store: str):
        dist.init_process_group("gloo", rank=0, world_size=1,
                                store=dist.FileStore(str(tmp_path / store), 1))
    seen = []
    join("first")
    assert run_then_shutdown(seen.append, "cfg") == 0
    assert seen == ["cfg"] and not dist.is_initialized()

    def fail(cfg):
        raise RuntimeError("training failed")
    join("second")
    with pytest.raises(RuntimeError, match="training failed"):
        run_then_shutdown(fail, "cfg")
    assert not dist.is_initialized()
