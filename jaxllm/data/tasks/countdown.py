"""Countdown (TinyZero / d1 / SPG): reach a target with +, −, ×, ÷ using each given number exactly once.

Generated locally (our recipe, dllm_rl.md §5.6): draw 3 or 4 numbers, draw a random expression tree over a
random permutation with random operators, keep it when every intermediate value is a non-negative integer and
the target lies in the requested range. Every problem is therefore solvable by construction. `solve` searches
all expressions (exact rational arithmetic) and `reasoning_trace` writes the steps of the one it finds.
"""

from __future__ import annotations

import itertools
from fractions import Fraction
from functools import lru_cache
from typing import NamedTuple, Optional, Sequence

import numpy as np

from jaxllm.config import ConfigError
from jaxllm.data.tasks.math_data import SYSTEM_PROMPT  # the d1 / SPG reasoning-answer format

OPS = "+-*/"


class CountdownItem(NamedTuple):
    numbers: tuple[int, ...]
    target: int
    expression: str  # the generating expression (one solution)


def _apply(op: str, a: Fraction, b: Fraction) -> Optional[Fraction]:
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    return None if b == 0 else a / b


def _combine(rng: np.random.Generator, items: list[tuple[Fraction, str]]):
    """Random binary tree: repeatedly merge two random items with a random operator (integers only)."""
    items = list(items)
    while len(items) > 1:
        i, j = rng.choice(len(items), 2, replace=False)
        (a, ea), (b, eb) = items[i], items[j]
        op = OPS[rng.integers(4)]
        v = _apply(op, a, b)
        if v is None or v.denominator != 1 or v < 0:
            return None
        items = [it for k, it in enumerate(items) if k not in (i, j)] + [(v, f"({ea}{op}{eb})")]
    return items[0]


def _strip_outer(expr: str) -> str:
    if expr.startswith("(") and expr.endswith(")"):
        depth = 0
        for k, ch in enumerate(expr):
            depth += ch == "("
            depth -= ch == ")"
            if depth == 0 and k < len(expr) - 1:
                return expr
        return expr[1:-1]
    return expr


def generate(seed: int, n: int, num_count: int = 3, number_range=(1, 100), target_range=(1, 100)) -> list[CountdownItem]:
    """n solvable problems with `num_count` (3 or 4) numbers and an integer target in target_range."""
    if num_count not in (3, 4):
        raise ConfigError(f"num_count={num_count} must be 3 or 4")
    lo, hi = number_range
    tlo, thi = target_range
    if not 0 < lo <= hi or not tlo <= thi:
        raise ConfigError(f"bad ranges number_range={number_range}, target_range={target_range}")
    rng = np.random.default_rng(seed)
    out = []
    while len(out) < n:
        nums = [int(x) for x in rng.integers(lo, hi + 1, num_count)]
        res = _combine(rng, [(Fraction(x), str(x)) for x in nums])
        if res is None or not tlo <= res[0] <= thi:
            continue
        out.append(CountdownItem(tuple(nums), int(res[0]), _strip_outer(res[1])))
    return out


@lru_cache(maxsize=65536)
def _all_values(nums: tuple) -> dict:
    """value -> (expression, steps) for every expression using all of `nums` (each once)."""
    if len(nums) == 1:
        return {Fraction(nums[0]): (str(nums[0]), ())}
    out: dict = {}
    idx = range(len(nums))
    for r in range(1, len(nums)):
        for left in itertools.combinations(idx, r):
            right = tuple(i for i in idx if i not in left)
            lv = _all_values(tuple(nums[i] for i in left))
            rv = _all_values(tuple(nums[i] for i in right))
            for (a, (ea, sa)), (b, (eb, sb)) in itertools.product(lv.items(), rv.items()):
                for op in OPS:
                    v = _apply(op, a, b)
                    if v is None or v in out:
                        continue
                    wrap_l = ea if len(ea.strip("0123456789")) == 0 else f"({ea})"
                    wrap_r = eb if len(eb.strip("0123456789")) == 0 else f"({eb})"
                    out[v] = (f"{wrap_l}{op}{wrap_r}", sa + sb + ((a, op, b, v),))
    return out


def solve(numbers: Sequence[int], target: int) -> Optional[tuple[str, tuple]]:
    """(expression, steps) reaching the target with every number once, or None. Steps are (a, op, b, value)."""
    found = _all_values(tuple(sorted(int(x) for x in numbers))).get(Fraction(target))
    return found


def _fmt(x: Fraction) -> str:
    return str(x.numerator) if x.denominator == 1 else f"{x.numerator}/{x.denominator}"


def reasoning_trace(numbers: Sequence[int], target: int) -> tuple[str, str]:
    """(reasoning text, answer expression) written from the solver's steps, e.g. "3*5=15\\n15+2=17"."""
    found = solve(numbers, target)
    if found is None:
        raise ValueError(f"no expression over {list(numbers)} reaches {target}")
    expr, steps = found
    lines = [f"{_fmt(a)}{op}{_fmt(b)}={_fmt(v)}" for a, op, b, v in steps]
    return "\n".join(lines), expr


def countdown_prompt(numbers: Sequence[int], target: int) -> str:
    """The user turn of d1/SPG's Countdown training prompt (`get_countdown_questions`)."""
    return (f"{SYSTEM_PROMPT}\nUsing only the numbers {list(numbers)}, create an arithmetic expression that "
            f"evaluates to exactly {target}. You must use all numbers from the list, and each number must be used "
            "exactly once. You may use the operations +, -, *, and / as needed. After reasoning, provide only "
            "your final expression inside <answer></answer> tags without including an equals sign or the target "
            "number. For example, if the numbers are [2, 3, 4] and the target is 5, a valid answer is: "
            "<answer>\n2*4-3\n</answer>")


def completion_text(numbers: Sequence[int], target: int) -> str:
    """A reference completion in the XML format: solver reasoning and the answer expression."""
    reasoning, expr = reasoning_trace(numbers, target)
    return f"<reasoning>\n{reasoning}\n</reasoning>\n<answer>\n{expr}\n</answer>"
