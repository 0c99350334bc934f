"""Sudoku 4×4 reward (d1 / SPG `sudoku_reward_func`): the fraction of the puzzle's empty cells that the
digits inside the last `<answer>…</answer>` fill correctly (padded with '0' / truncated to 16). Range [0, 1];
0.0 with no answer tag, an empty answer, a puzzle without empty cells, or an over-long completion.
"""

from __future__ import annotations

from jaxllm.rewards.extract import last_answer_tag


def extract_sudoku_digits(completion: str):
    ans = last_answer_tag(completion)
    if ans is None:
        return None
    return "".join(c for c in ans if c.isdigit())  # str.isdigit, as the reference (other scripts count too)


def sudoku_reward(completion: str, puzzle: str, solution: str) -> float:
    if len(puzzle) != 16 or len(solution) != 16:
        raise ValueError(f"puzzle and solution must be 16-character strings, got {puzzle!r}, {solution!r}")
    digits = extract_sudoku_digits(completion)
    if not digits:
        return 0.0
    digits = (digits + "0" * 16)[:16]
    empty = [i for i in range(16) if puzzle[i] == "0"]
    if not empty:
        return 0.0
    return sum(digits[i] == solution[i] for i in empty) / len(empty)


def sudoku_cell_accuracy(completions, puzzles, solutions) -> float:
    """SPG's reported Sudoku metric: correct empty cells / all empty cells over the set (a micro-average)."""
    correct = total = 0
    for c, p, s in zip(completions, puzzles, solutions):
        n = p.count("0")
        correct += round(sudoku_reward(c, p, s) * n)
        total += n
    return correct / max(total, 1)
