"""Typed config machinery: YAML file + dotted CLI overrides -> nested dataclasses.

The lowest layer of the project (standard library and PyYAML only), so that every package can
declare its own config section next to its code. Each field carries a help text
(`option(default, "help")`); `describe` prints the tree for `--help-config` and `reference`
writes it as the Markdown page `docs/configuration.md`. The job's root (`launch/job_config.py`)
and the serve settings (`rollout/serve_app.py`) are assembled from these sections.

Validation is strict: an unknown key or a value of the wrong type is a `ConfigError` that names
the dotted key, raised before anything expensive starts.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Sequence
from dataclasses import field
from pathlib import Path
from typing import Any, Literal

import yaml


class ConfigError(ValueError):
    """A config file or override that does not fit the config tree."""


def option(default: Any, help: str) -> Any:
    """A config field with its default and the help text shown by --help-config."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


def section(cls: type, help: str) -> Any:
    """A nested config section."""
    return field(default_factory=cls, metadata={"help": help})


# ---------------------------------------------------------------------------------------------
# dict <-> dataclass


def from_dict(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    """Build dataclass `cls` from a plain dict, checking every key and value type."""
    if not isinstance(data, dict):
        raise ConfigError(f"config section '{prefix.rstrip('.') or '<root>'}' must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if key not in fields:
            known = ", ".join(sorted(fields))
            raise ConfigError(f"unknown config key '{dotted}' (known keys here: {known})")
        kwargs[key] = _coerce(hints[key], value, dotted)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"config section '{prefix.rstrip('.') or '<root>'}': {err}") from err


def _coerce(tp: Any, value: Any, dotted: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return from_dict(tp, value if value is not None else {}, dotted + ".")
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(arg, value, dotted)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0])
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"config key '{dotted}' must be one of {list(args)}, got {value!r}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key '{dotted}' must be a list, got {value!r}")
        item = args[0] if args else Any
        items = [_coerce(item, v, f"{dotted}[{i}]") for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{dotted}' must be a mapping, got {value!r}")
        return {k: _coerce(args[1], v, f"{dotted}.{k}") for k, v in value.items()}
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        # PyYAML reads `1e-5` (no dot) as a string; accept what Python reads as a number.
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif tp is str:
        if isinstance(value, str):
            return value
    else:
        raise ConfigError(f"config key '{dotted}' has an unsupported type {tp!r}")
    raise ConfigError(f"config key '{dotted}' must be {tp.__name__}, got {value!r}")


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    node = tree
    *parents, leaf = dotted.split(".")
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override '{dotted}': '{part}' is not a section")
        node = child
    node[leaf] = value


def parse_override(text: str) -> tuple[str, Any]:
    """`learner.lr=1e-5` -> ("learner.lr", 1e-5); the value is read as YAML."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like section.key=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override '{text}' has no key")
    try:
        return key, yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as err:
        raise ConfigError(f"override '{text}'{_yaml_problem(err)}") from None


def _yaml_problem(err: yaml.YAMLError) -> str:
    """One line for a YAML error: where (line:column) and what, as an `error:` line should read."""
    mark, problem = getattr(err, "problem_mark", None), getattr(err, "problem", None) or str(err).splitlines()[0]
    return f"{f':{mark.line + 1}:{mark.column + 1}' if mark else ''}: not valid YAML ({problem})"


def load_config(cls: type, path: str | Path | None = None, overrides: Sequence[str] = ()) -> Any:
    """Read YAML `path` (optional), apply dotted `overrides` in order, validate into `cls`."""
    tree: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if path.is_dir():
            raise ConfigError(f"config file {path} is a directory")
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        raw = path.read_bytes()
        try:
            tree = yaml.safe_load(raw.decode("utf-8")) or {}
        except UnicodeDecodeError as err:
            raise ConfigError(
                f"config file {path} is not UTF-8 text (byte 0x{raw[err.start]:02x} at offset {err.start})"
            ) from None
        except yaml.YAMLError as err:
            raise ConfigError(f"config file {path}{_yaml_problem(err)}") from None
        if not isinstance(tree, dict):
            raise ConfigError(f"config file {path} must hold a mapping at the top level")
    for text in overrides:
        key, value = parse_override(text)
        _set_dotted(tree, key, value)
    return from_dict(cls, tree)


def describe(cls: type, indent: int = 0) -> str:
    """The config tree with defaults and help texts, for --help-config."""
    lines = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        pad = "  " * indent
        help_text = f.metadata.get("help", "")
        if dataclasses.is_dataclass(hints[f.name]):
            lines.append(f"{pad}{f.name}:  # {help_text}")
            lines.append(describe(hints[f.name], indent + 1))
        else:
            lines.append(f"{pad}{f.name}: {_default(f)!r}  # {help_text}")
    return "\n".join(lines)


def _default(f: dataclasses.Field) -> Any:
    """A field's default value (an `option` has a default or, for a list or dict, a factory)."""
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


def reference(cls: type, prefix: str = "") -> str:
    """The config tree as Markdown: per section a table of dotted keys, types, defaults and help."""
    hints = typing.get_type_hints(cls)
    rows, nested = [], []
    for f in dataclasses.fields(cls):
        # Markdown would read "<name>" in a help text as an HTML tag and drop it.
        help_text = f.metadata.get("help", "").replace("<", "\\<")
        if dataclasses.is_dataclass(hints[f.name]):
            nested.append(f"### `{prefix}{f.name}`\n\n{help_text}\n\n{reference(hints[f.name], f'{prefix}{f.name}.')}")
        else:
            cells = (f"`{prefix}{f.name}`", _type_name(hints[f.name]), f"`{_default(f)!r}`", help_text)
            rows.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    table = "| key | type | default | meaning |\n| --- | --- | --- | --- |\n" + "\n".join(rows) if rows else ""
    return "\n\n".join(part for part in (table, *nested) if part)


def _type_name(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        return " or ".join(repr(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in args)
    if origin in (list, tuple, dict):
        return f"{origin.__name__}[{', '.join(_type_name(a) for a in args)}]"
    return "None" if tp is type(None) else getattr(tp, "__name__", str(tp))
