"""Rewards: the reference's values on known cases, and hostile inputs (never executed, bounded time)."""

import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jaxllm.rewards import (
    MAX_COMPLETION_CHARS,
    arithmetic,
    countdown_reward,
    gsm8k_reward,
    gsm8k_reward_parts,
    is_equiv,
    math_format_reward,
    math_reward,
    sudoku_reward,
)

# ---- reference values ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("text,value", [
    ("<answer>(3+5)*2</answer>", 1.0),
    ("reasoning <answer>\n 2*(5+3) \n</answer>", 1.0),
    ("<answer>3+5*2</answer>", 0.1),  # wrong value
    ("<answer>3+5</answer>", 0.1),  # numbers differ
    ("<answer>3+5+2+2</answer>", 0.1),
    ("<answer>(3+5)*2=16</answer>", 0.1),  # '=' outside the alphabet (and 16 is an extra number)
    ("no tags (3+5)*2", 0.0),
    ("<answer>1</answer> then <answer>2*(3+5)</answer>", 1.0),  # the last tag counts
    ("<answer>2**3+5</answer>", 0.1),  # power rejected (reference eval would accept it)
    ("<answer>(3+5)/(2-2)</answer>", 0.1),
])
def test_countdown_reward_values(text, value):
    nums = [3, 5, 2, 2] if "2-2" in text else [3, 5, 2]
    assert countdown_reward(text, nums, 16) == value


def test_countdown_true_division():
    assert countdown_reward("<answer>7/2*4-4</answer>", [7, 2, 4, 4], 10) == 1.0
    assert countdown_reward("<answer>(10-1)/3</answer>", [10, 1, 3], 3) == 1.0


def test_arithmetic_parser_matches_python_on_plain_expressions():
    for e in ["1+2*3", "(1+2)*3", "-3+5", "8/4/2", "2*(3-(4+5))", " 7 - - 2 ", "1.5*2", "+4"]:
        assert arithmetic.evaluate(e) == pytest.approx(float(eval(e)))  # test oracle only, on trusted text
    for e in ["", "()", "1+", "2**2", "4//2", "(1", "1)", "1 2", "import os", "x"]:
        assert arithmetic.evaluate(e) is None


def test_sudoku_reward_values():
    puzzle, sol = "3014002020004130", "3214142323414132"
    assert sudoku_reward(f"<answer>\n{sol}\n</answer>", puzzle, sol) == 1.0
    wrong = "4" + sol[1:]  # first cell is a clue: does not count
    assert sudoku_reward(f"<answer>{wrong}</answer>", puzzle, sol) == 1.0
    assert sudoku_reward(f"<answer>{sol[:8]}</answer>", puzzle, sol) == 0.5  # padded with 0: 4 of the 8 empty cells lie in the first half
    assert sudoku_reward("<answer>no digits</answer>", puzzle, sol) == 0.0
    assert sudoku_reward(sol, puzzle, sol) == 0.0


def test_gsm8k_reward_values():
    good = "<reasoning>\nadd them\n</reasoning>\n<answer>\n42\n</answer>\n"
    parts = gsm8k_reward_parts(good, "42")
    # SPG's xmlcount charges the 13 characters after "\n<answer>\n"; the soft regex has no DOTALL, so the
    # newline after <reasoning> already fails it: both reference quirks, reproduced.
    assert parts == {"xmlcount": pytest.approx(0.487), "soft_format": 0.0, "strict_format": 0.5, "int": 0.5,
                     "correct": 2.0}
    assert gsm8k_reward_parts("<reasoning>x</reasoning> <answer>42</answer>", "42")["soft_format"] == 0.5
    multi = "<reasoning>\nline1\nline2\n</reasoning>\n<answer>\n42\n</answer>\n"
    p = gsm8k_reward_parts(multi, "42")
    assert p["soft_format"] == 0.0 and p["strict_format"] == 0.0  # no DOTALL in the reference regexes
    assert gsm8k_reward("<answer>41</answer>", "42") == 0.5
    assert gsm8k_reward_parts(good + "xyz", "42")["xmlcount"] == pytest.approx(0.487 - 0.003 - 0.003)


def test_math_reward_values_and_boxed_bug():
    sol = "We get $\\boxed{\\frac{1}{2}}$."
    full = "<answer>\\boxed{0.5}</answer>"
    assert math_reward(full, sol) == 2.0 + 1.0
    assert math_reward(full, sol, reference_boxed_bug=True) == 2.0 + 0.75
    assert math_format_reward("<answer>7</answer>") == 0.75
    assert math_format_reward("\\boxed{7}") == 0.5
    assert math_format_reward("\\boxed{7}", reference_boxed_bug=True) == 0.25
    assert math_format_reward("7") == 0.25
    assert math_reward("\\boxed{3}", "\\boxed{4}") == 0.5
    assert is_equiv("\\dfrac{3}{4}", "\\frac34") and is_equiv("0.25", "\\frac{1}{4}") and is_equiv("1,000", "1000")
    assert not is_equiv("x+1", "1+x")  # no symbolic algebra on model text


# ---- hostile inputs ------------------------------------------------------------------------------------------

HOSTILE = [
    "<answer>__import__('os').system('echo pwned')</answer>",
    "<answer>9**9**9**9</answer>",
    "<answer>" + "(" * 5000 + "1" + ")" * 5000 + "</answer>",
    "<answer>" + "9" * 100000 + "</answer>",
    "<answer>" + "1+" * 200000 + "1</answer>",
    "<answer>١٢٣+٤</answer>",  # Arabic-Indic digits
    "<answer>\\boxed{" + "{" * 100000 + "</answer>",
    "<reasoning>" + "</reasoning> " * 3000 + "<answer>" * 3000,
    "x" * (1 << 20),
    "<answer>" * 100000,
    "\\boxed " * 10000,
    "\x00\ud7ff\U0010ffff" * 1000,
    "<reasoning>" + "</reasoning><answer>" * 999,  # quadratic for the reference regexes
]

REWARDS = [
    ("countdown", lambda t: countdown_reward(t, [1, 2, 3], 6), 0.0, 1.0),
    ("sudoku", lambda t: sudoku_reward(t, "3014002020004130", "3214142323414132"), 0.0, 1.0),
    ("gsm8k", lambda t: gsm8k_reward(t, "42"), -0.002 * MAX_COMPLETION_CHARS, 4.0),
    ("math", lambda t: math_reward(t, "\\boxed{42}"), 0.0, 3.0),
]


def _check(fn, lo, hi, text, budget_s):
    t0 = time.perf_counter()
    r = fn(text)
    dt = time.perf_counter() - t0
    assert isinstance(r, float) and lo <= r <= hi, r
    assert dt < budget_s, f"{dt:.3f}s on input of length {len(text)}"


@pytest.mark.parametrize("name,fn,lo,hi", REWARDS, ids=[r[0] for r in REWARDS])
def test_hostile_inputs_bounded(name, fn, lo, hi):
    for text in HOSTILE:
        _check(fn, lo, hi, text, budget_s=0.1)  # generous for a loaded 2-core machine; typical is < 5 ms


_alphabet = st.sampled_from(list("0123456789+-*/(). \n<>/answerboxed{}\\=^١٣") + ["<answer>", "</answer>",
                                                                                "\\boxed{", "**", "9" * 20])
hostile_text = st.one_of(st.text(max_size=300), st.lists(_alphabet, max_size=200).map("".join),
                         st.lists(_alphabet, max_size=200).map(lambda xs: "<answer>" + "".join(xs) + "</answer>"))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=hostile_text)
def test_rewards_total_on_arbitrary_strings(text):
    for _, fn, lo, hi in REWARDS:
        _check(fn, lo, hi, text, budget_s=0.25)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.sampled_from(list("0123456789+-*/() ")), max_size=60).map("".join))
def test_arithmetic_agrees_with_python_where_both_accept(expr):
    ours = arithmetic.evaluate(expr)
    if ours is None or "**" in expr or "//" in expr:
        return
    try:
        ref = eval(expr, {"__builtins__": None}, {})  # oracle on our own restricted alphabet only
    except Exception:  # noqa: BLE001  (e.g. '01' is a SyntaxError in Python, a number for us)
        return
    assert float(ours) == pytest.approx(ref, rel=1e-9, abs=1e-9)


_tags = st.sampled_from(["<reasoning>", "</reasoning>", "<answer>", "</answer>", "\n", " ", "\t", "x", "4", "<"])


@settings(max_examples=300, deadline=None)
@given(st.lists(_tags, max_size=14).map("".join))
def test_linear_soft_format_equals_the_reference_regex(text):
    from jaxllm.rewards.gsm8k import _SOFT_RE, soft_format_match

    for t in (text, "<reasoning>" + text):
        assert soft_format_match(t) == bool(_SOFT_RE.match(t)), repr(t)


def test_linear_answer_tag_equals_findall():
    import re

    from jaxllm.rewards.extract import last_answer_tag

    for t in ["<answer>a</answer><answer>b</answer>", "<answer><answer>x</answer>", "</answer><answer>",
              "<answer> a </answer> <answer>", "<answer>\nx\n</answer>"]:
        m = re.findall(r"<answer>(.*?)</answer>", t, re.DOTALL)
        assert last_answer_tag(t) == (m[-1].strip() if m else None)
