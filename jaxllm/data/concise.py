"""Length-aligned SFT data (IGPO stage 1, dllm_rl.md §6.1): rewrite long reasoning traces into concise ones that fit
the RL generation length, keeping the answer, so that SFT and RL see completions of the same length.

The paper rewrites OpenR1 traces with LLaMA-4-Maverick (not public); here:
- `countdown_concise`: a programmatic rewriter for Countdown traces of "a op b=c" lines: it keeps only the lines
  the final derivation needs (the last line and, recursively, the lines that produced its operands), dropping
  exploration detours; `countdown_verbose` writes such long traces (the solver's steps with dead-end detours).
- `sudoku_concise`: drops the justifications of `sudoku.solve_with_trace` lines ("R1C2=3 (only candidate)" →
  "R1C2=3").
- `ModelRewriter`: the interface for a model-based rewriter: any `generate(prompt) -> text` (an LM behind it),
  a prompt template, and parsing of `<reasoning>…</reasoning>` back into a trace.

`length_align(traces, rewriter, budget, count_tokens, verify)` runs one of them over a data set: a trace within
the budget is kept as is; a longer one is replaced by its rewrite when the rewrite fits the budget and passes
`verify` (same answer, same reward); otherwise the original is kept and counted (`not_shortened` /
`failed_verification`), never dropped. The result feeds the masked SFT code (`jaxllm.train.sft.pack_sft_rows`).
"""

from __future__ import annotations

import dataclasses
import re
from fractions import Fraction
from typing import Callable, NamedTuple, Optional, Protocol, Sequence

import numpy as np

from jaxllm.data.tasks import countdown


class Trace(NamedTuple):
    reasoning: str
    answer: str


class Rewriter(Protocol):
    def __call__(self, trace: Trace, budget: int) -> Optional[Trace]:
        """A shorter trace with the same answer (None: cannot rewrite)."""


@dataclasses.dataclass
class AlignStats:
    within_budget: int = 0  # already short enough, kept as is
    rewritten: int = 0  # replaced by a rewrite within the budget
    not_shortened: int = 0  # the rewriter could not bring it within the budget: original kept
    failed_verification: int = 0  # the rewrite changed the answer or the reward: original kept
    tokens_before: int = 0
    tokens_after: int = 0

    @property
    def over_budget(self) -> int:
        """Traces in the output still longer than the budget (kept, not dropped)."""
        return self.not_shortened + self.failed_verification


def length_align(traces: Sequence[Trace], rewriter: Rewriter, budget: int, count_tokens: Callable[[Trace], int],
                 verify: Callable[[Trace, Trace], bool]) -> tuple[list[Trace], AlignStats]:
    """(traces, stats): every input trace has exactly one output trace, at the same index (see the module doc)."""
    if budget < 1:
        raise ValueError(f"budget must be ≥ 1 token, got {budget}")
    out, st = [], AlignStats()
    for t in traces:
        n = count_tokens(t)
        st.tokens_before += n
        if n <= budget:
            out.append(t)
            st.within_budget += 1
        else:
            c = rewriter(t, budget)
            if c is None or count_tokens(c) > budget:
                out.append(t)
                st.not_shortened += 1
            elif not verify(t, c):
                out.append(t)
                st.failed_verification += 1
            else:
                out.append(c)
                st.rewritten += 1
        st.tokens_after += count_tokens(out[-1])
    return out, st


# ----------------------------------------------------------------------------------------------------------
# Countdown

_NUM = re.compile(r"^-?\d+(?:/\d+)?$")  # the solver writes negative intermediates ("2--7=9") and fractions


def _parse_step(line: str) -> Optional[tuple[Fraction, Fraction, Fraction]]:
    """(a, b, c) of a line "a op b=c" whose arithmetic holds; operands may be negative or fractions, so
    "4/2/9=18" is read as 4 / (2/9): every split at an operator is tried. None when no split holds."""
    lhs, eq, rhs = line.strip().partition("=")
    if not eq or not _NUM.match(rhs.strip()):
        return None
    value = Fraction(rhs.strip())
    for k in range(1, len(lhs)):
        op, left, right = lhs[k], lhs[:k].strip(), lhs[k + 1:].strip()
        if op in "+-*/" and _NUM.match(left) and _NUM.match(right):
            a, b = Fraction(left), Fraction(right)
            if op == "/" and b == 0:
                continue
            if {"+": a + b, "-": a - b, "*": a * b, "/": a / b if b else None}[op] == value:
                return a, b, value
    return None


def countdown_verbose(numbers: Sequence[int], target: int, rng: np.random.Generator, detours: int = 2) -> Trace:
    """The solver's steps with `detours` dead-end lines ("a op b=c" over the given numbers, whose value is not
    used later) inserted at random places before the last step: a long trace with the solver's answer."""
    reasoning, expr = countdown.reasoning_trace(numbers, target)
    lines = reasoning.split("\n")
    taken = {Fraction(int(x)) for x in numbers} | {st[2] for st in map(_parse_step, lines) if st}
    added, tries = 0, 0
    while added < detours and tries < 100 * detours:  # a detour's value is no number and no step value
        tries += 1
        a, b = (int(x) for x in rng.choice(list(numbers), 2, replace=len(numbers) < 2))
        op = "+-*"[int(rng.integers(3))]
        v = {"+": a + b, "-": a - b, "*": a * b}[op]
        if v < 0:
            a, b, v = b, a, -v
        if Fraction(v) in taken:
            continue
        lines.insert(int(rng.integers(0, len(lines))), f"{a}{op}{b}={v}")
        added += 1
    return Trace("\n".join(lines), expr)


def countdown_concise(trace: Trace, budget: int = 0) -> Optional[Trace]:
    """Keep the lines the last line depends on: walking back, a line is needed when its value is an operand of
    a needed later line that no nearer earlier line produced. None when a line does not parse."""
    lines = [ln for ln in trace.reasoning.split("\n") if ln.strip()]
    parsed = []
    for ln in lines:
        step = _parse_step(ln)
        if step is None:
            return None
        parsed.append(step)
    if not parsed:
        return trace
    needed = {len(parsed) - 1}
    for k in range(len(parsed) - 1, -1, -1):
        if k not in needed:
            continue
        for operand in parsed[k][:2]:
            for j in range(k - 1, -1, -1):  # the nearest earlier line producing this value, if any
                if parsed[j][2] == operand:
                    needed.add(j)
                    break
    return Trace("\n".join(ln for k, ln in enumerate(lines) if k in needed), trace.answer)


# ----------------------------------------------------------------------------------------------------------
# Sudoku

_WHY = re.compile(r"\s*\([^)]*\)")


def sudoku_concise(trace: Trace, budget: int = 0) -> Optional[Trace]:
    """"R1C2=3 (only candidate)" → "R1C2=3": the moves without their justifications."""
    return Trace("\n".join(_WHY.sub("", ln) for ln in trace.reasoning.split("\n")), trace.answer)


# ----------------------------------------------------------------------------------------------------------
# Model-based rewriter (the paper's LLM rewrite), as an interface

REWRITE_PROMPT = ("Rewrite the reasoning below into a concise, structured form of at most {budget} tokens. Remove "
                  "redundant reflection and detours; keep every step the final answer needs; do not change the "
                  "answer.\n\n<reasoning>\n{reasoning}\n</reasoning>\n<answer>\n{answer}\n</answer>")
_REASONING = re.compile(r"<reasoning>\s*(.*?)\s*</reasoning>", re.S)


@dataclasses.dataclass(frozen=True)
class ModelRewriter:
    """generate(prompt) -> text from any LM (greedy, offline); the reasoning between the tags of its reply
    becomes the rewrite, the answer stays the original's (the verifier still checks the reward)."""

    generate: Callable[[str], str]
    template: str = REWRITE_PROMPT

    def __call__(self, trace: Trace, budget: int) -> Optional[Trace]:
        reply = self.generate(self.template.format(budget=budget, reasoning=trace.reasoning, answer=trace.answer))
        m = _REASONING.search(reply or "")
        return None if m is None else Trace(m.group(1), trace.answer)
