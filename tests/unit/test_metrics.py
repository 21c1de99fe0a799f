"""metrics.jsonl: one flushed JSON line per step, read back exactly; console formatting."""

from __future__ import annotations

import importlib.util
import json
import math

import pytest
import torch

from rlhfkit.errors import DataError, RlhfkitError
from rlhfkit.metrics import (
    METRICS_FILE,
    MetricsLogger,
    console_table,
    format_metrics_line,
    read_metrics,
)


def test_lines_round_trip_and_file_is_valid_jsonl_after_each_log(tmp_path):
    logged = [
        {"loss/policy": 0.5, "objective/kl": 0.01, "episode": 8},
        {"loss/policy": 0.25, "objective/kl": -0.002, "episode": 16, "note": "warmup done"},
        {"loss/policy": torch.tensor(0.125), "objective/kl": 0.0, "episode": 24},
    ]
    with MetricsLogger(tmp_path / "run") as logger:
        for step, metrics in enumerate(logged):
            logger.log(step, metrics)
            # Read the file while the logger is still open: flushed, complete, valid JSON.
            text = (tmp_path / "run" / METRICS_FILE).read_text()
            assert text.endswith("\n")
            rows = [json.loads(line) for line in text.splitlines()]
            assert len(rows) == step + 1 and rows[-1]["step"] == step
    rows = read_metrics(tmp_path / "run")
    assert [r["step"] for r in rows] == [0, 1, 2]
    for row, metrics in zip(rows, logged):
        assert {k: v for k, v in row.items() if k not in ("step", "time")} == {
            k: float(v) if isinstance(v, torch.Tensor) else v for k, v in metrics.items()
        }
        assert row["time"] > 0


def test_non_finite_values_stay_valid_json_and_read_back_as_floats(tmp_path):
    with MetricsLogger(tmp_path) as logger:
        logger.log(0, {"a": math.nan, "b": math.inf, "c": -math.inf, "d": 1.0})
    line = (tmp_path / METRICS_FILE).read_text()
    row = json.loads(line, parse_constant=lambda name: pytest.fail(f"bare {name} in JSON"))
    assert (row["a"], row["b"], row["c"]) == ("nan", "inf", "-inf")
    [back] = read_metrics(tmp_path)
    assert math.isnan(back["a"]) and back["b"] == math.inf and back["c"] == -math.inf and back["d"] == 1.0


def test_resumed_run_appends_and_other_ranks_write_nothing(tmp_path):
    with MetricsLogger(tmp_path) as logger:
        logger.log(0, {"x": 1.0})
    with MetricsLogger(tmp_path) as logger:
        logger.log(1, {"x": 2.0})
    assert [r["x"] for r in read_metrics(tmp_path / METRICS_FILE)] == [1.0, 2.0]
    with MetricsLogger(tmp_path / "rank1", rank0=False) as logger:
        logger.log(0, {"x": 1.0})
    assert not (tmp_path / "rank1").exists()


def test_reserved_and_unloggable_values_are_rejected(tmp_path):
    with MetricsLogger(tmp_path) as logger:
        with pytest.raises(ValueError, match="step"):
            logger.log(0, {"step": 1})
        with pytest.raises(TypeError, match="'x'"):
            logger.log(0, {"x": [1, 2]})


def test_crash_cut_last_line_is_skipped_but_bad_lines_are_errors(tmp_path):
    path = tmp_path / METRICS_FILE
    path.write_text('{"step": 0, "x": 1}\n{"step": 1, "x"')
    assert read_metrics(tmp_path) == [{"step": 0, "x": 1}]
    path.write_text('{"step": 0}\nnot json\n{"step": 2}\n')
    with pytest.raises(DataError, match=r"metrics.jsonl:2: not valid JSON"):
        read_metrics(tmp_path)
    with pytest.raises(DataError, match="no metrics file"):
        read_metrics(tmp_path / "elsewhere")


@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is not None, reason="tensorboard is installed")
def test_asking_for_a_missing_mirror_is_a_clear_error(tmp_path):
    with pytest.raises(RlhfkitError, match="pip install tensorboard"):
        MetricsLogger(tmp_path / "run", tensorboard=True)
    assert not (tmp_path / "run").exists()  # checked before anything is created


def test_format_metrics_line():
    metrics = {"step": 10, "loss": 0.412345, "kl": 0.00213, "time": 1.7e9}
    assert format_metrics_line(metrics) == "step=10  loss=0.4123  kl=0.00213"
    assert format_metrics_line(metrics, ["step", "kl", "missing"]) == "step=10  kl=0.00213"


def test_console_table_aligns_numbers_and_keeps_rows_on_one_line():
    rows = [
        {"step": 1, "reward": 0.5, "sample": "a happy\nreview"},
        {"step": 20, "reward": -1.25, "sample": "x" * 100},
    ]
    table = console_table(rows, ["step", "reward", "sample"], max_width=20)
    assert table.splitlines() == [
        "step  reward  sample",
        "----  ------  --------------------",
        "   1     0.5  a happy\\nreview",
        "  20   -1.25  xxxxxxxxxxxxxxxxx...",
    ]
    assert console_table(rows).splitlines()[0].split() == ["step", "reward", "sample"]
    assert console_table([]) == ""
