"""The Li2 experiments end to end: a short run groks, writes the run_dir layout, and resumes."""

import dataclasses
import json

import pytest

from experiments import li2_grokking, li2_phase_diagram
from jaxllm.config import ConfigError, apply_overrides
from jaxllm.optim.build import LI2_OPTIMIZERS
from jaxllm.train import TrainerConfig

FAST = dict(modulus=23, train_fraction=0.5, hidden=256,
            optim=dataclasses.replace(LI2_OPTIMIZERS["adam"], learning_rate=1e-2, weight_decay=2e-4),
            trainer=TrainerConfig(steps=400, log_every=50, checkpoint_every=200, progress=False))


def _fast(steps: int, **changes):
    return {**FAST, "trainer": dataclasses.replace(FAST["trainer"], steps=steps), **changes}


def _steps(run_dir):
    return [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_li2_groks_on_z23_and_writes_run_dir_and_resumes(tmp_path):
    run_dir = tmp_path / "run"
    cfg = li2_grokking.Config(run_dir=str(run_dir), **FAST)
    summary = li2_grokking.run(cfg)
    # Above the boundary (0.5 > 0.375 for Z_23) with weight decay: memorise first, then generalise.
    assert summary["train_accuracy"] >= 0.999
    assert summary["test_accuracy"] >= 0.95
    assert summary["grok_step"] is not None and summary["memorise_step"] <= summary["grok_step"]
    assert summary["n_frequencies_covered"] == 11 == len(summary["frequencies_covered"])
    assert summary["above_boundary"] and summary["critical_train_fraction"] == pytest.approx(0.3747, abs=1e-4)
    for name in ("config.json", "metrics.jsonl", "summary.json", "summary.md", "plots/accuracy.png",
                 "plots/energy.png", "plots/fourier.png"):
        assert (run_dir / name).is_file(), name
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir() if p.name.isdigit()) == ["200", "400"]
    row = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    for key in ("train/loss", "test/accuracy", "grad_F_norm", "movement/W", "movement/V", "energy/mean",
                "fourier/concentration", "fourier/covered", "stage"):
        assert key in row, key
    assert set(summary["stage_boundaries"]) <= {"lazy", "independent", "interactive"}
    assert json.loads((run_dir / "summary.json").read_text())["grok_step"] == summary["grok_step"]

    # Resume: the same run_dir with more steps continues from step 400; every logged step exactly once.
    again = li2_grokking.run(li2_grokking.Config(run_dir=str(run_dir), **_fast(500)))
    assert _steps(run_dir) == list(range(0, 501, 50))
    assert again["grok_step"] == summary["grok_step"]


def test_mini_batch_mode_uses_grain_and_learns(tmp_path):
    cfg = li2_grokking.Config(run_dir=str(tmp_path / "mb"), **_fast(100, batch_size=64))
    summary = li2_grokking.run(cfg)
    assert summary["train_accuracy"] > 0.5


def test_config_validation_names_the_key():
    base = li2_grokking.Config()
    with pytest.raises(ConfigError, match="train_fraction"):
        apply_overrides(base, ["train_fraction=1.5"])
    with pytest.raises(ConfigError, match="optim"):
        apply_overrides(base, ["optimizer=sgd"])
    with pytest.raises(ConfigError, match="batch_size"):
        apply_overrides(base, ["batch_size=100000"])
    with pytest.raises(ConfigError, match="given twice"):
        apply_overrides(base, ["steps=7", "trainer.steps=7"])
    with pytest.raises(ConfigError, match="group"):
        apply_overrides(base, ["group=klein"])
    assert apply_overrides(base, ["group=dihedral", "modulus=5"]).group == "dihedral"


def test_documented_spellings_set_the_one_field_each():
    """README / docs commands (`steps=3000 optimizer=muon lr=0.01 weight_decay=0`) set trainer.steps and the
    nested optimizer: Li2's reference Muon (beta 0.99, coupled-L2 Adam on V) at that learning rate."""
    cfg = apply_overrides(li2_grokking.Config(), ["lr=0.01", "optimizer=muon", "steps=3000", "weight_decay=0"])
    assert cfg.trainer.steps == 3000
    assert cfg.optim == dataclasses.replace(LI2_OPTIMIZERS["muon"], learning_rate=0.01, weight_decay=0.0)
    assert cfg.optim.beta == 0.99 and cfg.optim.adam_coupled_decay and cfg.optim.muon_learning_rate == 0.0
    assert apply_overrides(li2_grokking.Config(), ["optim=adamw", "optim.learning_rate=0.02"]).optim == \
        dataclasses.replace(LI2_OPTIMIZERS["adamw"], learning_rate=0.02)
    with pytest.raises(ConfigError, match="optim='sgd' is not a known choice; known"):
        apply_overrides(li2_grokking.Config(), ["optimizer=sgd"])


def test_non_abelian_run_reports_no_fourier(tmp_path):
    cfg = li2_grokking.Config(run_dir=str(tmp_path / "d5"), group="dihedral", **_fast(50, modulus=5))
    summary = li2_grokking.run(cfg)
    assert summary["group"] == "D_5" and summary["frequencies_covered"] is None
    assert "interactive" not in summary["stage_boundaries"]


@pytest.mark.slow
def test_no_grokking_without_weight_decay(tmp_path):
    """Li2 weight-decay ablation: at wd=0 the run memorises but does not generalise (Z_41, p=0.4)."""
    cfg = li2_grokking.Config(run_dir=str(tmp_path / "wd0"),
                              optim=dataclasses.replace(LI2_OPTIMIZERS["adam"], weight_decay=0.0),
                              trainer=TrainerConfig(steps=2000, log_every=100, checkpoint_every=1000, progress=False))
    summary = li2_grokking.run(cfg)
    assert summary["train_accuracy"] >= 0.999 and summary["grok_step"] is None and summary["test_accuracy"] < 0.2


def test_phase_diagram_tiny_grid_separates_memorisation_and_generalisation(tmp_path):
    cfg = apply_overrides(li2_phase_diagram.Config(), [
        "moduli=17", "fraction_scales=0.5,2.0", "seeds=2", "hidden=128", "lr=1e-2", "steps=600", "eval_every=100",
        f"run_dir={tmp_path / 'pd'}"])
    summary = li2_phase_diagram.run(cfg)
    rows = [json.loads(x) for x in (tmp_path / "pd" / "results.jsonl").read_text().splitlines()]
    low, high = sorted({r["train_fraction"] for r in rows})
    assert max(r["test_accuracy"] for r in rows if r["train_fraction"] == low) < 0.3
    assert min(r["test_accuracy"] for r in rows if r["train_fraction"] == high) >= 0.95
    assert summary["M17_smallest_generalising_fraction"] == high and summary["M17_largest_memorising_fraction"] == low
    assert (tmp_path / "pd" / "phase_table.md").is_file()
    assert (tmp_path / "pd" / "plots" / "phase_diagram.png").is_file()
    assert len(rows) == 4
    # rerun skips the finished modulus (resume) and gives the same summary
    again = li2_phase_diagram.run(cfg)
    assert {k: v for k, v in again.items() if k != "wall_time_s"} == {k: v for k, v in summary.items() if k != "wall_time_s"}
    assert len((tmp_path / "pd" / "results.jsonl").read_text().splitlines()) == 4
