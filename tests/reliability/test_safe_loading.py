"""Load nothing unsafe: weights only from safetensors or torch.load(weights_only=True); a
crafted pickle in a checkpoint folder is refused, never executed; a model's own Python code
runs only with trust_remote_code=true; a reward function is imported only from the path the
user gave. (No network at run time: the crash tests run every recipe with the network
refused and HF_HUB_OFFLINE unset, see test_crash.py.)"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import shutil
import sys
from dataclasses import fields
from pathlib import Path

import pytest
import torch

from harness import sft_rows, write_jsonl
from rlhfkit.checkpoint import MARKER, latest_checkpoint
from rlhfkit.cli import main as cli_main
from rlhfkit.errors import ConfigError, RlhfkitError
from rlhfkit.models import load_causal_lm, load_tokenizer
from rlhfkit.recipes.ppo_config import PPOConfig
from rlhfkit.recipes.reward_model import RewardModelConfig
from rlhfkit.recipes.sft import SFTConfig
from rlhfkit.scoring import load_function


class Exploit:
    """Unpickling this runs a shell command that creates the file `flag`."""

    def __init__(self, flag: Path):
        self.flag = flag

    def __reduce__(self):
        return (os.system, (f"touch {self.flag}",))


def reseal(folder: Path) -> None:
    """Rewrite the COMPLETE marker with the checksums of what the folder now holds, as a
    forger who knows the format would: the checksums alone then cannot catch the change."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MARKER)
    sums = {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in files}
    (folder / MARKER).write_text(json.dumps({"step": int(folder.name[5:]), "sha256": sums}))


@pytest.fixture
def sft_run(tmp_path, tiny_gpt2_dir, capsys):
    """A finished 2-step SFT run with checkpoints at steps 1 and 2, and its command line."""
    args = ["sft", f"model={tiny_gpt2_dir}",
            f"data={write_jsonl(tmp_path / 'sft.jsonl', sft_rows())}", f"out={tmp_path / 'run'}",
            "device=cpu", "eval_fraction=0", "batch_size=4", "max_steps=2", "log.save_every=1"]
    assert cli_main(args) == 0
    capsys.readouterr()
    logger = logging.getLogger("rlhfkit")  # its handlers hold the captured stream of the run
    for handler in list(logger.handlers):
        handler.close()
        logger.removeHandler(handler)
    return tmp_path / "run", args


def test_a_crafted_pickle_in_a_checkpoint_is_skipped_by_its_checksum(sft_run, tmp_path, capsys):
    run, args = sft_run
    flag = tmp_path / "EXPLOITED"
    newest = run / "checkpoints" / "step-000002"
    torch.save({"state": Exploit(flag)}, newest / "optimizer.pt")
    assert cli_main([*args, "resume=true"]) == 0
    err = capsys.readouterr().err
    assert (f"skipping checkpoint {newest}: file optimizer.pt does not match its checksum" in err)
    assert f"resumed from {run / 'checkpoints' / 'step-000001'} (step 1)" in err
    assert not flag.exists()


def test_a_crafted_pickle_with_a_forged_marker_is_refused_not_executed(sft_run, tmp_path, capsys):
    run, args = sft_run
    flag = tmp_path / "EXPLOITED"
    newest = run / "checkpoints" / "step-000002"
    torch.save({"state": Exploit(flag)}, newest / "optimizer.pt")
    reseal(newest)
    assert cli_main([*args, "resume=true"]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith(f"error: refused to load {newest / 'optimizer.pt'}: it holds Python "
                            "objects, not only tensors and plain values")
    assert not flag.exists()


@pytest.mark.parametrize("name", ["model/pytorch_model.bin", "extra.pkl"])
def test_a_pickle_file_dropped_into_a_checkpoint_is_refused(name, sft_run, tmp_path, caplog):
    """Refused whether or not the marker was forged to list it: rlhfkit never writes one."""
    run, _ = sft_run
    flag = tmp_path / "EXPLOITED"
    newest = run / "checkpoints" / "step-000002"
    with open(newest / name, "wb") as f:
        pickle.dump(Exploit(flag), f)
    for forged in (False, True):
        if forged:
            reseal(newest)
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            assert latest_checkpoint(run).name == "step-000001"
        assert f"skipping checkpoint {newest}: it holds {name}, a pickle file" in caplog.text
    assert not flag.exists()


def test_a_file_added_to_a_checkpoint_after_it_was_written_is_detected(sft_run, caplog):
    run, _ = sft_run
    newest = run / "checkpoints" / "step-000002"
    (newest / "model" / "notes.txt").write_text("added later")
    with caplog.at_level(logging.WARNING):
        assert latest_checkpoint(run).name == "step-000001"
    assert (f"skipping checkpoint {newest}: file model/notes.txt is not in its COMPLETE "
            "marker") in caplog.text


def test_a_model_folder_with_a_crafted_pickle_is_refused_not_executed(tmp_path, tiny_gpt2_dir):
    """transformers reads a pytorch_model.bin with torch.load(weights_only=True)."""
    folder = tmp_path / "model"
    shutil.copytree(tiny_gpt2_dir, folder)
    (folder / "model.safetensors").unlink()
    flag = tmp_path / "EXPLOITED"
    torch.save({"transformer.wte.weight": Exploit(flag)}, folder / "pytorch_model.bin")
    with pytest.raises(RlhfkitError, match="holds Python objects, not plain tensors"):
        load_causal_lm(folder, load_tokenizer(folder))
    assert not flag.exists()


def test_a_models_own_code_runs_only_with_trust_remote_code(tmp_path, tiny_gpt2_dir):
    folder = tmp_path / "custom"
    shutil.copytree(tiny_gpt2_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    config.update(model_type="customgpt", auto_map={"AutoConfig": "custom.CustomConfig",
                                                    "AutoModelForCausalLM": "custom.CustomModel"})
    (folder / "config.json").write_text(json.dumps(config))
    flag = tmp_path / "CODE_RAN"
    (folder / "custom.py").write_text(
        f"open({str(flag)!r}, 'w').close()\n"
        "from transformers import GPT2Config, GPT2LMHeadModel\n"
        "class CustomConfig(GPT2Config):\n    model_type = 'customgpt'\n"
        "class CustomModel(GPT2LMHeadModel):\n    config_class = CustomConfig\n")
    tokenizer = load_tokenizer(folder)
    with pytest.raises(RlhfkitError, match="runs only with trust_remote_code=true"):
        load_causal_lm(folder, tokenizer)
    assert not flag.exists()
    load_causal_lm(folder, tokenizer, trust_remote_code=True)
    assert flag.exists()  # the flag is what lets it run
    for config_class in (SFTConfig, RewardModelConfig, PPOConfig):
        default = {f.name: f.default for f in fields(config_class)}["trust_remote_code"]
        assert default is False, config_class


def test_a_reward_function_is_imported_only_from_the_path_given(tmp_path, monkeypatch):
    for name, value in (("given", 1.0), ("decoy", 2.0)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "scores.py").write_text(
            f"def score(prompts, responses):\n    return [{value}] * len(responses)\n")
    # a module of the same name in the working folder and on sys.path must not be picked
    monkeypatch.chdir(tmp_path / "decoy")
    monkeypatch.syspath_prepend(str(tmp_path / "decoy"))
    path_before, modules_before = list(sys.path), set(sys.modules)
    fn = load_function(f"{tmp_path / 'given' / 'scores.py'}:score")
    assert fn(["p"], ["r"]) == [1.0]
    assert sys.path == path_before  # its folder was not added
    assert "scores" not in sys.modules and "scores" not in modules_before


@pytest.mark.parametrize("code, problem", [
    ("def score(p, r)\n    return []\n", "importing '{path}' failed (line 1): SyntaxError"),
    ("import no_such_module_here\n", "importing '{path}' failed: ModuleNotFoundError"),
    ("raise RuntimeError('boom')\n", "importing '{path}' failed: RuntimeError: boom"),
])
def test_a_reward_file_that_fails_to_import_is_one_line(code, problem, tmp_path):
    path = tmp_path / "scores.py"
    path.write_text(code)
    with pytest.raises(ConfigError) as info:
        load_function(f"{path}:score")
    assert str(info.value).startswith("reward function: " + problem.format(path=path))
