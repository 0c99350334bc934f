"""The rsparse_eval experiment end to end on a tiny, briefly trained decoder (slow tier)."""

import json

import pytest

from jaxllm.config import apply_overrides


@pytest.mark.slow
def test_rsparse_eval_runs_end_to_end(tmp_path):
    from experiments import rsparse_eval

    cfg = apply_overrides(rsparse_eval.Config(), [
        f"run_dir={tmp_path}", "model.d_model=32", "model.n_layers=1", "model.n_heads=2", "model.n_kv_heads=1",
        "model.d_ff=64", "model.max_seq_len=32", "train.seq_len=32", "train.batch_size=4", "train.trainer.steps=20",
        "sparsities=0.5", "calib_windows=2", "search_windows=2", "eval_windows=4", "search_generations=1",
        "search_population=3"])
    summary = rsparse_eval.run(cfg)
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    assert {r["method"] for r in rows} == set(rsparse_eval.METHOD_NAMES)
    assert all(r["ppl"] > 1.0 for r in rows) and summary["dense_ppl"] > 1.0
    assert (tmp_path / "plots" / "rsparse_ppl.png").exists()
    assert "R-Sparse uniform" in rsparse_eval.results_markdown(str(tmp_path))
