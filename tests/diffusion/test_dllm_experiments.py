"""Smoke runs of the dLLM SFT experiments (slow tier): they train through the one trainer, sample, score."""

import json

import pytest

from jaxllm.config import apply_overrides


@pytest.mark.slow
@pytest.mark.parametrize("name", ["dllm_sudoku_sft", "dllm_countdown_sft"])
def test_experiment_runs_end_to_end(tmp_path, name):
    import importlib

    mod = importlib.import_module(f"experiments.{name}")
    cfg = apply_overrides(mod.Config(), [f"run_dir={tmp_path}", "trainer.steps=4", "trainer.log_every=2",
                                         "n_train=200", "n_test=16", "trainer.progress=false"])
    cfg = apply_overrides(cfg, ["settings=" + ("8:32:lc,8:32:random" if "sudoku" in name else "12:48:lc")])
    summary = mod.run(cfg)
    assert (tmp_path / "summary.json").exists() and (tmp_path / "plots" / "accuracy_vs_steps.png").exists()
    table = json.loads((tmp_path / "summary.json").read_text())["table"]
    assert len(table) == len(cfg.settings.split(",")) and summary["n_test"] == 16
    for row in table:
        acc = row.get("cell_accuracy", row.get("accuracy"))
        assert 0.0 <= acc <= 1.0
