"""Frozen-dataclass configs with `key=value` overrides from the command line.

Every experiment owns a frozen dataclass `Config`; nested dataclasses are addressed with dots
(`optim.learning_rate=1e-3`). Values are parsed to the field's declared type. Unknown keys, bad values and keys
given twice are errors that name the key, the expected type and the valid keys (nearest match first).

A nested config can also be set by name: `model=mobilellm_r1_140m` replaces the field with that preset and
`optim=galore_adamw` with that optimizer config, before any dotted key (`model.d_model=96`, `optim.rank=64`)
applies to it, whatever their order; dotted keys are checked against the chosen class. The names come from
`register_choices(declared_type, choices)` (the models and optimizers register theirs), or from the parent
config's class attribute `CHOICES = {"field": {name: instance}}`, which takes precedence. A config class may
also declare `ALIASES = {"steps": "trainer.steps"}`: other spellings of its keys (the documented commands'),
never second fields.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import types
import typing
from typing import Any, Callable, Mapping, Optional, Sequence, TypeVar, Union

T = TypeVar("T")

_CHOICES: dict[type, Union[Mapping[str, Any], Callable[[], Mapping[str, Any]]]] = {}


class ConfigError(ValueError):
    """A bad `key=value` override or an invalid config value."""


def register_choices(declared_type: type, choices: Union[Mapping[str, Any], Callable[[], Mapping[str, Any]]]) -> None:
    """Let a config field declared as `declared_type` be set by name: `field=<name>` takes `choices[name]` (an
    instance of that type or of a subclass). `choices` may be a zero-argument callable, resolved at use."""
    _CHOICES[declared_type] = choices


def _choices(parent_type: type, field_name: str, declared: Any) -> Optional[Mapping[str, Any]]:
    per_field = getattr(parent_type, "CHOICES", None) or {}
    found = per_field.get(field_name, _CHOICES.get(declared) if isinstance(declared, type) else None)
    return found() if callable(found) else found


def _aliases(cfg_type: type) -> dict[str, str]:
    return dict(getattr(cfg_type, "ALIASES", None) or {})


def _is_config(tp: Any, value: Any) -> bool:
    return dataclasses.is_dataclass(tp) or (dataclasses.is_dataclass(value) and not isinstance(value, type))


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def _chosen(parent_type: type, f: dataclasses.Field, declared: Any, key: str, name: str) -> Any:
    choices = _choices(parent_type, f.name, declared) or {}
    name = name.strip()
    if name not in choices:
        raise ConfigError(f"{key}={name!r} is not a known choice; known (nearest first): "
                          f"{', '.join(_nearest_first(name, list(choices)))}")
    return choices[name]


def _type_name(tp: Any) -> str:
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def _nearest_first(key: str, valid: Sequence[str]) -> list[str]:
    close = difflib.get_close_matches(key, valid, n=len(valid), cutoff=0.0)
    return close or sorted(valid)


def all_keys(cfg: Any) -> list[str]:
    """Every dotted key a config (class or instance) accepts, nested dataclasses expanded, fields settable by
    name included, then the class's aliases."""
    return _keys(cfg, "", {}) + list(_aliases(cfg if isinstance(cfg, type) else type(cfg)))


def _keys(cfg: Any, prefix: str, updates: Mapping[str, str]) -> list[str]:
    """Keys of `cfg` (a class: its defaults stand for the values), with the fields set by name in `updates`
    expanded as the chosen class (raises ConfigError for an unknown name)."""
    cls = cfg if isinstance(cfg, type) else type(cfg)
    hints = typing.get_type_hints(cls)
    keys = []
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        tp, full = hints[f.name], prefix + f.name
        value = _default(f) if isinstance(cfg, type) else getattr(cfg, f.name)
        if not _is_config(tp, value):
            keys.append(full)
            continue
        if _choices(cls, f.name, tp) is not None:
            keys.append(full)
            if full in updates:
                value = _chosen(cls, f, tp, full, updates[full])
        keys.extend(_keys(value if value is not None else tp, full + ".", updates))
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


def apply_overrides(cfg: T, overrides: Sequence[str]) -> T:
    """Return `cfg` with `key=value` overrides applied (nested keys with dots, nested configs by name).

    Raises ConfigError naming the key, the expected type and the valid keys.
    """
    aliases = _aliases(type(cfg))
    spelled: dict[str, str] = {}
    updates: dict[str, str] = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not key=value; valid keys: {', '.join(all_keys(cfg))}")
        key, value = item.split("=", 1)
        key = key.strip()
        canonical = aliases.get(key, key)
        if canonical in updates:
            given = key if spelled[canonical] == key else f"{spelled[canonical]}' / '{key}"
            raise ConfigError(f"key '{given}' is given twice")
        spelled[canonical] = key
        updates[canonical] = value
    valid = _keys(cfg, "", updates)
    for key in updates:
        if key not in valid:
            raise ConfigError(f"unknown key {spelled[key]!r}{_choice_hint(cfg, key, updates)}; valid keys (nearest "
                              f"first): {', '.join(_nearest_first(spelled[key], valid + list(aliases)))}")
    return _apply_nested(cfg, updates)


def _choice_hint(cfg: Any, key: str, updates: Mapping[str, str]) -> str:
    """' (optim=galore_adamw has it)' when a choice of a field set by name has the unknown dotted key."""
    parts = key.split(".")
    value = cfg
    for i, part in enumerate(parts[:-1]):
        f = {x.name: x for x in dataclasses.fields(value)}.get(part) if dataclasses.is_dataclass(value) else None
        if f is None:
            return ""
        declared = typing.get_type_hints(type(value))[part]
        choices = _choices(type(value), part, declared)
        rest = ".".join(parts[i + 1:])
        if choices:
            names = [n for n, c in choices.items() if rest in _keys(c, "", {})]
            if names:
                return f" ({'.'.join(parts[:i + 1])}={names[0]} has it)"
        prefix = ".".join(parts[:i + 1])
        value = _chosen(type(value), f, declared, prefix, updates[prefix]) if prefix in updates else getattr(value, part)
    return ""


def _apply_nested(cfg: T, updates: dict[str, str], prefix: str = "") -> T:
    hints = typing.get_type_hints(type(cfg))
    changes: dict[str, Any] = {}
    for f in dataclasses.fields(cfg):
        if not f.init:
            continue
        tp, full = hints[f.name], prefix + f.name
        value = getattr(cfg, f.name)
        if _is_config(tp, value):
            sub = {k: v for k, v in updates.items() if k.startswith(full + ".")}
            if full in updates:  # by name first, then its dotted keys
                value = _chosen(type(cfg), f, tp, full, updates[full])
            if sub:
                value = _apply_nested(value, sub, full + ".")
            if full in updates or sub:
                changes[f.name] = value
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
    """JSON-serialisable dict of a (nested) config dataclass. A config chosen by class (an optimizer) keeps its
    registry name in its `name` field (init=False), so `from_dict` and resume checks see which one it is."""
    return json.loads(json.dumps(dataclasses.asdict(cfg), default=str))


def from_dict(cfg_type: type[T], data: Mapping[str, Any]) -> T:
    """The config `to_dict` wrote (config.json read back): nested configs rebuilt, each as the subclass of its
    declared type whose `name` it recorded. An unknown key or name is a ConfigError naming it."""
    hints = typing.get_type_hints(cfg_type)
    fields = {f.name: f for f in dataclasses.fields(cfg_type)}
    unknown = [k for k in data if k not in fields]
    if unknown:
        raise ConfigError(f"{cfg_type.__name__} has no field {unknown[0]!r}; fields: {', '.join(fields)}")
    kwargs = {}
    for name, value in data.items():
        f, tp = fields[name], hints[name]
        if not f.init:
            if value != _default(f):
                raise ConfigError(f"{cfg_type.__name__}.{name} is {_default(f)!r}, the data say {value!r}")
            continue
        if isinstance(value, Mapping) and _is_config(tp, _default(f)):
            kwargs[name] = from_dict(_recorded_class(tp if dataclasses.is_dataclass(tp) else type(_default(f)), value),
                                     value)
        else:
            kwargs[name] = _from_json(value, tp)
    return cfg_type(**kwargs)


def _recorded_class(declared: type, data: Mapping[str, Any]) -> type:
    """`declared`, or its subclass whose init=False `name` default is the recorded `data["name"]`."""
    if "name" not in data:
        return declared
    todo, seen = [declared], []
    while todo:
        c = todo.pop()
        seen.append(c)
        todo.extend(c.__subclasses__())
    for c in seen:
        f = {x.name: x for x in dataclasses.fields(c)}.get("name")
        if f is not None and not f.init and f.default == data["name"]:
            return c
    return declared


def _from_json(value: Any, tp: Any) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if value is None:
        return None
    if origin in (typing.Union, types.UnionType):
        return _from_json(value, next(a for a in args if a is not type(None)))
    if origin in (tuple, list) and isinstance(value, list):
        elems = (args if origin is tuple and args and args[-1] is not Ellipsis else [args[0] if args else Any] * len(value))
        seq = [_from_json(v, a) for v, a in zip(value, elems)]
        return tuple(seq) if origin is tuple else seq
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


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
