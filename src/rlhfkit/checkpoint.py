"""Atomic, resumable checkpoints.

A checkpoint is a folder `RUN_DIR/checkpoints/step-000042/`. It is written under a
temporary name (`.tmp-step-000042-<pid>`) and renamed into place only when complete; the
last file written inside is `COMPLETE`, which holds the SHA-256 of every other file. So a
run killed at any moment leaves either no new checkpoint or a whole one, and a checkpoint
damaged later (a truncated copy, a flipped byte, a file added or removed) is detected and
skipped with a message naming it. Old checkpoints are renamed out of the way
(`.trash-...`) before they are deleted, so a kill during the deletion never leaves half a
checkpoint under a final name either; leftovers of killed writes are removed by the next
write.

Weights are written with safetensors (via `save_pretrained`); optimizer, scheduler and RNG
states with `torch.save` and read back with `torch.load(weights_only=True)`, which refuses
anything but tensors and plain values, so no pickled object is ever executed. A checkpoint
holding a pickle-format weight file (`*.bin`, `*.pkl`, ...) is refused outright: rlhfkit
never writes one.

Running out of disk while writing is one clear `RlhfkitError`; the half-written folder is
removed and the previous checkpoint stays as it was.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import pickle
import random
import shutil
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from rlhfkit.errors import RlhfkitError

log = logging.getLogger(__name__)

MARKER = "COMPLETE"
# Files that can only be read by unpickling arbitrary objects: never in our checkpoints.
PICKLE_SUFFIXES = (".bin", ".pkl", ".pickle", ".ckpt", ".pth")
_TMP, _TRASH = ".tmp-", ".trash-"
# Crash tests set this to "phase@step" to stop the writer at an exact moment and SIGKILL it
# there (see `_test_pause`); unset, it costs one dictionary lookup per phase.
PAUSE_ENV = "RLHFKIT_TEST_PAUSE_AT"
_writing_step: int | None = None


class UnsafeCheckpointError(RlhfkitError, pickle.UnpicklingError):
    """A state file that holds Python objects other than tensors and plain values."""


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


def _test_pause(phase: str, where: object = None) -> None:
    """Block forever at `phase` of the write named by RLHFKIT_TEST_PAUSE_AT ("files@3": the
    checkpoint of step 3; "written@model": the final model folder), after telling stderr,
    so a crash test can SIGKILL the process at exactly this moment."""
    wanted = os.environ.get(PAUSE_ENV)
    if wanted and wanted == f"{phase}@{_writing_step if where is None else where}":
        print(f"rlhfkit-test: paused at {wanted}", file=sys.stderr, flush=True)
        while True:
            time.sleep(3600)


# ---------------------------------------------------------------------------- writing

def _is_disk_full(err: BaseException, folder: Path) -> bool:
    """Out of disk space (or quota), however the library that was writing reported it —
    OSError from Python, RuntimeError from torch.save ("iostream error"), SafetensorError
    from safetensors — or a failed write on a filesystem with less than 1 MiB left."""
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    if any(s in str(err) for s in ("No space left", "StorageFull", "Disk quota", "code: 28")):
        return True
    try:
        return shutil.disk_usage(folder).free < (1 << 20)
    except OSError:
        return False


def _remove(path: Path) -> None:
    """Delete a folder by renaming it to a trash name first (one atomic step), so a kill
    during the slow part never leaves a half-deleted folder under its real name."""
    if not path.exists():
        return
    trash = path.with_name(f"{_TRASH}{path.name}-{os.getpid()}")
    shutil.rmtree(trash, ignore_errors=True)
    os.replace(path, trash)
    _test_pause("pruning")
    shutil.rmtree(trash, ignore_errors=True)


def remove_debris(folder: Path) -> None:
    """Remove the temporary and trash folders that killed writes left in `folder`."""
    if folder.is_dir():
        for p in folder.iterdir():
            if p.is_dir() and p.name.startswith((_TMP, _TRASH)):
                shutil.rmtree(p, ignore_errors=True)


def write_folder(final: Path, write: Callable[[Path], None], what: str,
                 previous: Path | None = None) -> Path:
    """Fill a temporary folder beside `final` with `write(tmp)`, then rename it to `final`
    (replacing an older `final` whole). Out of disk: the temporary folder is removed and a
    one-line RlhfkitError names `what` and the `previous` good copy, which is untouched."""
    for leftover in [*final.parent.glob(f"{_TMP}{final.name}-*"),   # of killed writes of
                     *final.parent.glob(f"{_TRASH}{final.name}-*")]:  # this same folder
        shutil.rmtree(leftover, ignore_errors=True)
    tmp = final.with_name(f"{_TMP}{final.name}-{os.getpid()}")
    tmp.mkdir(parents=True)
    try:
        write(tmp)
    except BaseException as err:  # Ctrl-C included: no half-written folder is left either
        full = isinstance(err, Exception) and _is_disk_full(err, tmp)
        shutil.rmtree(tmp, ignore_errors=True)  # frees the space the failed write took
        if not full:
            raise
        kept = f"; the previous one, {previous}, is intact" if previous else ""
        raise RlhfkitError(f"out of disk space while writing {what} in {final.parent}{kept}. "
                           "Free some space, then continue with resume=true") from None
    _test_pause("written", final.name)
    _remove(final)  # a re-run of the same step: replace it whole
    os.replace(tmp, final)
    _fsync_dir(final.parent)
    return final


def _seal(folder: Path, step: int) -> None:
    """fsync every file, then write the COMPLETE marker with their checksums."""
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    for p in files:
        with open(p, "rb") as f:
            os.fsync(f.fileno())
    _test_pause("files")
    sums = {p.relative_to(folder).as_posix(): _sha256(p) for p in files}
    with open(folder / MARKER, "w") as f:
        json.dump({"step": step, "sha256": sums}, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    _fsync_dir(folder)


def save_checkpoint(run_dir: str | Path, step: int, write: Callable[[Path], None],
                    keep_last: int = 2) -> Path:
    """Write a checkpoint atomically: `write(folder)` fills a temporary folder, then the
    marker with checksums is added, everything is fsynced, and the folder is renamed to
    `checkpoints/step-{step:06d}`. Older checkpoints beyond `keep_last` are removed."""
    global _writing_step
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    remove_debris(root)
    existing = list_checkpoints(run_dir, verify=False)  # not re-hashed: only named below

    def write_and_seal(folder: Path) -> None:
        write(folder)
        _seal(folder, step)

    _writing_step = step
    try:
        final = write_folder(root / f"step-{step:06d}", write_and_seal,
                             f"checkpoint step {step}", existing[-1] if existing else None)
        _test_pause("renamed")
        for old in list_checkpoints(run_dir, verify=False)[:-keep_last] if keep_last > 0 else []:
            _remove(old)
    finally:
        _writing_step = None
    return final


# ---------------------------------------------------------------------------- reading

def verify_checkpoint(folder: Path) -> str | None:
    """None when the folder is a whole checkpoint, else what is wrong with it."""
    marker = folder / MARKER
    if not marker.is_file():
        return "no COMPLETE marker (the write did not finish)"
    try:
        content = json.loads(marker.read_text())
        sums, own_name = content["sha256"], f"step-{content['step']:06d}"
        names = sorted(sums)
    except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError):
        return "its COMPLETE marker is unreadable"
    if folder.name.startswith("step-") and folder.name != own_name:
        return f"its COMPLETE marker belongs to {own_name}"
    present = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
    for name in sorted(present):
        if name.endswith(PICKLE_SUFFIXES):
            return f"it holds {name}, a pickle file (rlhfkit writes weights only as safetensors)"
        if name != MARKER and name not in sums:
            return f"file {name} is not in its COMPLETE marker (added after the write)"
    for name in names:
        path, expected = folder / name, sums[name]
        if not path.is_file():
            return f"file {name} is missing"
        if _sha256(path) != expected:
            return f"file {name} does not match its checksum"
    return None


def list_checkpoints(run_dir: str | Path, verify: bool = True, quiet: bool = False) -> list[Path]:
    """Checkpoint folders of a run, oldest first; with `verify`, damaged ones are skipped
    with a warning naming them (and so are the leftovers of writes that never finished)."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-"))
    if not verify:
        return found
    warn = log.debug if quiet else log.warning
    for partial in sorted(p for p in root.iterdir() if p.name.startswith(_TMP)):
        warn("skipping partial checkpoint %s: its write did not finish", partial)
    good = []
    for folder in found:
        problem = verify_checkpoint(folder)
        if problem:
            warn("skipping checkpoint %s: %s", folder, problem)
        else:
            good.append(folder)
    return good


def latest_checkpoint(run_dir: str | Path, quiet: bool = False) -> Path | None:
    """The newest whole checkpoint of a run, or None."""
    found = list_checkpoints(run_dir, quiet=quiet)
    return found[-1] if found else None


def load_tensors(path: Path):
    """`torch.load(path, weights_only=True)`: tensors and plain values only. A file holding
    anything else is refused (UnsafeCheckpointError) before any of it is executed."""
    try:
        return torch.load(path, weights_only=True)
    except pickle.UnpicklingError as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else "unpickling refused"
        raise UnsafeCheckpointError(
            f"refused to load {path}: it holds Python objects, not only tensors and plain "
            f"values, so it was not written by rlhfkit ({reason})") from None


# ---------------------------------------------------------------------------- random state

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
    state = load_tensors(path)
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    np_state = state["numpy"]
    np.random.set_state((np_state[0], np_state[1].numpy().astype(np.uint32), *np_state[2:]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    for name, g in (generators or {}).items():
        g.set_state(state["generators"][name])


# ---------------------------------------------------------------------------- trainer state

def save_trainer_state(folder: Path, optimizer, scheduler=None, extra: dict | None = None,
                       generators: dict[str, torch.Generator] | None = None,
                       optimizer_state: dict | None = None) -> None:
    """Optimizer (its `state_dict()`, or `optimizer_state` when given: the gathered state of
    a sharded optimizer), scheduler, RNG states and a JSON file of plain values (step, KL
    coefficient, data position...)."""
    _test_pause("weights")  # the models are written by now, the trainer state is not
    torch.save(optimizer_state or optimizer.state_dict(), folder / "optimizer.pt")
    if scheduler is not None:
        torch.save(scheduler.state_dict(), folder / "scheduler.pt")
    save_rng_state(folder / "rng.pt", generators)
    (folder / "trainer_state.json").write_text(json.dumps(extra or {}, indent=1))


def load_trainer_state(folder: Path, optimizer, scheduler=None,
                       generators: dict[str, torch.Generator] | None = None,
                       load_optimizer=None) -> dict:
    """The inverse of `save_trainer_state`; `load_optimizer(state)` loads the optimizer
    state instead of `optimizer.load_state_dict` (a sharded optimizer)."""
    (load_optimizer or optimizer.load_state_dict)(load_tensors(folder / "optimizer.pt"))
    if scheduler is not None:
        scheduler.load_state_dict(load_tensors(folder / "scheduler.pt"))
    load_rng_state(folder / "rng.pt", generators)
    return json.loads((folder / "trainer_state.json").read_text())
