"""Atomic, resumable checkpoints.

A checkpoint is a folder `RUN_DIR/checkpoints/step-000042/`. It is written under a
temporary name (`.tmp-step-000042-<pid>`) and renamed into place only when complete; the
last file written inside is `COMPLETE`, which holds the SHA-256 of every other file. So a
run killed at any moment leaves either no new checkpoint or a whole one, and a checkpoint
damaged later (a truncated copy, a flipped byte) is detected and skipped with a message.

Weights are written with safetensors (via `save_pretrained`); optimizer, scheduler and RNG
states with `torch.save` and read back with `torch.load(weights_only=True)` — no pickle of
arbitrary objects is ever loaded.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import shutil
from pathlib import Path
from typing import Callable

import numpy as np
import torch

log = logging.getLogger(__name__)

MARKER = "COMPLETE"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(run_dir: str | Path, step: int, write: Callable[[Path], None],
                    keep_last: int = 2) -> Path:
    """Write a checkpoint atomically: `write(folder)` fills a temporary folder, then the
    marker with checksums is added, everything is fsynced, and the folder is renamed to
    `checkpoints/step-{step:06d}`. Older checkpoints beyond `keep_last` are removed."""
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:06d}"
    tmp = root / f".tmp-step-{step:06d}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    write(tmp)
    files = sorted(p for p in tmp.rglob("*") if p.is_file())
    for p in files:
        with open(p, "rb") as f:
            os.fsync(f.fileno())
    sums = {str(p.relative_to(tmp)): _sha256(p) for p in files}
    with open(tmp / MARKER, "w") as f:
        json.dump({"step": step, "sha256": sums}, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    _fsync_dir(tmp)
    if final.exists():  # a re-run of the same step: replace it whole
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync_dir(root)
    for old in list_checkpoints(run_dir, verify=False)[:-keep_last] if keep_last > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def verify_checkpoint(folder: Path) -> str | None:
    """None when the folder is a whole checkpoint, else what is wrong with it."""
    marker = folder / MARKER
    if not marker.is_file():
        return "no COMPLETE marker (the write did not finish)"
    try:
        sums = json.loads(marker.read_text())["sha256"]
    except (ValueError, KeyError, UnicodeDecodeError):
        return "its COMPLETE marker is unreadable"
    for name, expected in sums.items():
        path = folder / name
        if not path.is_file():
            return f"file {name} is missing"
        if _sha256(path) != expected:
            return f"file {name} does not match its checksum"
    return None


def list_checkpoints(run_dir: str | Path, verify: bool = True) -> list[Path]:
    """Checkpoint folders of a run, oldest first; with `verify`, damaged ones are skipped
    with a warning naming them."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-"))
    if not verify:
        return found
    good = []
    for folder in found:
        problem = verify_checkpoint(folder)
        if problem:
            log.warning("skipping checkpoint %s: %s", folder, problem)
        else:
            good.append(folder)
    return good


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest whole checkpoint of a run, or None."""
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def rng_state(generators: dict[str, torch.Generator] | None = None) -> dict:
    """Every random state a run draws from: Python, NumPy, torch (CPU and CUDA) and the
    run's own generators (e.g. the sampling generator)."""
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "generators": {k: g.get_state() for k, g in (generators or {}).items()},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def save_rng_state(path: Path, generators: dict[str, torch.Generator] | None = None) -> None:
    state = rng_state(generators)
    # Python's and NumPy's states are tuples holding ints and arrays: store them as plain
    # lists so that `torch.load(weights_only=True)` can read them back.
    py = state["python"]
    state["python"] = [py[0], list(py[1]), py[2]]
    np_state = state["numpy"]
    state["numpy"] = [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]]
    torch.save(state, path)


def load_rng_state(path: Path, generators: dict[str, torch.Generator] | None = None) -> None:
    state = torch.load(path, weights_only=True)
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    np_state = state["numpy"]
    np.random.set_state((np_state[0], np_state[1].numpy().astype(np.uint32), *np_state[2:]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    for name, g in (generators or {}).items():
        g.set_state(state["generators"][name])


def save_trainer_state(folder: Path, optimizer, scheduler=None, extra: dict | None = None,
                       generators: dict[str, torch.Generator] | None = None) -> None:
    """Optimizer, scheduler, RNG states and a JSON file of plain values (step, KL
    coefficient, data position...)."""
    torch.save(optimizer.state_dict(), folder / "optimizer.pt")
    if scheduler is not None:
        torch.save(scheduler.state_dict(), folder / "scheduler.pt")
    save_rng_state(folder / "rng.pt", generators)
    (folder / "trainer_state.json").write_text(json.dumps(extra or {}, indent=1))


def load_trainer_state(folder: Path, optimizer, scheduler=None,
                       generators: dict[str, torch.Generator] | None = None) -> dict:
    optimizer.load_state_dict(torch.load(folder / "optimizer.pt", weights_only=True))
    if scheduler is not None:
        scheduler.load_state_dict(torch.load(folder / "scheduler.pt", weights_only=True))
    load_rng_state(folder / "rng.pt", generators)
    return json.loads((folder / "trainer_state.json").read_text())
