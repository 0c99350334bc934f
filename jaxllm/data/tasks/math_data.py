"""GSM8K / MATH-style problems from local jsonl or parquet files (no network), with the reference prompts.

`load_gsm8k(path)`: rows with `question` and `answer` (the GSM8K solution ending in `#### <answer>`).
`load_math(path)`: rows with `problem` and `solution` (a `\\boxed{}` answer inside), or `answer`.
A malformed row (not JSON, not an object, a missing or non-string field, no `####` / no answer) is skipped,
counted, and reported in one log line naming the file and the first bad rows; `strict=True` raises
`ValueError` naming the file, the row number and what is wrong instead.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import NamedTuple, Optional

from jaxllm.rewards.extract import last_boxed_content
from jaxllm.rewards.gsm8k import extract_hash_answer

log = logging.getLogger(__name__)

# d1 / SPG `SYSTEM_PROMPT` (training); the user turn is SYSTEM_PROMPT + "\n\n" + question.
SYSTEM_PROMPT = """
Respond in the following format:
<reasoning>
...
</reasoning>
<answer>
...
</answer>
"""
MATH_INSTRUCTION = ("You are a math expert. You will be given a question to solve. Solve it step by step. "
                    "Wrap the final answer in a \\boxed{}. ")


class Problem(NamedTuple):
    prompt: str  # the user turn (chat template not applied)
    question: str
    answer: str  # GSM8K: the `####` string; MATH: the reference solution (its last \boxed{} is the answer)


class LoadReport(NamedTuple):
    problems: list
    skipped: int
    errors: list  # (row number, reason) for the first few skipped rows


def gsm8k_prompt(question: str) -> str:
    return SYSTEM_PROMPT + "\n\n" + question


def math_prompt(problem: str) -> str:
    return f"{SYSTEM_PROMPT}\n\n{MATH_INSTRUCTION}\n\n{problem}"


def _rows(path: Path):
    """(row number, row or exception) for jsonl / json-lines or parquet files."""
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json"):
        with path.open("r", encoding="utf-8", errors="replace") as f:
            for i, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    yield i, json.loads(line)
                except json.JSONDecodeError as e:
                    yield i, ValueError(f"not JSON ({e.msg})")
    elif suffix == ".parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        for i, row in enumerate(table.to_pylist(), 1):
            yield i, row
    else:
        raise ValueError(f"{path}: unsupported file type {suffix!r}; expected .jsonl, .json or .parquet")


def _load(path, strict: bool, make) -> LoadReport:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"dataset file {path} does not exist")
    problems, errors, skipped = [], [], 0
    for i, row in _rows(path):
        if not isinstance(row, Exception) and not isinstance(row, dict):
            row = ValueError(f"a row must be a JSON object, got {type(row).__name__}")
        try:
            if isinstance(row, Exception):
                raise row
            problems.append(make(row))
        except ValueError as e:
            if strict:
                raise ValueError(f"{path}: row {i}: {e}") from None
            skipped += 1
            if len(errors) < 5:
                errors.append((i, str(e)))
    if skipped:
        log.warning("%s: skipped %d malformed rows of %d (first: %s)", path, skipped, skipped + len(problems),
                    "; ".join(f"row {i}: {m}" for i, m in errors))
    return LoadReport(problems, skipped, errors)


def _field(row: dict, name: str) -> str:
    v = row.get(name)
    if not isinstance(v, str) or not v.strip():
        raise ValueError(f"field {name!r} missing or not a non-empty string")
    return v


def load_gsm8k(path, strict: bool = False) -> LoadReport:
    def make(row):
        q, a = _field(row, "question"), _field(row, "answer")
        ans = extract_hash_answer(a)
        if not ans:
            raise ValueError("field 'answer' has no '#### <answer>'")
        return Problem(gsm8k_prompt(q), q, ans)

    return _load(path, strict, make)


def load_math(path, strict: bool = False) -> LoadReport:
    def make(row):
        q = _field(row, "problem")
        if isinstance(row.get("solution"), str) and last_boxed_content(row["solution"]) is not None:
            a = row["solution"]
        elif isinstance(row.get("answer"), str) and row["answer"].strip():
            a = row["answer"]
        else:
            raise ValueError("no 'solution' with a \\boxed{} answer and no 'answer' field")
        return Problem(math_prompt(q), q, a)

    return _load(path, strict, make)


def extract_reference_answer(problem: Problem) -> Optional[str]:
    """The short answer of a MATH reference solution (its last \\boxed{}), else the answer as given."""
    return last_boxed_content(problem.answer) or problem.answer
