"""4×4 Sudoku, generated locally: all 288 solution grids, puzzles with a unique solution, SPG's
solution-disjoint train/test split, a solver that writes reasoning traces, and the reference prompt format.

A grid is a 16-character string read left-to-right, top-to-bottom, digits 1–4; a puzzle has '0' for empty
cells. Uniqueness (dllm_rl.md §5.6): with `agree[s, s']` the 16-bit set of cells where solutions s and s'
agree, a clue set M is unique for s iff M ⊄ agree[s, s'] for every s' ≠ s.
"""

from __future__ import annotations

import itertools
from functools import lru_cache
from typing import NamedTuple, Sequence

import numpy as np

from jaxllm.config import ConfigError

# The reference's system prompt (SPG data_utils.py `SUDOKU_SYSTEM_PROMPT`).
SUDOKU_SYSTEM_PROMPT = """
Please solve the following 4x4 Sudoku puzzle. The puzzle is provided as a 16-character string reading left-to-right, top-to-bottom, where '0' represents empty cells.

Rules:
- Fill empty cells with digits 1-4
- Each row must contain digits 1-4 exactly once
- Each column must contain digits 1-4 exactly once
- Each 2x2 box must contain digits 1-4 exactly once

Important: Your solution must be a COMPLETE 16-character string with only the digits 1-4, representing your final solved grid.

Respond in this exact format:
<reasoning>
Your step-by-step solving process
</reasoning>
<answer>
[16-character solution string with no spaces or separators]
</answer>
"""

# The puzzles of the reference's three few-shot examples; their reasoning is written by `solve_with_trace`
# (the reference's hand-written texts differ in wording).
FEW_SHOT_PUZZLES = ("3014002020004130", "0000100420013142", "2001403002001420")

_UNITS = ([[4 * r + c for c in range(4)] for r in range(4)] + [[4 * r + c for r in range(4)] for c in range(4)]
          + [[4 * (br + r) + bc + c for r in range(2) for c in range(2)] for br in (0, 2) for bc in (0, 2)])


@lru_cache(maxsize=None)
def all_grids() -> np.ndarray:
    """The 288 valid 4×4 grids, [288, 16] int8 digits 1–4, in lexicographic order."""
    rows = list(itertools.permutations((1, 2, 3, 4)))
    out = []
    for grid in itertools.product(rows, repeat=4):
        flat = [d for row in grid for d in row]
        if all(len({flat[i] for i in unit}) == 4 for unit in _UNITS):
            out.append(flat)
    return np.array(out, np.int8)


def grid_str(cells) -> str:
    return "".join(str(int(d)) for d in cells)


@lru_cache(maxsize=None)
def agreement_masks() -> np.ndarray:
    """[288, 288] int32: bit i set where the two solutions agree on cell i."""
    g = all_grids()
    eq = g[:, None, :] == g[None, :, :]
    return (eq.astype(np.int64) << np.arange(16)).sum(-1).astype(np.int32)


def is_unique(solution_index: int, clue_bits: int) -> bool:
    agree = agreement_masks()[solution_index]
    others = np.delete(agree, solution_index)
    return bool(np.all((clue_bits & ~others) != 0))


def count_solutions(puzzle: str, limit: int = 2) -> int:
    """Number of grids consistent with the puzzle's clues (up to `limit`)."""
    g = all_grids()
    p = np.array([int(c) for c in puzzle])
    ok = np.all((p[None] == 0) | (g == p[None]), axis=1)
    return int(min(ok.sum(), limit))


class SudokuItem(NamedTuple):
    puzzle: str
    solution: str


def make_puzzle(rng: np.random.Generator, solution_index: int, n_clues: int, max_tries: int = 10_000) -> SudokuItem:
    """A puzzle with exactly `n_clues` clues and a unique solution (rejection sampling over clue sets)."""
    if not 4 <= n_clues <= 16:
        raise ConfigError(f"n_clues={n_clues} must lie in [4, 16] (4×4 Sudoku needs at least 4 clues)")
    sol = all_grids()[solution_index]
    for _ in range(max_tries):
        cells = rng.choice(16, size=n_clues, replace=False)
        bits = int(np.sum(1 << cells.astype(np.int64)))
        if is_unique(solution_index, bits):
            puzzle = "".join(str(sol[i]) if (bits >> i) & 1 else "0" for i in range(16))
            return SudokuItem(puzzle, grid_str(sol))
    raise RuntimeError(f"no unique {n_clues}-clue puzzle found for solution {solution_index} in {max_tries} tries")


class SudokuSplit(NamedTuple):
    train_solutions: np.ndarray  # indices into all_grids()
    test_solutions: np.ndarray


def solution_split(seed: int = 42, n_train: int = 200) -> SudokuSplit:
    """SPG's solution-disjoint split: `n_train` solutions for training (the few-shot solutions forced in),
    the others (88 by default) for test, so no test grid is ever seen in training."""
    if not 3 <= n_train < 288:
        raise ConfigError(f"n_train={n_train} must lie in [3, 288)")
    grids = [grid_str(g) for g in all_grids()]
    forced = sorted({grids.index(solve(p)) for p in FEW_SHOT_PUZZLES})
    rest = np.array([i for i in range(288) if i not in forced])
    rng = np.random.default_rng(seed)
    rng.shuffle(rest)
    train = np.sort(np.concatenate([forced, rest[: n_train - len(forced)]]))
    test = np.sort(rest[n_train - len(forced):])
    return SudokuSplit(train, test)


def generate_puzzles(seed: int, solutions: Sequence[int], n: int, clue_range=(5, 10),
                     exclude: Sequence[str] = FEW_SHOT_PUZZLES) -> list[SudokuItem]:
    """n unique-solution puzzles over the given solutions (round robin), clue counts uniform in clue_range."""
    rng = np.random.default_rng(seed)
    lo, hi = clue_range
    out, seen = [], set(exclude)
    order = np.array(solutions)
    i = 0
    while len(out) < n:
        if i % len(order) == 0:
            rng.shuffle(order)
        item = make_puzzle(rng, int(order[i % len(order)]), int(rng.integers(lo, hi + 1)))
        i += 1
        if item.puzzle not in seen:
            seen.add(item.puzzle)
            out.append(item)
    return out


# ------------------------------------------------------------------------------------------------------------
# A solver that explains itself (naked and hidden singles; a guess only if those stall).


def _candidates(cells: list[int]) -> list[set]:
    cand = []
    for i in range(16):
        if cells[i]:
            cand.append(set())
            continue
        used = {cells[j] for unit in _UNITS if i in unit for j in unit}
        cand.append({1, 2, 3, 4} - used)
    return cand


def solve_with_trace(puzzle: str) -> tuple[str, list[str]]:
    """(solution, reasoning lines) for a puzzle with a unique solution."""
    if len(puzzle) != 16 or any(c not in "01234" for c in puzzle):
        raise ValueError(f"puzzle must be 16 characters of 0-4, got {puzzle!r}")
    cells = [int(c) for c in puzzle]
    lines = []
    while 0 in cells:
        cand = _candidates(cells)
        move = None
        for i in range(16):
            if not cells[i] and len(cand[i]) == 1:
                move = (i, next(iter(cand[i])), "only candidate")
                break
        if move is None:
            for u, unit in enumerate(_UNITS):
                for d in (1, 2, 3, 4):
                    spots = [i for i in unit if d in cand[i]]
                    if len(spots) == 1:
                        kind = ("row", "column", "box")[u // 4]
                        move = (spots[0], d, f"only place for {d} in its {kind}")
                        break
                if move:
                    break
        if move is None:  # no single: take the grid's value (a unique puzzle has exactly one solution)
            sol = solve(puzzle)
            i = cells.index(0)
            move = (i, int(sol[i]), "by elimination of the alternatives")
        i, d, why = move
        cells[i] = d
        lines.append(f"R{i // 4 + 1}C{i % 4 + 1}={d} ({why})")
    return grid_str(cells), lines


def solve(puzzle: str) -> str:
    g = all_grids()
    p = np.array([int(c) for c in puzzle])
    ok = np.flatnonzero(np.all((p[None] == 0) | (g == p[None]), axis=1))
    if len(ok) != 1:
        raise ValueError(f"puzzle {puzzle!r} has {len(ok)} solutions, expected exactly 1")
    return grid_str(g[ok[0]])


def worked_example(puzzle: str) -> str:
    """One few-shot example in the reference's layout: Question / Answer / reasoning / answer tags."""
    solution, lines = solve_with_trace(puzzle)
    rows = "\n".join(f"R{r + 1}: " + " ".join(puzzle[4 * r: 4 * r + 4]) for r in range(4))
    final = "\n".join(f"R{r + 1}: " + " ".join(solution[4 * r: 4 * r + 4]) for r in range(4))
    return (f"Question:\nSolve the following Sudoku puzzle: {puzzle}\nAnswer:\n<reasoning>\n"
            f"Interpret puzzle as 4 rows of 4:\n{rows}\n\n" + "\n".join(lines)
            + f"\n\nFinal grid:\n{final}\n</reasoning>\n<answer>\n{solution}\n</answer>")


def sudoku_prompt(puzzle: str, few_shot: int = 3) -> str:
    """The user turn of SPG's Sudoku prompt (`get_sudoku_questions_new`): system prompt, k worked examples,
    then the question. The chat template is applied by the tokenizer's owner."""
    if not 0 <= few_shot <= 3:
        raise ConfigError(f"few_shot={few_shot} must lie in [0, 3]")
    shots = "\n\n".join(worked_example(p) for p in FEW_SHOT_PUZZLES[:few_shot])
    return f"{SUDOKU_SYSTEM_PROMPT}\n\n{shots}\n\nQuestion: Solve the following Sudoku puzzle: {puzzle}\nAnswer:\n"
