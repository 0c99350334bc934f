"""MATH reward (d1 / SPG `correctness_reward_func_math` + `boxed_and_answer_tags_format_reward`).

  correct  2.0 if the last `\\boxed{}` of the completion is equivalent to the last `\\boxed{}` of the reference
           solution (a bare answer without a box is used as is)
  format   0.5 × (1[`<answer>` tag] + (1.0 if `\\boxed` inside the tagged text else 0.5))
           = 1.0 / 0.75 / 0.5 / 0.25 for tags+box / tags only / box only / neither (the paper's values)

Range [0, 3.0]. Deliberate differences from the reference code:
- The reference tests `"\\boxed" in r` with an unescaped backslash: `"\\b"` is a backspace, so its box test is
  always False and its format reward is 0.75 / 0.25 only. We test for the real `\\boxed`;
  `reference_boxed_bug=True` reproduces the reference values.
- Equivalence: first the reference's string normalisation (`strip_string`, Hendrycks MATH), then, if the two
  strings differ, an exact comparison of their values when both parse as simple numbers (integers, decimals,
  `a/b`, `\\frac{a}{b}`, a leading minus, thousands separators) — e.g. `0.25` ≡ `\\frac{1}{4}`, which the
  reference scores as wrong. No `eval`, no sympy on raw text; inputs are length-bounded.
- A completion over MAX_COMPLETION_CHARS gets 0.0.
"""

from __future__ import annotations

import re
from fractions import Fraction
from typing import Optional

from jaxllm.rewards.extract import last_boxed, remove_boxed, too_long

MAX_ANSWER_CHARS = 256


def _fix_fracs(s: str) -> str:
    parts = s.split("\\frac")
    out = parts[0]
    for sub in parts[1:]:
        out += "\\frac"
        if sub.startswith("{"):
            out += sub
            continue
        if len(sub) < 2:
            return s
        a, b = sub[0], sub[1]
        if b != "{":
            out += "{" + a + "}{" + b + "}" + sub[2:]
        else:
            out += "{" + a + "}" + b + sub[2:]
    return out


def _fix_a_slash_b(s: str) -> str:
    parts = s.split("/")
    if len(parts) != 2 or not re.fullmatch(r"-?\d+", parts[0], re.ASCII) or not re.fullmatch(r"-?\d+", parts[1], re.ASCII):
        return s
    a, b = int(parts[0]), int(parts[1])
    if s != f"{a}/{b}":
        return s
    return "\\frac{" + str(a) + "}{" + str(b) + "}"


def _fix_sqrt(s: str) -> str:
    if "\\sqrt" not in s:
        return s
    parts = s.split("\\sqrt")
    out = parts[0]
    for sub in parts[1:]:
        if sub and sub[0] != "{":
            out += "\\sqrt{" + sub[0] + "}" + sub[1:]
        else:
            out += "\\sqrt" + sub
    return out


def strip_string(s: str) -> str:
    """Hendrycks MATH answer normalisation (as used by d1 / SPG), made total (no assertion errors)."""
    s = s.replace("\n", "").replace("\\!", "").replace("\\\\", "\\")
    s = s.replace("tfrac", "frac").replace("dfrac", "frac").replace("\\left", "").replace("\\right", "")
    s = s.replace("^{\\circ}", "").replace("^\\circ", "").replace("\\$", "")
    if "\\text{ " in s:  # units on the right; the reference asserts exactly one occurrence
        parts = s.split("\\text{ ")
        if len(parts) == 2:
            s = parts[0]
    s = s.replace("\\%", "")
    s = s.replace(" .", " 0.").replace("{.", "{0.")
    if not s:
        return s
    if s[0] == ".":
        s = "0" + s
    eq = s.split("=")
    if len(eq) == 2 and len(eq[0]) <= 2:
        s = eq[1]
    s = _fix_sqrt(s).replace(" ", "")
    s = _fix_fracs(s)
    if s == "0.5":
        s = "\\frac{1}{2}"
    return _fix_a_slash_b(s)


_NUM = r"-?(?:\d{1,30}(?:,\d{3})*(?:\.\d{0,30})?|\.\d{1,30})"


def parse_number(s: str) -> Optional[Fraction]:
    """Exact value of a simple numeric answer (normalised form), or None. Bounded: ≤ 30 digits per part."""
    s = s.strip()
    if len(s) > 80:
        return None
    m = re.fullmatch(r"(-?)\\frac\{(" + _NUM + r")\}\{(" + _NUM + r")\}", s, re.ASCII)
    if m:
        num, den = Fraction(m.group(2).replace(",", "")), Fraction(m.group(3).replace(",", ""))
        if den == 0:
            return None
        return (-1 if m.group(1) else 1) * num / den
    if re.fullmatch(_NUM, s, re.ASCII):
        return Fraction(s.replace(",", ""))
    return None


def is_equiv(a: Optional[str], b: Optional[str]) -> bool:
    if a is None or b is None:
        return a is None and b is None
    if len(a) > MAX_ANSWER_CHARS or len(b) > MAX_ANSWER_CHARS:
        return False
    sa, sb = strip_string(a), strip_string(b)
    if sa == sb:
        return True
    va, vb = parse_number(sa), parse_number(sb)
    return va is not None and va == vb


def extract_math_answer(text: str) -> Optional[str]:
    """Content of the last `\\boxed{}`; the whole text when there is no box or the box is unclosed (as the
    reference's `remove_boxed(last_boxed_only_string(r))` inside try/except)."""
    box = last_boxed(text)
    return text if box is None else remove_boxed(box)


def math_format_reward(completion: str, reference_boxed_bug: bool = False) -> float:
    r = completion
    tag = 0.0
    if "<answer>" in r:
        r = r.split("<answer>")[1].split("</answer>")[0]
        tag = 1.0
    has_box = ("\x08oxed" in r) if reference_boxed_bug else ("\\boxed" in r)
    return 0.5 * (tag + (1.0 if has_box else 0.5))


def math_reward(completion: str, answer: str, reference_boxed_bug: bool = False) -> float:
    if too_long(completion) or not isinstance(answer, str):
        return 0.0
    correct = 2.0 if is_equiv(extract_math_answer(completion), extract_math_answer(answer)) else 0.0
    return correct + math_format_reward(completion, reference_boxed_bug)
