"""Frozen-dataclass configs with `key=value` overrides from the command line.

Every experiment owns a frozen dataclass `Config`; nested dataclasses are addressed with dots
(`optim.lr=1e-3`). Values are parsed to the field's declared type. Unknown keys, bad values and keys
given twice are errors that name the key, the expected type and the valid keys (nearest match first).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import types
import typing
from typing import Any, Sequence, TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
    """A bad `key=value` override or an invalid config value."""


def _type_name(tp: Any) -> str:
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def _nearest_first(key: str, valid: Sequence[str]) -> list[str]:
    close = difflib.get_close_matches(key, valid, n=len(valid), cutoff=0.0)
    return close or sorted(valid)


def all_keys(cfg_type: type) -> list[str]:
    """Every dotted key a config type accepts, nested dataclasses expanded."""
    keys = []
    hints = typing.get_type_hints(cfg_type)
    for f in dataclasses.fields(cfg_type):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            keys.extend(f"{f.name}.{k}" for k in all_keys(tp))
        else:
            keys.append(f.name)
    return keys


def _parse_bool(text: str) -> bool:
    low = text.strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"not a boolean: {text!r}")


def parse_value(text: str, tp: Any) -> Any:
    """Parse `text` to the type annotation `tp` (int, float, str, bool, Optional, Literal, tuples)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if type(None) in args and text.strip().lower() in ("none", "null"):
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return parse_value(text, a)
            except (ValueError, TypeError) as e:
                errors.append(str(e))
        raise ValueError("; ".join(errors))
    if origin is typing.Literal:
        for a in args:
            if str(a) == text:
                return a
        raise ValueError(f"{text!r} is not one of {list(args)}")
    if origin in (tuple, list):
        inner = text.strip()
        if inner.startswith(("(", "[")):
            inner = inner[1:-1]
        parts = [p.strip() for p in inner.split(",") if p.strip()]
        if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
            return tuple(parse_value(p, args[0]) for p in parts)
        if origin is tuple and args:
            if len(parts) != len(args):
                raise ValueError(f"expected {len(args)} comma-separated values, got {len(parts)}")
            return tuple(parse_value(p, a) for p, a in zip(parts, args))
        elem = args[0] if args else str
        seq = [parse_value(p, elem) for p in parts]
        return tuple(seq) if origin is tuple else seq
    if tp is bool:
        return _parse_bool(text)
    if tp is int:
        value = float(text) if any(c in text for c in "eE.") else int(text)
        if float(value) != int(value):
            raise ValueError(f"not an integer: {text!r}")
        return int(value)
    if tp is float:
        return float(text)
    if tp is str:
        return text
    if tp is Any:
        return json.loads(text)
    raise TypeError(f"cannot parse a value of type {_type_name(tp)}")


def _field_types(cfg_type: type) -> dict[str, Any]:
    return typing.get_type_hints(cfg_type)


def apply_overrides(cfg: T, overrides: Sequence[str]) -> T:
    """Return `cfg` with `key=value` overrides applied (nested keys with dots).

    Raises ConfigError naming the key, the expected type and the valid keys.
    """
    seen: set[str] = set()
    updates: dict[str, str] = {}
    valid = all_keys(type(cfg))
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not key=value; valid keys: {', '.join(valid)}")
        key, value = item.split("=", 1)
        key = key.strip()
        if key in seen:
            raise ConfigError(f"key {key!r} is given twice")
        seen.add(key)
        if key not in valid:
            raise ConfigError(
                f"unknown key {key!r}; valid keys (nearest first): {', '.join(_nearest_first(key, valid))}"
            )
        updates[key] = value
    return _apply_nested(cfg, updates)


def _apply_nested(cfg: T, updates: dict[str, str], prefix: str = "") -> T:
    hints = _field_types(type(cfg))
    changes: dict[str, Any] = {}
    for f in dataclasses.fields(cfg):
        tp = hints[f.name]
        full = prefix + f.name
        if dataclasses.is_dataclass(tp):
            sub = {k: v for k, v in updates.items() if k.startswith(full + ".")}
            if sub:
                changes[f.name] = _apply_nested(getattr(cfg, f.name), sub, full + ".")
        elif full in updates:
            try:
                changes[f.name] = parse_value(updates[full], tp)
            except (ValueError, TypeError) as e:
                raise ConfigError(
                    f"bad value {updates[full]!r} for key {full!r}: expected {_type_name(tp)} ({e})"
                ) from None
    if not changes:
        return cfg
    try:
        return dataclasses.replace(cfg, **changes)
    except ConfigError:
        raise
    except (ValueError, TypeError) as e:
        raise ConfigError(f"invalid config after overrides {sorted(changes)}: {e}") from None


def to_dict(cfg: Any) -> dict[str, Any]:
    """JSON-serialisable dict of a (nested) config dataclass."""
    return json.loads(json.dumps(dataclasses.asdict(cfg), default=str))


def comma_list(text: str) -> list[str]:
    """'a, b,,c' -> ['a', 'b', 'c']: the non-empty, stripped items of a comma-separated config string."""
    return [item.strip() for item in text.split(",") if item.strip()]


def check(condition: bool, message: str) -> None:
    """Validation helper for `__post_init__`: raise ConfigError(message) unless condition holds."""
    if not condition:
        raise ConfigError(message)


def check_choice(name: str, value: Any, choices: Sequence[Any]) -> None:
    if value not in choices:
        raise ConfigError(f"{name}={value!r} is not one of {list(choices)}")
