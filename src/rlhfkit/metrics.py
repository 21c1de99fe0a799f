"""Training metrics: one JSON line per step in `RUN_DIR/metrics.jsonl`, plus console helpers.

    with MetricsLogger(run_dir, rank0=(rank == 0)) as logger:
        logger.log(step, {"loss/policy": 0.41, "objective/kl": 0.002})
    rows = read_metrics(run_dir)       # [{"step": 0, "loss/policy": 0.41, ..., "time": ...}]

Each line is `{"step": int, <metrics>..., "time": unix seconds}`, written and flushed at once,
so a crashed run keeps every line it logged and other programs can tail the file live.

Non-finite values: JSON has no NaN or infinity, so they are written as the strings "nan",
"inf" and "-inf". `read_metrics` turns those strings back into floats; other JSONL readers
see strings, and the file stays valid JSON line by line.

The logger can mirror every line to TensorBoard and/or Weights & Biases; those packages are
optional and only imported when asked for.

`rlhfkit metrics run_dir=RUN` (see `show_metrics`) prints the file as a table, and with
`follow=true` keeps printing rows as training writes them.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, is_dataclass
from pathlib import Path
from typing import Any

from rlhfkit.config import REQUIRED, config_to_dict, option
from rlhfkit.errors import DataError, RlhfkitError

__all__ = [
    "METRICS_FILE",
    "MetricsLogger",
    "read_metrics",
    "metrics_path",
    "format_metrics_line",
    "console_table",
    "MetricsViewConfig",
    "show_metrics",
]

METRICS_FILE = "metrics.jsonl"
_RESERVED = ("step", "time")
_NONFINITE_TEXT = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------


class MetricsLogger:
    """Append one JSON line per `log(step, metrics)` to `RUN_DIR/metrics.jsonl`.

    Only rank 0 writes: on other ranks pass `rank0=False` and every call is a no-op, so the
    training loop needs no `if rank == 0` around its logging. `tensorboard=True` mirrors to
    `RUN_DIR/tensorboard`; `wandb=True` to a wandb run in `project` with `config` (a config
    dataclass or dict) as its hyperparameters. Asking for a mirror whose package is not
    installed raises RlhfkitError before anything is created.
    """

    def __init__(
        self,
        run_dir: str | os.PathLike,
        *,
        rank0: bool = True,
        tensorboard: bool = False,
        wandb: bool = False,
        project: str | None = None,
        config: Any = None,
    ):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / METRICS_FILE
        self.enabled = rank0
        self._file = self._tensorboard = self._wandb = None
        if not rank0:
            return
        if tensorboard:
            _require("tensorboard", "tensorboard=true")
        if wandb:
            _require("wandb", "wandb=true")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a", encoding="utf-8")  # append: a resumed run continues the file
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tensorboard = SummaryWriter(log_dir=str(self.run_dir / "tensorboard"))
        if wandb:
            import wandb as wandb_lib

            hparams = config_to_dict(config) if is_dataclass(config) else config
            self._wandb = wandb_lib.init(project=project, dir=str(self.run_dir), config=hparams)

    def log(self, step: int, metrics: Mapping[str, Any]) -> None:
        """Write `{"step": step, **metrics, "time": now}` as one flushed line, then mirror it.

        Values may be Python numbers, strings, or anything with `.item()` (0-d tensors,
        NumPy scalars). "step" and "time" are reserved keys.
        """
        if not self.enabled:
            return
        if self._file is None:
            raise ValueError(f"MetricsLogger for {self.path} is closed")
        values = {key: _metric_value(key, value) for key, value in metrics.items()}
        encoded = {key: _json_safe(value) for key, value in values.items()}
        row = {"step": int(step), **encoded, "time": round(time.time(), 3)}
        # One write of the whole line, then flush: readers never see a line without its end.
        self._file.write(json.dumps(row, allow_nan=False) + "\n")
        self._file.flush()
        numbers = {k: v for k, v in values.items() if isinstance(v, (int, float))}
        if self._tensorboard is not None:
            for key, value in numbers.items():
                self._tensorboard.add_scalar(key, value, int(step))
        if self._wandb is not None:
            self._wandb.log(numbers, step=int(step))

    def close(self) -> None:
        """Close the file and the mirrors; safe to call twice."""
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tensorboard is not None:
            self._tensorboard.close()
            self._tensorboard = None
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None

    def __enter__(self) -> MetricsLogger:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


def _require(package: str, asked_by: str) -> None:
    """RlhfkitError unless `package` can be imported."""
    if importlib.util.find_spec(package) is None:
        raise RlhfkitError(
            f"{asked_by} needs the {package} package, which is not installed: pip install {package}"
        )


def _metric_value(key: Any, value: Any) -> Any:
    """A plain Python number or string for one metric; tensors and NumPy scalars via .item()."""
    if not isinstance(key, str) or key in _RESERVED:
        raise ValueError(f"metric name {key!r} is not allowed: use a string other than {_RESERVED}")
    if not isinstance(value, (int, float, str)) and hasattr(value, "item"):
        value = value.item()
    if not isinstance(value, (int, float, str)):
        raise TypeError(f"metric {key!r}: expected a number or a string, got {type(value).__name__}")
    return value


def _json_safe(value: Any) -> Any:
    """NaN and infinities as the strings "nan", "inf", "-inf" (see the module docstring)."""
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return value


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------


def metrics_path(run_dir: str | os.PathLike) -> Path:
    """`RUN_DIR/metrics.jsonl`, or `run_dir` itself when it names a .jsonl file."""
    path = Path(run_dir)
    return path if path.suffix == ".jsonl" or path.is_file() else path / METRICS_FILE


def read_metrics(run_dir: str | os.PathLike) -> list[dict]:
    """Every row of a run's metrics file, in order, with "nan"/"inf"/"-inf" back as floats.

    A last line without its newline that does not parse is a write cut short by a crash and is
    skipped; any other malformed line is a DataError naming the file and line.
    """
    path = metrics_path(run_dir)
    if not path.is_file():
        raise DataError(path, None, None, "no metrics file here (has a run logged to this folder?)")
    rows, _, _ = _read_rows(path, offset=0, lines_before=0, partial_last_line=True)
    return rows


def _read_rows(
    path: Path, offset: int, lines_before: int, *, partial_last_line: bool
) -> tuple[list[dict], int, int]:
    """Rows of the complete lines from byte `offset` on -> (rows, new offset, lines read so far).

    Only newline-terminated lines are consumed, so a follower never reads half a line.
    `partial_last_line=True` also tries an unterminated last line (not consumed either way).
    """
    with open(path, "rb") as f:
        f.seek(offset)
        data = f.read()
    end = data.rfind(b"\n") + 1
    rows, line_no = [], lines_before
    for line in data[:end].split(b"\n")[:-1]:
        line_no += 1
        if line.strip():
            rows.append(_parse_row(path, line_no, line))
    tail = data[end:]
    if partial_last_line and tail.strip():
        try:
            rows.append(_parse_row(path, line_no + 1, tail))
        except DataError:
            pass  # a line cut short by a crash, not a malformed file
    return rows, offset + end, line_no


def _parse_row(path: Path, line_no: int, line: bytes) -> dict:
    try:
        row = json.loads(line.decode("utf-8", errors="replace"))
    except json.JSONDecodeError as err:
        raise DataError(path, line_no, None, f"not valid JSON ({err.msg})") from None
    if not isinstance(row, dict):
        raise DataError(path, line_no, None, "expected one JSON object per line")
    return {key: _NONFINITE_TEXT.get(v, v) if isinstance(v, str) else v for key, v in row.items()}


# ---------------------------------------------------------------------------------------------
# Console output
# ---------------------------------------------------------------------------------------------


def format_metrics_line(metrics: Mapping[str, Any], keys: Iterable[str] | None = None) -> str:
    """'step=10  loss=0.4123  kl=0.00213': the given keys (default: all but "time"), 4 digits."""
    keys = [k for k in metrics if k != "time"] if keys is None else [k for k in keys if k in metrics]
    return "  ".join(f"{key}={_format_number(metrics[key])}" for key in keys)


def console_table(
    rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None, *, max_width: int = 60
) -> str:
    """A plain-text table: a header, a rule, one line per row; numbers right-aligned.

    `columns` defaults to every key seen (except "time"), in first-seen order. Cells longer
    than `max_width` are cut with "..."; newlines in text show as "\\n" so a row stays one line.
    """
    columns = list(columns) if columns else _columns(rows)
    if not columns:
        return ""
    cells = [[_cell(row.get(c), max_width) for c in columns] for row in rows]
    numeric = [all(_is_number(row.get(c)) for row in rows if row.get(c) is not None) for c in columns]
    widths = [max([len(c)] + [len(line[i]) for line in cells]) for i, c in enumerate(columns)]

    def render(values: Sequence[str]) -> str:
        parts = [v.rjust(w) if right else v.ljust(w) for v, w, right in zip(values, widths, numeric)]
        return "  ".join(parts).rstrip()

    lines = [render(columns), render(["-" * w for w in widths])]
    lines += [render(line) for line in cells]
    return "\n".join(lines)


def _columns(rows: Iterable[Mapping[str, Any]]) -> list[str]:
    """Every key of `rows` except "time", in first-seen order."""
    seen: dict[str, None] = {}
    for row in rows:
        seen.update((k, None) for k in row if k != "time")
    return list(seen)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _format_number(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _cell(value: Any, max_width: int) -> str:
    if value is None:
        return ""
    text = _format_number(value).replace("\r", "").replace("\n", "\\n").replace("\t", " ")
    return text if len(text) <= max_width else text[: max(max_width - 3, 0)] + "..."


# ---------------------------------------------------------------------------------------------
# The `rlhfkit metrics` command
# ---------------------------------------------------------------------------------------------


@dataclass
class MetricsViewConfig:
    """Options of `rlhfkit metrics`."""

    run_dir: str = option(REQUIRED, "run folder holding metrics.jsonl (or the .jsonl file itself)")
    columns: list[str] = option([], "columns to show, e.g. [step,loss]; empty: every column but time")
    last: int | None = option(20, "show only the last N rows; null: every row", ge=1)
    follow: bool = option(False, "keep printing rows as training writes them (like tail -f); Ctrl-C stops")
    poll_s: float = option(0.5, "seconds between checks for new rows when following", gt=0)


def show_metrics(cfg: MetricsViewConfig) -> int:
    """Print a run's metrics as a table; with `follow`, then print each new row as it lands."""
    path = metrics_path(cfg.run_dir)
    if not path.is_file():
        raise DataError(path, None, None, "no metrics file here (has a run logged to this folder?)")
    rows, offset, line_no = _read_rows(path, offset=0, lines_before=0, partial_last_line=False)
    shown = rows if cfg.last is None else rows[-cfg.last :]
    columns = cfg.columns or _columns(rows)
    if rows:
        print(console_table(shown, columns))
    if len(shown) < len(rows):
        print(f"(last {len(shown)} of {len(rows)} rows; last=null shows all)")
    if not rows:
        print(f"{path}: no rows yet")
    if not cfg.follow:
        return 0
    print(f"following {path} (Ctrl-C stops)", flush=True)
    while True:
        time.sleep(cfg.poll_s)
        try:
            size = path.stat().st_size
        except FileNotFoundError:  # being replaced right now; look again next tick
            continue
        if size < offset:  # the file was replaced by a new run: start over
            offset, line_no = 0, 0
        new_rows, offset, line_no = _read_rows(path, offset, line_no, partial_last_line=False)
        for row in new_rows:
            print(format_metrics_line(row, cfg.columns or None), flush=True)
