"""The experiment registry and `python -m experiments` (= `make train EXP=... ARGS=...`): listing, unknown
names, overrides, the run_dir layout and resume through the CLI."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import experiments
from experiments import _registry as registry
from experiments.__main__ import main
from jaxllm.train.metrics import read_metrics
from tests.subprocess_util import ROOT

FAKE = str(Path(__file__).parent / "fake_experiments")


def _cli(*args, cwd=ROOT):
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "experiments", *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=300)


def test_every_experiment_module_is_well_formed():
    names = registry.experiment_names()
    assert names, "no experiments registered"
    for name in names:
        module = registry.load(name)
        fields = {f.name: f for f in dataclasses.fields(module.Config)}
        assert "run_dir" in fields and fields["run_dir"].default == "", name
        assert module.Config().run_dir == ""
        assert registry.describe(name), f"experiments/{name}.py needs a one-line docstring"


def test_unknown_experiment_exits_2_listing_known():
    proc = _cli("li2_grokin")
    assert proc.returncode == 2
    assert "unknown experiment 'li2_grokin'" in proc.stderr
    assert "known experiments: " + ", ".join(registry.experiment_names()) in proc.stderr


def test_list_prints_one_line_each():
    proc = _cli("--list")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert [line.split()[0] for line in lines] == registry.experiment_names()
    for line, name in zip(lines, registry.experiment_names()):
        assert line.split(None, 1)[1].strip() == registry.describe(name)


@pytest.fixture
def fake_registry(monkeypatch):
    monkeypatch.setattr(experiments, "__path__", [*experiments.__path__, FAKE])
    assert "tiny_fit" in registry.experiment_names()


def test_cli_run_dir_layout_and_resume(fake_registry, tmp_path, capsys, monkeypatch):
    run_dir = tmp_path / "run"
    assert main(["tiny_fit", f"run_dir={run_dir}"]) == 0
    assert {p.name for p in run_dir.iterdir()} >= {"config.json", "metrics.jsonl", "tensorboard", "plots",
                                                    "checkpoints", "summary.json", "summary.md"}
    assert json.loads((run_dir / "config.json").read_text())["trainer"]["steps"] == 6
    assert [r["step"] for r in read_metrics(run_dir / "metrics.jsonl")] == [0, 2, 3, 4, 6]
    assert (run_dir / "plots" / "loss.png").stat().st_size > 1000
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["3", "6"]
    first = json.loads((run_dir / "summary.json").read_text())
    assert first["steps"] == 6 and first["resumed_from"] is None
    assert "| final_loss |" in (run_dir / "summary.md").read_text()

    # Same run_dir, longer: resumes from the last checkpoint and appends, nothing duplicated or missing.
    assert main(["tiny_fit", f"run_dir={run_dir}", "trainer.steps=9"]) == 0
    assert "resumed from checkpoint step 6" in capsys.readouterr().out
    assert [r["step"] for r in read_metrics(run_dir / "metrics.jsonl")] == [0, 2, 3, 4, 6, 8, 9]
    assert json.loads((run_dir / "summary.json").read_text())["resumed_from"] == 6

    # A different config in the same run_dir is refused (exit 2), and the run is untouched.
    before = (run_dir / "metrics.jsonl").read_text()
    assert main(["tiny_fit", f"run_dir={run_dir}", "lr=0.5"]) == 2
    assert "different config (lr)" in capsys.readouterr().err
    assert (run_dir / "metrics.jsonl").read_text() == before

    # Without run_dir: runs/<exp>/<timestamp>/ under the working directory.
    monkeypatch.chdir(tmp_path)
    assert main(["tiny_fit", "trainer.steps=2"]) == 0
    made = list((tmp_path / "runs" / "tiny_fit").iterdir())
    assert len(made) == 1 and (made[0] / "summary.json").exists()


def test_cli_bad_overrides_exit_2(fake_registry, capsys):
    assert main(["tiny_fit", "lrr=1"]) == 2
    err = capsys.readouterr().err
    assert "unknown key 'lrr'" in err and "nearest first): lr, " in err
    assert main(["tiny_fit", "trainer.steps=many"]) == 2
    assert "bad value 'many' for key 'trainer.steps': expected int" in capsys.readouterr().err
    assert main(["tiny_fit", "lr=-1"]) == 2
    assert "lr must be > 0" in capsys.readouterr().err
