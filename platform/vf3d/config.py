"""The schema of vf3d's typed, import-light configs: the base class, declared bounds and rules,
validation, (de)serialisation with unknown-key rejection, overrides and presets.

Each component's config lives beside it, in the `config` module of its package:
vf3d.models.reconstructor.config (reconstructor and inference), vf3d.models.video.config,
vf3d.models.config (quality filter, LPIPS), vf3d.data.config (orbit renderer),
vf3d.synthesis.config (render-assets, train-filter, synthesize), vf3d.training.config (the harness,
finetune-video, train-recon), vf3d.serving.config and vf3d.evaluation.config.

Configs are plain dataclasses: one docstring-style comment per field, no arithmetic in YAML,
unknown keys rejected with the full dotted path of the bad key. Choices are `Literal` types and
numeric bounds are declared beside their field (`bounded`); `validate()` checks them, and each
config's few cross-field `rules()`, over the whole tree with the same dotted paths. Presets are
functions so each call returns a fresh, independent object. `debug` comes first and runs in
seconds on a CPU.


This module imports only the standard library (and PyYAML lazily), so `vf3d --help`, Ray job
drivers and Serve ingress replicas can read configs without importing torch.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import types
import typing
from collections.abc import Callable
from dataclasses import field
from pathlib import Path
from typing import Any, Literal, TypeVar

T = TypeVar("T")
C = TypeVar("C", bound="ConfigBase")


class ConfigError(ValueError):
    """A configuration value or file is invalid; the message names the offending key."""


# ---------------------------------------------------------------------------------------------
# Declared constraints: choices are `Literal` types, numeric bounds sit beside the field, and one
# walker (`check`) checks both over a whole config tree, naming each field by its dotted path.
# ---------------------------------------------------------------------------------------------

_BOUNDS = ("ge", "gt", "le", "lt", "length")


def bounded(
    default: Any = dataclasses.MISSING,
    *,
    factory: Callable[[], Any] | None = None,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    length: int | None = None,
) -> Any:
    """A dataclass field with declared bounds, checked by `check` (so by every `validate()`): `ge`,
    `gt`, `le`, `lt` bound the value (each item's, for a list; None passes), `length` fixes a list's."""
    metadata = {key: value for key, value in zip(_BOUNDS, (ge, gt, le, lt, length)) if value is not None}
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


class FieldPath:
    """The dotted path of a config field in messages: in the rules of the config at "model",
    `f"{at.encoder.num_heads}"` reads "model.encoder.num_heads" (and `at.stages[2].steps` indexes)."""

    def __init__(self, path: str = "") -> None:
        self._path = path

    def __getattr__(self, name: str) -> FieldPath:
        if name.startswith("_"):  # copy, pickle and friends probe private names: never field names
            raise AttributeError(name)
        return FieldPath(_join(self._path, name))

    def __getitem__(self, index: int) -> FieldPath:
        return FieldPath(f"{self._path}[{index}]")

    def __str__(self) -> str:
        return self._path


class ConfigBase:
    """Base of every config dataclass: `validate()` checks the tree below it, and `rules()` holds
    its cross-field rules (choices and bounds are declared on the fields themselves)."""

    def rules(self, at: FieldPath) -> list[tuple[bool, str]]:
        """(holds, message) pairs checked after every field below this config; `at` names fields."""
        return []

    def validate(self: C, path: str = "") -> C:
        """Check choices, bounds and rules of this config and every config nested in it, raising
        ConfigError for the first failure with its dotted path (`path` prefixes it); returns self."""
        check(self, path)
        return self


def check(config: Any, path: str = "") -> None:
    """Walk a config tree in field order: every `Literal` field must hold one of its choices,
    every `bounded` field lie within its bounds, nested configs (alone or in lists) likewise;
    then the config's own `rules()`. Raises ConfigError naming the first failure's dotted path."""
    hints = _hints(type(config))
    for spec in dataclasses.fields(config):
        value, where = getattr(config, spec.name), _join(path, spec.name)
        if _has_choices(hints[spec.name]):
            _coerce(value, hints[spec.name], where, spec.metadata.get("note", ""))
        if value is not None and any(key in spec.metadata for key in _BOUNDS):
            _check_bounds(value, spec.metadata, where)
        if dataclasses.is_dataclass(value):
            check(value, where)
        elif isinstance(value, list):
            for index, item in enumerate(value):
                if dataclasses.is_dataclass(item):
                    check(item, f"{where}[{index}]")
    if isinstance(config, ConfigBase):
        for holds, message in config.rules(FieldPath(path)):
            if not holds:
                raise ConfigError(message)


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _has_choices(annotation: Any) -> bool:
    options = typing.get_args(annotation) if typing.get_origin(annotation) in (typing.Union, types.UnionType) else (annotation,)
    return any(typing.get_origin(option) is Literal for option in options)


def _check_bounds(value: Any, limits: typing.Mapping[str, Any], where: str) -> None:
    if isinstance(value, (list, tuple)):
        if "length" in limits and len(value) != limits["length"]:
            raise ConfigError(f"{where} must be a list of {limits['length']} values, got {value!r}")
        for index, item in enumerate(value):
            _check_bounds(item, {key: limits[key] for key in limits if key != "length"}, f"{where}[{index}]")
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    ge, gt, le, lt = (limits.get(key) for key in ("ge", "gt", "le", "lt"))
    below = (ge is not None and value < ge) or (gt is not None and value <= gt)
    above = (le is not None and value > le) or (lt is not None and value >= lt)
    if below or above:
        raise ConfigError(f"{where} must be {_describe_bounds(ge, gt, le, lt)}, got {value!r}")


def _describe_bounds(ge: float | None, gt: float | None, le: float | None, lt: float | None) -> str:
    if ge is not None and le is not None:
        return f"between {ge} and {le}"
    low = f"[{ge}" if ge is not None else f"({gt}" if gt is not None else None
    high = f"{le}]" if le is not None else f"{lt})" if lt is not None else None
    if low and high:
        return f"in {low}, {high}"
    return " and ".join(f"{sign} {bound}" for sign, bound in ((">=", ge), (">", gt), ("<=", le), ("<", lt)) if bound is not None)


Precision = Literal["auto", "bf16", "fp32"]
""""auto" (bf16 on CUDA, fp32 on the CPU), "bf16" or "fp32"."""


# ---------------------------------------------------------------------------------------------
# Generic (de)serialisation with unknown-key rejection
# ---------------------------------------------------------------------------------------------


def preset(kind: dict[str, Any], name: str) -> Any:
    """Build preset `name` from a preset table, with an error listing the valid names."""
    if name not in kind:
        raise ConfigError(f"unknown preset {name!r}; choose one of: {', '.join(kind)}")
    return kind[name]()


def to_dict(config: Any) -> dict[str, Any]:
    """Dataclass → plain JSON/YAML-ready dict (nested)."""
    return dataclasses.asdict(config)


def _describe(annotation: Any) -> str:
    """How a type reads in messages: `float | Literal["auto"] | None` → "a number, 'auto' or null"."""
    origin = typing.get_origin(annotation)
    if origin is Literal:
        choices = ", ".join(repr(choice) for choice in typing.get_args(annotation))
        return choices if len(typing.get_args(annotation)) == 1 else f"one of {choices}"
    if origin in (typing.Union, types.UnionType):
        parts = [_describe(option) for option in typing.get_args(annotation)]
        return f"{', '.join(parts[:-1])} or {parts[-1]}"
    names = {bool: "true/false", int: "an integer", float: "a number", str: "a string", type(None): "null", list: "a list"}
    return names.get(origin or annotation, "a mapping" if dataclasses.is_dataclass(annotation) else str(annotation))


def _coerce(value: Any, annotation: Any, path: str, note: str = "") -> Any:
    origin = typing.get_origin(annotation)
    if dataclasses.is_dataclass(annotation):
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {type(value).__name__}")
        return from_dict(annotation, value, path)
    if origin is Literal:
        if not any(value == choice and type(value) is type(choice) for choice in typing.get_args(annotation)):
            raise ConfigError(f"{path}: expected {_describe(annotation)}, got {value!r}" + (f" ({note})" if note else ""))
        return value
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, path, note)
            except ConfigError as error:
                errors.append(str(error))
        if any(dataclasses.is_dataclass(option) or typing.get_origin(option) in (list, tuple) for option in options):
            raise ConfigError(errors[0])  # a structured alternative: its own message names the bad item
        raise ConfigError(f"{path}: expected {_describe(annotation)}, got {value!r}" + (f" ({note})" if note else ""))
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list, got {type(value).__name__}")
        (item_type, *_) = typing.get_args(annotation) or (Any,)
        items = [_coerce(item, item_type, f"{path}[{i}]") for i, item in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expected true/false, got {value!r}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path}: expected an integer, got {value!r}")
        return value
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path}: expected a number, got {value!r}")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected a string, got {value!r}")
        return value
    return value


def from_dict(cls: type[T], data: dict[str, Any], path: str = "") -> T:
    """Build dataclass `cls` from a nested dict, rejecting unknown keys and wrong types."""
    hints = _hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}

    unknown = sorted(set(data) - names)
    if unknown:
        where = f" in {path}" if path else ""
        raise ConfigError(f"unknown key(s){where}: {', '.join(unknown)} (valid: {', '.join(sorted(names))})")
    notes = {spec.name: spec.metadata.get("note", "") for spec in dataclasses.fields(cls)}
    kwargs = {name: _coerce(value, hints[name], _join(path, name), notes[name]) for name, value in data.items()}
    return cls(**kwargs)


def merge(config: T, overrides: dict[str, Any]) -> T:
    """Return a copy of `config` with a nested dict of overrides applied (validated like a file)."""
    merged = _deep_update(to_dict(config), overrides)
    return from_dict(type(config), merged)


def _deep_update(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _deep_update(base[key], value)
        else:
            base[key] = value
    return base


def load_overrides(path: str | Path) -> dict[str, Any]:
    """Read a YAML or JSON config file into a dict, with a clear error for bad files."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    text = path.read_text()
    try:
        if path.suffix == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except Exception as error:  # both json and yaml raise their own types
        raise ConfigError(f"cannot parse {path}: {str(error).splitlines()[0]}") from error
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    return data


def resolve(presets: dict[str, Any], name: str, config_file: str | Path | None = None) -> Any:
    """Preset `name`, overridden by `config_file` when given, validated."""
    config = preset(presets, name)
    if config_file is not None:
        overrides = load_overrides(config_file)
        try:
            config = merge(config, overrides)
        except ConfigError as error:
            raise ConfigError(f"{config_file}: {error}") from None
    return config.validate() if hasattr(config, "validate") else config


def save_json(config: Any, path: str | Path) -> None:
    """Write a config as indented JSON (what stages write next to their outputs), atomically: a
    rerun that rewrites it never leaves half a config for the next resume to trip over."""
    from vf3d.atomic import write_json_atomic

    write_json_atomic(path, to_dict(config))
