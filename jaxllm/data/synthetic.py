"""A small generated text corpus with sources of different usefulness (seeded, no downloads).

Sources (each a function `(rng) -> str` producing one document):
- `arithmetic`: multi-digit addition with a worked, digit-by-digit reasoning trace and the answer.
- `copy`, `reverse`: string copy / reversal tasks.
- `sorting`: sort a list of digits.
- `noise`: uniformly random printable characters (useless: nothing to learn).
- `wrong_arithmetic`: the `arithmetic` format with a systematically wrong trace (every digit sum off by
  one) and the answer that follows from it (harmful: a conflicting rule for the same prompts).
- `wrong_answers`: copy / reverse prompts answered with an unrelated random word (harmful, mislabeled).

`generate(source, n, seed)` gives `n` documents as `{"text": ...}` dicts; `generate_sft(source, n, seed)`
gives `{"prompt": ..., "response": ...}` pairs of the same tasks. Every character is in
`jaxllm.data.tokenizers.DEFAULT_CHARS`, so `CharTokenizer()` encodes everything.
"""

from __future__ import annotations

import string
from typing import Callable

import numpy as np

LETTERS = string.ascii_lowercase


def _addition(rng: np.random.Generator, wrong: bool) -> tuple[str, str]:
    n_digits = int(rng.integers(1, 4))
    a = int(rng.integers(0, 10**n_digits))
    b = int(rng.integers(0, 10**n_digits))
    prompt = f"{a}+{b}="
    da, db = str(a)[::-1], str(b)[::-1]
    steps, carry, digits = [], 0, []
    for i in range(max(len(da), len(db))):
        x = int(da[i]) if i < len(da) else 0
        y = int(db[i]) if i < len(db) else 0
        s = x + y + carry
        if wrong:  # a systematically wrong rule (every digit sum off by one): it conflicts with the right one
            s += 1
        steps.append(f"{x}+{y}+{carry}={s}")
        digits.append(s % 10)
        carry = s // 10
    if carry:
        digits.append(carry)
    answer = int("".join(str(d) for d in reversed(digits)))  # wrong: a + b + 11...1, never a + b
    return prompt, f" {', '.join(steps)}; so {answer}."


def _word(rng: np.random.Generator, lo: int = 3, hi: int = 9) -> str:
    return "".join(rng.choice(list(LETTERS), size=int(rng.integers(lo, hi))))


def _copy(rng):
    w = _word(rng)
    return f"copy {w}:", f" {w}."


def _reverse(rng):
    w = _word(rng)
    return f"reverse {w}:", f" {w[::-1]}."


def _sorting(rng):
    d = [str(x) for x in rng.integers(0, 10, size=int(rng.integers(3, 8)))]
    return f"sort {' '.join(d)}:", f" {' '.join(sorted(d))}."


def _wrong_answers(rng):
    """copy / reverse prompts answered with an unrelated random word: mislabeled data for those tasks."""
    w, other = _word(rng), _word(rng)
    return (f"copy {w}:" if rng.random() < 0.5 else f"reverse {w}:"), f" {other}."


_PRINTABLE = [c for c in string.ascii_letters + string.digits + string.punctuation + " "]


def _noise(rng):
    n = int(rng.integers(10, 40))
    s = "".join(rng.choice(_PRINTABLE, size=n))
    return s[: n // 3], s[n // 3:]


TASKS: dict[str, Callable[[np.random.Generator], tuple[str, str]]] = {
    "arithmetic": lambda rng: _addition(rng, wrong=False),
    "copy": _copy,
    "reverse": _reverse,
    "sorting": _sorting,
    "noise": _noise,
    "wrong_arithmetic": lambda rng: _addition(rng, wrong=True),
    "wrong_answers": _wrong_answers,
}
SOURCES = tuple(TASKS)


def _rng(source: str, seed: int) -> np.random.Generator:
    if source not in TASKS:
        raise KeyError(f"unknown synthetic source {source!r}; known: {', '.join(SOURCES)}")
    # a different stream per source, so adding a source never changes another one's documents
    return np.random.default_rng([seed, SOURCES.index(source)])


def generate_sft(source: str, n: int, seed: int = 0) -> list[dict]:
    """`n` {"prompt", "response"} pairs of one task."""
    rng = _rng(source, seed)
    out = []
    for _ in range(n):
        p, r = TASKS[source](rng)
        out.append({"prompt": p, "response": r})
    return out


def generate(source: str, n: int, seed: int = 0) -> list[dict]:
    """`n` {"text"} documents of one source (prompt and response joined, one line each)."""
    return [{"text": d["prompt"] + d["response"]} for d in generate_sft(source, n, seed)]


def generate_corpus(sources: dict[str, int], seed: int = 0) -> dict[str, list[dict]]:
    """{source: documents} for {source: count}."""
    return {s: generate(s, n, seed) for s, n in sources.items()}
