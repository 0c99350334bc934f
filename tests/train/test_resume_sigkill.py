"""Exact resume: a training process killed with SIGKILL and restarted gives bit-identical metrics and final
parameters to an uninterrupted run, with no duplicated or missing step in metrics.jsonl. Also for a batch
source that reads the parameters and keeps host state (numpy Generator, counter) with μ = 2 updates per batch."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from jaxllm.train import train
from jaxllm.train.checkpoint import fingerprint
from jaxllm.train.metrics import read_metrics
from tests.subprocess_util import ROOT
from tests.train.helpers import RESUME_CFG, SOURCE_CFG, regression_task, source_task, strip_perf


def _env(**extra):
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.update({k: str(v) for k, v in extra.items()})
    return env


def _child(run_dir, **env):
    return subprocess.Popen([sys.executable, "-m", "tests.train.resume_child", str(run_dir)], cwd=ROOT,
                            env=_env(**env), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


# (name, trainer config, task factory, child env, checkpoints a run killed at step 27 can resume from)
RUNS = {
    "iterator": (RESUME_CFG, regression_task, {}, (20, 25)),
    "state_source_mu2": (SOURCE_CFG, source_task, {"SOURCE": 1}, (20, 24)),
}


# The source variant takes ~25 s on two idle cores: slow tier (test_batch_source covers its resume in-process).
@pytest.mark.parametrize("name", ["iterator", pytest.param("state_source_mu2", marks=pytest.mark.slow)])
def test_sigkill_then_restart_equals_uninterrupted(tmp_path, name):
    cfg, make_task, env, resumable = RUNS[name]
    reference = train(cfg, make_task(), str(tmp_path / "reference"))
    ref_rows = strip_perf(reference.history)
    all_steps = [0, *range(1, cfg.steps + 1)]
    assert [r["step"] for r in ref_rows] == all_steps

    run_dir = tmp_path / "killed"
    # 1. Killed from outside, at whatever point it has reached once checkpoint 10 (8 for μ = 2) is on disk.
    first = 10 if cfg.checkpoint_every == 5 else 8
    proc = _child(run_dir, SLEEP=0.05, **env)
    deadline = time.time() + 300
    while not (run_dir / "checkpoints" / str(first)).exists():
        assert proc.poll() is None, f"child ended early: {proc.communicate()}"
        assert time.time() < deadline, "no checkpoint within 300 s"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    killed_at = read_metrics(run_dir / "metrics.jsonl")[-1]["step"]
    assert first <= killed_at < cfg.steps

    # 2. Restarted, then it kills itself at step 27, just after logging (the previous save may be in flight).
    proc = _child(run_dir, KILL_AT=27, **env)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == -signal.SIGKILL, err[-3000:]
    assert "resumed from checkpoint step" in out
    assert read_metrics(run_dir / "metrics.jsonl")[-1]["step"] == 27

    # 3. Restarted again and run to the end.
    proc = _child(run_dir, **env)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    resumed = int(out.split("resumed from checkpoint step ")[1].split()[0])
    assert resumed in resumable

    rows = strip_perf(read_metrics(run_dir / "metrics.jsonl"))
    assert [r["step"] for r in rows] == all_steps  # nothing duplicated or missing
    assert rows == ref_rows  # bit-identical (floats compared exactly), source host metrics included
    assert f"FINGERPRINT {fingerprint(reference.state)}" in out  # final params/opt state/RNG identical
    last_two = [str(cfg.steps - cfg.checkpoint_every), str(cfg.steps)]
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == last_two  # tmp dirs cleaned up
    assert not Path(run_dir, "metrics.jsonl.tmp").exists()


@pytest.mark.slow
def test_sigkill_at_random_moments(tmp_path):
    """Five kills at seeded random moments: once the run has logged a random step, plus 0-40 ms (so some land
    inside a step, a metrics write or an async checkpoint save); then it runs to the end."""
    reference = train(RESUME_CFG, regression_task(), str(tmp_path / "reference"))
    run_dir = tmp_path / "killed"
    rng = random.Random(0)
    targets = sorted(rng.sample(range(1, RESUME_CFG.steps), 5))
    for target in targets:
        proc = _child(run_dir, SLEEP=0.02)
        deadline = time.time() + 300
        while not read_metrics(run_dir / "metrics.jsonl") or read_metrics(run_dir / "metrics.jsonl")[-1]["step"] < target:
            assert proc.poll() is None, f"child ended early: {proc.communicate()}"
            assert time.time() < deadline
            time.sleep(0.005)
        time.sleep(rng.uniform(0.0, 0.04))
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
        assert proc.returncode == -signal.SIGKILL
    proc = _child(run_dir)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    rows = strip_perf(read_metrics(run_dir / "metrics.jsonl"))
    assert rows == strip_perf(reference.history)
    assert f"FINGERPRINT {fingerprint(reference.state)}" in out
