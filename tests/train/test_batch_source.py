"""The trainer's batch-source protocol and μ updates per batch, against closed forms and a plain loop.

- μ updates per batch really happen: SGD on a quadratic whose target is the batch gives the closed form
  θ ← c_b + (1 − η)^μ (θ − c_b), the source is called steps/μ times and sees the state at its batch's start.
- every update draws its own key fold_in(rng, step); the source's key is batch_key(rng, b).
- metrics read one step late write the same metrics.jsonl as a synchronous loop that reads every step.
- NaN is still named at the right step (inside a μ = 2 batch, or from a source metric), last good checkpoint kept.
- resume restores the source's host state (a control with set_state ignored gives different rows).
"""

from __future__ import annotations

import dataclasses
import shutil
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxllm.config import ConfigError
from jaxllm.train import (
    NonFiniteError,
    SourceBatch,
    Task,
    TrainerConfig,
    batch_key,
    init_state,
    make_train_step,
    train,
)
from jaxllm.train.metrics import read_metrics
from tests.train.helpers import SOURCE_CFG, SelfLabelSource, regression_task, source_task, strip_perf

D, LR = 3, 0.25


class TargetSource:
    """Batch b is the target c_b = (b + 1) · [1, 2, 3] (from a host counter); records what it saw."""

    def __init__(self, nan_batch: int = -1, nan_reward_batch: int = -1):
        self.calls, self.seen = 0, []
        self.nan_batch, self.nan_reward_batch = nan_batch, nan_reward_batch

    def __call__(self, state, key):
        self.seen.append((int(state.step), np.asarray(state.params["theta"]), np.asarray(key)))
        b = self.calls
        self.calls += 1
        c = (b + 1) * np.arange(1, D + 1, dtype=np.float32)
        if b == self.nan_batch:
            c[1] = np.nan
        reward = float("nan") if b == self.nan_reward_batch else float(b)
        return SourceBatch({"c": c}, {"reward": reward})

    def get_state(self):
        return {"calls": self.calls}

    def set_state(self, state):
        self.calls = state["calls"]


def quadratic_task(source) -> Task:
    def loss_fn(params, batch, rng):
        loss = 0.5 * jnp.sum((params["theta"] - batch["c"]) ** 2)
        return loss, {"u": jax.random.uniform(rng)}  # shows which key each update drew

    return Task(init_params=lambda key: {"theta": jnp.zeros(D)}, loss_fn=loss_fn, optimizer=optax.sgd(LR),
                batches=source)


@pytest.mark.parametrize("mu", [1, 3])
def test_mu_sgd_updates_per_batch_match_closed_form(tmp_path, mu):
    steps = 12
    source = TargetSource()
    cfg = TrainerConfig(steps=steps, log_every=1, checkpoint_every=mu * 2, progress=False, updates_per_batch=mu)
    result = train(cfg, quadratic_task(source), str(tmp_path))

    assert source.calls == steps // mu
    theta = np.zeros(D)
    rng = np.asarray(init_state(quadratic_task(source), 0).rng)
    for b, (step, seen, key) in enumerate(source.seen):
        assert step == b * mu  # the state at the batch's start
        np.testing.assert_allclose(seen, theta, rtol=1e-6, atol=1e-6)  # float32 SGD vs float64 closed form
        np.testing.assert_array_equal(key, np.asarray(batch_key(rng, b)))
        c = (b + 1) * np.arange(1, D + 1)
        theta = c + (1 - LR) ** mu * (theta - c)
    np.testing.assert_allclose(np.asarray(result.state.params["theta"]), theta, rtol=1e-6, atol=1e-6)
    assert int(result.state.step) == steps

    rows = result.history
    assert [r["step"] for r in rows] == list(range(1, steps + 1))
    assert [r["reward"] for r in rows] == [float((s - 1) // mu) for s in range(1, steps + 1)]  # its batch's
    us = [float(jax.random.uniform(jax.random.fold_in(rng, s - 1))) for s in range(1, steps + 1)]
    assert [r["u"] for r in rows] == us  # a fresh key per update: fold_in(rng, step)
    assert len(set(us)) == steps
    assert all(r["perf/batch_s"] >= 0 and r["perf/update_s"] >= 0 for r in rows)


def test_seconds_per_phase_land_on_their_batch_rows(tmp_path):
    """A source that sleeps 0.2 s per batch and a log_fn that sleeps 0.1 s, μ = 2, one row per batch: each row
    has one batch's sleep in perf/batch_s (two would be >= 0.4 s) and the log_fn's in perf/host_s. Bounds leave
    0.2 / 0.1 s for scheduling noise on a loaded machine."""

    class Slow(TargetSource):
        def __call__(self, state, key):
            time.sleep(0.2)
            return super().__call__(state, key)

    def log_fn(params, step):
        time.sleep(0.1)
        return {}

    cfg = TrainerConfig(steps=6, log_every=2, checkpoint_every=6, updates_per_batch=2, progress=False)
    rows = train(cfg, dataclasses.replace(quadratic_task(Slow()), log_fn=log_fn), str(tmp_path)).history[1:]
    assert [r["step"] for r in rows] == [2, 4, 6]
    assert all(0.2 <= r["perf/batch_s"] < 0.4 for r in rows), rows
    assert all(0.1 <= r["perf/host_s"] < 0.2 for r in rows), rows


def test_frozen_tree_reaches_the_loss(tmp_path):
    """loss = ½‖θ − θ_ref‖² with θ_ref in Task.frozen: SGD gives θ_t = θ_ref + (1 − η)^t (θ_0 − θ_ref)."""
    ref = jnp.asarray([1.0, -2.0, 0.5])

    def loss_fn(params, batch, rng, frozen):
        return 0.5 * jnp.sum((params["theta"] - frozen["theta"]) ** 2), {}

    task = Task(lambda key: {"theta": jnp.zeros(D)}, loss_fn, optax.sgd(LR), frozen={"theta": ref})
    result = train(TrainerConfig(steps=5, log_every=5, checkpoint_every=5, progress=False), task, str(tmp_path))
    expected = np.asarray(ref) * (1 - (1 - LR) ** 5)
    np.testing.assert_allclose(np.asarray(result.state.params["theta"]), expected, rtol=1e-6)
    state, _ = jax.jit(make_train_step(task))(init_state(task, 0), None, {"theta": ref})
    np.testing.assert_allclose(np.asarray(state.params["theta"]), np.asarray(ref) * LR, rtol=1e-6)


class _CountingBatches:
    """Wraps a grain dataset and counts the batches drawn (to see when each row is written)."""

    def __init__(self, batches):
        self.batches, self.drawn = batches, 0

    def __iter__(self):
        self.it = iter(self.batches)
        return self

    def __next__(self):
        self.drawn += 1
        return next(self.it)

    def get_state(self):
        return self.it.get_state()

    def set_state(self, state):
        self.it.set_state(state)


def test_late_metrics_equal_a_synchronous_loop(tmp_path):
    """The trainer's rows equal those of a plain loop that reads every step's metrics at once; a row of a step
    that does not sync is written only after the next update was dispatched (its batch already drawn)."""
    cfg = TrainerConfig(steps=12, log_every=2, eval_every=6, checkpoint_every=4, progress=False)
    task = regression_task()
    counting = _CountingBatches(task.batches)
    written = []
    result = train(cfg, dataclasses.replace(task, batches=counting), str(tmp_path),
                   hooks=[lambda s, row: written.append((s, counting.drawn))])

    state, it, step = init_state(task, 0), iter(regression_task().batches), jax.jit(make_train_step(task))
    expected = [{"step": 0, "eval/loss": task.eval_fn(state.params)["loss"]}]
    for s in range(1, cfg.steps + 1):
        state, m = step(state, next(it))
        m = {k: float(v) for k, v in jax.device_get(m).items()}
        if s % cfg.eval_every == 0:
            m["eval/loss"] = task.eval_fn(state.params)["loss"]
        if s % cfg.log_every == 0 or s % cfg.eval_every == 0:
            expected.append({"step": s, **m})
    assert strip_perf(read_metrics(tmp_path / "metrics.jsonl")) == expected
    assert strip_perf(result.history) == expected
    # steps 2 and 10 are plain log steps (late); 4, 6, 8, 12 checkpoint or evaluate (read at once)
    assert written == [(2, 3), (4, 4), (6, 6), (8, 8), (10, 11), (12, 12)]


@pytest.mark.parametrize("where", ["loss", "reward"])
def test_nan_named_at_its_step_inside_a_batch(tmp_path, where):
    """μ = 2: batch 3 (updates 7 and 8) has a NaN target, or the source reports a NaN reward for it. The error
    names step 7 and the metric; the checkpoint at step 8 (end of that batch) is never written."""
    source = TargetSource(nan_batch=3) if where == "loss" else TargetSource(nan_reward_batch=3)
    cfg = TrainerConfig(steps=12, log_every=4, checkpoint_every=2, keep_checkpoints=5, updates_per_batch=2,
                        progress=False)
    with pytest.raises(NonFiniteError, match=rf"'{where}' = nan at step 7\b.*last good checkpoint: 6 "):
        train(cfg, quadratic_task(source), str(tmp_path))
    assert sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()) == [2, 4, 6]
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [4, 7]  # the offending row logged


def test_resume_restores_source_host_state(tmp_path):
    """4 steps of SOURCE_CFG (μ = 2), then resumed to 8: equal to an uninterrupted 8-step run. Resuming with a
    source whose set_state is ignored gives other rows (so the equality is not vacuous)."""
    cfg = dataclasses.replace(SOURCE_CFG, steps=8, eval_every=4)  # step 4 evaluates in both runs
    base = source_task()  # one loss_fn for all four runs: the jitted step compiles once

    def task(source=None):
        return dataclasses.replace(base, batches=source or SelfLabelSource())

    ref = strip_perf(train(cfg, task(), str(tmp_path / "ref")).history)
    assert [r["source/calls"] for r in ref[1:]] == [(s + 1) // 2 for s in range(1, 9)]
    train(dataclasses.replace(cfg, steps=4), task(), str(tmp_path / "a"))
    shutil.copytree(tmp_path / "a", tmp_path / "b")

    fresh = SelfLabelSource()
    resumed = train(cfg, task(fresh), str(tmp_path / "a"))
    assert resumed.resumed_from == 4 and strip_perf(resumed.history) == ref
    assert fresh.calls == 4 and [s for s, _ in fresh.seen] == [4, 6]

    class Forgetful(SelfLabelSource):
        def set_state(self, state):
            pass

    broken = strip_perf(train(cfg, task(Forgetful()), str(tmp_path / "b")).history)
    assert broken[:5] == ref[:5] and broken[5:] != ref[5:]  # rows of steps 0..4 come from the checkpoint


def test_bad_configs_and_sources_are_named(tmp_path):
    with pytest.raises(ConfigError, match=r"checkpoint_every=5 must be a multiple of trainer.updates_per_batch=2"):
        TrainerConfig(steps=10, checkpoint_every=5, updates_per_batch=2)
    with pytest.raises(ConfigError, match=r"trainer.steps=9 must be a multiple of trainer.updates_per_batch=2"):
        TrainerConfig(steps=9, checkpoint_every=6, updates_per_batch=2)
    with pytest.raises(ConfigError, match="updates_per_batch must be >= 1"):
        TrainerConfig(updates_per_batch=0)
    cfg = TrainerConfig(steps=2, log_every=1, checkpoint_every=2, progress=False)

    class Both(TargetSource):
        def __iter__(self):
            return iter([])

    class HalfState:
        def __call__(self, state, key):
            return {"c": np.zeros(D, np.float32)}

        def get_state(self):
            return {}

    class NotJson(TargetSource):
        def get_state(self):
            return {"generator": np.random.default_rng(0)}

    for source, match in [(Both(), "both iterable and callable"), (HalfState(), "both get_state"),
                          (NotJson(), "NotJson.get_state.. must return a JSON-able dict"), (3, "got int")]:
        with pytest.raises(ConfigError, match=match):
            train(cfg, quadratic_task(source), str(tmp_path / type(source).__name__))

    def clashing(state, key):
        return SourceBatch({"c": np.zeros(D, np.float32)}, {"loss": 1.0})

    with pytest.raises(ValueError, match=r"source's metrics \['loss'\] have the names of train metrics"):
        train(cfg, quadratic_task(clashing), str(tmp_path / "clash"))
