"""The README's "Library API" section names only things that exist: every dotted `jaxllm.*` (and
`pallas_kernels.*`) name in it, brace groups such as `jaxllm.rewards.{countdown_reward, sudoku_reward}` expanded,
imports as a module or resolves as an attribute of one. A renamed or removed function, or a name written for a
module that does not hold it (e.g. `jaxllm.sparse.rsparse.forward`), fails here naming it."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
NAME = re.compile(r"\b(?:jaxllm|pallas_kernels)(?:\.[A-Za-z_]\w*)+(?:\.\{[^}]*\})?")


def api_section(text: str) -> str:
    """The text from the "## Library API" heading to the next level-2 heading."""
    start = text.index("\n## Library API")
    end = text.find("\n## ", start + 1)
    return text[start: end if end >= 0 else len(text)]


def listed_names(section: str) -> list[str]:
    """Dotted names in `section`, brace groups expanded, in order of first appearance."""
    names = []
    for m in NAME.finditer(section):
        s = m.group(0)
        if ".{" in s:
            base, group = s.split(".{", 1)
            names.extend(f"{base}.{n.strip()}" for n in group.rstrip("}").split(",") if n.strip())
        else:
            names.append(s)
    return list(dict.fromkeys(names))


def resolve(name: str):
    """Import the longest importable module prefix of `name`, then getattr the rest (AttributeError if absent)."""
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        modname = ".".join(parts[:i])
        try:
            obj = importlib.import_module(modname)
            break
        except ModuleNotFoundError as err:  # only "this prefix is not a module"; a broken import inside is raised
            if err.name is None or not modname.startswith(err.name):
                raise
    else:
        raise ModuleNotFoundError(parts[0])
    for attr in parts[i:]:
        obj = getattr(obj, attr)
    return obj


NAMES = listed_names(api_section(README.read_text()))


def test_parser_finds_the_documented_names_and_expands_brace_groups():
    """The parser itself: the section is found, brace groups are expanded, and a missing name is reported."""
    assert len(NAMES) >= 30, NAMES
    assert {"jaxllm.data.tasks.sudoku", "jaxllm.rewards.math_reward", "jaxllm.parallel.MeshConfig",
            "jaxllm.sampling.diffusion.generate", "pallas_kernels.rsparse_gemv"} <= set(NAMES)
    assert listed_names("see `jaxllm.a.{b, c}` and jaxllm.d.e") == ["jaxllm.a.b", "jaxllm.a.c", "jaxllm.d.e"]
    with pytest.raises(AttributeError, match="forward"):
        resolve("jaxllm.sparse.rsparse.forward")
    with pytest.raises(AttributeError, match="MeshConfig"):
        resolve("jaxllm.train.MeshConfig")


@pytest.mark.parametrize("name", NAMES)
def test_every_name_in_the_readme_api_section_exists(name):
    resolve(name)
