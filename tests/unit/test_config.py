"""Typed configs: YAML + key=value overrides, checked against field types, ranges and choices."""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass
from typing import Literal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rlhfkit.cli import main as cli_main
from rlhfkit.config import (
    REQUIRED,
    assert_same_config,
    check_config_class,
    config_to_dict,
    flatten_config,
    format_options,
    load_config,
    option,
    option_names,
    save_config,
)
from rlhfkit.core import KL_ESTIMATORS, REDUCTIONS
from rlhfkit.errors import ConfigError
from rlhfkit.recipes.ppo_config import KL_KINDS
from rlhfkit.recipes.ppo_config import PPOConfig as RealPPOConfig
from rlhfkit.recipes.ppo_config import REDUCTIONS as CONFIG_REDUCTIONS
from rlhfkit.recipes.reward_model import RewardModelConfig
from rlhfkit.recipes.sft import SFTConfig


# A tiny config in the shape of the real ones: scalars, a Literal, optionals, a list, a
# tuple, a nested section, a required option and a cross-field check.
@dataclass
class OptimConfig:
    lr: float = option(1e-5, "peak learning rate", gt=0)
    betas: tuple[float, float] = option((0.9, 0.999), "Adam betas", ge=0, lt=1)
    warmup_steps: int = option(0, "linear warmup steps", ge=0)


@dataclass
class PPOConfig:
    clip_eps: float = option(0.2, "PPO ratio clip", gt=0)
    gamma: float = option(1.0, "discount", ge=0, le=1)
    epochs: int = option(4, "PPO epochs per rollout batch", ge=1)


@dataclass
class ExampleConfig:
    model: str = option(REQUIRED, "hub id or local folder")
    algo: Literal["ppo", "reinforce", "rloo", "grpo"] = option("ppo", "RL algorithm")
    seed: int | None = option(None, "random seed; null picks one")
    fp16: bool = option(False, "train in half precision")
    tags: list[str] = option([], "free-form run tags")
    kl_estimator: str = option("k1", "KL estimator", choices=["k1", "k2", "k3"])
    group_size: int = option(1, "samples per prompt", ge=1)
    optim: OptimConfig = option(OptimConfig, "optimizer")
    ppo: PPOConfig = option(PPOConfig, "PPO loss")

    def __post_init__(self):
        if self.algo == "grpo" and self.group_size < 2:
            raise ConfigError(f"group_size: grpo needs at least 2 samples per prompt, got {self.group_size}")


def load(*overrides, path=None):
    return load_config(ExampleConfig, path, ["model=tiny", *overrides])


def error_of(*overrides, path=None) -> str:
    with pytest.raises(ConfigError) as info:
        load(*overrides, path=path)
    message = str(info.value)
    assert "\n" not in message
    return message


# --- overrides and coercion -----------------------------------------------------------------


def test_defaults_and_nested_override():
    cfg = load("optim.lr=3e-6", "ppo.epochs=2")
    assert cfg.model == "tiny"
    assert cfg.optim.lr == 3e-6 and isinstance(cfg.optim.lr, float)
    assert cfg.ppo.epochs == 2 and cfg.ppo.clip_eps == 0.2
    assert cfg.optim.betas == (0.9, 0.999)


def test_defaults_are_not_shared_between_configs():
    a, b = load(), load()
    a.tags.append("x")
    assert b.tags == [] and a.optim is not b.optim


def test_float_from_exponent_and_from_int_text():
    # PyYAML reads "1e-5" as a string: the float field must still take it.
    assert load("optim.lr=1e-5").optim.lr == 1e-5
    cfg = load("optim.lr=3")
    assert cfg.optim.lr == 3.0 and isinstance(cfg.optim.lr, float)


def test_bool_int_none_list_and_tuple():
    cfg = load("fp16=true", "seed=7", "tags=[a, b]", "optim.betas=[0.5, 1e-3]")
    assert cfg.fp16 is True and cfg.seed == 7 and cfg.tags == ["a", "b"]
    assert cfg.optim.betas == (0.5, 1e-3)
    assert load("seed=null").seed is None
    assert load("optim.warmup_steps=1e3").optim.warmup_steps == 1000


def test_str_field_keeps_the_text_as_typed():
    assert load("model=1e-5").model == "1e-5"
    assert load("model=yes").model == "yes"  # not YAML 1.1's True


def test_section_override_with_a_mapping_merges():
    cfg = load("optim={lr: 2e-5}")
    assert cfg.optim.lr == 2e-5 and cfg.optim.betas == (0.9, 0.999)


# --- one-line errors that name the option ---------------------------------------------------


def test_unknown_key_suggests_the_closest_option():
    assert error_of("optim.lrr=1") == "unknown option 'optim.lrr'; did you mean 'optim.lr'?"
    assert error_of("lr=1") == "unknown option 'lr'; did you mean 'optim.lr'?"
    assert error_of("zzzzzz=1") == "unknown option 'zzzzzz'"


def test_wrong_type():
    assert error_of("optim.lr=abc") == "optim.lr: expected a float, got 'abc'"
    assert error_of("fp16=maybe") == "fp16: expected a bool (true or false), got 'maybe'"
    assert error_of("ppo.epochs=2.5") == "ppo.epochs: expected an int, got '2.5'"
    assert error_of("seed=abc") == "seed: expected an int or null, got 'abc'"
    assert error_of("optim.lr=nan") == "optim.lr: expected a float, got 'nan'"
    assert error_of("optim=3") == "optim: expected a mapping of optim.* options, got '3'"
    assert "optim.betas: expected 2 items" in error_of("optim.betas=[0.9]")


def test_out_of_range():
    assert error_of("ppo.clip_eps=-0.1") == "ppo.clip_eps: must be > 0, got -0.1"
    assert error_of("ppo.gamma=1.5") == "ppo.gamma: must be <= 1, got 1.5"
    assert error_of("optim.betas=[0.9, 1.0]") == "optim.betas: must be < 1, got 1.0"


def test_bad_choice():
    assert error_of("algo=ppx") == "algo: expected one of ppo, reinforce, rloo, grpo, got 'ppx'"
    assert error_of("kl_estimator=k4") == "kl_estimator: expected one of k1, k2, k3, got 'k4'"


def test_missing_required_and_malformed_override():
    with pytest.raises(ConfigError, match=r"^model: required option is missing"):
        load_config(ExampleConfig)
    assert "is not key=value" in error_of("fp16")
    assert "bad option name" in error_of("optim..lr=1")


def test_cross_field_check_runs_on_the_final_object():
    assert load("algo=grpo", "group_size=4").group_size == 4
    assert error_of("algo=grpo") == "group_size: grpo needs at least 2 samples per prompt, got 1"


# --- YAML files -----------------------------------------------------------------------------


def test_yaml_file_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model: gpt2\noptim:\n  lr: 1e-4\n  warmup_steps: 10\nppo.epochs: 3\n")
    cfg = load_config(ExampleConfig, path, ["optim.lr=2e-4"])
    assert cfg.model == "gpt2" and cfg.optim.lr == 2e-4
    assert cfg.optim.warmup_steps == 10 and cfg.ppo.epochs == 3


def test_yaml_file_errors_name_the_file(tmp_path):
    missing = tmp_path / "nope.yaml"
    assert error_of(path=missing) == f"config file not found: {missing}"
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim:\n  lr: [1, 2\n")
    assert error_of(path=bad).startswith(f"{bad}: invalid YAML at line")
    listed = tmp_path / "list.yaml"
    listed.write_text("- a\n- b\n")
    expected = f"{listed}: expected a mapping of options (key: value) at the top level, got a list"
    assert error_of(path=listed) == expected
    typo = tmp_path / "typo.yaml"
    typo.write_text("ppo:\n  clip_epss: 0.1\n")
    assert error_of(path=typo) == "unknown option 'ppo.clip_epss'; did you mean 'ppo.clip_eps'?"
    (tmp_path / "empty.yaml").write_text("")
    assert load(path=tmp_path / "empty.yaml") == load()


def test_save_then_load_round_trips(tmp_path):
    cfg = load("algo=rloo", "seed=3", "tags=[x, 'true']", "optim.betas=[0.8, 0.99]", "model=null")
    path = save_config(cfg, tmp_path / "run" / "config.yaml")
    assert load_config(ExampleConfig, path) == cfg
    assert config_to_dict(cfg)["optim"] == {"lr": 1e-5, "betas": [0.8, 0.99], "warmup_steps": 0}


# --- resume checks, listing -----------------------------------------------------------------


def test_assert_same_config(tmp_path):
    path = save_config(load("optim.lr=1e-5"), tmp_path / "config.yaml")
    assert_same_config(path, load("optim.lr=1e-5"))
    with pytest.raises(ConfigError) as info:
        assert_same_config(path, load("optim.lr=3e-6", "seed=1"))
    assert str(info.value) == (
        "resume dir holds a different config: seed null vs 1; optim.lr 1e-05 vs 3e-06 (saved vs now)"
    )
    assert_same_config(path, load("optim.lr=3e-6", "seed=1"), ignore=("optim", "seed"))
    assert flatten_config(load())["ppo.clip_eps"] == 0.2


def test_format_options_lists_every_field_with_its_default():
    text = format_options(ExampleConfig)
    lines = text.splitlines()
    for name in option_names(ExampleConfig):
        assert sum(line.split()[0] == name for line in lines) == 1, name
    assert "optim.lr" in option_names(ExampleConfig) and len(option_names(ExampleConfig)) == 13
    assert any(line.split()[0] == "optim:" for line in lines)  # section header
    line = next(line for line in lines if line.split()[0] == "ppo.clip_eps")
    assert "(float > 0, default 0.2)" in line and line.rstrip().endswith("PPO ratio clip")
    assert "(str, required)" in text and "default ppo" in text and "0 <= float <= 1" in text


def test_config_class_without_help_is_rejected():
    @dataclass
    class NoHelp:
        lr: float = 1e-5

    with pytest.raises(TypeError, match="declare the field with option"):
        check_config_class(NoHelp)
    with pytest.raises(ValueError, match="must be > 0"):
        option(-1.0, "a bad default", gt=0)


# --- never anything but a ConfigError -------------------------------------------------------

_NAMES = option_names(ExampleConfig) + ["optim", "ppo", "lr", "optim.lr.x", "", "a..b"]
_VALUES = ["1e-5", "3", "-0.1", "true", "null", "[1, 2]", "{lr: 1}", "abc", "nan", "inf", "1e400",
           "&a [*a]", "!!float x", "'q'", "[", "{", "ppo", "k2", "0x10", "2024-01-01"]
_override = st.one_of(
    st.text(max_size=20),
    st.builds(
        lambda k, v: f"{k}={v}", st.sampled_from(_NAMES), st.sampled_from(_VALUES) | st.text(max_size=12)
    ),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_override, max_size=4))
def test_random_overrides_load_or_raise_config_error(overrides):
    try:
        cfg = load_config(ExampleConfig, None, ["model=m", *overrides])
    except ConfigError as err:
        assert "\n" not in str(err)
    else:
        assert isinstance(cfg, ExampleConfig)


# --- the real commands: every bad option is exit code 2 and one line ----------------------
#
# Through the command line itself (`rlhfkit <stage> ... --print-config`, which checks the
# whole config and stops before loading anything), on the config classes users really type.

_REQUIRED = {"sft": ["model=m", "data=d.jsonl", "out=o"],
             "reward": ["model=m", "data=d.jsonl", "out=o"],
             "ppo": ["policy=p", "prompts=p.jsonl", "out=o", "reward.functions=[r.py:f]",
                     "value.kind=head"]}
_CLASSES = {"sft": SFTConfig, "reward": RewardModelConfig, "ppo": RealPPOConfig}


def run_stage(stage: str, *args: str, capsys) -> tuple[int, list[str]]:
    code = cli_main([stage, *_REQUIRED[stage], *args, "--print-config"])
    return code, capsys.readouterr().err.strip().splitlines()


@pytest.mark.parametrize("stage, override, message", [
    ("ppo", "optim.lr=-1e-5", "optim.lr: must be > 0, got -1e-05"),
    ("sft", "optim.lr=0", "optim.lr: must be > 0, got 0.0"),
    ("ppo", "optim.lr=1e400", "optim.lr: expected a float, got '1e400'"),
    ("ppo", "optim.lr=nan", "optim.lr: expected a float, got 'nan'"),
    ("ppo", "optim.lr=fast", "optim.lr: expected a float, got 'fast'"),
    ("ppo", "loss.clip_eps=0", "loss.clip_eps: must be > 0, got 0.0"),
    ("ppo", "loss.clip_eps=-0.2", "loss.clip_eps: must be > 0, got -0.2"),
    ("ppo", "loss.gamma=1.5", "loss.gamma: must be <= 1, got 1.5"),
    ("ppo", "loss.lam=-0.1", "loss.lam: must be >= 0, got -0.1"),
    ("ppo", "batch.prompts_per_update=0", "batch.prompts_per_update: must be > 0, got 0"),
    ("ppo", "batch.micro_batch_size=0", "batch.micro_batch_size: must be > 0, got 0"),
    ("ppo", "batch.micro_batch_size=5", "batch.micro_batch_size: 5 does not divide the "
                                        "mini-batch of 16 rows"),
    ("sft", "batch_size=0", "batch_size: must be > 0, got 0"),
    ("reward", "batch_size=-4", "batch_size: must be > 0, got -4"),
    ("sft", "max_steps=2.5", "max_steps: expected an int or null, got '2.5'"),
    ("ppo", "sampling.top_p=1.5", "sampling.top_p: must be <= 1, got 1.5"),
    ("ppo", "algo=ppx", "algo: expected one of ppo, reinforce, rloo, grpo, got 'ppx'"),
    ("ppo", "optim.lrr=1e-5", "unknown option 'optim.lrr'; did you mean 'optim.lr'?"),
    ("ppo", "lr=1e-5", "unknown option 'lr'; did you mean 'value.lr' or 'optim.lr'?"),
    ("ppo", "batch.micro_batchsize=4",
     "unknown option 'batch.micro_batchsize'; did you mean 'batch.micro_batch_size'?"),
    ("ppo", "kl.coeff=0.1", "unknown option 'kl.coeff'; did you mean 'kl.coef'?"),
    ("sft", "bacth_size=4", "unknown option 'bacth_size'; did you mean 'batch_size'?"),
    ("reward", "max_lenght=64", "unknown option 'max_lenght'; did you mean 'max_length'?"),
])
def test_a_bad_option_of_a_real_command_is_exit_2_and_one_line(stage, override, message, capsys):
    code, lines = run_stage(stage, override, capsys=capsys)
    assert code == 2 and lines == [f"error: {message}"]


def test_a_bad_yaml_file_names_the_option(tmp_path, capsys):
    path = tmp_path / "ppo.yaml"
    path.write_text("optim:\n  lr: fast\n")
    code, lines = run_stage("ppo", "--config", str(path), capsys=capsys)
    assert code == 2 and lines == ["error: optim.lr: expected a float, got 'fast'"]
    path.write_text("loss: {gamma: 2}\n")
    code, lines = run_stage("ppo", "--config", str(path), capsys=capsys)
    assert code == 2 and lines == ["error: loss.gamma: must be <= 1, got 2.0"]


def _typo(name: str, i: int) -> str:
    """One character of `name` dropped, doubled or swapped with the next."""
    i %= len(name)
    return [name[:i] + name[i + 1:], name[:i] + name[i] + name[i:],
            name[:i] + name[i + 1:i + 2] + name[i:i + 1] + name[i + 2:]][i % 3]


_BAD_VALUES = ["-1", "0", "-0.5", "1.5", "1e400", "-1e400", "nan", "inf", "abc", "", "true",
               "null", "[1, 2]", "{a: 1}", "[", "'q'", "0x10", "1_000", "999999999999999999999",
               "2024-01-01", "&a [*a]", "!!python/object:os.system x", "\x00", "é"]


@st.composite
def _real_override(draw, stage: str) -> str:
    names = option_names(_CLASSES[stage])
    name = draw(st.sampled_from(names))
    if draw(st.integers(0, 3)) == 0:
        name = _typo(name, draw(st.integers(0, 100)))
    value = draw(st.one_of(st.sampled_from(_BAD_VALUES), st.text(max_size=8),
                           st.integers().map(str), st.floats().map(str)))
    return f"{name}={value}"


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(sorted(_REQUIRED)).flatmap(
    lambda stage: st.tuples(st.just(stage), st.lists(_real_override(stage), min_size=1,
                                                    max_size=3))))
def test_random_options_of_the_real_commands_load_or_fail_in_one_line(stage_and_overrides):
    stage, overrides = stage_and_overrides
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        code = cli_main([stage, *_REQUIRED[stage], *overrides, "--print-config"])
    lines = err.getvalue().strip().splitlines()
    if code == 0:
        assert lines == [] and out.getvalue()  # the resolved config was printed
    else:
        assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), lines


def test_ppo_config_choices_name_the_core_functions():
    # ppo_config spells the names out (it must not import torch); they must stay the same.
    assert KL_KINDS == tuple(KL_ESTIMATORS) and CONFIG_REDUCTIONS == REDUCTIONS
