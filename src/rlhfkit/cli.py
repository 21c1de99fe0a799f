"""The `rlhfkit` command line: `rlhfkit <command> [--config FILE] [key=value ...]`.

Each command is a config dataclass plus a function `run(cfg) -> int | None`. The command
line reads the YAML file, applies the `key=value` overrides (dotted names reach nested
sections: `optim.lr=1e-5`), checks every value (see `rlhfkit.config`), then calls `run`.

Commands are registered by "module:attribute" paths and imported only when used, so
`rlhfkit --help` lists every stage without importing torch or transformers.

Exit codes: 0 success; 2 a mistake the user can fix (`error: <one line>` on stderr, a
traceback only with `--debug`); 130 interrupted with Ctrl-C. A bug anywhere else keeps its
traceback and Python's exit code 1, because hiding it would help nobody.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import sys
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from rlhfkit import __version__
from rlhfkit.config import config_to_yaml, format_options, load_config
from rlhfkit.errors import RlhfkitError

__all__ = ["Command", "UsageError", "register", "command", "commands", "main"]

_DESCRIPTION = "Reinforcement Learning from Human Feedback for Hugging Face causal LMs."
_USAGE = "rlhfkit <command> [--config FILE] [key=value ...] [--print-config] [--debug]"


class UsageError(RlhfkitError):
    """A malformed command line: unknown command, unknown flag."""


# ---------------------------------------------------------------------------------------------
# The registry
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Command:
    """One `rlhfkit <name>` command.

    `config` is the config dataclass and `run` the function `run(cfg) -> int | None`; either
    may be given as a "package.module:attribute" string, imported on first use.
    """

    name: str
    config: type | str
    run: Callable[[Any], int | None] | str
    help: str

    def config_class(self) -> type:
        return _resolve(self.config)

    def runner(self) -> Callable[[Any], int | None]:
        return _resolve(self.run)


_COMMANDS: dict[str, Command] = {}


def register(name: str, config: type | str, run: Callable | str, help: str) -> Command:
    """Add `rlhfkit <name>`; `config`/`run` may be objects or "module:attribute" strings."""
    if name in _COMMANDS:
        raise ValueError(f"rlhfkit command {name!r} is already registered")
    if not name or name.startswith("-") or any(c.isspace() for c in name):
        raise ValueError(f"bad command name {name!r}")
    _COMMANDS[name] = Command(name, config, run, help)
    return _COMMANDS[name]


def command(name: str, config: type | str, help: str) -> Callable[[Callable], Callable]:
    """Decorator form of `register`: `@command("sft", SFTConfig, "...")` above `def main(cfg)`."""

    def decorate(run: Callable) -> Callable:
        register(name, config, run, help)
        return run

    return decorate


def commands() -> list[Command]:
    """The registered commands, in registration order."""
    return list(_COMMANDS.values())


def _resolve(target: Any) -> Any:
    """The object a "module:attribute" string names (imported now); other values pass through."""
    if not isinstance(target, str):
        return target
    module, _, attribute = target.partition(":")
    return getattr(importlib.import_module(module), attribute)


# Built-in commands, named by path so that `rlhfkit --help` imports none of them. Their
# config classes live in modules that import no torch (`recipes.options`, `*_config`), so
# that `rlhfkit <stage> --help` and `--print-config` are instant too (test_cli checks).
register("init-model", "rlhfkit.recipes.init_model:InitModelConfig",
         "rlhfkit.recipes.init_model:main",
         "a random tiny GPT-2 or Llama and a tokenizer trained on a text file (offline)")
register("sft", "rlhfkit.recipes.sft_config:SFTConfig", "rlhfkit.recipes.sft:main",
         "SFT stage: fine-tune a causal LM on demonstrations (loss on completion tokens)")
register("reward", "rlhfkit.recipes.reward_config:RewardModelConfig",
         "rlhfkit.recipes.reward_model:main",
         "reward-model stage: Bradley-Terry training on preference pairs")
register("demo", "rlhfkit.demo:DemoConfig", "rlhfkit.demo:main",
         "the whole pipeline on a built-in task: SFT, feedback, reward model, RL, report")
register("ppo", "rlhfkit.recipes.ppo_config:PPOConfig", "rlhfkit.recipes.ppo:main",
         "RL stage: PPO, REINFORCE, RLOO or GRPO against a reward model or function")
register("report", "rlhfkit.report.build:ReportConfig", "rlhfkit.report.build:main",
         "rebuild a run's self-contained HTML report: plots of every signal, token-level views")
register("sample-pairs", "rlhfkit.label.pairs:SamplePairsConfig", "rlhfkit.label.pairs:main",
         "sample two responses per prompt from a model, to label later with `rlhfkit label`")
register("label", "rlhfkit.label.command:LabelConfig", "rlhfkit.label.command:main",
         "collect human preferences in a local web page (stats=true: counts and agreement)")
register(
    "metrics",
    "rlhfkit.metrics:MetricsViewConfig",
    "rlhfkit.metrics:show_metrics",
    "print a run's metrics.jsonl as a table (follow=true keeps printing new rows)",
)


# ---------------------------------------------------------------------------------------------
# Parsing and running
# ---------------------------------------------------------------------------------------------


class _ParserExit(Exception):
    """argparse finished early (`--help`) with this exit status."""

    def __init__(self, status: int):
        super().__init__(status)
        self.status = status


class _Parser(argparse.ArgumentParser):
    """argparse that reports mistakes as one-line UsageErrors and never calls sys.exit."""

    def error(self, message: str):
        raise UsageError(f"{self.prog}: {message} (see {self.prog} --help)")

    def exit(self, status: int = 0, message: str | None = None):
        if message:
            print(message, file=sys.stderr, end="")
        raise _ParserExit(status)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line on `argv` (default: sys.argv[1:]) and return the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    try:
        return _dispatch([a for a in argv if a != "--debug"])
    except KeyboardInterrupt:
        if debug:
            traceback.print_exc()
        print("interrupted (Ctrl-C)", file=sys.stderr)
        return 130
    except _ParserExit as done:
        return done.status
    except RlhfkitError as err:
        if debug:
            traceback.print_exc()
        print(f"error: {' '.join(str(err).split())}", file=sys.stderr)  # always one line
        return 2


def _dispatch(argv: list[str]) -> int:
    """`rlhfkit --help | --version | <command> ...`."""
    if not argv:
        print(_top_help(), file=sys.stderr)
        return 2
    first, rest = argv[0], argv[1:]
    if first in ("-h", "--help"):
        print(_top_help())
        return 0
    if first == "--version":
        print(f"rlhfkit {__version__}")
        return 0
    if first.startswith("-"):
        raise UsageError(f"unknown flag {first!r} before the command; usage: {_USAGE}")
    return _run_command(_find_command(first), rest)


def _find_command(name: str) -> Command:
    if name in _COMMANDS:
        return _COMMANDS[name]
    names = list(_COMMANDS)
    guess = difflib.get_close_matches(name, names, n=1)
    hint = f"; did you mean {guess[0]!r}?" if guess else ""
    raise UsageError(f"unknown command {name!r}{hint} (commands: {', '.join(names)})")


def _run_command(cmd: Command, argv: list[str]) -> int:
    """Parse the command's flags and overrides, load its config, run it."""
    config_cls = cmd.config_class()
    parser = _command_parser(cmd, config_cls)
    args = parser.parse_intermixed_args(argv)
    cfg = load_config(config_cls, args.config, args.overrides)
    if args.print_config:
        print(config_to_yaml(cfg), end="")
        return 0
    result = cmd.runner()(cfg)
    return result if isinstance(result, int) and not isinstance(result, bool) else 0


def _command_parser(cmd: Command, config_cls: type) -> _Parser:
    """`rlhfkit <cmd> --help` shows the description and every option with its default."""
    parser = _Parser(
        prog=f"rlhfkit {cmd.name}",
        usage=f"rlhfkit {cmd.name} [--config FILE] [key=value ...] [--print-config] [--debug]",
        description=cmd.help,
        epilog="options (key=value; dotted names for sections; values are YAML):\n"
        + format_options(config_cls),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", metavar="FILE", help="YAML file of options; key=value overrides win")
    parser.add_argument(
        "--print-config", action="store_true", help="print the resolved config as YAML and exit"
    )
    parser.add_argument("--debug", action="store_true", help="show the full traceback on errors")
    parser.add_argument(
        "overrides", nargs="*", metavar="key=value", help="option overrides, e.g. optim.lr=1e-5"
    )
    return parser


def _top_help() -> str:
    width = max((len(name) for name in _COMMANDS), default=0)
    lines = [f"usage: {_USAGE}", "", _DESCRIPTION, "", "commands:"]
    lines += [f"  {c.name:<{width}}  {c.help}" for c in _COMMANDS.values()]
    lines += [
        "",
        "flags:",
        "  -h, --help  show this help; 'rlhfkit <command> --help' lists every option with its default",
        "  --version   print the version",
        "  --debug     show the full traceback on errors",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
