"""Presets (YAML with provenance), config files, `--set key.path=value` overrides, and
one-line messages for invalid configs."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from groklab.config.plugins import resolve_plugins_in
from groklab.config.schema import RunConfig
from groklab.errors import ConfigError

PRESET_DIR = Path(__file__).parent / "presets"


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def load_preset(name: str) -> RunConfig:
    """The named preset, validated. `groklab presets` lists them."""
    path = PRESET_DIR / f"{name}.yaml"
    if not path.is_file():
        close = difflib.get_close_matches(name, preset_names(), n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise ConfigError(f"unknown preset '{name}'; {hint}`groklab presets` lists them")
    return config_from_dict(_read_config(path))


def load_config(spec: str, overrides: Sequence[str] = (), seed: int | None = None) -> RunConfig:
    """A preset name or a YAML file, with `key.path=value` overrides and an optional seed. The file's
    `plugins:` paths are relative to the file; those of an override to the working directory."""
    if spec.endswith((".yaml", ".yml")) or Path(spec).is_file():
        path = Path(spec)
        if not path.is_file():
            raise ConfigError(f"config file not found: {spec}")
        data = _read_config(path)
    else:
        data = load_preset(spec).model_dump(mode="json", exclude_unset=True)
    data = apply_overrides(data, overrides)
    if seed is not None:
        data["seed"] = seed
    return config_from_dict(data)


def config_from_dict(data: Any) -> RunConfig:
    if not isinstance(data, dict):
        raise ConfigError("a config must be a YAML mapping (task:, model:, train:, ...)")
    try:
        return RunConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, schema=RunConfig)) from None


def apply_overrides(data: dict, overrides: Iterable[str]) -> dict:
    """Apply `a.b.c=value` overrides to a nested dict (values parsed as YAML: 1e-3, true, [1, 2])."""
    data = yaml.safe_load(yaml.safe_dump(data))  # deep copy of plain data
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects key.path=value, got '{item}'")
        *parents, leaf = key.strip().split(".")
        node = data
        for i, part in enumerate(parents):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"--set {key}: '{'.'.join(parents[: i + 1])}' is a value, not a section")
            node = child
        try:
            node[leaf] = yaml.safe_load(raw)
        except yaml.YAMLError:
            node[leaf] = raw
    return data


def to_yaml(config: RunConfig) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)


def format_validation_error(err: ValidationError, prefix: str = "", schema: type[BaseModel] | None = None) -> str:
    """The first problem of a pydantic error as one line: where, what, and what to do."""
    first = err.errors()[0]
    loc = [str(part) for part in first["loc"] if not str(part).startswith(("function-", "literal["))]
    path = ".".join(([prefix] if prefix else []) + loc)
    if first["type"] == "extra_forbidden":
        known = _known_keys(schema, loc[:-1]) if schema else []
        close = difflib.get_close_matches(loc[-1], known, n=1)
        hint = f"; did you mean '{'.'.join(([prefix] if prefix else []) + loc[:-1] + [close[0]])}'?" if close else ""
        return f"config: unknown key '{path}'{hint}"
    if first["type"] == "missing":
        return f"config: '{path}' is required"
    got = first.get("input")
    got_text = f" (got {got!r})" if got is not None and not isinstance(got, dict) else ""
    return f"config: {path}: {first['msg']}{got_text}"


def _known_keys(schema: type[BaseModel], loc: list[str]) -> list[str]:
    for part in loc:
        field = schema.model_fields.get(part)
        annotation = getattr(field, "annotation", None)
        candidates = [a for a in getattr(annotation, "__args__", (annotation,)) if isinstance(a, type)]
        models = [a for a in candidates if issubclass(a, BaseModel)]
        if not models:
            return []
        schema = models[0]
    return list(schema.model_fields)


def _read_config(path: Path) -> Any:
    """A config file's data, its `plugins:` files made absolute (relative to the file's directory)."""
    return resolve_plugins_in(_read_yaml(path), path.resolve().parent)


def _read_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text())
    except OSError as err:
        raise ConfigError(f"cannot read {path}: {err.strerror}") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path} is not valid YAML{where}; fix the file") from None
