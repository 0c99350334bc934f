"""The galore_pretrain experiment runs end to end (tiny) and every optimizer it compares trains the model; it
writes its summary and plot."""

import json
import math

import pytest

from jaxllm.config import ConfigError, apply_overrides


@pytest.mark.slow
def test_galore_pretrain_smoke(tmp_path):
    """Each optimizer (AdamW, GaLore SVD, GaLore 2 randomized, Muon) takes the held-out loss at least 0.5 nats
    below ln V, the loss of the uniform predictor (≈ the loss at init, whose logits are near zero), in 30 steps
    (measured: 3.60-3.65 vs ln 100 = 4.61); an optimizer that does not move the weights stays at ≈ ln V and
    fails. GaLore's optimizer state is smaller than AdamW's. ~4 min on 2 loaded cores."""
    from experiments import galore_pretrain as gp
    from jaxllm.data.tokenizers import CharTokenizer

    cfg = apply_overrides(gp.Config(), [
        "model.d_model=32", "model.n_layers=1", "model.n_heads=2", "model.d_ff=64", "model.max_seq_len=32",
        "seq_len=32", "batch_size=4", "steps=30", "docs_per_source=40", "eval_docs_per_source=5", "galore.rank=4",
        "galore.update_proj_gap=2", "ablations=false", f"run_dir={tmp_path}"])
    summary = gp.run(cfg)
    uniform = math.log(CharTokenizer().vocab_size)
    for name in ("adamw", "galore_svd", "galore2_randomized", "muon"):
        assert summary[f"{name}/eval_loss"] < uniform - 0.5, (name, summary[f"{name}/eval_loss"], uniform)
    assert summary["galore_svd/opt_state_bytes"] < summary["adamw/opt_state_bytes"]
    assert json.loads((tmp_path / "summary.json").read_text())["steps"] == 30
    assert (tmp_path / "plots" / "loss_curves.png").exists()


def test_galore_pretrain_config_rejects_bad_rank_and_keeps_todays_runs():
    """Each run's optimizer is its own config; the defaults are the runs the documented figures come from."""
    import dataclasses

    from experiments import galore_pretrain as gp
    from jaxllm.optim import build

    with pytest.raises(ConfigError, match="galore.rank"):
        apply_overrides(gp.Config(), ["galore.rank=1000"])
    runs = gp.runs(apply_overrides(gp.Config(), ["ablations=false"]))
    shared = dict(learning_rate=3e-3, schedule="cosine", warmup_fraction=0.1, min_lr_ratio=0.1, weight_decay=0.0)
    galore = build.GaLoreAdamWConfig(**shared, galore_learning_rate=1e-2, scale=0.25, rank=32, update_proj_gap=50)
    assert runs == {"adamw": build.AdamWConfig(**shared), "galore_svd": galore,
                    "galore2_randomized": dataclasses.replace(galore, projector="randomized"),
                    "muon": build.MuonConfig(**shared, muon_learning_rate=0.02)}
    assert galore.eps == 1e-6 and runs["adamw"].eps == runs["muon"].eps == 1e-8 and runs["muon"].beta == 0.95
