"""Smoke runs of the MobileLLM-R1 experiments at toy sizes (slow tier)."""

import pytest

from experiments import _registry as registry
from jaxllm.config import apply_overrides


@pytest.mark.slow
def test_tiny_pretrain_lowers_held_out_loss(tmp_path):
    mod = registry.load("mobilellm_tiny_pretrain")
    cfg = apply_overrides(mod.Config(), [f"run_dir={tmp_path}", "trainer.steps=40", "trainer.eval_every=20",
                                         "docs_per_source=300", "model.d_model=32", "model.n_layers=1",
                                         "model.d_ff=64", "seq_len=48", "accuracy_problems=4",
                                         "optim.learning_rate=1e-2"])
    s = mod.run(cfg)
    assert s["held_out_loss_ratio"] < 0.75, s
    assert (tmp_path / "plots" / "loss.png").exists() and (tmp_path / "summary.md").exists()


@pytest.mark.slow
def test_data_mixture_pipeline_runs_end_to_end(tmp_path):
    mod = registry.load("mobilellm_data_mixture")
    cfg = apply_overrides(mod.Config(), [f"run_dir={tmp_path}", "steps=8", "seeds=1", "docs_per_source=100",
                                         "probe_docs_per_source=10", "model.d_model=32", "model.n_layers=1",
                                         "model.d_ff=64", "accuracy_problems=2", "floor=0.1"])
    s = mod.run(cfg)
    assert abs(sum(v for k, v in s.items() if k.startswith("weight/")) - 1.0) < 1e-3
    assert {f"delta_L/{n}" for n in cfg.source_names} <= set(s)
    assert {f"delta_L/copy/{n}" for n in cfg.source_names} <= set(s)
    again = mod.run(cfg)  # finished sub-runs are reused
    assert again["test_loss_remix"] == s["test_loss_remix"]
