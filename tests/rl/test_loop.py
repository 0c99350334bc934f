"""The RL loop (jaxllm.rl.loop) through the one trainer: it raises reward on a trivially learnable task,
resumes exactly after kill -9, and survives bad rewards (NaN or raising count as 0 and are logged)."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from jaxllm.rl import RLLossConfig
from jaxllm.rl.loop import RolloutConfig, completion_mask, safe_rewards, select_inner_step
from jaxllm.train import train
from jaxllm.train.checkpoint import fingerprint
from tests.rl.loop_toy import toy_run
from tests.subprocess_util import ROOT

UNIFORM_REWARD = 1.0 / 3.0  # the start: uniform logits over {0, 1, 2} (mask excluded), P(token = 1) = 1/3


def _rewards(history):
    return [h["rollout/reward_mean"] for h in history if "rollout/reward_mean" in h]


def _late_mean(history, inner_steps=2, last=5):
    per_batch = _rewards(history)[::inner_steps]  # one row per update; the batch's reward on each
    return float(np.mean(per_batch[-last:]))


def test_spg_raises_reward_on_a_learnable_task(tmp_path):
    """12 rollout batches of SPG-mix lift the mean reward from the uniform start's 1/3 to > 0.6: the last 5
    batches hold 40 completions, so their mean has a standard error ≈ 0.05 at p = 1/3 (5 sigma margin)."""
    cfg, task = toy_run("spg_mix")
    result = train(cfg, task, str(tmp_path / "run"))
    assert _late_mean(result.history) > 0.6, _rewards(result.history)
    row = result.history[-1]
    for name in ("rollout/elbo", "rollout/eubo", "grad_norm", "rollout/zero_std_frac", "rollout/sample_s",
                 "rollout/reward_s", "perf/update_s", "rollout/adv_std", "rollout/reward_max"):
        assert name in row and math.isfinite(row[name]), name
    assert row["rollout/eubo"] <= 0.0  # log of a mean of probabilities^β ≤ 1


@pytest.mark.slow
@pytest.mark.parametrize("loss", ["d1", "wd1", "spg_eubo", "spg_elbo"])
def test_every_loss_raises_reward(tmp_path, loss):
    """The same claim for the other losses (d1 with its KL to the frozen start and μ = 2 stale batches)."""
    cfg, task = toy_run(loss, kl_beta=0.04 if loss == "d1" else 0.0)
    result = train(cfg, task, str(tmp_path / "run"))
    assert _late_mean(result.history) > 0.6, _rewards(result.history)


def _strip(rows):
    timing = ("perf/", "rollout/sample_s", "rollout/reward_s", "rollout/extras_s")
    return [{k: v for k, v in r.items() if not k.startswith(timing)} for r in rows]


@pytest.mark.slow
@pytest.mark.parametrize("loss", ["spg_mix", "d1"])
def test_sigkill_mid_run_then_rerun_equals_uninterrupted(tmp_path, loss):
    """kill -9 of an RL run (rollouts read the parameters; d1 also pre-computes φ_old per inner step) and a
    rerun in the same run_dir give bit-identical metric rows and final parameters on CPU."""
    cfg, task = toy_run(loss, kl_beta=0.04 if loss == "d1" else 0.0)
    reference = train(cfg, task, str(tmp_path / "reference"))
    ref_fingerprint = fingerprint(reference.state)
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT), SLEEP="0.05")
    run_dir = tmp_path / "killed"
    cmd = [sys.executable, "-m", "tests.rl.resume_child", str(run_dir), loss]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 900  # generous: the shared CPU box can be heavily loaded
    while not (run_dir / "checkpoints" / "8").exists():  # checkpoints every 2 batches of μ = 2 updates
        assert proc.poll() is None, f"child ended early: {proc.communicate()}"
        assert time.time() < deadline, "no checkpoint within 900 s"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    env["SLEEP"] = "0"
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "resumed from checkpoint step" in out.stdout
    from jaxllm.train import read_metrics

    rows = read_metrics(run_dir / "metrics.jsonl")
    assert [r["step"] for r in rows] == [r["step"] for r in reference.history]
    assert _strip(rows) == _strip(reference.history)
    assert f"FINGERPRINT {ref_fingerprint}" in out.stdout  # final params, optimizer state, step, RNG


def test_nan_and_raising_rewards_count_as_zero_and_are_logged(tmp_path):
    """A reward that returns NaN for one prompt and raises for another never stops the loop: those rollouts
    get reward 0, `rollout/reward_errors` counts them per batch, the running total is host state."""
    def bad_reward(index, completion):
        if index == 0:
            return float("nan")
        if index == 1:
            raise RuntimeError("parser exploded")
        return float(np.mean(completion == 1))

    cfg, task = toy_run("spg_mix", reward_fn=bad_reward, iterations=4)
    with pytest.warns(RuntimeWarning, match="rewards failed and count as 0"):
        result = train(cfg, task, str(tmp_path / "run"))
    assert result.state.step == cfg.steps
    rows = [h for h in result.history if "rollout/reward_errors" in h]
    # each batch draws 2 of the 4 prompts, 4 completions each; prompts 0 and 1 fail every completion
    for r in rows:
        assert r["rollout/reward_errors"] in (0.0, 4.0, 8.0)
    assert rows[-1]["rollout/reward_errors_total"] == sum(r["rollout/reward_errors"] for r in rows[::2])
    assert rows[-1]["rollout/reward_errors_total"] > 0


def test_safe_rewards_and_completion_mask():
    r, n, first = safe_rewards(lambda i, c: [1.0, float("inf"), 0.5][i] if i != 3 else 1 / 0,
                               np.arange(4), np.zeros((4, 2), int))
    assert r.tolist() == [1.0, 0.0, 0.5, 0.0] and n == 2 and "inf" in first
    gen = np.array([[5, 1, 7, 1], [5, 6, 7, 8], [1, 1, 1, 1]])
    assert completion_mask(gen, 1).tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]]
    assert completion_mask(gen, None).all()


def test_group_size_must_divide_the_batch():
    with pytest.raises(ValueError, match="group_size=4 does not divide the rollout batch size 6"):
        RolloutConfig(batch_size=6, group_size=4)
    with pytest.raises(ValueError, match="rollout group_size=3 differs from the loss's group_size=4"):
        from jaxllm.rl.loop import PromptSet, RolloutSource

        RolloutSource(lambda *a: None, lambda i, c: 0.0, PromptSet(np.zeros((4, 2), np.int32)),
                      RolloutConfig(batch_size=6, group_size=3), RLLossConfig(mask_id=3, group_size=4),
                      log_bounds=False)


def test_select_inner_step_picks_the_row_of_the_update_key():
    import jax
    import jax.numpy as jnp

    rng = jax.random.PRNGKey(7)
    keys = jnp.stack([jax.random.fold_in(rng, t) for t in (8, 9, 10)])  # [μ=3, 2]
    old = jnp.arange(2 * 3 * 5, dtype=jnp.float32).reshape(2, 3, 5)  # [B, μ, G]
    batch = {"tokens": jnp.zeros((2, 7), jnp.int32), "inner_keys": jnp.broadcast_to(keys[None], (2, 3, 2)),
             "old_logps_all": old}
    out = select_inner_step(batch, jax.random.fold_in(rng, 9))
    assert set(out) == {"tokens", "old_logps"}
    np.testing.assert_array_equal(out["old_logps"], old[:, 1])
