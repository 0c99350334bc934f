"""compose_sudoku_table: each row switches on exactly its parts over the baseline, rows of one optimizer family and
seed share one SFT (and are charged its seconds), finished rows are read back, and the paired differences and
sums of parts are the arithmetic the table claims. The real runs are `compose_sudoku`'s (tested in
test_compose.py); here `compose_sudoku.run` is replaced by a recorder, so the file runs in a second."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from experiments import compose_sudoku as cs
from experiments import compose_sudoku_table as ct
from jaxllm.config import ConfigError, apply_overrides
from jaxllm.train import prepare_run_dir


def switched(c: cs.Config) -> set[str]:
    out = set()
    out |= {"optimizer"} if c.optimizer != "adamw" else set()
    out |= {"rl"} if c.rl.loss != "none" else set()
    out |= {"serve"} if c.serve.method != "dense" or c.serve.sparsity else set()
    out |= {"vote"} if c.vote.method != "majority" else set()
    return out


def test_each_row_switches_on_exactly_its_parts_and_seeds_set_both_phases():
    t = apply_overrides(ct.Config(), ["optimizer=muon", "rl=d1", "serve=teal", "sparsity=0.4", "vote=deepconf_high"])
    for row, parts in ct.ROW_PARTS.items():
        c = t.row_config(row, 7, "/x")
        assert switched(c) == set(parts), row
        assert c.seed == c.sft.seed == 7 and c.run_dir == "/x"
    c = t.row_config("all", 1, "")
    assert (c.optimizer, c.rl.loss, c.serve.method, c.serve.sparsity, c.vote.method) == (
        "muon", "d1", "teal", 0.4, "deepconf_high")
    # the base's other settings reach every row
    t = apply_overrides(ct.Config(), ["base.vote.traces=16", "base.sft.trainer.steps=50"])
    assert all(t.row_config(r, 0, "").vote.traces == 16 and t.row_config(r, 0, "").sft.trainer.steps == 50
               for r in ct.ROW_PARTS)


@pytest.mark.parametrize("bad, says", [(["rows=baseline,galore"], "unknown"), (["seeds=a"], "integers"),
                                       (["optimizer=adamw"], "baseline"), (["vote=majority"], "baseline"),
                                       (["base.optimizer=muon"], "base must be"), (["sparsity=1.5"], "sparsity")])
def test_bad_tables_are_clear_errors(bad, says):
    with pytest.raises(ConfigError, match=says):
        apply_overrides(ct.Config(), bad)


def fake_summary(c: cs.Config) -> dict:
    """A compose_sudoku summary whose figures are a known function of the switches and the seed."""
    parts = switched(c)
    acc = 0.5 + 0.01 * c.seed + 0.1 * ("rl" in parts) - 0.05 * ("optimizer" in parts) - 0.02 * ("serve" in parts) \
        + 0.03 * ("vote" in parts) - 0.04 * ({"serve", "vote"} <= parts)  # an interaction: serve x vote
    return {"heldout_acc": acc, "heldout_acc_single": acc - 0.1, "heldout_acc_majority": acc - 0.03 * ("vote" in parts),
            "tokens_generated": 1000, "optimizer_state_bytes": 4096 if "optimizer" in parts else 10240,
            "serve_seconds_per_problem": 0.2 if "serve" in parts else 0.1,
            "sft_seconds": 0.0 if c.init_from else 100.0 + c.seed, "rl_seconds": 30.0 if "rl" in parts else 0.0,
            "sft_dir": c.init_from or f"{c.run_dir}/sft_run",
            "parts_active": {"optimizer": c.optimizer, "rl": c.rl.loss, "serve": c.serve.method, "vote": c.vote.method}}


@pytest.fixture
def recorder(monkeypatch):
    calls = []

    def run(c: cs.Config):
        calls.append(c)
        prepare_run_dir(c.run_dir, c)
        s = fake_summary(c)
        (Path(c.run_dir) / "summary.json").write_text(json.dumps(s))
        return s

    monkeypatch.setattr(cs, "run", run)
    return calls


def test_rows_share_their_sft_and_are_charged_for_it_and_finished_rows_are_read_back(tmp_path, recorder):
    t = apply_overrides(ct.Config(), [f"run_dir={tmp_path}", "seeds=0,1"])
    results = ct.run_rows(t, log=lambda *_: None)
    assert len(recorder) == 2 * len(ct.ROW_PARTS)
    for seed in (0, 1):
        own = {c.optimizer: c for c in recorder if c.seed == seed and not c.init_from}
        assert set(own) == {"adamw", "galore2"}  # one SFT per family and seed, trained by a row without RL
        assert all(c.rl.loss == "none" for c in own.values())
        for c in recorder:
            if c.seed == seed and c.init_from:
                assert c.init_from == f"{own[c.optimizer].run_dir}/sft_run"
        for row, per_seed in results.items():
            assert per_seed[seed]["train_seconds"] == 100.0 + seed + (30.0 if "rl" in ct.ROW_PARTS[row] else 0.0)
    recorder.clear()
    again = ct.run_rows(t, log=lambda *_: None)
    assert recorder == [] and again == results


def test_paired_differences_and_the_sum_of_parts(tmp_path, recorder):
    t = apply_overrides(ct.Config(), [f"run_dir={tmp_path}", "seeds=0,1,2"])
    text, figures = ct.table(t, ct.run_rows(t, log=lambda *_: None))
    paired = figures["paired"]
    assert paired["rl"]["d_acc"]["mean"] == pytest.approx(0.1)
    assert paired["galore2"]["d_state_kib"]["mean"] == pytest.approx(-6.0)
    assert paired["sparse"]["serve_ratio"]["mean"] == pytest.approx(2.0)
    # serve x vote interact (-0.04): the pair is worse than the sum of its parts by exactly that
    assert paired["sparse+deepconf"]["d_acc"]["mean"] == pytest.approx(-0.02 + 0.03 - 0.04)
    assert paired["sparse+deepconf"]["d_acc_parts_sum"]["mean"] == pytest.approx(-0.02 + 0.03)
    assert paired["all"]["d_acc_parts_sum"]["mean"] == pytest.approx(0.1 - 0.05 - 0.02 + 0.03)
    assert paired["rl"]["d_acc_parts_sum"] is None
    assert figures["stats"]["baseline"]["heldout_acc"] == {"mean": pytest.approx(0.51), "min": pytest.approx(0.5),
                                                          "max": pytest.approx(0.52), "n": 3}
    assert "| all | optimizer=galore2, rl=spg_mix, serve=rsparse, vote=deepconf_low |" in text


def test_parts_active_counts_the_seeds_where_a_part_ran():
    runs = {0: {"parts_active": {"optimizer": "adamw", "rl": "spg_mix", "serve": "dense", "vote": "deepconf_low"}},
            1: {"parts_active": {"optimizer": "adamw", "rl": "none", "serve": "dense", "vote": "deepconf_low"}}}
    assert ct.active_parts(runs, [0, 1]) == "rl=spg_mix (1/2 seeds), vote=deepconf_low"
    assert ct.active_parts({0: {"parts_active": {"optimizer": "adamw"}}}, [0]) == "—"
