"""Every experiment of `make list` runs through the CLI (`python -m experiments NAME key=value ...`, a fresh
process) for a few steps at toy sizes, writing its summary; the default tier checks that no experiment is
missing from the list below (a new experiment must say how to run it small) and that the overrides are valid."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from experiments import _registry as registry
from jaxllm.config import apply_overrides
from tests.subprocess_util import ROOT

TINY_DECODER = ["model.d_model=32", "model.n_layers=1", "model.n_heads=2", "model.d_ff=64"]
TINY_DLLM = ["sft.trainer.steps=4", "sft.n_train=64", "sft.n_test=8", "rl_run.iterations=1", "rl_run.n_prompts=8"]

# experiment -> overrides for a run of seconds to a minute (the same sizes as the experiments' own tests).
SMALL = {
    "li2_grokking": ["modulus=11", "hidden=32", "steps=20", "trainer.log_every=10"],
    "li2_phase_diagram": ["moduli=11", "seeds=1", "steps=20", "eval_every=10", "train_fractions=0.5", "hidden=32"],
    "mobilellm_tiny_pretrain": TINY_DECODER + ["trainer.steps=4", "docs_per_source=60", "seq_len=48",
                                               "accuracy_problems=2", "eval_docs_per_source=5"],
    "mobilellm_data_mixture": TINY_DECODER + ["steps=4", "docs_per_source=60", "probe_docs_per_source=5",
                                              "seq_len=48", "seeds=1", "accuracy_problems=2"],
    "galore_pretrain": TINY_DECODER + ["model.max_seq_len=32", "seq_len=32", "batch_size=4", "steps=4",
                                       "docs_per_source=40", "eval_docs_per_source=5", "galore.rank=4",
                                       "galore.update_proj_gap=2", "ablations=false"],
    "rsparse_eval": TINY_DECODER + ["model.n_kv_heads=1", "model.max_seq_len=32", "train.seq_len=32",
                                    "train.batch_size=4", "train.trainer.steps=4", "sparsities=0.5",
                                    "calib_windows=2", "search_windows=2", "eval_windows=2", "search_generations=1",
                                    "search_population=3", "window_seeds=0"],
    "compose_sudoku": TINY_DLLM + ["rl_run.prompts_per_batch=2", "optimizer=galore2", "serve.method=rsparse",
                                   "serve.sparsity=0.5", "serve.calib_prompts=8", "vote=deepconf_low", "vote.traces=4"],
    "compose_sudoku_table": ["seeds=0", "rows=baseline,all"] + [f"base.{o}" for o in TINY_DLLM] + [
        "base.rl_run.prompts_per_batch=2", "base.serve.calib_prompts=8", "base.vote.traces=4"],
    "dllm_sudoku_sft": ["trainer.steps=4", "n_train=64", "n_test=8", "settings=8:32:lc"],
    "dllm_countdown_sft": ["trainer.steps=4", "n_train=64", "n_test=8", "settings=12:48:lc"],
    "coconut_reachability": ["modes=coconut,cot", "n_train=64", "n_test=16", "analysis_samples=8",
                             "first_stage_steps=4", "steps_per_stage=2", "final_extra_steps=2", "d_model=32",
                             "batch_size=16", "trainer.eval_every=0"],
    "deepconf_arith": ["modulus=11", "chain_steps=2", "ops=+", "max_operand=3", "d_model=32", "d_ff=64",
                       "n_heads=2", "problems=2", "pool=8", "slots=8", "budgets=4", "repeats=2", "warmup=4",
                       "window=2", "tail=2", "k=10", "trainer.steps=20", "stage_steps=20",
                       "trainer.checkpoint_every=20", "target_pass_at_1=1.0", "online_check_problems=1",
                       "online_check_slots=4", "train_chains=200"],
    "igpo_countdown": TINY_DLLM + ["sft.settings=12:48:lc", "rl_run.sample_steps=12", "rl_run.eval_steps=12",
                                   "rl_run.prompts_per_batch=2"],
    "igpo_countdown_hard": TINY_DLLM + ["sft.settings=12:48:lc", "rl_run.sample_steps=12", "rl_run.eval_steps=12",
                                        "rl_run.prompts_per_batch=2"],
    "lsp_arith": ["pretrain_steps=20", "pretrain_examples=200", "iterations=2", "grpo_queries=16",
                  "heldout_per_bucket=4", "lsp.n_queries=2", "lsp.group_size=2", "sample_every=1",
                  "d_model=32", "d_ff=64", "n_heads=2", "max_ops=2"],
    "spg_sudoku": TINY_DLLM + ["sft.settings=8:32:lc"],
    "spg_countdown": TINY_DLLM + ["sft.settings=12:48:lc"],
    "smollm_chat": ["max_new_tokens=4"],
    "smollm_deepconf": ["categories=1*1", "questions_per_category=1", "pool=4", "slots=4", "budgets=4", "warmup=2",
                        "repeats=2", "max_new_tokens=8", "window=2", "tail=2", "online_check_problems=1",
                        "online_check_slots=2"],
    "smollm_rsparse": ["sparsities=0.5", "alpha_grid=1.0", "calib_windows=1", "search_windows=1", "eval_windows=1"],
    "smollm_galore": ["steps=2", "train_pairs=8", "eval_pairs=2", "answer_pairs=1", "max_new_tokens=4"],
}


def test_every_registered_experiment_has_a_small_run():
    assert sorted(SMALL) == registry.experiment_names(), (
        "tests/test_every_experiment_runs.py: add (or remove) an entry for "
        f"{sorted(set(SMALL) ^ set(registry.experiment_names()))}")


@pytest.mark.parametrize("name", sorted(SMALL))
def test_small_run_overrides_are_valid(name):
    """The small run's keys and values pass the experiment's own config validation (a renamed key fails here,
    in the default tier, not only in the slow CLI run)."""
    apply_overrides(registry.load(name).Config(), SMALL[name])


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SMALL))
def test_experiment_runs_through_the_cli(name, tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-m", "experiments", name, f"run_dir={tmp_path}", *SMALL[name]],
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=1500)
    assert proc.returncode == 0, f"{name} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary, f"{name} wrote an empty summary"
    assert json.loads((tmp_path / "config.json").read_text())["run_dir"] == str(tmp_path)
