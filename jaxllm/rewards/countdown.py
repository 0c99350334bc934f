"""Countdown reward (d1 / SPG `countdown_reward_func` → `compute_score`), without executing model text.

Values: 0.0 when there is no `<answer>…</answer>`; 0.1 when the numbers used differ from the given multiset
or the expression does not parse (or breaks a bound); 1.0 when it evaluates to the target within 1e-5;
0.1 otherwise. Range [0, 1].

Deliberate differences from the reference (which runs Python `eval` on the text):
- `**` and `//` are rejected (0.1); Python would evaluate them as power / floor division.
- Numbers are ASCII digits only (the reference's `\\d` also matches other scripts' digits, which `eval` then
  rejects: the same 0.1).
- Over-long completions (> MAX_COMPLETION_CHARS) or expressions (> arithmetic.MAX_LENGTH) get 0.0 / 0.1.
"""

from __future__ import annotations

import re
from fractions import Fraction
from typing import Sequence

from jaxllm.rewards import arithmetic
from jaxllm.rewards.extract import last_answer_tag

_NUMBER_RE = re.compile(r"\d+", re.ASCII)
_ALLOWED_RE = re.compile(r"^[\d+\-*/().\s]+$", re.ASCII)


def numbers_used(expression: str) -> list[int]:
    return [int(n) for n in _NUMBER_RE.findall(expression[: arithmetic.MAX_LENGTH + 1])]


def countdown_reward(completion: str, numbers: Sequence[int], target: int | float) -> float:
    equation = last_answer_tag(completion)
    if equation is None:
        return 0.0
    if len(equation) > arithmetic.MAX_LENGTH:
        return 0.1
    if sorted(numbers_used(equation)) != sorted(int(n) for n in numbers):
        return 0.1
    if not _ALLOWED_RE.match(equation):
        return 0.1
    value = arithmetic.evaluate(equation)
    if value is None:
        return 0.1
    return 1.0 if abs(value - Fraction(target)) < Fraction(1, 10**5) else 0.1
