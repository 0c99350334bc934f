"""Answer extraction for voting (D1.12): the last `\\boxed{}`, grouped by equivalence; hostile completions never
raise, never run, and stay within a time bound (the rewards' fuzz inputs)."""

import os
import time

import pytest
from hypothesis import HealthCheck, given, settings

from jaxllm.inference.deepconf import answer_ids, answer_key, extract_answer
from tests.rewards.test_rewards import HOSTILE, hostile_text


@pytest.mark.parametrize("text,want", [
    ("so \\boxed{\\frac{1}{2}}.", "\\frac{1}{2}"),
    ("\\boxed{3} then \\boxed{4}", "4"),  # the last box wins
    ("$\\boxed 5$ done", "5"),
    ("\\boxed{{a}{b}}", "{a}{b}"),  # nested braces kept
    ("no box here", None),
    ("\\boxed{}", None),  # empty: does not vote
    ("\\boxed{ 7 ", None),  # unclosed
])
def test_extract_answer_cases(text, want):
    assert extract_answer(text) == want


def test_equivalent_answers_share_a_key():
    assert answer_key("0.5") == answer_key("\\frac{1}{2}") == answer_key("1/2") == answer_key("\\dfrac12")
    assert answer_key("1,000") == answer_key("1000")
    assert answer_key("x+1") != answer_key("1+x")  # no symbolic algebra on model text
    assert answer_key("0.5", "exact") != answer_key("\\frac{1}{2}", "exact")


def _check(texts, budget_s):
    t0 = time.perf_counter()
    ids, valid, keys, ref = answer_ids(texts, reference="42")
    assert len(ids) == len(texts) and len(keys) <= len(texts) and 0 <= ref <= len(keys)  # len(keys): not given
    assert all(extract_answer(t) is None or isinstance(extract_answer(t), str) for t in texts)
    assert time.perf_counter() - t0 < budget_s


def test_hostile_completions_never_raise_run_or_hang(tmp_path):
    canary = tmp_path / "pwned"
    payloads = HOSTILE + [f"\\boxed{{__import__('os').system('touch {canary}')}}",
                          f"\\boxed{{exec(\"open('{canary}','w')\")}}", None, 12345, b"\\boxed{1}"]
    _check(payloads, budget_s=1.0)  # the rewards' bounds keep each call in milliseconds
    assert not canary.exists() and not os.path.exists("pwned")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=hostile_text)
def test_arbitrary_completions_never_raise(text):
    _check([text, "\\boxed{" + text + "}", text + "\\boxed{42}"], budget_s=0.5)


def test_answer_ids_take_a_task_parser():
    """A task whose answers are not `\\boxed{}` (Sudoku's `<answer>` digits) votes through `extract`: equal parsed
    answers share an id, an unparsable or empty one does not vote, and the default parser would see none."""
    from jaxllm.rewards.sudoku import extract_sudoku_digits

    texts = ["<answer>1234</answer>", "no tag", "<answer>1234</answer>x", "<answer>4321</answer>", "<answer></answer>"]
    ids, valid, keys, ref = answer_ids(texts, equivalence="exact", reference="4321", extract=extract_sudoku_digits)
    assert valid.tolist() == [True, False, True, True, False]
    assert ids[0] == ids[2] != ids[3] and keys == [("str", "1234"), ("str", "4321")] and ref == ids[3]
    assert not answer_ids(texts)[1].any()
