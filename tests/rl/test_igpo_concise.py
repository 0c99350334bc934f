"""Length-aligned SFT data (jaxllm.data.concise): the rewriters keep the answer and the reward, the output never
exceeds the budget where it was rewritten, and a trace that cannot be shortened is counted and kept."""

from __future__ import annotations

import numpy as np

from jaxllm.data import concise
from jaxllm.data.tasks import countdown, sudoku
from jaxllm.rewards import countdown_reward, sudoku_reward


def _text(t: concise.Trace) -> str:
    return f"<reasoning>\n{t.reasoning}\n</reasoning>\n<answer>\n{t.answer}\n</answer>"


def _chars(t: concise.Trace) -> int:  # the Countdown / Sudoku toy vocabularies: one token per character
    return len(t.reasoning) + len(t.answer) + 4


def test_countdown_rewrite_recovers_the_solver_trace_and_keeps_the_reward():
    """Verbose traces (solver steps + 3 dead-end detours) of 200 problems: the concise rewrite is exactly the
    solver's own trace (the detours removed, nothing else), its lines are a subsequence of the verbose lines,
    and its reward is the verbose trace's (1.0: the answer is the solver's)."""
    rng = np.random.default_rng(0)
    items = countdown.generate(0, 200, num_count=3, number_range=(1, 9), target_range=(1, 40))
    for it in items:
        long = concise.countdown_verbose(it.numbers, it.target, rng, detours=3)
        short = concise.countdown_concise(long)
        reasoning, expr = countdown.reasoning_trace(it.numbers, it.target)
        assert short == concise.Trace(reasoning, expr)
        assert len(long.reasoning.split("\n")) == len(reasoning.split("\n")) + 3
        kept = iter(long.reasoning.split("\n"))
        assert all(ln in kept for ln in short.reasoning.split("\n"))
        assert countdown_reward(_text(short), it.numbers, it.target) == countdown_reward(
            _text(long), it.numbers, it.target) == 1.0


def _verify_countdown(it):
    return lambda a, b: (a.answer == b.answer and countdown_reward(_text(a), it.numbers, it.target)
                         == countdown_reward(_text(b), it.numbers, it.target))


def test_length_align_never_exceeds_the_budget_and_counts_what_it_keeps():
    """length_align over 100 verbose Countdown traces at a budget between the concise and the verbose lengths:
    every output is within the budget or is the unchanged original counted as not shortened; no trace is
    dropped; the counts add up; a rewriter that cannot rewrite (None) keeps and counts every long trace; a
    rewrite that changes the answer is rejected and counted."""
    rng = np.random.default_rng(1)
    items = countdown.generate(1, 100, num_count=3, number_range=(1, 9), target_range=(1, 40))
    traces = [concise.countdown_verbose(it.numbers, it.target, rng, detours=int(rng.integers(0, 4))) for it in items]
    budget = 26
    out, st = concise.length_align(traces, concise.countdown_concise, budget, _chars,
                                   lambda a, b: a.answer == b.answer)
    assert len(out) == len(traces)
    assert st.within_budget + st.rewritten + st.not_shortened + st.failed_verification == len(traces)
    assert st.rewritten > 0 and st.not_shortened > 0 and st.within_budget > 0  # all three cases occur here
    n_over = 0
    for t, o, it in zip(traces, out, items):
        if _chars(o) > budget:
            assert o == t  # kept as is
            n_over += 1
        assert o.answer == t.answer
        assert countdown_reward(_text(o), it.numbers, it.target) == 1.0
    assert n_over == st.over_budget == st.not_shortened
    assert st.tokens_after == sum(map(_chars, out)) < st.tokens_before

    none_out, none_st = concise.length_align(traces, lambda t, b: None, budget, _chars, lambda a, b: True)
    assert none_out == list(traces) and none_st.not_shortened == len(traces) - none_st.within_budget

    def wrong(t, b):
        return concise.Trace("1+1=2", "1+1")

    bad_out, bad_st = concise.length_align(traces, wrong, budget, _chars, _verify_countdown(items[0]))
    assert bad_st.failed_verification == len(traces) - bad_st.within_budget and bad_out == list(traces)


def test_sudoku_rewrite_drops_justifications_and_keeps_the_reward():
    """solve_with_trace reasoning of 100 puzzles: the rewrite keeps every move "RrCc=d" in order, removes every
    parenthesis, is shorter, and scores the same sudoku_reward (the answer is unchanged)."""
    split = sudoku.solution_split(seed=42)
    for p in sudoku.generate_puzzles(3, split.train_solutions, 100, (6, 10)):
        sol, lines = sudoku.solve_with_trace(p.puzzle)
        t = concise.Trace("\n".join(lines), sol)
        s = concise.sudoku_concise(t)
        assert s.reasoning.split("\n") == [ln.split(" (")[0] for ln in lines]
        assert "(" not in s.reasoning and len(s.reasoning) < len(t.reasoning)
        assert sudoku_reward(_text(s), p.puzzle, p.solution) == sudoku_reward(_text(t), p.puzzle, p.solution) == 1.0


def test_model_rewriter_interface():
    """ModelRewriter formats the prompt with the budget and trace, parses the reply's reasoning, keeps the
    original answer, and returns None for a reply without tags (then length_align keeps and counts it)."""
    seen = []

    def lm(prompt):
        seen.append(prompt)
        return "<reasoning>\n3*5=15\n</reasoning><answer>\nignored\n</answer>" if "KEEPME" in prompt else "no tags"

    rw = concise.ModelRewriter(lm)
    assert rw(concise.Trace("KEEPME 2+2=4\n3*5=15", "3*5"), 10) == concise.Trace("3*5=15", "3*5")
    assert "at most 10 tokens" in seen[0] and "KEEPME 2+2=4" in seen[0]
    assert rw(concise.Trace("x", "y"), 10) is None
