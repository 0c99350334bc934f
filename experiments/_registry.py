"""The experiment registry: every module in `experiments/` (not starting with `_`) that defines a `Config`
dataclass (with a `run_dir: str = ""` field) and `run(config) -> summary`.

The library (`jaxllm`) never imports this package: experiments wire the library's parts, not the reverse.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import pkgutil
from types import ModuleType

import experiments


def experiment_names() -> list[str]:
    return sorted(m.name for m in pkgutil.iter_modules(experiments.__path__) if not m.name.startswith("_"))


def load(name: str) -> ModuleType:
    names = experiment_names()
    if name not in names:
        near = difflib.get_close_matches(name, names, n=3)
        hint = f" (did you mean {', '.join(near)}?)" if near else ""
        raise KeyError(f"unknown experiment {name!r}{hint}; known experiments: {', '.join(names)}")
    module = importlib.import_module(f"experiments.{name}")
    if not (hasattr(module, "Config") and dataclasses.is_dataclass(module.Config) and callable(getattr(module, "run", None))):
        raise TypeError(f"experiments/{name}.py must define a Config dataclass and run(config)")
    if "run_dir" not in {f.name for f in dataclasses.fields(module.Config)}:
        raise TypeError(f"experiments/{name}.py: Config must have a `run_dir: str = \"\"` field")
    return module


def describe(name: str) -> str:
    """First line of the experiment module's docstring."""
    doc = (importlib.import_module(f"experiments.{name}").__doc__ or "").strip()
    return doc.splitlines()[0] if doc else ""
