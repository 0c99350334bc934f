"""GSM8K reward: the sum of d1 / SPG's five reward functions (dllm_rl.md §5.5). Maximum 4.0.

  xmlcount   +0.125 per exactly-once marker `<reasoning>\\n`, `\\n</reasoning>\\n`, `\\n<answer>\\n`, `\\n</answer>`;
             −0.001 per character after `\\n<answer>\\n` (SPG's split; d1 splits at `\\n</answer>\\n`) and per
             character after `\\n</answer>` beyond the first
  soft       0.5 if re.match(r"<reasoning>.*?</reasoning>\\s*<answer>.*?</answer>")  (no DOTALL: the reference's
             quirk, kept: multi-line reasoning fails it)
  strict     0.5 if re.match(r"^<reasoning>\\n.*?\\n</reasoning>\\n<answer>\\n.*?\\n</answer>\\n$")
  int        0.5 if the extracted answer `.isdigit()`
  correct    2.0 if the extracted answer equals the `####` answer string

Range: [−0.002·MAX_COMPLETION_CHARS, 4.0]; a completion over MAX_COMPLETION_CHARS gets 0.0 (not parsed).
"""

from __future__ import annotations

import re

from jaxllm.rewards.extract import split_answer_tag, too_long

_SOFT_RE = re.compile(r"<reasoning>.*?</reasoning>\s*<answer>.*?</answer>")
_STRICT_RE = re.compile(r"^<reasoning>\n.*?\n</reasoning>\n<answer>\n.*?\n</answer>\n$")


class _NextFinder:
    """Index of the next occurrence of `needle` at or after a non-decreasing sequence of positions (amortised
    linear in the text length)."""

    def __init__(self, text: str, needle: str):
        self.text, self.needle, self.at = text, needle, -1

    def __call__(self, pos: int) -> int:
        if self.at != len(self.text) and self.at < pos:
            found = self.text.find(self.needle, pos)
            self.at = len(self.text) if found < 0 else found
        return self.at


def soft_format_match(text: str) -> bool:
    """Exactly `re.match(r"<reasoning>.*?</reasoning>\\s*<answer>.*?</answer>", text)` (no DOTALL), in linear
    time: the regex backtracks quadratically on text like "<reasoning>" + "</reasoning><answer>" * n."""
    if not text.startswith("<reasoning>"):
        return False
    first_nl = text.find("\n", 11)
    limit = len(text) if first_nl < 0 else first_nl
    next_close, next_nl = _NextFinder(text, "</answer>"), _NextFinder(text, "\n")
    c = text.find("</reasoning>", 11)
    while 0 <= c and c + 12 <= limit:
        w = c + 12
        while w < len(text) and text[w].isspace():  # whitespace runs after distinct candidates are disjoint
            w += 1
        if text.startswith("<answer>", w) and next_close(w + 8) < next_nl(w + 8):
            return True
        c = text.find("</reasoning>", c + 1)
    return False


def extract_hash_answer(solution: str):
    """The GSM8K answer string: the text after `####`, stripped (None when absent)."""
    if "####" not in solution:
        return None
    return solution.split("####")[1].strip()


def xml_count(text: str) -> float:
    count = 0.0
    if text.count("<reasoning>\n") == 1:
        count += 0.125
    if text.count("\n</reasoning>\n") == 1:
        count += 0.125
    if text.count("\n<answer>\n") == 1:
        count += 0.125
        count -= len(text.split("\n<answer>\n")[-1]) * 0.001
    if text.count("\n</answer>") == 1:
        count += 0.125
        count -= (len(text.split("\n</answer>")[-1]) - 1) * 0.001
    return count


def gsm8k_reward_parts(completion: str, answer: str) -> dict[str, float]:
    if too_long(completion):
        return {"xmlcount": 0.0, "soft_format": 0.0, "strict_format": 0.0, "int": 0.0, "correct": 0.0}
    extracted = split_answer_tag(completion)
    return {
        "xmlcount": xml_count(completion),
        "soft_format": 0.5 if soft_format_match(completion) else 0.0,
        "strict_format": 0.5 if _STRICT_RE.match(completion) else 0.0,
        "int": 0.5 if extracted.isdigit() else 0.0,
        "correct": 2.0 if extracted == str(answer).strip() else 0.0,
    }


def gsm8k_reward(completion: str, answer: str) -> float:
    return float(sum(gsm8k_reward_parts(completion, answer).values()))
