"""Atomic checkpoints, corruption detection, RNG round trips, and refusal of pickles."""

import logging
import os
import pickle
import random

import numpy as np
import pytest
import torch

from rlhfkit.checkpoint import (latest_checkpoint, list_checkpoints, load_rng_state,
                                load_trainer_state, save_checkpoint, save_rng_state,
                                save_trainer_state)


def write_files(folder):
    (folder / "weights.safetensors").write_bytes(os.urandom(1000))
    (folder / "sub").mkdir()
    (folder / "sub" / "state.json").write_text('{"step": 1}')


def test_checkpoints_are_renamed_into_place_and_old_ones_pruned(tmp_path):
    for step in (1, 2, 3):
        save_checkpoint(tmp_path, step, write_files, keep_last=2)
    names = [p.name for p in list_checkpoints(tmp_path)]
    assert names == ["step-000002", "step-000003"]
    assert latest_checkpoint(tmp_path).name == "step-000003"


def test_a_write_that_dies_leaves_no_checkpoint_under_its_final_name(tmp_path):
    save_checkpoint(tmp_path, 1, write_files)

    def dies(folder):
        write_files(folder)
        raise KeyboardInterrupt  # killed halfway

    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path, 2, dies)
    assert latest_checkpoint(tmp_path).name == "step-000001"
    assert not (tmp_path / "checkpoints" / "step-000002").exists()


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete", "no_marker"])
def test_a_damaged_checkpoint_is_skipped_with_a_message_naming_it(tmp_path, caplog, damage):
    save_checkpoint(tmp_path, 1, write_files)
    bad = save_checkpoint(tmp_path, 2, write_files)
    target = bad / "weights.safetensors"
    if damage == "truncate":
        target.write_bytes(target.read_bytes()[:10])
    elif damage == "flip":
        data = bytearray(target.read_bytes())
        data[5] ^= 1
        target.write_bytes(bytes(data))
    elif damage == "delete":
        target.unlink()
    else:
        (bad / "COMPLETE").unlink()
    with caplog.at_level(logging.WARNING):
        assert latest_checkpoint(tmp_path).name == "step-000001"
    assert "step-000002" in caplog.text


def test_rng_states_round_trip(tmp_path):
    g = torch.Generator().manual_seed(5)
    save_rng_state(tmp_path / "rng.pt", {"sampling": g})
    first = (random.random(), np.random.rand(), torch.rand(1).item(), torch.rand(1, generator=g).item())
    load_rng_state(tmp_path / "rng.pt", {"sampling": g})
    again = (random.random(), np.random.rand(), torch.rand(1).item(), torch.rand(1, generator=g).item())
    assert first == again


class _Exploit:
    def __reduce__(self):
        return (os.system, ("touch EXPLOITED",))


def test_a_crafted_pickle_in_a_checkpoint_is_refused_not_executed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.AdamW(model.parameters())
    save_trainer_state(tmp_path, opt, extra={"step": 3})
    with open(tmp_path / "optimizer.pt", "wb") as f:
        pickle.dump({"state": _Exploit()}, f, protocol=2)
    with pytest.raises(pickle.UnpicklingError):
        load_trainer_state(tmp_path, opt)
    assert not (tmp_path / "EXPLOITED").exists()
