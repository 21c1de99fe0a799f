"""Resource errors: out of disk while saving gives one clear line and leaves the previous
checkpoint intact (then, with space freed, resume=true finishes the run as if nothing had
happened); out of memory names the batch setting to lower."""

from __future__ import annotations

import os
import subprocess

import pytest
import torch
from safetensors.torch import load_file

from harness import preference_rows, prompt_rows, sft_rows, write_jsonl
from rlhfkit.checkpoint import latest_checkpoint, save_checkpoint, verify_checkpoint
from rlhfkit.cli import main as cli_main
from rlhfkit.errors import RlhfkitError
from rlhfkit.recipes import ppo, reward_model, sft
from rlhfkit.recipes.common import out_of_memory_hint


# ---------------------------------------------------------------------------- disk

@pytest.fixture
def small_disk(tmp_path):
    """A real 3 MiB filesystem (tmpfs), grown with `grow(mib)`; skipped where mounting is
    not permitted (not root, or a container without CAP_SYS_ADMIN)."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount_point)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs to fill up (needs root): {done.stderr.strip()}")

    def grow(mib: int) -> None:
        subprocess.run(["mount", "-o", f"remount,size={mib}m", str(mount_point)], check=True)
    try:
        yield mount_point, grow
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], capture_output=True)


def test_a_full_disk_while_checkpointing_is_one_line_and_keeps_the_previous_checkpoint(
        small_disk, tmp_path, capsys):
    disk, grow = small_disk

    def write(size):
        return lambda folder: (folder / "weights.safetensors").write_bytes(os.urandom(size))
    first = save_checkpoint(disk, 1, write(1 << 20))
    with pytest.raises(RlhfkitError) as info:
        save_checkpoint(disk, 2, write(3 << 20))  # more than is left
    message = str(info.value)
    assert message == (f"out of disk space while writing checkpoint step 2 in {disk / 'checkpoints'}"
                       f"; the previous one, {first}, is intact. Free some space, then continue "
                       "with resume=true")
    assert verify_checkpoint(first) is None and latest_checkpoint(disk) == first
    assert sorted(p.name for p in (disk / "checkpoints").iterdir()) == ["step-000001"]


def test_sft_out_of_disk_then_resume_equals_a_run_that_never_stopped(small_disk, tmp_path,
                                                                    tiny_gpt2_dir, capsys):
    """A real SFT run on a 3 MiB disk: the first checkpoint (about 2 MiB) fits, the second
    does not. The command ends with exit code 2 and one line; with the disk grown, resume=true
    finishes the run, bit for bit equal to one that had room from the start."""
    disk, grow = small_disk
    data = write_jsonl(tmp_path / "sft.jsonl", sft_rows())
    args = [f"model={tiny_gpt2_dir}", f"data={data}", "device=cpu", "eval_fraction=0",
            "batch_size=4", "max_steps=3", "optim.lr=5e-3", "dropout=false", "log.save_every=1",
            "log.keep_last=1"]
    assert cli_main(["sft", *args, f"out={tmp_path / 'whole'}"]) == 0
    capsys.readouterr()
    assert cli_main(["sft", *args, f"out={disk / 'run'}"]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    step1 = disk / "run" / "checkpoints" / "step-000001"
    assert error == (f"error: out of disk space while writing checkpoint step 2 in "
                     f"{disk / 'run' / 'checkpoints'}; the previous one, {step1}, is intact. "
                     "Free some space, then continue with resume=true")
    assert verify_checkpoint(step1) is None
    assert [p.name for p in (disk / "run" / "checkpoints").iterdir()] == ["step-000001"]
    grow(64)
    assert cli_main(["sft", *args, f"out={disk / 'run'}", "resume=true"]) == 0
    a = load_file(tmp_path / "whole" / "model" / "model.safetensors")
    b = load_file(disk / "run" / "model" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------------------- memory

def test_out_of_memory_becomes_one_line_naming_the_setting_to_lower():
    def generate():
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (GPU 0; "
                                     "79.10 GiB total capacity)")
    with pytest.raises(RlhfkitError) as info:
        with out_of_memory_hint("generating 512 responses at once",
                                "batch.prompts_per_update (now 512)"):
            generate()
    assert str(info.value) == ("out of memory while generating 512 responses at once: lower "
                               "batch.prompts_per_update (now 512)")


def test_a_real_failed_allocation_is_recognised_and_other_errors_pass_through():
    with pytest.raises(RlhfkitError, match="out of memory while training: lower batch_size"):
        with out_of_memory_hint("training", "batch_size"):
            torch.empty(1 << 60, dtype=torch.uint8)  # 1 EiB: the allocator says "can't allocate memory"
    with pytest.raises(RuntimeError, match="shape"):  # not a memory error: untouched
        with out_of_memory_hint("training", "batch_size"):
            torch.zeros(2, 3) @ torch.zeros(2, 3)


def raise_oom(*args, **kwargs):
    raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 8.00 GiB")


@pytest.mark.parametrize("stage, patch, expected", [
    ("ppo", "sample_responses", "out of memory while generating 8 responses at once: lower "
     "batch.prompts_per_update (now 8), batch.samples_per_prompt (now 1) or "
     "sampling.max_new_tokens (now 6)"),
    ("ppo", "micro_batch_loss", "out of memory while training (forward and backward of a "
     "micro-batch): lower batch.micro_batch_size (now 4; the mini-batch stays the same "
     "through gradient accumulation)"),
    ("sft", "sft_step", "out of memory while training the SFT model: lower batch_size (now 4; "
     "raise grad_accum to keep the examples per step) or max_length (now 256)"),
    ("reward", "reward_step", "out of memory while training the reward model: lower batch_size "
     "(now 4 pairs = 8 rows; raise grad_accum to keep the pairs per step) or max_length (now 256)"),
])
def test_out_of_memory_in_a_recipe_is_exit_code_2_and_one_line(stage, patch, expected, tmp_path,
                                                                tiny_gpt2_dir, monkeypatch, capsys):
    module = {"ppo": ppo, "sft": sft, "reward": reward_model}[stage]
    monkeypatch.setattr(module, patch, raise_oom)
    if stage == "ppo":
        (tmp_path / "r.py").write_text("def f(p, r):\n    return [1.0] * len(r)\n")
        prompts = write_jsonl(tmp_path / "p.jsonl", prompt_rows(8))
        args = [f"policy={tiny_gpt2_dir}", f"prompts={prompts}",
                f"reward.functions=[{tmp_path / 'r.py'}:f]", "value.kind=head",
                "batch.prompts_per_update=8", "batch.micro_batch_size=4",
                "sampling.max_new_tokens=6", "batch.num_updates=1"]
    elif stage == "sft":
        args = [f"model={tiny_gpt2_dir}", f"data={write_jsonl(tmp_path / 's.jsonl', sft_rows())}",
                "batch_size=4", "eval_fraction=0"]
    else:
        args = [f"model={tiny_gpt2_dir}",
                f"data={write_jsonl(tmp_path / 'p.jsonl', preference_rows(16, seed=0))}",
                "batch_size=4", "eval_fraction=0"]
    assert cli_main([stage, *args, f"out={tmp_path / 'run'}", "device=cpu"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1] == f"error: {expected}"
