"""Typed configuration: dataclasses with one-line help, read from YAML plus `key=value` overrides.

A config is a plain dataclass whose every field is declared with `option(default, help)`:

    @dataclass
    class OptimConfig:
        lr: float = option(1e-5, "peak learning rate", gt=0)

    @dataclass
    class SFTConfig:
        model: str = option(REQUIRED, "hub id or local folder of the model to fine-tune")
        optim: OptimConfig = option(OptimConfig, "optimizer")

`load_config(SFTConfig, "sft.yaml", ["optim.lr=3e-5"])` reads the file, applies the overrides
(dotted names reach nested sections), checks every value against its field's type, range and
choices, then runs the dataclass's own cross-field checks (`__post_init__`, `validate()`).

The code fixes the types; a file only holds values. Nothing is ever instantiated by a class
name written in a config, so a config can be read, diffed and reviewed as plain data.

Every mistake is a `ConfigError` whose one-line message names the option:
    unknown option 'optim.lrr'; did you mean 'optim.lr'?
    optim.lr: expected a float, got 'abc'
    ppo.clip_eps: must be > 0, got -0.1
    algo: expected one of ppo, reinforce, rloo, grpo, got 'ppx'

Supported field types: bool, int, float, str, `X | None`, `Literal[...]`, `list[X]`,
`tuple[X, ...]`, `tuple[X, Y]`, `dict[str, X]`, `Any` and nested config dataclasses.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import functools
import math
import operator
import os
import tempfile
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

import yaml

from rlhfkit.errors import ConfigError

__all__ = [
    "REQUIRED",
    "option",
    "load_config",
    "config_to_dict",
    "config_to_yaml",
    "save_config",
    "flatten_config",
    "assert_same_config",
    "option_names",
    "format_options",
    "check_config_class",
]

C = TypeVar("C")

# A field declared `option(REQUIRED, ...)` has no default: loading fails unless it is set.
# Dataclasses need such fields before the defaulted ones (or `@dataclass(kw_only=True)`).
REQUIRED: Any = dataclasses.MISSING

_META_KEY = "rlhfkit"
_NONE = type(None)
_MAX_SHOWN = 60  # longest value echoed back in an error message, so messages stay one line


# ---------------------------------------------------------------------------------------------
# Declaring options
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Spec:
    """What `option()` records about a field, next to its type annotation."""

    help: str
    choices: tuple | None = None
    gt: float | None = None
    ge: float | None = None
    lt: float | None = None
    le: float | None = None


def option(
    default: Any,
    help: str,
    *,
    choices: Iterable | None = None,
    gt: float | None = None,
    ge: float | None = None,
    lt: float | None = None,
    le: float | None = None,
) -> Any:
    """A dataclass field with a one-line `help`, an optional range and optional choices.

    `default` may be a plain value, `REQUIRED`, a config dataclass (the class itself: each
    instance gets a fresh default section) or a mutable value (list, dict, dataclass instance),
    which is deep-copied per instance so no two configs share it.
    """
    spec = _Spec(help, tuple(choices) if choices is not None else None, gt, ge, lt, le)
    metadata = {_META_KEY: spec}
    if default is REQUIRED:
        return field(metadata=metadata)
    if isinstance(default, type) and is_dataclass(default):
        return field(default_factory=default, metadata=metadata)
    problem = _constraint_problem(default, spec)
    if problem is not None:
        raise ValueError(f"option default {problem}")
    # Same test dataclasses itself uses to refuse a shared mutable default.
    if type(default).__hash__ is None:
        return field(default_factory=functools.partial(copy.deepcopy, default), metadata=metadata)
    return field(default=default, metadata=metadata)


def _constraint_problem(value: Any, spec: _Spec) -> str | None:
    """Why `value` breaks the choices or range of `spec` (element-wise for lists), or None."""
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        problems = (_constraint_problem(item, spec) for item in value)
        return next((p for p in problems if p is not None), None)
    if spec.choices is not None and value not in spec.choices:
        allowed = ", ".join(_format_value(c) for c in spec.choices)
        return f"expected one of {allowed}, got {_show(value)}"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        for bound, holds, symbol in _bounds(spec):
            if not holds(value, bound):
                return f"must be {symbol} {_format_value(bound)}, got {_format_value(value)}"
    return None


def _bounds(spec: _Spec) -> list[tuple[float, Any, str]]:
    """The bounds set on `spec` as (bound, comparison, symbol)."""
    candidates = [
        (spec.gt, operator.gt, ">"),
        (spec.ge, operator.ge, ">="),
        (spec.lt, operator.lt, "<"),
        (spec.le, operator.le, "<="),
    ]
    return [c for c in candidates if c[0] is not None]


@functools.lru_cache(maxsize=None)
def check_config_class(cls: type) -> None:
    """Raise TypeError unless every field of `cls` (and of its sections) is a proper option.

    A proper option is declared with `option()`, has one non-empty line of help and a type
    that `load_config` can check. Run on every load and every `--help`, so a config class
    missing a help line fails the first test that touches it.
    """
    if not (isinstance(cls, type) and is_dataclass(cls)):
        raise TypeError(f"{cls!r} is not a dataclass")
    hints = _hints(cls)
    for f in fields(cls):
        if not f.init:
            continue
        where = f"{cls.__name__}.{f.name}"
        spec = f.metadata.get(_META_KEY)
        if spec is None:
            raise TypeError(f"{where}: declare the field with option(default, help)")
        if not spec.help.strip() or "\n" in spec.help:
            raise TypeError(f"{where}: help must be one non-empty line")
        _check_type_supported(hints[f.name], where)
        section = _section_type(hints[f.name])
        if section is not None:
            check_config_class(section)


def _check_type_supported(tp: Any, where: str) -> None:
    """Raise TypeError if `_coerce_value` has no rule for `tp`."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any or tp in (bool, int, float, str, _NONE) or origin is Literal or is_dataclass(tp):
        return
    if origin in (Union, types.UnionType, list, tuple, dict):
        for arg in args:
            if arg is not Ellipsis:
                _check_type_supported(arg, where)
        return
    raise TypeError(f"{where}: unsupported option type {tp!r}")


@functools.lru_cache(maxsize=None)
def _hints(cls: type) -> dict[str, Any]:
    """Resolved field types (annotations may be strings under `from __future__ import annotations`)."""
    return typing.get_type_hints(cls)


def _section_type(tp: Any) -> type | None:
    """The config dataclass held by a field of type `tp` (also `Section | None`), else None."""
    if is_dataclass(tp):
        return tp
    if typing.get_origin(tp) in (Union, types.UnionType):
        sections = [a for a in typing.get_args(tp) if is_dataclass(a)]
        return sections[0] if len(sections) == 1 else None
    return None


def _spec(f: dataclasses.Field) -> _Spec:
    return f.metadata.get(_META_KEY) or _Spec(help="")


# ---------------------------------------------------------------------------------------------
# Loading: YAML file, then overrides, then type/range checks, then cross-field checks
# ---------------------------------------------------------------------------------------------


def load_config(cls: type[C], path: str | os.PathLike | None = None, overrides: Sequence[str] = ()) -> C:
    """Build a `cls` from a YAML file (optional) and `key=value` overrides applied after it.

    Override values are YAML (`true`, `null`, `[1, 2]`, `{lr: 1e-5}`); numbers for int and
    float fields are read with Python's rules, so `1e-5` is a float and `010` is ten. A str
    field takes the text as typed. Raises ConfigError with a one-line message naming the option.
    """
    if isinstance(overrides, str):
        raise TypeError("overrides must be a sequence of 'key=value' strings, not one string")
    check_config_class(cls)
    tree: dict = {}
    try:
        if path is not None:
            _merge_into(tree, _read_yaml_mapping(path))
        for item in overrides:
            key, value = _split_override(item)
            _merge_into(tree, {key: value})
        cfg = _build(cls, tree, prefix="")
    except _UnknownOption as err:
        raise ConfigError(_unknown_message(err.name, option_names(cls))) from None
    except RecursionError:  # a YAML alias that contains itself (`&a [*a]`) never bottoms out
        raise ConfigError("config nests too deeply (a recursive YAML alias?)") from None
    _run_validate(cfg)
    return cfg


def _read_yaml_mapping(path: str | os.PathLike) -> dict:
    """The top-level mapping of a YAML file; every failure is a ConfigError naming the file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {p}") from None
    except (OSError, UnicodeDecodeError) as err:
        reason = getattr(err, "strerror", None) or _one_line(str(err))
        raise ConfigError(f"cannot read config file {p}: {reason}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise ConfigError(f"{p}: invalid YAML{where}: {err.problem or err.context}") from None
    except Exception as err:  # noqa: BLE001 - YAML constructors also raise ValueError & co.
        raise ConfigError(f"{p}: invalid YAML: {_one_line(str(err))}") from None
    if data is None:  # an empty file means "all defaults"
        return {}
    if not isinstance(data, dict):
        kind = "list" if isinstance(data, list) else type(data).__name__
        raise ConfigError(
            f"{p}: expected a mapping of options (key: value) at the top level, got a {kind}"
        )
    return data


class _Override:
    """An override's value: the text as typed and its YAML reading.

    Keeping the text lets a str field take `name=1e-5` literally and lets int/float fields use
    Python's number rules instead of YAML 1.1's (where `1e-5` is a string and `010` is eight).
    """

    __slots__ = ("raw", "parsed")

    def __init__(self, raw: str):
        self.raw = raw
        try:
            self.parsed = yaml.safe_load(raw)
        except Exception:  # noqa: BLE001 - unparseable text stays text; the field's type decides
            self.parsed = raw

    def __repr__(self) -> str:  # error messages show what the user typed
        return repr(self.raw)


def _split_override(item: str) -> tuple[str, Any]:
    """'optim.lr=1e-5' -> ('optim.lr', value); a `{...}` value merges into the section."""
    if not isinstance(item, str):
        raise ConfigError(f"override {_show(item)} is not a 'key=value' string")
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"override {_show(item)} is not key=value (e.g. optim.lr=1e-5)")
    if any(not part or part != part.strip() for part in key.split(".")):
        raise ConfigError(f"bad option name {_show(key)} in override {_show(item)}")
    value = _Override(raw)
    return key, value.parsed if isinstance(value.parsed, dict) else value


def _merge_into(tree: dict, mapping: Mapping) -> None:
    """Merge `mapping` into `tree`, section by section; dotted keys ('optim.lr') are paths."""
    for key, value in mapping.items():
        parts = key.split(".") if isinstance(key, str) else [key]
        node = tree
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        leaf = parts[-1]
        if isinstance(value, dict):
            if not isinstance(node.get(leaf), dict):
                node[leaf] = {}
            _merge_into(node[leaf], value)
        else:
            node[leaf] = value


class _UnknownOption(ConfigError):
    """Raised deep in `_build`; `load_config` adds the did-you-mean from the whole config."""

    def __init__(self, name: str):
        super().__init__(f"unknown option {name!r}")
        self.name = name


def _build(cls: type[C], tree: Mapping, prefix: str) -> C:
    """Instantiate `cls` from the values in `tree`, checking each one; defaults fill the rest."""
    hints = _hints(cls)
    by_name = {f.name: f for f in fields(cls) if f.init}
    kwargs = {}
    for key, value in tree.items():
        f = by_name.get(key) if isinstance(key, str) else None
        if f is None:
            raise _UnknownOption(f"{prefix}{key}")
        name = prefix + key
        result = _coerce(value, hints[key], name)
        problem = _constraint_problem(result, _spec(f))
        if problem is not None:
            raise ConfigError(f"{name}: {problem}")
        kwargs[key] = result
    for f in by_name.values():
        if f.name not in kwargs and f.default is REQUIRED and f.default_factory is REQUIRED:
            raise ConfigError(f"{prefix}{f.name}: required option is missing (set {prefix}{f.name}=...)")
    return cls(**kwargs)  # runs the class's own __post_init__ checks


def _run_validate(cfg: Any) -> None:
    """Call `validate()` on every section, innermost first, then on the config itself."""
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        if is_dataclass(value) and not isinstance(value, type):
            _run_validate(value)
    validate = getattr(cfg, "validate", None)
    if callable(validate):
        validate()


def _unknown_message(name: str, known: list[str]) -> str:
    """'unknown option X; did you mean Y?' with Y the closest dotted option name."""
    last = name.rsplit(".", 1)[-1]
    # A bare `lr=` for `optim.lr`: the last segment names one option exactly.
    same_leaf = [k for k in known if k.rsplit(".", 1)[-1] == last and k != name]
    guess = same_leaf or difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    message = f"unknown option {_show(name)}"
    if not guess:
        return message
    return f"{message}; did you mean {' or '.join(repr(g) for g in guess[:3])}?"


# ---------------------------------------------------------------------------------------------
# Coercion: one YAML/override value -> the field's type, or a ConfigError naming the option
# ---------------------------------------------------------------------------------------------

_FAIL = object()  # a scalar rule's "does not fit"


def _coerce(value: Any, tp: Any, name: str) -> Any:
    """`value` (from YAML, or an `_Override`) checked and converted to type `tp`."""
    if isinstance(value, _Override):
        return _coerce_value(value.parsed, value.raw, tp, name)
    return _coerce_value(value, None, tp, name)


def _coerce_value(value: Any, raw: str | None, tp: Any, name: str) -> Any:
    """Dispatch on the shape of `tp`; `raw` is the typed text for overrides, else None."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        return _coerce_union(value, raw, tp, name)
    if origin is Literal:
        return _coerce_literal(value, raw, typing.get_args(tp), name)
    if is_dataclass(tp):
        if not isinstance(value, dict):
            got = _show(_shown(value, raw))
            raise ConfigError(f"{name}: expected a mapping of {name}.* options, got {got}")
        return _build(tp, value, prefix=name + ".")
    if origin in (list, tuple, dict) or tp in (list, tuple, dict):
        return _coerce_container(value, raw, tp, name)
    rule = _SCALAR_RULES.get(tp)
    result = rule(value, raw) if rule is not None else _FAIL
    if result is _FAIL:
        raise ConfigError(f"{name}: expected {_type_phrase(tp)}, got {_show(_shown(value, raw))}")
    return result


def _coerce_union(value: Any, raw: str | None, tp: Any, name: str) -> Any:
    """`X | None` and friends: null first, then each member in order."""
    members = [a for a in typing.get_args(tp) if a is not _NONE]
    nullable = len(members) < len(typing.get_args(tp))
    if nullable and (value is None or (raw in ("None", "none") and str not in members)):
        return None
    if len(members) == 1 and is_dataclass(members[0]):
        return _coerce_value(value, raw, members[0], name)  # keep the section's precise error
    for member in members:
        try:
            return _coerce_value(value, raw, member, name)
        except _UnknownOption:
            raise
        except ConfigError:
            continue
    raise ConfigError(f"{name}: expected {_type_phrase(tp)}, got {_show(_shown(value, raw))}")


def _coerce_literal(value: Any, raw: str | None, allowed: tuple, name: str) -> Any:
    """One of the Literal's values, compared with its type (so True never matches 1)."""
    candidates = [value] if raw is None else [value, raw]
    for candidate in candidates:
        for choice in allowed:
            if type(candidate) is type(choice) and candidate == choice:
                return choice
    choices = ", ".join(_format_value(c) for c in allowed)
    raise ConfigError(f"{name}: expected one of {choices}, got {_show(_shown(value, raw))}")


def _coerce_container(value: Any, raw: str | None, tp: Any, name: str) -> Any:
    """list[X], tuple[X, ...], tuple[X, Y], dict[K, V]; elements are checked one by one."""
    origin = typing.get_origin(tp) or tp
    args = typing.get_args(tp)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{name}: expected a mapping, got {_show(_shown(value, raw))}")
        key_tp, value_tp = args or (Any, Any)
        return {
            _coerce(k, key_tp, f"{name} key"): _coerce(v, value_tp, f"{name}.{k}")
            for k, v in value.items()
        }
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"{name}: expected {_type_phrase(tp)}, got {_show(_shown(value, raw))}")
    if origin is list:
        item_tps = [args[0] if args else Any] * len(value)
    elif not args or (len(args) == 2 and args[1] is Ellipsis):
        item_tps = [args[0] if args else Any] * len(value)
    elif len(args) != len(value):
        raise ConfigError(f"{name}: expected {len(args)} items, got {len(value)}: {_show(value)}")
    else:
        item_tps = list(args)
    items = [_coerce(v, t, f"{name}[{i}]") for i, (v, t) in enumerate(zip(value, item_tps))]
    return items if origin is list else tuple(items)


def _number_from_text(text: str) -> Any:
    """int or float by Python's rules (`1e-5`, `3`, `1_000`), or _FAIL."""
    for parse in (int, float):
        try:
            return parse(text)
        except (ValueError, OverflowError):
            continue
    return _FAIL


def _numeric_input(value: Any, raw: str | None) -> Any:
    """What an int/float field should look at: the typed text read as a number, else the value."""
    text = raw if raw is not None else value if isinstance(value, str) else None
    if text is not None:
        number = _number_from_text(text)
        if number is not _FAIL:
            return number
    return value


def _to_int(value: Any, raw: str | None) -> Any:
    value = _numeric_input(value, raw)
    if isinstance(value, bool):
        return _FAIL
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():  # 3.0 and 1e3 are whole numbers
        return int(value)
    return _FAIL


def _to_float(value: Any, raw: str | None) -> Any:
    value = _numeric_input(value, raw)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return _FAIL
    try:
        number = float(value)
    except OverflowError:  # an int too large for a float
        return _FAIL
    # NaN passes every comparison as False, so it would slip through range checks unseen;
    # an infinite learning rate or clip range is no setting either (`null` turns one off).
    return number if math.isfinite(number) else _FAIL


def _to_bool(value: Any, raw: str | None) -> Any:
    return value if isinstance(value, bool) else _FAIL


def _to_str(value: Any, raw: str | None) -> Any:
    if isinstance(value, str):
        return value
    # `name=1e-5`, `name=yes`, `name=null` on a str field mean the text, not YAML's reading.
    return raw if raw is not None else _FAIL


_SCALAR_RULES = {int: _to_int, float: _to_float, bool: _to_bool, str: _to_str}


def _shown(value: Any, raw: str | None) -> Any:
    """What to echo back in an error: the text as typed when there is one."""
    return raw if raw is not None else value


# ---------------------------------------------------------------------------------------------
# Saving, comparing, listing
# ---------------------------------------------------------------------------------------------


def config_to_dict(cfg: Any) -> dict:
    """A config as nested plain dicts/lists/scalars (tuples become lists), ready for YAML or JSON."""
    if not (is_dataclass(cfg) and not isinstance(cfg, type)):
        raise TypeError(f"expected a config dataclass instance, got {type(cfg).__name__}")
    return {f.name: _plain(getattr(cfg, f.name)) for f in fields(cfg) if f.init}


def _plain(value: Any) -> Any:
    if is_dataclass(value) and not isinstance(value, type):
        return config_to_dict(value)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def config_to_yaml(cfg: Any) -> str:
    """A config as YAML text, in field order; `load_config` reads it back to an equal config."""
    # default_flow_style=None: short leaf lists stay on one line (`betas: [0.9, 0.999]`).
    tree = config_to_dict(cfg)
    return yaml.safe_dump(tree, sort_keys=False, allow_unicode=True, default_flow_style=None)


def save_config(cfg: Any, path: str | os.PathLike) -> Path:
    """Write `cfg` as YAML to `path` (folders created); atomic, so a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(config_to_yaml(cfg))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def flatten_config(cfg: Any) -> dict[str, Any]:
    """{dotted name: value} for a config or a nested dict (e.g. for wandb/TensorBoard hparams)."""
    tree = config_to_dict(cfg) if is_dataclass(cfg) else cfg
    flat: dict[str, Any] = {}

    def walk(node: Mapping, prefix: str) -> None:
        for key, value in node.items():
            if isinstance(value, dict) and value:
                walk(value, f"{prefix}{key}.")
            else:
                flat[f"{prefix}{key}"] = value

    walk(tree, "")
    return flat


def assert_same_config(
    saved: Mapping | str | os.PathLike,
    cfg: Any,
    *,
    ignore: Iterable[str] = (),
    what: str = "resume dir",
) -> None:
    """Raise ConfigError if `cfg` differs from `saved` (a dict or a YAML file), except `ignore`.

    For resuming: the run folder's saved config must match the one given now, apart from
    options that may change on resume (`ignore` holds dotted names or section prefixes, e.g.
    ("train.max_steps", "logging")). The message lists the differences, saved value first:
        resume dir holds a different config: ppo.lr 1e-05 vs 3e-06
    """
    saved_tree = _read_yaml_mapping(saved) if isinstance(saved, (str, os.PathLike)) else saved
    old, new = flatten_config(saved_tree), flatten_config(cfg)
    ignored = tuple(ignore)

    missing = object()

    def skipped(name: str) -> bool:
        return any(name == i or name.startswith(i + ".") for i in ignored)

    def show(value: Any) -> str:
        return "(absent)" if value is missing else _format_value(value)

    diffs = []
    for name in list(old) + [n for n in new if n not in old]:
        a, b = old.get(name, missing), new.get(name, missing)
        if not skipped(name) and a != b:
            diffs.append(f"{name} {show(a)} vs {show(b)}")
    if diffs:
        more = f" (and {len(diffs) - 5} more)" if len(diffs) > 5 else ""
        listed = "; ".join(diffs[:5])
        raise ConfigError(f"{what} holds a different config: {listed}{more} (saved vs now)")


def option_names(cls: type) -> list[str]:
    """Every dotted option name of `cls`, sections expanded, in declaration order."""
    names = []
    for f in fields(cls):
        if not f.init:
            continue
        section = _section_type(_hints(cls)[f.name])
        if section is None:
            names.append(f.name)
        else:
            names.extend(f"{f.name}.{sub}" for sub in option_names(section))
    return names


def format_options(cls: type) -> str:
    """Every option of `cls`, one per line, grouped by section: `name  (type, default X)  help`."""
    check_config_class(cls)
    rows = list(_option_rows(cls, prefix=""))
    width = max((len(r[1]) for r in rows if r[0] == "option"), default=0)
    lines = []
    for kind, name, detail, help in rows:
        if kind == "section":
            lines.append(f"{name}: {help}")
        else:
            lines.append(f"  {name:<{width}}  ({detail})  {help}")
    return "\n".join(lines)


def _option_rows(cls: type, prefix: str):
    """('option', name, detail, help) rows for the plain fields, then each section's rows."""
    hints = _hints(cls)
    plain = [f for f in fields(cls) if f.init and _section_type(hints[f.name]) is None]
    sections = [f for f in fields(cls) if f.init and _section_type(hints[f.name]) is not None]
    for f in plain:
        detail = f"{_type_label(hints[f.name], _spec(f))}, {_default_label(f)}"
        yield "option", prefix + f.name, detail, _spec(f).help
    for f in sections:
        yield "section", prefix + f.name, "", _spec(f).help
        yield from _option_rows(_section_type(hints[f.name]), prefix + f.name + ".")


def _default_label(f: dataclasses.Field) -> str:
    if f.default is not REQUIRED:
        return f"default {_format_value(f.default)}"
    if f.default_factory is not REQUIRED:
        return f"default {_format_value(f.default_factory())}"
    return "required"


def _type_label(tp: Any, spec: _Spec) -> str:
    """'float', '0 <= float <= 1', 'ppo|rloo', 'int | None' for `format_options`."""
    label = _type_name(tp)
    if spec.choices is not None:
        label = "|".join(_format_value(c) for c in spec.choices)
    lower = [(b, s) for b, _, s in _bounds(spec) if s.startswith(">")]
    upper = [(b, s) for b, _, s in _bounds(spec) if s.startswith("<")]
    if lower and upper:
        (lo, lo_sym), (hi, hi_sym) = lower[0], upper[0]
        flipped = "<" if lo_sym == ">" else "<="  # 'x > 0' reads '0 < x'
        return f"{_format_value(lo)} {flipped} {label} {hi_sym} {_format_value(hi)}"
    for bound, symbol in lower + upper:
        label += f" {symbol} {_format_value(bound)}"
    return label


def _type_name(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is _NONE:
        return "null"
    if tp is Any:
        return "any"
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in args)
    if origin is Literal:
        return "|".join(_format_value(a) for a in args)
    if origin in (list, tuple, dict):
        inner = ", ".join("..." if a is Ellipsis else _type_name(a) for a in args)
        return f"{origin.__name__}[{inner}]" if args else origin.__name__
    return getattr(tp, "__name__", str(tp))


_PHRASES = {
    bool: "a bool (true or false)",
    int: "an int",
    float: "a float",
    str: "a string",
    _NONE: "null",
}


def _type_phrase(tp: Any) -> str:
    """'a float', 'an int or null', 'a list[int]' for error messages."""
    if typing.get_origin(tp) in (Union, types.UnionType):
        return " or ".join(_type_phrase(a) for a in typing.get_args(tp))
    if typing.get_origin(tp) is Literal:
        return "one of " + ", ".join(_format_value(a) for a in typing.get_args(tp))
    return _PHRASES.get(tp) or f"a {_type_name(tp)}"


def _format_value(value: Any) -> str:
    """A value as you would type it in an override: null, true, 1e-05, [a, b]."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value if value and value.strip() == value and "\n" not in value else repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_format_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_format_value(v)}" for k, v in value.items()) + "}"
    return str(value)


def _show(value: Any) -> str:
    """repr(value), cut short, so an error message stays one readable line."""
    text = repr(value)
    return text if len(text) <= _MAX_SHOWN else text[: _MAX_SHOWN - 3] + "..."


def _one_line(text: str) -> str:
    return " ".join(text.split())
