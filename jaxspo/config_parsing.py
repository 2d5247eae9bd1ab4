"""Reading a config: YAML recipes with ``extends``, dotted ``key=value`` overrides, and typed dataclass sections.

:func:`build_section` turns a plain mapping into a config dataclass, checking every key and value against the
annotations and naming the offending key (with the closest valid one) in a :class:`ConfigError`.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import re
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from jaxspo.errors import ConfigError


def read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Reads one recipe, merging the file it ``extends`` (relative to it) underneath."""
    path = path.resolve()
    if path in seen:
        raise ConfigError(f"{path}: 'extends' loops back to itself via {[str(p) for p in seen]}")
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {str(err).splitlines()[0]}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping of keys, got {type(raw).__name__}")
    base_name = raw.pop("extends", None)
    if base_name is None:
        return raw
    base = read_yaml(path.parent / str(base_name), seen + (path,))
    return deep_merge(base, raw)


def deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


_KEY_PART = r'"[^"]+"|[^".=]+'  # one dotted-key part: a name, or a "quoted name" that may hold dots (pkg.mod:fn)


def split_key(key: str, override: str) -> list[str]:
    """``loss.params."pkg.mod:fn".shift`` → ``["loss", "params", "pkg.mod:fn", "shift"]``."""
    if not re.fullmatch(rf"(?:{_KEY_PART})(?:\.(?:{_KEY_PART}))*", key):
        raise ConfigError(
            f"override '{override}': malformed key '{key}' (dotted names; quote a name that holds "
            'dots: loss.params."pkg.mod:fn".x=1)'
        )
    return [part.strip('"') for part in re.findall(_KEY_PART, key)]


def apply_override(tree: dict[str, Any], override: str, defaults: dict[str, Any]) -> None:
    """Sets ``a.b.c=value`` in ``tree``; the value is parsed as YAML (``3``, ``1e-4``, ``[1,2]``).

    A section missing from ``tree`` starts from its ``defaults``, so ``loss.terms.sft=0.2`` adds a
    term to the default terms instead of replacing them. A part holding dots is quoted:
    ``loss.params."pkg.mod:fn".shift=0.5``.
    """
    key, sep, text = override.partition("=")
    if not sep or not key:
        raise ConfigError(f"override '{override}' is not of the form key=value (e.g. trainer.steps=50)")
    try:
        value = yaml.safe_load(text) if text else ""
    except yaml.YAMLError:
        value = text
    node, default = tree, defaults
    parts = split_key(key.strip(), override)
    for part in parts[:-1]:
        default = default.get(part) if isinstance(default, dict) else None
        child = node.setdefault(part, copy.deepcopy(default) if isinstance(default, dict) else {})
        if not isinstance(child, dict):
            raise ConfigError(f"override '{override}': '{part}' is a value, not a section")
        node = child
    node[parts[-1]] = value


# ---------------------------------------------------------------------------------------------
# Building typed dataclasses
# ---------------------------------------------------------------------------------------------


def did_you_mean(key: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    return f"; did you mean '{close[0]}'?" if close else f"; valid keys: {', '.join(sorted(valid))}"


def type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def coerce(value: Any, tp: Any, where: str) -> Any:
    """Checks ``value`` against annotation ``tp`` (builds nested dataclasses); raises ConfigError."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a section (mapping), got {value!r}")
        return build_section(tp, value, where)
    if origin in (typing.Union, types.UnionType):
        errors = []
        for option in typing.get_args(tp):
            if option is type(None) and value is None:
                return None
            try:
                return coerce(value, option, where)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(f"{where}: expected {type_name(tp)}, got {value!r}")
    if origin is dict:
        key_tp, value_tp = typing.get_args(tp) or (Any, Any)
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return {coerce(k, key_tp, where): coerce(v, value_tp, f"{where}.{k}") for k, v in value.items()}
    if origin in (list, tuple):
        (item_tp, *_) = typing.get_args(tp) or (Any,)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return [coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                raise ConfigError(f"{where}: expected a number, got {value!r}") from None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise ConfigError(f"{where}: expected a finite number, got {value!r}")
            return float(value)
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    raise ConfigError(f"{where}: unsupported annotation {tp!r}")


def build_section(cls: type, values: dict[str, Any], where: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in values.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in names:
            raise ConfigError(f"unknown config key '{path}'{did_you_mean(str(key), names)}")
        kwargs[key] = coerce(value, hints[key], path)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{where or 'config'}: {err}") from None
