"""The import rules of docs/architecture.md, checked on the source (every import statement, including the
lazy ones inside functions): a model knows no trainer, samplers are pure, rewards read text only, kernels are
leaf code, and the library never imports the experiments, benchmarks or tests that use it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# package (a dotted prefix) -> the internal packages it may import (besides itself). Third-party imports are
# free except where FORBIDDEN_EXTERNAL says otherwise.
ALLOWED = {
    "jaxllm.config": set(),
    "jaxllm.parallel": {"jaxllm.config"},
    "jaxllm.models": {"jaxllm.config", "jaxllm.data.tasks"},  # the superposition oracle reads graph structures
    "jaxllm.sampling": {"jaxllm.config", "jaxllm.models"},
    "jaxllm.diffusion": {"jaxllm.config", "jaxllm.models"},
    "jaxllm.rewards": set(),
    "jaxllm.data": {"jaxllm.config", "jaxllm.rewards"},
    "jaxllm.optim": {"jaxllm.config", "jaxllm.parallel"},
    "jaxllm.sparse": {"jaxllm.config", "jaxllm.models", "pallas_kernels"},
    "jaxllm.hf": {"jaxllm.config", "jaxllm.models", "jaxllm.data"},
    "jaxllm.inference": {"jaxllm.config", "jaxllm.models", "jaxllm.sampling", "jaxllm.rewards", "jaxllm.data"},
    "jaxllm.train": {"jaxllm.config", "jaxllm.parallel", "jaxllm.models", "jaxllm.data", "jaxllm.optim",
                     "jaxllm.diffusion"},
    "jaxllm.rl": {"jaxllm"},  # RL composes the library (models, samplers, losses, the trainer, rewards)
    "jaxllm.launch": {"jaxllm"},
    "pallas_kernels": set(),
}
NEVER = ("experiments", "bench", "tests")  # nothing under jaxllm/ or pallas_kernels/ imports these
FORBIDDEN_EXTERNAL = {
    # rewards parse text with bounded, pure-Python code: no arrays, no processes, no interpreters
    "jaxllm.rewards": ("jax", "numpy", "subprocess", "os", "multiprocessing", "ctypes", "importlib", "code"),
}
FORBIDDEN_CALLS = {"jaxllm.rewards": ("eval", "exec", "compile", "__import__")}


def _modules():
    for top in ("jaxllm", "pallas_kernels"):
        for path in sorted((ROOT / top).rglob("*.py")):
            rel = path.relative_to(ROOT).with_suffix("")
            parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
            yield ".".join(parts), path


def _imports(path: Path, module: str) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    out = []
    pkg = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.extend((node.lineno, a.name) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative import
                base = pkg.split(".")[: len(pkg.split(".")) - (node.level - 1)]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            out.append((node.lineno, name))
            out.extend((node.lineno, f"{name}.{a.name}") for a in node.names)
    return out


def _rule_for(module: str):
    best = None
    for prefix in ALLOWED:
        if module == prefix or module.startswith(prefix + "."):
            if best is None or len(prefix) > len(best):
                best = prefix
    return best


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def _violations():
    bad = []
    for module, path in _modules():
        rule = _rule_for(module)
        for line, name in _imports(path, module):
            where = f"{path.relative_to(ROOT)}:{line} imports {name}"
            top = name.split(".")[0]
            if top in NEVER:
                bad.append(f"{where} (the library never imports {top})")
                continue
            if rule is None:
                continue
            internal = top in ("jaxllm", "pallas_kernels")
            if internal and not _within(name, rule) and name not in ("jaxllm", "pallas_kernels"):
                if not any(_within(name, ok) for ok in ALLOWED[rule]):
                    # `from jaxllm.models import transformer` names jaxllm.models.transformer too: judge the module
                    parent = name.rpartition(".")[0]
                    if not (parent and (_within(parent, rule) or any(_within(parent, ok) for ok in ALLOWED[rule]))):
                        bad.append(f"{where} (allowed for {rule}: {sorted(ALLOWED[rule]) or 'nothing internal'})")
            if top in FORBIDDEN_EXTERNAL.get(rule, ()):
                bad.append(f"{where} ({rule} must not use {top})")
        calls = FORBIDDEN_CALLS.get(rule, ())
        if calls:
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in calls:
                    bad.append(f"{path.relative_to(ROOT)}:{node.lineno} calls {node.func.id}() in {rule}")
    return bad


def test_every_library_module_follows_the_import_rules():
    assert list(_modules()), "no modules found"
    bad = _violations()
    assert not bad, "import rules of docs/architecture.md broken:\n" + "\n".join(bad)


@pytest.mark.parametrize("source, rule, expect", [
    ("from jaxllm.train import train\n", "jaxllm.models", True),
    ("def f():\n    from jaxllm.sparse.rsparse import sparse_linear\n", "jaxllm.models", True),
    ("import experiments\n", "jaxllm.data", True),
    ("from jaxllm.config import check\n", "jaxllm.models", False),
    ("import subprocess\n", "jaxllm.rewards", True),
    ("x = eval('1')\n", "jaxllm.rewards", True),
])
def test_the_checker_catches_a_broken_rule(tmp_path, monkeypatch, source, rule, expect):
    """The rule check itself can fail: a planted module breaking a rule is reported, a clean one is not."""
    pkg = tmp_path / rule.split(".")[0]
    path = tmp_path.joinpath(*rule.split(".")) / "planted.py"
    path.parent.mkdir(parents=True)
    path.write_text(source)
    monkeypatch.setattr(__import__(__name__, fromlist=["ROOT"]), "ROOT", tmp_path)
    assert pkg.exists()
    assert any("planted.py" in v for v in _violations()) is expect
