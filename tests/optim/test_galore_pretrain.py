"""The galore_pretrain experiment runs end to end (tiny, few steps) and writes its summary and plot."""

import json

import pytest

from jaxllm.config import ConfigError


@pytest.mark.slow
def test_galore_pretrain_smoke(tmp_path):
    from experiments import galore_pretrain as gp

    cfg = gp.Config(d_model=32, n_layers=1, n_heads=2, d_ff=64, seq_len=32, batch_size=4, steps=6,
                    docs_per_source=40, eval_docs_per_source=5, rank=4, update_proj_gap=2, ablations=False,
                    run_dir=str(tmp_path))
    summary = gp.run(cfg)
    for name in ("adamw", "galore_svd", "galore2_randomized", "muon"):
        assert summary[f"{name}/eval_loss"] > 0
    assert summary["galore_svd/opt_state_bytes"] < summary["adamw/opt_state_bytes"]
    assert json.loads((tmp_path / "summary.json").read_text())["steps"] == 6
    assert (tmp_path / "plots" / "loss_curves.png").exists()


def test_galore_pretrain_config_rejects_bad_rank():
    from experiments import galore_pretrain as gp

    with pytest.raises(ConfigError, match="rank"):
        gp.Config(rank=1000)
