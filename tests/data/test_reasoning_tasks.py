"""Sudoku / Countdown generators and the GSM8K / MATH loaders."""

import itertools
import json
import logging

import numpy as np
import pytest

from jaxllm.data.tasks import countdown, math_data, sudoku
from jaxllm.rewards import countdown_reward, sudoku_reward


def test_there_are_288_sudoku_grids_and_they_are_valid():
    g = sudoku.all_grids()
    assert g.shape == (288, 16) and len({sudoku.grid_str(x) for x in g}) == 288
    for unit in sudoku._UNITS:
        assert np.all(np.sort(g[:, unit], axis=1) == np.array([1, 2, 3, 4]))


def test_uniqueness_counts_match_enumeration():
    """Unique (solution, clue set) pairs with 4 and 5 clues: 25,728 and 284,160 (dllm_rl.md §5.6)."""
    agree = sudoku.agreement_masks()
    for k, want in ((4, 25728), (5, 284160)):
        masks = np.array([sum(1 << i for i in c) for c in itertools.combinations(range(16), k)], np.int64)
        total = 0
        for s in range(288):
            others = np.delete(agree[s], s).astype(np.int64)
            total += int(np.sum(np.all((masks[:, None] & ~others[None]) != 0, axis=1)))
        assert total == want


def test_puzzles_are_unique_and_split_is_solution_disjoint():
    split = sudoku.solution_split(seed=42)
    assert len(split.train_solutions) == 200 and len(split.test_solutions) == 88
    assert not set(split.train_solutions) & set(split.test_solutions)
    test = sudoku.generate_puzzles(1, split.test_solutions, 40, clue_range=(4, 9))
    train = sudoku.generate_puzzles(2, split.train_solutions, 40)
    grids = [sudoku.grid_str(g) for g in sudoku.all_grids()]
    test_sol = {grids[i] for i in split.test_solutions}
    for item in test:
        assert item.solution in test_sol and sudoku.count_solutions(item.puzzle) == 1
    assert not {t.solution for t in train} & test_sol
    assert not {t.puzzle for t in train + test} & set(sudoku.FEW_SHOT_PUZZLES)


def test_sudoku_solver_trace_solves_and_prompt_has_shots():
    for item in sudoku.generate_puzzles(3, range(288), 30, clue_range=(4, 8)):
        sol, lines = sudoku.solve_with_trace(item.puzzle)
        assert sol == item.solution and len(lines) == item.puzzle.count("0")
    ex = sudoku.worked_example(sudoku.FEW_SHOT_PUZZLES[0])
    assert sudoku_reward(ex, sudoku.FEW_SHOT_PUZZLES[0], "3214142323414132") == 1.0
    p = sudoku.sudoku_prompt("1000000000000000", few_shot=3)
    assert p.count("Question:") == 4 and p.endswith("Answer:\n")


@pytest.mark.parametrize("k", [3, 4])
def test_countdown_is_solvable_by_construction_and_solver_traces_score_one(k):
    items = countdown.generate(seed=k, n=30, num_count=k)
    for it in items:
        assert len(it.numbers) == k and 1 <= it.target <= 100
        assert countdown_reward(f"<answer>{it.expression}</answer>", it.numbers, it.target) == 1.0
        text = countdown.completion_text(it.numbers, it.target)
        assert countdown_reward(text, it.numbers, it.target) == 1.0
    assert countdown.solve([1, 1, 1], 100) is None


def test_loaders_skip_and_count_malformed_rows(tmp_path, caplog):
    p = tmp_path / "gsm.jsonl"
    rows = [json.dumps({"question": "1+1?", "answer": "so #### 2"}), "{not json", json.dumps([1]),
            json.dumps({"question": "x", "answer": "no hash"}), json.dumps({"question": 3, "answer": "#### 1"}),
            json.dumps({"question": "2+2?", "answer": "#### 4"})]
    p.write_text("\n".join(rows) + "\n")
    with caplog.at_level(logging.WARNING):
        rep = math_data.load_gsm8k(p)
    assert [x.answer for x in rep.problems] == ["2", "4"] and rep.skipped == 4
    assert "skipped 4 malformed rows" in caplog.text and "row 2" in caplog.text
    assert rep.problems[0].prompt.endswith("\n\n1+1?") and "<reasoning>" in rep.problems[0].prompt
    with pytest.raises(ValueError, match=r"gsm.jsonl: row 2: not JSON"):
        math_data.load_gsm8k(p, strict=True)
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        math_data.load_gsm8k(tmp_path / "nope.jsonl")


def test_math_parquet_loader(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    t = pa.table({"problem": ["What is 1/2+1/4?", "bad", "x"],
                  "solution": ["So $\\boxed{\\frac{3}{4}}$.", "no box", None]})
    pq.write_table(t, tmp_path / "m.parquet")
    rep = math_data.load_math(tmp_path / "m.parquet")
    assert rep.skipped == 2 and len(rep.problems) == 1
    assert math_data.extract_reference_answer(rep.problems[0]) == "\\frac{3}{4}"
    assert "\\boxed{}" in rep.problems[0].prompt
    with pytest.raises(ValueError, match="unsupported file type"):
        math_data.load_math(tmp_path / "m.csv") if (tmp_path / "m.csv").write_text("a") else None
