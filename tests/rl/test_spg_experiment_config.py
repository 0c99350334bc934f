"""The spg_* experiments' config: `loss=` is one spelling of the one setting `rl.loss` (an alias, not a second
field), and the shared checks of experiments/_spg.py reject bad values with a clear error."""

from __future__ import annotations

import dataclasses

import pytest

from experiments import spg_countdown, spg_sudoku
from jaxllm.config import ConfigError, apply_overrides

EXPERIMENTS = [spg_sudoku, spg_countdown]


@pytest.mark.parametrize("exp", EXPERIMENTS, ids=lambda m: m.__name__.split(".")[-1])
def test_loss_is_an_alias_of_rl_loss(exp):
    """`loss=d1` and `rl.loss=d1` give the same config; there is no separate top-level loss field."""
    assert "loss" not in {f.name for f in dataclasses.fields(exp.Config)}
    a = apply_overrides(exp.Config(), ["loss=d1"])
    b = apply_overrides(exp.Config(), ["rl.loss=d1"])
    assert a == b and a.rl.loss == "d1"
    assert exp.Config().rl.loss == "spg_mix"


@pytest.mark.parametrize("exp", EXPERIMENTS, ids=lambda m: m.__name__.split(".")[-1])
def test_both_spellings_at_once_and_bad_values_are_clear_errors(exp):
    """Giving loss= and rl.loss= together, an unknown loss, or a masking block that does not divide the
    generation each raise a ConfigError naming the key."""
    with pytest.raises(ConfigError, match="given twice"):
        apply_overrides(exp.Config(), ["loss=d1", "rl.loss=wd1"])
    with pytest.raises(ConfigError, match="loss"):
        apply_overrides(exp.Config(), ["loss=ppo"])
    with pytest.raises(ConfigError, match="block_length"):
        apply_overrides(exp.Config(), ["rl.block_length=5"])


def test_ones_diagnostic_reward_counts_empty_cells_answered_one():
    """spg_sudoku's diagnostic `reward=ones`: the share of the puzzle's empty cells whose answer digit is '1'
    (clue cells ignored; 0 without an answer tag), and an unknown reward name is a clear error."""
    puzzle = "1030" + "0" * 12  # 14 empty cells
    sol = "1234341221434321"
    answer = "<answer>\n" + "1111" + "2" * 12 + "\n</answer>"
    assert spg_sudoku.ones_reward(answer, puzzle, sol) == pytest.approx(2 / 14)  # cells 1, 3 (not the clues 0, 2)
    assert spg_sudoku.ones_reward("1111", puzzle, sol) == 0.0
    with pytest.raises(ConfigError, match="reward"):
        apply_overrides(spg_sudoku.Config(), ["reward=cells"])
