"""End-to-end run of experiments/coconut_reachability.py at toy size (slow tier): outputs, resume."""

import json

import pytest

from jaxllm.config import apply_overrides


@pytest.mark.slow
def test_experiment_writes_tables_plots_and_resumes(tmp_path):
    from experiments import coconut_reachability as exp

    cfg = apply_overrides(exp.Config(), [
        f"run_dir={tmp_path}", "modes=coconut,bfs_frontier,cot,nocot", "n_train=64", "n_test=32", "analysis_samples=16",
        "first_stage_steps=4", "steps_per_stage=2", "final_extra_steps=2", "d_model=32", "trainer.log_every=2"])
    summary = exp.run(cfg)
    for mode in ("coconut", "bfs_frontier", "cot", "nocot"):
        assert 0.0 <= summary[f"{mode}/test_acc"] <= 1.0
    assert "coconut/mu_c1_final" in summary and "bfs_frontier/mu_c1_final" in summary
    for name in ("layer1_attention_coconut", "inner_products_coconut", "coconut_vs_bfs_inner_products",
                 "mu_logit_over_training"):
        assert (tmp_path / "plots" / f"{name}.png").exists()
    assert "Table 1" in (tmp_path / "tables.md").read_text()
    again = exp.run(cfg)  # every stage restores its final checkpoint: same numbers, no retraining
    assert again == json.loads(json.dumps(summary))


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["nocot", "cot"])
def test_tiny_train_set_is_memorised(tmp_path, mode):
    """Sanity for label / position / mask alignment: 64 graphs are fit to 100 % through the experiment's own
    eval path (a misaligned label or answer slot would leave this near chance). ~30 s per mode on 1 core."""
    from experiments import coconut_reachability as exp
    from jaxllm.data.tasks import reachability as rd

    cfg = apply_overrides(exp.Config(), ["n_train=64", "n_test=64", "analysis_samples=16", "baseline_steps=600",
                                         "trainer.log_every=100"])
    train_set, _, _ = rd.split_problems(cfg.n_train, 0, 0, cfg.graphs, seed=0)
    fit = exp.train_cot if mode == "cot" else (lambda c, tr, te, d: exp.train_latent(c, "nocot", tr, te, d))
    _, rows = fit(cfg, train_set, train_set, tmp_path)  # "test" = the training graphs themselves
    assert rows[-1]["eval/test_acc"] >= 0.95, rows[-1]
