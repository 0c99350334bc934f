"""Language Self-Play's quality self-reward R_Q (arXiv 2509.07414 §3, Box 3): the judge prompt, a strict
`<Score>` parser for a model judge's output, and a programmatic 0–7 rubric for the verifiable arithmetic toy.

Every function is total: any input in, a number (or None) out, never an exception, bounded time. Nothing
here executes text: the rubric's query value comes from `jaxllm.rewards.arithmetic.evaluate` (a bounded
parser), never `eval`.
"""

from __future__ import annotations

import re
from typing import Optional

from jaxllm.rewards.arithmetic import evaluate
from jaxllm.rewards.extract import MAX_COMPLETION_CHARS

MAX_SCORE = 7  # Box 3: seven binary criteria, +1 each

# Box 3 of the paper, paraphrased (deepconf_lsp.md B2): the reference model judges (instruction, response).
JUDGE_PROMPT = """Review the user's instruction and the corresponding response below, then score the pair with an \
additive 0-7 point system, adding one point for each criterion that is met:
1. The task is clearly identifiable from the instruction.
2. The instruction is clear, specific and well structured.
3. The user will be able to understand the response.
4. The response addresses a significant part of the user's question.
5. The response usefully and comprehensively answers the core elements of the question.
6. The response is clear, concise, well organised and helpful.
7. The user will most likely like the form and the style of the response.

<Instruction>
{instruction}
</Instruction>

<Response>
{response}
</Response>

Write a justification of at most 100 words, then the sum of the points inside <Calculation></Calculation>, \
then the total score inside <Score></Score>."""

# The last `<Score>k</Score>` with k a bare integer (optional surrounding spaces); the digit run is bounded so
# that a 10^5-digit "score" is not parsed into a huge int.
_SCORE_RE = re.compile(r"<Score>\s{0,8}(\d{1,3})\s{0,8}</Score>", re.ASCII)


def judge_prompt(instruction: str, response: str) -> str:
    """The judge prompt with the pair filled in (non-strings become empty, over-long text is cut)."""
    ins = instruction[:MAX_COMPLETION_CHARS] if isinstance(instruction, str) else ""
    res = response[:MAX_COMPLETION_CHARS] if isinstance(response, str) else ""
    return JUDGE_PROMPT.format(instruction=ins, response=res)


def parse_score(text, max_score: int = MAX_SCORE) -> Optional[int]:
    """The judge's score: k of the LAST `<Score>k</Score>` when k is an integer in [0, max_score]; None for
    anything else (no tag, a non-integer k, a non-string, text over MAX_COMPLETION_CHARS). The last tag that
    matches decides: when it is out of range (`<Score>9</Score>`) the output is malformed, even if an earlier
    tag was valid (the judge's final word is what counts)."""
    if not isinstance(text, str) or len(text) > MAX_COMPLETION_CHARS:
        return None
    last = None
    for m in _SCORE_RE.finditer(text):
        last = m
    if last is None:
        return None
    k = int(last.group(1))
    return k if 0 <= k <= max_score else None


def score_or_zero(text, max_score: int = MAX_SCORE) -> tuple[int, bool]:
    """(score, malformed): a malformed judge output scores 0 and is flagged, so the caller counts it."""
    k = parse_score(text, max_score)
    return (0, True) if k is None else (k, False)


_INT_RE = re.compile(r"-?\d{1,12}", re.ASCII)


def parse_integer(text) -> Optional[int]:
    """A strict integer answer: optional '-', 1–12 ASCII digits, surrounding ASCII spaces allowed; else None."""
    if not isinstance(text, str) or len(text) > 64:
        return None
    s = text.strip(" ")
    return int(s) if _INT_RE.fullmatch(s) else None


def arithmetic_value(query, max_chars: int, max_abs_value: int) -> Optional[int]:
    """The integer value of a toy query, or None when it is invalid: not a string, longer than `max_chars`,
    not an expression of the safe parser, not an integer (division), or |value| > max_abs_value."""
    if not isinstance(query, str) or not query or len(query) > max_chars:
        return None
    v = evaluate(query)
    if v is None or v.denominator != 1 or abs(v) > max_abs_value:
        return None
    return int(v)


def arithmetic_rubric(query, answer, *, query_terminated: bool, answer_terminated: bool, duplicate: bool,
                      max_chars: int, max_abs_value: int) -> int:
    """A programmatic stand-in for the reference-model judge on the arithmetic toy (deepconf_lsp.md C2): an
    additive 0–7 score in the spirit of Box 3, +1 for each of
        1. the query parses (the task is identifiable),
        2. the query ended with the end token within its length bound (the instruction is well formed),
        3. its value is an integer within ±max_abs_value (the question has an answer the solver can give),
        4. the answer is a well-formed integer (the user can understand it),
        5. the answer ended with the end token within its bound, nothing after it,
        6. the answer has a plausible length for the query's value (at most one more digit than the value
           has; 0 for an invalid query: a response cannot address a question that has no answer),
        7. the query is not a duplicate of another query of the same batch (variety; the caller decides).
    It never looks at whether the answer is right: that is R's job, as in the paper."""
    q = query if isinstance(query, str) else ""
    value = arithmetic_value(q, max_chars, max_abs_value)
    parses = len(q) <= max_chars and evaluate(q) is not None
    a = parse_integer(answer)
    score = int(parses) + int(bool(query_terminated)) + int(value is not None)
    score += int(a is not None) + int(bool(answer_terminated))
    if value is not None and a is not None:
        score += int(len(str(abs(a))) <= len(str(abs(value))) + 1)
    score += int(not duplicate)
    return score
