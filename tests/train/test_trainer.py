"""The trainer in-process: resume, corrupt checkpoints, NaN stop, best checkpoint, grad accumulation."""

from __future__ import annotations

import dataclasses
import glob
import os
import shutil
from pathlib import Path

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxllm.config import ConfigError
from jaxllm.train import (
    CorruptCheckpointWarning,
    NonFiniteError,
    Task,
    TrainerConfig,
    init_state,
    make_train_step,
    minibatches,
    train,
)
from jaxllm.train.checkpoint import Checkpointer
from jaxllm.train.metrics import read_metrics
from tests.train.helpers import regression_task, strip_perf

CFG = TrainerConfig(steps=12, log_every=2, eval_every=4, checkpoint_every=4, keep_checkpoints=3, progress=False)
TASK = regression_task()  # one Task object for all runs below: its jitted init/step compile once per process


def _steps(run_dir) -> list[int]:
    return [r["step"] for r in read_metrics(Path(run_dir) / "metrics.jsonl")]


def _ckpt_steps(run_dir) -> list[int]:
    return sorted(int(p) for p in os.listdir(Path(run_dir) / "checkpoints") if p.isdigit())


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted 12-step run."""
    run_dir = tmp_path_factory.mktemp("ref")
    result = train(CFG, TASK, str(run_dir))
    return run_dir, result


def test_layout_and_one_row_per_log_step(reference):
    run_dir, result = reference
    assert _steps(run_dir) == [0, 2, 4, 6, 8, 10, 12]
    assert _ckpt_steps(run_dir) == [4, 8, 12]
    assert glob.glob(str(run_dir / "tensorboard" / "events.out.tfevents.*"))
    rows = read_metrics(run_dir / "metrics.jsonl")
    assert all("loss" in r and "grad_norm" in r for r in rows[1:])
    assert [r["step"] for r in rows if "eval/loss" in r] == [0, 4, 8, 12]
    assert result.resumed_from is None and result.history == rows
    assert rows[-1]["eval/loss"] < rows[0]["eval/loss"]  # it trains


@pytest.fixture(scope="module")
def prefix(tmp_path_factory):
    """The first 8 steps of the same run (copied by each test that continues it)."""
    run_dir = tmp_path_factory.mktemp("prefix")
    train(dataclasses.replace(CFG, steps=8), TASK, str(run_dir))
    return run_dir


def test_resume_extends_bit_for_bit(reference, prefix, tmp_path):
    """Run 8 steps, then rerun the same run_dir to 12: identical to the uninterrupted 12-step run."""
    ref_dir, _ = reference
    tmp_path = tmp_path / "run"
    shutil.copytree(prefix, tmp_path)
    result = train(CFG, TASK, str(tmp_path))
    assert result.resumed_from == 8
    assert strip_perf(read_metrics(tmp_path / "metrics.jsonl")) == strip_perf(read_metrics(ref_dir / "metrics.jsonl"))


def _largest_state_file(step_dir: Path) -> Path:
    files = [Path(p) for p in glob.glob(str(step_dir / "state" / "**" / "d" / "*"), recursive=True)]
    return max(files, key=lambda p: p.stat().st_size)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # orbax's failed async read
@pytest.mark.parametrize("damage", ["truncate", "garble"])
def test_corrupt_latest_checkpoint_uses_previous(reference, prefix, tmp_path, damage):
    """A truncated file, or bytes flipped inside the array data (orbax has no checksum: caught by the saved
    fingerprint), in the newest checkpoint: warned by name, moved aside untouched, the previous one used, and
    the finished run equals the uninterrupted one."""
    ref_dir, _ = reference
    tmp_path = tmp_path / "run"
    shutil.copytree(prefix, tmp_path)
    victim = _largest_state_file(tmp_path / "checkpoints" / "8")
    raw = bytearray(victim.read_bytes())
    if damage == "truncate":
        raw = raw[: len(raw) // 2]
    else:
        mid = len(raw) // 2
        raw[mid:mid + 8] = bytes(b ^ 0x5A for b in raw[mid:mid + 8])
    victim.write_bytes(bytes(raw))

    with pytest.warns(CorruptCheckpointWarning, match=r"checkpoints/8\b"):
        result = train(CFG, TASK, str(tmp_path))
    assert result.resumed_from == 4
    assert result.corrupt_checkpoints == [str(tmp_path / "checkpoints" / "8")]
    moved = glob.glob(str(tmp_path / "checkpoints" / "corrupt-8-*"))
    assert len(moved) == 1
    kept = Path(moved[0]) / victim.relative_to(tmp_path / "checkpoints" / "8")
    assert kept.read_bytes() == bytes(raw)  # moved aside, not overwritten or repaired
    assert _ckpt_steps(tmp_path) == [4, 8, 12]  # step 8 re-saved from the recomputed state
    assert strip_perf(read_metrics(tmp_path / "metrics.jsonl")) == strip_perf(read_metrics(ref_dir / "metrics.jsonl"))


def test_nan_stops_naming_step_and_metric_keeping_last_good_checkpoint(tmp_path):
    # Row 6 of the data is NaN; unshuffled batches of 1 reach it at step 7.
    task = regression_task(batch_size=1, nan_row=6, shuffle=False)
    cfg = TrainerConfig(steps=20, log_every=10, checkpoint_every=5, progress=False)
    with pytest.raises(NonFiniteError, match=r"'loss' = nan at step 7 \(also non-finite: .*abs_err.*last good checkpoint: 5"):
        train(cfg, task, str(tmp_path))
    assert _ckpt_steps(tmp_path) == [5]
    assert _steps(tmp_path)[-1] == 7  # the offending row is logged
    ckpt = Checkpointer(tmp_path / "checkpoints")
    state = init_state(task, 0)
    step, restored, data_state, _ = ckpt.restore_latest(jax.eval_shape(lambda: state))
    ckpt.close()
    assert step == 5 and int(restored[2]) == 5 and data_state == {"next_index": 5}
    chex.assert_tree_all_finite(restored[0])


def test_best_checkpoint_kept_beside_the_latest(tmp_path):
    # eval values at steps 0, 4, 8, 12, 16: the best (lowest) is at step 8.
    task = regression_task(eval_values=[5.0, 3.0, 1.0, 2.0, 4.0])
    cfg = TrainerConfig(steps=16, log_every=4, eval_every=4, checkpoint_every=4, keep_checkpoints=1,
                        best_metric="eval/score", best_mode="min", progress=False)
    train(cfg, task, str(tmp_path))
    assert _ckpt_steps(tmp_path) == [8, 16]


def test_full_batch_mode_and_bad_batches(tmp_path):
    result = train(TrainerConfig(steps=3, log_every=1, progress=False), regression_task(batch_size=0),
                   str(tmp_path / "full"))
    assert [r["step"] for r in result.history] == [0, 1, 2, 3]
    task = regression_task()
    with pytest.raises(ConfigError, match="get_state"):
        train(CFG, Task(task.init_params, task.loss_fn, task.optimizer, batches=[None, None]), str(tmp_path / "l"))
    with pytest.raises(ConfigError, match="grad_accum=2 needs task.batches"):
        train(TrainerConfig(steps=2, grad_accum=2), regression_task(batch_size=0), str(tmp_path / "g"))
    with pytest.raises(ConfigError, match="grad_accum=3 must divide"):
        train(TrainerConfig(steps=2, grad_accum=3, progress=False), regression_task(batch_size=8),
              str(tmp_path / "g3"))


def test_minibatches_seeded_and_resumable():
    data = {"x": np.arange(20), "y": np.arange(20) * 2}
    it = iter(minibatches(data, 4, seed=3))
    first = [next(it) for _ in range(7)]
    assert all(np.array_equal(b["y"], 2 * b["x"]) for b in first)
    assert sorted(np.concatenate([b["x"] for b in first[:5]]).tolist()) == list(range(20))  # an epoch
    assert not np.array_equal(np.concatenate([b["x"] for b in first[:5]]), np.arange(20))  # shuffled
    again = iter(minibatches(data, 4, seed=3))
    again.set_state(it.get_state())
    later = [next(it)["x"] for _ in range(3)]
    assert all(np.array_equal(a, next(again)["x"]) for a in later)
    other = iter(minibatches(data, 4, seed=4))
    assert not all(np.array_equal(a["x"], next(other)["x"]) for a in first)
    with pytest.raises(ConfigError, match="batch_size"):
        minibatches(data, 21, seed=0)


def test_grad_accumulation_equals_full_batch():
    """4 micro-batches of 4 give the same update as one batch of 16 (mean loss, metrics averaged too)."""
    rs = np.random.RandomState(0)
    batch = {"x": jnp.asarray(rs.randn(16, 8), jnp.float32), "y": jnp.asarray(rs.randn(16), jnp.float32)}

    def loss_fn(params, batch, rng):
        pred = jnp.tanh(batch["x"] @ params["w1"]) @ params["w2"]
        loss = jnp.mean((pred - batch["y"]) ** 2)
        return loss, {"pred_mean": pred.mean()}

    init = lambda k: {"w1": jax.random.normal(k, (8, 16)) / 3.0, "w2": jnp.ones((16,)) / 4.0}
    task = Task(init, loss_fn, optax.sgd(0.5))
    state = init_state(task, 0)
    s1, m1 = jax.jit(make_train_step(task, 1))(state, batch)
    s4, m4 = jax.jit(make_train_step(task, 4))(state, batch)
    chex.assert_trees_all_close(m1, m4, rtol=1e-5, atol=1e-6)
    chex.assert_trees_all_close(s1.params, s4.params, rtol=1e-5, atol=1e-6)
    moved = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), s1.params, state.params)
    assert max(jax.tree.leaves(moved)) > 1e-2  # the step did something
    assert int(s4.step) == 1
    # One micro-batch alone is a different update: accumulation is not a no-op.
    s_one, _ = jax.jit(make_train_step(task, 1))(state, jax.tree.map(lambda x: x[:4], batch))
    assert not np.allclose(s_one.params["w1"], s4.params["w1"], atol=1e-4)
