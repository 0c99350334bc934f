"""Exact resume: a training process killed with SIGKILL and restarted gives bit-identical metrics and final
parameters to an uninterrupted run, with no duplicated or missing step in metrics.jsonl."""

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
from tests.train.helpers import RESUME_CFG, regression_task, strip_perf


def _env(**extra):
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.update({k: str(v) for k, v in extra.items()})
    return env


def _child(run_dir, **env):
    return subprocess.Popen([sys.executable, "-m", "tests.train.resume_child", str(run_dir)], cwd=ROOT,
                            env=_env(**env), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_sigkill_then_restart_equals_uninterrupted(tmp_path):
    reference = train(RESUME_CFG, regression_task(), str(tmp_path / "reference"))
    ref_rows = strip_perf(reference.history)
    all_steps = [0, *range(1, RESUME_CFG.steps + 1)]
    assert [r["step"] for r in ref_rows] == all_steps

    run_dir = tmp_path / "killed"
    # 1. Killed from outside, at whatever point it has reached once checkpoint 10 is on disk.
    proc = _child(run_dir, SLEEP=0.05)
    deadline = time.time() + 300
    while not (run_dir / "checkpoints" / "10").exists():
        assert proc.poll() is None, f"child ended early: {proc.communicate()}"
        assert time.time() < deadline, "no checkpoint within 300 s"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    killed_at = read_metrics(run_dir / "metrics.jsonl")[-1]["step"]
    assert 10 <= killed_at < RESUME_CFG.steps

    # 2. Restarted, then it kills itself at step 27, just after logging (the step-25 save may be in flight).
    proc = _child(run_dir, KILL_AT=27)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == -signal.SIGKILL, err[-3000:]
    assert "resumed from checkpoint step" in out
    assert read_metrics(run_dir / "metrics.jsonl")[-1]["step"] == 27

    # 3. Restarted again and run to the end.
    proc = _child(run_dir)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    resumed = int(out.split("resumed from checkpoint step ")[1].split()[0])
    assert resumed in (20, 25)

    rows = strip_perf(read_metrics(run_dir / "metrics.jsonl"))
    assert [r["step"] for r in rows] == all_steps  # nothing duplicated or missing
    assert rows == ref_rows  # bit-identical (floats compared exactly)
    assert f"FINGERPRINT {fingerprint(reference.state)}" in out  # final params/opt state/RNG identical
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["35", "40"]  # tmp dirs cleaned up
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
